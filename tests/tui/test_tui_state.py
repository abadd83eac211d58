"""The one app state: the pair, input size and kwargs in one place; model changes clear what
belonged to the old model; loading a preset sets the pair (asking first when a pair was picked);
the header, Preview and Configure all show it; saving keeps the file's comments."""

from __future__ import annotations

import difflib
import shutil
import tomllib
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from fbt_engine.config import RunConfig, from_dict, to_dict
from fbt_tui.screens.preview import Key, fuse_args
from fbt_tui.state import (AppState, changed_keys, choose, edit, keep_pair, loaded_state, pair_conflict,
                           preset_keys, preset_text, reset, toml_text)
from tui_helpers import SIZE, make_app, wait_for

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "presets" / "quickstart.toml"


def quickstart() -> AppState:
    text = QUICKSTART.read_text(encoding="utf-8")
    return loaded_state(QUICKSTART, tomllib.loads(text), text)


# --- pure transitions -------------------------------------------------------------------------

def test_state_reads_the_pair_size_and_kwargs() -> None:
    s = quickstart()
    assert (s.teacher, s.student, s.img_size) == ("resnet18", "vit_tiny_patch16_224", 32)
    assert s.kwargs("student") == {"patch_size": 8} and s.kwargs("teacher") == {}
    assert s.changes == [] and AppState().img_size == 32  # no preset: the engine default


def test_a_model_change_clears_and_flags_what_belonged_to_the_old_model() -> None:
    s = choose(quickstart(), "student", "mixer_s16_224")
    assert s.data["student"] == {"model": "mixer_s16_224"}  # patch_size 8 was the ViT's
    assert s.flags == ("student.kwargs cleared: {patch_size = 8} was set for vit_tiny_patch16_224",)
    s = choose(s, "teacher", "resnet50")
    assert "checkpoint" not in s.data["teacher"] and s.data["teacher"]["train"] == {"epochs": 4, "lr": 2e-3}
    assert any(f.startswith("teacher.checkpoint cleared") for f in s.flags)
    assert s.changes == ["student.kwargs", "student.model", "teacher.checkpoint", "teacher.model"]
    back = choose(choose(s, "student", "vit_tiny_patch16_224"), "teacher", "resnet18")
    assert back.data == quickstart().data and back.flags == ()  # picked back: restored
    typed = edit(quickstart(), "student.model", "deit_tiny_patch16_224")  # Configure's field: same rule
    assert "kwargs" not in typed.data["student"] and typed.picked == {"student"}


def test_edit_and_reset_keys() -> None:
    s = edit(quickstart(), "train.threads", 1)
    assert s.value("train.threads") == 1 and s.changes == ["train.threads"]
    s = reset(s, "student.kwargs")
    assert s.kwargs("student") == {} and s.changes == ["student.kwargs", "train.threads"]
    assert reset(edit(AppState(), "fusion.split", 2), "fusion.split").data == {}  # empty tables go too


def test_pair_conflict_only_for_pairs_picked_by_hand() -> None:
    preset = quickstart().data
    assert pair_conflict(loaded_state(None, {"student": {"model": "resnet50"}}), preset) == []  # not by hand
    picked = choose(choose(AppState(), "teacher", "resnet18"), "student", "mixer_s16_224")
    assert pair_conflict(picked, preset) == ["student"]  # the teacher is the same
    kept = keep_pair(quickstart(), picked, ["student"])
    assert kept.student == "mixer_s16_224" and "kwargs" not in kept.data["student"]
    assert kept.teacher == "resnet18" and kept.data["teacher"]["checkpoint"]  # same teacher: its checkpoint stays


def test_every_preset_key_is_listed() -> None:
    listed = set(preset_keys())
    resolved = set(changed_keys({}, to_dict(RunConfig())))
    assert resolved <= listed  # every key of a resolved config
    assert {"teacher.train.epochs", "train.threads", "train.max_steps_per_epoch", "seed", "student.kwargs"} <= listed
    assert not any(k.startswith("student.train.") for k in listed)  # only the teacher trains first


def test_toml_text_reads_back() -> None:
    for value in (1, 1e-5, "a \"b\"", [1, 2], {"patch_size": 8, "a-b": "x", "nce/t->f": 0.5}, True, []):
        assert tomllib.loads(f"x = {toml_text(value)}")["x"] == value


# --- saving: only what differs, comments kept -----------------------------------------------------

