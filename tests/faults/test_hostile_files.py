"""Hostile and damaged files: every file the engine reads loads with weights-only semantics or is
refused with one clear sentence naming it, and nothing in any of them ever runs code.

Files: teacher/student weights (.safetensors, .pth, .pt, .bin), run checkpoints (last.pt, best.pt,
teacher-last.pt) on `resume` and `eval`, exported students (student.safetensors) on `eval`,
events.jsonl, a run's config.toml, presets, CIFAR-100 pickles.

Damage: a crafted pickle whose `__reduce__` creates a marker folder (the marker must never appear,
whatever the loader), random bytes, 0 bytes, truncated (10 bytes, half, all but one byte), a valid
pickle of the wrong structure (a dict without our keys, a list), a safetensors file with a corrupt
header, NaN weights, a directory where a file belongs.

Refusals: in-process a DamagedFile/FBTError whose message names the file and whose hint says what
to do; through the CLI exit 2, one `error:` line naming the file, one `hint:` line, no traceback.
Fallbacks: `resume` with a damaged last.pt resumes from best.pt (then teacher-last.pt) with a note
naming the damaged file and completes; `eval` of a run folder with a damaged best.pt falls back to
student.safetensors, then last.pt; a damaged file given to `eval` explicitly is refused.

Two real tiny runs are made once per session, in parallel (a finished one, and one killed in its
second distill epoch by FBT_FAULT so it can be resumed); each case works on a copy (big weight
files hard-linked: the engine replaces files by rename and the damage helper unlinks first, so the
originals are never touched).
"""

from __future__ import annotations

import codecs
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from fbt_engine.cli import app
from fbt_engine.errors import FBTError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny.toml"
ENGINE = [sys.executable, "-m", "fbt_engine.cli"]
TIMEOUT = 300


# --- damaged and hostile bytes ---------------------------------------------------------------------

class Hostile:
    """Unpickling this calls `how(marker)`: a loader that runs code leaves the marker folder behind."""

    def __init__(self, marker: Path, how: str = "mkdir") -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "eval":
            return (eval, (f"__import__('os').mkdir({self.marker!r})",))
        return (os.mkdir, (self.marker,))


def torch_bytes(obj: Any) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors)


DIRECTORY = object()  # a damage result: a folder where the file belongs

# name -> bytes(good bytes of the file, marker path); DIRECTORY for a folder
DAMAGE: dict[str, Callable[[bytes, Path], Any]] = {
    "hostile": lambda good, m: torch_bytes({"fc.bias": Hostile(m)}),
    "hostile-eval": lambda good, m: torch_bytes([Hostile(m, "eval")]),
    "hostile-raw-pickle": lambda good, m: pickle.dumps({"fc.bias": Hostile(m)}),
    "hostile-pickle-protocol0": lambda good, m: pickle.dumps(Hostile(m), protocol=0),
    "random": lambda good, m: random.Random(0).randbytes(4096),
    "empty": lambda good, m: b"",
    "trunc-10": lambda good, m: good[:10],
    "trunc-half": lambda good, m: good[:len(good) // 2],
    "trunc-minus-1": lambda good, m: good[:-1],
    "wrong-dict": lambda good, m: torch_bytes({"foo": 1, "bar": "x"}),
    "list": lambda good, m: torch_bytes([1, 2, 3]),
    "directory": lambda good, m: DIRECTORY,
}
SAFETENSORS_DAMAGE = {
    "corrupt-header": lambda good, m: good[:8] + b"{garbage" + good[16:],
    "header-length-huge": lambda good, m: b"\xff" * 7 + b"\x7f" + good[8:],
}
HOSTILE = [k for k in DAMAGE if k.startswith("hostile")]


def damage(path: Path, kind: str, marker: Path) -> None:
    """Replace `path` by its damaged version (unlinked first: the original may be a hard link)."""
    good = path.read_bytes() if path.is_file() else b""
    data = {**DAMAGE, **SAFETENSORS_DAMAGE}[kind](good, marker)
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    if data is DIRECTORY:
        path.mkdir()
    else:
        path.write_bytes(data)


# --- in-process loaders ----------------------------------------------------------------------------

def _model():
    import torch.nn as nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 10)
    return Tiny()


