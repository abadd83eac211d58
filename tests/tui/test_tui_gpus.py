"""Several local GPUs: the configure screen offers how many a run uses (`--gpus N`), and the run
screen shows each rank's throughput from the step events (fake engine, `run --gpus N`)."""

from __future__ import annotations

import pytest
from textual.widgets import Select, Static
from tui_helpers import SIZE, kill_leftovers, make_app, wait_for

import fbt_tui.screens.configure as configure_screen

pytestmark = pytest.mark.asyncio


async def test_one_gpu_or_none_hides_the_choice(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setattr(configure_screen, "gpu_count", lambda: 1)
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await pilot.pause(0.3)
        assert app.screen.query_one("#gpus", Select).display is False


async def test_several_gpus_offered_and_the_run_shows_each_ranks_throughput(fake_engine, workdir, monkeypatch,
                                                                             tmp_path) -> None:
    monkeypatch.setattr(configure_screen, "gpu_count", lambda: 4)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.05")
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        select = app.screen.query_one("#gpus", Select)
        await wait_for(pilot, lambda: select.display, what="the GPU choice")
        assert [label for label, _ in select._options] == ["1 GPU", "2 GPUs", "3 GPUs", "4 GPUs"]
        assert select.value == 1  # one process unless asked
        select.value = 2
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.session is not None, what="session")
        try:
            await wait_for(pilot, lambda: len(app.session.state.rank_samples_per_s) == 2, what="per-rank img/s")
            await pilot.pause(0.4)  # one redraw tick
            info = str(app.screen.query_one("#run-info", Static).render())
            assert "x2 ranks" in info and "(ranks 0:617 1:556)" in info
            assert " --gpus 2" in calls.read_text()
        finally:
            kill_leftovers(app)


async def test_a_run_resumes_on_as_many_ranks_as_it_trained_on() -> None:
    from fbt_engine.events import Event
    from fbt_tui.run_state import RunState, same_ranks

    def started(device: str, world: int) -> RunState:
        state = RunState(name="r")
        state.apply(Event(type="started", run="r", t=0.0, data={"device": device, "world_size": world}))
        return state
    assert same_ranks(started("cuda:0", 4)) == ["--gpus", "4"]
    assert same_ranks(started("cpu", 2)) == ["--nproc-per-node", "2"]
    assert same_ranks(started("cuda:0", 1)) == [] and same_ranks(RunState(name="r")) == []
