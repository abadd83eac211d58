"""Fixtures for the TUI tests: a fake engine on FBT_ENGINE, a temp working folder, canned runs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tui_helpers import FAKE_ENGINE, QUICK_PRESET, write_run  # noqa: E402


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the TUI at tests/tui/fake_engine.py with fast, deterministic defaults."""
    cmd = f"{sys.executable} {FAKE_ENGINE}"
    monkeypatch.setenv("FBT_ENGINE", cmd)
    monkeypatch.setenv("FBT_FAKE_DELAY", "0.005")
    monkeypatch.delenv("FBT_FAKE_SCENARIO", raising=False)
    return cmd


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run inside a temp folder so relative paths (runs/, presets) look the same in every frame."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(QUICK_PRESET, tmp_path / "quick.toml")
    return tmp_path


@pytest.fixture
def canned_runs(workdir: Path) -> Path:
    """runs/ with one folder per status; `g-live` claims this test process's pid so it reads as running."""
    runs = workdir / "runs"
    write_run(runs, "a-scratch", "scratch", "completed", acc0=30.0)
    write_run(runs, "b-kd", "kd", "completed", acc0=35.0)
    write_run(runs, "c-fbt", "fbt", "completed", acc0=45.0)
    write_run(runs, "d-stopped", "ofa", "stopped")
    write_run(runs, "e-failed", "fbt", "failed")
    write_run(runs, "f-crashed", "fbt", "none", pid=2**22 + 12345)
    write_run(runs, "g-live", "fbt", "none", pid=os.getpid())
    return runs
