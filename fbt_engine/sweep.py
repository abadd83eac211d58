"""Sweeps and ablations: one preset, a grid of overrides x seeds, one run per cell, one table.

    runs/<sweep>/sweep.json          the manifest: base config (resolved), grid, seeds, cells; written once
    runs/<sweep>/<cell>/             each cell's ordinary run folder (resume, eval, export work on it)
    runs/<sweep>/teachers/           teachers the cells share (trained once, by the first cell needing it)
    runs/<sweep>/logs/<cell>.txt     the cell process's stderr when cells run side by side (--jobs > 1)
    runs/<sweep>/sweep.log           what the sweep printed (kept when the terminal closes)
    runs/<sweep>/.lock               held by the process driving the sweep (its pid inside)
    runs/<sweep>/results.csv, .json  one row per cell, and mean +- std over seeds per grid point

A cell is a child `fbt-engine run` (or `resume`) process in its own session: a crash in one cell is
that cell's failure, and Ctrl-C reaches the cells only through the sweep, which forwards it (first:
every running cell checkpoints and stops, no new cell starts; second: abort). The state of a cell is
read from its run folder's events (the one source of truth), so `fbt-engine resume runs/<sweep>`
skips completed cells, resumes stopped ones and starts the rest.

Order: scratch cells first (their curves are the other cells' `health.baseline`), then one cell per
teacher that still has to be trained, then the rest once their teacher file exists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as C
from .errors import ConfigError, TrainingError

MANIFEST = "sweep.json"
MANIFEST_VERSION = 1
SEED_KEY = "seed"
VARIANT = "variant"  # the table column of one-at-a-time ablations (--vary)


# --- the plan: axes, cells (pure data) ----------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    """One `--grid KEY=V1,V2` option: the key and each value as written (parsed as TOML when applied)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: tuple[tuple[str, str], ...]  # (key, value text) in grid order, the variant's, the seed last
    variant: str = ""  # with --vary: "base" or "KEY=VALUE" (one change from the base); "" without --vary

    @property
    def point(self) -> tuple[tuple[str, str], ...]:
        """The grid point without the seed: cells that differ only by seed are averaged together."""
        skip = {SEED_KEY, self.variant.partition("=")[0]} if self.variant else {SEED_KEY}
        grid = tuple(o for o in self.overrides if o[0] not in skip)
        return grid + ((VARIANT, self.variant),) if self.variant else grid

    @property
    def seed(self) -> int:
        return int(dict(self.overrides)[SEED_KEY])


def split_values(text: str) -> list[str]:
    """`a,b,[1,2],"x,y"` -> ['a', 'b', '[1,2]', '"x,y"']: commas inside brackets or quotes stay."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def parse_grid(specs: list[str], flag: str = "--grid") -> list[Axis]:
    axes: list[Axis] = []
    for spec in specs:
        key, sep, rest = spec.partition("=")
        key = key.strip()
        values = split_values(rest) if sep else []
        if not key or not sep or not all(values):
            raise ConfigError(f"{flag} {spec!r} is not KEY=V1,V2,...",
                              "e.g. --grid method=kd,fbt --grid fusion.split=1,2,3 --grid loss.feature=infonce,mse")
        if key == SEED_KEY:
            raise ConfigError(f"{flag} seed=... is what --seeds is for", "write --seeds 0,1,2")
        if any(a.key == key for a in axes):
            raise ConfigError(f"{flag} names {key!r} twice", "give each key once, with all its values")
        if len(set(values)) != len(values):
            raise ConfigError(f"{flag} {key}= repeats a value", "give each value once")
        axes.append(Axis(key, tuple(values)))
    return axes


def parse_seeds(text: str, default: int) -> list[int]:
    if not text.strip():
        return [default]
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a list of integers", "e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed", "give each seed once")
    return seeds


def _short(key: str, value: str) -> str:
    """A folder-name piece for one override: `fbt` for method, `split2` for fusion.split=2."""
    clean = "".join(c if c.isalnum() or c in "._-" else "" for c in value.replace("->", "to"))
    return clean if key == "method" else key.rsplit(".", 1)[-1].replace("_", "") + clean


def plan_cells(axes: list[Axis], seeds: list[int], vary: list[Axis] | None = None) -> list[Cell]:
    """The cartesian product in grid order (the first axis varies slowest), then (with `vary`) the
    base and each one-at-a-time change, seeds innermost."""
    variants: list[tuple[str, tuple[tuple[str, str], ...]]] = [("", ())]
    if vary:
        variants = [("base", ())] + [(f"{a.key}={v}", ((a.key, v),)) for a in vary for v in a.values]
    cells, names = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        for label, change in variants:
            for seed in seeds:
                overrides = (*zip((a.key for a in axes), combo), *change, (SEED_KEY, str(seed)))
                name = "_".join([_short(k, v) for k, v in overrides[:-1]]
                                + (["base"] if label == "base" else []) + [f"s{seed}"])[:90]
                if name in names or not name[0].isalnum():
                    name = f"cell{len(cells):03d}-{name}"[:100]
                names.add(name)
                cells.append(Cell(name, overrides, label))
    return cells


def cell_config(base: C.RunConfig, cell: Cell, source: str = "--grid") -> C.RunConfig:
    """The base config with the cell's overrides, validated (a bad grid value fails before any run)."""
    data = C.apply_overrides(C.to_dict(base), [f"{k}={v}" for k, v in cell.overrides])
    data["name"] = cell.name
    return C.from_dict(data, source=f"{source} cell {cell.name}")


