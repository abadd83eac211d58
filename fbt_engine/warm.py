"""The warm part of `fbt-engine serve`: torch and timm imported once, built models and answers kept.

`Workbench` answers one request at a time (the service's lanes call it from their threads):
`fuse` builds T, S and F once per request minus its depth and keeps torchinfo's statistics, so
another depth is printed without a forward pass; models are kept per role, name, input size (only
where the constructor takes it), classes and kwargs, so order and split changes rebuild only F;
ranges, choices and unsupported pairs are answered from the catalog before anything is built.
`Job.check()` between the slow steps lets a superseded or cancelled request stop early.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol as P
from .errors import ConfigError, FBTError, ModelError

DEPTHS = (0, 10)  # torchinfo tree depths a request may ask for
CACHE_PARAMS = 400_000_000  # parameters of built models kept warm (about 1.6 GB of float32)
BUILDS_KEPT = 64  # answers kept per full request minus depth (text and numbers: small)
MEMO_BYTES = 512 << 20  # stage outputs on the calibration images kept (see CalibrationMemo)
PREVIEW_IMAGES = 2  # calibration images a preview's F runs (training uses all 8; see CalibrationMemo)
# torch threads of the service. Its forwards are 1-8 images: a second OpenMP thread gains little,
# and on a loaded 2-core laptop its spin-waiting made previews 5-10x slower (benchmarks/preview_latency.py).
THREADS_ENV = "FBT_SERVE_THREADS"


class Stop(Exception):
    """Raised at a job's checkpoint once it was superseded or cancelled."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Job:
    """One request on its way through a lane; `stop` is set from the reader thread."""

    def __init__(self, request: P.Request) -> None:
        self.request = request
        self.stop: str | None = None
        self.by: int | str | None = None  # the request that superseded it

    def check(self) -> None:
        if self.stop:
            raise Stop(self.stop)


class LRU:
    """Least recently used out first, bounded by entry count and by total weight (the newest stays)."""

    def __init__(self, max_items: int, max_weight: float = float("inf")) -> None:
        self.max_items, self.max_weight = max_items, max_weight
        self._items: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self.weight = 0.0

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Any, value: Any, weight: float = 1.0) -> None:
        if key in self._items:
            self.weight -= self._items.pop(key)[1]
        self._items[key] = (value, weight)
        self.weight += weight
        while len(self._items) > 1 and (len(self._items) > self.max_items or self.weight > self.max_weight):
            self.weight -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)


# --- the warm part ------------------------------------------------------------------------------

class CalibrationMemo:
    """`fusion.stage_output` on F's calibration images, for previews: remembered, and on fewer images.

    A CNN G's L2G is calibrated on 8 fixed random images: `plan_fusion` runs G on them (does G's
    next stage get post-ReLU input?) and F's constructor runs L and G again to set the L2G
    BatchNorm's statistics, for every order and split: about 2 of the 2.5 s of such a build at
    224 px here. A preview shows shapes, counts and the tree, never those BatchNorm values, so the
    service
    - runs the models on the first `PREVIEW_IMAGES` of the images only (the post-ReLU question is
      a property of G's architecture: a non-ReLU output has negative values on any image), and
    - keeps each model's stage outputs on them, extending a stage at a time, so an order or split
      change runs no stage twice for a model it keeps.
    The answer is the same JSON `fbt-engine fuse --json` prints (tests/engine/test_serve.py checks a
    CNN-G pair). Only the thread that builds previews uses it; any other caller (preflight on the
    meta device, say) gets the original function.
    """

    def __init__(self, max_bytes: int = MEMO_BYTES) -> None:
        self._on = threading.local()
        self._outputs = LRU(64, max_bytes)  # (id(model), img) -> (weakref to model, [stem, stage1, ...])
        self._images: dict[int, Any] = {}
        self._original: Callable[..., Any] | None = None

    def install(self) -> None:
        from . import fusion
        if self._original is None:
            self._original = fusion.stage_output
            fusion.stage_output = self.stage_output

    @contextlib.contextmanager
    def active(self) -> Any:
        self._on.value = True
        try:
            yield
        finally:
            self._on.value = False

    def stage_output(self, adapter: Any, images: Any, stage: int) -> Any:
        assert self._original is not None
        if not getattr(self._on, "value", False) or not self._is_calibration(images):
            return self._original(adapter, images, stage)
        import weakref

        import torch
        model, key = adapter.model, (id(adapter.model), images.shape[-1])
        entry = self._outputs.get(key)
        if entry is None or entry[0]() is not model:
            entry = (weakref.ref(model), [])
        outs = entry[1]
        if len(outs) <= stage:
            modes = {m: m.training for m in model.modules()}
            model.eval()
            try:
                with torch.no_grad():
                    if not outs:
                        outs.append(adapter.stem(images[:PREVIEW_IMAGES]))
                    for module in adapter.stages[len(outs) - 1:stage]:
                        outs.append(module(outs[-1]))
            finally:
                for m, mode in modes.items():
                    m.training = mode
        self._outputs.put(key, entry, weight=sum(t.numel() * t.element_size() for t in outs))
        return outs[stage]

    def _is_calibration(self, images: Any) -> bool:
        """The fixed calibration images of that size (a cheap comparison against our own copy)."""
        import torch

        from .fusion import CALIBRATION_IMAGES, calibration_images
        if images.device.type != "cpu" or images.dim() != 4 or images.shape[0] != CALIBRATION_IMAGES:
            return False
        size = images.shape[-1]
        if size not in self._images:
            self._images[size] = calibration_images(size)
        return images.shape == self._images[size].shape and bool(torch.equal(images, self._images[size]))


