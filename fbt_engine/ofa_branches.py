"""OFA-KD projector branches: light heads that turn student stage outputs into logits.

OFA-KD attaches one branch per selected student stage; each branch is taught with the OFA loss by
the teacher's final logits, so intermediate stages learn in the logit space, which every
architecture shares. Branches must stay much smaller than the student.

Stage layouts (as the adapters report them, shapes without the batch dimension):
`nchw` (C, H, W), `nhwc` (H, W, C), `tokens` (L, C) with `num_prefix` leading prefix tokens
(class/distillation tokens) that are dropped.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .config import LossConfig

__all__ = ["OFABranches", "ConvBranch", "TokenBranch", "build_ofa_branches"]

LAYOUTS = ("nchw", "nhwc", "tokens")
StageSpec = tuple[str, Sequence[int]]  # (layout, shape without batch)


def _sep_conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (the stride) + pointwise 1x1: a fraction of a full conv's cost."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ConvBranch(nn.Module):
    """Depthwise-separable blocks (stride 2 until the grid is at most `target_grid`), GAP,
    LayerNorm, Linear. Channels double per downsampling block, capped at `max_channels`."""

    def __init__(self, channels: int, grid: tuple[int, int], target_grid: tuple[int, int],
                 num_classes: int, max_channels: int, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        blocks, c, (h, w) = [], channels, grid
        while (h > target_grid[0] or w > target_grid[1]) and len(blocks) < 4:
            c_out = max(c, min(2 * c, max_channels))
            blocks.append(_sep_conv(c, c_out, 2))
            c, h, w = c_out, (h + 1) // 2, (w + 1) // 2
        if not blocks:  # already at the final grid: one stride-1 block still adapts the features
            blocks.append(_sep_conv(c, c, 1))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = self.blocks(x).mean(dim=(2, 3))
        return self.fc(self.norm(x))


class TokenBranch(nn.Module):
    """One residual MLP block (LayerNorm, Linear, GELU, Linear), mean over patch tokens,
    LayerNorm, Linear. Prefix tokens are dropped first."""

    def __init__(self, dim: int, num_classes: int, num_prefix: int = 0) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, self.num_prefix:]
        x = x + self.mlp(x)
        return self.fc(self.norm(x.mean(dim=1)))


def _grid(layout: str, shape: Sequence[int]) -> tuple[int, int] | None:
    if layout == "nchw":
        return int(shape[1]), int(shape[2])
    if layout == "nhwc":
        return int(shape[0]), int(shape[1])
    return None


def _channels(layout: str, shape: Sequence[int]) -> int:
    return int(shape[0]) if layout == "nchw" else int(shape[-1])


class OFABranches(nn.Module):
    """One light branch per selected stage.

    `specs` describes *every* student stage (1-based order), `stages` picks the stages that get a
    branch (default: all), `num_prefix` gives per stage (or for all stages) how many prefix tokens
    to drop for `tokens` layouts. CNN branches downsample towards the last stage's grid.
    `forward` takes the outputs of every stage (or just of the selected ones, in order) and returns
    one logits tensor (N, num_classes) per selected stage.
    """

    def __init__(self, specs: Sequence[StageSpec], num_classes: int,
                 stages: Sequence[int] | None = None, num_prefix: int | Sequence[int] = 0) -> None:
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
        last_layout, last_shape = specs[-1]
        target_grid = _grid(last_layout, last_shape) or (1, 1)
        max_channels = _channels(last_layout, last_shape)
        self.branches = nn.ModuleList(
            self._branch(specs[s - 1], prefixes[s - 1], num_classes, target_grid, max_channels)
            for s in self.stages)

    @staticmethod
    def _branch(spec: StageSpec, num_prefix: int, num_classes: int, target_grid: tuple[int, int],
                max_channels: int) -> nn.Module:
        layout, shape = spec
        if layout == "tokens":
            return TokenBranch(_channels(layout, shape), num_classes, num_prefix)
        channels = _channels(layout, shape)
        return ConvBranch(channels, _grid(layout, shape), target_grid, num_classes,
                          max(max_channels, channels), channels_last=layout == "nhwc")

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) == self.num_stages:
            feats = [feats[s - 1] for s in self.stages]
        elif len(feats) != len(self.stages):
            raise ValueError(f"expected {self.num_stages} stage outputs (or {len(self.stages)}), got {len(feats)}")
        return [branch(x) for branch, x in zip(self.branches, feats)]


def build_ofa_branches(cfg: LossConfig, specs: Sequence[StageSpec], num_classes: int,
                       num_prefix: int | Sequence[int] = 0) -> OFABranches:
    """Branches for `cfg.ofa_stages` of a student whose stages are described by `specs`."""
    return OFABranches(specs, num_classes, cfg.ofa_stages, num_prefix)
