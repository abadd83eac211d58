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


async def test_common_keys_have_fields(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        for wid, text, key, value in (("f-train-threads", "1", "train.threads", 1),
                                      ("f-train-max-steps-per-epoch", "5", "train.max_steps_per_epoch", 5),
                                      ("f-seed", "7", "seed", 7),
                                      ("f-teacher-train-epochs", "2", "teacher.train.epochs", 2),
                                      ("f-student-kwargs", "{patch_size = 8}", "student.kwargs", {"patch_size": 8})):
            screen.query_one(f"#{wid}", Input).value = text
            await pilot.pause()
            assert app.state.value(key) == value, key
        screen.query_one("#f-student-kwargs", Input).value = "{patch_size = "  # not TOML yet
        await pilot.pause()
        assert "student.kwargs" in field_error(screen, "f-student-kwargs")


async def test_every_key_is_reachable_in_the_key_editor(fake_engine, workdir) -> None:
    from textual.widgets import DataTable

    from fbt_tui.state import preset_keys

    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        table = screen.query_one("#kv", DataTable)
        assert set(preset_keys()) <= {str(k.value) for k in table.rows}
        assert str(table.get_cell("aug.hflip", "value")) == "0.5" and table.get_cell("aug.hflip", "mark") == "*"
        assert str(table.get_cell("loss.ofa_stages", "value")) == "[1, 2, 3, 4]"  # shown as is, not as markup
        table.move_cursor(row=table.get_row_index("train.grad_clip"))
        screen.set_focus(table)
        await pilot.press("enter")  # edit the highlighted key
        editor = screen.query_one("#kv-edit", Input)
        assert screen.focused is editor and editor.value == "train.grad_clip = 0.0"
        await pilot.press("backspace", "backspace", "backspace", *"5.0", "enter")
        await wait_for(pilot, lambda: app.state.value("train.grad_clip") == 5.0, what="grad_clip")
        assert screen.focused is table  # enter applied it and went back to the list
        assert "train.grad_clip" in str(screen.query_one("#config-status", Static).render())  # named as changed
        editor.value = "aug.hflip = 2"
        screen.set_focus(editor)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "aug.hflip" in str(screen.query_one("#kv-error", Static).render()), what="error")
        assert "between 0 and 1" in str(screen.query_one("#kv-error", Static).render())  # the engine's own check
        editor.value = "aug.hflip ="  # back to the default
        screen.set_focus(editor)  # (enter applied and left the editor)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.state.value("aug.hflip") == 0.0, what="reset")
        assert "hflip" not in app.state.data.get("aug", {}) and screen.query_one("#kv-error").has_class("hidden")
        editor.value = "train.thread = 1"  # a typo: the engine names the nearest key
        screen.set_focus(editor)
        await pilot.press("enter")
        await pilot.pause()
        assert "did you mean `train.threads`" in str(screen.query_one("#config-status", Static).render()) + \
            str(screen.query_one("#kv-error", Static).render())


async def test_save_asks_before_overwriting_and_keeps_comments(fake_engine, workdir) -> None:
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).resolve().parents[2] / "presets" / "quickstart.toml", workdir / "quickstart.toml")
    original = (workdir / "quickstart.toml").read_text(encoding="utf-8")
    app = make_app(preset="quickstart.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        screen.query_one("#f-train-epochs", Input).value = "3"
        await pilot.pause()
        status = str(screen.query_one("#config-status", Static).render())
        assert "1 change(s) to quickstart.toml: train.epochs" in status
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.query("#overwrite"), what="the overwrite question")
        assert "train.epochs" in str(app.screen.query_one("#question", Static).render())
        await pilot.press("enter")  # the focused button is Cancel
        await pilot.pause()
        assert (workdir / "quickstart.toml").read_text(encoding="utf-8") == original
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.query("#overwrite"), what="asked again")
        await pilot.click("#overwrite")
        await wait_for(pilot, lambda: app.state.changes == [], what="saved")
    written = (workdir / "quickstart.toml").read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(original.splitlines(), written.splitlines()) if a != b]
    assert changed == [("epochs = 8", "epochs = 3")] and len(written.splitlines()) == len(original.splitlines())


async def test_enter_in_the_save_box_saves(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        screen = await configure(pilot)
        box = screen.query_one("#save-path", Input)
        screen.set_focus(box)
        await pilot.pause()
        box.value = ""
        await pilot.press(*"mine.toml", "enter")  # a new file: no question
        await wait_for(pilot, lambda: (workdir / "mine.toml").is_file(), what="saved")
        assert str(app.state.path) == "mine.toml"
    assert read_toml(workdir / "mine.toml") == read_toml(workdir / "quick.toml")
