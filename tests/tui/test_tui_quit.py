"""Quitting with a live run asks: stop it, or leave it running (it survives the TUI)."""

from __future__ import annotations

import os
import signal

import pytest

from fbt_engine.events import read_events
from fbt_tui.messages import StartRun
from tui_helpers import SIZE, kill_leftovers, make_app, wait_for

pytestmark = pytest.mark.asyncio


async def live_run(pilot, workdir):  # type: ignore[no-untyped-def]
    pilot.app.post_message(StartRun(workdir / "quick.toml", "quick"))
    await wait_for(pilot, lambda: pilot.app.session is not None and pilot.app.session.state.step >= 1, what="run")
    return pilot.app.session


async def test_quit_without_run_just_quits(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_leave_running_keeps_the_child(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.5")  # long enough to outlive the TUI on a loaded machine
    app = make_app()
    proc = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            session = await live_run(pilot, workdir)
            proc = session.proc
            await pilot.press("q")
            await pilot.pause()
            assert type(app.screen).__name__ == "ChoiceModal"
            await pilot.click("#leave")
            await pilot.pause(0.5)
        assert proc.poll() is None  # the TUI is gone, the run is not
        assert proc.wait(30) == 0  # ...and it runs to its end despite nobody reading its pipes
        final = read_events(workdir / "runs" / "quick" / "events.jsonl")[-1]
        assert final.type == "finished" and final.get("reason") == "completed"
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def test_stop_and_quit_stops_gracefully(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.1")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await live_run(pilot, workdir)
        try:
            await pilot.press("q")
            await pilot.pause()
            await pilot.click("#stop")
            await wait_for(pilot, lambda: session.ended, what="stopped")
        finally:
            kill_leftovers(app)
    assert session.proc.wait(5) == 0
    final = read_events(workdir / "runs" / "quick" / "events.jsonl")[-1]
    assert final.type == "finished" and final.get("reason") == "stopped"
