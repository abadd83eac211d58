"""`fbt-engine export`: a run's student in timm's own folder format, or as an ONNX graph.

    <out>/model.safetensors   timm format: the student's weights (a finished run's are the same bytes
                              as RUN/student.safetensors)
    <out>/model.onnx          onnx format: the student as an ONNX graph (batch size dynamic), checked
                              against PyTorch with onnxruntime before it replaces any earlier export
    <out>/config.json         both formats: architecture, model_args, num_classes and pretrained_cfg
                              (input size, mean/std, crop_pct, interpolation, label_names)

The default <out> is RUN/export/timm or RUN/export/onnx. A finished run writes RUN/export/timm by
itself, so `timm.create_model("local-dir:RUN/export/timm", pretrained=True)` loads the student with
its preprocessing and no other arguments. The exported preprocessing is the run's evaluation
transform (resize to img_size, crop_pct 1.0, bilinear, the dataset's mean/std): timm's
`create_transform(**resolve_data_config({}, model=m))` feeds the model exactly what `eval` fed it.

torch and timm are imported inside the functions: the CLI imports the choices below at start-up.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as C
from .errors import FBTError, TrainingError
from .evaluate import RUN_WEIGHTS, bare_student, first_loadable, locate, run_config

if TYPE_CHECKING:
    import torch

    from .data import DatasetInfo


class ExportFormat(str, Enum):
    """What `fbt-engine export --format` writes."""

    timm = "timm"
    onnx = "onnx"


class WeightsChoice(str, Enum):
    """Which of a run folder's weight files `fbt-engine export --weights` exports."""

    auto = "auto"        # the finished student, else best.pt, else last.pt (a damaged one is skipped)
    student = "student"  # RUN/student.safetensors (the run finished)
    best = "best"        # RUN/checkpoints/best.pt
    last = "last"        # RUN/checkpoints/last.pt


WEIGHT_ORDER = {"auto": ("student", "best", "last"), "student": ("student",), "best": ("best",), "last": ("last",)}
TIMM_DIR = Path("export") / "timm"  # inside the run folder
ONNX_CHECK_BATCH = 8  # random inputs the ONNX graph and the PyTorch student must agree on
ONNX_TOLERANCE = 1e-4  # max |logit difference|, relative to the largest |logit| when that is above 1
ONNX_EXTERNAL_BYTES = 3 * 2**30 // 2  # above this the weights go to model.onnx.data (protobuf stops at 2 GiB)
ONNX_EXTRA_HINT = "pip install 'fbt-workbench[onnx]' (onnx, onnxruntime, onnxscript)"


# --- timm folder -----------------------------------------------------------------------------

def write_timm_folder(weights: bytes, config: dict[str, Any], out: Path) -> list[Path]:
    """`out/model.safetensors` (the bytes of an exported .safetensors) and `out/config.json`: what
    timm's `local-dir:` source (and the Hugging Face Hub) read. Written atomically, weights first."""
    from .checkpoint import config_json, write_bytes_atomic
    files = [out / "model.safetensors", out / "config.json"]
    write_bytes_atomic(weights, files[0])
    write_bytes_atomic(config_json(config), files[1])
    return files


def export_finished_student(model: Any, run_dir: Path, config: dict[str, Any]) -> None:
    """A finished run's exports: RUN/student.safetensors (its timm config in the metadata) and the
    same file with config.json in RUN/export/timm."""
    from .checkpoint import export_model
    data = export_model(model, run_dir / "student.safetensors", config, "student")
    write_timm_folder(data, config, run_dir / TIMM_DIR)


# --- which weights, which preprocessing ------------------------------------------------------

def _weights_files(target: Path, choice: WeightsChoice) -> tuple[Path, list[Path]]:
    """(run folder, weight files to try in order) for `--weights choice` (see WeightsChoice)."""
    if choice is not WeightsChoice.auto:
        if target.is_file():
            raise FBTError(f"--weights {choice.value} picks a file of a run folder, but {str(target)!r} is a file",
                           f"give the run folder with --weights {choice.value}, or the file alone")
        name = RUN_WEIGHTS[choice.value]
        if target.is_dir() and not (target / name).is_file():
            have = [k for k, v in RUN_WEIGHTS.items() if (target / v).is_file()]
            unfinished = (" (the run has not finished: `fbt-engine resume` it first)"
                          if choice is WeightsChoice.student else "")
            raise TrainingError(f"run folder {str(target)!r} has no {name}{unfinished}",
                                f"use --weights {' or '.join(have)}" if have else
                                "wait for the first epoch to finish, or give another run")
    return locate(target, WEIGHT_ORDER[choice.value])


