"""Adapters for the supported timm families. Each maps the model's own modules onto the 4 stages."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .base import Adapter, Part, split_depth
from .registry import register_adapter


@register_adapter("resnet", modules=("resnet",))
class ResNetAdapter(Adapter):
    kind = "cnn"
    layout = "nchw"

    def _build(self, m: nn.Module) -> None:
        self.stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
        self.stages = [m.layer1, m.layer2, m.layer3, m.layer4]


@register_adapter("efficientnet", modules=("efficientnet",))
class EfficientNetAdapter(Adapter):
    """MobileNetV2, EfficientNet, EfficientNet-Lite, MNASNet...: timm's EfficientNet class.

    Blocks are grouped by output stride (4, 8, 16, 32) using timm's feature_info metadata;
    stage 4 ends with conv_head + bn2 (1280 channels for MobileNetV2, as in OFA-KD).
    """

    kind = "cnn"
    layout = "nchw"

    def _build(self, m: nn.Module) -> None:
        ends = {f["reduction"]: int(f["module"].split(".")[1]) + 1
                for f in m.feature_info if f["module"].startswith("blocks.")}
        bounds = [ends.get(2, 0)] + [ends[r] for r in (4, 8, 16, 32)]
        blocks = list(m.blocks)
        self.stem = nn.Sequential(m.conv_stem, m.bn1, *blocks[:bounds[0]])
        self.stages = [nn.Sequential(*blocks[bounds[i]:bounds[i + 1]]) for i in range(4)]
        self.stages[3] = nn.Sequential(*self.stages[3], m.conv_head, m.bn2)


@register_adapter("convnext", modules=("convnext",))
class ConvNeXtAdapter(Adapter):
    kind = "cnn"
    layout = "nchw"

    def _build(self, m: nn.Module) -> None:
        self.stem = m.stem
        self.stages = list(m.stages)
        self.final = m.norm_pre


@register_adapter("swin", modules=("swin_transformer",))
class SwinAdapter(Adapter):
    """timm 1.x Swin works in NHWC; layers[i] (i >= 1) starts with its patch merging."""

    kind = "msa"
    layout = "nhwc"

    def _build(self, m: nn.Module) -> None:
        self.stem = m.patch_embed
        self.stages = list(m.layers)
        self.final = m.norm

    def stage_attn(self, stage: int) -> nn.Module | None:
        return self.model.layers[stage - 1].blocks[0].attn


class _IsotropicAdapter(Adapter):
    """Isotropic token models: blocks cut D/6, D/6, D/2, D/6 into 4 stages."""

    layout = "tokens"

    def _split_blocks(self, blocks: nn.Sequential) -> list[nn.Module]:
        sizes = split_depth(len(blocks))
        starts = [sum(sizes[:i]) for i in range(4)]
        return [nn.Sequential(*list(blocks)[s:s + n]) for s, n in zip(starts, sizes)]


@register_adapter("vit", modules=("vision_transformer", "deit"))
class ViTAdapter(_IsotropicAdapter):
    """ViT/DeiT with a class token, or with global_pool='avg' and no class token; DeiT-distilled's
    distillation token and register tokens count as prefix tokens."""

    kind = "msa"

    def _build(self, m: nn.Module) -> None:
        def stem(x: Any) -> Any:
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

        self.stem = Part(stem, patch_embed=m.patch_embed, cls_token=m.cls_token, reg_token=m.reg_token,
                         dist_token=getattr(m, "dist_token", None), pos_embed=m.pos_embed, norm_pre=m.norm_pre)
        self.stages = self._split_blocks(m.blocks)
        self.final = m.norm
        self.num_prefix = m.num_prefix_tokens

    def _head_members(self) -> dict[str, Any]:
        members = super()._head_members()
        if getattr(self.model, "head_dist", None) is not None:  # DeiT distilled
            members["head_dist"] = self.model.head_dist
        return members

    def stage_attn(self, stage: int) -> nn.Module | None:
        return self.stages[stage - 1][0].attn


@register_adapter("mixer", modules=("mlp_mixer",))
class MixerAdapter(_IsotropicAdapter):
    """MLP-Mixer and ResMLP (timm's MlpMixer class): patch tokens, no prefix tokens."""

    kind = "mlp"

    def _build(self, m: nn.Module) -> None:
        self.stem = m.stem
        self.stages = self._split_blocks(m.blocks)
        self.final = m.norm
