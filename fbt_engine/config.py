"""Run configuration: frozen dataclasses, TOML load/validate/override/dump. No torch here.

A preset lists only what differs from the defaults. Unknown keys are an error naming the key and
the nearest valid one; wrong types name the key, the expected type and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

from .methods import names as _method_names

METHODS = _method_names()  # one module per method in fbt_engine/methods/ (read from the folder, no torch)
DATASETS = ("digits", "fashion_mnist", "cifar100", "imagefolder")
PATHS = ("t->f", "f->s", "t->s")
ORDERS = ("auto", "student-first", "teacher-first")  # fusion.order / fuse --order
MIXERS = ("auto", "attention", "swin", "none")  # fusion.mixer / fuse --mixer
BATCH_SCOPES = ("global", "per_rank")  # train.batch_scope
LR_SCALES = ("none", "linear", "sqrt")  # train.lr_scale (timm's --lr-base-scale, plus none)


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
    # what a teacher with a pretrained backbone and a fresh classifier (another class count) fine-tunes:
    # "all" the whole model, "head" the classifier alone (the backbone stays as loaded)
    tune: str = "all"


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
    # torchrun (docs/distributed.md): batch_scope global: batch_size is the global batch, split over
    # the ranks (the same preset trains the same model on 1 or N GPUs); per_rank: each rank's batch
    # (timm train.py's convention; the global batch grows with the world size).
    batch_scope: str = "global"  # global | per_rank
    lr_scale: str = "none"  # none | linear | sqrt: lr x (global batch / lr_base_size), as timm's --lr-base-scale
    lr_base_size: int = 256  # the global batch `lr` is given for when lr_scale is not none (timm's --lr-base-size)
    sync_bn: bool = False  # torchrun on CUDA: SyncBatchNorm in the trained modules (the frozen teacher keeps its own)
    dist_timeout_s: float = 1800.0  # torchrun: a collective waiting longer for a peer fails (gloo/NCCL timeout)
    watchdog_s: float = 900.0  # torchrun: no step/eval/checkpoint for this long fails the job (0: off)


@dataclass(frozen=True)
class FusionConfig:
    order: str = "auto"  # auto | student-first | teacher-first
    split: int = 3  # stages taken from L (1..3)
    mixer: str = "auto"  # auto (attention unless G is a CNN) | attention | swin | none
    share: bool = True  # F shares S's modules (the paper); false: F holds copies that train apart (ablation)


@dataclass(frozen=True)
class LossConfig:
    ce: float = 1.0
    kd: float = 1.0
    kd_temperature: float = 1.0  # OFA-KD's default (train.py --kd-temperature 1), whose tables the paper quotes
    ofa: float = 1.0  # OFA loss on final logits (fbt: per path; ofa: OFA-KD's --kd-loss-weight)
    ofa_eps: float = 1.0  # final-logit eps (OFA-KD: 1.0 on CIFAR-100, 1.5 on ImageNet)
    ofa_temperature: float = 1.0
    ofa_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # OFA-KD branches
    ofa_branch: float = 1.0  # method ofa: weight of the branch terms (OFA-KD's --ofa-loss-weight)
    ofa_stage_eps: list[float] = field(default_factory=list)  # eps per ofa_stages entry; empty: ofa_eps
    nce: float = 1.0
    nce_dim: int = 256
    nce_tau_init: float = 0.07
    fused_ce: float = 0.0
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    feature: str = "infonce"  # fbt's feature term: infonce (the paper) | mse (pixel-wise, FitNet-style; ablation)
    # The paper's other baselines, with OFA-KD's defaults (train.py --<method>-*; `<method>` is the
    # weight of the method's distillation loss, OFA-KD's --kd-loss-weight / --fitnet-loss-weight).
    fitnet: float = 1.0
    fitnet_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    crd: float = 1.0
    crd_feat_dim: int = 128
    crd_k: int = 16384  # negatives per sample (at most the training set's size - 1)
    crd_momentum: float = 0.5
    crd_temperature: float = 0.07
    dkd: float = 1.0
    dkd_alpha: float = 1.0  # TCKD weight
    dkd_beta: float = 2.0  # NCKD weight
    dkd_temperature: float = 1.0
    dist: float = 1.0
    dist_beta: float = 1.0  # inter-class relation weight
    dist_gamma: float = 1.0  # intra-class relation weight
    dist_tau: float = 1.0
    cc: float = 1.0
    cc_scale: float = 0.02
    cc_feat_dim: int = 128
    rkd: float = 1.0
    rkd_distance: float = 25.0
    rkd_angle: float = 50.0
    # Per-term weights by logged name (e.g. {"nce/t->f" = 0.5, "ofa/stage1" = 0}), over the above.
    weights: dict[str, float] = field(default_factory=dict)


LOG_BACKENDS = ("tensorboard", "wandb", "trackio", "mlflow")  # [log] backends; loggers.py has one sink each
WANDB_MODES = ("auto", "online", "offline", "disabled")  # auto: $WANDB_MODE, else wandb's default (online)


@dataclass(frozen=True)
class LogConfig:
    """Where metrics go besides events.jsonl and summary.csv (always written); see loggers.py. Does not
    change the run's numbers, so it is left out of config_hash: a run may be resumed with logging switched."""

    backends: list[str] = field(default_factory=list)  # any of LOG_BACKENDS; each needs its pip extra
    # The W&B / trackio project and the MLflow experiment. One for every run (not one per run name, as
    # runs of a preset are named tiny, tiny-2, ...), so the tools compare runs side by side.
    project: str = "fbt-workbench"
    wandb_mode: str = "auto"  # online needs `wandb login`; offline writes runs/<name>/wandb/ (`wandb sync` later)
    wandb_entity: str = ""  # W&B team or user; "" = $WANDB_ENTITY or your default entity
    # "" = $MLFLOW_TRACKING_URI, else sqlite:///runs/<name>/mlflow.db (local: nothing leaves the machine)
    mlflow_uri: str = ""
    # Deprecated spelling of backends = ["tensorboard"]. Kept working rather than refused: every run
    # folder written before `backends` existed has `tensorboard = false` in its config.toml, and
    # refusing the key would make those runs impossible to resume.
    tensorboard: bool = False

    def chosen(self) -> tuple[str, ...]:
        """The backends in use, in LOG_BACKENDS order, each once (the deprecated switch included)."""
        wanted = set(self.backends) | ({"tensorboard"} if self.tensorboard else set())
        return tuple(b for b in LOG_BACKENDS if b in wanted)


