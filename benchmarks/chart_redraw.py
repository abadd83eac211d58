"""Run-screen chart redraw time (textual-plot vs textual-plotext) and event -> chart latency.

    .venv/bin/python benchmarks/chart_redraw.py                  # both tables (markdown) at 120x40
    .venv/bin/python benchmarks/chart_redraw.py --only latency   # or: --only redraw
    options: --points 1000 --series 10 --rounds 20 --size 120x40 --rate 50 --steps 300 --json FILE

Redraw: the real run screen of fbt-tui (RunScreen, both charts with their legends) showing a
RunState with SERIES loss series of POINTS points each (plus student/fused/teacher accuracy over 10
epochs). One redraw is `RunScreen.redraw(force=True)` plus every compositor frame it causes
(textual-plot paints its canvases one frame after the widget renders), as CPU time of the UI
thread (what a busy machine does not inflate) and as wall time; headless (Textual's test driver:
no terminal write). "thinned" is what the TUI ships (each series
cut to 2 points per plot column before the library sees it); "raw" hands the library all
POINTS x SERIES points. textual-plotext runs through benchmarks/_plotext_area.py and is skipped
when not installed (`pip install -e ".[chart-bench]"`).

Latency: this script also plays a fake engine (`chart_redraw.py produce RATE STEPS`) that writes
step events at RATE per second to stdout, each stamped with time.monotonic() (CLOCK_MONOTONIC is
machine-wide). The TUI spawns it through RunSession (the real pipe, decoder, fold and 4 Hz redraw
timer); the latency of a step is the end of the first frame whose loss chart shows it minus its
write time. The load average is printed with each table: on a shared machine, numbers move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

TERMS = ("ce", "kd", "dkd/tckd", "ofa/stage1", "nce/t->f", "ofa/f->s", "ce/fused", "dkd/nckd", "ofa/stage2")


# --- the fake engine -----------------------------------------------------------------------------

def produce(rate: float, steps: int) -> None:
    """Write started, phase, STEPS step events at RATE/s (each stamped `sent`), finished."""
    def emit(type_: str, **data: Any) -> None:
        sys.stdout.write(json.dumps({"v": 1, "type": type_, "run": "latency", "t": time.monotonic() - t0, **data}) + "\n")
        sys.stdout.flush()

    t0 = time.monotonic()
    emit("started", method="fbt", teacher="t", student="s", device="cpu", pid=os.getpid(), resumed=False)
    emit("phase", phase="distill", epochs=1, steps_per_epoch=steps)
    for step in range(1, steps + 1):
        due = t0 + step / rate
        time.sleep(max(0.0, due - time.monotonic()))
        terms = {term: 2.0 / (1 + 0.01 * step * (i + 1)) for i, term in enumerate(TERMS[:3])}
        emit("step", phase="distill", epoch=1, step=step, steps_per_epoch=steps, lr=1e-3,
             loss=sum(terms.values()), terms=terms, samples_per_s=rate, eta_s=(steps - step) / rate,
             sent=time.monotonic())
    emit("finished", reason="completed", best={}, last={}, duration_s=time.monotonic() - t0)


# --- helpers -------------------------------------------------------------------------------------

def synthetic_state(points: int, series: int) -> Any:
    """A RunState folded from events: `series` loss series (total + terms) of `points` steps."""
    from fbt_engine.events import Event
    from fbt_tui.run_state import RunState

    rng = random.Random(0)
    state = RunState(name="bench", status="running")
    epochs, terms = 10, TERMS[:series - 1]
    state.apply(Event("phase", "bench", 0.0, {"phase": "distill", "epochs": epochs, "steps_per_epoch": points // epochs}))
    for step in range(1, points + 1):
        vals = {t: 3.0 / (1 + 0.004 * step * (i + 1)) * (1 + 0.08 * rng.random()) for i, t in enumerate(terms)}
        state.apply(Event("step", "bench", 0.0, {"phase": "distill", "epoch": 1 + (step - 1) * epochs // points,
                                                 "step": step, "loss": sum(vals.values()), "terms": vals}))
        if step % (points // epochs) == 0:
            e = step // (points // epochs)
            state.apply(Event("eval", "bench", 0.0, {"phase": "distill", "epoch": e, "student_top1": 30 + 4 * e,
                                                     "fused_top1": 35 + 4 * e, "teacher_top1": 80.0}))
    return state


def make_app(runs_dir: str) -> Any:
    from fbt_tui.app import FbtApp
    return FbtApp(runs_dir=runs_dir, sysmon=False, start_mode="run")


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {"median": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "max": ms[-1],
            "n": len(ms)}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs"


# --- redraw --------------------------------------------------------------------------------------

async def redraw_times(area: str, thinned: bool, points: int, series: int, rounds: int,
                       size: tuple[int, int], tmp: str) -> dict[str, list[float]]:
    from fbt_tui.engine_client import RunSession
    from fbt_tui.widgets import charts

    charts.Chart.area_kind = area
    charts.POINTS_PER_COLUMN = 2 if thinned else 10**9
    app = make_app(tmp)
    out: dict[str, list[float]] = {"draw": [], "paint": [], "total": [], "wall": []}
    async with app.run_test(size=size) as pilot:
        app.session = RunSession(synthetic_state(points, series))
        await pilot.pause(0.5)
        screen = app.screen
        painted = [0.0, 0.0]  # CPU seconds, wall seconds
        original = screen._on_timer_update

        def timed_frame() -> None:
            c0, t0 = time.thread_time(), time.perf_counter()
            original()
            painted[0] += time.thread_time() - c0
            painted[1] += time.perf_counter() - t0

        screen._update_timer._callback = timed_frame
        for i in range(rounds + 2):
            await pilot.pause(0.05)
            painted[:] = [0.0, 0.0]
            c0, t0 = time.thread_time(), time.perf_counter()
            screen.redraw(force=True)
            draw, draw_wall = time.thread_time() - c0, time.perf_counter() - t0
            await pilot.pause(0.2)  # every frame the redraw caused
            if i >= 2:  # warm-up
                out["draw"].append(draw)
                out["paint"].append(painted[0])
                out["total"].append(draw + painted[0])
                out["wall"].append(draw_wall + painted[1])
    return out


async def redraw_table(args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    from fbt_tui.widgets import charts
    try:
        from _plotext_area import PlotextArea
        charts.AREAS["textual-plotext"] = PlotextArea
    except ImportError:
        print("textual-plotext is not installed: only textual-plot is measured", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    times: dict[tuple[str, bool], dict[str, list[float]]] = {}
    for _ in range(2):  # interleaved, so a change in machine load hits both libraries alike
        for area in charts.AREAS:
            for thinned in (True, False):
                got = await redraw_times(area, thinned, args.points, args.series, args.rounds // 2, args.size, tmp)
                acc = times.setdefault((area, thinned), {"draw": [], "paint": [], "total": [], "wall": []})
                for k, v in got.items():
                    acc[k].extend(v)
    charts.Chart.area_kind, charts.POINTS_PER_COLUMN = "textual-plot", 2
    for extra in [k for k in charts.AREAS if k != "textual-plot"]:
        del charts.AREAS[extra]
    for (area, thinned), t in times.items():
        rows.append({"library": area, "points": "thinned (2/column)" if thinned else "raw",
                     **{f"{k}_ms": stats_ms(v) for k, v in t.items()}})
    return rows


# --- latency -------------------------------------------------------------------------------------

async def latency(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    from fbt_engine.events import Event
    from fbt_tui.engine_client import RunSession
    from fbt_tui.run_state import RunState

    os.environ["FBT_ENGINE"] = f"{sys.executable} {Path(__file__).resolve()}"
    app = make_app(tmp)
    arrivals: dict[int, tuple[float, float]] = {}  # step -> (written, folded)
    frames: list[tuple[float, float]] = []  # (frame end, largest step shown)
    async with app.run_test(size=args.size) as pilot:
        state = RunState(name="latency")
        fold = state.apply

        def apply(item: Any) -> None:
            fold(item)
            if isinstance(item, Event) and item.type == "step":
                arrivals[int(item.get("step"))] = (float(item.get("sent")), time.monotonic())

        state.apply = apply  # type: ignore[method-assign]
        session = RunSession(state)
        app.session = session
        await pilot.pause(0.3)
        screen = app.screen
        plot = screen.query_one("#loss-chart-plot")
        canvas = plot.query_one("#plot")
        shown = {"x": 0.0, "painted": False}
        render_plot, render_line, refresh = plot._render_plot, canvas.render_line, screen._compositor_refresh

        def stamped_render_plot() -> None:
            render_plot()
            shown["x"] = max((float(d.x.max()) for d in plot._datasets  # not the blank margin points
                              if len(d.x) and getattr(d, "marker", "") != " "), default=0.0)

        def noted_render_line(y: int) -> Any:
            shown["painted"] = True
            return render_line(y)

        def noted_refresh() -> None:
            refresh()
            if shown["painted"]:
                frames.append((time.monotonic(), shown["x"]))
                shown["painted"] = False

        plot._render_plot, canvas.render_line = stamped_render_plot, noted_render_line
        screen._compositor_refresh = noted_refresh
        app.run_worker(session.spawn(["produce", str(args.rate), str(args.steps)]))
        deadline = time.monotonic() + args.steps / args.rate + 30
        while not session.ended and time.monotonic() < deadline:
            await pilot.pause(0.1)
        await pilot.pause(0.5)
    total, pipe = [], []
    for step, (sent, folded) in sorted(arrivals.items()):
        seen = next((t for t, x in frames if t >= folded and x >= step), None)
        if seen is not None:
            total.append(seen - sent)
            pipe.append(folded - sent)
    return {"rate_per_s": args.rate, "steps": args.steps, "shown": len(total), "event_to_frame_ms": stats_ms(total),
            "event_to_fold_ms": stats_ms(pipe)}


# --- main ----------------------------------------------------------------------------------------

def fmt(s: dict[str, float]) -> str:
    return f"{s['median']:.1f} | {s['p95']:.1f} | {s['max']:.1f}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"size": args.size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "redraw"):
            before = load()
            rows = await redraw_table(args, tmp)
            result["redraw"], result["redraw_load"] = rows, [before, load()]
            print(f"\nRedraw of the run screen, {args.points} points x {args.series} loss series, "
                  f"{args.size[0]}x{args.size[1]}, {rows[0]['total_ms']['n']} redraws each; {before} before, "
                  f"{load()} after\n")
            print("| library | points given to it | CPU ms median | p95 | max | of which draw() | of which paint | "
                  "wall ms median |")
            print("|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['library']} | {r['points']} | {fmt(r['total_ms'])} | {r['draw_ms']['median']:.1f} | "
                      f"{r['paint_ms']['median']:.1f} | {r['wall_ms']['median']:.1f} |")
        if args.only in (None, "latency"):
            before = load()
            lat = await latency(args, tmp)
            result["latency"], result["latency_load"] = lat, [before, load()]
            print(f"\nEvent -> chart latency, {args.rate:g} step events/s, {lat['shown']} of {args.steps} steps "
                  f"seen on the chart; {before} before, {load()} after\n")
            print("| stage | median ms | p95 ms | max ms |")
            print("|---|---|---|---|")
            for key, name in (("event_to_fold_ms", "engine write -> folded into RunState"),
                              ("event_to_frame_ms", "engine write -> frame showing it")):
                s = lat[key]
                print(f"| {name} | {s['median']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |")
    return result


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--series", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20, help="redraws per library and mode (after 2 warm-ups)")
    p.add_argument("--size", default="120x40", help="terminal size, COLSxROWS")
    p.add_argument("--rate", type=float, default=50.0, help="step events per second for the latency run")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--only", choices=("redraw", "latency"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "produce":
        produce(float(sys.argv[2]), int(sys.argv[3]))
    else:
        ns = parse()
        res = asyncio.run(main(ns))
        if ns.json:
            ns.json.write_text(json.dumps(res, indent=1))
