"""Runs screen: statuses from disk, replay, overlay, resume a stopped run, attach to a live one."""

from __future__ import annotations

import json
import os

import pytest
from textual.widgets import DataTable

from fbt_tui.widgets.charts import Chart
from tui_helpers import SIZE, kill_leftovers, make_app, runs_screen, wait_for, write_run

pytestmark = pytest.mark.asyncio


async def goto(pilot, screen, name: str) -> None:  # type: ignore[no-untyped-def]
    table = screen.query_one("#runs", DataTable)
    table.move_cursor(row=[r.name for r in screen.runs].index(name))
    await pilot.pause()


async def test_table_lists_every_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        table = screen.query_one("#runs", DataTable)
        rows = {str(table.get_row_at(i)[1]): table.get_row_at(i) for i in range(table.row_count)}
        assert rows["c-fbt"][2] == "completed" and rows["c-fbt"][5] == "75.00%" and rows["c-fbt"][6] == "2m05s"
        assert rows["e-failed"][2] == "failed" and rows["g-live"][2] == "running"


async def test_open_replays_charts(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "c-fbt")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "run", what="run screen")
        state = app.session.state
        assert state.status == "completed" and state.accs["student"][1] == [55.0, 65.0, 75.0]
        assert not app.session.live


async def test_overlay_several_runs(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        for name in ("a-scratch", "b-kd", "c-fbt"):
            await goto(pilot, screen, name)
            await pilot.press("space")
        assert screen.marked == {"a-scratch", "b-kd", "c-fbt"}
        drawn: list = []
        chart = screen.query_one("#overlay", Chart)
        original = chart.draw
        chart.draw = lambda series: (drawn.append(series), original(series))  # type: ignore[method-assign]
        await pilot.press("o")
        await wait_for(pilot, lambda: bool(drawn), what="overlay")
        assert [label for label, _, _ in drawn[-1]] == ["a-scratch (scratch)", "b-kd (kd)", "c-fbt (fbt)"]
        assert drawn[-1][2][2] == [55.0, 65.0, 75.0]
        await pilot.press("m")  # loss instead of accuracy
        await wait_for(pilot, lambda: len(drawn) == 2, what="loss overlay")
        assert len(drawn[-1][0][1]) == 12 and chart.xlabel_text == "step"


async def test_resume_a_stopped_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "c-fbt")
        await pilot.press("u")  # a completed run cannot be resumed
        await pilot.pause()
        assert app.current_mode == "runs"
        await goto(pilot, screen, "d-stopped")
        await pilot.press("u")
        await wait_for(pilot, lambda: app.session is not None and app.session.ended, what="resumed run")
        try:
            state = app.session.state
            assert state.status == "completed"
            assert state.accs["student"][0] == [1.0, 2.0, 3.0]  # epochs 1-2 replayed, 3 from the resume
        finally:
            kill_leftovers(app)


async def test_attach_tails_a_live_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "g-live")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.session is not None and app.session.state.step == 12, what="tail")
        assert app.session.live and app.session.state.status == "running"
        line = {"v": 1, "type": "finished", "run": "g-live", "t": 99.0, "reason": "completed",
                "best": {"epoch": 3, "student_top1": 70.0}, "duration_s": 99.0}
        with open(canned_runs / "g-live" / "events.jsonl", "a") as fh:  # the engine writes on
            fh.write(json.dumps(line) + "\n")
        await wait_for(pilot, lambda: app.session.ended, what="tail end")
        assert app.session.state.status == "completed"


async def test_attach_notices_a_dead_process(fake_engine, workdir) -> None:
    write_run(workdir / "runs", "ghost", "fbt", "none", pid=os.getpid())
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await runs_screen(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: app.session is not None and app.session.state.step == 12, what="tail")
        from fbt_tui import engine_client
        original = engine_client.pid_alive
        engine_client.pid_alive = lambda pid: False  # type: ignore[assignment]  # the process "dies"
        try:
            await wait_for(pilot, lambda: app.session.ended, what="crash noticed")
        finally:
            engine_client.pid_alive = original
        assert app.session.state.status == "crashed"
