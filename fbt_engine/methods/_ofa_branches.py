"""OFA-KD projector branches, built as OFA-KD builds them (Hao840/OFAKD, `distillers/ofa.py`).

OFA-KD attaches one branch per selected student stage; each branch turns that stage's output into
logits and is taught with the OFA loss by the teacher's final logits, so intermediate stages learn
in the logit space every architecture shares. The branch kind follows the student's stage layout
(OFA-KD's `is_cnn_model`, `distillers/utils.py` L169-179: a (C, H, W) stage is a CNN, (L, D) is not):

* `nchw` (CNN students) -> `conv_branch`: `4 - stage` `SepConv` blocks, each halving the grid,
  channels doubling and the last one reaching `max(D_s, D_t)` (student and teacher final feature
  widths); stage 4 gets one 1x1 conv to that width instead; then GAP and a Linear
  (`distillers/ofa.py` L44-65).
* `tokens` and `nhwc` (ViT/DeiT, Mixer/ResMLP, and timm 1.x Swin, whose stages OFA-KD sees as
  (L, D) tokens) -> `TokenBranch`: patch merging down to a 7x7 grid at the student's final width
  D_s, `max(4 - stage, 1)` ViT attention blocks (4 heads), then the student's class token (models
  with prefix tokens) or the mean over tokens, and a Linear (`distillers/ofa.py` L66-103).

Weights are initialised as OFA-KD's `init_weights` does (`distillers/utils.py` L148-158).
Stage specs are `(layout, shape)` with shapes without the batch dimension: `nchw` (C, H, W),
`nhwc` (H, W, C), `tokens` (L, C) whose first `num_prefix` tokens are class/distillation tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ..config import LossConfig

__all__ = ["OFABranches", "SepConv", "PatchMerging", "TokenBranch", "conv_branch", "build_ofa_branches"]

LAYOUTS = ("nchw", "nhwc", "tokens")
StageSpec = tuple[str, Sequence[int]]  # (layout, shape without batch)
FINAL_GRID = 7  # OFA-KD's `final_patch_grid`: token branches merge patches towards 7x7 (ofa.py L70)
BLOCK_HEADS = 4  # OFA-KD's `Block(dim=feature_dim_s, num_heads=4)` (ofa.py L89)


class SepConv(nn.Sequential):
    """OFA-KD's `SepConv` (`distillers/utils.py` L127-145): two depthwise-separable 3x3 convs, the
    first with stride 2, each followed by BN + ReLU; only the second changes the width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(),
        )


def conv_branch(channels: int, stage: int, width: int, num_classes: int) -> nn.Sequential:
    """OFA-KD's CNN projector (`distillers/ofa.py` L44-65) for a stage with `channels` channels.

    `width` = max(D_s, D_t). Stages 1-3 get `4 - stage` SepConv blocks: block i maps
    `channels * 2**i` to `channels * 2**(i+1)`, the last one to `width`. Stage 4 gets a 1x1 conv
    (with bias) to `width`. Then global average pooling and `Linear(width, num_classes)`.
    """
    if stage == 4:
        body: list[nn.Module] = [nn.Conv2d(channels, width, 1)]
    else:
        n = 4 - stage
        body = [SepConv(channels * 2 ** i, width if i == n - 1 else channels * 2 ** (i + 1)) for i in range(n)]
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerging(nn.Module):
    """Swin-v1 patch merging as OFA-KD uses it (`distillers/utils.py` L8-42): 2x2 neighbours
    concatenated (order x00, x10, x01, x11), LayerNorm(4C), Linear(4C, out, no bias), activation.
    Odd grids are zero-padded to even (OFA-KD asserts even grids)."""

    def __init__(self, dim: int, out_dim: int, act: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), out)
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.act(self.reduction(self.norm(x)))


def _merge_count(grid: tuple[int, int] | None) -> int:
    """OFA-KD: `max(int(log2(patch_grid / 7)), 0)` merges (ofa.py L70-72)."""
    if grid is None:
        return 0
    return max(int(math.log2(min(grid) / FINAL_GRID)), 0)