def _check_log(cfg: "RunConfig", source: str) -> None:
    for i, backend in enumerate(cfg.log.backends):
        _choice(backend, LOG_BACKENDS, f"log.backends[{i}]", source)
    _choice(cfg.log.wandb_mode, WANDB_MODES, "log.wandb_mode", source)
    if not cfg.log.project.strip():
        raise ConfigError(f"`log.project` in {source} is empty",
                          "leave it out (fbt-workbench) or name the W&B/trackio project or MLflow experiment")


NCE_TAU_RANGE = (0.01, 1.0)  # InfoNCE's learned temperature is clamped to this (losses.InfoNCE; health checks)


@dataclass(frozen=True)
class HealthConfig:
    """Live health warnings (health.py, docs/health.md): cheap checks on the event stream that emit
    `warning` events. Does not change the run's numbers: left out of config_hash like [log]."""

    enabled: bool = True
    warmup_epochs: int = 1  # the after-warm-up rules wait this many epochs (and at least train.warmup_epochs)
    settle: float = 0.1  # the accuracy comparisons also wait this share of the phase's epochs
    spread_min: float = 0.02  # fused_spread (0: one point for the whole batch, ~1: spread out) below this
    nce_chance: float = 0.9  # an InfoNCE epoch mean above this share of ln(batch) is "at chance"
    tau_margin: float = 0.05  # a temperature within 5% of its clamp bound sits on it
    fused_gap: float = 30.0  # fused top-1 more than this many points below the teacher's
    scratch_margin: float = 1.0  # student top-1 more than this many points below the scratch run's
    rising_evals: int = 3  # a loss term that rose at this many evaluations in a row
    grad_spike: float = 10.0  # a gradient norm above this times the median of the recent ones
    baseline: str = ""  # a scratch run folder of the same sweep (its events.jsonl): the scratch curve


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
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


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
            f"`{key}` in {source} must be {_type_name(tp)}, got {_shown(value)} ({type(value).__name__})",
            f"set {key} to {_a(_type_name(tp))} value")
    if origin is list and args:  # list[float] etc.: every element has the element type
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    return float(value) if tp is float else value


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _shown(value: Any, limit: int = 60) -> str:
    """repr of a value, cut short so a 5 MB string never becomes a 5 MB error line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
        raise ConfigError(f"`{key}` in {source} is {_shown(value)}, which is not one of {', '.join(allowed)}",
                          f"{hint}use one of: {', '.join(allowed)}")


def _positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"`{key}` in {source} must be {'>= 0' if allow_zero else '> 0'}, got {value}",
                          f"set {key} to a {'non-negative' if allow_zero else 'positive'} number")


# Numeric ranges, one row per key: (key, low, high, low included, high included, hint).
# None: no bound on that side. Keys under teacher.train are skipped when that table is absent.
RANGES: tuple[tuple[str, float | None, float | None, bool, bool, str], ...] = (
    ("seed", 0, 2**32 - 1, True, True, "numpy and torch take seeds from 0 to 4294967295 (2**32 - 1)"),
    ("data.img_size", 8, 2048, True, True, "images are resized to img_size x img_size: use 32 for quick runs, "
                                           "224 for the paper's setting"),
    ("data.num_workers", 0, 1024, True, True, "0 loads data in the training process; a few per GPU is typical"),
    ("data.train_subset", 0, None, True, True, "0 uses every training image; N uses the first N"),
    ("data.val_subset", 0, None, True, True, "0 uses every validation image; N uses the first N"),
    ("data.val_fraction", 0, 1, False, False, "it is the held-out share of the digits, e.g. 0.2"),
    ("train.batch_size", 1, 65536, True, True, "65536 images a step is a sanity cap (no GPU holds more); "
                                               "use a smaller batch"),
    ("train.min_lr", 0, None, True, True, "it is the floor of the learning-rate schedule, e.g. 1e-5"),
    ("train.warmup_lr", 0, None, True, True, "it is the learning rate warm-up starts from, e.g. 1e-6"),
    ("train.weight_decay", 0, None, True, True, "0 turns weight decay off; 0.05 is usual for AdamW"),
    ("train.momentum", 0, None, True, True, "0.9 is usual for SGD"),
    ("train.warmup_epochs", 0, None, True, True, "0 turns warm-up off"),
    ("train.decay_epochs", 0, None, True, True, "the step schedule decays the learning rate every N epochs"),
    ("train.decay_rate", 0, None, False, True, "the step schedule multiplies the learning rate by it, e.g. 0.1"),
    ("train.grad_clip", 0, None, True, True, "0 turns gradient clipping off; 5.0 is the paper's"),
    ("train.ema_decay", 0, 1, True, False, "0 turns model EMA off; 0.99996 is the paper's"),
    ("train.lr_base_size", 1, None, True, True, "it is the global batch `train.lr` is given for, e.g. 256"),
    ("train.threads", 0, 1024, True, True, "0 keeps torch's default; 1 is fastest on a busy shared CPU"),
    ("train.max_steps_per_epoch", 0, None, True, True, "0 runs full epochs"),
    ("train.dist_timeout_s", 0, None, False, True, "it bounds a collective's wait for a lost rank, e.g. 1800"),
    ("train.watchdog_s", 0, None, True, True, "0 turns the hang watchdog off; it must exceed the longest "
                                              "evaluation or checkpoint write"),
    ("aug.scale_min", 0, 1, False, True, "it is the smallest crop share; 1.0 turns random crops off"),
    ("aug.hflip", 0, 1, True, True, "it is a probability, e.g. 0.5"),
    ("aug.random_erasing", 0, 1, True, True, "it is a probability, e.g. 0.25"),
    ("aug.mixup", 0, None, True, True, "it is mixup's alpha; 0 turns it off, 0.8 is the paper's"),
    ("aug.cutmix", 0, None, True, True, "it is cutmix's alpha; 0 turns it off, 1.0 is the paper's"),
    ("aug.label_smoothing", 0, 1, True, False, "0 turns it off; 0.1 is the paper's"),
    ("loss.nce_dim", 1, 65536, True, True, "it is the width of the contrastive projection, e.g. 256"),
    ("loss.nce_tau_init", 0, None, False, True, "it is the initial contrastive temperature, e.g. 0.07"),
    ("loss.crd_feat_dim", 1, 65536, True, True, "it is the width of CRD's embedding, e.g. 128"),
    ("loss.crd_k", 1, None, True, True, "it is the number of CRD negatives per sample, e.g. 16384"),
    ("loss.crd_momentum", 0, 1, True, False, "it is the memory bank's momentum, e.g. 0.5"),
    ("loss.crd_temperature", 0, None, False, True, "e.g. 0.07"),
    ("loss.dkd_temperature", 0, None, False, True, "e.g. 1 (OFA-KD) or 4 (DKD's paper on CIFAR)"),
    ("loss.dist_tau", 0, None, False, True, "e.g. 1"),
    ("loss.cc_feat_dim", 1, 65536, True, True, "it is the width of CC's embedding, e.g. 128"),
    ("teacher.train.epochs", 1, None, True, True, "the teacher trains for at least one epoch"),
    ("teacher.train.lr", 0, None, False, True, "e.g. 2e-3"),
    ("teacher.train.min_lr", 0, None, True, True, "it is the floor of the teacher's schedule, e.g. 1e-5"),
    ("teacher.train.weight_decay", 0, None, True, True, "0 turns weight decay off"),
    ("teacher.train.warmup_epochs", 0, None, True, True, "0 turns warm-up off"),
    ("teacher.train.batch_size", 0, 65536, True, True, "0 uses train.batch_size; 65536 is a sanity cap"),
    ("health.warmup_epochs", 0, None, True, True, "0 checks from the first epoch on"),
    ("health.settle", 0, 1, True, True, "it is a share of the phase's epochs, e.g. 0.1 (0: only the warm-up)"),
    ("health.spread_min", 0, 1, True, True, "fused_spread lies between 0 (collapsed) and 1; 0 turns the check off"),
    ("health.nce_chance", 0, None, False, True, "it is a share of ln(batch), e.g. 0.9"),
    ("health.tau_margin", 0, 1, True, False, "it is a relative distance to the clamp bound, e.g. 0.05"),
    ("health.fused_gap", 0, 100, True, True, "it is in top-1 points, e.g. 30"),
    ("health.scratch_margin", 0, 100, True, True, "it is in top-1 points, e.g. 1"),
    ("health.rising_evals", 1, None, True, True, "e.g. 3 evaluations in a row"),
    ("health.grad_spike", 1, None, False, True, "it is a factor over the median recent gradient norm, e.g. 10"),
)


def _bounds_text(lo: float | None, hi: float | None, lo_in: bool, hi_in: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_in else '>'} {lo}")
    if hi is not None:
        parts.append(f"{'<=' if hi_in else '<'} {hi}")
    if lo_in and hi_in and lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return " and ".join(parts)


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
        if node is None:
            return None
    return node


def _check_ranges(cfg: RunConfig, source: str) -> None:
    for key, lo, hi, lo_in, hi_in, hint in RANGES:
        value = _lookup(cfg, key)
        if value is None:
            continue
        low_bad = lo is not None and (value < lo or (value == lo and not lo_in))
        high_bad = hi is not None and (value > hi or (value == hi and not hi_in))
        if low_bad or high_bad:
            raise ConfigError(f"`{key}` in {source} must be {_bounds_text(lo, hi, lo_in, hi_in)}, "
                              f"got {_shown(value)}", hint)


def _walk(node: Any, prefix: str = ""):
    """(key, value) for every leaf of a config: dataclass fields, dict (kwargs) entries, list items."""
    if is_dataclass(node):
        for f in fields(node):
            yield from _walk(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _check_ints(cfg: RunConfig, source: str) -> None:
    """Integers without a range of their own still fit torch's 64 bits (TOML's have no limit here)."""
    for key, value in _walk(cfg):
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
            raise ConfigError(f"`{key}` in {source} is {_shown(value)}, which does not fit in 64 bits",
                              f"set {key} to a sensible number")


def _check_leaves(cfg: RunConfig, source: str) -> None:
    """Every float finite; no string holds a NUL (no path can)."""
    for key, value in _walk(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"`{key}` in {source} must be a finite number, got {value}",
                              f"nan and inf are not allowed: set {key} to an ordinary number")
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"`{key}` in {source} contains a NUL character ({_shown(value)})",
                              "remove the \\0 from the value")


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_name(name: str, source: str) -> None:
    """A run name is a plain folder name under the runs dir: it can never point elsewhere."""
    reason = ""
    if not isinstance(name, str) or not name:
        reason = "it is empty"
    elif len(name) > 100:
        reason = f"it is {len(name)} characters long (at most 100)"
    elif "/" in name or "\\" in name:
        reason = "it contains a path separator"
    elif name.startswith("."):
        reason = "it starts with '.'"
    elif not _NAME.fullmatch(name):
        reason = "it holds characters other than letters, digits, '.', '_' and '-'"
    if reason:
        raise ConfigError(f"`name` {_shown(name)} from {source} is not a plain folder name: {reason}",
                          "use 1 to 100 letters, digits, '.', '_' or '-' (not starting with '.'), "
                          "e.g. quickstart-2; the run folder is made under the runs dir")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_DEVICE_HINTS = {"gpu": "cuda", "cuda:": "cuda", "nvidia": "cuda", "metal": "mps", "apple": "mps"}


def _check_device(device: str, source: str) -> None:
    if _DEVICE.fullmatch(device):
        return
    near = _DEVICE_HINTS.get(device.lower().split(":")[0]) or \
        (difflib.get_close_matches(device.lower(), ("auto", "cpu", "cuda", "mps"), n=1) or [""])[0]
    hint = f"did you mean `{near}`? " if near else ""
    raise ConfigError(f"`train.device` in {source} is {_shown(device)}, which is not a device name",
                      f"{hint}use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")


def _check_stats(cfg: RunConfig, source: str) -> None:
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if len(values) not in (0, 1, 3):
            raise ConfigError(f"`data.{key}` in {source} has {len(values)} numbers",
                              "give 3 (one per RGB channel), 1 (the same for all three) or none (the "
                              "dataset's own)")
    bad = [v for v in cfg.data.std if v <= 0]
    if bad:
        raise ConfigError(f"`data.std` in {source} holds {bad[0]}, but every std must be > 0",
                          "images are divided by std; leave it empty to use the dataset's own")


def validate(cfg: RunConfig, source: str = "<preset>") -> None:
    """Semantic checks that types alone cannot express. Raises ConfigError."""
    _check_leaves(cfg, source)
    check_name(cfg.name, source)
    if not cfg.runs_dir.strip():
        raise ConfigError(f"`runs_dir` in {source} is empty", "leave it out (runs/) or name a folder")
    _choice(cfg.method, METHODS, "method", source)
    _choice(cfg.data.name, DATASETS, "data.name", source)
    _choice(cfg.fusion.order, ORDERS, "fusion.order", source)
    _choice(cfg.fusion.mixer, MIXERS, "fusion.mixer", source)
    _choice(cfg.train.sched, ("cosine", "step", "none"), "train.sched", source)
    _choice(cfg.train.amp, ("auto", "bf16", "fp16", "off"), "train.amp", source)
    _choice(cfg.train.channels_last, ("auto", "on", "off"), "train.channels_last", source)
    _choice(cfg.train.batch_scope, BATCH_SCOPES, "train.batch_scope", source)
    _choice(cfg.train.lr_scale, LR_SCALES, "train.lr_scale", source)
    _check_device(cfg.train.device, source)
    if not cfg.student.model:
        raise ConfigError(f"`student.model` is missing in {source}",
                          "add [student] with model = \"<timm name>\" (see `fbt-engine models`)")
    if cfg.method != "scratch" and not cfg.teacher.model:
        raise ConfigError(f"`teacher.model` is missing in {source} (method {cfg.method!r} needs a teacher)",
                          "add [teacher] with model = \"<timm name>\", or set method = \"scratch\"")
    if cfg.teacher.train is not None:
        _choice(cfg.teacher.train.tune, TEACHER_TUNE, "teacher.train.tune", source)
    if not 1 <= cfg.fusion.split <= 3:
        raise ConfigError(f"`fusion.split` in {source} must be 1, 2 or 3, got {cfg.fusion.split}",
                          "split counts the stages taken from the local model; the paper's best is 3")
    for key in ("epochs", "batch_size", "log_every", "eval_every"):
        _positive(getattr(cfg.train, key), f"train.{key}", source)
    _positive(cfg.train.lr, "train.lr", source)
    _check_ranges(cfg, source)
    _check_ints(cfg, source)
    _check_stats(cfg, source)
    _check_log(cfg, source)
    if cfg.loss.ofa_eps <= 0 or cfg.loss.ofa_temperature <= 0 or cfg.loss.kd_temperature <= 0:
        raise ConfigError(f"loss temperatures and ofa_eps in {source} must be > 0",
                          "the paper uses ofa_eps 1.0 (CIFAR) or 1.5 (ImageNet), temperature 1")
    for p in cfg.loss.paths:
        _choice(p, PATHS, "loss.paths", source)
    for s in cfg.loss.ofa_stages:
        if s not in (1, 2, 3, 4):
            raise ConfigError(f"`loss.ofa_stages` in {source} holds {s}", "stages are numbered 1 to 4")
    if cfg.loss.ofa_stage_eps and len(cfg.loss.ofa_stage_eps) != len(cfg.loss.ofa_stages):
        raise ConfigError(f"`loss.ofa_stage_eps` in {source} has {len(cfg.loss.ofa_stage_eps)} values for "
                          f"{len(cfg.loss.ofa_stages)} `loss.ofa_stages`", "give one eps per stage, or none")
    if any(e <= 0 for e in cfg.loss.ofa_stage_eps):
        raise ConfigError(f"`loss.ofa_stage_eps` in {source} must hold values > 0", "OFA-KD uses 1.0 or 1.5")
    for key in ("ce", "kd", "ofa", "ofa_branch", "nce", "fused_ce", "fitnet", "crd", "dkd", "dkd_alpha", "dkd_beta",
                "dist", "dist_beta", "dist_gamma", "cc", "cc_scale", "rkd", "rkd_distance", "rkd_angle"):
        _positive(getattr(cfg.loss, key), f"loss.{key}", source, allow_zero=True)
    _choice(cfg.loss.feature, ("infonce", "mse"), "loss.feature", source)
    for s in cfg.loss.fitnet_stages:
        if s not in (1, 2, 3, 4):
            raise ConfigError(f"`loss.fitnet_stages` in {source} holds {s}", "stages are numbered 1 to 4")
    for term, weight in cfg.loss.weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"`loss.weights` in {source} gives {term!r} the weight {_shown(weight)}",
                              "a term's weight is a number >= 0 (0 removes the term)")
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise ConfigError(f"`data.root` is required for imagefolder in {source}",
                          "point it at a folder holding train/ and val/ class folders")


TEACHER_TUNE = ("all", "head")


def teacher_train_config(cfg: RunConfig) -> TrainConfig:
    """The [train] settings the teacher phase runs with: [teacher.train] overrides them, no EMA."""
    tt, tc = cfg.teacher.train, cfg.train
    assert tt is not None, "only for presets with a [teacher.train] section"
    return replace(tc, epochs=tt.epochs, optimizer=tt.optimizer, lr=tt.lr, min_lr=tt.min_lr,
                   weight_decay=tt.weight_decay, warmup_epochs=tt.warmup_epochs, ema_decay=0.0,
                   batch_size=tt.batch_size or tc.batch_size)


def rank_batch_size(tc: TrainConfig, world: int) -> int:
    """Each rank's batch: `batch_size` / world under batch_scope global, `batch_size` under per_rank."""
    if tc.batch_scope == "per_rank" or world <= 1:
        return tc.batch_size
    if tc.batch_size % world:
        raise ConfigError(f"`train.batch_size` = {tc.batch_size} is the global batch (train.batch_scope = "
                          f"\"global\") and does not divide over {world} ranks",
                          f"use a multiple of {world} (e.g. {max(world, tc.batch_size // world * world)}), or set "
                          "train.batch_scope = \"per_rank\"")
    return tc.batch_size // world