def _teacher_key(cfg: C.RunConfig) -> str:
    """Cells whose teacher would be trained identically share one file (the seed is not part of it:
    the first cell's seed trains it, as the paper distils every student from one teacher)."""
    d = C.to_dict(cfg)
    parts = {"teacher": {k: v for k, v in d["teacher"].items() if k != "checkpoint"},
             "data": d["data"], "aug": d["aug"], "train": {k: d["train"].get(k) for k in ("amp", "channels_last")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def needs_teacher(cfg: C.RunConfig) -> bool:
    return cfg.method != "scratch" and bool(cfg.teacher.model)


def resolve_cells(base: C.RunConfig, cells: list[Cell], sweep_dir: Path, threads: int) -> dict[str, C.RunConfig]:
    """Each cell's final config: shared teacher file, scratch baseline for the health checks, threads."""
    configs = {c.name: cell_config(base, c) for c in cells}
    for cell in cells:
        cfg = configs[cell.name]
        if needs_teacher(cfg) and not cfg.teacher.checkpoint and cfg.teacher.train is not None:
            path = sweep_dir / "teachers" / f"{cfg.teacher.model}-{_teacher_key(cfg)}.safetensors"
            cfg = C.replace(cfg, teacher=C.replace(cfg.teacher, checkpoint=str(path)))
        if threads and cfg.train.threads == 0:
            cfg = C.replace(cfg, train=C.replace(cfg.train, threads=threads))
        scratch = _scratch_twin(cell, cells) if cfg.method != "scratch" else None
        if scratch is not None and hasattr(cfg, "health") and not cfg.health.baseline:
            cfg = C.replace(cfg, health=C.replace(cfg.health, baseline=str(sweep_dir / scratch.name)))
        configs[cell.name] = cfg
    return configs


def _scratch_twin(cell: Cell, cells: list[Cell]) -> Cell | None:
    """The scratch cell at the same grid point and seed (method the only difference), if the grid has one."""
    want = tuple((k, "scratch" if k == "method" else v) for k, v in cell.overrides)
    return next((c for c in cells if c.overrides == want and c is not cell), None)


# --- the manifest ------------------------------------------------------------------------------

@dataclass
class Sweep:
    dir: Path
    source: str
    base: C.RunConfig
    axes: list[Axis]
    seeds: list[int]
    cells: list[Cell]
    jobs: int = 1
    vary: list[Axis] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The table's grid-point columns."""
        return [a.key for a in self.axes] + ([VARIANT] if self.vary else [])

    def write(self) -> None:
        from .checkpoint import write_bytes_atomic
        data = {"version": MANIFEST_VERSION, "source": self.source, "base": C.to_dict(self.base),
                "grid": [{"key": a.key, "values": list(a.values)} for a in self.axes], "seeds": self.seeds,
                "vary": [{"key": a.key, "values": list(a.values)} for a in self.vary],
                "jobs": self.jobs, "cells": [{"name": c.name, "overrides": [list(o) for o in c.overrides],
                                              "variant": c.variant} for c in self.cells]}
        write_bytes_atomic((json.dumps(data, indent=1) + "\n").encode(), self.dir / MANIFEST)

    @classmethod
    def read(cls, folder: str | Path) -> "Sweep":
        folder = Path(folder)
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"manifest version {data.get('version')!r}")
            return cls(folder, data["source"], C.from_dict(data["base"], source=str(folder / MANIFEST)),
                       [Axis(a["key"], tuple(a["values"])) for a in data["grid"]], list(data["seeds"]),
                       [Cell(c["name"], tuple((k, v) for k, v in c["overrides"]), c.get("variant", ""))
                        for c in data["cells"]],
                       int(data.get("jobs", 1)), [Axis(a["key"], tuple(a["values"])) for a in data.get("vary", [])])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{str(folder / MANIFEST)!r} is not a readable sweep manifest ({exc})",
                                "give a folder made by `fbt-engine sweep`") from None


