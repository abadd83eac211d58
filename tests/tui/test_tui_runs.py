"""Runs screen: statuses from disk, replay, overlay, resume a stopped run, attach to a live one."""

from __future__ import annotations

import json
import os
import time

import pytest
from textual.widgets import DataTable

from fbt_tui.widgets.charts import Chart
from tui_helpers import SIZE, kill_leftovers, make_app, runs_screen, wait_for, write_run

pytestmark = pytest.mark.asyncio


async def goto(pilot, screen, name: str) -> None:  # type: ignore[no-untyped-def]
    table = screen.query_one("#runs", DataTable)
    table.move_cursor(row=[r.name for r in screen.runs].index(name))
    await pilot.pause()


async def test_table_lists_every_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        table = screen.query_one("#runs", DataTable)
        rows = {str(table.get_row_at(i)[1]): table.get_row_at(i) for i in range(table.row_count)}
        assert rows["c-fbt"][3] == "completed" and rows["c-fbt"][6] == "75.00%" and rows["c-fbt"][7] == "2m05s"
        assert rows["e-failed"][3] == "failed" and rows["g-live"][3] == "running"


async def test_open_replays_charts(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "c-fbt")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "run", what="run screen")
        state = app.session.state
        assert state.status == "completed" and state.accs["student"][1] == [55.0, 65.0, 75.0]
        assert not app.session.live


async def test_overlay_several_runs(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        for name in ("a-scratch", "b-kd", "c-fbt"):
            await goto(pilot, screen, name)
            await pilot.press("space")
        assert screen.marked == {"a-scratch", "b-kd", "c-fbt"}
        drawn: list = []
        chart = screen.query_one("#overlay", Chart)
        original = chart.draw
        chart.draw = lambda series: (drawn.append(series), original(series))  # type: ignore[method-assign]
        await pilot.press("o")
        await wait_for(pilot, lambda: bool(drawn), what="overlay")
        assert [label for label, _, _ in drawn[-1]] == ["a-scratch (scratch)", "b-kd (kd)", "c-fbt (fbt)"]
        assert drawn[-1][2][2] == [55.0, 65.0, 75.0]
        await pilot.press("m")  # loss instead of accuracy
        await wait_for(pilot, lambda: len(drawn) == 2, what="loss overlay")
        assert len(drawn[-1][0][1]) == 12 and chart.xlabel_text == "step"


async def test_resume_a_stopped_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "c-fbt")
        await pilot.press("u")  # a completed run cannot be resumed
        await pilot.pause()
        assert app.current_mode == "runs"
        await goto(pilot, screen, "d-stopped")
        await pilot.press("u")
        await wait_for(pilot, lambda: app.session is not None and app.session.ended, what="resumed run")
        try:
            state = app.session.state
            assert state.status == "completed"
            assert state.accs["student"][0] == [1.0, 2.0, 3.0]  # epochs 1-2 replayed, 3 from the resume
        finally:
            kill_leftovers(app)


async def test_attach_tails_a_live_run(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "g-live")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.session is not None and app.session.state.step == 12, what="tail")
        assert app.session.live and app.session.state.status == "running"
        line = {"v": 1, "type": "finished", "run": "g-live", "t": 99.0, "reason": "completed",
                "best": {"epoch": 3, "student_top1": 70.0}, "duration_s": 99.0}
        with open(canned_runs / "g-live" / "events.jsonl", "a") as fh:  # the engine writes on
            fh.write(json.dumps(line) + "\n")
        await wait_for(pilot, lambda: app.session.ended, what="tail end")
        assert app.session.state.status == "completed"


async def test_attach_notices_a_dead_process(fake_engine, workdir) -> None:
    write_run(workdir / "runs", "ghost", "fbt", "none", pid=os.getpid())
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await runs_screen(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: app.session is not None and app.session.state.step == 12, what="tail")
        from fbt_tui import engine_client
        original = engine_client.pid_alive
        engine_client.pid_alive = lambda pid: False  # type: ignore[assignment]  # the process "dies"
        try:
            await wait_for(pilot, lambda: app.session.ended, what="crash noticed")
        finally:
            engine_client.pid_alive = original
        assert app.session.state.status == "crashed"


# --- date, delete, rename, compare, open outside -------------------------------------------------

async def test_date_column_is_the_run_start(fake_engine, canned_runs) -> None:
    from fbt_tui.runs import format_date
    stamp = 1_700_000_000  # the config.toml of a run is written once, when its folder is made
    os.utime(canned_runs / "b-kd" / "config.toml", (stamp, stamp))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        table = screen.query_one("#runs", DataTable)
        assert [str(c.label) for c in table.ordered_columns][:4] == ["sel", "name", "started", "status"]
        assert table.get_row("b-kd")[2] == format_date(stamp) == time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


async def test_delete_asks_first_and_removes_the_folder(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "b-kd")
        await pilot.press("d")
        await pilot.pause()
        assert type(app.screen).__name__ == "ChoiceModal" and "cannot be undone" in str(
            app.screen.query_one("#question").render())
        await pilot.press("escape")  # cancel: nothing goes
        await pilot.pause()
        assert (canned_runs / "b-kd").is_dir()
        await pilot.press("d")
        await pilot.pause()
        await pilot.click("#delete")
        await wait_for(pilot, lambda: "b-kd" not in [r.name for r in screen.runs], what="rescan")
        assert not (canned_runs / "b-kd").exists() and (canned_runs / "a-scratch").is_dir()


