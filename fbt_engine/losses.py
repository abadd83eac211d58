"""The losses the paper's own method is made of (method.md sections 4 and 6): `ce_loss`, `kd_loss`,
`ofa_loss` and the `InfoNCE` module (learnable projection heads and a temperature). Pure functions on
tensors; the methods in `methods/` weigh and combine them (the other baselines' losses are in
`baseline_losses.py`).

Target sides (teacher logits/features, and the fused model in the F->S path) are always detached:
knowledge flows from the target into the learner, never back.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .config import NCE_TAU_RANGE


# The autograd-aware all_gather is marked deprecated in torch 2.x in favour of a private API; it
# is the public way to keep gradients through the gather, so keep using it quietly.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_gather is deprecated")

__all__ = ["ce_loss", "kd_loss", "ofa_loss", "hard_labels", "InfoNCE"]


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
        return self.log_tau.exp().clamp(*NCE_TAU_RANGE)

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
