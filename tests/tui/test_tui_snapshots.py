"""SVG snapshots of every screen at 120x40 (fake engine, canned runs, no clocks or machine load).

Update after an intended change: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import os
import time

import pytest
from textual.widgets import DataTable

from fbt_tui.messages import OpenRun
from fbt_tui.runs import summarize
from tui_helpers import SIZE, catalog_ready, make_app, wait_for


def test_catalog_screen(snap_compare, fake_engine, workdir) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await wait_for(pilot, lambda: catalog_ready(pilot.app))
        await pilot.press("down", "down")
        await pilot.pause(0.3)  # let the loading overlay go

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


async def _pair_preview(pilot, student: str) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    app.teacher, app.student = "swin_tiny_patch4_window7_224", student
    await pilot.press("f2")
    screen = app.screen
    await wait_for(pilot, lambda: screen.shown_key is not None or screen.query_one("#preview-message").has_class("error"))
    await pilot.pause(0.2)


def test_preview_screen(snap_compare, fake_engine, workdir) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _pair_preview(pilot, "resnet18")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_preview_screen_unsupported_pair(snap_compare, fake_engine, workdir) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _pair_preview(pilot, "levit_128")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_configure_screen(snap_compare, fake_engine, workdir) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await pilot.press("f3")
        await pilot.pause()
        pilot.app.screen.query_one("#f-train-epochs").value = "zero"  # shows a field error
        pilot.app.screen.set_focus(None)  # no blinking text cursor in the frame
        await pilot.pause(0.3)

    assert snap_compare(make_app(preset="quick.toml", start_mode="configure"), terminal_size=SIZE,
                        run_before=run_before)


def _replay(name: str):  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app.post_message(OpenRun(summarize(pilot.app.runs_dir / name), "replay"))
        await wait_for(pilot, lambda: pilot.app.current_mode == "run")
        await pilot.pause(0.6)  # two redraw ticks and the header label
    return run_before


def test_run_screen_completed(snap_compare, fake_engine, canned_runs) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=_replay("c-fbt"))


def test_run_screen_failed(snap_compare, fake_engine, canned_runs) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=_replay("e-failed"))


@pytest.fixture
def fixed_dates(canned_runs, monkeypatch):  # type: ignore[no-untyped-def]
    """Every canned run started at the same moment, shown in UTC: the date column is the same in every frame."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for config in canned_runs.glob("*/config.toml"):
        os.utime(config, (1_750_000_000, 1_750_000_000))
    yield canned_runs
    monkeypatch.undo()
    time.tzset()


def test_run_screen_ten_series_after_resumes(snap_compare, fake_engine, workdir) -> None:
    """Ten loss terms, each its own colour and marker, the legend beside the plot; x ends at 60."""
    from test_tui_charts import TERMS, resumed_run, write_events
    events = [e if e["type"] != "step" else {**e, "terms": {t: round((i + 1) / (1 + 0.1 * e["step"]), 4)
                                                            for i, t in enumerate(TERMS)}} for e in resumed_run()]
    write_events(workdir / "runs" / "resumed", events)
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=_replay("resumed"))


def test_runs_screen_with_overlay(snap_compare, fake_engine, fixed_dates) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.query_one("#runs", DataTable).row_count == 7)
        screen.query_one("#runs", DataTable).focus()
        await pilot.press("space", "down", "space", "down", "space", "o")
        await pilot.pause(0.5)

    assert snap_compare(make_app(start_mode="runs"), terminal_size=SIZE, run_before=run_before)


def test_runs_screen_compare(snap_compare, fake_engine, fixed_dates) -> None:
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.query_one("#runs", DataTable).row_count == 7)
        screen.query_one("#runs", DataTable).focus()
        await pilot.press("space", "down", "space", "c")
        await wait_for(pilot, lambda: screen.query_one("#compare", DataTable).row_count > 0)
        await pilot.pause(0.3)

    assert snap_compare(make_app(start_mode="runs"), terminal_size=SIZE, run_before=run_before)