def _good_weights(suffix: str) -> bytes:
    import torch
    torch.manual_seed(0)
    sd = _model().state_dict()
    return safetensors_bytes(sd) if suffix == ".safetensors" else torch_bytes(sd)


def _good_checkpoint() -> bytes:
    import torch
    return torch_bytes({"version": 2, "phase": "distill", "state": {"epoch": 1}, "config_hash": "0" * 16,
                        "module": {"student.fc.bias": torch.zeros(10)}, "optimizer": {}, "rng": {}})


@dataclass(frozen=True)
class Loader:
    name: str
    suffix: str
    good: Callable[[], bytes]
    load: Callable[[Path], Any]
    damages: tuple[str, ...]


def _load_weights(what: str) -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        from fbt_engine.checkpoint import load_weights
        return load_weights(_model(), path, what)
    return load


def _load_checkpoint(path: Path) -> Any:
    from fbt_engine.checkpoint import load
    return load(path)


def _cifar_pickle() -> bytes:
    import numpy as np
    return pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [1, 2]}, protocol=2)


def _unpickle(path: Path) -> Any:
    from fbt_engine.data import _unpickle
    return _unpickle(path)


PICKLE_DAMAGE = tuple(k for k in DAMAGE if k not in ("directory", "list", "wrong-dict"))
TORCH_DAMAGE = tuple(DAMAGE)
LOADERS = [
    *(Loader(f"{what}-weights{sfx}", sfx, lambda s=sfx: _good_weights(s), _load_weights(what),
             TORCH_DAMAGE + (("nan",) if what == "teacher" else ()) +
             (tuple(SAFETENSORS_DAMAGE) if sfx == ".safetensors" else ()))
      for what in ("teacher", "student") for sfx in (".safetensors", ".pth", ".pt", ".bin")),
    Loader("run-checkpoint", ".pt", _good_checkpoint, _load_checkpoint,
           TORCH_DAMAGE + ("hostile-inside-checkpoint", "module-not-weights")),
    Loader("cifar100-pickle", "", _cifar_pickle, _unpickle, PICKLE_DAMAGE),
]


def _extra_damage(kind: str, path: Path, marker: Path) -> None:
    if kind == "nan":
        sd = _model().state_dict()
        sd["fc.weight"] = sd["fc.weight"] * float("nan")
        path.write_bytes(safetensors_bytes(sd) if path.suffix == ".safetensors" else torch_bytes(sd))
    elif kind == "hostile-inside-checkpoint":  # every key we check is there; one value is a payload
        path.write_bytes(torch_bytes({"version": 2, "phase": "distill", "state": Hostile(marker), "config_hash": "",
                                      "module": {}, "optimizer": {}, "rng": {}}))
    elif kind == "module-not-weights":
        path.write_bytes(torch_bytes({"version": 2, "phase": "distill", "state": {}, "config_hash": "",
                                      "module": [1, 2], "optimizer": {}, "rng": {}}))
    else:
        damage(path, kind, marker)


LOADER_CASES = [pytest.param(ld, kind, id=f"{ld.name}-{kind}") for ld in LOADERS for kind in ld.damages]


def assert_names_file(exc: FBTError, path: Path) -> None:
    assert str(path) in exc.message, f"the error does not name {path}: {exc.message}"
    assert exc.hint, f"no hint: {exc.message}"
    assert "\n" not in exc.message and len(exc.message) < 1000, exc.message


