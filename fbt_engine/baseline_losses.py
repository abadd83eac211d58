"""Loss functions of the paper's baselines, as OFA-KD's code computes them.

Reference: OFA-KD (Hao et al., NeurIPS 2023), github.com/Hao840/OFAKD at commit f7bb896
("release cifar100 teachers"), folder `distillers/`. One section per method: FitNet, CRD, DKD,
DIST, CC ("Correlation") and RKD. Each function reproduces OFA-KD's formula with its reductions,
temperature scaling and detach placement; every deviation is named in its docstring. These are
pure functions and small modules on tensors: building models, extracting features and weighting
against CE is the caller's job (OFA-KD: `loss = gt_loss_weight * CE + kd_loss_weight * loss_kd`).

What OFA-KD feeds each loss (its `custom_forward/*` with `requires_feat=True`):
* FitNet: the student's and teacher's stage outputs 1-4 (NCHW, CNN pairs only);
* CRD, CC, RKD: `feat[-1]`, the pre-logits pooled feature (N, D);
* DKD, DIST: the logits.
Teacher outputs are computed under `torch.no_grad()` there; here the teacher tensors are
detached inside each function, so a caller cannot leak gradient into the teacher.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import hard_labels

__all__ = [
    "DEFAULTS", "FitNetProjector", "FitNet", "fitnet_loss", "crd_contrast_loss", "CRDMemory",
    "CRD", "crd_contrast_indices", "dkd_terms", "dkd_loss", "dkd_warmup_factor", "dist_terms", "dist_loss",
    "CCEmbed", "cc_loss", "CC", "rkd_terms", "rkd_loss",
]

# OFA-KD's defaults: argparse defaults of train.py lines 81-122 (`--gt-loss-weight`,
# `--kd-loss-weight`, `--<method>-*`); no per-method YAML overrides exist in its configs/.
# `loss_weight` is `--kd-loss-weight` (FitNet: `--fitnet-loss-weight`), multiplying the whole
# distillation loss of the method; `gt_loss_weight` multiplies CE (timm's label-smoothing CE,
# smoothing 0.1 from configs/*/*.yaml). kd and ofa live in losses.py; listed for completeness.
DEFAULTS: dict[str, dict[str, object]] = {
    "kd": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "temperature": 1.0},
    # --ofa-eps default [1]; its README runs ImageNet with --ofa-eps 1.5, CIFAR-100 with 1.0.
    "ofa": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "eps": 1.0, "temperature": 1.0,
            "stages": (1, 2, 3, 4)},
    "fitnet": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "stages": (1, 2, 3, 4)},
    "crd": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "feat_dim": 128, "k": 16384,
            "momentum": 0.5, "temperature": 0.07},
    # OFA-KD has no DKD warm-up (mdistiller's DKD ramps the loss over 20 epochs); 0 = none.
    "dkd": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "alpha": 1.0, "beta": 2.0,
            "temperature": 1.0, "warmup": 0},
    "dist": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0},
    "cc": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "scale": 0.02, "feat_dim": 128},
    "rkd": {"gt_loss_weight": 1.0, "loss_weight": 1.0, "distance_weight": 25.0,
            "angle_weight": 50.0, "eps": 1e-12, "squared": False},
}


def _f32(x: Tensor) -> Tensor:
    """Half-precision logits are upcast (softmax/log lose too much in bf16/fp16)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _need_pairs(feat: Tensor, method: str) -> None:
    if feat.shape[0] < 2:
        raise ValueError(f"{method} compares samples within a batch and needs a batch of at least 2 "
                         f"(got {feat.shape[0]}); drop the last short batch or use a larger batch")


# --- FitNet (distillers/fitnet.py) ---------------------------------------------------------

Shape3 = tuple[int, int, int]