async def test_delete_is_refused_for_a_live_or_locked_run(fake_engine, canned_runs) -> None:
    from fbt_engine.locks import FileLock
    lock = FileLock(canned_runs / "c-fbt" / ".lock")  # an engine resuming c-fbt right now
    assert lock.try_acquire()
    app = make_app()
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await runs_screen(pilot)
            await goto(pilot, screen, "g-live")
            await pilot.press("d")
            await pilot.pause()
            assert app.screen is screen  # no question asked: it is running
            await goto(pilot, screen, "c-fbt")
            await pilot.press("d")
            await pilot.pause()
            await pilot.click("#delete")
            await pilot.pause(0.5)
            assert (canned_runs / "c-fbt" / "events.jsonl").is_file()
    finally:
        lock.release()
    assert (canned_runs / "g-live").is_dir()


async def test_rename_checks_the_name_and_keeps_the_start_date(fake_engine, canned_runs) -> None:
    config = canned_runs / "a-scratch" / "config.toml"
    os.utime(config, (1_700_000_000, 1_700_000_000))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "a-scratch")
        await pilot.press("r")
        await pilot.pause()
        field = app.screen.query_one("#rename-input")
        field.value = "b-kd"  # taken
        await pilot.pause()
        assert "already exists" in str(app.screen.query_one("#rename-why").render())
        field.value = "../elsewhere"
        await pilot.pause()
        assert "path separator" in str(app.screen.query_one("#rename-why").render())
        await pilot.press("enter")  # refused: the box stays
        assert type(app.screen).__name__ == "RenameModal"
        field.value = "a-renamed"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "a-renamed" in [r.name for r in screen.runs], what="rescan")
    moved = canned_runs / "a-renamed" / "config.toml"
    assert not (canned_runs / "a-scratch").exists() and 'name = "a-renamed"' in moved.read_text()
    assert moved.stat().st_mtime == 1_700_000_000  # the start date stays


async def test_compare_selected_runs(fake_engine, canned_runs) -> None:
    config = canned_runs / "b-kd" / "config.toml"
    config.write_text(config.read_text().replace("epochs = 3", "epochs = 5"))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        for name in ("a-scratch", "b-kd"):
            await goto(pilot, screen, name)
            await pilot.press("space")
        await pilot.press("c")
        table = screen.query_one("#compare", DataTable)
        await wait_for(pilot, lambda: table.row_count > 0, what="comparison")
        assert not table.has_class("hidden") and screen.query_one("#overlay").has_class("hidden")
        assert [str(c.label) for c in table.ordered_columns] == ["", "a-scratch", "b-kd"]
        rows = {str(table.get_row_at(i)[0]): table.get_row_at(i)[1:] for i in range(table.row_count)}
        assert rows["method"] == ["scratch", "kd"] and rows["best top-1"] == ["60.00%", "65.00%"]
        assert rows["train.epochs"] == ["3", "5"] and "name" not in rows  # only what differs
        await pilot.press("o")
        assert table.has_class("hidden") and not screen.query_one("#overlay").has_class("hidden")


async def test_editor_and_opener_commands(monkeypatch, tmp_path) -> None:
    from fbt_tui import runs
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", "code --wait")
    assert runs.editor_command(tmp_path / "log.txt") == ["code", "--wait", str(tmp_path / "log.txt")]
    monkeypatch.delenv("EDITOR")
    assert runs.editor_command(tmp_path) is None
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(runs.sys, "platform", "linux")
    assert runs.opener_command(tmp_path) is None  # no desktop (ssh): nothing to open it with
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(runs.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "xdg-open" else None)
    assert runs.opener_command(tmp_path) == ["/usr/bin/xdg-open", str(tmp_path)]


async def test_log_and_config_open_in_the_editor(fake_engine, canned_runs, monkeypatch) -> None:
    """`p` and `v` run $EDITOR in the terminal (the TUI suspended); without one and without a
    desktop, the path is shown and copied instead."""
    import contextlib
    from fbt_tui.screens import runs as runs_screen_module
    ran: list[list[str]] = []
    monkeypatch.setattr(runs_screen_module.subprocess, "run", lambda cmd, check: ran.append(cmd))
    monkeypatch.setenv("EDITOR", "vi")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        monkeypatch.setattr(type(app), "suspend", lambda self: contextlib.nullcontext())
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "c-fbt")
        await pilot.press("p")
        assert ran == [["vi", str((canned_runs / "c-fbt" / "config.toml").resolve())]]
        (canned_runs / "c-fbt" / "log.txt").write_text("log\n")
        await pilot.press("v")
        assert ran[-1] == ["vi", str((canned_runs / "c-fbt" / "log.txt").resolve())]
        monkeypatch.delenv("EDITOR")
        copied: list[str] = []
        monkeypatch.setattr(app, "copy_to_clipboard", copied.append)
        await pilot.press("f")  # no file manager here either: the path is copied
        assert copied == [str((canned_runs / "c-fbt").resolve())] and len(ran) == 2
