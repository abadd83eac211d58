"""Fail before work starts: everything knowable from the preset, timm and the files, checked in seconds.

`check(cfg)` builds the run's models on the meta device (no weights allocated, nothing downloaded),
the method's module with its fused model / branches / loss heads, one training step's forward,
the optimiser and the schedule; it checks the device, the augmentation strings, the teacher and
student files (read weights-only, shapes matched against the model) and that the run and teacher
folders can be written. `fbt-engine run` calls it before the run folder exists and before any
teacher training; `fbt-engine validate` calls it too. Every problem is an FBTError that names the
key or file and says what to do instead.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError, FBTError, ModelError

# Class counts of the built-in datasets (imagefolder: counted from its train/ folder when present).
CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar100": 100}


@dataclass
class Report:
    """What preflight established (printed by `validate`)."""

    checks: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.checks.append(line)


def check(cfg: C.RunConfig, num_classes: int | None = None, source: str = "<preset>") -> Report:
    """Run every pre-data check; raises FBTError on the first problem."""
    report = Report()
    check_device(cfg.train.device, source)
    report.ok(f"device {cfg.train.device!r} is available")
    models = _check_models(cfg, num_classes or class_count(cfg), source, report)
    check_augmentation(cfg, source)
    report.ok("augmentation settings build")
    from .data import locate
    report.ok(f"data: {locate(cfg.data)}")
    for backend in check_loggers(cfg, source):
        report.ok(f"{backend} is installed (log.backends)")
    check_files(cfg, models, report)
    check_writable(Path(cfg.runs_dir), "the runs folder (--runs-dir / runs_dir)")
    report.ok(f"runs folder {cfg.runs_dir!r} is writable")
    return report


def class_count(cfg: C.RunConfig) -> int:
    if cfg.data.name in CLASSES:
        return CLASSES[cfg.data.name]
    train = Path(cfg.data.root) / "train"
    if train.is_dir():
        return max(1, sum(1 for p in train.iterdir() if p.is_dir()))
    return 10  # the data set-up names a missing folder; any count builds the same architecture


def check_device(spec: str, source: str = "<preset>") -> None:
    import torch
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"`train.device` in {source} is {spec!r} but no CUDA GPU is visible",
                              'set train.device = "cpu" (or "auto", which picks the GPU when there is one)')
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"`train.device` in {source} is {spec!r} but only {torch.cuda.device_count()} GPU(s) "
                              "are visible", f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"`train.device` in {source} is 'mps' but Apple's MPS backend is not available",
                          'set train.device = "cpu" or "auto"')


def _check_models(cfg: C.RunConfig, num_classes: int, source: str, report: Report) -> dict[str, Any]:
    """Build teacher, student and the method's module on the meta device; run one forward; build
    the optimiser and schedule. Catches unknown names, bad kwargs, sizes, unsupported pairs.
    Returns the meta teacher and student (check_files matches the weight files against them)."""
    import torch
    from . import methods
    from .methods._base import Setup, build, resolved_weights
    from .task import ClassifierTask, create_student, create_teacher
    resolved_weights(methods.get(cfg.method), cfg.loss, source)  # per-term weights name real terms
    # no hub download and no file read here: only the architectures
    offline = C.replace(cfg, teacher=C.replace(cfg.teacher, pretrained=False, checkpoint=""),
                        student=C.replace(cfg.student, pretrained=False, checkpoint=""))
    labels = torch.arange(2 * num_classes, device="cpu") % num_classes  # stands in for CRD's training labels
    with torch.device("meta"):
        student = _build("student", lambda: create_student(offline, num_classes), cfg.student.model, source)
        check_patch_grid(student, "student", cfg.data.img_size, source)
        teacher = None
        if _needs_teacher(cfg):
            teacher = _build("teacher", lambda: create_teacher(offline, num_classes), cfg.teacher.model, source)
            check_patch_grid(teacher, "teacher", cfg.data.img_size, source)
            if cfg.teacher.train is not None:
                _check_training(ClassifierTask(teacher, cfg.aug.label_smoothing), cfg, source,
                                C.teacher_train_config(cfg), "teacher.train")
        module = _build("pair", lambda: build(Setup(offline, student, teacher, num_classes, labels)),
                        f"{cfg.teacher.model} -> {cfg.student.model}", source)
        _check_training(module, cfg, source, cfg.train, "train")
    report.ok(f"models build at {cfg.data.img_size}x{cfg.data.img_size}: "
              + (f"teacher {cfg.teacher.model}, " if teacher is not None else "")
              + f"student {cfg.student.model}, method {cfg.method}"
              + (f" (fused: {module.fused.plan.chain})" if getattr(module, "fused", None) is not None else ""))
    return {"teacher": teacher, "student": student}


def _needs_teacher(cfg: C.RunConfig) -> bool:
    from . import methods
    return methods.get(cfg.method).needs_teacher


def check_patch_grid(model: Any, what: str, img_size: int, source: str) -> None:
    """Patch embeddings must tile the image exactly: timm's conv would silently drop the border."""
    for module in model.modules():
        patch = getattr(module, "patch_size", None)
        if not (hasattr(module, "proj") and isinstance(patch, (tuple, list)) and patch and isinstance(patch[0], int)):
            continue
        if img_size % patch[0]:
            fits = sorted((n for n in range(8, img_size + 2 * patch[0] + 1) if n % patch[0] == 0),
                          key=lambda n: abs(n - img_size))
            raise ModelError(f"data.img_size = {img_size} in {source} is not a multiple of the {what}'s patch size "
                             f"{patch[0]}: the border pixels would be dropped silently",
                             f"use data.img_size = {' or '.join(map(str, fits[:2]))}, or change {what}.kwargs.patch_size")
        return


def _build(what: str, make: Any, name: str, source: str = "<preset>") -> Any:
    try:
        return make()
    except FBTError as exc:  # already a sentence about the model; say which key of which file
        key = "the pair" if what == "pair" else f"`{what}.model`" if exc.message.startswith("unknown model") \
            else f"`{what}.kwargs`"
        raise type(exc)(f"{key} in {source}: {exc.message}", exc.hint) from None
    except Exception as exc:  # noqa: BLE001 - any failure to build is a user-facing model error
        text = str(exc).strip().splitlines()
        detail = text[0][:300] if text else type(exc).__name__
        if what == "pair":
            raise ModelError(f"FBT cannot be set up for the pair {name}: {detail}",
                             "check `fbt-engine fuse TEACHER STUDENT --img-size N`; try another fusion.order / "
                             "fusion.split, or another pair") from None
        raise ModelError(f"the {what} model {name!r} cannot be built with this preset: {detail}",
                         f"check {what}.model, {what}.kwargs and data.img_size (patch and window sizes must divide "
                         "the image size)") from None


def _check_training(module: Any, cfg: C.RunConfig, source: str, tc: C.TrainConfig, section: str) -> None:
    import torch
    from .trainer import build_scheduler
    x = torch.zeros(2, 3, cfg.data.img_size, cfg.data.img_size)
    y = torch.zeros(2, dtype=torch.long)
    try:
        module.train()
        if getattr(module, "meta_step", True):
            module(x, y, torch.arange(2, device="cpu")) if getattr(module, "needs_index", False) else module(x, y)
    except Exception as exc:  # noqa: BLE001
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"one training step of method {cfg.method!r} fails at {cfg.data.img_size}x"
                         f"{cfg.data.img_size}: {detail}",
                         "check data.img_size against the models' patch/window sizes and the preset's kwargs") from None
    opt = check_optimizer(module, tc, source, section)
    try:
        build_scheduler(opt, tc, steps_per_epoch=10)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"the learning-rate schedule `{section}.sched` = {tc.sched!r} in {source} cannot be built: "
                          f"{exc}", "use cosine, step or none") from None


