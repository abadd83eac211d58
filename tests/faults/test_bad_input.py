"""Every bad input is caught before work starts: exit 2, one `error:` line naming the input, one
`hint:` line, no traceback, and nothing written anywhere (no run folder, no `.tmp`, no file replaced).

One table of cases, each a copy of tests/data/tiny.toml with one change, a `--set`, a CLI argument
or a bad file. Every case runs `fbt-engine run` in-process; cases knowable without reading data
also run `fbt-engine validate`.

`needs_preflight=True` marks cases that only fbt_engine/preflight.py (models built, optimizer,
augmentation, device and teacher files checked before the run folder exists) catches;
`needs_cli=True` marks `--name` cases that need `run` to validate the name it was given.
"""

from __future__ import annotations

import datetime
import os
import pickle
import random
import signal
import sys
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import tomli_w
from typer.testing import CliRunner

from fbt_engine.cli import app
from fbt_engine.config import check_name, load_preset
from fbt_engine.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
DELETE = object()  # a `change` value: remove the key

# Small settings for every `run` (unless the case itself touches the key): a case that slips
# through starts only a few steps of work instead of a real run.
SMALL = ("data.train_subset=64", "data.val_subset=32", "train.epochs=1", "train.max_steps_per_epoch=1",
         "teacher.train.epochs=1")


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # substrings of the `error:` line ({in} is the inputs folder)
    change: dict[str, Any] = field(default_factory=dict)  # dotted key -> value in a copy of tiny.toml
    raw: str | bytes | None = None  # the whole preset file instead (no SMALL settings)
    preset: str = ""  # the preset path itself ({in}/...) instead of a written file
    sets: tuple[str, ...] = ()  # --set overrides (also given to validate)
    args: tuple[str, ...] = ()  # run-only CLI arguments
    files: Callable[[Path], None] | None = None  # makes input files under {in}
    unreadable: bool = False  # the preset cannot be read (permission)
    validate: bool = True  # `fbt-engine validate` must refuse it too
    needs_preflight: bool = False
    needs_cli: bool = False


# --- input files ---------------------------------------------------------------------------------

