"""Helpers for the TUI tests: app factory, waiting, canned run folders (imported by tests)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable


HERE = Path(__file__).parent
FAKE_ENGINE = HERE / "fake_engine.py"
QUICK_PRESET = HERE / "data" / "quick.toml"
SIZE = (120, 40)


def make_app(**kw):  # type: ignore[no-untyped-def]
    from fbt_tui.app import FbtApp

    kw.setdefault("runs_dir", "runs")
    kw.setdefault("sysmon", False)
    return FbtApp(**kw)


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    """Let the app run until `cond()` holds (fails the test after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


# --- canned run folders ---------------------------------------------------------------------

def _events(name: str, method: str, final: str, epochs: int = 3, steps: int = 4, pid: int = 0,
            acc0: float = 40.0) -> list[dict]:
    """Deterministic events for one run: `final` is completed | stopped | failed | none."""
    ev = [{"type": "started", "config": {"method": method}, "method": method,
           "teacher": "swin_tiny_patch4_window7_224", "student": "resnet18", "device": "cpu",
           "world_size": 1, "params": {}, "pid": pid, "resumed": False},
          {"type": "phase", "phase": "distill", "epochs": epochs, "steps_per_epoch": steps}]
    last = epochs if final != "stopped" else epochs - 1
    for epoch in range(1, last + 1):
        for i in range(1, steps + 1):
            step = (epoch - 1) * steps + i
            loss = round(3.0 / (1 + 0.2 * step), 4)
            ev.append({"type": "step", "phase": "distill", "epoch": epoch, "step": step,
                       "steps_per_epoch": steps, "lr": 0.001, "loss": loss,
                       "terms": {"ce": loss, "kd": round(loss / 2, 4)}, "samples_per_s": 500.0,
                       "eta_s": float((epochs * steps - step) * 2)})
        if final == "failed" and epoch == 2:
            ev.append({"type": "failed", "kind": "nan_loss", "message": "loss became NaN at step 8",
                       "hint": "lower train.lr", "step": 8})
            break
        ev.append({"type": "eval", "phase": "distill", "epoch": epoch, "student_top1": acc0 + 10 * epoch,
                   "student_top5": 90.0, "fused_top1": None, "teacher_top1": 92.5})
    if final in ("completed", "stopped"):
        ev.append({"type": "finished", "reason": final, "best": {"epoch": last, "student_top1": acc0 + 10 * last},
                   "last": {"epoch": last, "student_top1": acc0 + 10 * last}, "duration_s": 125.0,
                   "student_path": "student.safetensors"})
    return [{"v": 1, "run": name, "t": round(i * 0.5, 2), **e} for i, e in enumerate(ev)]


def write_run(runs: Path, name: str, method: str, final: str, pid: int = 0, acc0: float = 40.0) -> Path:
    run_dir = runs / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(
        f'name = "{name}"\nmethod = "{method}"\n[student]\nmodel = "resnet18"\n'
        '[teacher]\nmodel = "swin_tiny_patch4_window7_224"\n[train]\nepochs = 3\n', encoding="utf-8")
    lines = [json.dumps(e) for e in _events(name, method, final, pid=pid, acc0=acc0)]
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_dir


def kill_leftovers(app) -> None:  # type: ignore[no-untyped-def]
    """Make sure no engine child outlives its test."""
    session = getattr(app, "session", None)
    if session is not None and session.proc is not None and session.proc.poll() is None:
        try:
            os.killpg(session.proc.pid, 9)
        except ProcessLookupError:
            pass




def catalog_ready(app) -> bool:  # type: ignore[no-untyped-def]
    """The catalog holds both engine answers: names (`--no-counts`) and then parameter counts."""
    table = app.screen.query_one("#models")  # a ModelTable (fbt_tui/widgets/model_table.py)
    return table.has_key("resnet18") and "M" in table.get_row("resnet18")[3]


async def runs_screen(pilot):  # type: ignore[no-untyped-def]
    """Open the Runs screen (f5), wait for its scan, focus its table; returns the screen."""
    from textual.widgets import DataTable
    await pilot.press("f5")
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.query_one("#runs", DataTable).row_count == len(screen.runs) > 0, what="scan")
    screen.query_one("#runs", DataTable).focus()
    return screen


def burst(app, keys) -> None:  # type: ignore[no-untyped-def]
    """Send keys the way a terminal delivers a fast burst: all queued at once, no pause between
    them (Pilot's `press` waits for the app to go idle after every key, which hides races)."""
    from textual import events
    from textual.keys import _character_to_key

    for key in keys:
        if len(key) == 1:
            event = events.Key(key if key.isalnum() else _character_to_key(key), key)
        else:
            event = events.Key(key, None)
        event.set_sender(app)
        app._driver.send_message(event)
