"""`fbt-engine sweep` / `compare`: the grid plan, shared teachers, results, Ctrl-C and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbt_engine import config as C
from fbt_engine import sweep as S
from fbt_engine.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_values_split_on_top_level_commas_only():
    assert S.split_values('kd,fbt') == ["kd", "fbt"]
    assert S.split_values('["t->f","f->s"],["f->s"], "a,b"') == ['["t->f","f->s"]', '["f->s"]', '"a,b"']


@pytest.mark.parametrize("spec,needle", [
    ("method", "is not KEY=V1,V2"), ("method=kd,", "is not KEY=V1,V2"), ("seed=1,2", "--seeds"),
    ("method=kd,kd", "repeats a value"),
])
def test_bad_grid_specs_are_refused(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        S.parse_grid([spec])


def test_plan_is_the_cartesian_product_seeds_innermost():
    axes = S.parse_grid(["method=kd,fbt", "fusion.split=2,3"])
    cells = S.plan_cells(axes, [0, 1])
    assert [c.name for c in cells] == ["kd_split2_s0", "kd_split2_s1", "kd_split3_s0", "kd_split3_s1",
                                       "fbt_split2_s0", "fbt_split2_s1", "fbt_split3_s0", "fbt_split3_s1"]
    assert cells[5].overrides == (("method", "fbt"), ("fusion.split", "2"), ("seed", "1"))
    assert cells[5].point == (("method", "fbt"), ("fusion.split", "2")) and cells[5].seed == 1
    for cell in cells:
        C.check_name(cell.name, "test")


def test_a_bad_grid_value_fails_before_any_folder(tmp_path):
    res = subprocess.run([*ENGINE, "sweep", str(TINY), "--grid", "fusion.split=2,5", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2 and "fusion.split" in res.stderr and "split5" in res.stderr
    assert not any(tmp_path.iterdir())


def test_cells_share_one_teacher_file_and_get_the_scratch_baseline(tmp_path):
    base = C.load_preset(TINY)
    cells = S.plan_cells(S.parse_grid(["method=scratch,kd,fbt"]), [0, 1])
    configs = S.resolve_cells(base, cells, tmp_path, threads=1)
    teachers = {cfg.teacher.checkpoint for cfg in configs.values() if cfg.method != "scratch"}
    assert len(teachers) == 1 and Path(teachers.pop()).parent == tmp_path / "teachers"
    assert configs["fbt_s1"].health.baseline == str(tmp_path / "scratch_s1")
    assert configs["kd_s0"].health.baseline == str(tmp_path / "scratch_s0")
    assert configs["scratch_s0"].health.baseline == "" and configs["kd_s0"].train.threads == 1
    other = S.resolve_cells(C.replace(base, teacher=C.replace(base.teacher, model="resnet34")), cells, tmp_path, 1)
    assert other["kd_s0"].teacher.checkpoint != configs["kd_s0"].teacher.checkpoint  # another teacher, another file


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_side_by_side_trains_the_teacher_once_and_tables_mean_std(tmp_path):
    res = subprocess.run([*ENGINE, "sweep", str(TINY), "--grid", "method=scratch,kd", "--seeds", "0,1", "--jobs", "2",
                          "--runs-dir", str(tmp_path), "--name", "sw"], capture_output=True, text=True, timeout=600, env=ENV)
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "sw"
    assert len(list((folder / "teachers").glob("*.safetensors"))) == 1
    teacher_phases = [sum(1 for line in (folder / c / "events.jsonl").read_text().splitlines()
                          if '"type":"phase"' in line and '"teacher"' in line) for c in ("kd_s0", "kd_s1")]
    assert sorted(teacher_phases) == [0, 1], "the shared teacher was trained more than once"
    rows = _rows(folder / "results.csv")
    assert [r["cell"] for r in rows] == ["scratch_s0", "scratch_s1", "kd_s0", "kd_s1"]
    assert {r["status"] for r in rows} == {"completed"}
    data = json.loads((folder / "results.json").read_text())
    kd = next(g for g in data["groups"] if g["method"] == "kd")
    tops = [float(r["student_top1"]) for r in rows if r["method"] == "kd"]
    assert kd["student_top1_mean"] == pytest.approx(statistics.fmean(tops))
    assert kd["student_top1_std"] == pytest.approx(statistics.stdev(tops))
    assert "student top-1 (mean ± std)" in res.stderr and f"{statistics.fmean(tops):.2f} ± " in res.stderr
    scratch = statistics.fmean(float(r["student_top1"]) for r in rows if r["method"] == "scratch")
    assert kd["student_vs_scratch"] == pytest.approx(statistics.fmean(tops) - scratch)
    assert f"{statistics.fmean(tops) - scratch:+.2f}" in res.stderr
    # the kd runs were checked against their seed's scratch run
    cfg = C.load_preset(folder / "kd_s1" / "config.toml")
    assert cfg.health.baseline == str(folder / "scratch_s1")


def _wait_for(pred, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_ctrl_c_stops_the_whole_sweep_and_resume_finishes_it(tmp_path):
    proc = subprocess.Popen([*ENGINE, "sweep", str(TINY), "--grid", "method=scratch,kd", "--runs-dir", str(tmp_path),
                             "--name", "sw", "--set", "train.epochs=30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    folder = tmp_path / "sw"
    events = folder / "scratch_s0" / "events.jsonl"
    _wait_for(lambda: events.is_file() and '"type":"step"' in events.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "sweep stopped; continue with: fbt-engine resume" in err
    assert not (folder / "kd_s0").exists(), "the next cell started after Ctrl-C"
    assert S.cell_result(folder, S.Cell("scratch_s0", (("method", "scratch"), ("seed", "0")))).status == "stopped"
    assert [r["status"] for r in _rows(folder / "results.csv")] == ["stopped", "pending"]

    res = subprocess.run([*ENGINE, "resume", str(folder)],
                         capture_output=True, text=True, timeout=900, env=ENV)
    assert res.returncode == 0, res.stderr
    assert [r["status"] for r in _rows(folder / "results.csv")] == ["completed", "completed"]
    started = (folder / "scratch_s0" / "events.jsonl").read_text().count('"type":"started"')
    assert started == 2, "the stopped cell was started afresh instead of resumed"


def test_vary_plans_the_base_and_one_change_at_a_time():
    cells = S.plan_cells(S.parse_grid(["method=fbt"]), [0, 1],
                         S.parse_grid(["fusion.split=1,2", 'loss.paths=["f->s","t->s"]'], "--vary"))
    assert [c.name for c in cells] == ["fbt_base_s0", "fbt_base_s1", "fbt_split1_s0", "fbt_split1_s1",
                                       "fbt_split2_s0", "fbt_split2_s1", "fbt_pathsftosttos_s0", "fbt_pathsftosttos_s1"]
    assert cells[2].overrides == (("method", "fbt"), ("fusion.split", "1"), ("seed", "0"))
    assert cells[2].point == (("method", "fbt"), ("variant", "fusion.split=1"))
    assert cells[0].point == (("method", "fbt"), ("variant", "base"))
    cfg = S.cell_config(C.load_preset(TINY), cells[6])
    assert cfg.loss.paths == ["f->s", "t->s"] and cfg.fusion.split == 3


def test_a_key_in_grid_and_vary_is_refused(tmp_path):
    res = subprocess.run([*ENGINE, "sweep", str(TINY), "--grid", "fusion.split=2,3", "--vary", "fusion.split=1",
                          "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2 and "'fusion.split' is in --grid and in --vary" in res.stderr


def test_a_sweep_without_grid_or_vary_is_refused_with_the_seeds_only_form(tmp_path):
    res = subprocess.run([*ENGINE, "sweep", str(TINY), "--seeds", "0,1,2", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2 and "needs at least one --grid" in res.stderr
    assert "--grid method=fbt --seeds 0,1,2" in res.stderr and not any(tmp_path.iterdir())


def test_one_driver_in_the_lock_and_a_closed_terminal_does_not_stop_the_sweep(tmp_path):
    """The driving process's pid is in the sweep's .lock (a second resume is refused); then SIGHUP and a
    reader that went away: the sweep and its cells go on, into sweep.log and the run folders."""
    from fbt_tui.sweeps import driver_pid
    proc = subprocess.Popen([*ENGINE, "sweep", str(TINY), "--grid", "method=scratch", "--seeds", "0,1",
                             "--runs-dir", str(tmp_path), "--name", "sw"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    folder = tmp_path / "sw"
    events = folder / "scratch_s0" / "events.jsonl"
    try:
        _wait_for(lambda: events.is_file() and '"type":"step"' in events.read_text())
        assert driver_pid(folder) == proc.pid
        res = subprocess.run([*ENGINE, "resume", str(folder)], capture_output=True, text=True, timeout=120, env=ENV)
        assert res.returncode == 2 and f"being run by another fbt-engine process (pid {proc.pid})" in res.stderr
        proc.send_signal(signal.SIGHUP)
        proc.stderr.close()  # the terminal is gone: every later write to it fails
        assert proc.wait(timeout=600) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["status"] for r in _rows(folder / "results.csv")] == ["completed", "completed"]
    assert "scratch_s1: student" in (folder / "sweep.log").read_text()
    assert driver_pid(folder) is None
