"""Sweeps on the Runs screen: one group row with its cells under it, the results table (mean ± std
per grid point, from fbt_engine.sweep.aggregate), the overlay of its cells, resume and delete; and
the "sweep methods" command launching `fbt-engine compare` in the background."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, SelectionList

from fbt_engine import config as C
from fbt_tui.runs import scan_all, scan_runs
from fbt_tui.sweeps import SweepSummary, launch, results_table, summarize_sweep, sweep_pid, sweep_status
from fbt_tui.widgets.charts import Chart
from fbt_tui.widgets.modals import ChoiceModal, SweepModal
from tui_helpers import QUICK_PRESET, SIZE, make_app, runs_screen, wait_for, write_run


METHODS = ["scratch", "kd", "fbt"]
# cell -> (final event, acc0): best student top-1 = acc0 + 30 after 3 epochs (acc0 + 20 when stopped)
LIVE = {"scratch_s0": ("completed", 30.0), "scratch_s1": ("completed", 32.0), "kd_s0": ("completed", 35.0),
        "kd_s1": ("stopped", 40.0), "fbt_s0": ("none", 40.0)}  # fbt_s1: not started yet


def write_sweep(runs: Path, name: str, cells: dict[str, tuple[str, float]], pid: int = 0) -> Path:
    """A sweep folder as `fbt-engine compare --methods scratch,kd,fbt --seeds 0,1` leaves it: the
    manifest and one run folder per started cell (its `finished` event with best_eval/last_eval)."""
    folder = runs / name
    folder.mkdir(parents=True)
    base = C.to_dict(C.load_preset(str(QUICK_PRESET), []))
    manifest = {"version": 1, "source": "quick.toml", "base": base, "grid": [{"key": "method", "values": METHODS}],
                "seeds": [0, 1], "jobs": 1,
                "cells": [{"name": f"{m}_s{s}", "overrides": [["method", m], ["seed", str(s)]]}
                          for m in METHODS for s in (0, 1)]}
    (folder / "sweep.json").write_text(json.dumps(manifest), encoding="utf-8")
    for cell, (final, acc0) in cells.items():
        run_dir = write_run(folder, cell, cell.split("_")[0], final, pid=pid, acc0=acc0)
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        for ev in events:
            if ev["type"] == "finished":
                best = ev["best"]["student_top1"]
                ev["best_eval"] = ev["last_eval"] = {"epoch": ev["best"]["epoch"], "student_top1": best,
                                                     "fused_top1": best + 2.0, "teacher_top1": 92.5}
        (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return folder


@pytest.fixture
def sweeps(workdir: Path) -> Path:
    """runs/ with one plain run, a running sweep (fbt_s0 claims this process's pid) and a stopped one."""
    runs = workdir / "runs"
    write_run(runs, "a-scratch", "scratch", "completed", acc0=30.0)
    write_sweep(runs, "quick-compare", LIVE, pid=os.getpid())
    write_sweep(runs, "old-compare", {"scratch_s0": ("completed", 30.0), "kd_s0": ("stopped", 35.0)})
    return runs


def engine_calls(calls: Path, command: str) -> list[list[str]]:
    """The engine commands the TUI ran (FBT_FAKE_CALLS) that start with `command`."""
    lines = calls.read_text(encoding="utf-8").splitlines() if calls.is_file() else []
    return [line.split() for line in lines if line.startswith(command + " ")]


def row_of(screen, key: str) -> list:  # type: ignore[no-untyped-def]
    return [str(c) for c in screen.query_one("#runs", DataTable).get_row(key)]


async def goto(pilot, screen, key: str) -> None:  # type: ignore[no-untyped-def]
    screen.query_one("#runs", DataTable).move_cursor(row=[r.key for r in screen.runs].index(key))
    await pilot.pause()


# --- reading sweep folders (no app) -----------------------------------------------------------

def test_scan_groups_cells_under_their_sweep(sweeps: Path) -> None:
    rows = scan_all(sweeps)
    assert [r.key for r in rows] == ["a-scratch", "old-compare", "old-compare/scratch_s0", "old-compare/kd_s0",
                                     "quick-compare", "quick-compare/scratch_s0", "quick-compare/scratch_s1",
                                     "quick-compare/kd_s0", "quick-compare/kd_s1", "quick-compare/fbt_s0"]
    live = rows[4]
    assert isinstance(live, SweepSummary) and (live.status, live.progress, live.grid) == \
        ("running", "3/6 completed", "method x 2 seeds")
    assert live.pair == "swin_tiny_patch4_window7_224 -> resnet18"
    assert sweep_pid(live) is None  # fbt_s0's parent (pytest's) is no fbt-engine sweep: never signalled
    assert (rows[1].status, rows[1].progress) == ("stopped", "1/6 completed")
    assert [r.name for r in scan_runs(sweeps)] == ["a-scratch"]  # a sweep folder is no run of its own
    (sweeps / "quick-compare" / "fbt_s1").mkdir()  # the engine made the cell's folder, no event yet
    (sweeps / "quick-compare" / "fbt_s1" / "config.toml").write_text('name = "fbt_s1"\n')
    assert [c.status for c in summarize_sweep(sweeps / "quick-compare").cells][-1] == "starting"


def test_launch_detaches_the_sweep(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "s.log"
    code = "import os, sys; print('own session', os.getsid(0) == os.getpid(), file=sys.stderr)"
    proc = launch([sys.executable, "-c", code], log)
    assert proc.wait(timeout=30) == 0
    assert "own session True" in log.read_text()  # it survives the TUI, and Ctrl+C never reaches it


def test_sweep_status_rule() -> None:
    assert sweep_status(["completed", "completed"], False) == "completed"
    assert sweep_status(["completed", "running", "pending"], False) == "running"
    assert sweep_status(["completed", "pending"], True) == "running"  # between cells: the process is alive
    assert sweep_status(["completed", "failed", "stopped"], False) == "failed"
    assert sweep_status(["completed", "crashed", "pending"], False) == "stopped"
    assert sweep_status(["pending", "pending"], False) == "stopped"


def test_results_table_is_mean_and_std_over_completed_seeds(sweeps: Path) -> None:
    columns, rows = results_table(summarize_sweep(sweeps / "quick-compare"))
    assert columns == ["method", "seeds done", "student top-1", "vs scratch", "fused top-1", "teacher top-1", "time"]
    # scratch: 60 and 62 -> 61 ± 1.41 (sample std); kd: only s0 completed (65, 4 above scratch's mean);
    # fbt: nothing completed yet
    assert rows == [["scratch", "2/2", "61.00 ± 1.41", "-", "63.00 ± 1.41", "92.50", "125s ± 0s"],
                    ["kd", "1/2", "65.00", "+4.00", "67.00", "92.50", "125s"],
                    ["fbt", "0/2", "-", "-", "-", "-", "-"]]


def test_unreadable_manifest_is_a_row_with_its_reason(workdir: Path) -> None:
    folder = workdir / "runs" / "broken"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text("{not json", encoding="utf-8")
    (sweep,) = scan_all(workdir / "runs")
    assert sweep.status == "unreadable" and "not a readable sweep manifest" in sweep.problem


# --- the Runs screen ----------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_group_row_with_progress_and_cells_under_it(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        group = row_of(screen, "quick-compare")
        assert group[1] == "▾ quick-compare" and group[3] == "running 3/6" and group[5] == "method x 2 seeds"
        assert row_of(screen, "old-compare")[3] == "stopped 1/6"
        assert row_of(screen, "quick-compare/kd_s1")[1:4:2] == ["├ kd_s1", "stopped"]
        assert row_of(screen, "quick-compare/fbt_s0")[1:4:2] == ["└ fbt_s0", "running"]
        assert "1 runs, 2 sweeps" in str(screen.query_one("#runs-dir").render())


@pytest.mark.asyncio
async def test_enter_on_a_sweep_shows_its_table_and_overlay(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        drawn: list = []
        chart = screen.query_one("#overlay", Chart)
        original = chart.draw
        chart.draw = lambda series: (drawn.append(series), original(series))  # type: ignore[method-assign]
        await goto(pilot, screen, "quick-compare")
        await pilot.press("enter")
        table = screen.query_one("#sweep-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3 and bool(drawn), what="sweep table and overlay")
        assert app.current_mode == "runs" and not table.has_class("hidden")
        assert [str(c) for c in table.get_row_at(1)] == ["kd", "1/2", "65.00", "+4.00", "67.00", "92.50", "125s"]
        assert [label for label, _, _ in drawn[-1]] == ["scratch_s0 (scratch)", "scratch_s1 (scratch)", "kd_s0 (kd)",
                                                        "kd_s1 (kd)", "fbt_s0 (fbt)"]
        assert drawn[-1][0][2] == [40.0, 50.0, 60.0]  # scratch_s0's student top-1 per epoch


@pytest.mark.asyncio
async def test_e_folds_and_unfolds_a_sweeps_cells(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "quick-compare/kd_s0")
        await pilot.press("e")  # on a cell: folds its sweep
        keys = [r.key for r in screen.runs]
        assert not any(k.startswith("quick-compare/") for k in keys) and "old-compare/kd_s0" in keys
        assert row_of(screen, "quick-compare")[1] == "▸ quick-compare" and screen.current().key == "quick-compare"
        await pilot.press("g")
        await pilot.pause(0.5)
        assert screen.query_one("#runs", DataTable).row_count == len(keys)  # stays folded across rescans
        await pilot.press("e")
        assert "quick-compare/fbt_s0" in [r.key for r in screen.runs]
        assert row_of(screen, "quick-compare")[1] == "▾ quick-compare"


@pytest.mark.asyncio
async def test_space_on_a_sweep_selects_all_its_cells(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "old-compare")
        await pilot.press("space")
        assert screen.marked == {"old-compare/scratch_s0", "old-compare/kd_s0"}
        assert row_of(screen, "old-compare")[0] == "*" and row_of(screen, "old-compare/kd_s0")[0] == "*"
        assert [r.key for r in screen.chosen()] == ["old-compare/scratch_s0", "old-compare/kd_s0"]
        await pilot.press("space")
        assert screen.marked == set()


@pytest.mark.asyncio
async def test_resume_a_stopped_sweep_launches_engine_resume(fake_engine, sweeps, monkeypatch) -> None:
    calls = sweeps.parent / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "quick-compare")
        await pilot.press("u")  # running: refused
        assert not engine_calls(calls, "resume") and not app.sweep_procs
        await goto(pilot, screen, "old-compare")
        await pilot.press("u")
        await wait_for(pilot, lambda: bool(engine_calls(calls, "resume")), what="engine call")
        assert engine_calls(calls, "resume") == [["resume", "runs/old-compare"]]
        assert app.current_mode == "runs"  # a sweep resumes in the background
        proc = app.sweep_procs[Path("runs/old-compare")]
        await wait_for(pilot, lambda: proc.poll() is not None, what="the fake sweep to finish")
        assert proc.returncode == 0
        await wait_for(pilot, lambda: row_of(screen, "old-compare")[3] == "completed 6/6", what="rescan")


@pytest.mark.asyncio
async def test_delete_a_sweep_asks_then_removes_the_folder(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "quick-compare")
        await pilot.press("d")  # running: refused, no question
        assert not isinstance(app.screen, ChoiceModal)
        await pilot.press("r")  # a sweep is never renamed
        assert (sweeps / "quick-compare").is_dir() and app.screen is screen
        await goto(pilot, screen, "old-compare")
        await pilot.press("d")
        assert isinstance(app.screen, ChoiceModal) and "Delete sweep 'old-compare'" in app.screen.question
        await pilot.click("#delete")
        await wait_for(pilot, lambda: "old-compare" not in [r.key for r in screen.runs], what="rescan")
        assert not (sweeps / "old-compare").exists()
        assert "old-compare/kd_s0" not in [r.key for r in screen.runs]


@pytest.mark.asyncio
async def test_attach_on_a_sweep_watches_its_running_cell(fake_engine, sweeps) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "quick-compare")
        await pilot.press("a")
        await wait_for(pilot, lambda: app.current_mode == "run", what="run screen")
        assert Path(app.session.state.run_dir).resolve() == (sweeps / "quick-compare" / "fbt_s0").resolve()


@pytest.mark.asyncio
async def test_stop_a_sweep_launched_here(fake_engine, sweeps, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.1")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        await goto(pilot, screen, "quick-compare")
        await pilot.press("x")  # running, but its driver is unknown (fbt_s0 claims this test process): refused
        assert "quick-compare" in [r.key for r in screen.runs]
        await goto(pilot, screen, "old-compare")
        await pilot.press("u")
        proc = app.sweep_procs[Path("runs/old-compare")]
        await wait_for(pilot, lambda: row_of(screen, "old-compare")[3].startswith("running")
                       and bool(screen.current().running_cells), what="a running cell")
        await pilot.press("x")
        await wait_for(pilot, lambda: proc.poll() is not None, what="the sweep to stop")
        assert proc.returncode == 130  # stopped, resumable
        await wait_for(pilot, lambda: row_of(screen, "old-compare")[3].startswith("stopped"), what="rescan")


# --- launching a sweep of methods --------------------------------------------------------------

@pytest.mark.asyncio
async def test_sweep_methods_launches_compare_in_the_background(fake_engine, workdir, monkeypatch) -> None:
    calls = workdir / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await app.run_action("sweep_methods")
        await wait_for(pilot, lambda: isinstance(app.screen, SweepModal) and bool(app.screen.query("#sweep-seeds")),
                       what="sweep dialog")
        modal = app.screen
        methods = modal.query_one(SelectionList)
        assert list(methods.selected) == list(C.METHODS)  # every method by default
        methods.deselect_all()
        for m in ("scratch", "fbt"):
            methods.select(m)
        modal.query_one("#sweep-seeds", Input).value = "0,1"
        await pilot.click("#start")
        await wait_for(pilot, lambda: bool(engine_calls(calls, "compare")), what="engine call")
        (argv,) = engine_calls(calls, "compare")
        assert argv == ["compare", "runs/.presets/quick-compare.toml", "--methods", "scratch,fbt", "--seeds", "0,1",
                        "--jobs", "1", "--name", "quick-compare", "--runs-dir", "runs"]
        assert C.load_preset("runs/.presets/quick-compare.toml", []).student.model == "resnet18"
        assert app.current_mode == "runs"
        assert Path("runs/quick-compare") in app.sweep_procs
        screen = app.screen
        await wait_for(pilot, lambda: "quick-compare" in [r.key for r in screen.runs], what="the sweep row")
        await wait_for(pilot, lambda: row_of(screen, "quick-compare")[3] == "completed 4/4", timeout=30,
                       what="the sweep to complete")
        assert [r.key for r in screen.runs if r.key.startswith("quick-compare/")] == \
            ["quick-compare/scratch_s0", "quick-compare/scratch_s1", "quick-compare/fbt_s0", "quick-compare/fbt_s1"]


@pytest.mark.asyncio
async def test_sweep_dialog_refuses_bad_seeds(fake_engine, workdir) -> None:
    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        await app.run_action("sweep_methods")
        await wait_for(pilot, lambda: isinstance(app.screen, SweepModal) and bool(app.screen.query("#sweep-seeds")),
                       what="sweep dialog")
        app.screen.query_one("#sweep-seeds", Input).value = "0,x"
        await pilot.click("#start")
        assert isinstance(app.screen, SweepModal)
        assert "not comma-separated integers" in str(app.screen.query_one("#sweep-why").render())
        assert not app.sweep_procs


@pytest.mark.asyncio
async def test_palette_lists_sweep_methods_and_stopped_sweeps(fake_engine, sweeps) -> None:
    from fbt_tui.commands import FbtCommands

    app = make_app(preset="quick.toml")
    async with app.run_test(size=SIZE) as pilot:
        provider = FbtCommands(app.screen)
        await provider.startup()
        titles = {title: callback for title, callback, _ in provider._actions()}
        assert "Sweep methods..." in titles
        assert "Resume sweep old-compare" in titles and "Resume sweep quick-compare" not in titles  # running
        await titles["Sweep methods..."]()  # app.run_action("sweep_methods"), as the palette runs it
        await wait_for(pilot, lambda: isinstance(app.screen, SweepModal), what="sweep dialog")
