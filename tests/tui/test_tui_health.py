"""Health warnings in the TUI: a `warning` event shows a badge next to the run monitor's status line
(its message in the tooltip and the log pane) and in the Runs list."""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Log, Static

from fbt_engine import protocol as P
from fbt_tui.messages import StartRun
from fbt_tui.runs import compare_rows, scan_runs
from tui_helpers import SIZE, kill_leftovers, make_app, runs_screen, wait_for, write_run

pytestmark = pytest.mark.asyncio


async def start(pilot, workdir):  # type: ignore[no-untyped-def]
    app = pilot.app
    app.post_message(StartRun(workdir / "quick.toml", "quick"))
    await wait_for(pilot, lambda: app.session is not None and app.current_mode == "run", what="run screen")
    return app.session


def add_warning(run_dir, signal: str = "grad_norm") -> None:  # type: ignore[no-untyped-def]
    body = P.HealthWarning(signal=signal, rule="grad_spike", value=42.0, threshold=10.0, phase="distill", epoch=2,
                           step=6, message=f"{signal} = 42, above the threshold 10", hint="enable train.grad_clip")
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"v": 1, "type": body.TYPE, "run": run_dir.name, "t": 9.0, **P.plain(body)}) + "\n")


async def test_run_monitor_shows_a_warning_badge(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SCENARIO", "warn")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir)
        try:
            await wait_for(pilot, lambda: session.ended, what="end")
            await pilot.pause(0.4)  # one redraw tick
            assert session.state.warning_count == 1 and session.state.status == "completed"
            info = app.screen.query_one("#run-info", Static)
            assert "⚠ 1 fused_spread" in str(info.render()).splitlines()[0]  # on the status line
            assert "fused_spread = 0.004, below the threshold 0.02" in str(info.tooltip)
            log = "\n".join(app.screen.query_one("#run-log", Log).lines)
            assert "warning (distill step 9): fused_spread = 0.004" in log and "hint: check the L2G" in log
        finally:
            kill_leftovers(app)


async def test_runs_list_shows_a_warning_badge(fake_engine, workdir) -> None:
    runs = workdir / "runs"
    add_warning(write_run(runs, "a-warned", "fbt", "completed"))
    add_warning(runs / "a-warned", "nce/t->f")
    write_run(runs, "b-clean", "fbt", "completed")
    summaries = {r.name: r for r in scan_runs(runs)}
    assert (summaries["a-warned"].warnings, summaries["a-warned"].latest_warning) == (2, "nce/t->f")
    assert summaries["b-clean"].warnings == 0
    assert ("warnings", ["2 (nce/t->f)", "0"]) in compare_rows([summaries["a-warned"], summaries["b-clean"]])
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        table = screen.query_one("#runs", DataTable)
        rows = {str(table.get_row_at(i)[1]): table.get_row_at(i) for i in range(table.row_count)}
        assert str(rows["a-warned"][3]).startswith("completed") and "⚠ 2" in str(rows["a-warned"][3])
        assert str(rows["b-clean"][3]) == "completed"