class FitNetProjector(nn.Module):
    """OFA-KD's FitNet regressor: a 1x1 conv, no bias, student channels -> teacher channels.

    distillers/fitnet.py lines 19-31: `nn.Conv2d(C_s, C_t, 1, 1, 0, bias=False)` per stage,
    initialised by utils.py `init_weights` (lines 148-158: Kaiming normal, fan_out, relu).
    Deviations: OFA-KD builds it from the models' `stage_info` and asserts both models are CNNs
    with equal grids (fitnet.py line 17); here it takes the (C, H, W) shapes, and when the grids
    differ (ours, for heterogeneous pairs after the caller has turned tokens into NCHW) the
    projected map is resized to the teacher's grid: adaptive average pooling when the student's
    grid is larger, bilinear interpolation when it is smaller.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ValueError(f"FitNet needs (C, H, W) stage shapes, got student {tuple(student_shape)} "
                             f"and teacher {tuple(teacher_shape)}; reshape tokens to NCHW first")
        self.grid = (int(teacher_shape[1]), int(teacher_shape[2]))
        self.conv = nn.Conv2d(int(student_shape[0]), int(teacher_shape[0]), 1, 1, 0, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if x.shape[-2:] == self.grid:
            return x
        if x.shape[-2] >= self.grid[0] and x.shape[-1] >= self.grid[1]:
            return F.adaptive_avg_pool2d(x, self.grid)
        return F.interpolate(x, size=self.grid, mode="bilinear", align_corners=False)


def fitnet_loss(projected_student: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Sum over stages of `F.mse_loss(proj_s, f_t)` (mean over all elements), teacher detached.

    distillers/fitnet.py lines 40-50 (the `--fitnet-loss-weight` factor is the caller's).
    """
    if len(projected_student) != len(teacher_feats) or not teacher_feats:
        raise ValueError(f"FitNet needs one teacher feature per student feature, got "
                         f"{len(projected_student)} and {len(teacher_feats)}")
    return sum(F.mse_loss(s, t.detach()) for s, t in zip(projected_student, teacher_feats))


