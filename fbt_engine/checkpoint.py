"""Checkpoints and weight files: written atomically, read without ever running code.

Writes: the bytes are serialised in memory, written to `.<name>.tmp`, fsynced and renamed over the
target, so a kill leaves either the old file or the new one, never a torn one; a failed write
(disk full, no permission) removes the temporary file and raises a `WriteError` that names the
file, while the previous version stays intact.

Reads: run checkpoints and weights load with `weights_only=True` (tensors, numbers, strings and
containers only: a crafted pickle is refused, never executed); a damaged file raises
`DamagedFile` naming it, so callers can fall back to another checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import faults
from .errors import DamagedFile, NonFiniteWeights, TrainingError, WriteError


# --- writing ---------------------------------------------------------------------------------

def _file_mode() -> int:
    """0o666 minus the umask: what `open()` would give (mkstemp-style 0o600 hides runs from colleagues)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, exc: OSError, size: int) -> WriteError:
    where = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        kept = f"the previous version of {path.name} is intact" if path.is_file() else \
            f"nothing was replaced ({path.name} did not exist yet)"
        return WriteError(f"the disk is full: could not write {str(path)!r} ({size / 2**20:.1f} MiB)",
                          f"free space under {str(where)!r}; {kept}, so the run can be resumed once there is room")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WriteError(f"no permission to write {str(path)!r} ({exc.strerror})",
                          f"make {str(where)!r} writable, or choose another folder (--runs-dir, teacher.checkpoint)")
    return WriteError(f"could not write {str(path)!r}: {exc.strerror or exc}",
                      f"check the folder {str(where)!r} (it must be a writable directory)")


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write `data` to `path` via a temporary file + fsync + rename; never leaves a `.tmp` behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _file_mode())
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc, len(data)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    faults.point(f"saved:{path.name}")


def serialize(obj: Any) -> bytes:
    """torch.save into memory: a full disk then fails in our own write, with a clear error."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (see write_bytes_atomic)."""
    write_bytes_atomic(serialize(obj), path)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN/inf (one device sync for all of them)."""
    names = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    device = tensors[names[0]].device  # flags gathered on the device, read back once
    flags = torch.stack([torch.isfinite(tensors[k]).all().to(device) for k in names])
    return [k for k, ok in zip(names, flags.tolist()) if not ok]


def weights_bytes(model: torch.nn.Module, what: str = "model", metadata: dict[str, str] | None = None,
                  name: str = "the file") -> bytes:
    """The model's weights as the bytes of a .safetensors file (keys sorted, so the same weights and
    metadata always give the same bytes). `metadata` (strings only) goes into the file's header.

    Refuses weights holding NaN/inf: a diverged model is never exported.
    """
    from safetensors.torch import save
    sd = {k.removeprefix("_orig_mod."): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(sd)
    if bad:
        raise NonFiniteWeights(f"the {what} weights hold NaN/inf ({len(bad)} tensors, e.g. {bad[0]}); "
                               f"{name} was not written",
                               "lower the learning rate or enable train.grad_clip; the last good checkpoint is kept")
    return canonical_safetensors(save(sd, metadata={"format": "pt", **(metadata or {})}))


def save_weights(model: torch.nn.Module, path: str | Path, what: str = "model",
                 metadata: dict[str, str] | None = None) -> str:
    """The model's weights as .safetensors (what timm's pretrained_cfg_overlay=dict(file=...) loads);
    returns the file's digest (as `file_digest` would give, without reading it back). See weights_bytes."""
    data = weights_bytes(model, what, metadata, Path(path).name)
    write_bytes_atomic(data, path)
    return _digest(data)


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes the metadata from a hash
    map, so with several metadata keys the bytes (and the digest a resumed run is checked by) would
    change from process to process. Tensor offsets are relative to the data section, so only the
    header is rewritten (padded with spaces to a multiple of 8 bytes, as safetensors pads it)."""
    import json
    import struct
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def timm_config(model: torch.nn.Module, img_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                num_classes: int, label_names: tuple[str, ...] = (), interpolation: str = "bilinear",
                crop_pct: float = 1.0) -> dict[str, Any]:
    """A timm/HF-hub style config.json for an exported model: its architecture, constructor arguments
    and the preprocessing it was trained with, so `timm.data.resolve_data_config(model=...)` gives the
    run's input size, mean and std instead of the architecture's ImageNet defaults."""
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    for key in ("url", "hf_hub_id", "hf_hub_filename", "file", "source", "tag", "custom_load", "test_input_size",
                "test_crop_pct", "min_input_size", "license", "origin_url", "paper_ids", "paper_name", "notes"):
        base.pop(key, None)
    chans = 3 if len(mean) in (1, 3) else len(mean)
    stats = lambda v: [float(x) for x in (v * chans if len(v) == 1 else v)]  # noqa: E731
    pretrained_cfg = {**base, "input_size": [chans, img_size, img_size], "fixed_input_size": False,
                      "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": "center",
                      "mean": stats(mean), "std": stats(std), "num_classes": num_classes}
    if "pool_size" in pretrained_cfg:  # the architecture's 224 px figure; wrong at other sizes
        pretrained_cfg.pop("pool_size")
    if label_names:
        pretrained_cfg["label_names"] = list(label_names)
    model_args = {k: v for k, v in (getattr(model, "_model_args", None) or {}).items() if k != "pretrained"}
    return {"architecture": base.get("architecture") or type(model).__name__.lower(), "num_classes": num_classes,
            "num_features": getattr(model, "num_features", None), "model_args": _plain(model_args),
            "pretrained_cfg": _plain(pretrained_cfg)}


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, anything exotic as its string."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def export_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The header metadata of an exported model: its timm config (see `timm_config`), so the file alone
    says how to build and feed the model."""
    import json
    return {"config": json.dumps(config, indent=2), "architecture": str(config.get("architecture")),
            "pretrained_cfg": json.dumps(config.get("pretrained_cfg", {}))}


