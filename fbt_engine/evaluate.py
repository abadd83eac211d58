"""`fbt-engine eval`: score a run's student on a validation set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import config as C
from .errors import TrainingError


# The student's weight files in a run folder, and the order `eval` tries them in (a damaged one is skipped).
RUN_WEIGHTS = {"best": "checkpoints/best.pt", "student": "student.safetensors", "last": "checkpoints/last.pt"}
EVAL_ORDER = ("best", "student", "last")


def locate(target: Path, order: tuple[str, ...] = EVAL_ORDER) -> tuple[Path, list[Path]]:
    """(run folder, weight files to try in order) from a run folder or a file inside one; `order`
    names the run folder's files to look for (keys of RUN_WEIGHTS)."""
    if target.is_dir():
        found = [target / RUN_WEIGHTS[n] for n in order if (target / RUN_WEIGHTS[n]).is_file()]
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


def first_loadable(student: Any, candidates: list[Path]) -> Path:
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


def run_config(run_dir: Path, candidates: list[Path], overrides: list[str]) -> C.RunConfig:
    """The resolved preset the run was made with (its config.toml), with `overrides` (e.g. data.root)."""
    if not (run_dir / "config.toml").is_file():
        raise TrainingError(f"no config.toml next to {str(candidates[0])!r}", "give a file inside a run folder")
    return C.load_preset(run_dir / "config.toml", overrides)


def bare_student(cfg: C.RunConfig, num_classes: int) -> Any:
    """The run's student architecture without any weights (they are loaded from the run's files)."""
    from .task import create_student
    return create_student(C.replace(cfg, student=C.replace(cfg.student, checkpoint="", pretrained=False)),
                          num_classes)


def evaluate_run(target: str | Path, overrides: list[str]) -> dict[str, Any]:
    import torch
    from .data import build_loaders
    from .trainer import ModelView, Runtime, evaluate
    run_dir, candidates = locate(Path(target))
    cfg = run_config(run_dir, candidates, overrides)
    _, val_loader, info = build_loaders(cfg.data, cfg.aug, cfg.train.batch_size, cfg.seed)
    student = bare_student(cfg, info.num_classes)
    weights = first_loadable(student, candidates)
    rt = Runtime(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"), amp_dtype=None,
                 scaler=False, channels_last=False)
    m = evaluate(ModelView(student).to(rt.device), val_loader, rt, with_teacher=False)
    return {"run": str(run_dir), "weights": str(weights), "student": cfg.student.model, "dataset": info.name,
            "images": info.val_size, "top1": m["top1"], "top5": m["top5"]}
