"""Charts and the run screen's view of a run: the x axis across any number of resumes, distinct
series styles, the legend beside the plot with per-series toggles, exit signals in words, and a
progress bar that stops when the run does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import ProgressBar, Static

from fbt_engine.events import Event
from fbt_tui.run_state import RunState, describe_exit, exit_message, replay
from fbt_tui.runs import summarize
from fbt_tui.widgets.charts import STYLES, Chart, marker_points
from tui_helpers import SIZE, make_app, wait_for

TERMS = ("ce", "kd", "dkd/tckd", "ofa/stage1", "nce/t->f", "ofa/f->s", "ce/fused", "dkd/nckd", "ofa/stage2")


def ev(type_: str, **data) -> dict:  # type: ignore[no-untyped-def]
    return {"type": type_, **data}


def started(resumed: bool) -> dict:
    return ev("started", method="fbt", teacher="swin_tiny_patch4_window7_224", student="resnet18", device="cpu",
              pid=0, resumed=resumed)


def steps(phase: str, first: int, last: int, spe: int, terms: tuple[str, ...] = ("ce", "kd")) -> list[dict]:
    out = []
    for s in range(first, last + 1):
        vals = {t: round(3.0 / (1 + 0.05 * s * (i + 1)), 4) for i, t in enumerate(terms)}
        out.append(ev("step", phase=phase, epoch=(s - 1) // spe + 1, step=s, steps_per_epoch=spe, lr=1e-3,
                      loss=round(sum(vals.values()), 4), terms=vals, samples_per_s=100.0, eta_s=1.0))
        if s % spe == 0:
            out.append(ev("eval", phase=phase, epoch=s // spe, student_top1=40.0 + s, student_top5=90.0,
                          fused_top1=None, teacher_top1=80.0))
    return out


def resumed_run(teacher_steps: int = 0) -> list[dict]:
    """A 60-step distillation (3 epochs x 20) stopped twice and killed once, then resumed each time.

    Segments: 1-25, graceful stop; 26-40, SIGKILL (no final event; the last checkpoint was at step
    35, so the resume redoes 36-40); 36-50, graceful stop; 51-60 to the end. Every resume announces
    `started` and `phase` again (the old fold added the last step to the x offset at each one).
    """
    out: list[dict] = [started(False)]
    if teacher_steps:
        out += [ev("phase", phase="teacher", epochs=2, steps_per_epoch=teacher_steps // 2),
                *steps("teacher", 1, teacher_steps, teacher_steps // 2, ("ce",))]
    stop = ev("finished", reason="stopped", best={}, last={}, duration_s=1.0)
    for i, (a, b, end) in enumerate(((1, 25, stop), (26, 40, None), (36, 50, stop), (51, 60, None))):
        if i:
            out.append(started(True))
        out.append(ev("phase", phase="distill", epochs=3, steps_per_epoch=20))
        out += steps("distill", a, b, 20)
        if end is not None:
            out.append(end)
    out.append(ev("finished", reason="completed", best={"epoch": 3, "student_top1": 100.0}, last={},
                  duration_s=9.0))
    return out


def fold(events: list[dict]) -> RunState:
    state = RunState(name="r")
    for i, e in enumerate(events):
        state.apply(Event(e["type"], "r", float(i), {k: v for k, v in e.items() if k != "type"}))
    return state


def write_events(run_dir: Path, events: list[dict], config: str = 'name = "r"\nmethod = "fbt"\n') -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config, encoding="utf-8")
    lines = [json.dumps({"v": 1, "run": run_dir.name, "t": float(i), **e}) for i, e in enumerate(events)]
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_dir


# --- the x axis across resumes -------------------------------------------------------------------

def test_x_of_the_last_point_is_the_real_last_step_after_several_resumes(tmp_path: Path) -> None:
    events = resumed_run()
    assert sum(e["type"] == "phase" for e in events) == 4
    for state in (fold(events), replay(write_events(tmp_path / "r", events) / "events.jsonl")):
        for term in ("total", "ce", "kd"):
            xs = state.losses[term].xs
            assert xs == [float(s) for s in range(1, 61)], term  # no gap, no flat segment, no zigzag
        assert state.step == 60 and state.progress == (60, 60) and state.status == "completed"
        assert state.accs["student"].xs == [1.0, 2.0, 3.0]  # epoch 2 evaluated once on the chart


def test_teacher_phase_then_resumed_distillation(tmp_path: Path) -> None:
    state = fold(resumed_run(teacher_steps=10))
    assert state.losses["teacher ce"].xs == [float(s) for s in range(1, 11)]
    assert state.losses["ce"].xs == [float(s) for s in range(11, 71)]  # distill step 60 -> x 70
    assert state.losses["total"].xs[-1] == 70.0


def test_a_resume_that_redoes_steps_replaces_them() -> None:
    state = fold([ev("phase", phase="distill", epochs=1, steps_per_epoch=10), *steps("distill", 1, 8, 10),
                  started(True), ev("phase", phase="distill", epochs=1, steps_per_epoch=10),
                  *steps("distill", 5, 10, 10)])
    xs, ys = state.losses["ce"]
    assert xs == [float(s) for s in range(1, 11)] and len(ys) == 10


# --- exit codes and signals in words -------------------------------------------------------------

def test_signals_are_named_with_a_hint() -> None:
    assert exit_message(-9) == ("the engine died without a final event: killed by SIGKILL (signal 9), possibly out "
                                "of memory (the kernel's OOM killer) or killed by the user (kill -9)")
    assert "killed by SIGTERM (signal 15), stopped from outside" in exit_message(-15)
    assert "killed by SIGSEGV (signal 11), a crash in native code" in exit_message(-11)
    assert describe_exit(137).startswith("128+9: killed by SIGKILL (signal 9), possibly out of memory")
    assert describe_exit(-99) == "killed by signal 99"
    assert describe_exit(1) == "an unhandled error (see stderr)" and describe_exit(0) == ""


# --- the chart widget ----------------------------------------------------------------------------

class ChartApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Chart("loss terms", "step", id="loss-chart")


def ten_series(n: int = 1000) -> list:
    return [(name, [float(x) for x in range(1, n + 1)], [(i + 1) / x for x in range(1, n + 1)])
            for i, name in enumerate(("total", *TERMS))]


@pytest.mark.asyncio
async def test_ten_series_are_distinct_and_the_legend_is_beside_the_plot() -> None:
    app = ChartApp()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(Chart)
        chart.draw(ten_series())
        await pilot.pause(0.2)
        lines = chart.lines(chart.series)
        assert len(lines) == 10 and len({(ln.color, ln.marker) for ln in lines}) == 10
        assert len({ln.color for ln in lines}) == 10 and len({ln.marker for ln in lines}) == 10
        assert all(len(ln.xs) <= 2 * chart.area.columns for ln in lines)  # thinned before drawing
        plot, legend = chart.area.region, chart.legend.region
        assert not plot.overlaps(legend) and legend.x >= plot.right  # outside the plot, on its right
        assert chart.legend.option_count == 10 and set(chart.legend.selected) == {s[0] for s in ten_series(2)}
        # the library got one line and one set of markers per series (and the blank margin points)
        assert len(chart.area._datasets) == 21


@pytest.mark.asyncio
async def test_legend_toggles_a_series_and_styles_stay_put() -> None:
    app = ChartApp()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(Chart)
        series = ten_series(50)
        chart.draw(series)
        await pilot.pause()
        before = {ln.label: (ln.color, ln.marker) for ln in chart.lines(series)}
        chart.toggle("kd")
        await pilot.pause()
        assert chart.hidden == {"kd"} and "kd" not in [ln.label for ln in chart.lines(series)]
        assert len(chart.area._datasets) == 19
        after = {ln.label: (ln.color, ln.marker) for ln in chart.lines(series)}
        assert all(after[k] == before[k] for k in after)  # hiding one does not recolour the others
        chart.draw(series)  # the next timer redraw keeps it hidden
        await pilot.pause()
        assert "kd" not in chart.legend.selected and len(chart.area._datasets) == 19
        chart.legend.focus()
        chart.legend.highlighted = 2  # "kd": space in the legend shows it again
        await pilot.press("space")
        await pilot.pause()
        assert chart.hidden == set() and len(chart.area._datasets) == 21


@pytest.mark.asyncio
async def test_log_scale_and_ema_keep_the_x_axis() -> None:
    app = ChartApp()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(Chart)
        chart.log_scale = True
        chart.draw([("total", [1.0, 2.0, 3.0, 4.0], [1.0, 0.0, -1.0, 0.5])])
        await pilot.pause()
        (line,) = chart.lines(chart.series)
        assert line.xs == [1.0, 4.0]  # a log axis cannot show 0 or -1: those points go, x stays
        chart.smooth = True
        chart.draw(chart.series)
        await pilot.pause()
        (line,) = chart.lines(chart.series)
        assert line.xs == [1.0, 2.0, 3.0, 4.0] and line.ys[1] == pytest.approx(0.9)  # EMA, alpha 0.1
        assert "EMA, log" in str(chart.query_one(".chart-title", Static).render())


def test_markers_are_spread_and_staggered() -> None:
    xs = [float(i) for i in range(100)]
    a, _ = marker_points(xs, xs, 5, 0, 2)
    b, _ = marker_points(xs, xs, 5, 1, 2)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert marker_points(xs[:3], xs[:3], 5, 0, 1)[0] == xs[:3]  # few points: a marker on each
    assert len(STYLES) >= 10


# --- the run screen ------------------------------------------------------------------------------

def open_replay(app, run_dir: Path):  # type: ignore[no-untyped-def]
    from fbt_tui.messages import OpenRun
    app.post_message(OpenRun(summarize(run_dir), "replay"))


@pytest.mark.asyncio
async def test_run_screen_shows_the_resumed_run_to_its_last_step(fake_engine, workdir) -> None:
    run_dir = write_events(workdir / "runs" / "resumed", [*resumed_run()[:1], *[
        e if e["type"] != "step" else {**e, "terms": {t: 1.0 / e["step"] * (i + 1) for i, t in enumerate(TERMS)}}
        for e in resumed_run()[1:]]])
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        open_replay(app, run_dir)
        await wait_for(pilot, lambda: app.current_mode == "run")
        await pilot.pause(0.5)
        chart = app.screen.query_one("#loss-chart", Chart)
        assert chart.legend.option_count == 10
        assert max(float(d.x.max()) for d in chart.area._datasets[1:]) == 60.0  # [0]: the margin points
        await pilot.press("t")  # the legend takes the keys
        assert app.focused is chart.legend


@pytest.mark.asyncio
async def test_a_failed_run_stops_its_progress_bar(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        open_replay(app, canned_runs / "e-failed")
        await wait_for(pilot, lambda: app.current_mode == "run")
        await pilot.pause(0.5)
        bar = app.screen.query_one("#run-progress", ProgressBar)
        assert (bar.total, bar.progress) == (12, 8) and bar.has_class("-failed")  # stopped where it failed
        info = str(app.screen.query_one("#run-info", Static).render())
        assert "failed" in info and "ETA -" in info


@pytest.mark.asyncio
async def test_a_replayed_crashed_run_is_not_shown_as_running(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        open_replay(app, canned_runs / "f-crashed")
        await wait_for(pilot, lambda: app.current_mode == "run")
        await pilot.pause(0.5)
        assert app.session.state.status == "crashed"
        bar = app.screen.query_one("#run-progress", ProgressBar)
        assert bar.total is not None and bar.has_class("-failed")
        assert "ended without a final event" in str(app.screen.query_one("#run-error", Static).render())


@pytest.mark.asyncio
async def test_a_zoom_survives_redraws_until_reset() -> None:
    app = ChartApp()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one(Chart)
        chart.draw(ten_series(100))
        await pilot.pause()
        area = chart.area
        full = (area._x_min, area._x_max)
        area.action_zoom_in()  # what the mouse wheel does
        zoomed = (area._x_min, area._x_max)
        assert zoomed[1] - zoomed[0] < full[1] - full[0]
        chart.draw(ten_series(120))  # the 4 Hz redraw with new points
        await pilot.pause()
        assert (area._x_min, area._x_max) == zoomed
        chart.reset_zoom()
        chart.draw(ten_series(120))
        await pilot.pause()
        assert area._x_max >= 120