@dataclass
class Built:
    """What one fuse request (minus depth) produced: the answer's fields and torchinfo's statistics
    (detached from the modules, so a kept answer does not keep the models alive)."""

    fields: dict[str, Any]
    stats: Any


def _range(value: int, low: int, high: int, what: str, hint: str, error: type[FBTError] = ConfigError) -> None:
    if not low <= value <= high:
        raise error(f"{what} {value} is out of range: it must be from {low} to {high}", hint)


def _img_size_range() -> tuple[int, int, str]:
    """The input-size range of presets (config.RANGES: one table for the fact)."""
    from .config import RANGES
    row = next(r for r in RANGES if r[0] == "data.img_size")
    return int(row[1]), int(row[2]), row[5]


class Workbench:
    """torch and timm imported, the catalog loaded, built models and answers kept (LRU)."""

    def __init__(self, cache_params: int = CACHE_PARAMS) -> None:
        self.models = LRU(32, cache_params)  # (role, name, img or None, classes, kwargs) -> nn.Module
        self.views = LRU(256)  # (model key, img) -> ModelView
        self.builds = LRU(BUILDS_KEPT)  # FuseRequest.build_key() -> Built
        self._catalog: dict[str, Any] | None = None
        self.memo = CalibrationMemo()
        self.builds_made = 0  # tests and the benchmark read these
        self.models_made = 0

    def warm(self) -> dict[str, str]:
        """Import what every answer needs; load the catalog names. Returns the versions."""
        import logging
        import warnings

        import timm
        import torch
        import torchinfo  # noqa: F401  (imported here, not in the first preview)

        from . import __version__, models, summary  # noqa: F401  (models registers Swin-P/N)
        logging.getLogger("timm").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.set_num_threads(max(1, int(os.environ.get(THREADS_ENV) or 1)))
        self.memo.install()
        self.catalog_entries()
        with torch.no_grad():  # the first convolution and matmul initialise their kernels: not in a preview
            torch.nn.functional.conv2d(torch.zeros(1, 3, 16, 16), torch.zeros(8, 3, 3, 3))
            torch.nn.functional.linear(torch.zeros(4, 8), torch.zeros(8, 8))
        return {"fbt_engine": __version__, "torch": torch.__version__, "timm": timm.__version__}

    def catalog_entries(self) -> dict[str, Any]:
        if self._catalog is None:
            from .catalog import catalog
            self._catalog = {e.name: e for e in catalog(counts=False)}
        return self._catalog

    # --- models / validate ----------------------------------------------------------------
    def models_list(self, req: P.ModelsRequest, job: Job) -> list[P.CatalogEntry]:
        from . import catalog as cat
        if req.kind and req.kind not in cat.KINDS:
            raise FBTError(f"unknown kind {req.kind!r}", f"use one of: {', '.join(cat.KINDS)}")

        def progress(i: int, n: int) -> None:
            job.check()  # counting can take minutes: a cancel stops it between two models
        entries = cat.catalog(counts=req.counts, progress=progress if req.counts else None)
        if req.counts:
            self._catalog = {e.name: e for e in entries}
        return [P.CatalogEntry(**e) for e in cat.to_json(cat.select(entries, req.filter, req.kind, req.fusable))]

    def validate(self, req: P.ValidateRequest, job: Job) -> P.ValidateResult:
        from . import config as C
        cfg = C.load_preset(req.preset, list(req.set))
        checks = ["types, names and ranges"]
        if not req.quick:
            job.check()
            from .preflight import check
            checks = check(cfg, source=req.preset).checks
        return P.ValidateResult(preset=req.preset, valid=True, quick=req.quick, checks=checks)

    # --- fuse / summary -----------------------------------------------------------------------
    def fuse(self, req: P.FuseRequest, job: Job) -> P.FuseResult:
        built = self.built(req, job)
        return P.FuseResult(**built.fields, depth=req.depth, summary=self._text(built, req.depth))

    def summary(self, req: P.SummaryRequest, job: Job) -> P.SummaryResult:
        built = self.built(req, job)
        return P.SummaryResult(depth=req.depth, summary=self._text(built, req.depth),
                               mult_adds=built.fields["mult_adds"])

    @staticmethod
    def _text(built: Built, depth: int) -> str:
        from .summary import format_summary
        return format_summary(built.stats, depth)

    def built(self, req: P.FuseRequest, job: Job) -> Built:
        """The answer for a request minus its depth: kept, or built now (models reused when kept)."""
        self.check_request(req)
        key = req.build_key()
        built = self.builds.get(key)
        if built is None:
            built = self._build(req, job)
            self.builds.put(key, built)
        return built

    def check_request(self, req: P.FuseRequest) -> None:
        """Every user error knowable without building a model: ranges, choices, names, fusability."""
        low, high, hint = _img_size_range()
        _range(req.img_size, low, high, "input size", hint)
        _range(req.split, 1, 3, "fusion split", "split counts the local model's stages: 1, 2 or 3", ModelError)
        _range(req.depth, *DEPTHS, "summary depth", "depth 2 or 3 shows the stages and their blocks")
        _range(req.num_classes, 1, 1_000_000, "num_classes", "it is the number of classes of the task, e.g. 1000")
        if req.order not in P.ORDERS:
            raise ConfigError(f"order {req.order!r} is not one of {', '.join(P.ORDERS)}",
                              "use auto to let the CNN of the pair provide the local stages")
        if req.mixer not in P.MIXERS:
            raise ModelError(f"fusion mixer {req.mixer!r} is not one of {', '.join(P.MIXERS)}",
                             "use auto: attention unless G is a CNN")
        for name in (req.teacher, req.student):
            self._check_fusable(name)

    def _check_fusable(self, name: str) -> None:
        """Unknown or unsupported models are answered from the catalog, before anything is built."""
        entries = self.catalog_entries()
        entry = entries.get(name)
        if entry is None:
            import difflib
            near = difflib.get_close_matches(name, list(entries), n=3)
            raise ModelError(f"unknown model {name!r}: timm has no architecture of that name",
                             f"did you mean {', '.join(near)}?" if near
                             else "list the names with `fbt-engine models --filter PATTERN`")
        if not entry.fusable:
            raise ModelError(f"{name} ({entry.family}, {entry.kind}) has no 4-stage adapter, so it cannot be fused",
                             "choose a fusable model (the fusable column; `fbt-engine models --fusable`)")

    def _build(self, req: P.FuseRequest, job: Job) -> Built:
        from .fusion import build_fused, param_table, plan_fusion
        from .summary import torchinfo_stats
        t = self._model("teacher", req.teacher, req, req.teacher_kwargs)
        job.check()
        s = self._model("student", req.student, req, req.student_kwargs)
        job.check()
        with self.memo.active():
            plan = plan_fusion(t, s, req.img_size, order=req.order, split=req.split, mixer=req.mixer,
                               teacher_name=req.teacher, student_name=req.student)
            job.check()
            fused = build_fused(t, s, plan)
        job.check()
        stats = torchinfo_stats(fused, req.img_size)
        for layer in stats.summary_list:  # printing never needs the modules; the kept answer must not hold them
            layer.module = layer.parent_info = None
        self.builds_made += 1
        fields = {"teacher": self._view("teacher", req.teacher, req, req.teacher_kwargs, t),
                  "student": self._view("student", req.student, req, req.student_kwargs, s),
                  "plan": plan.to_dict(), "params": P.ParamCounts(**param_table(t, s, fused)),
                  "mult_adds": int(stats.total_mult_adds), "img_size": req.img_size, "num_classes": req.num_classes}
        return Built(fields, stats)

    @staticmethod
    def _model_key(role: str, name: str, req: P.FuseRequest, kwargs: dict[str, Any]) -> tuple:
        # The role is part of the key: F freezes its teacher, and a frozen model must not reappear
        # as a student. The input size only matters to models whose constructor takes it (the
        # rule of models.create_model): a CNN built once serves every size.
        from .models import _TAKES_IMG_SIZE
        img = req.img_size if name.split("_")[0] in _TAKES_IMG_SIZE else None
        return role, name, img, req.num_classes, json.dumps(kwargs, sort_keys=True, default=str)

    def _model(self, role: str, name: str, req: P.FuseRequest, kwargs: dict[str, Any]) -> Any:
        key = self._model_key(role, name, req, kwargs)
        model = self.models.get(key)
        if model is None:
            from .models import create_model
            model = create_model(name, img_size=req.img_size, num_classes=req.num_classes, **kwargs)
            self.models_made += 1
            self.models.put(key, model, weight=sum(p.numel() for p in model.parameters()))
        return model

    def _view(self, role: str, name: str, req: P.FuseRequest, kwargs: dict[str, Any], model: Any) -> P.ModelView:
        key = (self._model_key(role, name, req, kwargs), req.img_size)
        view = self.views.get(key)
        if view is None:
            from .summary import model_info
            info = model_info(name, model, req.img_size)
            view = P.ModelView(**{**info, "stages": [P.Stage(**st) for st in info["stages"]]})
            self.views.put(key, view)
        return view
