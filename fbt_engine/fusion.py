"""The fused model F (method.md section 3): L's stem..stage`split` -> L2G -> G's remaining stages -> G's head.

`plan_fusion` measures both models by a dry run and returns a `FusionPlan` (pure data);
`build_fused` turns a plan into a module that holds the teacher's and student's own modules
(shared by identity) plus one new learnable piece, the L2G projector.

L2G's output normalisation matches what G's next stage expects: LayerNorm for token/NHWC models;
for a CNN G a BatchNorm (ReLU after it when G's stage output is post-ReLU) whose running statistics
and affine are calibrated on a dry run of fixed random images, so that at init L2G's output has G's
own per-channel mean and spread at that boundary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapters import Adapter, StageInfo, get_adapter
from .config import MIXERS, ORDERS
from .errors import ModelError

ROLES = ("student", "teacher")
CALIBRATION_IMAGES = 8  # random images of the dry run that calibrates a CNN G's L2G normalisation


@dataclass(frozen=True)
class L2GConfig:
    """How L's stage-`split` output becomes a valid input for G's next stage."""

    in_layout: str
    out_layout: str
    in_channels: int
    out_channels: int
    in_grid: tuple[int, int]
    out_grid: tuple[int, int]
    in_prefix: int  # prefix tokens to drop from L's output
    out_prefix: int  # prefix tokens (class/distillation/register) to add for G (ViT targets)
    resample: str  # conv1x1 | convKxK/sK | pool+conv1x1 | interp+conv1x1
    mixer: str  # attention | swin | none
    heads: int
    mlp_ratio: float = 4.0
    pos_embed: bool = False  # add G's position embedding (ViT targets)
    norm: str = "layernorm"  # layernorm | batchnorm | batchnorm+relu (CNN G, calibrated on G's statistics)
    window: int = 7  # window of the swin mixer


@dataclass(frozen=True)
class FusionPlan:
    """Which model is local (L) and global (G), where they meet, and the projector between them."""

    teacher: str
    student: str
    teacher_kind: str
    student_kind: str
    local: str  # "student" or "teacher"
    order: str  # what was asked: auto | student-first | teacher-first
    split: int  # stages taken from L
    reason: str
    img_size: int
    junction_in: StageInfo  # L's stage-`split` output
    junction_out: StageInfo  # G's stage-`split` output = what G's stage split+1 consumes
    l2g: L2GConfig

    @property
    def global_(self) -> str:
        return "teacher" if self.local == "student" else "student"

    @property
    def local_model(self) -> str:
        return self.student if self.local == "student" else self.teacher

    @property
    def global_model(self) -> str:
        return self.teacher if self.local == "student" else self.student

    @property
    def chain(self) -> str:
        c = self.l2g
        norm = {"layernorm": "", "batchnorm": ", BatchNorm", "batchnorm+relu": ", BatchNorm+ReLU"}[c.norm]
        mix = {"attention": ", attention", "swin": f", swin w{c.window}", "none": ""}[c.mixer]
        tail = f"stage{self.split + 1}" + ("" if self.split == 3 else "..stage4")
        return (f"{self.local_model} stem..stage{self.split} > L2G ({c.resample} {c.in_channels}->"
                f"{c.out_channels}{norm}{mix}) > {self.global_model} {tail} > head")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["junction_in"] = self.junction_in.to_dict()
        d["junction_out"] = self.junction_out.to_dict()
        d.update(global_=self.global_, local_model=self.local_model, global_model=self.global_model,
                 chain=self.chain)
        d["global"] = d.pop("global_")
        return d


# --- planning ---------------------------------------------------------------------------------

def choose_local(teacher_kind: str, student_kind: str, order: str) -> tuple[str, str]:
    """Method.md section 3: the CNN of the pair comes first; otherwise the student does."""
    if order == "student-first":
        return "student", "fusion.order = student-first"
    if order == "teacher-first":
        return "teacher", "fusion.order = teacher-first"
    if order != "auto":
        raise ModelError(f"fusion order {order!r} is not one of {', '.join(ORDERS)}",
                         "use auto unless you want to override the CNN-first rule")
    if student_kind == "cnn" and teacher_kind != "cnn":
        return "student", "the student is the CNN of the pair, so it provides the local stages"
    if teacher_kind == "cnn" and student_kind != "cnn":
        return "teacher", "the teacher is the CNN of the pair, so it provides the local stages"
    return "student", f"both are {student_kind}" if student_kind == teacher_kind else \
        "no CNN in the pair: the student provides the local stages"


def _resample_kind(src: tuple[int, int], dst: tuple[int, int]) -> str:
    if src == dst:
        return "conv1x1"
    if src[0] % dst[0] == 0 and src[1] % dst[1] == 0 and src[0] // dst[0] == src[1] // dst[1]:
        r = src[0] // dst[0]
        return f"conv{r}x{r}/s{r}"
    if src[0] >= dst[0] and src[1] >= dst[1]:
        return "pool+conv1x1"
    return "interp+conv1x1"


def _heads(g: Adapter, stage: int, width: int) -> int:
    """Heads for the mixer at L2G's output width: G's own head dim when it is 32 or 64 (ViT: 64,
    Swin: 32), else 64 or 32, whichever divides the width; a divisor of the width otherwise."""
    g_dim = g.stage_head_dim(stage)
    for dim in ([g_dim] if g_dim in (32, 64) else []) + [64, 32]:
        if width % dim == 0:
            return width // dim
    heads = max(1, width // 32)
    while width % heads:  # attention needs heads to divide the width
        heads -= 1
    return heads


def _window(grid: tuple[int, int], target: int = 7) -> int:
    """Swin mixer window: the largest size <= target (>= 4) that tiles the grid, else target (timm pads)."""
    side = min(grid)
    if side <= target:
        return side
    for w in range(target, 3, -1):
        if grid[0] % w == 0 and grid[1] % w == 0:
            return w
    return target


def calibration_images(img_size: int, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Fixed random images (own generator: the global RNG, and so a resumed run, is untouched)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, img_size, img_size, generator=g)


def stage_output(adapter: Adapter, images: torch.Tensor, stage: int) -> torch.Tensor:
    """The model's stage-`stage` output in eval mode (running BN statistics, none updated)."""
    model = adapter.model
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return adapter.forward_stages(images, upto=stage)[-1]
    finally:
        for m, mode in modes.items():
            m.training = mode


