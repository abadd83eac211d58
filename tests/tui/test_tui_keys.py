"""Keys: screen switching never types into a field, type-to-search, bursts lose nothing, `?` help,
the command palette's app actions."""

from __future__ import annotations

import pytest
from textual.binding import Binding
from textual.widgets import Input, Static

from fbt_tui.app import SCREENS, FbtApp, screen_class
from fbt_tui.screens.base import FbtScreen
from fbt_tui.widgets.model_table import ModelTable
from tui_helpers import SIZE, burst, catalog_ready, make_app, wait_for

pytestmark = pytest.mark.asyncio
TEXT = "abc_DEF-0123456789.xyz/qst"  # letters that are bindings elsewhere (q, s, t), digits, punctuation


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    await pilot.pause(0.1)
    await pilot.pause()


async def test_digits_switch_screens_and_never_land_in_a_field(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: catalog_ready(app), what="catalog")
        for key, mode in (("2", "preview"), ("3", "configure"), ("5", "runs"), ("4", "run"), ("1", "catalog")):
            await pilot.press(key)
            assert app.current_mode == mode
        await pilot.press("2")
        img = app.screen.query_one("#img-size", Input)
        app.screen.set_focus(img)
        await pilot.press("1")  # typed: the field has focus (the header says so)
        assert app.current_mode == "preview" and img.value.endswith("1")
        assert "typing in a field" in str(app.screen.query_one("PairHeader").render())
        await pilot.press("escape", "3")  # escape leaves the field, then 3 switches
        assert app.current_mode == "configure"
        app.screen.set_focus(app.screen.query_one("#f-train-epochs", Input))
        await pilot.press("f2")  # F-keys switch from inside a field ...
        assert app.current_mode == "preview"
        await pilot.press("f3")  # ... and coming back, the field no longer has focus
        assert not isinstance(app.screen.focused, Input)
        await pilot.press("1")
        assert app.current_mode == "catalog"
        # The "1" typed in Preview's field went into the state like any edit; no engine is asked
        # for a 1-pixel model, and Configure names the key.
        assert app.state.value("data.img_size") == 1 and app.state.img_size is None


async def test_typing_on_the_catalog_searches_and_never_picks(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: catalog_ready(app), what="catalog")
        search = app.screen.query_one("#search", Input)
        table = app.screen.query_one("#models", ModelTable)
        await pilot.press(*"swin")  # s would have picked a student, t a teacher
        assert search.value == "swin" and (app.teacher, app.student) == ("", "")
        await wait_for(pilot, lambda: table.highlighted == "swin_tiny_patch4_window7_224", what="filter")
        await pilot.press("enter")  # to the results
        assert app.screen.focused is table
        await pilot.press(*"vit_t", "ctrl+s")  # a letter on the table starts a new search
        assert search.value == "vit_t" and app.student == "vit_tiny_patch16_224"
        assert app.screen.focused is table  # the pick ended the search: digits switch again
        await pilot.press("2")
        assert app.current_mode == "preview"


async def test_bursts_into_every_text_field_lose_nothing(fake_engine, workdir) -> None:
    """No pause between keys, as a fast typist or a paste-like burst in a terminal delivers them."""
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: catalog_ready(app), what="catalog")
        # Catalog: type-to-search from the table, then a pick and a new search, all in one burst.
        burst(app, [*"resnet18", "ctrl+t", *"swin_tiny", "ctrl+s", *"resmlp"])
        await settle(pilot)
        assert (app.teacher, app.student) == ("resnet18", "swin_tiny_patch4_window7_224")
        assert app.screen.query_one("#search", Input).value == "resmlp"
        # Preview: the input size.
        await pilot.press("escape", "2")
        img = app.screen.query_one("#img-size", Input)
        app.screen.set_focus(img)
        await pilot.pause()
        burst(app, [*"96", "enter"])
        await settle(pilot)
        await wait_for(pilot, lambda: app.state.value("data.img_size") == 96, what="img 96 in the state")
        # Configure: every text field, one burst each.
        await pilot.press("3")
        screen = app.screen
        for field in screen.query(Input):
            text = TEXT if field.id not in ("f-data-img-size", "f-teacher-kwargs") else "1234567"
            screen.set_focus(field)
            await pilot.pause()
            field.value = ""
            burst(app, list(text))
            await settle(pilot)
            assert field.value == text, field.id
        # A tab inside a burst moves on in order: the rest goes to the next field.
        first, second = screen.query_one("#f-train-epochs", Input), screen.query_one("#f-train-batch-size", Input)
        screen.set_focus(first)
        await pilot.pause()
        burst(app, [*"12", "tab", *"34", "tab", *"1e-4"])
        await settle(pilot)
        assert (first.value, second.value) == ("12", "34")
        assert screen.query_one("#f-train-lr", Input).value == "1e-4"
        await wait_for(pilot, lambda: app.state.value("train.lr") == 1e-4, what="lr in the state")
        assert (app.state.value("train.epochs"), app.state.value("train.batch_size")) == (12, 34)


async def test_help_lists_every_binding(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        text = str(app.screen.query_one("#help-text", Static).render())
        bindings = [*FbtApp.BINDINGS, *FbtScreen.BINDINGS]
        for mode in SCREENS:
            bindings += screen_class(mode).BINDINGS
        for binding in Binding.make_bindings(bindings):
            if not binding.action.startswith("type_to_search"):
                assert (binding.description or binding.action) in text, binding
        assert "type" in text and "ctrl+p" in text
        await pilot.press("escape")
        assert app.current_mode == "catalog" and "help-text" not in [w.id for w in app.screen.query("*")]


async def palette(pilot, query: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.press("ctrl+p")
    await pilot.pause(0.2)
    await pilot.press(*query)
    await pilot.pause(0.5)
    await pilot.press("enter")
    await pilot.pause(0.3)


async def test_command_palette_runs_the_apps_actions(fake_engine, workdir) -> None:
    (workdir / "presets").mkdir()
    (workdir / "presets" / "other.toml").write_text((workdir / "quick.toml").read_text(), encoding="utf-8")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: catalog_ready(app), what="catalog")
        await palette(pilot, "go to configure")
        assert app.current_mode == "configure"
        await palette(pilot, "teacher resnet50")
        assert app.teacher == "resnet50"
        await palette(pilot, "load preset presets/other")
        await wait_for(pilot, lambda: app.screen.query("#preset"), what="the pair question")  # resnet50 was picked
        await pilot.click("#preset")
        await wait_for(pilot, lambda: str(app.state.path) == "presets/other.toml", what="loaded")
        assert app.teacher == "swin_tiny_patch4_window7_224"
        await palette(pilot, "save preset")  # Configure's save: the file exists, so it asks
        await wait_for(pilot, lambda: app.screen.query("#overwrite"), what="the overwrite question")
        await pilot.press("escape")
        await palette(pilot, "compare runs")
        assert app.current_mode == "runs"
        await palette(pilot, "help every key")
        assert "HelpScreen" in type(app.screen).__name__