def is_sweep(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


# --- cell state, read from the run folders ------------------------------------------------------

@dataclass
class CellResult:
    cell: Cell
    status: str  # pending | running | completed | stopped | failed
    student_top1: float | None = None  # best
    student_last: float | None = None
    fused_top1: float | None = None
    teacher_top1: float | None = None
    time_s: float | None = None
    epoch: int | None = None
    message: str = ""


def cell_result(sweep_dir: Path, cell: Cell) -> CellResult:
    from .events import Event, read_events
    path = sweep_dir / cell.name / "events.jsonl"
    if not path.is_file():
        return CellResult(cell, "pending")
    evs = [e for e in read_events(path) if isinstance(e, Event)]
    end = next((e for e in reversed(evs) if e.type in ("finished", "failed", "started")), None)
    if end is None or end.type == "started":
        return CellResult(cell, "stopped")  # started, never ended: killed (resumable)
    if end.type == "failed":
        return CellResult(cell, "failed", message=str(end.get("message", "")))
    best, last = end.get("best_eval") or {}, end.get("last_eval") or {}
    status = "completed" if end.get("reason") == "completed" else "stopped"
    return CellResult(cell, status, best.get("student_top1"), last.get("student_top1"), best.get("fused_top1"),
                      best.get("teacher_top1") or last.get("teacher_top1"), end.get("duration_s"), best.get("epoch"))


# --- running -----------------------------------------------------------------------------------

ENGINE = [sys.executable, "-m", "fbt_engine.cli"]


@dataclass
class _Slot:
    cell: Cell
    proc: subprocess.Popen
    started: float
    log: Any = None
    gpu: int | None = None


@dataclass
class Runner:
    """Runs the cells, at most `jobs` at a time, and owns the sweep's signals."""

    sweep: Sweep
    configs: dict[str, C.RunConfig]
    say: Callable[[str], None]
    gpus: int = 0
    running: list[_Slot] = field(default_factory=list)
    stopping: int = 0  # signals received: 1 graceful, 2 abort
    hung_up: bool = False
    codes: dict[str, int] = field(default_factory=dict)

    def install(self) -> dict[int, Any]:
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        return previous

    def _hangup(self, signum: int, frame: Any) -> None:
        """The terminal closed: the sweep and its cells go on, none writes to the terminal any more
        (the cells, in their own sessions, are told with the SIGHUP they would have had)."""
        self.hung_up = True
        self.say = _to_log(self.sweep)
        for slot in self.running:
            try:
                slot.proc.send_signal(signal.SIGHUP)
            except OSError:
                pass

    def _signal(self, signum: int, frame: Any) -> None:
        self.stopping = min(self.stopping + 1, 2)
        forward = signal.SIGINT if self.stopping == 2 else signum  # a second signal aborts the cells
        for slot in self.running:
            try:
                slot.proc.send_signal(forward)
            except OSError:
                pass
        self.say("stopping: the running cells checkpoint and stop, no new cell starts (Ctrl-C again: abort)"
                 if self.stopping == 1 else "aborting the running cells")

    def run(self) -> None:
        order = self._order()
        while (order or self.running) and not (self.stopping and not self.running):
            self._reap()
            if not self.stopping:
                while order and len(self.running) < self.sweep.jobs:
                    nxt = self._next_ready(order)
                    if nxt is None:
                        break
                    order.remove(nxt)
                    self._launch(nxt)
            time.sleep(0.2)
        self._reap(wait=True)

    def _order(self) -> list[Cell]:
        todo = [c for c in self.sweep.cells if cell_result(self.sweep.dir, c).status != "completed"]
        done = len(self.sweep.cells) - len(todo)
        if done:
            self.say(f"{done} of {len(self.sweep.cells)} cells already completed; {len(todo)} to go")
        return sorted(todo, key=lambda c: 0 if self.configs[c.name].method == "scratch" else 1)

    def _teacher_file(self, cell: Cell) -> Path | None:
        cfg = self.configs[cell.name]
        return Path(cfg.teacher.checkpoint) if needs_teacher(cfg) and cfg.teacher.checkpoint and \
            cfg.teacher.train is not None else None

    def _next_ready(self, order: list[Cell]) -> Cell | None:
        """The first cell whose teacher exists or that is the first to need it (nobody running trains it)."""
        busy = {self._teacher_file(s.cell) for s in self.running} - {None}
        for cell in order:
            teacher = self._teacher_file(cell)
            if teacher is None or teacher.is_file() or teacher not in busy:
                return cell
        return None

    def _launch(self, cell: Cell) -> None:
        folder = self.sweep.dir / cell.name
        if (folder / "config.toml").is_file():
            args = ["resume", str(folder)]
        else:
            cfg_path = self.sweep.dir / "cells" / f"{cell.name}.toml"
            cfg_path.parent.mkdir(exist_ok=True)
            cfg_path.write_text(C.dumps(self.configs[cell.name]), encoding="utf-8")
            args = ["run", str(cfg_path), "--name", cell.name, "--runs-dir", str(self.sweep.dir)]
        env = dict(os.environ)
        gpu = self._free_gpu() if self.gpus > 1 else None
        if gpu is not None:  # one GPU per side-by-side cell
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log = None
        if self.sweep.jobs > 1 or self.hung_up:  # one cell at a time on a live terminal: its output shows there
            (self.sweep.dir / "logs").mkdir(exist_ok=True)
            log = open(self.sweep.dir / "logs" / f"{cell.name}.txt", "ab")
        proc = subprocess.Popen([*ENGINE, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
        self.running.append(_Slot(cell, proc, time.monotonic(), log, gpu))
        done = sum(1 for c in self.sweep.cells if c.name in self.codes) + len(self.running)
        self.say(f"[{done}/{len(self.sweep.cells)}] {args[0]} {cell.name}"
                 + (f" on GPU {gpu}" if gpu is not None else ""))

    def _free_gpu(self) -> int:
        used = {s.gpu for s in self.running}
        return next((g for g in range(self.gpus) if g not in used), 0)

    def _reap(self, wait: bool = False) -> None:
        for slot in list(self.running):
            code = slot.proc.wait() if wait else slot.proc.poll()
            if code is None:
                continue
            self.running.remove(slot)
            if slot.log is not None:
                slot.log.close()
            self.codes[slot.cell.name] = code
            r = cell_result(self.sweep.dir, slot.cell)
            took = time.monotonic() - slot.started
            if r.status == "completed":
                self.say(f"  {slot.cell.name}: student {_pct(r.student_top1)} (best), fused {_pct(r.fused_top1)}, "
                         f"{took:.0f} s")
            else:
                self.say(f"  {slot.cell.name}: {r.status} (exit {code}){': ' + r.message if r.message else ''}"
                         + self._log_tail(slot.cell))

    def _log_tail(self, cell: Cell) -> str:
        path = self.sweep.dir / "logs" / f"{cell.name}.txt"
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        except OSError:
            return ""
        return "".join(f"\n    {ln}" for ln in lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _to_log(sweep: Sweep) -> Callable[[str], None]:
    def say(line: str) -> None:
        try:
            with open(sweep.dir / "sweep.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass
    return say


# --- results -----------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(sweep: Sweep) -> tuple[list[CellResult], list[dict[str, Any]]]:
    """Per-cell results and, per grid point, mean +- std over its completed seeds."""
    results = [cell_result(sweep.dir, c) for c in sweep.cells]
    groups: dict[tuple, list[CellResult]] = {}
    for r in results:
        groups.setdefault(r.cell.point, []).append(r)
    rows = []
    for point, rs in groups.items():
        ok = [r for r in rs if r.status == "completed"]
        row: dict[str, Any] = dict(point)
        for name, get in (("student_top1", lambda r: r.student_top1), ("fused_top1", lambda r: r.fused_top1),
                          ("time_s", lambda r: r.time_s)):
            mean, std = _mean_std([v for v in map(get, ok) if v is not None])
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
        row.update(seeds=len(rs), completed=len(ok),
                   teacher_top1=next((r.teacher_top1 for r in ok if r.teacher_top1 is not None), None))
        rows.append(row)
    _vs_scratch(rows, [dict(point) for point in groups])
    return results, rows


def _vs_scratch(rows: list[dict[str, Any]], points: list[dict[str, str]]) -> None:
    """`student_vs_scratch`: the mean student top-1 minus the scratch run's at the same grid point
    (method the only difference), when the sweep has one: what a distillation method gained."""
    for row, point in zip(rows, points):
        row["student_vs_scratch"] = None
        if point.get("method", "scratch") == "scratch" or row["student_top1_mean"] is None:
            continue
        want = {**point, "method": "scratch"}
        twin = next((r for r, p in zip(rows, points) if p == want), None)
        if twin is not None and twin["student_top1_mean"] is not None:
            row["student_vs_scratch"] = row["student_top1_mean"] - twin["student_top1_mean"]


def write_results(sweep: Sweep) -> tuple[list[CellResult], list[dict[str, Any]]]:
    from .checkpoint import write_bytes_atomic
    results, groups = aggregate(sweep)
    keys = sweep.columns
    cols = ["cell", *keys, "seed", "status", "student_top1", "student_last_top1", "fused_top1", "teacher_top1",
            "best_epoch", "time_s", "run_dir"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in results:
        o = dict(r.cell.point)
        w.writerow([r.cell.name, *(o[k] for k in keys), r.cell.seed, r.status, *(
            "" if v is None else (round(v, 4) if isinstance(v, float) else v)
            for v in (r.student_top1, r.student_last, r.fused_top1, r.teacher_top1, r.epoch, r.time_s)),
            str(sweep.dir / r.cell.name)])
    write_bytes_atomic(buf.getvalue().encode(), sweep.dir / "results.csv")
    data = {"sweep": str(sweep.dir), "grid": {a.key: list(a.values) for a in sweep.axes}, "seeds": sweep.seeds,
            "vary": {a.key: list(a.values) for a in sweep.vary},
            "cells": [{"cell": r.cell.name, "overrides": dict(r.cell.overrides), "variant": r.cell.variant,
                       "status": r.status,
                       "student_top1": r.student_top1, "student_last_top1": r.student_last, "fused_top1": r.fused_top1,
                       "teacher_top1": r.teacher_top1, "best_epoch": r.epoch, "time_s": r.time_s,
                       "message": r.message} for r in results],
            "groups": groups}
    write_bytes_atomic((json.dumps(data, indent=1) + "\n").encode(), sweep.dir / "results.json")
    return results, groups


def table_text(sweep: Sweep, groups: list[dict[str, Any]], width: int = 160) -> str:
    from rich.console import Console
    from rich.table import Table
    keys = sweep.columns
    n = len(sweep.seeds)
    gains = any(row.get("student_vs_scratch") is not None for row in groups)
    table = Table(*keys, "seeds", f"student top-1{' (mean ± std)' if n > 1 else ''}",
                  *(["vs scratch"] if gains else []), "fused top-1", "teacher top-1",
                  "time", title=f"{sweep.dir.name}: {len(sweep.cells)} runs, same data and budget per grid point")

    def ms(row: dict[str, Any], name: str, fmt: str = "{:.2f}") -> str:
        mean, std = row[f"{name}_mean"], row[f"{name}_std"]
        if mean is None:
            return "-"
        return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))
    for row in groups:
        gain = row.get("student_vs_scratch")
        table.add_row(*(str(row[k]) for k in keys), f"{row['completed']}/{row['seeds']}", ms(row, "student_top1"),
                      *([("-" if gain is None else f"{gain:+.2f}")] if gains else []),
                      ms(row, "fused_top1"), _pct(row["teacher_top1"]), ms(row, "time_s", "{:.0f}s"))
    con = Console(file=io.StringIO(), width=width)
    con.print(table)
    return con.file.getvalue()  # type: ignore[attr-defined]


# --- entry points ------------------------------------------------------------------------------

def _default_threads(jobs: int, gpus: int) -> int:
    """On CPU, side-by-side cells split the cores instead of each taking all of them."""
    if jobs <= 1 or gpus:
        return 0
    return max(1, (os.cpu_count() or 1) // jobs)


def _gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def new_sweep(preset: str, grid: list[str], seeds: str, jobs: int, overrides: list[str], name: str | None,
              runs_dir: str | None, vary: list[str] | None = None) -> Sweep:
    """Plan and check every cell (configs validated, preflight per distinct config), then make the folder."""
    from .run import unique_folder  # one folder-naming rule for runs and sweeps (name, name-2, ...)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be at least 1", "e.g. --jobs 2 runs two cells side by side")
    base = C.load_preset(preset, overrides)
    axes, varied = parse_grid(grid), parse_grid(vary or [], "--vary")
    both = [a.key for a in axes if a.key in {v.key for v in varied}]
    if both:
        raise ConfigError(f"{both[0]!r} is in --grid and in --vary", "give a key to one of them")
    seed_list = parse_seeds(seeds, base.seed)
    cells = plan_cells(axes, seed_list, varied)
    base = C.replace(base, name=name or f"{base.name}-sweep", runs_dir=runs_dir or base.runs_dir)
    C.check_name(base.name, "--name")
    for cell in cells:
        cell_config(base, cell)  # every grid value valid before anything starts
    folder = unique_folder(Path(base.runs_dir), base.name)
    sweep = Sweep(folder, preset, base, axes, seed_list, cells, jobs, varied)
    sweep.write()
    return sweep


def preflight_cells(sweep: Sweep, configs: dict[str, C.RunConfig], say: Callable[[str], None]) -> None:
    """Everything `run` checks before it starts, once per distinct config (seeds share one check)."""
    from .preflight import check
    seen: set[str] = set()
    for cell in sweep.cells:
        cfg = configs[cell.name]
        key = C.config_hash(C.replace(cfg, seed=0))
        if key in seen:
            continue
        seen.add(key)
        check(cfg, source=f"cell {cell.name}")
    say(f"checked {len(seen)} distinct configuration(s) of {len(sweep.cells)} cells")


def _lock(folder: Path) -> Any:
    """One process drives a sweep: its pid is in `.lock` for as long as it runs (the TUI reads it),
    and a second `fbt-engine resume` of the same sweep is refused instead of doubling every cell."""
    from .locks import FileLock
    lock = FileLock(folder / ".lock")
    if not lock.try_acquire():
        raise TrainingError(f"sweep {str(folder)!r} is being run by another fbt-engine process (pid {lock.holder()})",
                            f"wait for it to end, or stop it first (kill -INT {lock.holder()})")
    return lock


def execute(sweep: Sweep, say: Callable[[str], None], check_first: bool = True) -> int:
    """Run (or continue) a sweep to the end; 0 when every cell completed, 130 when stopped, 1 otherwise."""
    gpus = _gpu_count() if sweep.jobs > 1 else 0
    configs = resolve_cells(sweep.base, sweep.cells, sweep.dir, _default_threads(sweep.jobs, gpus))
    log = _to_log(sweep)

    def both(line: str) -> None:
        log(line)
        say(line)
    lock = _lock(sweep.dir)
    runner = Runner(sweep, configs, both, gpus=gpus)
    previous = runner.install()
    try:
        if check_first:
            preflight_cells(sweep, configs, runner.say)
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
    results, groups = write_results(sweep)
    runner.say(table_text(sweep, groups).rstrip())
    runner.say(f"results: {sweep.dir / 'results.csv'} and results.json")
    if runner.stopping:
        runner.say(f"sweep stopped; continue with: fbt-engine resume {sweep.dir}")
        return 130
    bad = [r for r in results if r.status != "completed"]
    if bad:
        runner.say(f"{len(bad)} cell(s) did not complete ({', '.join(r.cell.name for r in bad[:5])}); "
                   f"fix the cause and continue with: fbt-engine resume {sweep.dir}")
        return 1
    return 0
