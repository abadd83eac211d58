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
         "--methods", "scratch", "kd", "crd", "ofa", "fbt", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    res = doc["results"][0]
    assert [r["method"] for r in res["rows"]] == ["scratch", "kd", "crd", "ofa", "fbt"]
    assert set(res["floor_parts_ms"]) == {"teacher", "student", "tail", "branches"}
    assert all(r["floor_ms"] > 0 and r["over_floor"] > 0 for r in res["rows"]) and res["fbt_over_kd"] > 0
    assert "step/floor" in proc.stdout and "fbt/kd" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_without_gpu() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr
