"""Run configuration: frozen dataclasses, TOML load/validate/override/dump. No torch here.

A preset lists only what differs from the defaults. Unknown keys are an error naming the key and
the nearest valid one; wrong types name the key, the expected type and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

METHODS = ("scratch", "kd", "ofa", "fbt")
DATASETS = ("digits", "fashion_mnist", "cifar100", "imagefolder")
PATHS = ("t->f", "f->s", "t->s")


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Train (or fine-tune) the teacher in the same run when its checkpoint does not exist yet."""

    epochs: int = 5
    optimizer: str = "adamw"
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 0
    batch_size: int = 0  # 0: same as [train].batch_size


@dataclass(frozen=True)
class ModelConfig:
    model: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    checkpoint: str = ""  # local .safetensors/.pth/.pt; teacher: trained here if absent and [teacher.train] given
    pretrained: bool = False  # download from the hub (online users only)
    train: TeacherTrainConfig | None = None  # teacher only


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = ""  # empty: the dataset's default location
    img_size: int = 32
    download: bool = False
    num_workers: int = 0
    train_subset: int = 0  # 0: all; otherwise the first N (seeded shuffle) training images
    val_subset: int = 0
    val_fraction: float = 0.2  # digits only: held-out share (seeded split)
    mean: list[float] = field(default_factory=list)  # empty: the dataset's own statistics
    std: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class AugConfig:
    scale_min: float = 1.0  # random-resized-crop lower scale; 1.0 with ratio 1 = plain resize
    hflip: float = 0.0
    randaugment: str = ""  # timm auto_augment string, e.g. "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adamw"  # any timm optimizer name: sgd, adamw, ...
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"  # cosine | step | none
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    decay_epochs: int = 30  # step schedule
    decay_rate: float = 0.1
    grad_clip: float = 0.0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    compile: bool = False
    ema_decay: float = 0.0  # 0: no model EMA
    deterministic: bool = False
    log_every: int = 10  # steps between `step` events
    eval_every: int = 1  # epochs between evaluations
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch (0: torch's default); 1 is fastest on a busy shared CPU
    max_steps_per_epoch: int = 0  # 0: full epoch (useful for smoke tests and benchmarks)


@dataclass(frozen=True)
class FusionConfig:
    order: str = "auto"  # auto | student-first | teacher-first
    split: int = 3  # stages taken from L (1..3)
    mixer: str = "auto"  # auto (attention unless G is a CNN) | attention | none


@dataclass(frozen=True)
class LossConfig:
    ce: float = 1.0
    kd: float = 1.0
    kd_temperature: float = 4.0
    ofa: float = 1.0
    ofa_eps: float = 1.0
    ofa_temperature: float = 1.0
    ofa_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # OFA-KD branches
    nce: float = 1.0
    nce_dim: int = 256
    nce_tau_init: float = 0.07
    fused_ce: float = 0.0
    paths: list[str] = field(default_factory=lambda: list(PATHS))


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    method: str = "fbt"
    seed: int = 0
    runs_dir: str = "runs"
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)


# --- building from plain data -------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _coerce(value, inner, key, source)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` in {source} must be a table, got {type(value).__name__}",
                              f"write it as [{key}] with key = value lines")
        return _build(tp, value, key, source)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }[origin or tp](value)
    if not ok:
        raise ConfigError(
            f"`{key}` in {source} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})",
            f"set {key} to a {_type_name(tp)} value")
    return float(value) if tp is float else value


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean `{(prefix + '.') if prefix else ''}{near[0]}`?" if near else \
                f"valid keys here: {', '.join(names)}"
            raise ConfigError(f"unknown key `{full}` in {source}", hint)
        kwargs[key] = _coerce(value, hints[key], full, source)
    return cls(**kwargs)


def from_dict(data: dict[str, Any], source: str = "<preset>") -> RunConfig:
    """Build and validate a RunConfig from nested plain data (as read from TOML)."""
    cfg = _build(RunConfig, data, "", source)
    validate(cfg, source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Fully resolved plain data (None values dropped: TOML has no null)."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return clean(dataclasses.asdict(cfg))


def _choice(value: str, allowed: tuple[str, ...], key: str, source: str) -> None:
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1)
        hint = f"did you mean `{near[0]}`? " if near else ""
        raise ConfigError(f"`{key}` in {source} is {value!r}, which is not one of {', '.join(allowed)}",
                          f"{hint}use one of: {', '.join(allowed)}")


def _positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"`{key}` in {source} must be {'>= 0' if allow_zero else '> 0'}, got {value}",
                          f"set {key} to a {'non-negative' if allow_zero else 'positive'} number")


def validate(cfg: RunConfig, source: str = "<preset>") -> None:
    """Semantic checks that types alone cannot express. Raises ConfigError."""
    _choice(cfg.method, METHODS, "method", source)
    _choice(cfg.data.name, DATASETS, "data.name", source)
    _choice(cfg.fusion.order, ("auto", "student-first", "teacher-first"), "fusion.order", source)
    _choice(cfg.fusion.mixer, ("auto", "attention", "none"), "fusion.mixer", source)
    _choice(cfg.train.sched, ("cosine", "step", "none"), "train.sched", source)
    _choice(cfg.train.amp, ("auto", "bf16", "fp16", "off"), "train.amp", source)
    _choice(cfg.train.channels_last, ("auto", "on", "off"), "train.channels_last", source)
    if not cfg.student.model:
        raise ConfigError(f"`student.model` is missing in {source}",
                          "add [student] with model = \"<timm name>\" (see `fbt-engine models`)")
    if cfg.method != "scratch" and not cfg.teacher.model:
        raise ConfigError(f"`teacher.model` is missing in {source} (method {cfg.method!r} needs a teacher)",
                          "add [teacher] with model = \"<timm name>\", or set method = \"scratch\"")
    if not 1 <= cfg.fusion.split <= 3:
        raise ConfigError(f"`fusion.split` in {source} must be 1, 2 or 3, got {cfg.fusion.split}",
                          "split counts the stages taken from the local model; the paper's best is 3")
    for key in ("epochs", "batch_size", "log_every", "eval_every"):
        _positive(getattr(cfg.train, key), f"train.{key}", source)
    _positive(cfg.train.lr, "train.lr", source)
    _positive(cfg.train.threads, "train.threads", source, allow_zero=True)
    _positive(cfg.data.img_size, "data.img_size", source)
    if cfg.data.img_size < 8:
        raise ConfigError(f"`data.img_size` in {source} is {cfg.data.img_size}, too small for any model",
                          "use 32 or more")
    if cfg.loss.ofa_eps <= 0 or cfg.loss.ofa_temperature <= 0 or cfg.loss.kd_temperature <= 0:
        raise ConfigError(f"loss temperatures and ofa_eps in {source} must be > 0",
                          "the paper uses ofa_eps 1.0 (CIFAR) or 1.5 (ImageNet), temperature 1")
    for p in cfg.loss.paths:
        _choice(p, PATHS, "loss.paths", source)
    for s in cfg.loss.ofa_stages:
        if s not in (1, 2, 3, 4):
            raise ConfigError(f"`loss.ofa_stages` in {source} holds {s}", "stages are numbered 1 to 4")
    for key in ("ce", "kd", "ofa", "nce", "fused_ce"):
        _positive(getattr(cfg.loss, key), f"loss.{key}", source, allow_zero=True)
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise ConfigError(f"`data.root` is required for imagefolder in {source}",
                          "point it at a folder holding train/ and val/ class folders")
    if cfg.teacher.train is not None:
        _positive(cfg.teacher.train.epochs, "teacher.train.epochs", source)
        _positive(cfg.teacher.train.lr, "teacher.train.lr", source)


# --- TOML and overrides -------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """Parse the right side of `--set key=value` as a TOML value; bare words stay strings."""
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings onto nested plain data (a copy)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} has no `=`", "write it as section.key=value, e.g. train.epochs=5")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: `{part}` is not a section", "check the key path")
        node[parts[-1]] = parse_value(raw.strip())
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"preset file {str(p)!r} does not exist",
                          "give a path to a .toml preset, e.g. presets/quickstart.toml")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {str(p)!r} is not valid TOML: {exc}", "fix the syntax at the line shown") from None


def load_preset(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML preset, apply `--set` overrides, build and validate a RunConfig."""
    data = apply_overrides(read_toml(path), overrides or [])
    return from_dict(data, source=str(path))


def dumps(cfg: RunConfig) -> str:
    import tomli_w  # imported lazily: only writers need it
    return tomli_w.dumps(to_dict(cfg))


def config_hash(cfg: RunConfig) -> str:
    """Hash of what determines the run's numbers (name and runs_dir excluded)."""
    data = to_dict(cfg)
    data.pop("name", None)
    data.pop("runs_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    return from_dict(apply_overrides(to_dict(cfg), overrides))


__all__ = ["RunConfig", "ModelConfig", "TeacherTrainConfig", "DataConfig", "AugConfig", "TrainConfig",
           "FusionConfig", "LossConfig", "load_preset", "from_dict", "to_dict", "dumps", "validate",
           "apply_overrides", "parse_value", "config_hash", "with_overrides", "replace", "METHODS", "DATASETS"]
