"""Shared helpers of the benchmark scripts: build a method exactly as a run does, and time its steps.

A method is built through the engine's own path: a RunConfig (the quickstart preset plus
overrides) -> `create_student` / `create_teacher` -> the method (`methods._base.build`) -> `trainer.Loop`, and a step is
`Loop.train_step` (autocast, forward, zero_grad, backward, optimiser step, scheduler, NaN watch):
the code a real run executes per batch, minus the data loader.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fbt_engine import config as C
from fbt_engine.events import Emitter
from fbt_engine import methods
from fbt_engine.methods._base import Method, Setup, build
from fbt_engine.task import create_student, create_teacher
from fbt_engine.trainer import Loop, Phase, Runtime, build_optimizer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "presets" / "quickstart.toml"
METHODS = methods.names()  # the registry: every method in fbt_engine/methods/


# --- pair specs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    teacher: str
    teacher_kwargs: dict[str, Any]
    student: str
    student_kwargs: dict[str, Any]
    img_size: int
    batch_size: int
    num_classes: int = 10

    @property
    def label(self) -> str:
        def one(name: str, kw: dict[str, Any]) -> str:
            return name + "".join(f",{k}={v}" for k, v in kw.items())
        return f"{one(self.teacher, self.teacher_kwargs)}->{one(self.student, self.student_kwargs)}" \
               f"@{self.img_size}:{self.batch_size}"


def _model_spec(text: str) -> tuple[str, dict[str, Any]]:
    name, *rest = text.split(",")
    kw = {}
    for item in rest:
        k, _, v = item.partition("=")
        kw[k.strip()] = C.parse_value(v.strip())
    return name.strip(), kw


def parse_pair(spec: str) -> Pair:
    """`TEACHER[,k=v...]->STUDENT[,k=v...]@IMG:BATCH[:CLASSES]`, e.g.
    `resnet18->vit_tiny_patch16_224,patch_size=8@32:64`."""
    models, _, sizes = spec.partition("@")
    t, _, s = models.partition("->")
    if not s or not sizes:
        raise SystemExit(f"bad pair {spec!r}: write TEACHER->STUDENT@IMG:BATCH[:CLASSES]")
    nums = [int(v) for v in sizes.split(":")]
    (tn, tk), (sn, sk) = _model_spec(t), _model_spec(s)
    return Pair(tn, tk, sn, sk, nums[0], nums[1], nums[2] if len(nums) > 2 else 10)


def pair_config(pair: Pair, method: str, overrides: list[str] | None = None, device: str = "cpu") -> C.RunConfig:
    """The quickstart preset with this pair, size and method: the same config path as `fbt-engine run`."""
    data = C.read_toml(QUICKSTART)
    data["method"] = method
    data["teacher"] = {"model": pair.teacher, "kwargs": dict(pair.teacher_kwargs)}
    data["student"] = {"model": pair.student, "kwargs": dict(pair.student_kwargs)}
    data.setdefault("data", {})["img_size"] = pair.img_size
    data.setdefault("train", {}).update(batch_size=pair.batch_size, device=device, warmup_epochs=0)
    data = C.apply_overrides(data, overrides or [])
    return C.from_dict(data, source=f"pair {pair.label}")


# --- building a method like a run does ----------------------------------------------------------

def runtime_for(cfg: C.RunConfig) -> Runtime:
    """The Runtime `run.Run._runtime` would resolve (single process)."""
    device = torch.device(cfg.train.device if cfg.train.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = {"auto": "bf16" if device.type == "cuda" else "off"}.get(cfg.train.amp, cfg.train.amp)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    cl = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")
    return Runtime(device=device, amp_dtype=dtype, scaler=amp == "fp16", channels_last=cl)


class _NullEmitter(Emitter):
    def __init__(self) -> None:
        super().__init__("bench", None, None, enabled=False)


def build_loop(cfg: C.RunConfig, num_classes: int, rt: Runtime, seed: int = 0) -> Loop:
    """The method + Loop for `cfg.method`, as `run.Run._distill` builds them (random teacher weights and,
    for CRD, a 50,000-sample label table: timing does not depend on them)."""
    torch.manual_seed(seed)
    needs_teacher = methods.get(cfg.method).needs_teacher
    teacher = create_teacher(cfg, num_classes) if needs_teacher else None
    labels = torch.arange(50_000) % num_classes
    module = build(Setup(cfg, create_student(cfg, num_classes), teacher, num_classes, labels))
    fake_loader = [None] * 1000  # Loop only asks len() and .generator
    phase = Phase("distill", module, cfg.train, fake_loader, [])
    return Loop(phase, rt, _NullEmitter(), lambda *_: "", lambda *_: False)


def batch_index(pair: Pair) -> torch.Tensor:
    """Dataset indices for a benchmark batch (CRD reads them; other methods ignore them)."""
    return torch.arange(pair.batch_size)


def make_batch(pair: Pair, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(pair.batch_size, 3, pair.img_size, pair.img_size, generator=g)
    y = torch.randint(0, pair.num_classes, (pair.batch_size,), generator=g)
    return x.to(device), y.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the FBT floor: its parts, each timed alone ----------------------------------------------------

class FloorParts:
    """The irreducible work of one FBT step, as three separately timed closures.

    * `teacher`: T's forward without grad (through the adapter, as FBT runs it);
    * `student`: S's forward + CE + backward + AdamW step over S's parameters;
    * `tail`: F's tail (L2G + G's remaining stages + head) from L's stage-`split` activation (computed
      once, outside the timing) + CE + backward (into the activation when L is the student, as in the
      real step) + an optimiser step over the parameters F adds.
    The FBT losses (OFA, InfoNCE on three paths) are not in the floor: they are the overhead measured.
    """

    def __init__(self, loop: Loop, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> None:
        m: Method = loop.module
        self.m, self.x, self.y, self.rt = m, x, y, rt
        tc = loop.phase.tc
        self.opt_s = build_optimizer(m.student, tc)
        new = nn.ModuleList([m.fused.l2g])
        self.opt_f = build_optimizer(new, tc)
        split = m.fused.plan.split
        with torch.no_grad(), rt.autocast():
            src = m.s if m.fused.plan.local == "student" else m.t
            self.x_split = src.forward_stages(x, upto=split)[-1].detach()
        self.grad_into_l = m.fused.plan.local == "student"

    def teacher(self) -> None:
        with torch.no_grad(), self.rt.autocast():
            outs = self.m.t.forward_stages(self.x)
            self.m.t.head_and_pooled(outs[-1])

    def student(self) -> None:
        with self.rt.autocast():
            outs = self.m.s.forward_stages(self.x)
            logits, _ = self.m.s.head_and_pooled(outs[-1])
            loss = F.cross_entropy(logits.float(), self.y)
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()

    def tail(self) -> None:
        xs = self.x_split.clone().requires_grad_(self.grad_into_l)
        with self.rt.autocast():
            logits, _ = self.m.fused.forward_from(xs)
            loss = F.cross_entropy(logits.float(), self.y)
        for p in self.m.fused.parameters():  # also S's tail modules when G is the student
            p.grad = None
        loss.backward()
        self.opt_f.step()


class BranchesPart:
    """OFA's extra work, timed alone: its branches' forward from the student's stage outputs (computed
    once, outside the timing) + CE + backward into those outputs (as the real step's gradient flows
    into the student) + an optimiser step over the branches. The OFA losses are the overhead measured."""

    def __init__(self, loop: Loop, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> None:
        m = loop.module
        self.m, self.y, self.rt = m, y, rt
        with torch.no_grad(), rt.autocast():
            self.outs = [o.detach() for o in m.s.forward_stages(x)]
        self.opt = build_optimizer(m.branches, loop.phase.tc)

    def __call__(self) -> None:
        outs = [o.clone().requires_grad_() for o in self.outs]
        with self.rt.autocast():
            loss = sum(F.cross_entropy(z.float(), self.y) for z in self.m.branches(outs))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


# Each method's floor: the parts it cannot avoid (its models' passes and the modules it adds that are
# networks of their own); everything else in its step (losses, small projections, memory banks) is
# the overhead the floor measures. Methods not listed run the teacher and the student only.
FLOORS: dict[str, tuple[str, ...]] = {
    "scratch": ("student",),
    "ofa": ("teacher", "student", "branches"),
    "fbt": ("teacher", "student", "tail"),
}
DEFAULT_FLOOR = ("teacher", "student")


def floor_of(method: str) -> tuple[str, ...]:
    return FLOORS.get(method, DEFAULT_FLOOR)


# --- timing and memory -------------------------------------------------------------------------

def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except OSError:
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Peak memory of one call of `fn`, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (reset before the call), absolute (weights, optimiser
    state and activations). CPU: resident-set size sampled every ~0.2 ms by a thread during the
    call, minus the RSS just before it (after gc and glibc `malloc_trim(0)`): the memory the step
    itself needs (activations, gradients, temporaries), weights and optimiser state excluded.
    Run it outside the timed repeats: the sampler costs CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda_max_allocated"}
    gc.collect()
    _malloc_trim()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], _rss())
    return {"peak_mib": (peak[0] - base) / 2**20, "base_rss_mib": base / 2**20, "kind": "cpu_rss_delta"}


def load_note() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unavailable"


def profile_step(fn: Callable[[], Any], device: torch.device, top: int = 15) -> list[dict[str, Any]]:
    """Top operators by self time of one call of `fn` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]:
        rows.append({"op": e.key, "self_ms": getattr(e, key, 0) / 1000.0, "calls": e.count})
    return rows


def step_breakdown(loop: Loop, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Median ms of the three phases of `Loop.train_step` (forward incl. loss, backward, optimiser step),
    each synchronised: where an FBT step's time goes."""
    rt, opt = loop.rt, loop.optimizer
    acc: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "optimizer": []}
    m = loop.module
    for _ in range(repeats):
        sync(rt.device)
        t0 = time.perf_counter()
        with rt.autocast():
            thunks = m.compute(x, y, torch.arange(x.shape[0]))
            sync(rt.device)
            t1 = time.perf_counter()
            total, _ = m.combine(thunks)
        sync(rt.device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total.backward()
        sync(rt.device)
        t3 = time.perf_counter()
        opt.step()
        sync(rt.device)
        t4 = time.perf_counter()
        for k, a, b in (("forward", t0, t1), ("loss", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4)):
            acc[k].append((b - a) * 1e3)
    return {k: median(v) for k, v in acc.items()}
