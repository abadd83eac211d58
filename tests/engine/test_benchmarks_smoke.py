"""The benchmark scripts run (tiny sizes): step_time --quick, and gpu_check's no-GPU refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_step_time_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "st.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--quick", "--no-profile", "--repeats", "1",
         "--methods", "kd", "fbt", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    res = doc["results"][0]
    assert [r["method"] for r in res["rows"]] == ["kd", "fbt"]
    assert res["floor_ms"] > 0 and res["fbt_over_kd"] > 0 and res["fbt_over_floor"] > 0
    assert "fbt/floor" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_without_gpu() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr
