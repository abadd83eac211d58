"""`fbt-engine eval`: score a run's student on a validation set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import config as C
from .errors import TrainingError


def _locate(target: Path) -> tuple[Path, list[Path]]:
    """(run folder, weight files to try in order) from a run folder or a file inside one."""
    if target.is_dir():
        found = [target / n for n in ("checkpoints/best.pt", "student.safetensors", "checkpoints/last.pt")
                 if (target / n).is_file()]
        if not found:
            raise TrainingError(f"run folder {str(target)!r} has no checkpoint yet",
                                "wait for the first epoch to finish, or give another run")
        return target, found
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, [target]
    raise TrainingError(f"{str(target)!r} is neither a run folder nor a checkpoint file",
                        "give runs/<name> or runs/<name>/checkpoints/best.pt")


def _load_student(student: Any, weights: Path) -> None:
    from .checkpoint import DamagedFile, load, load_weights
    if weights.suffix != ".pt":
        load_weights(student, weights, "student")
        return
    ckpt = load(weights)  # weights-only: a crafted checkpoint is refused, never run
    if ckpt.get("phase") != "distill":
        raise TrainingError(f"{str(weights)!r} is a teacher-phase checkpoint", "evaluate the run folder instead")
    try:
        student.load_state_dict({k.removeprefix("student."): v for k, v in ckpt["module"].items()
                                 if k.startswith("student.")})
    except RuntimeError as exc:  # missing keys or shapes: weights of another model (or a hand-edited file)
        lines = str(exc).splitlines()
        raise DamagedFile(f"checkpoint {str(weights)!r} does not hold this run's student: "
                          f"{(lines[1] if len(lines) > 1 else lines[0]).strip()[:200]}",
                          "it comes from another run or was edited: evaluate the run folder it belongs to") from None


def _first_loadable(student: Any, candidates: list[Path]) -> Path:
    """Load the first candidate that is intact; a damaged one is reported and skipped."""
    import sys
    from .checkpoint import DamagedFile
    for i, weights in enumerate(candidates):
        try:
            _load_student(student, weights)
            return weights
        except DamagedFile as exc:
            if i == len(candidates) - 1:
                raise
            sys.stderr.write(f"warning: {exc.message}; trying {candidates[i + 1].name}\n")
    raise AssertionError("unreachable")


def evaluate_run(target: str | Path, overrides: list[str]) -> dict[str, Any]:
    import torch
    from .data import build_loaders
    from .task import create_student
    from .trainer import ModelView, Runtime, evaluate
    run_dir, candidates = _locate(Path(target))
    if not (run_dir / "config.toml").is_file():
        raise TrainingError(f"no config.toml next to {str(candidates[0])!r}", "give a file inside a run folder")
    cfg = C.load_preset(run_dir / "config.toml", overrides)
    _, val_loader, info = build_loaders(cfg.data, cfg.aug, cfg.train.batch_size, cfg.seed)
    student = create_student(C.replace(cfg, student=C.replace(cfg.student, checkpoint="", pretrained=False)),
                             info.num_classes)
    weights = _first_loadable(student, candidates)
    rt = Runtime(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"), amp_dtype=None,
                 scaler=False, channels_last=False)
    m = evaluate(ModelView(student).to(rt.device), val_loader, rt, with_teacher=False)
    return {"run": str(run_dir), "weights": str(weights), "student": cfg.student.model, "dataset": info.name,
            "images": info.val_size, "top1": m["top1"], "top5": m["top5"]}
