"""What every training method shares: the `Method` base class and `Setup`, what a method is built from.

A method is one `nn.Module` (DDP and torch.compile wrap exactly this) holding the student, the frozen
teacher and the modules the method adds (branches, a fused model, projection heads, a memory bank).
A subclass says three things:

* `term_weights()`: every loss term it can log, by name, with its weight from the config;
* `compute(x, target, index)`: runs the models once and returns each term as a lazy value;
* `trains`: the submodules whose parameters the optimiser updates (checked when it is built);
  under torchrun DDP reduces exactly these (ddp.py), never the teacher.

A term over the batch's relations (not a mean of per-sample values) gathers its rows with
`ddp.gather_batch`, so N ranks compute the 1-process loss of the global batch (docs/distributed.md).

`forward` weighs and sums the terms whose weight is > 0 (a zero weight removes the term: it is
neither computed nor logged) and returns `(total, logged)`, the terms unweighted and detached.
`loss.weights` (per logged term name) overrides any term's weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from ..config import LossConfig, RunConfig
from ..errors import ConfigError
from ..fusion import freeze
from ..losses import ce_loss

Thunk = Callable[[], Tensor]


@dataclass
class Setup:
    """What a method is built from."""

    cfg: RunConfig
    student: nn.Module
    teacher: nn.Module | None
    num_classes: int
    train_labels: Tensor | None = None  # labels in dataset-index order: methods with needs_index (CRD)


def once(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A thunk computed at most once: for two terms that come from one computation (DKD, RKD)."""
    box: list[Any] = []

    def get() -> Any:
        if not box:
            box.append(fn())
        return box[0]
    return get