@pytest.mark.parametrize("loader,kind", LOADER_CASES)
def test_loader_refuses_damaged_file(loader: Loader, kind: str, tmp_path):
    path, marker = tmp_path / f"file{loader.suffix}", tmp_path / "pwned"
    path.write_bytes(loader.good())
    loader.load(path)  # the intact file loads (the damage is what is refused)
    _extra_damage(kind, path, marker)
    with pytest.raises(FBTError) as info:
        loader.load(path)
    assert not marker.exists(), "a hostile pickle ran code"
    assert_names_file(info.value, path)
    if kind.startswith("hostile") and loader.name != "cifar100-pickle" and path.suffix != ".safetensors":
        assert "refused" in info.value.message or "not a PyTorch" in info.value.message, info.value.message


def test_hostile_file_refused_by_every_loader(tmp_path):
    """The same payload through every reader of the engine: no loader runs it."""
    from fbt_engine import checkpoint as ck
    from fbt_engine.config import read_toml
    from fbt_engine.data import _unpickle
    from fbt_engine.events import read_events
    marker = tmp_path / "pwned"
    payloads = {"zip": torch_bytes({"fc.bias": Hostile(marker)}), "raw": pickle.dumps(Hostile(marker)),
                "eval": pickle.dumps(Hostile(marker, "eval"), protocol=0)}
    readers = [ck.load, ck.read_state_dict, _load_weights("teacher"), _load_weights("student"), _unpickle,
               read_toml, lambda p: ck.load_first([p])]
    for name, data in payloads.items():
        for sfx in (".pt", ".pth", ".bin", ".safetensors", ".toml", ""):
            path = tmp_path / f"{name}{sfx}"
            path.write_bytes(data)
            for read in readers:
                with pytest.raises(FBTError):
                    read(path)
            read_events(path)  # garbage lines are log text, never objects
            assert not marker.exists(), f"{name}{sfx} ran code"


def test_load_first_notes_and_names_every_damaged_checkpoint(tmp_path):
    from fbt_engine.checkpoint import DamagedFile, load_first
    paths = [tmp_path / n for n in ("last.pt", "best.pt", "teacher-last.pt")]
    for p in paths:
        p.write_bytes(b"")
    notes: list[str] = []
    with pytest.raises(DamagedFile) as info:
        load_first(paths, notes.append)
    assert [str(p) in n for n, p in zip(notes, paths)] == [True] * 3
    for p in paths:  # the final error says that none of them loads, not only the last one
        assert p.name in info.value.message, info.value.message
    paths[1].write_bytes(_good_checkpoint())
    found, state = load_first(paths, notes.append)
    assert found == paths[1] and state["phase"] == "distill"


def test_load_first_refuses_a_directory_checkpoint(tmp_path):
    """A folder at last.pt cannot be replaced by the next save: refused up front, never skipped silently."""
    from fbt_engine.checkpoint import load_first
    (tmp_path / "last.pt").mkdir()
    (tmp_path / "best.pt").write_bytes(_good_checkpoint())
    with pytest.raises(FBTError) as info:
        load_first([tmp_path / "last.pt", tmp_path / "best.pt"])
    assert_names_file(info.value, tmp_path / "last.pt")
    assert "directory" in info.value.message


# --- CIFAR-100 pickles through the data set builder --------------------------------------------------