class FitNet(nn.Module):
    """One `FitNetProjector` per distilled stage and the summed hint loss.

    distillers/fitnet.py lines 10-57; OFA-KD distils stages (1, 2, 3, 4). `forward` takes the
    stage features in the order of the shapes given here.
    """

    def __init__(self, student_shapes: Sequence[Sequence[int]],
                 teacher_shapes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(student_shapes) != len(teacher_shapes):
            raise ValueError(f"got {len(student_shapes)} student and {len(teacher_shapes)} teacher stage shapes")
        self.projectors = nn.ModuleList(FitNetProjector(s, t) for s, t in zip(student_shapes, teacher_shapes))

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        if len(student_feats) != len(self.projectors):
            raise ValueError(f"FitNet was built for {len(self.projectors)} stages, got {len(student_feats)} features")
        return fitnet_loss([p(f) for p, f in zip(self.projectors, student_feats)], teacher_feats)


# --- CRD (distillers/crd.py) -------------------------------------------------------------

def crd_contrast_loss(scores: Tensor, num_data: int) -> Tensor:
    """CRD's NCE loss on `scores` (N, K+1[, 1]); column 0 is the positive, the rest negatives.

    distillers/crd.py lines 79-104 (ContrastLoss): with m = K and Pn = 1/num_data,
    `-(sum_n log(P_pos / (P_pos + m Pn + 1e-7)) + sum_{n,k} log(m Pn / (P_neg + m Pn + 1e-7))) / N`.
    Deviation: returns a 0-dim tensor (OFA-KD's has shape (1,)).
    """
    x = scores.reshape(scores.shape[0], -1)
    eps, m, pn = 1e-7, x.shape[1] - 1, 1.0 / float(num_data)
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m * pn + eps))
    log_d0 = torch.log((m * pn) / (x[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


FULL_SCORE_RATIO = 4  # CRD scores against the whole bank when it has at most 4x (K+1) rows


class CRDMemory(nn.Module):
    """CRD's memory bank: one L2-normalised embedding per training sample, per side.

    distillers/crd.py lines 107-186 (ContrastMemory). `memory_s` is OFA-KD's `memory_v1` (student
    embeddings), `memory_t` its `memory_v2`. Rows start uniform in [-stdv, stdv), stdv =
    1/sqrt(dim/3). A forward scores each student embedding against K+1 *teacher* memory rows and
    each teacher embedding against K+1 *student* rows: `exp(<row, v> / T) / Z`, where Z (one per
    side) is fixed on the first call to `mean(exp scores) * num_data` and is a constant (no
    gradient, stored in the buffer `z` as OFA-KD stores it in `params`). Memory rows are detached.
    After scoring, the rows of the batch's samples move: `normalize(momentum * row + (1 - momentum) * v)`.

    Deviations: the bank's initial values and the negatives drawn when no `contrast_idx` is given
    come from a `torch.Generator` seeded by `seed`, so the module is deterministic given a seed
    (OFA-KD uses the global RNG). OFA-KD draws with an alias-method sampler over uniform unigrams;
    that is a uniform draw over [0, num_data), done here with `torch.randint`. In OFA-KD's training
    the dataset always supplies `contrast_idx` (see `crd_contrast_indices`), so that draw is unused.
    The generator's state is not saved in `state_dict` (the bank and Z are).
    """

    def __init__(self, dim: int, num_data: int, k: int, temperature: float = 0.07,
                 momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.dim, self.num_data, self.k = dim, num_data, k
        self.temperature, self.momentum = temperature, momentum
        self.generator = torch.Generator().manual_seed(seed)
        stdv = 1.0 / math.sqrt(dim / 3)
        for name in ("memory_s", "memory_t"):
            init = torch.rand(num_data, dim, generator=self.generator).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(name, init)
        self.register_buffer("z", torch.tensor([-1.0, -1.0]))
        self._z_known = False

    def draw(self, index: Tensor) -> Tensor:
        """(N, K+1) memory rows: column 0 is `index`, the rest uniform draws (crd.py lines 142-144)."""
        idx = torch.randint(self.num_data, (index.shape[0], self.k + 1), generator=self.generator)
        idx = idx.to(index.device)
        idx[:, 0] = index
        return idx

    def forward(self, v_s: Tensor, v_t: Tensor, index: Tensor,
                contrast_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores (student vs teacher memory, teacher vs student memory), each (N, K+1); updates the bank."""
        idx = self.draw(index) if contrast_idx is None else contrast_idx
        out_s = self._scores(self.memory_t, idx, v_s)
        out_t = self._scores(self.memory_s, idx, v_t)
        if not self._z_known:  # Z is set once, from the first batch (crd.py lines 156-164)
            from .ddp import all_mean_  # under torchrun: the global batch's mean (equal batches per rank)
            if self.z[0] < 0:
                self.z[0] = all_mean_(out_s.detach().mean()) * self.num_data
            if self.z[1] < 0:
                self.z[1] = all_mean_(out_t.detach().mean()) * self.num_data
            self._z_known = True  # checked on the host once per process (a loaded bank has Z), not every step
        out_s, out_t = out_s / self.z[0], out_t / self.z[1]
        with torch.no_grad():  # under torchrun every rank moves the rows of the global batch (ddp.gather_batch)
            from .ddp import gather_batch
            index = gather_batch(index)
            self._update(self.memory_s, index, gather_batch(v_s.detach()))
            self._update(self.memory_t, index, gather_batch(v_t.detach()))
        return out_s, out_t

    def _scores(self, memory: Tensor, idx: Tensor, v: Tensor) -> Tensor:
        if memory.shape[0] <= FULL_SCORE_RATIO * idx.shape[1]:
            # One matmul against the whole bank, then pick the K+1 columns per sample: it reads the bank
            # once, where gathering the rows first copies N*(K+1)*D floats and reads them again (4x
            # faster for OFA-KD's K = 16384 on a 50,000-sample bank; the same dot products).
            # (a copy of the bank: the update after scoring is in place, and the backward reads the bank)
            dots = (v @ memory.detach().clone().t()).gather(1, idx)
        else:  # a bank much larger than K+1 (ImageNet: 1.28M rows): gather only the rows scored
            rows = memory.index_select(0, idx.reshape(-1)).detach().view(idx.shape[0], idx.shape[1], -1)
            dots = torch.bmm(rows, v.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.temperature)

    def _update(self, memory: Tensor, index: Tensor, v: Tensor) -> None:
        rows = memory.index_select(0, index) * self.momentum + v.detach() * (1 - self.momentum)
        memory.index_copy_(0, index, rows / rows.pow(2).sum(1, keepdim=True).pow(0.5))


class CRD(nn.Module):
    """Contrastive representation distillation: embeddings, memory bank and the two NCE losses.

    distillers/crd.py lines 10-48 (CRD), 51-76 (Normalize, Embed). Each side's pooled feature goes
    through its own `Linear(D, feat_dim)` + L2 normalisation (default nn.Linear init, as OFA-KD);
    the loss is `NCE(student scores) + NCE(teacher scores)` (`--kd-loss-weight` is the caller's).
    The teacher *feature* is detached; the teacher-side embedding is learnable and trains through
    the teacher-score loss, as in OFA-KD (and CRD). `index` holds the samples' dataset indices
    (N,); `contrast_idx` (N, K+1) the memory rows to score, positive first.
    """

    def __init__(self, dim_s: int, dim_t: int, num_data: int, feat_dim: int = 128, k: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.embed_s = nn.Linear(dim_s, feat_dim)
        self.embed_t = nn.Linear(dim_t, feat_dim)
        self.memory = CRDMemory(feat_dim, num_data, k, temperature, momentum, seed)

    def forward(self, feat_s: Tensor, feat_t: Tensor, index: Tensor,
                contrast_idx: Tensor | None = None) -> Tensor:
        v_s = _l2(self.embed_s(feat_s.reshape(feat_s.shape[0], -1)))
        v_t = _l2(self.embed_t(feat_t.detach().reshape(feat_t.shape[0], -1)))
        out_s, out_t = self.memory(v_s, v_t, index, contrast_idx)
        n = self.memory.num_data
        return crd_contrast_loss(out_s, n) + crd_contrast_loss(out_t, n)


def _l2(x: Tensor) -> Tensor:
    # crd.py Normalize (lines 51-61): x / ||x||_2 with no epsilon, unlike F.normalize.
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def crd_contrast_indices(index: Tensor, target: Tensor, dataset_labels: Tensor, k: int,
                         generator: torch.Generator | None = None) -> Tensor:
    """(N, K+1) memory rows as OFA-KD's dataset draws them: the sample itself, then K negatives.

    utils.py lines 60-98 (CIFAR100InstanceSample, `is_sample=True`): negatives are drawn uniformly
    with replacement among the samples of *other* classes. Deviations: torch's generator instead of
    `np.random` in the data workers, and the draw is vectorised: uniform over all samples, redrawing
    those of the sample's own class until none is left (the same distribution, without a per-sample
    pool of other-class indices, which costs O(dataset) per sample on ImageNet).
    """
    labels = dataset_labels.to("cpu")
    y = target.to("cpu").reshape(-1, 1)
    if bool((labels == labels[0]).all()):
        raise ValueError("CRD needs negatives of another class, but the dataset holds one class only")
    neg = torch.randint(len(labels), (len(y), k), generator=generator)
    same = labels[neg] == y
    while bool(same.any()):
        neg[same] = torch.randint(len(labels), (int(same.sum()),), generator=generator)
        same = labels[neg] == y
    return torch.cat([index.to("cpu").reshape(-1, 1), neg], dim=1).to(index.device)


# --- DKD (distillers/dkd.py) ---------------------------------------------------------------

def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
              temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD) of decoupled KD, each `T^2`-scaled and batchmean, teacher detached.

    distillers/dkd.py lines 37-78. TCKD: KL between the binary distributions (p_target,
    1 - p_target) of teacher and student at temperature T (student side `log` of the summed
    softmax). NCKD: KL between the softmaxes over the non-target classes, obtained as OFA-KD does
    by subtracting 1000 from the target logit (after dividing by T) before the softmax.
    `target` may be soft (mixup); its argmax is used (dkd.py lines 22-25).
    """
    s, t = _f32(student_logits), _f32(teacher_logits.detach())
    gt = F.one_hot(hard_labels(target), s.shape[1]).to(torch.bool)
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    b_s, b_t = _binary(p_s, gt), _binary(p_t, gt)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="batchmean") * temperature ** 2
    log_q = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    p = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q, p, reduction="batchmean") * temperature ** 2
    return tckd, nckd


def _binary(p: Tensor, gt: Tensor) -> Tensor:
    return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], dim=1)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0,
             beta: float = 2.0, temperature: float = 1.0) -> Tensor:
    """`alpha * TCKD + beta * NCKD` (distillers/dkd.py lines 37-59); OFA-KD's defaults 1, 2, T=1.

    Deviation: OFA-KD's DKD distiller reads `self.dkd_alpha`, `self.dkd_beta` and
    `self.dkd_temperature` (dkd.py line 29), attributes that its `__init__` never sets, so its
    `--distiller dkd` fails with AttributeError as released; the intent is clearly
    `args.dkd_*` (train.py lines 100-102), whose defaults are used here.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup_factor(epoch: float, warmup: float = 0) -> float:
    """`min(epoch / warmup, 1)`: the ramp of mdistiller's DKD (its CIFAR default: 20 epochs).

    OFA-KD has no warm-up (dkd.py ignores the `epoch` its trainer passes), so its default here is
    0, meaning a constant factor 1. Multiply `dkd_loss` by this to reproduce mdistiller instead.
    """
    return 1.0 if warmup <= 0 else min(float(epoch) / float(warmup), 1.0)


# --- DIST (distillers/dist.py) -------------------------------------------------------------

def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """(inter, intra) of DIST on softmax(z / tau), unscaled, teacher detached (see `dist_loss`)."""
    y_s = F.softmax(_f32(student_logits) / tau, dim=1)
    y_t = F.softmax(_f32(teacher_logits.detach()) / tau, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return inter, intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 1.0) -> Tensor:
    """DIST: `tau^2 * (beta * inter + gamma * intra)` on softmax(z / tau), teacher detached.

    distillers/dist.py lines 31-53. inter = 1 - mean over samples of the Pearson correlation of
    student and teacher probability rows; intra = the same over classes (columns). Pearson is
    `<a - mean a, b - mean b> / (||a - mean a|| ||b - mean b|| + 1e-8)`. With a batch of 1 each
    column is constant, its correlation is 0 and intra is 1 (as in OFA-KD).
    """
    inter, intra = dist_terms(student_logits, teacher_logits, tau)
    return beta * tau ** 2 * inter + gamma * tau ** 2 * intra


# --- CC (distillers/correlation.py) --------------------------------------------------------

def cc_loss(emb_s: Tensor, emb_t: Tensor, scale: float = 0.02) -> Tensor:
    """OFA-KD's correlation-congruence loss on embedded features, teacher detached.

    distillers/correlation.py lines 26-31: `delta = |e_s - e_t|`,
    `scale * mean_i sum_d delta[i, d] * delta[i + 1, d]` over consecutive samples of the batch.
    This is RepDistiller's `Correlation` loss, which OFA-KD inherits; it is *not* the CC paper's
    Gaussian-kernel (Taylor-expanded) correlation matrix, and it has no gamma or P-order.
    Deviation: a batch of 1 (no consecutive pair; OFA-KD returns NaN) raises ValueError.
    `emb_t` is detached here, which blocks the gradient to the teacher embedding; use `CC` to
    train both embeddings as OFA-KD does.
    """
    _need_pairs(emb_s, "CC")
    delta = torch.abs(emb_s - emb_t.detach())
    return scale * torch.mean((delta[:-1] * delta[1:]).sum(1))


class CCEmbed(nn.Module):
    """correlation.py LinearEmbed (lines 39-47): flatten, then `nn.Linear(D, feat_dim)` (default init)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class CC(nn.Module):
    """CC as OFA-KD trains it (correlation.py lines 8-36): both embeddings learn.

    The teacher *feature* is detached; `embed_t` receives gradient through `|e_s - e_t|`.
    """

    def __init__(self, dim_s: int, dim_t: int, feat_dim: int = 128, scale: float = 0.02) -> None:
        super().__init__()
        self.embed_s, self.embed_t, self.scale = CCEmbed(dim_s, feat_dim), CCEmbed(dim_t, feat_dim), scale

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> Tensor:
        _need_pairs(feat_s, "CC")
        delta = torch.abs(self.embed_s(feat_s) - self.embed_t(feat_t.detach()))
        return self.scale * torch.mean((delta[:-1] * delta[1:]).sum(1))


