"""The timm catalog as plain data: name, family, kind, parameters, input size, tags, fusable.

Names, families and filters come at once from timm's registry; parameter counts are computed on
the meta device (no weights allocated, nothing downloaded) and cached in the user's cache folder,
keyed by the timm version, so a second listing does not even import torch.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterable

KINDS = ("cnn", "msa", "mlp", "hybrid", "unknown")

# timm module -> kind, for the families without an adapter (adapters declare their own kind).
_MODULE_KINDS = {
    "msa": ("vision_transformer", "deit", "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr",
            "cait", "beit", "eva", "xcit", "twins", "pvt_v2", "tnt", "pit", "crossvit", "sequencer",
            "vision_transformer_sam", "vision_transformer_relpos", "gcvit", "nest", "hiera", "hieradet_sam2",
            "vitamin", "focalnet", "davit", "mvitv2", "tiny_vit", "volo", "naflexvit", "aimv2", "pe", "qwen3_vit",
            "gemma4_vit", "deepseek_vit"),
    "mlp": ("mlp_mixer",),
    "hybrid": ("vision_transformer_hybrid", "levit", "maxxvit", "mobilevit", "efficientformer",
               "efficientformer_v2", "fastvit", "convit", "coat", "edgenext", "efficientvit_mit",
               "efficientvit_msra", "next_vit", "repvit", "inception_next", "metaformer", "byoanet", "halonet",
               "mobilenetv5", "shvit", "starnet", "swiftformer", "rdnet", "fasternet", "csatv2", "mambaout",
               "efficientvim", "lowformer", "iformer", "nextvit", "visformer"),
}
_CNN_HINT = ("resnet", "efficientnet", "mobilenet", "convnext", "regnet", "dense", "dla", "dpn", "ghostnet",
             "hrnet", "inception", "nasnet", "rexnet", "selecsls", "senet", "sknet", "tresnet", "vgg", "xception",
             "res2net", "resnest", "nfnet", "byobnet", "cspnet", "darknet", "ese", "hardcorenas", "lambda", "gernet",
             "hgnet", "repghost", "vovnet", "fbnet", "mnasnet", "squeezenet", "alexnet", "fastglobal", "cait_c",
             "bit", "rexnet", "pnasnet", "mobileone", "regnetz", "lcnet", "tinynet", "nf_", "repvgg", "convmixer",
             "cspnext", "cpubone")


@dataclass
class ModelEntry:
    name: str
    family: str
    kind: str
    params: int | None = None
    input_size: list[int] = field(default_factory=lambda: [3, 224, 224])
    pretrained_tags: list[str] = field(default_factory=list)
    fusable: bool = False


def kind_of_module(module: str) -> str:
    for kind, modules in _MODULE_KINDS.items():
        if module in modules:
            return kind
    if any(h in module for h in _CNN_HINT):
        return "cnn"
    return "unknown"


def cache_path() -> Path:
    root = Path(os.environ.get("FBT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "fbt-workbench")
    return root / f"catalog-timm-{version('timm')}.json"


def load_cache() -> list[ModelEntry] | None:
    path = cache_path()
    try:
        return [ModelEntry(**e) for e in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return None


def save_cache(entries: list[ModelEntry]) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(e) for e in entries]))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def build_entries() -> list[ModelEntry]:
    """Every timm architecture from the registry (no counts yet). Imports timm."""
    import timm
    from . import models  # noqa: F401  (registers Swin-P/N)
    from .adapters import family_of_module
    from .adapters.registry import _ADAPTERS

    module_of = {n: m for m in timm.list_modules() for n in timm.list_models(module=m)}
    tags: dict[str, list[str]] = {}
    for full in timm.list_pretrained():
        arch, _, tag = full.partition(".")
        tags.setdefault(arch, []).append(tag)
    entries = []
    for name in timm.list_models():
        module = module_of.get(name, "")
        if module == "models":  # registered by fbt_engine.models
            module = models.FAMILY_OF_REGISTERED
        fam = family_of_module(module)
        cfg = timm.get_pretrained_cfg(name)
        entries.append(ModelEntry(
            name=name, family=module, kind=_ADAPTERS[fam].kind if fam else kind_of_module(module),
            input_size=list(cfg.input_size) if cfg is not None else [3, 224, 224],
            pretrained_tags=sorted(t for t in tags.get(name, []) if t), fusable=fam is not None))
    return entries


def count_params(name: str) -> tuple[int | None, bool | None]:
    """Parameter count of the default configuration, built on the meta device, and whether an
    adapter supports the model's class (more exact than the module-based guess)."""
    import torch
    from .adapters import family_of
    from .models import create_model
    try:
        with torch.device("meta"):
            model = create_model(name)
        return sum(p.numel() for p in model.parameters()), family_of(model) is not None
    except Exception:  # noqa: BLE001 - some exotic models cannot be built on meta; leave them blank
        return None, None


def fill_counts(entries: list[ModelEntry], progress: Callable[[int, int], None] | None = None,
                save_every: int = 100) -> None:
    """Compute the missing counts in place, saving the cache as it goes (an interrupt loses little)."""
    import logging
    import warnings
    logging.getLogger("timm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    todo = [e for e in entries if e.params is None]
    for i, entry in enumerate(todo, 1):
        params, fusable = count_params(entry.name)
        entry.params = params if params is not None else -1  # -1: tried and failed, do not retry
        if fusable is not None:
            entry.fusable = fusable
        if progress:
            progress(i, len(todo))
        if i % save_every == 0:
            save_cache(entries)
    save_cache(entries)


def catalog(counts: bool = True, progress: Callable[[int, int], None] | None = None) -> list[ModelEntry]:
    """The whole catalog; from the cache when it is complete, otherwise built (and counted)."""
    entries = load_cache()
    if entries is None:
        entries = build_entries()
        save_cache(entries)
    if counts and any(e.params is None for e in entries):
        fill_counts(entries, progress)
    return entries


def select(entries: Iterable[ModelEntry], pattern: str = "", kind: str = "", fusable: bool = False
           ) -> list[ModelEntry]:
    """Filter by name pattern (glob, or substring when it has no wildcard), kind and fusability."""
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return [e for e in entries
            if (not pattern or fnmatch.fnmatch(e.name, pattern))
            and (not kind or e.kind == kind) and (not fusable or e.fusable)]


def to_json(entries: Iterable[ModelEntry]) -> list[dict[str, Any]]:
    return [{**asdict(e), "params": e.params if (e.params or 0) > 0 else None} for e in entries]
