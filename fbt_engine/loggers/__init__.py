"""Metrics where users look for them: events in, one row per evaluated epoch out, to each sink.

    runs/<name>/summary.csv      always (timm train.py style: one row per evaluated epoch)
    runs/<name>/tensorboard/     backend "tensorboard": one TensorBoard run per phase (teacher/, distill/)
    runs/<name>/wandb/           backend "wandb": W&B's local files (online: also the W&B server)
    runs/<name>/mlflow.db        backend "mlflow" with no log.mlflow_uri / $MLFLOW_TRACKING_URI
    runs/<name>/loggers.json     the W&B run id / MLflow run id / trackio run name, so that a resumed
                                 run continues the same tracker run instead of starting another

Choose them with `[log] backends = ["tensorboard", "wandb", "trackio", "mlflow"]` (config.py's
`LogConfig`; the options: project, wandb_mode, wandb_entity, mlflow_uri). Each needs its extra,
e.g. `pip install 'fbt-workbench[wandb]'` (all four: `[loggers]`); preflight refuses a chosen
backend whose package does not import, before the run folder exists. trackio keeps its own store
($TRACKIO_DIR, default ~/.cache/huggingface/trackio; `trackio show`).

`EpochRows` listens to the run's events (it is an `Emitter` listener, so only rank 0 sees them):
`step` events are averaged into the epoch's train loss and loss terms, and each `eval` event closes
the row. Each sink is one small class with `row(row)`, optional `step(event)` and `end(event)` (the
run's `finished`/`failed` event), and `close()`. Tracker sinks (trackers.py) name scalars as
TensorBoard's tags with the phase in front: `<phase>/train/<term>` per logged step,
`<phase>/epoch/<column>` per evaluated epoch, against the phase's global step. A tracker package is
imported only when its backend is chosen (the CLI starts fast).

A sink never stops a run: a sink that cannot start, or a failed write, is reported once and the run
goes on (summary.csv is rewritten whole each epoch, so the next epoch repairs it).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Protocol

from ..events import Event

SUMMARY = "summary.csv"
TENSORBOARD = "tensorboard"
# Fixed leading columns; loss terms (which depend on the method) follow train_loss in the order seen.
HEAD = ("phase", "epoch", "train_loss")
TAIL = ("eval_top1", "eval_top5", "fused_top1", "teacher_top1", "ema_top1", "lr", "time")


class Sink(Protocol):
    """What EpochRows calls; `step(event)` and `end(event)` are optional."""

    def row(self, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _number(value: Any) -> Any:
    return "" if value is None else value


def step_scalars(ev: Event) -> dict[str, float]:
    """A `step` event's numbers: loss, lr and each loss term."""
    values = {"loss": ev.get("loss"), "lr": ev.get("lr"), **(ev.get("terms") or {})}
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def row_scalars(row: dict[str, Any]) -> dict[str, float]:
    """An epoch row's numbers (the epoch included; its wall time is not a metric)."""
    return {k: v for k, v in row.items()
            if k not in ("phase", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class CsvSink:
    """summary.csv, rewritten whole (atomically) per row; a resumed run keeps the rows written before
    its checkpoint and replaces the epochs it repeats, so no epoch appears twice."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / SUMMARY
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        try:  # a resumed run: keep what was logged before (a damaged file is started afresh)
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = [dict(r) for r in reader if str(r.get("epoch") or "").isdigit()]
        except (OSError, UnicodeDecodeError, csv.Error):
            self.rows, self.columns = [], []

    def row(self, row: dict[str, Any]) -> None:
        from ..checkpoint import write_bytes_atomic
        phase, epoch = row["phase"], int(row["epoch"])
        # an epoch repeated after a resume (and anything logged after it) is superseded
        self.rows = [r for r in self.rows if r.get("phase") != phase or int(r.get("epoch") or 0) < epoch]
        self.rows.append(row)
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        write_bytes_atomic(self.render().encode("utf-8"), self.path)

    def render(self) -> str:
        terms = [c for c in self.columns if c not in HEAD and c not in TAIL]
        order = [*HEAD, *terms, *TAIL]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=order, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _number(r.get(k)) for k in order})
        return buf.getvalue()

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars under runs/<name>/tensorboard/<phase>/ (one TensorBoard run per phase), x = global step:
    `train/<term>` (loss, lr, each loss term) per logged step, `epoch/<column>` per evaluated epoch.

    Each phase's writer starts with purge_step = the first step this process logs, so after a resume
    TensorBoard drops what a killed process had logged past its last checkpoint (no doubled curves)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self._make, self.root = SummaryWriter, run_dir / TENSORBOARD
        self.writers: dict[str, Any] = {}
        self.last_step: dict[str, int] = {}

    def _writer(self, phase: str, step: int) -> Any:
        if phase not in self.writers:
            self.writers[phase] = self._make(log_dir=str(self.root / phase), purge_step=step)
        return self.writers[phase]

    def step(self, ev: Event) -> None:
        phase, step = str(ev.get("phase", "distill")), int(ev.get("step", 0))
        self.last_step[phase] = step
        writer = self._writer(phase, step)
        for name, value in step_scalars(ev).items():
            writer.add_scalar(f"train/{name}", value, step)

    def row(self, row: dict[str, Any]) -> None:
        phase = str(row["phase"])
        step = self.last_step.get(phase, int(row["epoch"]))
        writer = self._writer(phase, step)
        for name, value in row_scalars(row).items():
            writer.add_scalar(f"epoch/{name}", value, step)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class EpochRows:
    """The Emitter listener: turns `step` + `eval` events into one row per evaluated epoch."""

    def __init__(self, sinks: list[Any], note: Callable[[str], None] | None = None) -> None:
        self.sinks, self.note = sinks, note
        self._steps: list[Event] = []
        self._failed: set[str] = set()

    def __call__(self, ev: Event) -> None:
        if ev.type == "step":
            self._steps.append(ev)
            self._each("step", ev)
        elif ev.type == "eval":
            self._each("row", self.make_row(ev))
            self._steps = []
        elif ev.type in ("finished", "failed"):
            self._each("end", ev)

    def make_row(self, ev: Event) -> dict[str, Any]:
        steps = [s for s in self._steps if s.get("phase") == ev.get("phase") and s.get("epoch") == ev.get("epoch")]
        row: dict[str, Any] = {"phase": ev.get("phase"), "epoch": ev.get("epoch"), "train_loss": _mean(steps, "loss")}
        names = [n for s in steps for n in (s.get("terms") or {})]
        for name in dict.fromkeys(names):
            row[name] = _mean([s for s in steps if name in (s.get("terms") or {})], name, terms=True)
        student = ev.get("student_top1")
        row.update(eval_top1=student if student is not None else ev.get("teacher_top1"),
                   eval_top5=ev.get("student_top5"), fused_top1=ev.get("fused_top1"),
                   teacher_top1=ev.get("teacher_top1"), ema_top1=ev.get("ema_top1"),
                   lr=steps[-1].get("lr") if steps else None, time=round(ev.t, 1))
        return row

    def _each(self, method: str, arg: Any) -> None:
        for sink in self.sinks:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(arg)
            except Exception as exc:  # noqa: BLE001 - a metrics sink never stops training
                name = type(sink).__name__
                if name not in self._failed and self.note is not None:
                    self.note(f"{name}: could not write metrics ({_first_line(exc)}); training goes on")
                self._failed.add(name)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                pass


def _mean(steps: list[Event], key: str, terms: bool = False) -> float | None:
    values = [(s.get("terms") or {}).get(key) if terms else s.get(key) for s in steps]
    values = [v for v in values if isinstance(v, (int, float))]
    return round(sum(values) / len(values), 6) if values else None


def build_loggers(cfg: Any, run_dir: Path, note: Callable[[str], None] | None = None) -> EpochRows:
    """The sinks a run's `[log]` table asks for (summary.csv always). Rank 0 only. A tracker that
    cannot start (W&B not logged in, a server that does not answer) is noted and left out."""
    from .trackers import MlflowSink, TrackioSink, WandbSink
    makers: dict[str, Callable[[], Any]] = {
        "tensorboard": lambda: TensorBoardSink(run_dir), "wandb": lambda: WandbSink(cfg, run_dir),
        "trackio": lambda: TrackioSink(cfg, run_dir), "mlflow": lambda: MlflowSink(cfg, run_dir)}
    sinks: list[Any] = [CsvSink(run_dir)]
    for backend in cfg.log.chosen():
        try:
            sinks.append(makers[backend]())
        except Exception as exc:  # noqa: BLE001 - a metrics sink never stops training
            if note is not None:
                note(f"{backend}: logging could not start ({_first_line(exc)}); training goes on without it")
    return EpochRows(sinks, note)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