# --- RKD (distillers/rkd.py) ---------------------------------------------------------------

def _pdist(e: Tensor, squared: bool, eps: float) -> Tensor:
    # rkd.py lines 60-70: |a|^2 + |b|^2 - 2ab clamped at eps, sqrt unless squared, zero diagonal.
    sq = e.pow(2).sum(dim=1)
    res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    res = res if squared else res.sqrt()
    return res * (1 - torch.eye(len(e), dtype=res.dtype, device=res.device))


def _positive_mean(d: Tensor) -> Tensor:
    # OFA-KD's `d[d > 0].mean()`, without boolean indexing: no device sync on a GPU (the indexing
    # has to learn the count on the host) and it runs on the meta device (preflight's dry run)
    pos = (d > 0).to(d.dtype)
    return (d * pos).sum() / pos.sum()


def _angles(e: Tensor) -> Tensor:
    d = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # d[i, j] = unit(e_j - e_i)
    return torch.bmm(d, d.transpose(1, 2)).view(-1)


def rkd_terms(feat_s: Tensor, feat_t: Tensor, eps: float = 1e-12,
              squared: bool = False) -> tuple[Tensor, Tensor]:
    """(distance loss, angle loss) of RKD on flattened features; the teacher side has no gradient.

    distillers/rkd.py lines 22-49. Distance: pairwise Euclidean distances (squared if `squared`),
    each divided by the mean of its positive entries, compared by `smooth_l1_loss` (beta 1, mean
    over all N^2 entries). Angle: for every (i, j, k) the cosine of the angle at e_i between
    e_j - e_i and e_k - e_i (0 where a difference is zero), smooth-L1 over all N^3 entries.
    Deviations: a batch of 1 (no pair, NaN in OFA-KD) raises ValueError; the diagonal is zeroed by
    a mask multiply instead of an in-place assignment (same values and gradients).
    """
    _need_pairs(feat_s, "RKD")
    stu, tea = feat_s.reshape(feat_s.shape[0], -1), feat_t.detach().reshape(feat_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pdist(tea, squared, eps)
        t_d = t_d / _positive_mean(t_d)
        t_angle = _angles(tea)
    d = _pdist(stu, squared, eps)
    d = d / _positive_mean(d)
    return F.smooth_l1_loss(d, t_d), F.smooth_l1_loss(_angles(stu), t_angle)


def rkd_loss(feat_s: Tensor, feat_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0,
             eps: float = 1e-12, squared: bool = False) -> Tensor:
    """`distance_weight * L_dist + angle_weight * L_angle` (distillers/rkd.py lines 37-52)."""
    loss_d, loss_a = rkd_terms(feat_s, feat_t, eps, squared)
    return distance_weight * loss_d + angle_weight * loss_a
