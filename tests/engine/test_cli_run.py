"""`fbt-engine run/resume/eval/validate` as separate processes, with real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]


def start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*ENGINE, "run", str(TINY), "--jsonl", "--runs-dir", str(tmp_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen, pred, timeout: float = 300) -> list[dict]:
    seen, end = [], time.monotonic() + timeout
    for line in proc.stdout:
        ev = json.loads(line)
        seen.append(ev)
        if pred(ev):
            return seen
        assert time.monotonic() < end, "timed out"
    return seen


def first_distill_step(ev: dict) -> bool:
    return ev["type"] == "step" and ev["phase"] == "distill"


def test_sigint_stops_gracefully_and_resume_completes(tmp_path):
    proc = start(tmp_path, "--set", "train.epochs=3")
    read_until(proc, first_distill_step)
    proc.send_signal(signal.SIGINT)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(60) == 0
    assert rest[-1]["type"] == "finished" and rest[-1]["reason"] == "stopped"
    run_dir = tmp_path / "tiny"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    res = subprocess.run([*ENGINE, "resume", str(run_dir), "--jsonl"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0]["type"] == "started" and events[0]["resumed"]
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "completed"
    assert [e["epoch"] for e in events if e["type"] == "eval"] == [1, 2, 3]
    res = subprocess.run([*ENGINE, "eval", str(run_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 0 <= json.loads(res.stdout)["top1"] <= 100


def test_second_sigint_aborts_at_once(tmp_path):
    proc = start(tmp_path, "--set", "train.epochs=50", "--set", "data.img_size=64", "--set", "train.batch_size=64",
                 "--set", "data.train_subset=512")
    read_until(proc, first_distill_step)
    proc.send_signal(signal.SIGINT)
    for line in proc.stderr:  # the engine acknowledged the first one (two at once may merge into one)
        if "stop requested" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(60) == 130
    assert rest[-1]["type"] == "failed" and rest[-1]["kind"] == "aborted"


def test_sigterm_is_graceful_too(tmp_path):
    proc = start(tmp_path, "--set", "train.epochs=50")
    read_until(proc, first_distill_step)
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(60) == 0 and rest[-1]["reason"] == "stopped"


def test_closed_terminal_does_not_end_the_run(tmp_path):
    proc = start(tmp_path, "--set", "train.epochs=2")
    read_until(proc, first_distill_step)
    proc.send_signal(signal.SIGHUP)
    proc.stdout.close()  # the reader is gone too: writes to the pipe fail, the run must go on
    proc.stderr.close()
    assert proc.wait(300) == 0
    lines = (tmp_path / "tiny" / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["reason"] == "completed"


def test_bad_preset_is_one_sentence_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('method = "fbt"\n[student]\nmodel = "resnet18"\n[teacher]\nmodel = "resnet18"\n[train]\nepoch = 3\n')
    res = subprocess.run([*ENGINE, "run", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["error: unknown key `train.epoch` in " + str(bad),
                                       "hint: did you mean `train.epochs`?"]


def test_missing_data_is_exit_2(tmp_path):
    res = subprocess.run([*ENGINE, "run", str(TINY), "--runs-dir", str(tmp_path), "--set", 'data.name="cifar100"',
                          "--set", f'data.root="{tmp_path}/nowhere"'], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "error:" in res.stderr and "hint:" in res.stderr and "Traceback" not in res.stderr


def test_validate_and_help():
    res = subprocess.run([*ENGINE, "validate", "presets/quickstart.toml", "--set", "train.epochs=5"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    summary = res.stderr.strip().splitlines()[-1]  # one line a person checks the preset by
    assert summary.startswith("presets/quickstart.toml: valid: resnet18 (")
    for part in ("-> vit_tiny_patch16_224 (patch_size=8)", "method fbt", "digits at 32 px", "5 epochs x batch 64"):
        assert part in summary, (part, summary)
    res = subprocess.run([*ENGINE, "validate", "presets/quickstart.toml", "--set", "train.lr=-1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "train.lr" in res.stderr
    res = subprocess.run([*ENGINE, "--help"], capture_output=True, text=True)
    for cmd in ("models", "fuse", "run", "resume", "eval", "validate"):
        assert cmd in res.stdout


def test_torchrun_two_processes_share_one_run_folder(tmp_path):
    """DDP on CPU (gloo): one run folder, one event stream, world size 2, InfoNCE gathers across ranks."""
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "fbt_engine.cli", "run", str(TINY), "--runs-dir", str(tmp_path), "--set", "train.epochs=1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
    events = [json.loads(line) for line in (tmp_path / "tiny" / "events.jsonl").read_text().splitlines()]
    started = [e for e in events if e["type"] == "started"]
    assert all(e["world_size"] == 2 for e in started)
    assert [e["type"] for e in events].count("finished") == 1 and events[-1]["reason"] == "completed"
    assert events[-1]["student_path"] and (tmp_path / "tiny" / "student.safetensors").is_file()


@pytest.mark.parametrize("overrides,needle", [
    (["data.name=imagefolder", "data.root=/nowhere/imagenet"], "imagefolder needs class folders in /nowhere/imagenet/train"),
    (["data.name=fashion_mnist", "data.root=/nowhere/fmnist"], "Fashion-MNIST idx files"),
    (["data.name=cifar100", "data.root=/nowhere/cifar"], "CIFAR-100 (cifar-100-python/"),
])
def test_missing_data_is_refused_before_a_run_folder_exists(tmp_path, overrides, needle):
    sets = [a for o in overrides for a in ("--set", o)]
    res = subprocess.run([*ENGINE, "validate", "presets/quickstart.toml", *sets], capture_output=True, text=True)
    assert res.returncode == 2 and needle in res.stderr and "hint:" in res.stderr
    res = subprocess.run([*ENGINE, "run", "presets/quickstart.toml", "--runs-dir", str(tmp_path), *sets],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
    assert not any(tmp_path.iterdir()), "a run folder was created for a run that could not start"
