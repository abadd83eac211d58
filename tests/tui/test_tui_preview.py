"""Pair preview: tables, chain, params, summary depth; controls re-request; errors as sentence+hint."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Select, Static, TextArea

from tui_helpers import SIZE, make_app, wait_for

pytestmark = pytest.mark.asyncio


async def open_preview(pilot, teacher: str = "swin_tiny_patch4_window7_224", student: str = "resnet18"):  # type: ignore[no-untyped-def]
    app = pilot.app
    app.teacher, app.student = teacher, student
    await pilot.press("f2")
    await pilot.pause()
    return app.screen


def chain(screen) -> str:  # type: ignore[no-untyped-def]
    return str(screen.query_one("#chain", Static).render())


async def test_preview_shows_stages_chain_params_summary(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_preview(pilot)
        await wait_for(pilot, lambda: screen.shown_key is not None, what="preview")
        assert "resnet18 stem..stage3 > L2G" in chain(screen)
        assert screen.query_one("#teacher-stages", DataTable).row_count == 5
        # No preset: the engine default input size (32 px), which is what a run would train.
        assert screen.query_one("#student-stages", DataTable).get_row_at(4)[2] == "512x1x1"
        assert screen.query_one("#params", DataTable).row_count == 6
        assert "2.35 G" in str(screen.query_one("#mult-adds", Static).render())
        summary = screen.query_one("#summary", TextArea).text
        assert "Block3-3" in summary and "Block4-1" not in summary


async def test_controls_rerequest(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_preview(pilot)
        await wait_for(pilot, lambda: screen.shown_key is not None, what="preview")
        screen.query_one("#split", Select).value = 2
        await wait_for(pilot, lambda: "stem..stage2" in chain(screen), what="split 2")
        screen.query_one("#order", Select).value = "teacher-first"
        await wait_for(pilot, lambda: chain(screen).split("\n")[1].startswith("swin"), what="order")
        await pilot.press("plus")  # summary depth 3 -> 4
        await wait_for(pilot, lambda: "Block4-1" in screen.query_one("#summary", TextArea).text, what="depth")
        screen.query_one("#img-size", Input).value = "64"
        await wait_for(pilot, lambda: screen.shown_key is not None and screen.shown_key[2] == 64, what="img")
        assert screen.query_one("#student-stages", DataTable).get_row_at(0)[2] == "64x16x16"


async def test_unsupported_pair_shows_sentence_and_hint(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_preview(pilot, student="levit_128")
        message = screen.query_one("#preview-message", Static)
        await wait_for(pilot, lambda: message.has_class("error"), what="error")
        text = str(message.render())
        assert "error: levit_128 has no 4-stage adapter" in text
        assert "hint: choose a fusable model" in text
        assert "Traceback" not in text


async def test_no_pair_asks_for_one(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        assert "Pick a teacher" in str(app.screen.query_one("#preview-message", Static).render())
