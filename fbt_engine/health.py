"""Live health warnings: cheap checks on the event stream that say early when a run goes wrong.

`HealthMonitor` is an `Emitter` listener (rank 0 only, like `loggers.EpochRows`). It reads the
events every run emits anyway: `started` (batch size, world size, warm-up), `step` (loss terms and
the step's `signals`: `grad_norm`, and for fbt `fused_spread` and `tau/<path>`, which the trainer
reads from the device together with the loss, so no check costs a sync of its own) and `eval`.

Every check is one row of `RULES`: which event it looks at, whether it waits for the warm-up, how
it compares, and a function that reads the signals (name, value, threshold) off the monitor. A
tripped rule sends one `warning` event (signal, value, threshold, message, hint), which log.txt and
the TUI show. A (phase, rule, signal) is not warned about again until a check finds it healthy,
and at most MAX_REPEATS times per phase, so a sick run never floods its log. docs/health.md lists
the rules, their default thresholds (`[health]` in the preset) and why those thresholds.

Stdlib only: the rules are arithmetic on the events' numbers (tests feed synthetic events).
"""

from __future__ import annotations

import math
import operator
import statistics
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import NCE_TAU_RANGE, HealthConfig
from .events import Event, read_events
from .protocol import HealthWarning

MAX_REPEATS = 3  # warnings per (phase, rule, signal): a spike that keeps coming back is said 3 times
GRAD_WINDOW = 20  # logged steps whose median gradient norm a new one is compared with
GRAD_MIN_HISTORY = 5  # logged steps needed before a spike can be told from the start's noise


@dataclass(frozen=True)
class Reading:
    """One signal a rule measured: its value and the threshold it is compared with."""

    signal: str
    value: float
    threshold: float
    detail: str = ""  # extra words for the message (e.g. the losses a rise went through)


@dataclass(frozen=True)
class Rule:
    """One health check (a row of RULES)."""

    name: str
    on: str  # the event type it looks at: `step` or `eval`
    waits: str  # "": from the start; "warmup": after the warm-up; "settle": also after `settle` of the phase
    trips: Callable[[float, float], bool]  # (value, threshold) -> unhealthy
    word: str  # how value relates to threshold when it trips: "below", "above", ...
    what: str  # what it means, for the message
    hint: str
    measure: Callable[["HealthMonitor", Event], Iterable[Reading]]


# --- the measurements (each reads what the monitor gathered; none changes it) --------------------

