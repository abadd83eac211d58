"""Losses and method objectives (method.md sections 4 and 6).

Two layers:

* pure loss functions on tensors: `ce_loss`, `kd_loss`, `ofa_loss`, and the `InfoNCE` module
  (it owns learnable projection heads and a temperature);
* method objectives, one per training method (`scratch`, `kd`, `ofa`, `fbt`), kept in the `LOSSES`
  registry and built by `build_objective`. An objective takes an `Outputs` bundle and returns
  `(total, terms)`: `total` is the weighted sum that is back-propagated, `terms` maps each term's
  name (`ce`, `ofa/t->s`, `nce/f->s`, ...) to its *unweighted*, detached value for logging. A term
  whose weight is 0 is neither computed nor logged.

Target sides (teacher logits/features, and the fused model in the F->S path) are always detached:
knowledge flows from the target into the learner, never back.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PATHS, LossConfig
from .errors import ConfigError

# The autograd-aware all_gather is marked deprecated in torch 2.x in favour of a private API; it
# is the public way to keep gradients through the gather, so keep using it quietly.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")

__all__ = [
    "ce_loss", "kd_loss", "ofa_loss", "hard_labels", "InfoNCE", "Outputs", "Objective",
    "ScratchObjective", "KDObjective", "OFAObjective", "FBTObjective", "LOSSES", "register_method",
    "build_objective",
]


# --- pure loss functions --------------------------------------------------------------------

def _f32(x: Tensor) -> Tensor:
    """Half-precision logits are upcast: softmax powers and logs lose too much in bf16/fp16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def hard_labels(target: Tensor) -> Tensor:
    """Class indices from hard labels (N,) or soft/mixup targets (N, C) (argmax)."""
    return target.argmax(dim=1) if target.ndim == 2 else target


def ce_loss(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy, mean over the batch.

    `target` is class indices (N,) or a probability distribution per row (N, C), e.g. from
    mixup/cutmix. `smoothing` mixes the target with the uniform distribution
    (`(1 - s) * target + s / C`) for both kinds; pass 0 for mixup targets that already carry it.
    """
    logits = _f32(logits)
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    target = target.to(logits.dtype)
    if smoothing > 0:
        target = target * (1.0 - smoothing) + smoothing / logits.shape[1]
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: `T^2 * KL(p_t || p_s)` at temperature T, batchmean. The teacher is detached."""
    t = temperature
    log_q = F.log_softmax(_f32(student_logits) / t, dim=1)
    log_p = F.log_softmax(_f32(teacher_logits.detach()) / t, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def ofa_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, eps: float,
             temperature: float = 1.0) -> Tensor:
    """OFA-KD loss: `mean_n -sum_c [(p_c + m_c)^eps - m_c] * log q_c`.

    q = softmax(z_s / T), p = softmax(z_t / T) (detached), m = one-hot of the label (argmax of
    soft targets). eps = 1 is soft-label cross-entropy with target p; eps > 1 sharpens the target
    class. No T^2 factor (as in OFA-KD).
    """
    log_q = F.log_softmax(_f32(student_logits) / temperature, dim=1)
    p = F.softmax(_f32(teacher_logits.detach()) / temperature, dim=1)
    m = F.one_hot(hard_labels(target), num_classes=log_q.shape[1]).to(p.dtype)
    weight = (p + m).pow(eps) - m
    return -(weight * log_q).sum(dim=1).mean()


def _gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Rows of `x` from every rank in rank order, and where this rank's rows start.

    The gather is differentiable (torch.distributed.nn): each rank's rows receive the gradient of
    every rank's loss, so after DDP's gradient averaging the heads see exactly the gradient of the
    global-batch loss. Every rank must therefore run backward. Ranks may hold different batch sizes
    (a last short batch): rows are padded to the largest count and the padding sliced off.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather  # autograd-aware collective

    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    parts = all_gather(F.pad(x, (0, 0, 0, max(counts) - x.shape[0])))
    return torch.cat([p[:c] for p, c in zip(parts, counts)]), sum(counts[:rank])


class InfoNCE(nn.Module):
    """Spatial-agnostic InfoNCE between pooled features of a learner and a target.

    Two linear heads project both sides to `dim`, rows are L2-normalised, and
    `logits = q k^T / tau` with a learnable log-temperature (tau clamped to [0.01, 1]). Row i's
    positive is column i (the same image); the other images of the batch, gathered from all ranks
    under torch.distributed, are negatives. The loss is the mean of the two directions'
    cross-entropies. The target features are detached; the target *head* still learns.
    """

    def __init__(self, in_dim_student: int, in_dim_target: int, dim: int = 256,
                 tau_init: float = 0.07) -> None:
        super().__init__()
        self.proj_student = nn.Linear(in_dim_student, dim)
        self.proj_target = nn.Linear(in_dim_target, dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau_init)))

    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp().clamp(0.01, 1.0)

    def forward(self, student_feat: Tensor, target_feat: Tensor) -> Tensor:
        q = F.normalize(self.proj_student(student_feat), dim=1)
        k = F.normalize(self.proj_target(target_feat.detach()), dim=1)
        q_all, offset = _gather_rows(q)
        k_all, _ = _gather_rows(k)
        labels = torch.arange(q.shape[0], device=q.device) + offset
        tau = self.tau
        loss_qk = F.cross_entropy(_f32(q @ k_all.t()) / tau, labels)
        loss_kq = F.cross_entropy(_f32(k @ q_all.t()) / tau, labels)
        return 0.5 * (loss_qk + loss_kq)


