"""Nothing lost: the TUI under faults.

The engine dies (SIGKILL, SIGSEGV, an orphan holding its pipes); the stream and events.jsonl carry
garbage; 1,000 events/s for 30 s; a run folder is deleted while watched; the TUI itself is
SIGKILLed while its run goes on. Each time the UI says what happened and nothing hangs or leaks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import DataTable, Log, ProgressBar, Static

from fbt_engine.events import Event, decode, encode, read_events
from fbt_tui import runs as runs_module
from fbt_tui.engine_client import LineSplitter, RunSession
from fbt_tui.messages import StartRun
from fbt_tui.run_state import HISTORY_POINTS, LOG_LINE_CHARS, RECENT_POINTS, RunState, Series, exit_message, replay
from fbt_tui.runs import scan_runs
from fbt_tui.screens.run import error_text, status_text
from fake_engine import MALFORMED, TORN
from tui_helpers import SIZE, kill_leftovers, make_app, runs_screen, wait_for

REPO = Path(__file__).resolve().parents[2]
MAX_POINTS = 2 * RECENT_POINTS + HISTORY_POINTS  # what one chart line may hold, at most


def text_of(app, selector: str) -> str:  # type: ignore[no-untyped-def]
    return str(app.screen.query_one(selector, Static).render())


async def start(pilot, workdir, scenario: str, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FBT_FAKE_SCENARIO", scenario)
    pilot.app.post_message(StartRun(workdir / "quick.toml", "quick"))
    await wait_for(pilot, lambda: pilot.app.session is not None and pilot.app.current_mode == "run", what="run")
    return pilot.app.session


def fold(lines: list[bytes], state: RunState | None = None) -> RunState:
    state = state or RunState()
    for raw in lines:
        item = decode(raw.decode("utf-8", "replace"))
        if item is not None:
            state.apply(item)
    return state


def plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def good(type: str, **data) -> bytes:  # type: ignore[no-untyped-def]
    return encode(Event(type=type, run="r", t=1.0, data=data)).encode()


GOOD_START = [good("started", teacher="t", student="s", method="fbt", device="cpu", pid=1),
              good("phase", phase="distill", epochs=2, steps_per_epoch=5),
              good("step", phase="distill", epoch=1, step=1, loss=2.0, terms={"ce": 2.0})]


# --- the pure fold ------------------------------------------------------------------------------

def test_exit_codes_in_words() -> None:
    assert "killed by SIGKILL (signal 9), possibly out of memory" in exit_message(-9)
    assert "killed by SIGSEGV (signal 11), a crash in native code" in exit_message(-11)
    assert "128+9: killed by SIGKILL" in exit_message(137)  # a shell wrapper's way of saying it
    assert exit_message(1) == "the engine exited with code 1 without a final event: an unhandled error (see stderr)"
    assert exit_message(3) == "the engine exited with code 3 without a final event"


def test_fold_survives_every_malformed_line() -> None:
    state = fold(GOOD_START)
    for raw in [*MALFORMED, TORN]:
        fold([raw], state)  # one at a time: none of them may raise
    fold([good("step", phase="distill", epoch=1, step=4, loss=1.0, terms={"ce": 1.0})], state)
    assert (state.status, state.step, state.epochs, state.steps_per_epoch) == ("running", 4, 2, 5)
    assert state.losses["ce"] == ([1.0, 4.0], [2.0, 1.0]) and set(state.losses) == {"total", "ce"}
    assert state.accs == {} and state.pid == 1 and state.t == 1.0
    log = list(state.log)
    assert "garbage text, not json at all" in log and "invalid utf-8: \ufffd\ufffd\ufffd( end" in log
    assert any(line.endswith("(998001 more characters)") for line in log)  # the 1 MB line, cut
    assert "\ufffd[2J\ufffd[31mterminal escapes\ufffd" in log  # no escape reaches the terminal
    assert "[warn] {'a': 1}" in log and TORN.decode() in log
    assert "ignored a step event without a numeric step" in log
    assert max(map(len, log)) < LOG_LINE_CHARS + 50


def test_fold_of_malformed_final_and_start_events() -> None:
    state = fold([good("started", pid="abc", teacher=None, resumed="yes"),
                  good("finished", reason="completed", best=[1], duration_s="abc")])
    assert state.status == "completed" and state.pid is None and state.best_top1 is None
    assert "took" not in status_text(state)
    state = fold([good("started", pid=10**30, teacher="[/b]", student="[bold]x"),
                  good("failed", message=123, hint=["[/]"])])
    assert state.status == "failed" and state.error == "123"
    # Text from the run is escaped, so it shows as written instead of breaking the markup.
    assert "[/b] -> [bold]x" in plain(status_text(state)) and "hint: ['[/]']" in plain(error_text(state))
    assert not runs_module.pid_alive(state.pid)  # a pid that cannot exist is not "running"


def test_line_splitter_cuts_long_lines_and_joins_halves() -> None:
    split = LineSplitter(limit=10)
    assert split.feed(b"abc") == [] and split.feed(b"def\n" + b"x" * 25) == [b"abcdef"]
    assert split.feed(b"yyy\nshort\ntorn") == [b"x" * 10, b"short"] and split.rest() == b"torn"


def test_series_is_bounded_and_keeps_the_whole_run() -> None:
    series = Series()
    for i in range(100_000):
        series.append(float(i), float(i % 7))
    xs, ys = series
    assert len(xs) == len(ys) <= MAX_POINTS
    assert xs[0] == 0.0 and xs[-RECENT_POINTS:] == [float(i) for i in range(99_000, 100_000)]
    history = xs[:series._hist]
    assert len(set(b - a for a, b in zip(history, history[1:]))) == 1  # evenly thinned
    assert history[-1] > 90_000  # and reaching up to the recent window


def test_fold_memory_is_bounded() -> None:
    """30,000 step events: the state holds capped series and a capped log, so memory plateaus."""
    lines = [good("step", phase="distill", epoch=1, step=i, loss=1.0 / i, terms={"ce": 0.5, "kd": 0.25},
                  lr=1e-3) for i in range(1, 30_001)]
    items = [decode(line.decode()) for line in lines]
    state = RunState()
    tracemalloc.start()
    try:
        for item in items[:10_000]:
            state.apply(item)
        early = tracemalloc.get_traced_memory()[0]
        for item in items[10_000:]:
            state.apply(item)
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert state.step == 30_000 and all(len(s.xs) <= MAX_POINTS for s in state.losses.values())
    assert late - early < 256 * 1024, (early, late)


# --- the engine dies ----------------------------------------------------------------------------

async def crash_shows(pilot, session, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """The run ended as crashed, the error box explains it, and the progress bar is at rest."""
    await wait_for(pilot, lambda: session.ended, timeout=20, what="the end of the stream")
    app = pilot.app
    app.screen.redraw(force=True)
    await pilot.pause()
    assert session.state.status == "crashed"
    box = text_of(app, "#run-error")
    for needle in needles:
        assert needle in box, box
    assert app.screen.query_one("#run-progress", ProgressBar).total is not None  # not animating
    assert "crashed" in text_of(app, "#run-info")


@pytest.mark.asyncio
async def test_engine_killed_by_sigkill(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.2")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir, "normal", monkeypatch)
        try:
            await wait_for(pilot, lambda: session.state.step >= 2, what="steps")
            os.kill(session.proc.pid, signal.SIGKILL)  # as the OOM killer would: the process, not the group
            await crash_shows(pilot, session, "killed by SIGKILL (signal 9), possibly out of memory",
                              "stderr: run quick in runs/quick")
            assert session.returncode == -9
        finally:
            kill_leftovers(app)


@pytest.mark.asyncio
async def test_engine_segfault(fake_engine, workdir, monkeypatch) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir, "segv", monkeypatch)
        try:
            await crash_shows(pilot, session, "killed by SIGSEGV (signal 11), a crash in native code",
                              "about to touch freed memory")
            assert session.returncode == -11 and session.state.step == 9
        finally:
            kill_leftovers(app)


@pytest.mark.asyncio
async def test_orphan_holding_the_pipes_does_not_hang(fake_engine, workdir, monkeypatch) -> None:
    """The engine dies while a worker it started keeps stdout open: the TUI reports the exit anyway."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir, "orphan", monkeypatch)
        try:
            await crash_shows(pilot, session, "killed by SIGKILL", "worker started; now the engine dies")
            assert "stopped reading the engine's pipes" in "\n".join(session.state.log)
        finally:
            kill_leftovers(app)