def _stored_config(path: Path) -> dict[str, Any] | None:
    """The timm config a finished run stored in student.safetensors' metadata (None without one)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            config = json.loads((f.metadata() or {})["config"])
        pc = config["pretrained_cfg"]
        return config if isinstance(config["num_classes"], int) and pc["mean"] and pc["std"] else None
    except Exception:  # noqa: BLE001 - damaged or foreign file: the data set tells the same facts
        return None


def dataset_facts(run_dir: Path, cfg: C.RunConfig) -> DatasetInfo:
    """Classes, mean/std and class names of the run's data: from the finished student's metadata when
    the run has one (no data needed), else from the data set itself (as `eval` reads it)."""
    from .data import DatasetInfo, build_datasets
    stored = _stored_config(run_dir / RUN_WEIGHTS["student"])
    if stored is None:
        return build_datasets(cfg.data, cfg.aug, cfg.seed)[2]
    pc = stored["pretrained_cfg"]
    return DatasetInfo(cfg.data.name, stored["num_classes"], tuple(pc["mean"]), tuple(pc["std"]),
                       class_names=tuple(pc.get("label_names") or ()))


def student_config(model: Any, cfg: C.RunConfig, info: DatasetInfo) -> dict[str, Any]:
    """The timm config of a run's student: the run's evaluation transform (resize to img_size, no
    crop, bilinear; see data.build_transforms) and the data set's mean/std and class names."""
    from .checkpoint import timm_config
    return timm_config(getattr(model, "_orig_mod", model), cfg.data.img_size, info.mean, info.std,
                       info.num_classes, info.class_names, interpolation="bilinear", crop_pct=1.0)


# --- ONNX ------------------------------------------------------------------------------------

def _need_onnx() -> None:
    import importlib.util
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise FBTError(f"--format onnx needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                       "not installed", ONNX_EXTRA_HINT)


def _torch_to_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """Export with torch's exporter (torch.export based, the default), falling back to the older
    TorchScript one; returns which one wrote `path`. Their progress lines go to stderr."""
    import torch
    big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > ONNX_EXTERNAL_BYTES
    names = {"input_names": ["input"], "output_names": ["logits"]}
    tries = [("dynamo", {"dynamo": True, "verbose": False, "external_data": big,
                         "dynamic_shapes": ({0: torch.export.Dim("batch")},)}),
             ("torchscript", {"dynamo": False, "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}})]
    failures = []
    for exporter, kwargs in tries:
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(path), **names, **kwargs)
            return exporter
        except Exception as exc:  # noqa: BLE001 - an operator or shape one exporter cannot express; the other may
            failures.append(f"{exporter}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
    raise FBTError(f"torch could not export the student to ONNX ({'; '.join(failures)})",
                   "export --format timm instead (timm's own format loads everywhere PyTorch runs)")


def _check_onnx(path: Path, model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """Run the graph with onnxruntime on `inputs` and compare its logits with the PyTorch student's."""
    import numpy as np
    import onnxruntime as ort
    import torch
    with torch.no_grad():
        ref = model(inputs).float().numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch (OMP_NUM_THREADS)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    tol = ONNX_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    check = {"inputs": int(inputs.shape[0]), "max_abs_diff": diff, "tolerance": tol,
             "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
    if not diff <= tol:
        raise FBTError(f"the ONNX graph's logits differ from the PyTorch student's by up to {diff:.3g} "
                       f"(tolerance {tol:.3g}) on {inputs.shape[0]} random inputs; nothing was written",
                       "export --format timm instead, or report the student's architecture as a bug")
    return check


def write_onnx_folder(model: torch.nn.Module, config: dict[str, Any], out: Path) -> tuple[list[Path], dict[str, Any]]:
    """`out/model.onnx` (+ `model.onnx.data` for big students) and `out/config.json`, only once
    onnxruntime reproduced the student's logits; returns the files and the check's numbers."""
    import torch
    from .checkpoint import _file_mode, config_json, write_bytes_atomic
    chans, size = config["pretrained_cfg"]["input_size"][0], config["pretrained_cfg"]["input_size"][-1]
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(ONNX_CHECK_BATCH, chans, size, size, generator=gen)  # normalised images' scale
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out))
    try:
        check = {"exporter": _torch_to_onnx(model, inputs[:2], tmp / "model.onnx")}
        check.update(_check_onnx(tmp / "model.onnx", model, inputs))
        (out / "model.onnx.data").unlink(missing_ok=True)  # an earlier export's external weights
        files = []
        for f in sorted(tmp.iterdir()):
            f.chmod(_file_mode())
            f.replace(out / f.name)
            files.append(out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_bytes_atomic(config_json(config), out / "config.json")
    return [*files, out / "config.json"], check


# --- the command -----------------------------------------------------------------------------

def export_run(target: str | Path, fmt: ExportFormat = ExportFormat.timm, out: str | Path | None = None,
               weights: WeightsChoice = WeightsChoice.auto, overrides: list[str] | None = None) -> dict[str, Any]:
    """Export a run's student (see WeightsChoice for which weights) as `fmt` into `out` (default
    RUN/export/<fmt>); returns what was written, and for ONNX the numerical check."""
    from .checkpoint import export_metadata, weights_bytes
    fmt, weights = ExportFormat(fmt), WeightsChoice(weights)
    if fmt is ExportFormat.onnx:
        _need_onnx()
    run_dir, candidates = _weights_files(Path(target), weights)
    cfg = run_config(run_dir, candidates, overrides or [])
    info = dataset_facts(run_dir, cfg)
    student = bare_student(cfg, info.num_classes)
    used = first_loadable(student, candidates)
    student.eval()
    config = student_config(student, cfg, info)
    dest = Path(out) if out else run_dir / "export" / fmt.value
    result: dict[str, Any] = {"run": str(run_dir), "weights": str(used), "student": cfg.student.model,
                              "format": fmt.value, "out": str(dest)}
    if fmt is ExportFormat.timm:
        files = write_timm_folder(weights_bytes(student, "student", export_metadata(config), "model.safetensors"),
                                  config, dest)
    else:
        files, result["check"] = write_onnx_folder(student, config, dest)
    result["files"] = [str(f) for f in files]
    return result
