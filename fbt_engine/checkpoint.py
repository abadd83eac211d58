"""Self-describing checkpoints, written atomically (temporary file + rename: a kill never tears one)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TrainingError


def atomic_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def load(path: str | Path) -> dict[str, Any]:
    """Load one of our own checkpoints (it holds numpy RNG state, so not weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {str(path)!r} does not exist",
                            "give a run folder that has checkpoints/last.pt (runs are under runs/)")
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "student"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()
            if isinstance(v, torch.Tensor)}


def load_weights(model: torch.nn.Module, path: str | Path, what: str = "teacher") -> None:
    """Load a .safetensors, or a .pth/.pt with weights_only=True, strictly into `model`."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{what} checkpoint {str(path)!r} does not exist",
                            f"give the path of a {what} trained on this dataset, add a [{what}.train] section "
                            "to train it in this run, or set pretrained = true (needs internet)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = _unwrap(sd)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatch: another model, img_size or num_classes
        raise TrainingError(f"{what} checkpoint {str(path)!r} does not fit the model: "
                            f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}",
                            "it was trained with another model, img_size, kwargs or num_classes; "
                            "delete it to retrain, or point the preset at a matching file") from None
    if result.missing_keys or result.unexpected_keys:
        raise TrainingError(
            f"{what} checkpoint {str(path)!r} does not fit the model: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}",
            "check the model name, its kwargs and num_classes against the ones the checkpoint was trained with")


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """The model's weights as .safetensors (what timm's pretrained_cfg_overlay=dict(file=...) loads)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k.removeprefix("_orig_mod."): v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