@pytest.mark.asyncio
async def test_crash_before_any_progress_stops_the_bar(fake_engine, workdir) -> None:
    app = make_app(start_mode="run")
    async with app.run_test(size=SIZE) as pilot:
        state = RunState(name="early", status="running")
        app.session = RunSession(state)
        await pilot.pause(0.4)
        assert app.screen.query_one("#run-progress", ProgressBar).total is None  # unknown: animated
        state.process_exited(-11, [])
        await pilot.pause(0.4)
        assert app.screen.query_one("#run-progress", ProgressBar).total == 1
        assert "it printed nothing on stderr" in text_of(app, "#run-error")


# --- garbage on the stream and in events.jsonl --------------------------------------------------

@pytest.mark.asyncio
async def test_garbage_on_the_stream_and_in_the_file(fake_engine, workdir, monkeypatch) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir, "garbage", monkeypatch)
        try:
            await wait_for(pilot, lambda: session.ended, timeout=30, what="end")
            await pilot.pause(0.4)
        finally:
            kill_leftovers(app)
        live = session.state
        assert live.status == "completed" and session.returncode == 0 and live.step == 24
        assert [len(live.losses[t].xs) for t in ("total", "ce")] == [24, 24]
        assert live.accs["student"][0] == [1.0, 2.0, 3.0] and live.epochs == 3
        shown = "\n".join(app.screen.query_one("#run-log", Log).lines)
        for needle in ("garbage text, not json at all", "more characters)", "[info] joined halves",
                       "[/b] [bold red]rich markup[/] [link=x]", TORN.decode()):
            assert needle in shown, needle
        assert "completed" in text_of(app, "#run-info")

    # The same file, read two other ways, folds to the same state.
    events = workdir / "runs" / "quick" / "events.jsonl"
    tailed = RunState()
    await asyncio.wait_for(RunSession(tailed).tail(events, pid=None), timeout=10)
    for other in (replay(events), tailed):
        assert (other.status, other.step, other.best_top1) == (live.status, live.step, live.best_top1)
        assert other.losses == live.losses and other.accs == live.accs


