"""Configure screen: load a preset, edit, validate next to the field, save round trip, start a run."""

from __future__ import annotations


import pytest
from textual.widgets import Input, Select, Static

from fbt_engine.config import read_toml
from tui_helpers import SIZE, kill_leftovers, make_app, wait_for

pytestmark = pytest.mark.asyncio


async def configure(pilot):  # type: ignore[no-untyped-def]
    await pilot.press("f3")
    await pilot.pause()
    return pilot.app.screen


def field_error(screen, wid: str) -> str:  # type: ignore[no-untyped-def]
    return str(screen.query_one(f"#e-{wid}", Static).render())


async def test_preset_loads_into_the_form(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        assert screen.query_one("#f-train-epochs", Input).value == "3"
        assert screen.query_one("#f-name", Input).value == "quick"
        assert screen.query_one("#f-method", Select).value == "fbt"
        assert screen.query_one("#f-train-lr", Input).value == "0.001"  # default shown
        assert "valid" in str(screen.query_one("#config-status", Static).render())


async def test_save_round_trip_keeps_untouched_keys(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        screen.query_one("#f-train-epochs", Input).value = "7"
        screen.query_one("#f-name", Input).value = "123"  # stays a string, not an int
        await pilot.pause()
        screen.query_one("#save-path", Input).value = "saved.toml"
        await pilot.press("ctrl+s")
        await pilot.pause()
    data = read_toml(workdir / "saved.toml")
    assert data["train"]["epochs"] == 7 and data["name"] == "123"
    assert data["aug"]["hflip"] == 0.5  # not on the form, survives
    assert data["data"]["img_size"] == 32 and data["train"]["batch_size"] == 32  # untouched, survive
    assert data["teacher"]["model"] == "swin_tiny_patch4_window7_224"


async def test_invalid_values_shown_next_to_field(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        screen.query_one("#f-train-epochs", Input).value = "abc"
        await pilot.pause()
        assert "`train.epochs` in quick.toml must be int" in field_error(screen, "f-train-epochs")
        assert screen.query_one("#f-train-epochs", Input).has_class("invalid")
        screen.query_one("#f-train-epochs", Input).value = "0"
        await pilot.pause()
        assert "must be > 0" in field_error(screen, "f-train-epochs")
        screen.query_one("#f-train-epochs", Input).value = "4"
        await pilot.pause()
        assert field_error(screen, "f-train-epochs") == ""
        screen.query_one("#f-loss-kd", Input).value = "-1"
        await pilot.pause()
        assert "loss.kd" in field_error(screen, "f-loss-kd")
        screen.query_one("#save-path", Input).value = "bad.toml"
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert not (workdir / "bad.toml").exists()  # an invalid preset is never written


async def test_empty_form_names_missing_student(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        assert "`student.model` is missing" in field_error(screen, "f-student-model")
        app.student, app.teacher = "resnet18", "swin_tiny_patch4_window7_224"  # chosen on the catalog
        await pilot.pause()
        assert screen.query_one("#f-student-model", Input).value == "resnet18"
        assert field_error(screen, "f-student-model") == ""


async def test_load_missing_file_shows_engine_message(fake_engine, workdir) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        screen.query_one("#load-path", Input).value = "nope.toml"
        await pilot.click("#load")
        await pilot.pause()
        assert "does not exist" in str(screen.query_one("#config-status", Static).render())


async def test_start_run_spawns_engine_and_shows_run(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await configure(pilot)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.session is not None, what="session")
        try:
            await wait_for(pilot, lambda: app.session.state.status == "completed", what="completed")
            assert app.current_mode == "run"
            assert (workdir / "runs" / "quick" / "events.jsonl").is_file()
            assert (workdir / "runs" / ".presets" / "quick.toml").is_file()
            await pilot.press("f3", "ctrl+r")  # same name again: a fresh folder, not an overwrite
            await wait_for(pilot, lambda: app.session.state.name == "quick-2", what="second run")
            await wait_for(pilot, lambda: app.session.state.status == "completed", what="completed 2")
        finally:
            kill_leftovers(app)
