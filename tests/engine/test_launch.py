"""`fbt-engine run/resume --nproc-per-node/--gpus`: torchrun started for the user, and bounded failure
(a rank killed, raising or hung ends the job within a set time, and the `failed` event names it).

The process tests use 2 CPU processes (gloo) and the tiny preset with `method = "scratch"` (no
teacher phase), a few seconds of training each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fbt_engine import launch as L
from fbt_engine.cli import app
from fbt_engine.errors import FBTError

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]
FAST = ["--set", "method=scratch", "--set", "train.epochs=3", "--set", "train.threads=1"]


# --- the command line torchrun gets ---------------------------------------------------------------

def test_one_node_uses_a_standalone_rendezvous():
    argv = L.torchrun_argv(L.wanted(None, 2), ["run", "p.toml"])
    assert argv[1:] == ["-m", "fbt_engine.launch", "--standalone", "--nproc-per-node", "2", "--max-restarts", "0",
                        "-m", "fbt_engine.cli", "run", "p.toml"]  # torchrun's main, through launch.py


def test_two_nodes_static_and_c10d_rendezvous(monkeypatch):
    monkeypatch.setattr(L, "gpu_count", lambda: 8)
    static = L.torchrun_args(L.wanted(8, None, nodes=2, node_rank=1, master="node0:29500"), ["run", "p.toml"])
    assert static[:10] == ["--nnodes", "2", "--master-addr", "node0", "--master-port", "29500", "--node-rank", "1",
                            "--nproc-per-node", "8"]
    rdzv = L.torchrun_args(L.wanted(8, None, nodes=2, rdzv_endpoint="node0:29400", rdzv_id="job42"), ["run", "p"])
    assert rdzv[:8] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29400",
                          "--rdzv-id", "job42"]


@pytest.mark.parametrize("kw,needle", [
    (dict(gpus=None, nproc=None, nodes=2), "need --gpus N or --nproc-per-node N"),
    (dict(gpus=None, nproc=2, nodes=2), "needs a meeting point"),
    (dict(gpus=None, nproc=2, nodes=2, master="node0"), "is not HOST:PORT"),
    (dict(gpus=None, nproc=2, nodes=2, master="node0:1"), "--master needs --node-rank"),
    (dict(gpus=None, nproc=2, nodes=2, master="n:1", node_rank=2), "outside 0..1"),
    (dict(gpus=None, nproc=2, master="a:1", rdzv_endpoint="b:2"), "not both"),
    (dict(gpus=2, nproc=2), "either --gpus or --nproc-per-node"),
])
def test_bad_launch_options_are_refused(kw, needle):
    with pytest.raises(FBTError, match=needle):
        L.wanted(**kw)


def test_gpus_on_a_cpu_only_machine_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "gpu_count", lambda: 0)
    res = CliRunner().invoke(app, ["run", str(TINY), "--gpus", "2", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "--gpus 2 needs 2 CUDA GPUs; this machine shows 0" in res.output
    assert "--nproc-per-node 2" in res.output and not any(tmp_path.iterdir())


def test_rank_command_repeats_the_run_options():
    assert L.rank_command("run", "p.toml", ["a=1", "b=2"], "n", "r", True) == \
        ["run", "p.toml", "--set", "a=1", "--set", "b=2", "--name", "n", "--runs-dir", "r", "--jsonl"]


# --- real launches (2 CPU processes) ---------------------------------------------------------------

def launch(tmp_path: Path, *extra: str, env: dict | None = None, verb: str = "run", target: str = str(TINY)):
    cmd = [*ENGINE, verb, target, "--nproc-per-node", "2"]
    if verb == "run":
        cmd += ["--runs-dir", str(tmp_path), *FAST]
    return subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def watch(proc: subprocess.Popen, run: Path, timeout: float = 300) -> tuple[int, float, str]:
    """Wait for `proc`; returns (exit code, seconds from the last step event seen to the exit, stderr)."""
    last_step, seen, end = time.monotonic(), 0, time.monotonic() + timeout
    while proc.poll() is None:
        steps = sum(1 for e in events(run) if e["type"] == "step")
        if steps != seen:
            seen, last_step = steps, time.monotonic()
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("the launch did not end")
        time.sleep(0.1)
    _, err = proc.communicate()
    return proc.returncode, time.monotonic() - last_step, err


def failed(run: Path) -> dict:
    evs = events(run)
    assert evs and evs[-1]["type"] == "failed", [e["type"] for e in evs]
    return evs[-1]


def resume_completes(run: Path) -> None:
    proc = launch(run, verb="resume", target=str(run))
    code, _, err = watch(proc, run)
    assert code == 0, err[-2000:]
    evs = events(run)
    assert evs[-1]["type"] == "finished" and evs[-1]["reason"] == "completed"
    assert [e for e in evs if e["type"] == "started"][-1]["resumed"]


def test_launch_two_processes_then_ctrl_c_stops_gracefully_and_resume_finishes(tmp_path):
    proc = launch(tmp_path, "--jsonl")
    run = tmp_path / "tiny"
    for line in proc.stdout:  # rank 0's events reach the launcher's stdout
        ev = json.loads(line)
        if ev["type"] == "step" and ev["epoch"] == 2:
            assert len(ev["rank_samples_per_s"]) == 2 and all(v > 0 for v in ev["rank_samples_per_s"])
            proc.send_signal(signal.SIGINT)
            break
    code, _, err = watch(proc, run)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]  # torchrun's SignalException is not shown for a stop
    evs = events(run)
    assert evs[-1]["type"] == "finished" and evs[-1]["reason"] == "stopped"
    assert all(e["world_size"] == 2 for e in evs if e["type"] == "started")
    assert (run / "checkpoints" / "last.pt").is_file()
    resume_completes(run)


def test_a_killed_rank_ends_the_job_quickly_and_is_named(tmp_path):
    """SIGKILL on rank 1 in epoch 2: rank 0's collective breaks at once (gloo), rank 0 names rank 1."""
    proc = launch(tmp_path, env={"FBT_FAULT": "distill.step@6=kill", "FBT_FAULT_RANK": "1"})
    code, after, err = watch(proc, tmp_path / "tiny")
    print(f"killed rank: job ended {after:.1f} s after the last step event")
    assert code == 1, err[-2000:]
    assert after < 30
    ev = failed(tmp_path / "tiny")
    assert ev["kind"] == "rank_lost" and ev["rank"] == 1 and "rank 1" in ev["message"]
    assert "fbt-engine resume" in ev["hint"]
    resume_completes(tmp_path / "tiny")


def test_a_rank_that_raises_is_named_with_its_error(tmp_path):
    proc = launch(tmp_path, env={"FBT_FAULT": "distill.step@6=error", "FBT_FAULT_RANK": "1"})
    code, after, err = watch(proc, tmp_path / "tiny")
    print(f"raising rank: job ended {after:.1f} s after the last step event")
    assert code == 1 and after < 30, err[-2000:]
    assert "fault injected at distill.step" in err  # rank 1's traceback reaches the launcher's stderr
    ev = failed(tmp_path / "tiny")
    assert ev["kind"] == "rank_failed" and ev["rank"] == 1
    assert "fault injected at distill.step" in ev["message"]


def test_a_hung_rank_is_caught_by_the_watchdog(tmp_path):
    proc = launch(tmp_path, "--set", "train.watchdog_s=6", env={"FBT_FAULT": "distill.step@6=hang",
                                                                 "FBT_FAULT_RANK": "1"})
    code, after, err = watch(proc, tmp_path / "tiny")
    print(f"hung rank (watchdog 6 s): job ended {after:.1f} s after the last step event")
    assert code == 1 and after < 6 + 20, err[-2000:]
    ev = failed(tmp_path / "tiny")
    assert ev["kind"] == "hang" and ev["rank"] == 1 and "faults.py" in ev["message"]
    assert "watchdog: rank 1" in (tmp_path / "tiny" / "log.txt").read_text()


def test_when_rank_0_is_killed_the_launcher_writes_the_failed_event(tmp_path):
    proc = launch(tmp_path, env={"FBT_FAULT": "distill.step@6=kill", "FBT_FAULT_RANK": "0"})
    code, after, err = watch(proc, tmp_path / "tiny")
    print(f"killed rank 0: job ended {after:.1f} s after the last step event")
    assert code == 1 and after < 30, err[-2000:]
    ev = failed(tmp_path / "tiny")
    assert ev["kind"] == "rank_lost" and ev["rank"] == 0 and "launcher" in ev["hint"]


def test_readme_launch_examples_build_the_documented_torchrun_commands(monkeypatch, tmp_path):
    """Every `fbt-engine run/resume ... --gpus/--nproc-per-node` line of the README is accepted and
    becomes the torchrun command the README says (launched here with torchrun itself stubbed)."""
    from fbt_engine import preflight
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = [ln.split("#")[0].split() for ln in readme.splitlines()
             if ln.startswith("fbt-engine ") and ("--gpus" in ln or "--nproc-per-node" in ln)]
    assert len(lines) >= 6
    launched: list[list[str]] = []
    monkeypatch.setattr(L, "gpu_count", lambda: 8)
    monkeypatch.setattr(L, "execute", lambda launch, cmd, *a, **k: launched.append(L.torchrun_args(launch, cmd)) or 0)
    monkeypatch.setattr(preflight, "check", lambda *a, **k: None)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setattr(L, "run_folder", lambda path: Path(path))
    for words in lines:
        res = CliRunner().invoke(app, words[1:])
        assert res.exit_code == 0, (words, res.output)
    joined = [" ".join(a) for a in launched]
    assert joined[0].startswith("--standalone --nproc-per-node 8 --max-restarts 0 "
                                "-m fbt_engine.cli run presets/quickstart.toml")
    assert any("--nnodes 2 --master-addr node0 --master-port 29500 --node-rank 1" in j for j in joined)
    assert any("--nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id job42" in j for j in joined)
    assert any(j.endswith("-m fbt_engine.cli resume runs/quickstart") for j in joined)


def test_resume_with_gpus_needs_a_run_folder(tmp_path):
    res = CliRunner().invoke(app, ["resume", str(tmp_path), "--nproc-per-node", "2"])
    assert res.exit_code == 2 and "is not a run folder" in res.output


def test_killing_the_launcher_stops_the_ranks(tmp_path):
    """A TUI's kill (SIGKILL to the launcher) must not leave the ranks training as orphans: torchrun
    gets the parent-death signal and stops them (rank 0 saves; `finished` `stopped`)."""
    from fbt_engine import ranks as R
    proc = launch(tmp_path, "--jsonl")
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["type"] == "step" and ev["epoch"] == 2:
            break
    notes = [json.loads(p.read_text()) for p in (tmp_path / "tiny" / "ranks").glob("*/rank-?.json")]
    pids = [n["pid"] for n in notes]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    end = time.monotonic() + 45
    while any(R._alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(R._alive(pid) for pid in pids), "ranks outlived the launcher"
    evs = events(tmp_path / "tiny")
    assert evs[-1]["type"] in ("finished", "failed"), evs[-1]