# --- a run folder deleted while watched ---------------------------------------------------------

@pytest.mark.asyncio
async def test_folder_deleted_while_attached(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        screen.query_one("#runs", DataTable).move_cursor(row=[r.name for r in screen.runs].index("g-live"))
        await pilot.press("a")
        await wait_for(pilot, lambda: app.session is not None and app.session.state.step == 12, what="tail")
        shutil.rmtree(canned_runs / "g-live")
        await wait_for(pilot, lambda: app.session.ended, what="tail gives up")
        await pilot.pause(0.4)
        assert app.session.state.status == "lost"
        assert "was deleted while it was being watched" in text_of(app, "#run-error")
        screen = await runs_screen(pilot)  # the list is rescanned: the folder is gone from it
        assert "g-live" not in [r.name for r in screen.runs]


@pytest.mark.asyncio
async def test_runs_list_with_folders_deleted_under_it(fake_engine, canned_runs) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot)
        table = screen.query_one("#runs", DataTable)
        table.move_cursor(row=[r.name for r in screen.runs].index("c-fbt"))
        shutil.rmtree(canned_runs / "c-fbt")
        await pilot.press("enter")  # a stale row: say so, stay here
        await pilot.pause(0.2)
        assert app.current_mode == "runs" and app.session is None
        assert any("is gone (deleted?)" in str(n.message) for n in app._notifications)
        await pilot.press("g")
        await wait_for(pilot, lambda: table.row_count == 6, what="rescan")
        shutil.rmtree(canned_runs)
        await pilot.press("g")
        await wait_for(pilot, lambda: table.row_count == 0, what="empty rescan")


def test_scan_leaves_out_a_folder_deleted_mid_scan(canned_runs, monkeypatch) -> None:
    real = runs_module.replay

    def vanishing(path):  # type: ignore[no-untyped-def]
        if path.parent.name == "b-kd":
            shutil.rmtree(path.parent)
        return real(path)

    monkeypatch.setattr(runs_module, "replay", vanishing)
    assert [r.name for r in scan_runs(canned_runs)] == ["a-scratch", "c-fbt", "d-stopped", "e-failed",
                                                        "f-crashed", "g-live"]


# --- a flood ------------------------------------------------------------------------------------