def check_optimizer(module: Any, tc: C.TrainConfig, source: str, section: str = "train") -> Any:
    """The optimizer `tc` names, built over `module`; a ConfigError naming the key when it cannot be."""
    from timm.optim import list_optimizers
    from .trainer import build_optimizer
    name = tc.optimizer.lower()
    known = list_optimizers()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"`{section}.optimizer` in {source} is {tc.optimizer!r}, which timm does not know",
                          (f"did you mean `{near[0]}`? " if near else "") + "common choices: sgd, adamw, lamb, lion")
    try:
        return build_optimizer(module, tc)
    except Exception as exc:  # noqa: BLE001 - e.g. fused/bnb optimisers need packages that are not installed
        raise ConfigError(f"`{section}.optimizer` = {tc.optimizer!r} in {source} cannot be created here: "
                          f"{(str(exc).splitlines() or [type(exc).__name__])[0]}",
                          "pick an optimizer that needs no extra package (sgd, adamw, lamb, lion)") from None


# What each [log] backend imports (tensorboard: torch's SummaryWriter, which needs the package; a broken
# protobuf under it fails here too). MLflow's default store (SQLite in the run folder) needs sqlalchemy
# and alembic, which mlflow-skinny leaves out; the `mlflow` extra brings them.
LOGGER_IMPORTS = {"tensorboard": ("torch.utils.tensorboard",), "wandb": ("wandb",), "trackio": ("trackio",),
                  "mlflow": ("mlflow", "sqlalchemy", "alembic")}


def check_loggers(cfg: C.RunConfig, source: str = "<preset>") -> tuple[str, ...]:
    """Each chosen `[log]` backend's package imports (none is an engine dependency: each is an extra).
    Returns the backends checked."""
    import importlib
    chosen = cfg.log.chosen()
    for backend in chosen:
        modules = LOGGER_IMPORTS[backend]
        uri = cfg.log.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if backend == "mlflow" and uri.partition(":")[0] in ("http", "https", "databricks"):
            modules = modules[:1]  # a tracking server: only its client is needed here
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - ImportError, or a broken dependency under it
                raise _logger_error(cfg, backend, source, exc) from None
    if "wandb" in chosen:
        _check_wandb_login(cfg, source)
    return chosen


def _check_wandb_login(cfg: C.RunConfig, source: str) -> None:
    """Online W&B needs an API key; without one, wandb.init would fail (or, at a terminal, prompt)
    after the run had started. Looked up locally (env, settings, .netrc), nothing is sent."""
    mode = cfg.log.wandb_mode if cfg.log.wandb_mode != "auto" else os.environ.get("WANDB_MODE", "online")
    if mode not in ("online", "run"):
        return
    import wandb
    try:
        found = wandb.login(verify=False, prompt=False)
    except Exception:  # noqa: BLE001 - a wandb whose login works otherwise: let wandb.init decide
        return
    if found is False:
        raise ConfigError(f"`log.backends` in {source} includes 'wandb' in online mode, but no W&B API key is set up",
                          "run `wandb login` (or set WANDB_API_KEY), or log offline with log.wandb_mode = "
                          "\"offline\" and upload later with `wandb sync runs/<name>/wandb/offline-run-*`")


def _logger_error(cfg: C.RunConfig, backend: str, source: str, exc: Exception) -> ConfigError:
    alias = backend == "tensorboard" and backend not in cfg.log.backends  # the older spelling
    key = "log.tensorboard = true" if alias else f"log.backends includes {backend!r}"
    why = (str(exc).splitlines() or [type(exc).__name__])[0]
    off = "set log.tensorboard = false" if alias else f"take {backend!r} out of log.backends"
    return ConfigError(f"`{key}` in {source}, but {backend} logging cannot start ({why})",
                       f"pip install 'fbt-workbench[{backend}]' (in a source checkout: pip install -e "
                       f"'.[{backend}]'), or {off} (summary.csv and events.jsonl are written either way)")


