"""Model creation: timm's factory plus the few things FBT needs on top of it.

- Registers the small Swins of the paper (Swin-P and Swin-N) that timm does not ship.
- Passes `img_size` to models that take it, so a ViT/Swin/Mixer works at 32x32 as well as 224.
- Lets Mixer/ResMLP names take `patch_size` (their registered functions fix it).
- Turns timm's errors into ModelError sentences with a hint.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models import is_model_in_modules, register_model
from timm.models import mlp_mixer, swin_transformer

from .errors import ModelError


def _swin_cfg() -> dict[str, Any]:
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
                interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                first_conv="patch_embed.proj", classifier="head.fc")


# timm's register_model picks pretrained configs from the defining module's `default_cfgs`.
default_cfgs = {"swin_pico_patch4_window7_224": _swin_cfg(), "swin_nano_patch4_window7_224": _swin_cfg()}
# Catalog family of the models this module registers (timm files them under our module's name).
FAMILY_OF_REGISTERED = "swin_transformer"


@register_model
def swin_pico_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-P of the FBT/OFA-KD papers: embed 48, depths 2-2-2-2, heads 2-4-8-16."""
    args = dict(patch_size=4, window_size=7, embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16))
    return swin_transformer._create_swin_transformer(
        "swin_pico_patch4_window7_224", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def swin_nano_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-N of the FBT/OFA-KD papers: embed 64, depths 2-2-2-2, heads 2-4-8-16."""
    args = dict(patch_size=4, window_size=7, embed_dim=64, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16))
    return swin_transformer._create_swin_transformer(
        "swin_nano_patch4_window7_224", pretrained=pretrained, **dict(args, **kwargs))


# timm model classes whose constructor accepts `img_size` (checked against timm 1.0.31).
_TAKES_IMG_SIZE = ("vit", "deit", "swin", "mixer", "resmlp", "gmlp", "eva", "beit")


def model_exists(name: str) -> bool:
    """A timm architecture (optionally tagged: `resnet18.a1_in1k`), or an `hf-hub:`/`local-dir:` source
    (its architecture is named in the source's config.json, read when the model is built)."""
    if name.startswith(_SOURCES):
        return bool(name.split(":", 1)[1].strip())
    return bool(timm.list_models(name)) or timm.is_model(name)


_SOURCES = ("hf-hub:", "local-dir:")


def resolve_architecture(name: str) -> tuple[str, dict[str, Any], Any]:
    """The timm architecture behind `name` and the source's model args: a tag is dropped
    (`resnet18.a1_in1k` -> `resnet18`); `hf-hub:`/`local-dir:` read the source's config.json
    (the hub's from its cache, or downloaded). Returns (architecture, model args, pretrained cfg or None).
    Raises ModelError naming the source and the fix."""
    from timm.models import _hub
    source, _, ident = name.partition(":") if name.startswith(_SOURCES) else ("", "", name)
    if not source:
        if not timm.is_model(name):
            raise _unknown(name)
        arch, _, tag = name.partition(".")
        if tag and not _tag_known(name):
            tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
            raise ModelError(f"unknown model {name!r}: timm has no pretrained tag {tag!r} for {arch}",
                             f"use one of its tags ({', '.join(tags[:6]) or 'none'}), or the bare name {arch!r}")
        return arch, {}, None
    try:
        if source == "hf-hub":
            pcfg, arch, args = _hub.load_model_config_from_hf(ident)
        else:
            pcfg, arch, args = _hub.load_model_config_from_path(ident)
    except Exception as exc:  # network, missing file, bad JSON: huggingface_hub raises many kinds
        raise _source_error(name, source, ident, exc) from None
    if not timm.is_model(arch):
        raise ModelError(f"model {name!r} names the architecture {arch!r}, which this timm ({timm.__version__}) "
                         "does not have", "upgrade timm, or pick another model")
    return arch, dict(args or {}), pcfg


def _tag_known(name: str) -> bool:
    try:
        timm.get_pretrained_cfg(name)
        return True
    except RuntimeError:  # "Invalid pretrained tag"
        return False


def _source_error(name: str, source: str, ident: str, exc: Exception) -> ModelError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if source == "local-dir" and (Path(ident) / "student.safetensors").is_file():  # a run folder (before export/)
        return ModelError(f"model {name!r}: the folder {ident!r} is a run folder, not a timm model folder",
                          f"name the run's export instead: \"local-dir:{Path(ident) / 'export' / 'timm'}\" "
                          f"(`fbt-engine export {ident}` writes it for older runs)")
    if source == "local-dir":
        return ModelError(f"model {name!r}: the folder {ident!r} is not a timm model folder ({first})",
                          "give a folder with config.json and model.safetensors (what timm's "
                          "save_for_hf / push_to_hf_hub write)")
    return ModelError(f"model {name!r}: could not read its config from the Hugging Face Hub, which may be "
                      f"unreachable from here ({type(exc).__name__}: {first})",
                      "run once with internet (it is cached under ~/.cache/huggingface), or use the timm name "
                      "with a local file in checkpoint (e.g. model = \"resnet18\", checkpoint = \"resnet18.safetensors\")")


def _unknown(name: str) -> ModelError:
    near = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"did you mean {', '.join(near)}?" if near else "list the names with `fbt-engine models --filter PATTERN`"
    return ModelError(f"unknown model {name!r}: timm has no architecture of that name", hint)


def _create_mixer_with_patch(name: str, patch_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered Mixer/ResMLP with another patch size.

    Their entry functions build `dict(patch_size=16, ..., **kwargs)`, so passing patch_size again
    raises TypeError; we swap in a `_create_mixer` that overrides it for this one call.
    """
    original = mlp_mixer._create_mixer

    def with_patch(variant: str, pretrained: bool = False, **args: Any) -> nn.Module:
        args["patch_size"] = patch_size
        return original(variant, pretrained=pretrained, **args)

    mlp_mixer._create_mixer = with_patch
    try:
        return timm.create_model(name, **kwargs)
    finally:
        mlp_mixer._create_mixer = original


def create_model(name: str, img_size: int | None = None, num_classes: int | None = None,
                 pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a timm model by name; `img_size` is passed to models that take it.

    Raises ModelError for unknown names or arguments the model does not take.
    """
    arch, source_args, source_cfg = resolve_architecture(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None and "img_size" not in kwargs and arch.split("_")[0] in _TAKES_IMG_SIZE:
        cfg = timm.get_pretrained_cfg(name) if not name.startswith(_SOURCES) else None
        default = source_args.get("img_size") or (cfg.input_size[-1] if cfg is not None else 224)
        if img_size != default:
            kwargs["img_size"] = img_size
    try:
        if "patch_size" in kwargs and is_model_in_modules(arch, ["mlp_mixer"]):
            return _create_mixer_with_patch(name, kwargs.pop("patch_size"), pretrained=pretrained, **kwargs)
        if source_cfg is not None:  # hf-hub:/local-dir: as timm resolves them, with the config read once
            args = {**source_args, **kwargs, **({"pretrained_model_args": source_args} if source_args else {})}
            return timm.create_model(arch, pretrained=pretrained, pretrained_cfg=source_cfg, **args)
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name!r} does not take the arguments {sorted(kwargs)}: {exc}",
                         "remove the argument from the preset's kwargs, or pick a model that takes it") from None
    except (AssertionError, ValueError) as exc:
        raise ModelError(f"model {name!r} cannot be built with {kwargs}: {exc}",
                         "check img_size/patch_size/window_size: the grid must divide evenly") from None
