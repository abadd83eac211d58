"""The canonical 4-stage view of a model: stem -> stage1..stage4 -> head.

An adapter wraps a timm model without copying anything: `stem`, `stages[i]` and `head` are
modules that hold the model's own submodules and parameters (the same objects), so a fused model
built from them shares weights with the original by identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

LAYOUTS = ("nchw", "nhwc", "tokens")


class Part(nn.Module):
    """A named piece of a model: registers shared members, runs `fn` in forward.

    Members are the model's own modules or Parameters (registered here by reference, not
    copied); `fn` is the piece of the model's forward that uses them.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], **members: Any) -> None:
        super().__init__()
        for name, member in members.items():
            if member is not None:
                setattr(self, name, member)
        object.__setattr__(self, "_fn", fn)  # not a submodule: it closes over the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


@dataclass(frozen=True)
class StageInfo:
    """Shape of one boundary (batch dimension excluded), measured by a dry run."""

    name: str
    layout: str  # nchw | nhwc | tokens
    shape: tuple[int, ...]
    num_prefix: int = 0  # tokens only: class/register tokens before the patch tokens

    @property
    def channels(self) -> int:
        return self.shape[0] if self.layout == "nchw" else self.shape[-1]

    @property
    def tokens(self) -> int:
        """Number of spatial positions (prefix tokens excluded)."""
        if self.layout == "tokens":
            return self.shape[0] - self.num_prefix
        h, w = self.grid
        return h * w

    @property
    def grid(self) -> tuple[int, int]:
        if self.layout == "nchw":
            return (self.shape[1], self.shape[2])
        if self.layout == "nhwc":
            return (self.shape[0], self.shape[1])
        n = self.shape[0] - self.num_prefix
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        return (side, side)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layout": self.layout, "shape": list(self.shape),
                "num_prefix": self.num_prefix}


class Adapter:
    """Base class: subclasses fill `stem`, `stages` (4 modules) and `final` in `_build`."""

    kind: ClassVar[str] = "cnn"  # cnn | msa | mlp
    layout: ClassVar[str] = "nchw"
    family: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.num_prefix = 0
        self.stem: nn.Module
        self.stages: list[nn.Module]
        self.final: nn.Module = nn.Identity()  # per-token work between stage 4 and pooling
        self._build(model)
        self.head = Part(self._head, final=self.final, **self._head_members())

    # --- to be provided by families ----------------------------------------------------
    def _build(self, model: nn.Module) -> None:
        raise NotImplementedError

    def _head_members(self) -> dict[str, Any]:
        """The model's own modules used by forward_head (registered on the head Part)."""
        names = ("head", "fc", "classifier", "global_pool", "fc_norm", "head_drop", "attn_pool", "pool")
        return {n: getattr(self.model, n) for n in names
                if isinstance(getattr(self.model, n, None), nn.Module)}

    # --- the canonical view ----------------------------------------------------------------
    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.final(x))

    def forward_stages(self, x: torch.Tensor, upto: int = 4) -> list[torch.Tensor]:
        """Stem then stages 1..upto; returns each stage's output (stem output excluded)."""
        x = self.stem(x)
        outs = []
        for stage in self.stages[:upto]:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_stages(x)[-1])

    def pooled(self, x4: torch.Tensor) -> torch.Tensor:
        """Method.md section 4: the final feature map averaged over space or patch tokens."""
        return pool_features(self.final(x4), self.layout, self.num_prefix)

    def head_and_pooled(self, x4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled features from one pass through `final`."""
        fm = self.final(x4)
        return self.model.forward_head(fm), pool_features(fm, self.layout, self.num_prefix)

    def describe(self, img_size: int, in_chans: int = 3) -> list[StageInfo]:
        """Shapes at every boundary (stem, stage1..4), from a dry run on one image."""
        from ..errors import ModelError
        x = torch.zeros(1, in_chans, img_size, img_size)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                x = self.stem(x)
                infos = [self._info("stem", x)]
                for i, stage in enumerate(self.stages, 1):
                    x = stage(x)
                    infos.append(self._info(f"stage{i}", x))
        except (RuntimeError, AssertionError, ValueError) as exc:
            name = getattr(self.model, "default_cfg", {}).get("architecture", type(self.model).__name__)
            raise ModelError(f"model {name!r} cannot take a {img_size}x{img_size} input: {_first_line(exc)}",
                             "choose an input size the model accepts (a multiple of its patch size and "
                             "large enough for its downsampling), or pass img_size/patch_size in kwargs") from None
        finally:
            self.model.train(was_training)
        return infos

    def _info(self, name: str, x: torch.Tensor) -> StageInfo:
        return StageInfo(name, self.layout, tuple(x.shape[1:]), self.num_prefix if self.layout == "tokens" else 0)

    def stage_attn(self, stage: int) -> nn.Module | None:
        """The attention module of a stage's first block (MSA models), else None."""
        return None

    def stage_heads(self, stage: int) -> int | None:
        """Attention heads of a stage's blocks (MSA models), else None."""
        attn = self.stage_attn(stage)
        return int(attn.num_heads) if attn is not None else None

    def stage_head_dim(self, stage: int) -> int | None:
        """Width of one attention head in a stage's blocks (MSA models), else None."""
        attn = self.stage_attn(stage)
        qkv = getattr(attn, "qkv", None)
        return qkv.out_features // 3 // int(attn.num_heads) if isinstance(qkv, nn.Linear) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def pool_features(x: torch.Tensor, layout: str, num_prefix: int = 0) -> torch.Tensor:
    """Global average over space (nchw/nhwc) or over patch tokens (prefix tokens excluded)."""
    if layout == "nchw":
        return x.mean(dim=(2, 3))
    if layout == "nhwc":
        return x.mean(dim=(1, 2))
    return x[:, num_prefix:].mean(dim=1)


def split_depth(depth: int) -> list[int]:
    """Blocks per stage for an isotropic model: D/6, D/6, D/2, D/6 (12 -> 2-2-6-2)."""
    if depth < 4:
        raise ValueError(f"an isotropic model needs at least 4 blocks to form 4 stages, it has {depth}")
    a = max(1, round(depth / 6))
    c = depth - 3 * a
    if c < 1:
        a, c = 1, depth - 3
    return [a, a, c, a]