def check_augmentation(cfg: C.RunConfig, source: str = "<preset>") -> None:
    from .data import build_transforms
    mean, std = tuple(cfg.data.mean or (0.5, 0.5, 0.5)), tuple(cfg.data.std or (0.5, 0.5, 0.5))
    try:
        build_transforms(cfg.data, cfg.aug, mean, std)
    except Exception as exc:  # noqa: BLE001 - timm asserts on malformed auto-augment strings
        raise ConfigError(f"`aug.randaugment` = {cfg.aug.randaugment!r} in {source} is not a timm auto-augment "
                          f"string ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})",
                          'write it like "rand-m9-mstd0.5-inc1" (RandAugment) or "augmix-m5-w4-d2", '
                          'or leave it empty') from None


def check_files(cfg: C.RunConfig, models: dict[str, Any], report: Report) -> None:
    """Teacher/student files: present (or trainable here), weights-only readable, shapes fit the
    (meta) `models` built by _check_models."""
    t = cfg.teacher
    if _needs_teacher(cfg):
        path = Path(t.checkpoint) if t.checkpoint else None
        if path is not None and path.exists():
            fresh = _check_weights_fit(models["teacher"], "teacher", path, fresh_head_ok=t.train is not None)
            report.ok(f"teacher weights {str(path)!r} fit {t.model}" + (
                f"; its classifier is fresh ({fresh[0]}): fine-tuned first ([teacher.train] tune = "
                f"{t.train.tune!r})" if fresh and t.train is not None else ""))
        elif t.pretrained:
            _check_pretrained_head(models["teacher"], t)
            if t.train is not None and path is not None:
                check_writable(path.parent, "the teacher's folder (teacher.checkpoint)")
            report.ok(f"teacher {t.model}: pretrained weights" + (" (fine-tuned first)" if t.train else ""))
        elif t.train is not None:
            if path is not None:
                check_writable(path.parent, "the teacher's folder (teacher.checkpoint)")
            report.ok("the teacher will be trained first ([teacher.train])")
        elif not t.pretrained:
            from .errors import TrainingError
            raise TrainingError(f"teacher checkpoint {str(path or '') !r} does not exist" if path else
                                "the teacher has no weights: teacher.checkpoint is empty",
                                "give the path of a teacher trained on this dataset, add a [teacher.train] section "
                                "to train it in this run, or set teacher.pretrained = true (needs internet)")
    if cfg.student.checkpoint:
        _check_weights_fit(models["student"], "student", Path(cfg.student.checkpoint))
        report.ok(f"student weights {cfg.student.checkpoint!r} fit {cfg.student.model}")


def _check_weights_fit(model: Any, what: str, path: Path, fresh_head_ok: bool = False) -> list[str]:
    import warnings
    from .checkpoint import load_weights
    with warnings.catch_warnings():  # "copying into a meta parameter is a no-op": only names and shapes matter here
        warnings.simplefilter("ignore")
        # weights-only read; shapes and names checked against the model; a classifier of another class
        # count is refused unless the teacher is fine-tuned first
        return load_weights(model, path, what, fresh_head_ok=fresh_head_ok)


def _check_pretrained_head(model: Any, t: C.ModelConfig) -> None:
    """Hub weights for another class count leave a fresh classifier: never distilled from as it is."""
    from .checkpoint import FreshClassifier
    hub_classes = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    classes = getattr(model, "num_classes", None)
    if t.train is not None or not hub_classes or classes in (None, hub_classes):
        return
    raise FreshClassifier(
        f"teacher {t.model!r} with pretrained = true has a classifier for {hub_classes} classes, the dataset "
        f"has {classes}: its classifier would be freshly initialised, and distilling from it teaches noise",
        "add a [teacher.train] section to fine-tune it on this dataset first (tune = \"head\" trains the "
        "classifier alone, \"all\" the whole model), or give teacher.checkpoint = a teacher trained on this dataset")


def check_writable(folder: Path, what: str) -> None:
    """`folder` is, or can be created as, a directory this process may write into."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {str(folder)!r} cannot be created: {str(probe)!r} is a file",
                          "choose a folder path that does not pass through a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(folder)!r} is not writable (no permission on {str(probe)!r})",
                          "choose a folder you can write to (--runs-dir DIR or the preset's path)")