def _cifar_folder(root: Path, n: int = 4, **replace: Any) -> Path:
    import numpy as np
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    split = {"data": np.arange(n * 3072, dtype=np.int64).astype(np.uint8).reshape(n, 3072),
             "fine_labels": list(range(n)), "coarse_labels": [0] * n, "filenames": [b"x.png"] * n}
    files = {"train": split, "test": split, "meta": {"fine_label_names": [f"c{i}" for i in range(100)]}}
    for name, obj in {**files, **replace}.items():
        if obj is DIRECTORY:
            (folder / name).mkdir()
        elif isinstance(obj, bytes):
            (folder / name).write_bytes(obj)
        else:
            (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def _build_cifar(root: Path):
    from fbt_engine.config import load_preset
    from fbt_engine.data import build_datasets
    cfg = load_preset(TINY, ["data.name=cifar100", f"data.root={str(root)!r}", "data.train_subset=0",
                             "data.val_subset=0"])
    return build_datasets(cfg.data, cfg.aug, cfg.seed)


def test_cifar_valid_small_pickles_load(tmp_path):
    _cifar_folder(tmp_path)
    train, val, info = _build_cifar(tmp_path)
    assert info.num_classes == 100 and len(train) == 4 and len(val) == 4


CIFAR_BAD = {
    "hostile-train": {"train": "hostile"},
    "hostile-meta": {"meta": "hostile"},
    "random-test": {"test": "random"},
    "empty-train": {"train": "empty"},
    "trunc-half-train": {"train": "trunc-half"},
    "train-is-a-directory": {"train": DIRECTORY},
    "train-is-a-list": {"train": [1, 2, 3]},
    "train-dict-without-keys": {"train": {"foo": 1}},
    "meta-without-names": {"meta": {"coarse_label_names": []}},
    "frame-length-huge": {"train": b"\x80\x04\x95" + b"\xff" * 8},
    "unknown-codec": {"train": pickle.dumps(type("C", (), {"__reduce__": lambda self: (codecs.encode, ("x", "nosuch"))})(),
                                            protocol=2)},
}
@pytest.mark.parametrize("kind", list(CIFAR_BAD))
def test_cifar_damaged_pickles_are_refused(kind: str, tmp_path):
    from fbt_engine.errors import DataError
    marker = tmp_path / "pwned"
    replace = {}
    for name, what in CIFAR_BAD[kind].items():
        if isinstance(what, str):
            good = pickle.dumps({"data": b"\0" * 64, "fine_labels": [0]}, protocol=2)
            replace[name] = {**DAMAGE, **{"hostile": lambda g, m: pickle.dumps({"data": Hostile(m)})}}[what](good, marker)
        else:
            replace[name] = what
    _cifar_folder(tmp_path, **replace)
    with pytest.raises(DataError) as info:
        _build_cifar(tmp_path)
    assert not marker.exists(), "a hostile pickle ran code"
    assert info.value.hint and str(tmp_path) in info.value.message, info.value.message


# --- presets and config.toml -------------------------------------------------------------------------

PRESET_DAMAGE = {
    "random": lambda text: random.Random(1).randbytes(2048),
    "empty": lambda text: b"",
    "trunc-10": lambda text: text[:10],
    "trunc-half": lambda text: text[:len(text) // 2],
    "not-utf8": lambda text: text.replace(b'method = "fbt"', b'method = "fb\xe9t"'),
    "nul-bytes": lambda text: text.replace(b"\n", b"\0\n", 1),
    "python-code": lambda text: b"import os\nos.mkdir('pwned')\n",
    "directory": lambda text: DIRECTORY,
}


def _damage_text(path: Path, kind: str) -> None:
    data = PRESET_DAMAGE[kind](path.read_bytes())
    path.unlink()
    if data is DIRECTORY:
        path.mkdir()
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("kind", list(PRESET_DAMAGE))
def test_damaged_preset_is_refused(kind: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "p.toml"
    shutil.copy(TINY, preset)
    _damage_text(preset, kind)
    result = CliRunner().invoke(app, ["validate", "--quick", str(preset)])
    assert_cli_refused(result, preset)
    assert not (tmp_path / "pwned").exists()


# --- real run folders --------------------------------------------------------------------------------

def _engine(args: list[str], cwd: Path, fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("FBT_FAULT", None)
    if fault:
        env["FBT_FAULT"] = fault
    return subprocess.Popen([*ENGINE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run (2 epochs) and one killed in distill epoch 2 of 3 (last.pt = best.pt =
    epoch 1), made in parallel once per session."""
    base = tmp_path_factory.mktemp("runs")
    common = ["run", str(TINY), "--runs-dir", str(base)]
    finished = _engine([*common, "--name", "finished", "--set", "train.epochs=2"], base)
    stopped = _engine([*common, "--name", "stopped", "--set", "train.epochs=3"], base, fault="distill.step@6=kill")
    outs = {name: (p, p.communicate(timeout=TIMEOUT)) for name, p in (("finished", finished), ("stopped", stopped))}
    assert outs["finished"][0].returncode == 0, outs["finished"][1][1][-3000:]
    assert outs["stopped"][0].returncode == -signal.SIGKILL, outs["stopped"][1][1][-3000:]
    folders = {name: base / name for name in outs}
    for n in ("last.pt", "best.pt", "teacher-last.pt"):
        assert (folders["stopped"] / "checkpoints" / n).is_file()
    assert (folders["finished"] / "student.safetensors").is_file()
    return folders


def clone(src: Path, dst: Path) -> Path:
    """Copy a run folder; weight files (the big ones) are hard links, everything else is copied."""
    def copy(s: str, d: str) -> None:
        if s.endswith((".pt", ".safetensors")):
            os.link(s, d)
        else:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=copy)
    return dst


@pytest.fixture
def inprocess(tmp_path, monkeypatch):
    """In-process CLI calls: restore what `run`/`resume` change in this process (signals, torch)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FBT_FAULT", raising=False)
    import torch
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    state = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # like the engine processes (OMP_NUM_THREADS=1): a shared 2-core box
    yield tmp_path
    for s, h in handlers.items():
        signal.signal(s, h)
    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1])


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def _crash(result) -> str:
    return "".join(traceback.format_exception(result.exception))[-3000:]


def assert_cli_refused(result, path: Path | str) -> str:
    """Exit 2; one `error:` line naming `path`, one `hint:` line; no traceback; nothing on stdout."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"crashed instead of refusing:\n{_crash(result)}")
    err = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{err[-3000:]}"
    assert "Traceback" not in result.output and "Traceback" not in err and "Aborted" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    hints = [ln for ln in err.splitlines() if ln.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, err[-3000:]
    assert str(path) in errors[0], f"{path} not named in: {errors[0]}"
    assert result.stdout == ""
    return errors[0]


def assert_completed(result, run_dir: Path) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"crashed:\n{_crash(result)}")
    assert result.exit_code == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    from fbt_engine.events import Event, read_events
    last = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)][-1]
    assert last.type == "finished" and last.get("reason") == "completed", last
    assert (run_dir / "student.safetensors").is_file()
    assert not list(run_dir.rglob(".*.tmp"))


# --- resume ------------------------------------------------------------------------------------------

RESUME_FALLBACK = ["hostile", "hostile-eval", "random", "empty", "trunc-10", "trunc-half", "trunc-minus-1",
                   "wrong-dict", "list"]


def resume_one_step(run: Path) -> int:
    """`resume` in-process, stopped as if by Ctrl-C after its first step (fast: the fallback is the point)."""
    from fbt_engine.run import resume
    return resume(run, stop_when=lambda loop: True)


def assert_resumed_from(run: Path, found: str, damaged: list[str], reason: str = "stopped") -> None:
    from fbt_engine.events import Event, read_events
    log = (run / "log.txt").read_text()
    for name in damaged:
        assert f"{run / 'checkpoints' / name}" in log and "trying the next checkpoint" in log, log[-2000:]
    assert f"resuming from {found}" in log, log[-2000:]
    last = [e for e in read_events(run / "events.jsonl") if isinstance(e, Event)][-1]
    assert last.type == "finished" and last.get("reason") == reason, last
    assert "Traceback" not in log


@pytest.mark.parametrize("kind", RESUME_FALLBACK)
def test_resume_damaged_last_falls_back_to_best(kind: str, runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    damage(run / "checkpoints" / "last.pt", kind, inprocess / "pwned")
    assert resume_one_step(run) == 0
    assert not (inprocess / "pwned").exists(), "a hostile pickle ran code"
    assert_resumed_from(run, "best.pt", ["last.pt"])


@pytest.mark.slow
def test_resume_damaged_last_falls_back_to_best_and_completes(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    damage(run / "checkpoints" / "last.pt", "hostile", inprocess / "pwned")
    result = invoke("resume", str(run))
    assert not (inprocess / "pwned").exists(), "a hostile pickle ran code"
    assert_completed(result, run)
    assert f"{run / 'checkpoints' / 'last.pt'}" in result.stderr and "resuming from best.pt" in result.stderr
    assert_resumed_from(run, "best.pt", ["last.pt"], "completed")


def test_resume_damaged_last_and_best_falls_back_to_teacher_last(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    damage(run / "checkpoints" / "last.pt", "trunc-half", inprocess / "pwned")
    damage(run / "checkpoints" / "best.pt", "hostile", inprocess / "pwned")
    assert resume_one_step(run) == 0
    assert not (inprocess / "pwned").exists()
    assert_resumed_from(run, "teacher-last.pt", ["last.pt", "best.pt"])


@pytest.mark.parametrize("kind", ["hostile", "empty", "trunc-10", "trunc-minus-1", "wrong-dict", "list"])
def test_resume_refuses_when_every_checkpoint_is_damaged(kind: str, runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    for name in ("last.pt", "best.pt", "teacher-last.pt"):
        damage(run / "checkpoints" / name, kind, inprocess / "pwned")
    result = invoke("resume", str(run))
    assert not (inprocess / "pwned").exists()
    error = assert_cli_refused(result, run / "checkpoints" / "teacher-last.pt")
    assert "last.pt" in error.replace("teacher-last.pt", "") and "best.pt" in error, error


def test_resume_refuses_damaged_only_checkpoint(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "teacher-last.pt").unlink()
    damage(run / "checkpoints" / "last.pt", "trunc-10", inprocess / "pwned")
    assert_cli_refused(invoke("resume", str(run)), run / "checkpoints" / "last.pt")


def test_resume_refuses_a_directory_at_last_pt(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    damage(run / "checkpoints" / "last.pt", "directory", inprocess / "pwned")
    error = assert_cli_refused(invoke("resume", str(run)), run / "checkpoints" / "last.pt")
    assert "directory" in error


@pytest.mark.slow
def test_resume_zero_byte_last_pt_in_a_real_process(runs, tmp_path):
    """Across a process boundary: no `Aborted.`, no exit 1; falls back and completes; with no
    other checkpoint, exit 2 naming last.pt."""
    run = clone(runs["stopped"], tmp_path / "run")
    damage(run / "checkpoints" / "last.pt", "empty", tmp_path / "pwned")
    proc = _engine(["resume", str(run)], tmp_path)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    assert "Aborted" not in err and "Traceback" not in err
    assert f"{run / 'checkpoints' / 'last.pt'}" in err and "is empty (0 bytes)" in err
    alone = clone(runs["stopped"], tmp_path / "alone")
    for name in ("best.pt", "teacher-last.pt"):
        (alone / "checkpoints" / name).unlink()
    damage(alone / "checkpoints" / "last.pt", "empty", tmp_path / "pwned")
    proc = _engine(["resume", str(alone)], tmp_path)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2, err[-3000:]
    assert "Aborted" not in err and "Traceback" not in err
    assert err.startswith("error: ") and str(alone / "checkpoints" / "last.pt") in err and "\nhint: " in err


@pytest.mark.parametrize("kind", ["hostile", "empty", "trunc-half", "corrupt-header", "directory"])
def test_resume_refuses_damaged_teacher_in_run_folder(kind: str, runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    teacher = run / "teacher.safetensors"
    damage(teacher, kind, inprocess / "pwned")
    result = invoke("resume", str(run))
    assert not (inprocess / "pwned").exists()
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(teacher) in errors[0], result.stderr[-3000:]
    assert "\nhint: " in result.stderr


def test_resume_refuses_nan_teacher_in_run_folder(runs, inprocess):
    from safetensors.torch import load_file, save_file
    run = clone(runs["stopped"], inprocess / "run")
    teacher = run / "teacher.safetensors"
    sd = load_file(teacher)
    sd["fc.weight"] = sd["fc.weight"] * float("nan")
    teacher.unlink()
    save_file(sd, teacher)
    result = invoke("resume", str(run))
    assert result.exit_code == 2, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(teacher) in errors[0] and "NaN" in errors[0]


CONFIG_DAMAGE = {**PRESET_DAMAGE,
                 "edited-lr": lambda text: text.replace(b"lr = 0.001", b"lr = 0.002"),
                 "edited-unknown-key": lambda text: text + b"\n[extra]\nfoo = 1\n",
                 "edited-bad-value": lambda text: text.replace(b"epochs = 3", b"epochs = -3")}
CONFIG_DAMAGE.pop("python-code")


@pytest.mark.parametrize("kind", list(CONFIG_DAMAGE))
def test_resume_refuses_damaged_config_toml(kind: str, runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    config = run / "config.toml"
    before = config.read_bytes()
    data = CONFIG_DAMAGE[kind](before)
    assert data != before
    config.unlink()
    if data is DIRECTORY:
        config.mkdir()
    else:
        config.write_bytes(data)
    result = invoke("resume", str(run))
    assert_cli_refused(result, run)  # names config.toml, or (edited) the checkpoint and config.toml in the hint
    assert "config.toml" in result.stderr, result.stderr
    assert not (run / "student.safetensors").exists()


# --- events.jsonl ------------------------------------------------------------------------------------

def test_read_events_replays_up_to_a_tear(tmp_path):
    from fbt_engine.events import Event, LogLine, read_events
    good = [json.dumps({"v": 1, "type": "step", "run": "r", "t": i, "step": i}) for i in range(3)]
    torn = good[2][: len(good[2]) // 2]
    path = tmp_path / "events.jsonl"
    nested = "[" * 100_000 + "]" * 100_000
    path.write_bytes(("\n".join(good[:2] + [torn, "garbage", "[1, 2]", '"x"', "null", nested,
                                             '{"type": 5, "t": "soon", "v": "x"}']) + "\n").encode()
                     + b"\xff\xfe\x00bad bytes\n" + b'{"type": "eval", "t": NaN}\n' + torn.encode())
    items = read_events(path)
    events = [i for i in items if isinstance(i, Event)]
    assert [e.get("step") for e in events[:2]] == [0, 1]
    assert events[2].type == "5" and events[2].t == 0.0
    assert all(isinstance(i, LogLine) for i in items[2:8])
    assert isinstance(items[-1], LogLine) and items[-1].text == torn


def test_read_events_of_a_directory_is_an_error_naming_it(tmp_path):
    from fbt_engine.events import read_events
    (tmp_path / "events.jsonl").mkdir()
    with pytest.raises(FBTError) as info:
        read_events(tmp_path / "events.jsonl")
    assert_names_file(info.value, tmp_path / "events.jsonl")


def test_resume_of_completed_run_with_torn_events_still_refused(runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    with open(run / "events.jsonl", "ab") as fh:
        fh.write(b'garbage\n\xff\xfe\n{"v":1,"type":"step","run":"finished","t":9.1,"lo')
    error = assert_cli_refused(invoke("resume", str(run)), run)
    assert "already completed" in error


@pytest.mark.slow
def test_resume_of_stopped_run_with_torn_events_completes(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    with open(run / "events.jsonl", "ab") as fh:  # the kill tore a line; a later writer appends after it
        fh.write(b'{"v":1,"type":"finished","run":"stopped","t":9.1,"reason":"compl')
    assert_completed(invoke("resume", str(run)), run)
    from fbt_engine.events import LogLine, read_events
    assert any(isinstance(i, LogLine) and "compl" in i.text for i in read_events(run / "events.jsonl"))


def test_resume_with_events_jsonl_a_directory_is_refused(runs, inprocess):
    run = clone(runs["stopped"], inprocess / "run")
    (run / "events.jsonl").unlink()
    (run / "events.jsonl").mkdir()
    assert_cli_refused(invoke("resume", str(run)), run / "events.jsonl")


# --- eval --------------------------------------------------------------------------------------------

def _eval_json(result) -> dict:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"crashed:\n{_crash(result)}")
    assert result.exit_code == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", ["hostile", "empty", "trunc-half", "list", "directory"])
def test_eval_folder_damaged_best_falls_back_to_student_safetensors(kind: str, runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    best = run / "checkpoints" / "best.pt"
    damage(best, kind, inprocess / "pwned")
    result = invoke("eval", str(run), "--json")
    assert not (inprocess / "pwned").exists()
    assert _eval_json(result)["weights"] == str(run / "student.safetensors")
    if kind != "directory":  # a folder is simply not a checkpoint file: skipped without a note
        assert "warning: " in result.stderr and str(best) in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["hostile-raw-pickle", "corrupt-header", "trunc-minus-1", "nan"])
def test_eval_folder_damaged_best_and_export_falls_back_to_last(kind: str, runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    damage(run / "checkpoints" / "best.pt", "trunc-10", inprocess / "pwned")
    export = run / "student.safetensors"
    if kind == "nan":
        from safetensors.torch import load_file, save_file
        sd = {k: v * float("nan") for k, v in load_file(export).items()}
        export.unlink()
        save_file(sd, export)
    else:
        damage(export, kind, inprocess / "pwned")
    result = invoke("eval", str(run), "--json")
    assert not (inprocess / "pwned").exists()
    assert _eval_json(result)["weights"] == str(run / "checkpoints" / "last.pt")
    assert str(export) in result.stderr


def test_eval_folder_every_file_damaged_is_refused(runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    for rel in ("checkpoints/best.pt", "student.safetensors", "checkpoints/last.pt"):
        damage(run / rel, "hostile", inprocess / "pwned")
    result = invoke("eval", str(run))
    assert not (inprocess / "pwned").exists()
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(run / "checkpoints" / "last.pt") in errors[0]


EVAL_EXPLICIT = [("checkpoints/best.pt", k) for k in ("hostile", "hostile-eval", "random", "empty", "trunc-10",
                                                      "trunc-half", "trunc-minus-1", "wrong-dict", "list")]
EVAL_EXPLICIT += [("checkpoints/last.pt", k) for k in ("hostile-raw-pickle", "empty")]
EVAL_EXPLICIT += [("student.safetensors", k) for k in ("hostile", "random", "empty", "trunc-10", "trunc-half",
                                                       "trunc-minus-1", "corrupt-header", "header-length-huge")]


@pytest.mark.parametrize("rel,kind", EVAL_EXPLICIT, ids=[f"{r.split('/')[-1]}-{k}" for r, k in EVAL_EXPLICIT])
def test_eval_refuses_damaged_file_given_explicitly(rel: str, kind: str, runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    target = run / rel
    damage(target, kind, inprocess / "pwned")
    result = invoke("eval", str(target))
    assert not (inprocess / "pwned").exists()
    assert_cli_refused(result, target)


def test_eval_refuses_teacher_phase_checkpoint(runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    assert_cli_refused(invoke("eval", str(run / "checkpoints" / "teacher-last.pt")),
                       run / "checkpoints" / "teacher-last.pt")


def test_eval_refuses_checkpoint_of_another_model(runs, inprocess):
    """Our keys, but the student weights are not this run's student's: refused, not a traceback."""
    import torch
    run = clone(runs["finished"], inprocess / "run")
    target = run / "checkpoints" / "best.pt"
    ckpt = torch.load(target, weights_only=True)
    ckpt["module"] = {"student.fc.weight": torch.zeros(3, 3)}
    target.unlink()
    torch.save(ckpt, target)
    assert_cli_refused(invoke("eval", str(target)), target)


def test_intact_run_folder_still_evaluates(runs, inprocess):
    run = clone(runs["finished"], inprocess / "run")
    assert _eval_json(invoke("eval", str(run), "--json"))["weights"] == str(run / "checkpoints" / "best.pt")
