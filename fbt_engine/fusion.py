"""The fused model F (method.md section 3): L's stem..stage`split` -> L2G -> G's remaining stages -> G's head.

`plan_fusion` measures both models by a dry run and returns a `FusionPlan` (pure data);
`build_fused` turns a plan into a module that holds the teacher's and student's own modules
(shared by identity) plus one new learnable piece, the L2G projector.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapters import Adapter, StageInfo, get_adapter
from .errors import ModelError

ROLES = ("student", "teacher")


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
    out_prefix: int  # prefix tokens (class/register) to add for G (ViT targets)
    resample: str  # conv1x1 | convKxK/sK | pool+conv1x1 | interp+conv1x1
    mixer: str  # attention | none
    heads: int
    mlp_ratio: float = 4.0
    pos_embed: bool = False  # add G's position embedding (ViT targets)


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
        mix = ", attention" if c.mixer == "attention" else ""
        tail = f"stage{self.split + 1}" + ("" if self.split == 3 else "..stage4")
        return (f"{self.local_model} stem..stage{self.split} > L2G ({c.resample} {c.in_channels}->"
                f"{c.out_channels}{mix}) > {self.global_model} {tail} > head")

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
        raise ModelError(f"fusion order {order!r} is not one of auto, student-first, teacher-first",
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
    heads = g.stage_heads(stage) or max(1, width // 64)
    while width % heads:  # attention needs heads to divide the width
        heads -= 1
    return heads


def plan_fusion(teacher: nn.Module, student: nn.Module, img_size: int, order: str = "auto", split: int = 3,
                mixer: str = "auto", teacher_name: str = "", student_name: str = "") -> FusionPlan:
    """Measure both models at `img_size` and decide how F is put together."""
    if not 1 <= split <= 3:
        raise ModelError(f"fusion split {split} is out of range", "split counts L's stages: 1, 2 or 3")
    ta, sa = get_adapter(teacher, teacher_name), get_adapter(student, student_name)
    local, reason = choose_local(ta.kind, sa.kind, order)
    la, ga = (sa, ta) if local == "student" else (ta, sa)
    j_in, j_out = la.describe(img_size)[split], ga.describe(img_size)[split]
    use_attention = mixer == "attention" or (mixer == "auto" and ga.kind != "cnn")
    l2g = L2GConfig(
        in_layout=j_in.layout, out_layout=j_out.layout, in_channels=j_in.channels, out_channels=j_out.channels,
        in_grid=j_in.grid, out_grid=j_out.grid, in_prefix=j_in.num_prefix, out_prefix=j_out.num_prefix,
        resample=_resample_kind(j_in.grid, j_out.grid), mixer="attention" if use_attention else "none",
        heads=_heads(ga, split + 1, j_out.channels), pos_embed=ga.family == "vit")
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


class L2G(nn.Module):
    """Local-to-global projector: grid + width change, LayerNorm, optional attention, G's layout."""

    def __init__(self, cfg: L2GConfig, global_adapter: Adapter) -> None:
        super().__init__()
        self.cfg = cfg
        k = int(cfg.resample[4]) if cfg.resample.startswith("conv") and cfg.resample != "conv1x1" else 1
        self.proj = nn.Conv2d(cfg.in_channels, cfg.out_channels, kernel_size=k, stride=k)
        self.norm = nn.LayerNorm(cfg.out_channels)
        self.mixer = None
        if cfg.mixer == "attention":
            from timm.models.vision_transformer import Block
            self.mixer = Block(cfg.out_channels, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
        self.prefix_tokens = self.pos_embed = None
        self.no_embed_class = False
        if cfg.out_layout == "tokens":
            self._init_tokens(global_adapter.model)

    def _init_tokens(self, g: nn.Module) -> None:
        """Class/register tokens and position embedding initialised from G's own (copies: learnable here)."""
        prefix = [t for t in (getattr(g, "cls_token", None), getattr(g, "reg_token", None)) if t is not None]
        if prefix and self.cfg.out_prefix:
            self.prefix_tokens = nn.Parameter(torch.cat([t.detach() for t in prefix], dim=1).clone())
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        x = self._resample(to_nchw(x, c.in_layout, c.in_grid, c.in_prefix))
        n, ch, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))  # (N, HW, C)
        if self.mixer is not None:
            x = self.mixer(x)
        if c.out_layout == "nchw":
            return x.transpose(1, 2).reshape(n, ch, h, w)
        if c.out_layout == "nhwc":
            return x.reshape(n, h, w, ch)
        return self._add_prefix_and_pos(x)

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

    def __init__(self, plan: FusionPlan, local: Adapter, global_: Adapter, teacher: nn.Module) -> None:
        super().__init__()
        self.plan = plan
        k = plan.split
        self.local = nn.Sequential(OrderedDict(
            [("stem", local.stem)] + [(f"stage{i + 1}", local.stages[i]) for i in range(k)]))
        self.l2g = L2G(plan.l2g, global_)
        self.tail = nn.Sequential(OrderedDict((f"stage{i + 1}", global_.stages[i]) for i in range(k, 4)))
        self.head = global_.head
        object.__setattr__(self, "_global", global_)
        object.__setattr__(self, "_teacher", teacher)  # kept in eval mode whatever F's mode is

    def forward_from(self, x_split: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled features of F from L's stage-`split` output."""
        return self._global.head_and_pooled(self.tail(self.l2g(x_split)))

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


def build_fused(teacher: nn.Module, student: nn.Module, plan: FusionPlan) -> FusedModel:
    """Build F from a plan. The teacher is frozen (eval, no grad); its modules are shared, not copied."""
    freeze(teacher)
    ta, sa = get_adapter(teacher, plan.teacher), get_adapter(student, plan.student)
    local, global_ = (sa, ta) if plan.local == "student" else (ta, sa)
    return FusedModel(plan, local, global_, teacher)


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