# --- method objectives ----------------------------------------------------------------------

@dataclass(kw_only=True)
class Outputs:
    """What one training step produced, as the objectives consume it.

    Features are pooled (N, D). `target` is class indices (N,) or soft targets (N, C) under
    mixup. `branch_logits` are the OFA branches' logits in the order of `LossConfig.ofa_stages`.
    """

    student_logits: Tensor
    target: Tensor
    student_feat: Tensor | None = None
    teacher_logits: Tensor | None = None
    teacher_feat: Tensor | None = None
    fused_logits: Tensor | None = None
    fused_feat: Tensor | None = None
    branch_logits: list[Tensor] | None = None


Term = tuple[str, float, Callable[[], Tensor]]  # name, weight, lazy unweighted value


def _need(out: Outputs, *names: str) -> None:
    missing = [n for n in names if getattr(out, n) is None]
    if missing:
        raise ValueError(f"this objective needs Outputs.{', Outputs.'.join(missing)}, which is None")


class Objective(nn.Module):
    """Base objective: subclasses list their terms; `forward` weighs and sums them.

    Returns `(total, terms)` where `total = sum(weight * value)` over terms with weight > 0 and
    `terms[name]` is the unweighted value, detached (read it from the device only when logging).
    """

    method = ""

    def __init__(self, cfg: LossConfig, dims: dict[str, int], num_classes: int,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def terms(self, out: Outputs) -> list[Term]:  # pragma: no cover - abstract
        raise NotImplementedError

    def term_names(self) -> list[str]:
        """Names `forward` will log (weights > 0), known before the first step."""
        raise NotImplementedError

    def forward(self, out: Outputs) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        logged: dict[str, Tensor] = {}
        self.term_weights: dict[str, float] = {}  # read when the total overflows: which weight did it
        for name, weight, value_fn in self.terms(out):
            if weight <= 0:
                continue  # a zero weight removes the term: no compute, no log, no unused params
            self.term_weights[name] = weight
            value = value_fn()
            logged[name] = value.detach()
            # `1.0 * v` next to `v.detach()` loses its grad_fn under torch.compile (torch 2.14.1,
            # seen with the scratch objective): skip the multiplication when it changes nothing.
            weighted = value if weight == 1.0 else weight * value
            total = weighted if total is None else total + weighted
        if total is None:
            total = out.student_logits.sum() * 0.0  # keeps the graph valid when every weight is 0
        return total, logged

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        # Soft (mixup) targets already carry timm's smoothing; smooth hard labels only.
        smoothing = self.label_smoothing if target.ndim == 1 else 0.0
        return ce_loss(logits, target, smoothing)

    def _ofa(self, student: Tensor, teacher: Tensor, target: Tensor, eps: float | None = None) -> Tensor:
        eps = self.cfg.ofa_eps if eps is None else eps
        return ofa_loss(student, teacher, target, eps, self.cfg.ofa_temperature)


LOSSES: dict[str, type[Objective]] = {}


def register_method(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator: register an objective under a method name."""
    def deco(cls: type[Objective]) -> type[Objective]:
        cls.method = name
        LOSSES[name] = cls
        return cls
    return deco


def build_objective(method: str, cfg: LossConfig, dims: dict[str, int], num_classes: int,
                    label_smoothing: float = 0.0) -> Objective:
    """Build the objective of `method`.

    `dims` gives pooled feature widths: {'student': D_s, 'teacher': D_t, 'fused': D_f} (only the
    widths an active InfoNCE path needs must be present). `label_smoothing` applies to CE on hard
    labels. Put `objective.parameters()` (InfoNCE heads) into the optimiser.
    """
    if method not in LOSSES:
        near = difflib.get_close_matches(method, list(LOSSES), n=1)
        raise ConfigError(f"unknown method {method!r}",
                          (f"did you mean `{near[0]}`? " if near else "") + f"use one of: {', '.join(LOSSES)}")
    return LOSSES[method](cfg, dims, num_classes, label_smoothing)


@register_method("scratch")
class ScratchObjective(Objective):
    """CE on the student only."""

    def terms(self, out: Outputs) -> list[Term]:
        return [("ce", self.cfg.ce, lambda: self._ce(out.student_logits, out.target))]

    def term_names(self) -> list[str]:
        return ["ce"] if self.cfg.ce > 0 else []


@register_method("kd")
class KDObjective(Objective):
    """Hinton KD: `ce * CE + kd * T^2 KL(p_t || p_s)`."""

    def terms(self, out: Outputs) -> list[Term]:
        _need(out, "teacher_logits")
        return [
            ("ce", self.cfg.ce, lambda: self._ce(out.student_logits, out.target)),
            ("kd", self.cfg.kd, lambda: kd_loss(out.student_logits, out.teacher_logits,
                                                self.cfg.kd_temperature)),
        ]

    def term_names(self) -> list[str]:
        return [n for n, w in (("ce", self.cfg.ce), ("kd", self.cfg.kd)) if w > 0]


@register_method("ofa")
class OFAObjective(Objective):
    """OFA-KD: `ce * CE + ofa * L_OFA(final logits) + ofa_branch * sum_k L_OFA(branch k)`.

    As OFA-KD's `distillers/ofa.py` L121-139 (Hao840/OFAKD): the final-logit term (`ofa`, its
    `--kd-loss-weight`, default 1) and the branch terms (`ofa_branch`, its `--ofa-loss-weight`,
    default 1) have separate weights. The final term uses `ofa_eps`; branch k uses
    `ofa_stage_eps[k]` (its per-stage `--ofa-eps` list) or `ofa_eps` when that list is empty.
    Branch logits come from `OFABranches`, in the order of `cfg.ofa_stages`; every term is taught
    by the teacher's final logits and logged unweighted (`ofa`, `ofa/stage<k>`).
    """

    def stage_eps(self) -> list[float]:
        return list(self.cfg.ofa_stage_eps) or [self.cfg.ofa_eps] * len(self.cfg.ofa_stages)

    def terms(self, out: Outputs) -> list[Term]:
        _need(out, "teacher_logits")
        branches = out.branch_logits or []
        if len(branches) != len(self.cfg.ofa_stages):
            raise ValueError(f"got {len(branches)} branch logits for ofa_stages {self.cfg.ofa_stages}")
        t, y = out.teacher_logits, out.target
        terms: list[Term] = [
            ("ce", self.cfg.ce, lambda: self._ce(out.student_logits, y)),
            ("ofa", self.cfg.ofa, lambda: self._ofa(out.student_logits, t, y)),
        ]
        for stage, eps, logits in zip(self.cfg.ofa_stages, self.stage_eps(), branches):
            terms.append((f"ofa/stage{stage}", self.cfg.ofa_branch,
                          lambda z=logits, e=eps: self._ofa(z, t, y, e)))
        return terms

    def term_names(self) -> list[str]:
        names = ["ce"] if self.cfg.ce > 0 else []
        names += ["ofa"] if self.cfg.ofa > 0 else []
        return names + ([f"ofa/stage{s}" for s in self.cfg.ofa_stages] if self.cfg.ofa_branch > 0 else [])


# Which side learns and which side teaches on each FBT path: (learner, target).
_PATH_SIDES = {"t->f": ("fused", "teacher"), "f->s": ("student", "fused"), "t->s": ("student", "teacher")}


def _head_key(path: str) -> str:
    # nn.Module names cannot hold "."; "->" is legal but awkward in state_dict keys: t->f -> t2f.
    return path.replace("->", "2")


@register_method("fbt")
class FBTObjective(Objective):
    """Fuse Before Transfer: `ce * CE(S) + sum_paths (ofa * L_OFA + nce * L_InfoNCE)`.

    Paths (`cfg.paths`): T->F (teacher teaches the fused model), F->S (fused teaches the student;
    F is detached there) and T->S. Each path with `nce > 0` owns one `InfoNCE` module (learnable:
    include `objective.parameters()` in the optimiser). `ce/fused` is CE on F when `fused_ce > 0`.
    """

    def __init__(self, cfg: LossConfig, dims: dict[str, int], num_classes: int,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(cfg, dims, num_classes, label_smoothing)
        unknown = [p for p in cfg.paths if p not in _PATH_SIDES]
        if unknown:
            raise ConfigError(f"unknown FBT path(s) {unknown}", f"use any of: {', '.join(PATHS)}")
        self.heads = nn.ModuleDict()
        if cfg.nce > 0:
            for path in cfg.paths:
                learner, target = _PATH_SIDES[path]
                self.heads[_head_key(path)] = InfoNCE(_dim(dims, learner), _dim(dims, target),
                                                      cfg.nce_dim, cfg.nce_tau_init)

    def terms(self, out: Outputs) -> list[Term]:
        _need(out, "teacher_logits", "fused_logits")
        if self.cfg.nce > 0:
            _need(out, "student_feat", "teacher_feat", "fused_feat")
        y = out.target
        terms: list[Term] = [("ce", self.cfg.ce, lambda: self._ce(out.student_logits, y))]
        for path in self.cfg.paths:
            learner, target = _PATH_SIDES[path]
            z_l, f_l = getattr(out, f"{learner}_logits"), getattr(out, f"{learner}_feat")
            z_t, f_t = getattr(out, f"{target}_logits"), getattr(out, f"{target}_feat")
            terms.append((f"ofa/{path}", self.cfg.ofa,
                          lambda a=z_l, b=z_t: self._ofa(a, b, y)))  # ofa_loss detaches b
            terms.append((f"nce/{path}", self.cfg.nce,
                          lambda a=f_l, b=f_t, p=path: self.heads[_head_key(p)](a, b)))  # detaches b
        terms.append(("ce/fused", self.cfg.fused_ce, lambda: self._ce(out.fused_logits, y)))
        return terms

    def term_names(self) -> list[str]:
        names = ["ce"] if self.cfg.ce > 0 else []
        for path in self.cfg.paths:
            names += [f"{k}/{path}" for k, w in (("ofa", self.cfg.ofa), ("nce", self.cfg.nce)) if w > 0]
        return names + (["ce/fused"] if self.cfg.fused_ce > 0 else [])


def _dim(dims: dict[str, int], side: str) -> int:
    if side not in dims:
        raise ValueError(f"dims lacks the {side!r} feature width needed by an InfoNCE path (got {dims})")
    return int(dims[side])