def diff(a: str, b: str) -> list[str]:
    return [line for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_saving_quickstart_unchanged_writes_the_same_text() -> None:
    assert preset_text(quickstart()) == QUICKSTART.read_text(encoding="utf-8")


def test_saving_quickstart_changes_one_key_and_keeps_every_comment() -> None:
    original = QUICKSTART.read_text(encoding="utf-8")
    text = preset_text(edit(quickstart(), "train.epochs", 3))
    assert diff(original, text) == ["-epochs = 8", "+epochs = 3"]
    comments = [line for line in original.splitlines() if line.startswith("#")]
    assert comments and all(line in text.splitlines() for line in comments)


def test_saving_adds_only_keys_that_differ_from_the_defaults() -> None:
    original = QUICKSTART.read_text(encoding="utf-8")
    s = edit(edit(edit(quickstart(), "train.threads", 1), "fusion.split", 3), "fusion.order", "teacher-first")
    text = preset_text(s)
    assert diff(original, text) == ["+threads = 1", "+", "+[fusion]", '+order = "teacher-first"']  # split 3 = default
    assert "seed = 0" in text  # in the file already, equal to the default: left alone
    s = choose(quickstart(), "student", "mixer_s16_224")
    assert diff(original, preset_text(s)) == ['-model = "vit_tiny_patch16_224"', "-kwargs = { patch_size = 8 }",
                                              '+model = "mixer_s16_224"']
    cfg = from_dict(tomllib.loads(preset_text(s)))
    assert cfg.student.kwargs == {} and cfg.student.model == "mixer_s16_224"


def test_saving_without_a_file_writes_only_what_differs() -> None:
    s = edit(edit(choose(choose(AppState(), "teacher", "resnet18"), "student", "vit_tiny_patch16_224"),
                  "train.epochs", 3), "data.img_size", 32)  # 3 and 32 are the defaults
    pair = {"teacher": {"model": "resnet18"}, "student": {"model": "vit_tiny_patch16_224"}}
    assert tomllib.loads(preset_text(s)) == pair


# --- the app: header, preset load, preview ---------------------------------------------------------

pytestmark_async = pytest.mark.asyncio


@pytestmark_async
async def test_preset_option_sets_the_header_pair_at_once(fake_engine, workdir) -> None:
    shutil.copy(QUICKSTART, workdir / "quickstart.toml")
    app = make_app(preset="quickstart.toml")
    async with app.run_test(size=SIZE) as pilot:
        header = str(app.screen.query_one("PairHeader").render())
        assert "resnet18" in header and "vit_tiny_patch16_224 {patch_size = 8}" in header and "img 32" in header
        assert "preset quickstart.toml" in header
        await pilot.press("f3")
        assert app.screen.query_one("#f-student-kwargs", Input).value == "{patch_size = 8}"


@pytestmark_async
@pytest.mark.parametrize(("answer", "student", "kwargs"), [("mine", "mixer_b16_224", {}),
                                                           ("preset", "vit_tiny_patch16_224", {"patch_size": 8})])
async def test_loading_a_preset_after_picking_a_pair_asks(fake_engine, workdir, answer, student, kwargs) -> None:
    """The reported case: resnet18/mixer picked, then quickstart loaded."""
    shutil.copy(QUICKSTART, workdir / "quickstart.toml")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.teacher, app.student = "resnet18", "mixer_b16_224"  # picked on the catalog
        await pilot.press("f3")
        screen = app.screen
        screen.query_one("#load-path", Input).value = "quickstart.toml"
        screen.set_focus(screen.query_one("#load-path", Input))
        await pilot.press("enter")  # enter loads
        await wait_for(pilot, lambda: app.screen.query(f"#{answer}"), what="the pair question")
        assert "mixer_b16_224" in str(app.screen.query_one("#question", Static).render())
        await pilot.click(f"#{answer}")
        await wait_for(pilot, lambda: app.state.path is not None, what="loaded")
        assert (app.teacher, app.student) == ("resnet18", student)
        assert app.state.kwargs("student") == kwargs
        status = str(screen.query_one("#config-status", Static).render())
        if answer == "mine":
            assert "student.kwargs cleared: {patch_size = 8} was set for vit_tiny_patch16_224" in status
            assert app.state.data["teacher"]["checkpoint"]  # the teacher is the preset's: it keeps it
        else:
            assert "cleared" not in status


@pytestmark_async
async def test_preview_shows_the_model_the_run_trains(fake_engine, workdir, monkeypatch) -> None:
    shutil.copy(QUICKSTART, workdir / "quickstart.toml")
    calls = workdir / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    app = make_app(preset="quickstart.toml")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        screen = app.screen
        await wait_for(pilot, lambda: screen.shown_key is not None, what="preview")
        key = screen.shown_key
        assert (key.teacher, key.student, key.img_size) == ("resnet18", "vit_tiny_patch16_224", 32)
        assert key.fields()["student_kwargs"] == {"patch_size": 8}
        assert screen.query_one("#img-size", Input).value == "32"
        assert "student kwargs {patch_size = 8}" in str(screen.query_one("#preview-model", Static).render())
        screen.query_one("#img-size", Input).value = "48"  # edited here, seen everywhere
        await wait_for(pilot, lambda: screen.shown_key.img_size == 48, what="img 48")
        assert app.state.value("data.img_size") == 48 and "img 48" in str(screen.query_one("PairHeader").render())
        await pilot.press("f3")
        assert app.screen.query_one("#f-data-img-size", Input).value == "48"
    fuses = [line for line in calls.read_text().splitlines() if line.startswith("fuse")]
    assert '--student-kwargs {"patch_size": 8}' in fuses[0] and "--img-size 32" in fuses[0]


def test_fuse_args_carry_what_the_run_builds() -> None:
    key = Key("resnet18", "vit_tiny_patch16_224", 32, "auto", 3, 2, "swin", "{}", '{"patch_size": 8}')
    assert fuse_args(key) == ["fuse", "resnet18", "vit_tiny_patch16_224", "--json", "--img-size", "32", "--order",
                              "auto", "--split", "3", "--depth", "2", "--mixer", "swin",
                              "--student-kwargs", '{"patch_size": 8}']