def config_json(config: dict[str, Any]) -> bytes:
    """`config` as the text of a timm/HF-hub config.json (the same text as the `config` metadata)."""
    import json
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


def export_model(model: torch.nn.Module, path: str | Path, config: dict[str, Any], what: str = "student") -> bytes:
    """`save_weights` with `config` (see `timm_config`) in the file's metadata; returns the bytes
    written (the timm folder of export.py holds the same file as model.safetensors)."""
    data = weights_bytes(model, what, export_metadata(config), Path(path).name)
    write_bytes_atomic(data, path)
    return data


# --- RNG state (plain tensors and ints, so checkpoints load with weights_only=True) -----------

def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def _as_tuple(value: Any) -> Any:
    """random.setstate wants tuples all the way down (a list may come back from some loaders)."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- reading ---------------------------------------------------------------------------------

def _safe_torch_load(path: Path, what: str, allow: tuple[type, ...] = ()) -> Any:
    """torch.load with weights_only=True (plus the classes in `allow`, which only hold data);
    every failure becomes a DamagedFile naming the file."""
    from safetensors import SafetensorError  # torch.load reads a *.safetensors name with safetensors
    if path.stat().st_size == 0:
        raise DamagedFile(f"{what} {str(path)!r} is empty (0 bytes)", _damaged_hint(path))
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise before the refusal below
            warnings.simplefilter("ignore", UserWarning)
            with torch.serialization.safe_globals(list(allow)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # a class or function the weights-only unpickler does not allow
            raise DamagedFile(f"{what} {str(path)!r} holds Python objects other than weights, which could run code "
                              "when loaded; it was refused",
                              "only load files you trust as weights: re-export it as .safetensors or as a plain "
                              "state_dict of tensors") from None
        if "Weights only" in str(exc) or "weights_only" in str(exc):  # a bad opcode: garbage, or a plain pickle
            raise DamagedFile(f"{what} {str(path)!r} is damaged or not a PyTorch file (it is neither a torch.save "
                              "archive nor weights); it was refused unread", _damaged_hint(path)) from None
        raise DamagedFile(f"{what} {str(path)!r} is damaged ({_first_line(exc)})", _damaged_hint(path)) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError, IndexError,
            SafetensorError) as exc:
        raise DamagedFile(f"{what} {str(path)!r} is damaged or not a PyTorch file ({_first_line(exc)})",
                          _damaged_hint(path)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _damaged_hint(path: Path) -> str:
    return f"the file is truncated or corrupt: copy it again, or delete {path.name} to use another checkpoint"


CHECKPOINT_KEYS = ("phase", "state", "module", "optimizer", "rng", "config_hash")
CHECKPOINT_TYPES = {"phase": str, "state": dict, "module": dict, "optimizer": dict, "rng": dict}


def load(path: str | Path) -> dict[str, Any]:
    """Load one of our own run checkpoints (weights-only: a crafted file never runs code)."""
    path = Path(path)
    if path.is_dir():
        raise TrainingError(f"checkpoint {str(path)!r} is a directory, not a checkpoint file",
                            f"move the folder {path.name} out of the way (the next save writes a file there)")
    if not path.is_file():
        raise TrainingError(f"checkpoint {str(path)!r} does not exist",
                            "give a run folder that has checkpoints/last.pt (runs are under runs/)")
    ckpt = _safe_torch_load(path, "checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DamagedFile(f"checkpoint {str(path)!r} is not an fbt-engine run checkpoint (no {', '.join(missing)})",
                          _damaged_hint(path))
    wrong = [k for k, kind in CHECKPOINT_TYPES.items() if not isinstance(ckpt[k], kind)]
    if wrong or not all(isinstance(v, torch.Tensor) for v in ckpt["module"].values()):
        raise DamagedFile(f"checkpoint {str(path)!r} is not an fbt-engine run checkpoint "
                          f"({', '.join(wrong) or 'module'} of the wrong type)", _damaged_hint(path))
    return ckpt


def load_first(paths: list[Path], note: Callable[[str], None] | None = None) -> tuple[Path | None, dict | None]:
    """The first of `paths` that exists and loads; damaged ones are skipped with a note.

    Raises a DamagedFile naming every damaged one when files exist but none loads, and a
    TrainingError for a directory in a checkpoint's place (the next save could not replace it).
    """
    damaged: list[tuple[Path, DamagedFile]] = []
    for path in paths:
        if path.is_dir():
            load(path)
        if not path.is_file():
            continue
        try:
            return path, load(path)
        except DamagedFile as exc:
            damaged.append((path, exc))
            if note:
                note(f"{exc.message}; trying the next checkpoint")
    if len(damaged) == 1:
        raise damaged[0][1]
    if damaged:
        last, exc = damaged[-1]
        others = ", ".join(p.name for p, _ in damaged[:-1])
        raise DamagedFile(f"{exc.message}, and {others} {'is' if len(damaged) == 2 else 'are'} damaged too: "
                          "no checkpoint loads",
                          f"copy intact checkpoints into {str(last.parent)!r}, or delete the damaged ones to start "
                          "this run over from its beginning") from None
    return None, None


def _unwrap(sd: Any) -> dict[str, torch.Tensor]:
    """The state_dict inside a training checkpoint (timm's train.py, DeiT's `model`, ours), with
    DataParallel's `module.` and torch.compile's `_orig_mod.` prefixes removed (as timm's clean_state_dict)."""
    if not isinstance(sd, dict):
        return {}
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "student"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()
            if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | Path, what: str = "teacher") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt/.bin file (weights-only), unwrapped from common wrappers."""
    import argparse
    path = Path(path)
    if path.is_dir():
        raise TrainingError(f"{what} checkpoint {str(path)!r} is a directory, not a weights file",
                            f"give the path of a .safetensors or .pth file for {what}.checkpoint, or name the "
                            f"folder as {what}.model = \"local-dir:{path}\"")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise DamagedFile(f"{what} checkpoint {str(path)!r} is damaged or not a safetensors file "
                              f"({_first_line(exc)})", _damaged_hint(path)) from None
    else:  # timm's train.py stores its argparse.Namespace beside the weights: data only, so allowed
        sd = _safe_torch_load(path, f"{what} checkpoint", allow=(argparse.Namespace,))
    tensors = _unwrap(sd)
    if not tensors:
        raise DamagedFile(f"{what} checkpoint {str(path)!r} holds no tensors",
                          "give a file that holds the model's state_dict")
    return tensors


class FreshClassifier(TrainingError):
    """The weights fit the model except its classifier (another class count): the head would be random."""


def classifier_keys(model: torch.nn.Module) -> list[str]:
    """The state_dict keys of the model's classifier, as its timm pretrained_cfg names it."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    own = model.state_dict()
    return [f"{n}.{p}" for n in names for p in ("weight", "bias") if f"{n}.{p}" in own]