def plan_fusion(teacher: nn.Module, student: nn.Module, img_size: int, order: str = "auto", split: int = 3,
                mixer: str = "auto", teacher_name: str = "", student_name: str = "") -> FusionPlan:
    """Measure both models at `img_size` and decide how F is put together."""
    if not 1 <= split <= 3:
        raise ModelError(f"fusion split {split} is out of range", "split counts L's stages: 1, 2 or 3")
    ta, sa = get_adapter(teacher, teacher_name), get_adapter(student, student_name)
    local, reason = choose_local(ta.kind, sa.kind, order)
    la, ga = (sa, ta) if local == "student" else (ta, sa)
    if mixer not in MIXERS:
        raise ModelError(f"fusion mixer {mixer!r} is not one of {', '.join(MIXERS)}",
                         "use auto: attention unless G is a CNN")
    j_in, j_out = la.describe(img_size)[split], ga.describe(img_size)[split]
    if mixer == "auto":
        mixer = "none" if ga.kind == "cnn" else "attention"
    norm = "layernorm"
    if ga.kind == "cnn":  # BN-ReLU stages: does G's next stage get post-ReLU (non-negative) input?
        g_out = stage_output(ga, calibration_images(img_size), split)
        norm = "batchnorm+relu" if bool((g_out >= 0).all()) else "batchnorm"
    l2g = L2GConfig(
        in_layout=j_in.layout, out_layout=j_out.layout, in_channels=j_in.channels, out_channels=j_out.channels,
        in_grid=j_in.grid, out_grid=j_out.grid, in_prefix=j_in.num_prefix, out_prefix=j_out.num_prefix,
        resample=_resample_kind(j_in.grid, j_out.grid), mixer=mixer,
        heads=_heads(ga, split + 1, j_out.channels), pos_embed=ga.family == "vit", norm=norm,
        window=_window(j_out.grid))
    return FusionPlan(teacher=teacher_name or type(teacher).__name__, student=student_name or type(student).__name__,
                      teacher_kind=ta.kind, student_kind=sa.kind, local=local, order=order, split=split,
                      reason=reason, img_size=img_size, junction_in=j_in, junction_out=j_out, l2g=l2g)