def _signals(ev: Event) -> dict[str, float]:
    raw = ev.get("signals")
    return {str(k): v for k, v in raw.items() if _finite(v)} if isinstance(raw, dict) else {}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _spread(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    value = _signals(ev).get("fused_spread")
    if value is not None and m.cfg.spread_min > 0:
        yield Reading("fused_spread", value, m.cfg.spread_min)


def _nce_chance(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    n = m.negatives()
    if n < 2:
        return
    chance = math.log(n)
    for term, value in m.epoch_means.items():
        if term.startswith("nce/"):
            yield Reading(term, value, m.cfg.nce_chance * chance, f"chance is ln({n}) = {chance:.3g}")


def _taus(ev: Event) -> dict[str, float]:
    return {k: v for k, v in _signals(ev).items() if k.startswith("tau/")}


def _tau_low(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    for name, value in _taus(ev).items():
        yield Reading(name, value, NCE_TAU_RANGE[0] * (1 + m.cfg.tau_margin))


def _tau_high(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    for name, value in _taus(ev).items():
        yield Reading(name, value, NCE_TAU_RANGE[1] * (1 - m.cfg.tau_margin))


def _fused_gap(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    fused, teacher = ev.get("fused_top1"), ev.get("teacher_top1")
    if _finite(fused) and _finite(teacher):
        yield Reading("fused_top1", fused, teacher - m.cfg.fused_gap, f"teacher {teacher:.2f}")


def _below_scratch(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    student, epoch = ev.get("student_top1"), ev.get("epoch")
    scratch = m.baseline_curve().get(epoch) if _finite(student) and ev.get("phase") == "distill" else None
    if scratch is not None:
        yield Reading("student_top1", student, scratch - m.cfg.scratch_margin,
                      f"the scratch run has {scratch:.2f} at epoch {epoch}")


def _rising(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    start = m.warmup_epochs()
    for term, points in m.term_history[ev.get("phase")].items():
        values = [v for e, v in points if e >= max(start, 1)]
        rises = 0
        while rises < len(values) - 1 and values[-1 - rises] > values[-2 - rises]:
            rises += 1
        if values:
            yield Reading(term, rises, m.cfg.rising_evals,
                          f"{values[-1 - rises]:.4g} -> {values[-1]:.4g}" if rises else "")


def _grad_spike(m: "HealthMonitor", ev: Event) -> Iterable[Reading]:
    value = _signals(ev).get("grad_norm")
    history = list(m.grad_norms[ev.get("phase")])[:-1]  # the monitor appended this step's already
    if value is not None and len(history) >= GRAD_MIN_HISTORY:
        median = statistics.median(history)
        if median > 0:
            yield Reading("grad_norm", value, m.cfg.grad_spike * median,
                          f"{value / median:.1f} times the median {median:.3g} of the last {len(history)}")


# The one table of health checks. Thresholds come from `[health]` (config.HealthConfig).
RULES: tuple[Rule, ...] = (
    Rule("collapse", "step", "", operator.lt, "below",
         "the fused features collapse, F maps the whole batch to nearly one point",
         "check the L2G normalisation (a signed LayerNorm output fed to a frozen CNN stage collapses F), keep "
         "the t->f path in loss.paths, or lower train.lr", _spread),
    Rule("nce_chance", "eval", "warmup", operator.gt, "above",
         "InfoNCE is stuck near chance, the heads cannot tell the batch's images apart",
         "look for a collapsed side (fused_spread), a temperature on its bound, or too high a train.lr; more "
         "images a batch give more negatives", _nce_chance),
    Rule("tau_floor", "step", "warmup", operator.le, "at or below",
         "the learned InfoNCE temperature sits on its lower clamp bound",
         "the contrast saturates: lower train.lr or loss.nce, or raise loss.nce_tau_init", _tau_low),
    Rule("tau_ceiling", "step", "warmup", operator.ge, "at or above",
         "the learned InfoNCE temperature sits on its upper clamp bound",
         "the features carry no contrast to sharpen: look for a collapse (fused_spread) or too high a train.lr",
         _tau_high),
    Rule("fused_gap", "eval", "settle", operator.lt, "below",
         "the fused model's top-1 is far below the teacher's (F is not anchored to T)",
         "keep the t->f path and its weights (loss.ofa, loss.nce), try fusion.split or fusion.mixer, or check "
         "the teacher's own accuracy", _fused_gap),
    Rule("below_scratch", "eval", "settle", operator.lt, "below",
         "the student is below the scratch run of the same sweep at the same epoch",
         "distillation hurts here: compare the loss weights (loss.ce against the rest), the teacher's accuracy "
         "and train.lr", _below_scratch),
    Rule("loss_rising", "eval", "warmup", operator.ge, "at",
         "a loss term rose at several evaluations in a row",
         "lower train.lr, enable train.grad_clip, or lower this term's weight in loss.weights", _rising),
    Rule("grad_spike", "step", "", operator.gt, "above",
         "the gradient norm spiked far above its recent values",
         "enable train.grad_clip (5.0 is the paper's), lower train.lr or lengthen train.warmup_epochs", _grad_spike),
)


class HealthMonitor:
    """The Emitter listener: gathers what the rules need from the events and sends `warning`s."""

    def __init__(self, cfg: HealthConfig, send: Callable[[HealthWarning], Any]) -> None:
        self.cfg, self.send = cfg, send
        self.config: dict[str, Any] = {}  # the run's resolved preset, from `started`
        self.world_size = 1
        self.phase = ""
        self.phase_epochs = 0
        self.epoch_means: dict[str, float] = {}  # the evaluated epoch's mean loss terms
        self._sums: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.term_history: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
        self.grad_norms: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=GRAD_WINDOW + 1))
        self._active: set[tuple[str, str, str]] = set()  # warned and not yet recovered
        self._count: dict[tuple[str, str, str], int] = defaultdict(int)
        self._baseline: tuple[Any, dict[int, float]] = (None, {})

    def __call__(self, ev: Event) -> None:
        if ev.type == "started":
            self.config = ev.get("config") if isinstance(ev.get("config"), dict) else {}
            self.world_size = int(ev.get("world_size") or 1)
        elif ev.type == "phase":
            self.phase = str(ev.get("phase") or "")
            self.phase_epochs = int(ev.get("epochs") or 0)
        elif ev.type == "step":
            self._observe_step(ev)
            self._check(ev)
        elif ev.type == "eval":
            self._observe_eval(ev)
            self._check(ev)

    # --- what the rules read --------------------------------------------------------------------
    def _observe_step(self, ev: Event) -> None:
        phase = str(ev.get("phase") or self.phase)
        sums = self._sums[(phase, ev.get("epoch"))]
        for name, value in {"loss": ev.get("loss"), **(ev.get("terms") or {})}.items():
            if _finite(value):
                sums[name].append(float(value))
        grad = _signals(ev).get("grad_norm")
        if grad is not None:
            self.grad_norms[phase].append(grad)

    def _observe_eval(self, ev: Event) -> None:
        phase, epoch = str(ev.get("phase") or self.phase), ev.get("epoch")
        sums = self._sums.pop((phase, epoch), {})
        self.epoch_means = {name: sum(v) / len(v) for name, v in sums.items() if v}
        history = self.term_history[phase]
        for name, mean in self.epoch_means.items():
            # a resumed run repeats epochs: what it logged past its checkpoint is superseded
            history[name] = [p for p in history.get(name, []) if p[0] < epoch][-self.cfg.rising_evals - 1:]
            history[name].append((epoch, mean))

    def negatives(self) -> int:
        """Candidates each InfoNCE row picks its positive from: the global batch."""
        train = self.config.get("train") if isinstance(self.config.get("train"), dict) else {}
        return int(train.get("batch_size") or 0) * self.world_size

    def warmup_epochs(self) -> int:
        """Epochs the after-warm-up rules wait: [health]'s, and at least the phase's own LR warm-up."""
        own = self.config.get("train") if self.phase != "teacher" else (self.config.get("teacher") or {}).get("train")
        lr_warmup = int((own or {}).get("warmup_epochs") or 0) if isinstance(own, dict) else 0
        return max(self.cfg.warmup_epochs, lr_warmup)

    def wait_epochs(self, waits: str) -> int:
        """Epochs a rule waits: none, the warm-up, or for the accuracy comparisons also `health.settle`
        of the phase's epochs (F and the student need time to catch up; on a 300-epoch run, 30)."""
        if not waits:
            return 0
        warmup = self.warmup_epochs()
        return max(warmup, math.ceil(self.cfg.settle * self.phase_epochs)) if waits == "settle" else warmup

    def baseline_curve(self) -> dict[int, float]:
        """epoch -> student top-1 of the scratch run named by `health.baseline` ({} without one).

        Read again whenever its events.jsonl changed (in a sweep it may still be running)."""
        if not self.cfg.baseline:
            return {}
        path = Path(self.cfg.baseline)
        path = path / "events.jsonl" if path.is_dir() else path
        try:
            stat = path.stat()
        except OSError:
            return {}
        key = (stat.st_mtime_ns, stat.st_size)
        if self._baseline[0] != key:
            try:
                items = read_events(path)
            except Exception:  # noqa: BLE001 - a broken baseline never stops the run
                items = []
            curve = {e.get("epoch"): float(e.get("student_top1")) for e in items
                     if isinstance(e, Event) and e.type == "eval" and e.get("phase") == "distill"
                     and _finite(e.get("student_top1"))}
            self._baseline = (key, curve)
        return self._baseline[1]

    # --- the checks -----------------------------------------------------------------------------
    def _check(self, ev: Event) -> None:
        phase, epoch = str(ev.get("phase") or self.phase), int(ev.get("epoch") or 0)
        for rule in RULES:
            if rule.on != ev.type or epoch <= self.wait_epochs(rule.waits):
                continue
            for r in rule.measure(self, ev):
                key = (phase, rule.name, r.signal)
                if not rule.trips(r.value, r.threshold):
                    self._active.discard(key)  # recovered: a relapse is warned again
                elif key not in self._active and self._count[key] < MAX_REPEATS:
                    self._active.add(key)
                    self._count[key] += 1
                    self._warn(rule, r, phase, epoch, ev.get("step") if ev.type == "step" else None)

    def _warn(self, rule: Rule, r: Reading, phase: str, epoch: int, step: int | None) -> None:
        detail = f" ({r.detail})" if r.detail else ""
        message = f"{r.signal} = {r.value:.4g}, {rule.word} the threshold {r.threshold:.4g}{detail}: {rule.what}"
        self.send(HealthWarning(signal=r.signal, rule=rule.name, value=round(float(r.value), 6),
                                threshold=round(float(r.threshold), 6), phase=phase, epoch=epoch, step=step,
                                message=message, hint=rule.hint))


def build_monitor(cfg: HealthConfig, send: Callable[[HealthWarning], Any]) -> HealthMonitor | None:
    """The run's monitor, or None with `[health] enabled = false`."""
    return HealthMonitor(cfg, send) if cfg.enabled else None
