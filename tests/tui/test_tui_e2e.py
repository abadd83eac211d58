"""End to end: the TUI starts the REAL engine (`fbt-engine run`) on a tiny preset and sees `finished`.

Skipped until `fbt-engine run` exists. Slow (trains a tiny teacher and student on CPU).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fbt_engine.config import apply_overrides, read_toml
from fbt_tui.messages import StartRun
from tui_helpers import SIZE, kill_leftovers, make_app, wait_for

REPO = Path(__file__).resolve().parents[2]


def engine_exe() -> str | None:
    """`fbt-engine` on PATH, else next to this interpreter (a venv used without activating it)."""
    sibling = Path(sys.executable).parent / "fbt-engine"
    return shutil.which("fbt-engine") or (str(sibling) if sibling.is_file() else None)


def engine_has_run() -> bool:
    exe = engine_exe()
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "run", "--help"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slow, pytest.mark.asyncio,
              pytest.mark.skipif(not engine_has_run(), reason="`fbt-engine run` is not available yet")]

TINY = ["teacher.train.epochs=1", "train.epochs=1", "train.max_steps_per_epoch=3", "train.batch_size=16",
        "train.log_every=1", "data.train_subset=64", "data.val_subset=32", "train.warmup_epochs=0"]


def tiny_preset(workdir: Path) -> Path:
    import tomli_w

    data = apply_overrides(read_toml(REPO / "presets" / "quickstart.toml"), TINY)
    data["teacher"]["checkpoint"] = str(workdir / "teachers" / "tiny-teacher.safetensors")
    path = workdir / "tiny.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


async def test_tui_runs_the_real_engine_to_finished(workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_ENGINE", str(engine_exe()))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(StartRun(tiny_preset(workdir), "e2e"))
        await wait_for(pilot, lambda: app.session is not None, what="session")
        try:
            await wait_for(pilot, lambda: app.session.ended, timeout=900, what="engine run")
            state = app.session.state
            assert state.status == "completed", (state.status, state.error, list(app.session.stderr_tail)[-5:])
            assert state.final is not None and state.final.type == "finished"
            assert state.losses and (workdir / "runs" / "e2e" / "events.jsonl").is_file()
        finally:
            kill_leftovers(app)