# --- the L2G projector -----------------------------------------------------------------------

def to_nchw(x: torch.Tensor, layout: str, grid: tuple[int, int], prefix: int = 0) -> torch.Tensor:
    if layout == "nchw":
        return x
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    x = x[:, prefix:]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def _rectified_normal(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) per channel such that ReLU(N(mu, sigma^2)) has mean `m` and std `s`."""
    m, s = m.double().clamp_min(0), s.double().clamp_min(1e-12)
    phi = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2)))  # noqa: E731

    def moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # of ReLU(N(t, 1))
        m1 = t * cdf(t) + phi(t)
        m2 = (t * t + 1) * cdf(t) + t * phi(t)
        return m1, (m2 - m1 * m1).clamp_min(1e-30).sqrt()

    ratio, lo, hi = m / s, torch.full_like(m, -6.0), torch.full_like(m, 6.0)
    for _ in range(60):  # mean/std of ReLU(N(t, 1)) increases with t: bisect
        mid = (lo + hi) / 2
        m1, sd = moments(mid)
        up = m1 / sd < ratio
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    t = (lo + hi) / 2
    sigma = (s / moments(t)[1]).clamp_min(1e-3)
    return (t * sigma).float(), sigma.float()


class L2G(nn.Module):
    """Local-to-global projector: grid + width change, G's normalisation, optional mixer, G's layout.

    Token/NHWC G: proj -> LayerNorm -> mixer. CNN G: proj -> mixer -> BatchNorm (-> ReLU), the
    BatchNorm calibrated by `calibrate` so that its output has G's own statistics at the junction.
    """

    def __init__(self, cfg: L2GConfig, global_adapter: Adapter) -> None:
        super().__init__()
        self.cfg = cfg
        k = int(cfg.resample[4]) if cfg.resample.startswith("conv") and cfg.resample != "conv1x1" else 1
        self.proj = nn.Conv2d(cfg.in_channels, cfg.out_channels, kernel_size=k, stride=k)
        self.norm = nn.LayerNorm(cfg.out_channels) if cfg.norm == "layernorm" else nn.BatchNorm2d(cfg.out_channels)
        self.mixer = None
        if cfg.mixer == "attention":
            from timm.models.vision_transformer import Block
            self.mixer = Block(cfg.out_channels, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
        elif cfg.mixer == "swin":
            from timm.models.swin_transformer import SwinTransformerBlock
            self.mixer = SwinTransformerBlock(cfg.out_channels, cfg.out_grid, num_heads=cfg.heads,
                                              window_size=cfg.window, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
        self.prefix_tokens = self.pos_embed = None
        self.no_embed_class = False
        if cfg.out_layout == "tokens":
            self._init_tokens(global_adapter.model)

    def _init_tokens(self, g: nn.Module) -> None:
        """Class/distillation/register tokens and position embedding initialised from G's own (copies:
        learnable here), in the order G's own `_pos_embed` puts them."""
        prefix = [t for t in (getattr(g, n, None) for n in ("cls_token", "dist_token", "reg_token"))
                  if isinstance(t, torch.Tensor)]
        if prefix and self.cfg.out_prefix:
            tokens = torch.cat([t.detach() for t in prefix], dim=1)
            if tokens.shape[1] != self.cfg.out_prefix:
                raise ModelError(f"G has {self.cfg.out_prefix} prefix tokens but {tokens.shape[1]} token "
                                 "parameters (cls/dist/reg)", "this ViT variant is not supported as G")
            self.prefix_tokens = nn.Parameter(tokens.clone())
        pos = getattr(g, "pos_embed", None)
        if self.cfg.pos_embed and pos is not None:
            from timm.layers import resample_abs_pos_embed
            self.no_embed_class = bool(getattr(g, "no_embed_class", False))
            n_prefix = 0 if self.no_embed_class else self.cfg.out_prefix
            pe = resample_abs_pos_embed(pos.detach(), new_size=list(self.cfg.out_grid), num_prefix_tokens=n_prefix)
            self.pos_embed = nn.Parameter(pe.clone())

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        kind, grid = self.cfg.resample, self.cfg.out_grid
        if kind == "pool+conv1x1":
            x = F.adaptive_avg_pool2d(x, grid)
        elif kind == "interp+conv1x1":
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        return self.proj(x)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer on NHWC."""
        if self.mixer is None or self.cfg.mixer == "swin":
            return x if self.mixer is None else self.mixer(x)
        n, h, w, ch = x.shape
        return self.mixer(x.reshape(n, h * w, ch)).reshape(n, h, w, ch)

    def _before_norm(self, x: torch.Tensor) -> torch.Tensor:
        """CNN G: what the BatchNorm sees (NCHW)."""
        c = self.cfg
        x = self._resample(to_nchw(x, c.in_layout, c.in_grid, c.in_prefix))
        return self._mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.norm != "layernorm":  # CNN G: NCHW out
            x = self.norm(self._before_norm(x))
            return F.relu(x) if c.norm == "batchnorm+relu" else x
        x = self._resample(to_nchw(x, c.in_layout, c.in_grid, c.in_prefix))
        x = self._mix(self.norm(x.permute(0, 2, 3, 1)))  # NHWC
        n, h, w, ch = x.shape
        if c.out_layout == "nchw":
            return x.permute(0, 3, 1, 2)
        if c.out_layout == "nhwc":
            return x
        return self._add_prefix_and_pos(x.reshape(n, h * w, ch))

    @torch.no_grad()
    def calibrate(self, x_local: torch.Tensor, g_out: torch.Tensor) -> None:
        """CNN G: set the BatchNorm's running statistics to those of its input on L's activation
        `x_local`, and its affine so its output (after ReLU where G's is post-ReLU) has the
        per-channel mean and std of G's own stage output `g_out` on the same images."""
        if self.cfg.norm == "layernorm":
            return
        z = self._before_norm(x_local)
        self.norm.running_mean.copy_(z.mean(dim=(0, 2, 3)))
        self.norm.running_var.copy_(z.var(dim=(0, 2, 3)))
        mean, std = g_out.mean(dim=(0, 2, 3)), g_out.std(dim=(0, 2, 3))
        if self.cfg.norm == "batchnorm+relu":
            mean, std = _rectified_normal(mean, std)
        self.norm.bias.copy_(mean)
        self.norm.weight.copy_(std.clamp_min(1e-3))

    def _add_prefix_and_pos(self, x: torch.Tensor) -> torch.Tensor:
        prefix = self.prefix_tokens.expand(x.shape[0], -1, -1) if self.prefix_tokens is not None else None
        if self.no_embed_class and self.pos_embed is not None:
            x = x + self.pos_embed
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        if not self.no_embed_class and self.pos_embed is not None:
            x = x + self.pos_embed
        return x


# --- the fused model ---------------------------------------------------------------------------

class FusedModel(nn.Module):
    """F = head_G . stages_G[split:] . L2G . stages_L[:split] . stem_L, sharing T's and S's modules.

    `forward_from(x)` starts from L's stage-`split` activation (which L's own forward already
    produced in the training step); `forward(images)` runs the whole chain.
    """

    def __init__(self, plan: FusionPlan, local: Adapter, global_: Adapter, teacher: nn.Module,
                 shares_student: bool = True) -> None:
        super().__init__()
        self.plan = plan
        k = plan.split
        self.local = nn.Sequential(OrderedDict(
            [("stem", local.stem)] + [(f"stage{i + 1}", local.stages[i]) for i in range(k)]))
        self.l2g = L2G(plan.l2g, global_)
        if plan.l2g.norm != "layernorm":
            images = calibration_images(plan.img_size)
            self.l2g.calibrate(stage_output(local, images, k), stage_output(global_, images, k))
        self.tail = nn.Sequential(OrderedDict((f"stage{i + 1}", global_.stages[i]) for i in range(k, 4)))
        self.head = global_.head
        object.__setattr__(self, "_global", global_)
        object.__setattr__(self, "_teacher", teacher)  # kept in eval mode whatever F's mode is
        # G = the student: S's own forward already updates the BN statistics of these shared stages
        # in the step; F's pass must not update them a second time (see forward_from). With copies
        # (fusion.share = false) the statistics are F's own and F's pass updates them.
        shared_bn = [m for m in (*self.tail.modules(), *self.head.modules())
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
            if plan.global_ == "student" and shares_student else []
        object.__setattr__(self, "_shared_bn", shared_bn)

    def forward_from(self, x_split: torch.Tensor, with_map: bool = False) -> tuple[torch.Tensor, ...]:
        """Logits and pooled features of F from L's stage-`split` output (and F's stage-4 map, in G's
        layout, when `with_map`).

        When G is the student, its shared BatchNorms normalise F's activations with F's own batch
        statistics in train mode (as S's BN does for S's) but leave the running statistics, which
        S evaluates with, to S's own forward: one update per step. In eval mode F uses S's running
        statistics, as a module shared with S does.
        """
        with self._frozen_running_stats():
            f4 = self.tail(self.l2g(x_split))
            logits, pooled = self._global.head_and_pooled(f4)
        return (logits, pooled, f4) if with_map else (logits, pooled)

    @contextlib.contextmanager
    def _frozen_running_stats(self):
        bns = [m for m in self._shared_bn if m.training and m.track_running_stats]
        for m in bns:
            m.track_running_stats = False  # train mode + no tracking: batch statistics, no update
        try:
            yield
        finally:
            for m in bns:
                m.track_running_stats = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.local(images))[0]

    def train(self, mode: bool = True) -> "FusedModel":
        super().train(mode)
        self._teacher.eval()  # frozen teacher modules inside F keep eval-mode BN/dropout
        return self


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def build_fused(teacher: nn.Module, student: nn.Module, plan: FusionPlan, share: bool = True) -> FusedModel:
    """Build F from a plan. The teacher is frozen (eval, no grad); its modules are shared, not copied.
    The student's modules are shared too (the paper), or, with `share=False`, copied: F then trains
    its own copy of them (the weight-sharing ablation)."""
    freeze(teacher)
    if not share:
        student = copy.deepcopy(student)
    ta, sa = get_adapter(teacher, plan.teacher), get_adapter(student, plan.student)
    local, global_ = (sa, ta) if plan.local == "student" else (ta, sa)
    return FusedModel(plan, local, global_, teacher, shares_student=share)


def count(params: Any) -> int:
    return sum(p.numel() for p in params)


def param_table(teacher: nn.Module, student: nn.Module, fused: FusedModel) -> dict[str, int]:
    """Parameter counts; sharing is decided by object identity, never by shape or name."""
    t_ids = {id(p) for p in teacher.parameters()}
    s_ids = {id(p) for p in student.parameters()}
    f_params = list(fused.parameters())  # nn.Module.parameters() already de-duplicates
    return {
        "teacher": count(teacher.parameters()),
        "student": count(student.parameters()),
        "fused_total": count(f_params),
        "shared_with_teacher": count(p for p in f_params if id(p) in t_ids),
        "shared_with_student": count(p for p in f_params if id(p) in s_ids),
        "new_learnable": count(p for p in f_params if id(p) not in t_ids and id(p) not in s_ids),
    }
