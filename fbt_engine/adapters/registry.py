"""Adapter registry keyed by timm model class (and by timm module name for the catalog)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ModelError

_ADAPTERS: dict[str, type] = {}  # family -> adapter class
_CLASSES: dict[type, str] = {}  # timm model class -> family
_MODULES: dict[str, str] = {}  # timm module name -> family (catalog: fusable without building)


def register_adapter(family: str, modules: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator: register an adapter for a family and the timm modules that hold it."""
    def deco(cls: type) -> type:
        cls.family = family
        _ADAPTERS[family] = cls
        for mod in modules:
            _MODULES[mod] = family
        return cls
    return deco


def _bind_classes() -> None:
    """Map timm model classes to families (done lazily so importing timm stays in one place)."""
    if _CLASSES:
        return
    from timm.models import convnext, deit, efficientnet, mlp_mixer, resnet, swin_transformer, vision_transformer
    _CLASSES.update({
        resnet.ResNet: "resnet", efficientnet.EfficientNet: "efficientnet", convnext.ConvNeXt: "convnext",
        swin_transformer.SwinTransformer: "swin", vision_transformer.VisionTransformer: "vit",
        deit.VisionTransformerDistilled: "vit", mlp_mixer.MlpMixer: "mixer",
    })


def supported_families() -> list[str]:
    return sorted(_ADAPTERS)


def family_of_module(module: str) -> str | None:
    return _MODULES.get(module)


def family_of(model: nn.Module) -> str | None:
    _bind_classes()
    for cls in type(model).__mro__:
        if cls in _CLASSES:
            return _CLASSES[cls]
    return None


def get_adapter(model: nn.Module, name: str = ""):
    """The 4-stage adapter for a model; ModelError naming the supported families otherwise."""
    family = family_of(model)
    if family is None:
        label = name or type(model).__name__
        raise ModelError(
            f"model {label!r} ({type(model).__name__}) is not supported for fusion",
            f"supported families: {', '.join(supported_families())}; see `fbt-engine models --fusable`")
    return _ADAPTERS[family](model)