class TokenBranch(nn.Module):
    """OFA-KD's ViT/MLP projector (`distillers/ofa.py` L66-103).

    Patch tokens (prefix tokens set aside, as `TokenFnContext` does) go through `merges` patch
    mergings (the first to `width` = D_s with GELU; later ones keep `width`, GELU except the last),
    the prefix tokens are put back in front, then `depth` = max(4 - stage, 1) timm ViT `Block`s of
    width D_s with 4 heads; the feature is the first prefix token (the student's class token) or,
    without prefix tokens, the mean over tokens; then `Linear(width, num_classes)` (no final norm,
    as in OFA-KD).
    """

    def __init__(self, dim: int, width: int, num_classes: int, stage: int, grid: tuple[int, int] | None,
                 num_prefix: int = 0, nhwc: bool = False) -> None:
        super().__init__()
        self.num_prefix, self.nhwc, self.grid = num_prefix, nhwc, grid
        n = _merge_count(grid)
        merges = [PatchMerging(dim if i == 0 else width, width, act=i == 0 or i != n - 1) for i in range(n)]
        if not merges and dim != width:  # OFA-KD would fail here (its blocks expect D_s): project instead
            merges = [nn.Linear(dim, width)]
        self.merge = nn.Sequential(*merges)
        heads = BLOCK_HEADS if width % BLOCK_HEADS == 0 else 1
        self.blocks = nn.Sequential(*[Block(dim=width, num_heads=heads) for _ in range(max(4 - stage, 1))])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        prefix = x[:, :self.num_prefix] if self.num_prefix else None
        if not self.nhwc:
            x = x[:, self.num_prefix:]
            if self.grid is not None:
                x = x.unflatten(1, self.grid)  # (N, H, W, C), as patch merging wants it
        x = self.merge(x)
        if x.ndim == 4:
            x = x.flatten(1, 2)
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        x = self.blocks(x)
        return self.fc(x[:, 0] if prefix is not None else x.mean(dim=1))


def init_weights(module: nn.Module) -> None:
    """OFA-KD's `init_weights` (`distillers/utils.py` L148-158): convs Kaiming fan-out, BN 1/0,
    Linears truncated normal (std 0.02) with zero bias; LayerNorms keep torch's 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _grid(layout: str, shape: Sequence[int], num_prefix: int) -> tuple[int, int] | None:
    if layout == "nchw":
        return int(shape[1]), int(shape[2])
    if layout == "nhwc":
        return int(shape[0]), int(shape[1])
    n = int(shape[0]) - num_prefix
    side = math.isqrt(n)
    return (side, side) if side * side == n else None  # a non-square token set is not merged


def _channels(layout: str, shape: Sequence[int]) -> int:
    return int(shape[0]) if layout == "nchw" else int(shape[-1])


class OFABranches(nn.Module):
    """One OFA-KD projector per selected stage.

    `specs` describes *every* student stage (1-based order), `stages` picks the stages that get a
    branch (default: all), `num_prefix` gives per stage (or for all stages) how many prefix tokens
    the `tokens` layout carries. `student_width` / `teacher_width` are the two models' final feature
    widths (D_s, D_t; `_base.prelogits_width`); D_s defaults to the last stage's channels. `forward` takes
    the outputs of every stage (or just of the selected ones, in order) and returns one logits
    tensor (N, num_classes) per selected stage.
    """

    def __init__(self, specs: Sequence[StageSpec], num_classes: int, teacher_width: int,
                 stages: Sequence[int] | None = None, num_prefix: int | Sequence[int] = 0,
                 student_width: int | None = None) -> None:
        super().__init__()
        self.stages = list(stages) if stages is not None else list(range(1, len(specs) + 1))
        prefixes = [num_prefix] * len(specs) if isinstance(num_prefix, int) else list(num_prefix)
        if len(prefixes) != len(specs):
            raise ValueError(f"num_prefix has {len(prefixes)} entries for {len(specs)} stages")
        for layout, _ in specs:
            if layout not in LAYOUTS:
                raise ValueError(f"unknown stage layout {layout!r}; use one of {LAYOUTS}")
        bad = [s for s in self.stages if not 1 <= s <= len(specs)]
        if bad:
            raise ValueError(f"stages {bad} out of range 1..{len(specs)}")
        self.num_stages = len(specs)
        d_s = int(student_width) if student_width else _channels(*specs[-1])
        self.branches = nn.ModuleList(
            self._branch(s, specs[s - 1], prefixes[s - 1], num_classes, d_s, int(teacher_width))
            for s in self.stages)
        init_weights(self.branches)

    @staticmethod
    def _branch(stage: int, spec: StageSpec, num_prefix: int, num_classes: int, d_s: int, d_t: int) -> nn.Module:
        layout, shape = spec
        channels = _channels(layout, shape)
        if layout == "nchw":
            return conv_branch(channels, stage, max(d_s, d_t), num_classes)
        prefix = num_prefix if layout == "tokens" else 0
        return TokenBranch(channels, d_s, num_classes, stage, _grid(layout, shape, prefix), prefix,
                           nhwc=layout == "nhwc")

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) == self.num_stages:
            feats = [feats[s - 1] for s in self.stages]
        elif len(feats) != len(self.stages):
            raise ValueError(f"expected {self.num_stages} stage outputs (or {len(self.stages)}), got {len(feats)}")
        return [branch(x) for branch, x in zip(self.branches, feats)]


def build_ofa_branches(cfg: LossConfig, specs: Sequence[StageSpec], num_classes: int, teacher_width: int,
                       num_prefix: int | Sequence[int] = 0, student_width: int | None = None) -> OFABranches:
    """Branches for `cfg.ofa_stages` of a student whose stages are described by `specs`, sized by
    the student's and teacher's final feature widths as OFA-KD sizes them."""
    return OFABranches(specs, num_classes, teacher_width, cfg.ofa_stages, num_prefix, student_width)