def timm_filter(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model module's own `checkpoint_filter_fn` (what timm's pretrained loading applies): older
    timm layouts (Swin's `head.weight` of timm 0.6), original DeiT/ViT files, resized position tables."""
    import sys
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return sd
    try:
        out = fn(dict(sd), model)
    except Exception:  # a filter that does not understand this file: load it as it is, the fit check speaks
        return sd
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)} if isinstance(out, dict) else sd


def load_weights(model: torch.nn.Module, path: str | Path, what: str = "teacher",
                 fresh_head_ok: bool = False) -> list[str]:
    """Load a .safetensors, or a .pth/.pt/.bin with weights_only=True, into `model`: through timm's
    checkpoint filter, then strictly, except for a classifier of another class count. That one is
    refused (FreshClassifier) unless `fresh_head_ok` (the teacher is fine-tuned next); returns the
    classifier keys left freshly initialised ([] when the whole file fits)."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{what} checkpoint {str(path)!r} does not exist",
                            f"give the path of a {what} trained on this dataset, add a [{what}.train] section "
                            "to train it in this run, or set pretrained = true (needs internet)")
    sd = read_state_dict(path, what)
    bad = nonfinite_tensors(sd)
    if bad:
        raise DamagedFile(f"{what} checkpoint {str(path)!r} holds NaN/inf in {len(bad)} tensors (e.g. {bad[0]})",
                          f"it comes from a diverged run: use another {what} checkpoint")
    sd = timm_filter(model, sd)
    own = model.state_dict()
    head = classifier_keys(model)
    fresh = [k for k in head if k not in sd or sd[k].shape != own[k].shape]
    if fresh:
        _fresh_head(what, path, sd, own, fresh, fresh_head_ok)
        sd = {k: v for k, v in sd.items() if k not in head}
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatch: another model, img_size or num_classes
        lines = str(exc).splitlines()
        raise TrainingError(f"{what} checkpoint {str(path)!r} does not fit the model: "
                            f"{lines[1].strip() if len(lines) > 1 else exc}",
                            "it was trained with another model, img_size, kwargs or num_classes; "
                            "delete it to retrain, or point the preset at a matching file") from None
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        raise TrainingError(
            f"{what} checkpoint {str(path)!r} does not fit the model: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}",
            "check the model name, its kwargs and num_classes against the ones the checkpoint was trained with")
    return fresh


def _fresh_head(what: str, path: Path, sd: dict, own: dict, fresh: list[str], ok: bool) -> None:
    """Refuse a checkpoint whose classifier does not fit, unless the teacher is fine-tuned next."""
    if ok:
        return
    key = fresh[0]
    had = f"a classifier of shape {list(sd[key].shape)}" if key in sd else "no classifier"
    raise FreshClassifier(
        f"{what} checkpoint {str(path)!r} has {had} for {key}, the model needs {list(own[key].shape)} "
        "(another class count): its classifier would be freshly initialised, and distilling from it "
        "teaches noise",
        "add a [teacher.train] section to fine-tune it on this dataset first (tune = \"head\" trains the "
        "classifier alone, \"all\" the whole model), or give a checkpoint trained on this dataset"
        if what == "teacher" else f"give a {what} checkpoint trained with this dataset's class count, or none")


def file_digest(path: str | Path) -> str:
    """sha256 of a file (the teacher's identity, recorded in distill checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
