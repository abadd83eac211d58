"""Catalog screen: loading from the engine, search as you type, kind filter, sort, ctrl+t/ctrl+s."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select, Static

from fbt_tui.widgets.model_table import ModelTable

from tui_helpers import SIZE, catalog_ready, make_app, wait_for

pytestmark = pytest.mark.asyncio


def names(app) -> list[str]:  # type: ignore[no-untyped-def]
    table = app.screen.query_one("#models", ModelTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def loaded(pilot) -> None:  # type: ignore[no-untyped-def]
    """Both answers are in: the names (`--no-counts`) and then the parameter counts."""
    await wait_for(pilot, lambda: catalog_ready(pilot.app), what="catalog with counts")


async def test_catalog_loads_from_engine(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert len(names(app)) == 13
        assert names(app) == sorted(names(app))
        assert "13 of 13 models" in str(app.screen.query_one("#catalog-count", Static).render())


async def test_names_first_then_parameter_counts(fake_engine, workdir, monkeypatch) -> None:
    """A first start lists names at once (`--no-counts`), then fills counts from a second call."""
    calls = workdir / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        table = app.screen.query_one("#models", ModelTable)
        await wait_for(pilot, lambda: "11.7M" in [str(c) for c in table.get_row("resnet18")], what="counts")
    lines = calls.read_text().splitlines()
    assert lines[:2] == ["models --json --no-counts", "models --json"]


async def test_search_filters_as_you_type(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("slash", "r", "e", "s")
        # "res" matches resnet18/50 and resmlp by name; keystrokes within SEARCH_S share one filter.
        await wait_for(pilot, lambda: set(names(app)) == {"resnet18", "resnet50", "resmlp_12_224"}, what="res")
        await pilot.press("n")
        await wait_for(pilot, lambda: set(names(app)) == {"resnet18", "resnet50"}, what="resn")
        await pilot.press("backspace", "backspace", "backspace", "backspace")
        await wait_for(pilot, lambda: len(names(app)) == 13, what="all again")


async def test_kind_filter_and_fusable(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.screen.query_one("#kind", Select).value = "msa"
        await pilot.pause()
        assert set(names(app)) == {"vit_tiny_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224"}
        app.screen.query_one("#kind", Select).value = "all"
        await pilot.click("#fusable")
        await pilot.pause()
        assert "levit_128" not in names(app) and len(names(app)) == 11


async def test_sort_by_column(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        app.screen.set_sort("params")
        await pilot.pause()
        assert names(app)[0] == "mobilenetv3_small_100"
        assert names(app)[-1] == "legacy_senet154"  # unknown params sort last
        app.screen.set_sort("params")  # again: descending, unknown still last
        await pilot.pause()
        assert names(app)[0] == "mixer_b16_224" and names(app)[-1] == "legacy_senet154"
        await pilot.press("ctrl+o")  # cycles to the next column (letters search)
        assert app.screen.sort_key == "input_size"


async def test_ctrl_t_and_ctrl_s_choose_the_pair_shown_in_header(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press(*"swin", "ctrl+t")  # typing on the table searches; ctrl+t picks from the box
        await pilot.press(*"resnet18", "ctrl+s")  # the pick ended that search: this is a new one
        await pilot.pause()
        assert (app.teacher, app.student) == ("swin_tiny_patch4_window7_224", "resnet18")
        assert app.screen.query_one("#search", Input).value == "resnet18"
        header = str(app.screen.query_one("PairHeader").render())
        assert "swin_tiny_patch4_window7_224" in header and "resnet18" in header
        await pilot.press("3")  # the header follows to other screens
        await pilot.pause()
        assert "resnet18" in str(app.screen.query_one("PairHeader").render())


async def test_missing_engine_shows_error(monkeypatch, workdir) -> None:
    monkeypatch.setenv("FBT_ENGINE", "/nonexistent/fbt-engine")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        err = app.screen.query_one("#catalog-error", Static)
        await wait_for(pilot, lambda: not err.has_class("hidden"), what="error")
        text = str(err.render())
        assert "was not found" in text and "FBT_ENGINE" in text