def last_step_on_disk(path: Path) -> int:
    """The step of the last complete step event in events.jsonl (what the engine has emitted)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
        lines = fh.read().split(b"\n")[:-1]
    steps = [json.loads(ln)["step"] for ln in lines if b'"type":"step"' in ln and ln.startswith(b"{")]
    return steps[-1] if steps else 0


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.asyncio
async def test_flood_of_1000_events_per_second(fake_engine, workdir, monkeypatch) -> None:
    """30 s at 1,000 step events/s: the state and the screen stay within 1 s of the stream, and the
    memory of the TUI process plateaus (the series are capped)."""
    rate, seconds = 1000, 30
    monkeypatch.setenv("FBT_FAKE_RATE", str(rate))
    monkeypatch.setenv("FBT_FAKE_SECONDS", str(seconds))
    app = make_app()
    samples: list[tuple[float, int, int, int]] = []  # (t, emitted, folded, shown)
    async with app.run_test(size=SIZE) as pilot:
        session = await start(pilot, workdir, "flood", monkeypatch)
        events = workdir / "runs" / "quick" / "events.jsonl"
        try:
            await wait_for(pilot, lambda: session.state.step >= 2 * rate, what="flood under way")
            rss0, t0 = rss_mb(), time.monotonic()
            while not session.ended:
                await pilot.pause(1.0)
                shown = re.search(r"step (\d+)/", text_of(app, "#run-info"))
                folded, emitted = session.state.step, last_step_on_disk(events)
                samples.append((time.monotonic() - t0, emitted, folded, int(shown.group(1)) if shown else 0))
            rss1 = rss_mb()
        finally:
            kill_leftovers(app)
        state = session.state
        print(f"\nflood: {len(samples)} samples; lag in events (emitted - folded / - shown) "
              f"max {max(e - f for _, e, f, _ in samples[:-1])} / {max(e - s for _, e, _, s in samples[:-1])}; "
              f"RSS {rss0:.1f} -> {rss1:.1f} MB; points per term {len(state.losses['ce'].xs)}")
        assert state.status == "completed" and state.step == rate * seconds
        for _, emitted, folded, shown in samples[:-1]:  # the last one is taken after the end
            assert emitted - folded < rate, samples  # the state is within 1 s of the stream
            assert emitted - shown < rate, samples  # and so is the screen
        assert len(samples) >= seconds // 2
        assert all(len(s.xs) <= MAX_POINTS for s in state.losses.values())
        assert rss1 - rss0 < 40, (rss0, rss1)


# --- the TUI is SIGKILLed; its run is not -------------------------------------------------------

def real_engine() -> str | None:
    beside = Path(sys.executable).with_name("fbt-engine")
    return str(beside) if beside.is_file() else shutil.which("fbt-engine")


def outcome(run_dir: Path) -> dict:
    """What must not depend on who watched: step losses, evals, the final reason, the student's bytes."""
    evs = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)]
    steps = [(e.get("phase"), e.get("step"), e.get("loss"), e.get("terms")) for e in evs if e.type == "step"]
    return {"steps": steps, "evals": [e.data for e in evs if e.type == "eval"],
            "final": [(e.type, e.get("reason")) for e in evs if e.type in ("finished", "failed")],
            "student": hashlib.sha256((run_dir / "student.safetensors").read_bytes()).hexdigest()}


async def wait_file_final(run_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "events.jsonl").is_file() and (f := read_events(run_dir / "events.jsonl")) and \
                getattr(f[-1], "type", "") in ("finished", "failed"):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{run_dir} never finished")


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(real_engine() is None, reason="fbt-engine is not installed")
async def test_run_survives_the_tui_being_sigkilled(tmp_path, monkeypatch) -> None:
    engine = str(real_engine())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FBT_ENGINE": engine,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    preset = REPO / "tests" / "data" / "tiny.toml"
    # The reference: the same deterministic preset, nobody watching, nobody killed.
    reference = subprocess.Popen([engine, "run", str(preset), "--runs-dir", str(tmp_path / "ref")], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_driver.py")), str(preset),
                               str(tmp_path / "runs"), "tiny"], env=env, stdout=subprocess.PIPE, text=True)
    engine_pid = 0
    try:
        line = await asyncio.wait_for(asyncio.to_thread(driver.stdout.readline), timeout=120)
        assert line.startswith("RUNNING"), line
        engine_pid = int(line.split()[1])
        driver.kill()  # SIGKILL: no quit dialog, no detach, no cleanup
        assert driver.wait(10) == -signal.SIGKILL
        run_dir = tmp_path / "runs" / "tiny"

        # A fresh TUI finds the run, live (attach) or already done (replay), and follows it to its end.
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("FBT_ENGINE", engine)
        app = make_app(runs_dir=tmp_path / "runs")
        async with app.run_test(size=SIZE) as pilot:
            screen = await runs_screen(pilot)
            found = screen.runs[0].status
            assert found in ("running", "completed")
            print(f"\nafter the TUI was killed, a fresh one found the run {found} ({'attach' if found == 'running' else 'replay'})")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.session is not None and app.current_mode == "run", what="open")
            await wait_for(pilot, lambda: app.session.state.final is not None, timeout=120, what="run end")
            state = app.session.state
        assert state.status == "completed" and state.final.get("reason") == "completed"

        await wait_file_final(run_dir, 60)
        assert reference.wait(120) == 0
        ours, ref = outcome(run_dir), outcome(tmp_path / "ref" / "tiny")
        assert ours["final"] == [("finished", "completed")] and ours == ref
        assert len(ours["steps"]) > 4 and ours["evals"]
        assert len(state.losses["total"].xs) == len([s for s in ours["steps"] if s[0] != "teacher"])
    finally:
        for proc in (driver, reference):
            if proc.poll() is None:
                proc.kill()
        if engine_pid and runs_module.pid_alive(engine_pid):
            os.kill(engine_pid, signal.SIGKILL)