def scaled_lr(tc: TrainConfig, world: int) -> float:
    """`lr` scaled to the global batch by `lr_scale` (none, linear or sqrt in global batch / lr_base_size)."""
    if tc.lr_scale == "none":
        return tc.lr
    ratio = rank_batch_size(tc, world) * max(world, 1) / tc.lr_base_size
    return tc.lr * (ratio if tc.lr_scale == "linear" else math.sqrt(ratio))


# --- TOML and overrides -------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """Parse the right side of `--set key=value` as a TOML value; bare words stay strings."""
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings onto nested plain data (a copy)."""
    out = copy.deepcopy(data)  # not a JSON round trip: TOML dates would not survive it
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {_shown(item)} has no `=`",
                              "write it as section.key=value, e.g. train.epochs=5")
        key, _, raw = item.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not all(parts):
            raise ConfigError(f"override {_shown(item)} has an empty key or key part",
                              "write it as section.key=value, e.g. train.epochs=5")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_shown(item)}: `{'.'.join(parts[:i + 1])}` is not a section",
                                  "only tables (train, data, teacher.kwargs, ...) have keys below them")
        node[parts[-1]] = parse_value(raw.strip())
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A preset file's plain data; every way it can be unreadable is one ConfigError naming it."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"preset {str(p)!r} is a directory, not a file",
                          "give the path of a .toml preset inside it, e.g. presets/quickstart.toml")
    if not p.is_file():
        raise ConfigError(f"preset file {str(p)!r} does not exist",
                          "give a path to a .toml preset, e.g. presets/quickstart.toml")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a BOM (Windows editors) is fine
    except UnicodeDecodeError as exc:
        raise ConfigError(f"preset {str(p)!r} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                          "save it as UTF-8; a preset is a TOML text file") from None
    except OSError as exc:
        raise ConfigError(f"preset {str(p)!r} cannot be read: {exc.strerror or exc}",
                          "check the file's permissions, or copy it somewhere readable") from None
    try:
        return tomllib.loads(text)
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
    data.pop("log", None)  # where metrics are written does not change them
    data.pop("health", None)  # nor do the health checks, which only watch
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    return from_dict(apply_overrides(to_dict(cfg), overrides))


def describe(cfg: RunConfig) -> str:
    """One line a person checks a preset by: pair, method, data, budget.

    e.g. `resnet18 (trained here, 4 epochs) -> vit_tiny_patch16_224, method fbt, digits at 32 px,
    8 epochs x batch 64, adamw lr 0.001, device auto`."""
    student = cfg.student.model + (f" {_kwargs_text(cfg.student.kwargs)}" if cfg.student.kwargs else "")
    if cfg.method == "scratch" or not cfg.teacher.model:
        pair = f"{student} from scratch"
    else:
        t = cfg.teacher
        if t.checkpoint and t.train is not None:
            source = f"from {t.checkpoint}, trained here first ({t.train.epochs} epochs) if absent"
        elif t.checkpoint:
            source = f"from {t.checkpoint}"
        elif t.train is not None:
            source = f"trained here, {t.train.epochs} epochs"
        else:
            source = "hub weights" if t.pretrained else "no weights"
        pair = f"{t.model} ({source}) -> {student}"
    data = cfg.data.name + (f" ({cfg.data.root})" if cfg.data.root else "") + f" at {cfg.data.img_size} px"
    if cfg.data.train_subset:
        data += f", {cfg.data.train_subset} training images"
    tr = cfg.train
    budget = f"{tr.epochs} epochs x batch {tr.batch_size}, {tr.optimizer} lr {tr.lr:g}"
    if tr.max_steps_per_epoch:
        budget += f", at most {tr.max_steps_per_epoch} steps/epoch"
    return f"{pair}, method {cfg.method}, {data}, {budget}, device {tr.device}"


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


__all__ = ["RunConfig", "ModelConfig", "TeacherTrainConfig", "DataConfig", "AugConfig", "TrainConfig",
           "FusionConfig", "LossConfig", "LogConfig", "load_preset", "from_dict", "to_dict", "dumps", "validate", "check_name",
           "apply_overrides", "parse_value", "config_hash", "with_overrides", "describe", "replace", "METHODS", "DATASETS",
           "BATCH_SCOPES", "LR_SCALES", "rank_batch_size", "scaled_lr"]