class Hostile:
    """Unpickling this calls os.mkdir: a loader that runs code leaves {in}/pwned behind."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _torch_bytes(obj: Any) -> bytes:
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tensors() -> dict:
    import torch
    return {"conv1.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.zeros(10)}


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save
    return save(tensors)


def _put(name: str, data: Callable[[Path], bytes]) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).write_bytes(data(d))
    return make


FILES = {
    "random.pth": _put("random.pth", lambda d: random.Random(0).randbytes(4096)),
    "empty.pth": _put("empty.pth", lambda d: b""),
    "truncated.safetensors": _put("truncated.safetensors", lambda d: _safetensors_bytes(_tensors())[:300]),
    "truncated.pth": _put("truncated.pth", lambda d: _torch_bytes(_tensors())[:700]),
    "hostile.pth": _put("hostile.pth", lambda d: _torch_bytes({"fc.bias": Hostile(d / "pwned")})),
    "hostile.pt": _put("hostile.pt", lambda d: pickle.dumps({"fc.bias": Hostile(d / "pwned")})),
    "nan.pth": _put("nan.pth", lambda d: _torch_bytes({k: v * float("nan") for k, v in _tensors().items()})),
    "other.safetensors": _put("other.safetensors", lambda d: _safetensors_bytes({"foo.weight": _tensors()["fc.bias"]})),
    "text.safetensors": _put("text.safetensors", lambda d: b"these are not weights\n"),
    "adir.pth": lambda d: (d / "adir.pth").mkdir(),
    "emptydir": lambda d: (d / "emptydir").mkdir(),
    "afile": _put("afile", lambda d: b"a file where a folder belongs\n"),
    "preset-dir.toml": lambda d: (d / "preset-dir.toml").mkdir(),
}


def teacher_file(name: str, expect: str = "", **kw: Any) -> Case:
    return Case(f"teacher-file-{name}", (expect or name,), change={"teacher.checkpoint": f"{{in}}/{name}"},
                files=FILES[name], needs_preflight=True, **kw)


def rng(key: str, value: Any, **kw: Any) -> Case:
    """A preset with one out-of-range (or non-finite) number; the error names the key."""
    return Case(f"{key}={value!r}", (key,), change={key: value}, **kw)


def sets(*overrides: str, expect: tuple[str, ...], **kw: Any) -> Case:
    return Case("set-" + "-".join(overrides), expect, sets=overrides, **kw)


def name_arg(label: str, value: str, expect: tuple[str, ...] = ("name",)) -> Case:
    return Case(f"--name-{label}", expect, args=("--name", value), validate=False, needs_cli=True)


NAN, INF = float("nan"), float("inf")

CASES: list[Case] = [
    # --- the preset file itself --------------------------------------------------------------
    Case("preset-missing", ("missing.toml", "does not exist"), preset="{in}/missing.toml"),
    Case("preset-is-a-directory", ("preset-dir.toml", "directory"), preset="{in}/preset-dir.toml",
         files=FILES["preset-dir.toml"]),
    Case("preset-not-utf8", ("bad.toml", "UTF-8"), raw=b'name = "caf\xe9"\n[student]\nmodel = "resnet18"\n'),
    Case("preset-binary", ("bad.toml",), raw=random.Random(1).randbytes(2048)),
    Case("preset-unreadable", ("bad.toml", "cannot be read"), raw=TINY.read_text(), unreadable=True),
    Case("preset-invalid-toml", ("bad.toml", "not valid TOML"), raw="name = \n"),
    Case("preset-duplicate-key", ("bad.toml", "not valid TOML"), raw='name = "a"\nname = "b"\n'),
    Case("preset-empty", ("student.model", "bad.toml"), raw=""),
    # --- keys and types ------------------------------------------------------------------------
    Case("unknown-key", ("train.epoch", "bad.toml"), change={"train.epoch": 2}),
    Case("unknown-section", ("fuson",), change={"fuson.split": 2}),
    Case("wrong-type", ("train.epochs", "int", "bad.toml"), change={"train.epochs": "two"}),
    Case("bool-for-int", ("train.batch_size", "int"), change={"train.batch_size": True}),
    Case("date-for-int", ("seed", "int"), change={"seed": datetime.date(1979, 5, 27)}),
    Case("list-item-type", ("data.mean[0]", "float"), change={"data.mean": ["a", "b", "c"]}),
    Case("table-is-a-number", ("teacher.train", "table"), change={"teacher.train": 5}),
    Case("student-missing", ("student.model", "missing"), change={"student": DELETE}),
    Case("method-typo", ("method", "fbtt"), change={"method": "fbtt"}),
    Case("sched-typo", ("train.sched", "cosin"), change={"train.sched": "cosin"}),
    Case("split-4", ("fusion.split",), change={"fusion.split": 4}),
    # --- non-finite numbers --------------------------------------------------------------------
    rng("train.lr", INF), rng("train.lr", NAN), rng("loss.nce", NAN), rng("loss.ofa_eps", -INF),
    rng("train.weight_decay", NAN), rng("teacher.train.lr", INF),
    Case("kwargs-nan", ("student.kwargs.drop_rate",),
         change={"student.kwargs": {"patch_size": 8, "depth": 4, "drop_rate": NAN}}),
    # --- ranges --------------------------------------------------------------------------------
    rng("seed", -1), rng("seed", 2**70), rng("train.epochs", 2**70),
    rng("data.img_size", 100000), rng("data.img_size", 4),
    rng("data.num_workers", -1), rng("data.train_subset", -5), rng("data.val_subset", -1),
    rng("data.val_fraction", 1.0), rng("data.val_fraction", 0.0),
    rng("train.batch_size", 100000), rng("train.batch_size", 0),
    rng("train.min_lr", -1e-5), rng("train.warmup_lr", -1.0), rng("train.momentum", -0.9),
    rng("train.grad_clip", -1.0), rng("train.ema_decay", 1.0), rng("train.warmup_epochs", -1),
    rng("train.decay_epochs", -30), rng("train.decay_rate", 0.0), rng("train.max_steps_per_epoch", -1),
    rng("train.threads", -1),
    rng("aug.hflip", 1.5), rng("aug.random_erasing", -0.1), rng("aug.label_smoothing", 1.0),
    rng("aug.scale_min", 0.0), rng("aug.mixup", -0.8), rng("aug.cutmix", -1.0),
    rng("loss.nce_dim", 0), rng("loss.nce_tau_init", 0.0),
    rng("teacher.train.epochs", 0), rng("teacher.train.lr", 0.0), rng("teacher.train.min_lr", -1.0),
    rng("teacher.train.weight_decay", -1.0), rng("teacher.train.warmup_epochs", -1),
    rng("teacher.train.batch_size", -1),
    Case("std-zero", ("data.std",), change={"data.std": [0.0, 0.0, 0.0]}),
    Case("mean-two-values", ("data.mean",), change={"data.mean": [0.5, 0.5]}),
    # --- device, name, runs_dir ----------------------------------------------------------------
    Case("device-gpu", ("train.device", "gpu"), change={"train.device": "gpu"}),
    Case("device-tpu", ("train.device", "tpu"), change={"train.device": "tpu"}),
    Case("device-cuda-minus-1", ("train.device", "cuda:-1"), change={"train.device": "cuda:-1"}),
    Case("name-dotdot", ("name", "../escaped"), change={"name": "../escaped"}),
    Case("name-absolute", ("name",), change={"name": "{in}/abs"}),
    Case("name-hidden", ("name", ".hidden"), change={"name": ".hidden"}),
    Case("name-empty", ("name",), change={"name": ""}),
    Case("name-nul", ("name",), change={"name": "a\x00b"}),
    Case("runs-dir-empty", ("runs_dir",), change={"runs_dir": ""}),
    # --- --set overrides -----------------------------------------------------------------------
    sets("train.lr=inf", expect=("train.lr",)),
    sets("loss.nce=nan", expect=("loss.nce",)),
    sets("seed=-1", expect=("seed",)),
    sets("data.img_size=100000", expect=("data.img_size",)),
    sets("data.std=[0,0,0]", expect=("data.std",)),
    sets("train.device=gpu", expect=("train.device", "gpu")),
    sets("train.sched=cosin", expect=("train.sched", "cosin")),
    sets("name=../escaped", expect=("name", "../escaped")),
    sets("train.epochs", expect=("train.epochs", "=")),
    sets("=5", expect=("=5",)),
    sets("train.epochs.x=1", expect=("train.epochs",)),
    sets("train..lr=1", expect=("train..lr",)),
    sets("nosuch.key=1", expect=("nosuch",)),
    sets("train.epoch=5", expect=("train.epoch",)),
    # --- CLI arguments -------------------------------------------------------------------------
    name_arg("dotdot", "../escaped", ("name", "../escaped")),
    name_arg("absolute", "{in}/abs"),
    name_arg("empty", ""),
    name_arg("hidden", ".hidden"),
    name_arg("dotdot-only", ".."),
    name_arg("backslash", "a\\b"),
    name_arg("space", "my run"),
    name_arg("5MB", "x" * 5_000_000),
    Case("--runs-dir-empty", ("runs_dir",), args=("--runs-dir", ""), validate=False, needs_cli=True),
    Case("runs-dir-is-a-file", ("afile",), args=("--runs-dir", "{in}/afile"), files=FILES["afile"],
         validate=False, needs_preflight=True),
    # --- models, optimizer, augmentation, device: preflight builds them ------------------------
    Case("student-misspelled", ("vit_tinyy_patch16_224",), change={"student.model": "vit_tinyy_patch16_224"},
         needs_preflight=True),
    Case("teacher-misspelled", ("resnet181",), change={"teacher.model": "resnet181"}, needs_preflight=True),
    Case("teacher-unknown", ("no_such_model",), change={"teacher.model": "no_such_model"}, needs_preflight=True),
    Case("student-kwargs-patch7", ("patch",), change={"student.kwargs": {"patch_size": 7, "depth": 4}},
         needs_preflight=True),
    Case("student-kwargs-foo", ("foo",), change={"student.kwargs": {"patch_size": 8, "depth": 4, "foo": 1}},
         needs_preflight=True),
    Case("teacher-kwargs-foo", ("foo",), change={"teacher.kwargs": {"foo": 1}}, needs_preflight=True),
    Case("img-size-30-patch-8", ("30",), change={"data.img_size": 30}, needs_preflight=True),
    Case("pair-not-fusable", ("levit_128s",), change={"student": {"model": "levit_128s"}}, needs_preflight=True),
    Case("optimizer-typo", ("adamww",), change={"train.optimizer": "adamww"}, needs_preflight=True),
    Case("teacher-optimizer-typo", ("sgdd",), change={"teacher.train.optimizer": "sgdd"}, needs_preflight=True),
    Case("randaugment-foo", ("foo",), change={"aug.randaugment": "foo"}, needs_preflight=True),
    Case("device-cuda-absent", ("cuda",), change={"train.device": "{cuda}"}, needs_preflight=True),
    Case("device-mps-absent", ("mps",), change={"train.device": "mps"}, needs_preflight=True),
    # --- teacher and student files ------------------------------------------------------------
    teacher_file("random.pth"), teacher_file("empty.pth"), teacher_file("truncated.safetensors"),
    teacher_file("truncated.pth"), teacher_file("adir.pth"), teacher_file("hostile.pth"),
    teacher_file("hostile.pt"), teacher_file("nan.pth"), teacher_file("other.safetensors"),
    teacher_file("text.safetensors"),
    Case("teacher-file-missing-no-train", ("missing.safetensors",),
         change={"teacher.checkpoint": "{in}/missing.safetensors", "teacher.train": DELETE}, needs_preflight=True),
    Case("student-file-random", ("random.pth",), change={"student.checkpoint": "{in}/random.pth"},
         files=FILES["random.pth"], needs_preflight=True),
    # --- data that is not there (found when the data is looked for) ---------------------------
    Case("imagefolder-root-missing", ("nowhere",), change={"data.name": "imagefolder", "data.root": "{in}/nowhere"},
         validate=False, needs_preflight=True),
    Case("imagefolder-root-empty", ("emptydir",), change={"data.name": "imagefolder", "data.root": "{in}/emptydir"},
         files=FILES["emptydir"], validate=False, needs_preflight=True),
    Case("cifar100-not-there", ("emptydir",), change={"data.name": "cifar100", "data.root": "{in}/emptydir"},
         files=FILES["emptydir"], validate=False, needs_preflight=True),
]


# --- running a case ------------------------------------------------------------------------------

def _cuda() -> str:
    """A CUDA device this machine lacks: `cuda` on a CPU box, `cuda:99` where a GPU is present."""
    import torch
    return "cuda:99" if torch.cuda.is_available() else "cuda"


def _subst(value: Any, inputs: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{in}", str(inputs)).replace("{cuda}", _cuda() if "{cuda}" in value else "")
    if isinstance(value, dict):
        return {k: _subst(v, inputs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_subst(v, inputs) for v in value)
    return value


def _apply(data: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    elif value is not None:
        node[last] = value


def _write_preset(case: Case, inputs: Path) -> Path:
    path = inputs / "bad.toml"
    if case.preset:
        return Path(_subst(case.preset, inputs))
    if case.raw is not None:
        path.write_bytes(case.raw.encode() if isinstance(case.raw, str) else case.raw)
        return path
    data = tomllib.loads(TINY.read_text(encoding="utf-8"))
    for key, value in case.change.items():
        _apply(data, key, _subst(value, inputs))
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _touches(case: Case, key: str) -> bool:
    touched = list(case.change) + [s.partition("=")[0] for s in case.sets]
    return any(t == key or key.startswith(t + ".") or t.startswith(key + ".") for t in touched)


def _small(case: Case) -> list[str]:
    if case.raw is not None or case.preset:
        return []
    return [a for s in SMALL if not _touches(case, s.partition("=")[0]) for a in ("--set", s)]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, size, mode and mtime (a folder's mtime moves when an
    entry is created or removed, so a `.tmp` written and deleted again shows too)."""
    out = {".": (os.lstat(root).st_mtime_ns,)}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size if not os.path.isdir(p) else 0, st.st_mtime_ns)
    return out