class Method(nn.Module):
    """Base class of the training methods (see the module docstring)."""

    name: ClassVar[str] = ""  # set by @register from the module's file name
    summary: ClassVar[str] = ""  # one line for lists (CLI, TUI)
    needs_teacher: ClassVar[bool] = True
    needs_index: ClassVar[bool] = False  # batches must carry each sample's dataset index
    trains: ClassVar[tuple[str, ...]] = ("student",)  # submodules holding the trained parameters
    meta_step: ClassVar[bool] = True  # preflight can run a step on the meta device (no data-dependent branches)
    rank_synced: ClassVar[tuple[str, ...]] = ()  # buffers the method keeps equal on every rank itself (DDP skips them)

    def __init__(self, setup: Setup) -> None:
        super().__init__()
        cfg = setup.cfg
        if self.needs_teacher and setup.teacher is None:
            raise ValueError(f"method {self.name!r} needs a teacher model")
        self.loss_cfg = cfg.loss
        self.num_classes = setup.num_classes
        self.img_size = cfg.data.img_size
        self.label_smoothing = cfg.aug.label_smoothing
        self.student = setup.student
        self.teacher = freeze(setup.teacher) if self.needs_teacher else None
        self._weights: dict[str, float] | None = None

    # --- what a subclass provides ------------------------------------------------------------
    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:  # pragma: no cover - abstract
        """Every term this method can log under the loss config `c` (in logging order), with its weight."""
        raise NotImplementedError

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:  # pragma: no cover
        """Run the models on a batch; return each term's unweighted value as a thunk."""
        raise NotImplementedError

    # --- shared behaviour --------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The network this method trains and exports (EMA follows it)."""
        return self.student

    def weights(self) -> dict[str, float]:
        """Term name -> weight, `loss.weights` applied; read by the NaN watch to name an overflow."""
        if self._weights is None:
            self._weights = resolved_weights(type(self), self.loss_cfg)
        return self._weights

    def term_names(self) -> list[str]:
        """Names `forward` logs (weights > 0), known before the first step."""
        return [n for n, w in self.weights().items() if w > 0]

    def forward(self, x: Tensor, target: Tensor, index: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.combine(self.compute(x, target, index))

    def combine(self, thunks: dict[str, Thunk]) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum of the terms with weight > 0, and those terms unweighted and detached."""
        total: Tensor | None = None
        logged: dict[str, Tensor] = {}
        for name, weight in self.weights().items():
            if weight <= 0:
                continue
            value = thunks[name]()
            logged[name] = value.detach()
            # `1.0 * v` next to `v.detach()` loses its grad_fn under torch.compile (torch 2.14.1,
            # seen with the scratch objective): skip the multiplication when it changes nothing.
            weighted = value if weight == 1.0 else weight * value
            total = weighted if total is None else total + weighted
        if total is None:  # every weight 0: a valid graph with no gradient
            total = sum(p.sum() for p in self.student.parameters()) * 0.0
        return total, logged

    def eval_logits(self, x: Tensor, with_teacher: bool) -> dict[str, Tensor]:
        """Logits of the trained model (`model`), and of the teacher when asked (and of F for FBT)."""
        out = {"model": self.student(x)}
        if with_teacher and self.teacher is not None:
            out["teacher"] = self.teacher(x)
        return out

    def params(self) -> dict[str, int]:
        """Parameter counts for the `started` event: the two models, what the method adds, what trains."""
        own = {id(p) for m in (self.student, self.teacher) if m is not None for p in m.parameters()}
        table = {"student": _count(self.student.parameters())}
        if self.teacher is not None:
            table["teacher"] = _count(self.teacher.parameters())
        table["extra"] = _count(p for p in self.parameters() if id(p) not in own)
        table["trainable"] = _count(p for p in self.parameters() if p.requires_grad)
        return table

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics and dropout stay in inference mode
        return self

    def check_trains(self) -> None:
        """Every trained parameter lives under a submodule named in `trains`; the teacher has none."""
        stray = [n for n, p in self.named_parameters() if p.requires_grad and n.split(".")[0] not in self.trains]
        if stray:
            raise AssertionError(f"method {self.name!r} trains {stray[0]}, outside its declared "
                                 f"`trains` {self.trains}")

    # --- helpers for subclasses --------------------------------------------------------------
    def ce(self, logits: Tensor, target: Tensor) -> Tensor:
        # Soft (mixup) targets already carry timm's smoothing; smooth hard labels only.
        return ce_loss(logits, target, self.label_smoothing if target.ndim == 1 else 0.0)

    def teacher_logits(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher(x)


def logits_and_prelogits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the pre-logits feature (what the classifier sees: OFA-KD's `feat[-1]`) from one
    pass through the model's features; timm's `forward_head(pre_logits=True)` defines the feature."""
    f = model.forward_features(x)
    return model.forward_head(f), model.forward_head(f, pre_logits=True)


def prelogits_width(model: nn.Module) -> int:
    """Width of `logits_and_prelogits`'s feature, from the model's own attributes."""
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise ValueError(f"{type(model).__name__} reports no num_features: its pre-logits width is unknown")
    return int(width)


def resolved_weights(cls: type[Method], loss: LossConfig, source: str = "the preset") -> dict[str, float]:
    """`cls`'s terms under `loss` with their weights, `loss.weights` applied; a name the method does
    not have is a ConfigError listing its terms (no model is built: preflight checks this first)."""
    weights = {k: float(v) for k, v in cls.term_weights(loss).items()}
    unknown = [k for k in loss.weights if k not in weights]
    if unknown:
        raise ConfigError(f"`loss.weights` in {source} names {', '.join(map(repr, unknown))}, which method "
                          f"{cls.name!r} does not have", f"its terms are: {', '.join(weights)}")
    weights.update({k: float(v) for k, v in loss.weights.items()})
    return weights


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def build(setup: Setup) -> Method:
    """The method `setup.cfg.method`, built and checked (unknown `loss.weights` names, `trains`)."""
    from . import get
    method = get(setup.cfg.method)(setup)
    method.weights()
    method.check_trains()
    return method


__all__ = ["Setup", "Method", "Thunk", "freeze", "once", "build", "resolved_weights", "logits_and_prelogits", "prelogits_width"]
