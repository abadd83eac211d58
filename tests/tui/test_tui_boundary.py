"""The TUI's import boundary: never torch or timm, and a fast first import (checked in subprocesses)."""

from __future__ import annotations

import subprocess
import sys

CHECK = ("import fbt_tui.app, fbt_tui.cli, sys; "
         "bad = [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules]; "
         "assert not bad, bad")


def test_tui_never_imports_torch_or_timm() -> None:
    subprocess.run([sys.executable, "-c", CHECK], check=True, timeout=60)


def test_cli_help_is_instant_and_torch_free() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['fbt-tui','--help']\n"
                          "from fbt_tui.cli import main\ntry:\n main()\nexcept SystemExit: pass\n"
                          "assert 'torch' not in sys.modules"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--runs-dir" in out.stdout and "--preset" in out.stdout
