"""The timm catalog as plain data: name, family, kind, parameters, input size, tags, fusable.

The whole catalog for the supported timm version ships as package data
(`catalog_data/timm-<version>.json.gz`, written by `scripts/gen_catalog.py`), so a listing on a
fresh machine reads one small file and imports neither torch nor timm. Under another timm version
the names come from timm's registry, the shipped rows fill in every name they still know, and only
the rest are counted: on the meta device (no weights, nothing downloaded), in a thread at the
lowest CPU priority with one torch thread, with progress, and cached in the user's cache folder.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import re
import threading
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


DATA_DIR = Path(__file__).with_name("catalog_data")
COLUMNS = ("name", "family", "kind", "params", "input_size", "pretrained_tags", "fusable")
REGENERATE = "nice -n 19 python scripts/gen_catalog.py"


def timm_version() -> str:
    """The installed timm version, read from its metadata (does not import timm)."""
    return version("timm")


def table_path(timm_ver: str) -> Path:
    """Where the shipped table for a timm version lives (it may not exist)."""
    return DATA_DIR / f"timm-{timm_ver}.json.gz"


def natural_key(name: str) -> list[int | str]:
    """timm's listing order (resnet18 before resnet101), without importing timm."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]


def write_table(entries: Iterable[ModelEntry], path: Path, timm_ver: str) -> None:
    """The shipped table: one row per model in timm's order, no whitespace, gzip without a
    timestamp, so the same catalog always gives the same bytes."""
    rows = [[getattr(e, c) for c in COLUMNS] for e in sorted(entries, key=lambda e: natural_key(e.name))]
    text = json.dumps({"timm": timm_ver, "columns": COLUMNS, "rows": rows}, separators=(",", ":"))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def read_table(path: Path) -> list[ModelEntry] | None:
    """A shipped table as entries; None when it is missing or unreadable."""
    try:
        data = json.loads(gzip.decompress(path.read_bytes()))
        cols = data["columns"]
        return [ModelEntry(**dict(zip(cols, row))) for row in data["rows"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def newest_table() -> Path | None:
    """The shipped table of the newest timm version (the fallback under an unsupported timm)."""
    def key(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p.name))
    tables = sorted(DATA_DIR.glob("timm-*.json.gz"), key=key)
    return tables[-1] if tables else None


def cache_path() -> Path:
    root = Path(os.environ.get("FBT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "fbt-workbench")
    return root / f"catalog-timm-{timm_version()}.json"


def load_cache() -> list[ModelEntry] | None:
    path = cache_path()
    try:
        return [ModelEntry(**e) for e in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return None


def save_cache(entries: list[ModelEntry]) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
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


def merge_known(entries: list[ModelEntry], known: Iterable[ModelEntry]) -> int:
    """Fill the uncounted entries from `known` (a shipped table), counts and the exact class-based
    fusability, wherever it has the name; returns how many it filled."""
    by_name = {k.name: k for k in known if k.params is not None}
    filled = 0
    for e in entries:
        k = by_name.get(e.name)
        if e.params is None and k is not None:
            e.params, e.fusable = k.params, k.fusable
            filled += 1
    return filled


def run_low_priority(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a thread at the lowest CPU priority with one torch thread, and wait for it.
    Linux nices only that thread, so a caller that goes on afterwards keeps its own priority."""
    import torch
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            os.nice(19)
        except (OSError, AttributeError):  # not permitted or not on this OS: count at normal priority
            pass
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker = threading.Thread(target=body, name="fbt-catalog-count", daemon=True)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fill_counts(entries: list[ModelEntry], progress: Callable[[int, int], None] | None = None,
                save: Callable[[list[ModelEntry]], None] | None = save_cache, save_every: int = 100) -> None:
    """Count the missing parameters in place at low priority (progress(i, n) after each model),
    saving with `save` as it goes (an interrupt loses little)."""
    import logging
    import warnings
    logging.getLogger("timm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    todo = [e for e in entries if e.params is None]

    def count_all() -> None:
        for i, entry in enumerate(todo, 1):
            params, fusable = count_params(entry.name)
            entry.params = params if params is not None else -1  # -1: tried and failed, do not retry
            if fusable is not None:
                entry.fusable = fusable
            if progress:
                progress(i, len(todo))
            if save and i % save_every == 0:
                save(entries)

    if todo:
        run_low_priority(count_all)
    if save:
        save(entries)


def catalog(counts: bool = True, progress: Callable[[int, int], None] | None = None) -> list[ModelEntry]:
    """The whole catalog. The shipped table when it was made for the installed timm (instant:
    neither torch nor timm is imported); otherwise the user's cache, or timm's registry with every
    row the newest shipped table still knows. With `counts`, the models no table knows are counted
    at low priority, `progress(i, n)` after each."""
    shipped = read_table(table_path(timm_version()))
    if shipped is not None:
        return shipped
    cached = load_cache()
    entries = cached if cached is not None else build_entries()
    newest = newest_table()  # also fills a cache written before the table shipped
    if merge_known(entries, (read_table(newest) if newest else None) or []) or cached is None:
        save_cache(entries)
    if counts and any(e.params is None for e in entries):
        fill_counts(entries, progress)
    return entries


def completion_names() -> list[str]:
    """Model names for shell completion, instantly and never importing torch or timm: the shipped
    table of the installed timm, else the user's cache, else the newest shipped table."""
    for source in (lambda: read_table(table_path(timm_version())), load_cache,
                   lambda: read_table(newest_table()) if newest_table() else None):
        try:
            entries = source()
        except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
            entries = None
        if entries:
            return [e.name for e in entries]
    return []


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