@pytest.fixture
def world(tmp_path, monkeypatch):
    """tmp/in (inputs), tmp/runs (holding an earlier run that must stay untouched), tmp/cwd (the
    working directory, so relative paths land inside the snapshot too); no network."""
    inputs, runs, cwd = tmp_path / "in", tmp_path / "runs", tmp_path / "cwd"
    for d in (inputs, runs / "earlier", cwd):
        d.mkdir(parents=True)
    (runs / "earlier" / "config.toml").write_text('name = "earlier"\n')
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TIMM_USE_OLD_CACHE", "0")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch_state = _torch_state()
    yield tmp_path, inputs, runs
    for s, h in handlers.items():  # `run` ignores SIGINT after it returns (cli._ignore_late_signals)
        signal.signal(s, h)
    _restore_torch(torch_state)


def _torch_state() -> tuple | None:
    if "torch" not in sys.modules:
        return None
    import torch
    return torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()


def _restore_torch(state: tuple | None) -> None:
    if state is None and "torch" not in sys.modules:
        return
    import torch
    threads, det = state or (torch.get_num_threads(), False)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def _make_unreadable(path: Path, monkeypatch) -> None:
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: refuse the read as the OS would
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read_bytes(self).decode(*a, **k))


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=True)


def assert_refused(result, case: Case, inputs: Path) -> str:
    """Exit 2, one `error:` line naming the input, one `hint:` line, no traceback, no stdout."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"crashed instead of refusing ({type(result.exception).__name__}):\n{tb[-3000:]}")
    err = result.stderr
    assert result.exit_code == 2, f"exit code {result.exit_code}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in result.output
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    hints = [line for line in err.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, f"want one error: and one hint: line, got:\n{err[-3000:]}"
    assert err.splitlines() == [errors[0], hints[0]], f"stderr holds more than the error:\n{err[-3000:]}"
    assert len(errors[0]) < 1000, "the error line must stay short (values are cut)"
    for want in _subst(case.expect, inputs):
        assert want in errors[0], f"{want!r} not named in: {errors[0]}"
    assert result.stdout == ""
    return errors[0]


def _ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_run_refuses_and_writes_nothing(case: Case, world, monkeypatch):
    tmp, inputs, runs = world
    if case.files:
        case.files(inputs)
    preset = _write_preset(case, inputs)
    if case.unreadable:
        _make_unreadable(preset, monkeypatch)
    args = ["run", str(preset), "--runs-dir", str(runs), *_small(case)]
    args += [a for s in case.sets for a in ("--set", s)] + list(_subst(case.args, inputs))
    before = snapshot(tmp)
    result = _invoke(args)
    after = snapshot(tmp)
    assert not (inputs / "pwned").exists(), "a hostile pickle ran code"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    try:
        assert_refused(result, case, inputs)
    finally:
        assert not changed, f"files written or changed: {changed[:10]}"


VALIDATE = [c for c in CASES if c.validate]


@pytest.mark.parametrize("case", VALIDATE, ids=_ids(VALIDATE))
def test_validate_refuses(case: Case, world, monkeypatch):
    tmp, inputs, _ = world
    if case.files:
        case.files(inputs)
    preset = _write_preset(case, inputs)
    if case.unreadable:
        _make_unreadable(preset, monkeypatch)
    before = snapshot(tmp)
    result = _invoke(["validate", str(preset), *[a for s in case.sets for a in ("--set", s)]])
    assert not (inputs / "pwned").exists(), "a hostile pickle ran code"
    assert snapshot(tmp) == before
    assert_refused(result, case, inputs)


def test_the_table_is_large_and_ids_are_unique():
    assert len(CASES) >= 60
    assert len(set(_ids(CASES))) == len(CASES)


# --- the rules do not refuse good values -----------------------------------------------------------

GOOD_EDGES = ["seed=4294967295", "seed=0", "data.img_size=2048", "data.img_size=8", "train.batch_size=65536",
              "data.val_fraction=0.5", "train.ema_decay=0.99996", "train.device='cuda:0'", "train.device=mps",
              "train.device=cpu", "data.mean=[0.5]", "data.std=[0.25]", "data.mean=[0.1,0.2,0.3]",
              "aug.hflip=1.0", "aug.label_smoothing=0.0", "aug.scale_min=1.0", "train.warmup_epochs=5",
              "name='" + "a" * 100 + "'", "name=run_1.2-b", "teacher.train.batch_size=0", "train.decay_rate=1.0"]


@pytest.mark.parametrize("override", GOOD_EDGES)
def test_edge_values_are_accepted(override):
    load_preset(TINY, [override])


@pytest.mark.parametrize("name", ["quickstart", "run-2", "a", "A.b_c-d", "0", "-x", "a" * 100])
def test_check_name_accepts_plain_folder_names(name):
    check_name(name, "--name")


@pytest.mark.parametrize("name", ["", ".", "..", ".x", "a/b", "a\\b", "/abs", "a" * 101, "a b", "é", "a\x00"])
def test_check_name_refuses(name):
    with pytest.raises(ConfigError) as info:
        check_name(name, "--name")
    assert "--name" in info.value.message and info.value.hint
