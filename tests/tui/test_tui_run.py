"""Run screen against the fake engine: completion, failed, crash, stop, kill, toggles, coalescing."""

from __future__ import annotations

import pytest
from textual.widgets import Log, Static

from fbt_tui.messages import StartRun
from fbt_tui.widgets.charts import Chart
from tui_helpers import SIZE, kill_leftovers, make_app, wait_for

pytestmark = pytest.mark.asyncio


async def start(pilot, workdir, name: str = "quick"):  # type: ignore[no-untyped-def]
    """Start a run as the configure screen would, and wait for the child to be up."""
    app = pilot.app
    app.post_message(StartRun(workdir / "quick.toml", name))
    await wait_for(pilot, lambda: app.session is not None and app.current_mode == "run", what="run screen")
    return app.session


def error_box(app) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one("#run-error", Static).render())


async def test_normal_run_completes_with_charts_and_log(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.ended, what="end")
            state = session.state
            assert state.status == "completed" and session.returncode == 0
            assert set(state.losses) == {"total", "ce", "ofa/t->s", "nce/f->s"}
            assert len(state.losses["ce"][0]) == 24 and state.progress == (24, 24)
            assert state.accs["student"][0] == [1.0, 2.0, 3.0]
            assert state.best_top1 == pytest.approx(77.5)
            await pilot.pause(0.4)  # one redraw tick
            log = "\n".join(app.screen.query_one("#run-log", Log).lines)
            assert "epoch 3/3 student top1" in log  # stderr reaches the log pane
            info = str(app.screen.query_one("#run-info", Static).render())
            assert "completed" in info and "epoch 3/3" in info
            assert app.run_label == "quick (completed)"
        finally:
            kill_leftovers(app)


async def test_failed_event_shows_message_and_hint(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SCENARIO", "fail")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.ended, what="end")
            await pilot.pause(0.4)
            assert session.state.status == "failed"
            text = error_box(app)
            assert "failed: loss became NaN" in text and "hint: lower train.lr" in text
        finally:
            kill_leftovers(app)


async def test_crash_without_failed_event_shows_stderr_tail(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SCENARIO", "crash")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.ended, what="end")
            await pilot.pause(0.4)
            assert session.state.status == "crashed" and session.returncode == 1
            text = error_box(app)
            assert "exited with code 1 without a final event" in text
            assert "RuntimeError: CUDA error" in text
        finally:
            kill_leftovers(app)


async def test_stop_is_graceful(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.1")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.state.step >= 2, what="steps")
            await pilot.press("x")
            await wait_for(pilot, lambda: session.ended, what="end")
            assert session.state.status == "stopped" and session.returncode == 0
            assert session.state.final.get("reason") == "stopped"
        finally:
            kill_leftovers(app)


async def test_kill_asks_first(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.5")  # long enough to outlast the modal under load
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.state.step >= 1, what="steps")
            await pilot.press("k")
            await pilot.pause()
            assert type(app.screen).__name__ == "ChoiceModal"
            await pilot.press("escape")  # cancel: nothing happens
            await pilot.pause(0.3)
            assert session.live
            await pilot.press("k")
            await pilot.pause()
            await pilot.click("#kill")
            await wait_for(pilot, lambda: session.ended, what="end")
            assert session.returncode == -9 and session.state.status == "crashed"
        finally:
            kill_leftovers(app)


async def test_folder_key_shows_path(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.ended, what="end")
            await pilot.press("f")
            await pilot.pause()
            log = "\n".join(app.screen.query_one("#run-log", Log).lines)
            assert f"run folder: {(workdir / 'runs' / 'quick').resolve()}" in log
        finally:
            kill_leftovers(app)


async def test_fast_stream_is_coalesced_and_keys_answered(fake_engine, workdir, monkeypatch) -> None:
    """50 events/s: keys take effect as soon as the pilot has processed them, and the charts are
    redrawn on the timer (a few times per second), not once per event."""
    monkeypatch.setenv("FBT_FAKE_SCENARIO", "fast")
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.02")
    app = make_app()
    draws = 0
    original = Chart.draw

    def counting_draw(self, series):  # type: ignore[no-untyped-def]
        nonlocal draws
        if self.id == "loss-chart":
            draws += 1
        original(self, series)

    monkeypatch.setattr(Chart, "draw", counting_draw)
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.state.step >= 10, what="stream")
            chart = app.screen.query_one("#loss-chart", Chart)
            for key, attr in (("e", "smooth"), ("l", "log_scale")):
                before = getattr(chart, attr)
                await pilot.press(key)
                assert getattr(chart, attr) is not before  # answered mid-stream
            step0, draws0 = session.state.step, draws
            await wait_for(pilot, lambda: session.state.step >= step0 + 60, what="more steps")
            received = session.state.step - step0
            assert draws - draws0 < received / 2, (draws - draws0, received)
            await pilot.press("x")
            await wait_for(pilot, lambda: session.ended, what="stopped")
            assert session.state.status == "stopped"
        finally:
            kill_leftovers(app)
