"""[log] backends: W&B, trackio and MLflow get what summary.csv gets, offline; a missing package is a
preflight error with its pip command; no tracker is imported unless chosen."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_outputs import TINY, events, summary, tiny, train_teacher

from fbt_engine import config as C
from fbt_engine import run as R
from fbt_engine.errors import FBTError
from fbt_engine.loggers import build_loggers, trackers

HAS = {name: importlib.util.find_spec(name) is not None for name in ("wandb", "trackio", "mlflow", "sqlalchemy")}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return train_teacher(tmp_path_factory.mktemp("teacher_runs"))


def needs(package: str):
    return pytest.mark.skipif(not HAS[package], reason=f"the {package} package is not installed "
                                                       f"(pip install -e '.[loggers]')")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Nothing leaves the machine and nothing is written outside tmp_path."""
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)


def epoch_top1(run_dir: Path) -> list[float]:
    return [float(r["eval_top1"]) for r in summary(run_dir) if r["phase"] == "distill"]


def logged_run(teacher_file: Path, tmp_path: Path, backend: str, *overrides: str) -> Path:
    cfg = tiny(teacher_file, f'log.backends=["{backend}"]', *overrides)
    code, run_dir = R.start(cfg, runs_dir=str(tmp_path / "runs"))
    assert code == 0
    assert len(epoch_top1(run_dir)) == 2  # tiny.toml: 2 epochs of 2 steps
    return run_dir


# --- config ------------------------------------------------------------------------------------

def test_backends_are_choices_with_a_did_you_mean():
    with pytest.raises(C.ConfigError) as err:
        C.load_preset(TINY, ['log.backends=["tensorboard", "wandbb"]'])
    assert "log.backends[1]" in err.value.message and "did you mean `wandb`" in err.value.hint
    assert "tensorboard, wandb, trackio, mlflow" in err.value.hint
    with pytest.raises(C.ConfigError, match="log.wandb_mode"):
        C.load_preset(TINY, ["log.wandb_mode=ofline"])
    with pytest.raises(C.ConfigError, match="log.backends"):
        C.load_preset(TINY, ['log.backends="wandb"'])  # a list, not a string


def test_tensorboard_switch_is_an_alias_and_logging_is_outside_the_hash():
    plain = C.load_preset(TINY)
    assert plain.log.chosen() == () and plain.log.project == "fbt-workbench"
    both = C.load_preset(TINY, ["log.tensorboard=true", 'log.backends=["mlflow", "tensorboard", "mlflow"]'])
    assert both.log.chosen() == ("tensorboard", "mlflow")
    assert C.load_preset(TINY, ["log.tensorboard=true"]).log.chosen() == ("tensorboard",)
    assert C.config_hash(both) == C.config_hash(plain)  # a run may be resumed with other backends


@pytest.mark.parametrize("backend,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb"),
                                            ("trackio", "trackio"), ("mlflow", "mlflow"), ("mlflow", "sqlalchemy")])
def test_missing_package_is_a_preflight_error_with_the_pip_command(backend, module, tmp_path, monkeypatch):
    if module == "sqlalchemy" and HAS["mlflow"]:
        # mlflow registers its SQLite stores at import when sqlalchemy is there: import it first, or
        # this process's later MlflowClients would lack them (a package never vanishes in a real run)
        pytest.importorskip("mlflow.tracking")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    cfg = C.load_preset(TINY, [f'log.backends=["{backend}"]'])
    with pytest.raises(FBTError) as err:
        R.start(cfg, runs_dir=str(tmp_path / "runs"))
    assert f"pip install 'fbt-workbench[{backend}]'" in err.value.hint
    assert f"log.backends includes '{backend}'" in err.value.message
    assert not (tmp_path / "runs" / "tiny").exists()  # failed before the run folder


@needs("wandb")
def test_wandb_online_without_an_api_key_is_a_preflight_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key anywhere: env, settings, .netrc
    cfg = C.load_preset(TINY, ['log.backends=["wandb"]', 'log.wandb_mode="online"'])
    with pytest.raises(FBTError) as err:
        R.start(cfg, runs_dir=str(tmp_path / "runs"))
    assert "no W&B API key" in err.value.message and "wandb login" in err.value.hint
    assert 'log.wandb_mode = "offline"' in err.value.hint and not (tmp_path / "runs" / "tiny").exists()


def test_a_tracker_that_cannot_start_is_noted_and_left_out(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("api_key not configured (no-tty)\nmore")
    monkeypatch.setattr(trackers, "WandbSink", refuse)
    notes: list[str] = []
    rows = build_loggers(C.load_preset(TINY, ['log.backends=["wandb"]']), tmp_path, notes.append)
    assert [type(s).__name__ for s in rows.sinks] == ["CsvSink"]
    assert notes == ["wandb: logging could not start (api_key not configured (no-tty)); training goes on without it"]


def test_no_tracker_is_imported_unless_chosen(tmp_path):
    code = ("import sys; from pathlib import Path; from fbt_engine import cli, config as C; "
            "from fbt_engine.loggers import build_loggers; "
            f"build_loggers(C.load_preset({str(TINY)!r}), Path({str(tmp_path)!r})); "
            "print(sorted(m for m in ('wandb', 'mlflow', 'trackio', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_mlflow_names_are_made_valid():
    assert trackers.mlflow_key("distill/train/ofa/t->f") == "distill/train/ofa/t_to_f"
    assert trackers.mlflow_key("a b:c.d-e_f/g") == "a b:c.d-e_f/g" and trackers.mlflow_key("x@y") == "x_y"
    assert trackers.flatten({"train": {"lr": 1, "k": {}}, "v": [1]}) == {"train.lr": 1, "train.k": {}, "v": [1]}


# --- each backend, offline, read back ----------------------------------------------------------

def wandb_history(run_dir: Path) -> list[dict]:
    """The history records of an offline run's .wandb file: a LevelDB-style log (32 KiB blocks,
    7-byte chunk headers) of wandb Record protobufs after a 7-byte `:W&B` header."""
    from wandb.proto import wandb_internal_pb2 as pb
    [path] = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    data, block, pos, chunk, history = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a header: the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 or pos + 7 + length > len(data):  # the end, or a record still being written
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            chunk = b""
    return history


@needs("wandb")
def test_wandb_offline_gets_the_epoch_metrics(teacher_file, tmp_path):
    run_dir = logged_run(teacher_file, tmp_path, "wandb")  # wandb_mode auto: $WANDB_MODE=offline
    run_id = json.loads((run_dir / "loggers.json").read_text())["wandb"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    for _ in range(100):  # wandb's service may still be writing the file after finish() returns
        history = wandb_history(run_dir)
        epochs = [h for h in history if "distill/epoch/eval_top1" in h]
        if len(epochs) == 2:
            break
        time.sleep(0.2)
    assert [h["distill/epoch/eval_top1"] for h in epochs] == pytest.approx(epoch_top1(run_dir))
    assert [h["distill/epoch/epoch"] for h in epochs] == [1, 2]
    steps = [h for h in history if "distill/train/loss" in h]
    assert [h["distill/step"] for h in steps] == [s.get("step") for s in events(run_dir, "step")]
    assert "distill/train/ofa/t->f" in steps[0] and epochs[-1]["distill/step"] == steps[-1]["distill/step"]


@needs("wandb")
def test_wandb_resumed_run_folder_continues_its_wandb_run(tmp_path):
    from fbt_engine.events import Event
    cfg = C.load_preset(TINY, ['log.backends=["wandb"]'])
    first = trackers.WandbSink(cfg, tmp_path)
    first.close()
    run_id = trackers.tracker_ids(tmp_path)["wandb"]
    again = trackers.WandbSink(cfg, tmp_path)  # as `fbt-engine resume` builds it
    again.step(Event(type="step", run="tiny", t=1.0, data={"phase": "distill", "step": 5, "loss": 1.0}))
    again.close()
    assert again.run.id == first.run.id == run_id and trackers.tracker_ids(tmp_path) == {"wandb": run_id}
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


@needs("trackio")
def test_trackio_local_store_gets_the_epoch_metrics(teacher_file, tmp_path, monkeypatch):
    import trackio  # its store folder is read at import: point every module's copy at tmp_path
    store = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    for name, module in list(sys.modules.items()):
        if (name == "trackio" or name.startswith("trackio.")) and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)
    run_dir = logged_run(teacher_file, tmp_path, "trackio", 'log.project="fbt-test"')
    assert trackio is not None and json.loads((run_dir / "loggers.json").read_text())["trackio"] == run_dir.name
    [db] = list(store.glob("fbt-test*.db"))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id", (run_dir.name,)).fetchall()
    logged = [(step, json.loads(m)) for step, m in rows]
    epochs = [(step, m) for step, m in logged if "distill/epoch/eval_top1" in m]
    assert [m["distill/epoch/eval_top1"] for _, m in epochs] == pytest.approx(epoch_top1(run_dir))
    assert [step for step, _ in epochs] == [2, 4]  # the global step each epoch ended at
    assert [step for step, m in logged if "distill/train/loss" in m] == [1, 2, 3, 4]


@needs("mlflow")
@needs("sqlalchemy")
def test_mlflow_local_store_gets_the_epoch_metrics_and_a_resume_continues_its_run(teacher_file, tmp_path):
    from mlflow.tracking import MlflowClient
    when = lambda loop: loop.state.epoch == 1 and loop.state.epoch_step == 1  # noqa: E731 - mid epoch 2
    cfg = tiny(teacher_file, 'log.backends=["mlflow"]')
    code, run_dir = R.start(cfg, runs_dir=str(tmp_path / "runs"), stop_when=when)
    assert code == 0 and (run_dir / "mlflow.db").is_file()
    run_id = json.loads((run_dir / "loggers.json").read_text())["mlflow"]
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"  # stopped, resumable
    assert R.resume(run_dir) == 0
    assert json.loads((run_dir / "loggers.json").read_text())["mlflow"] == run_id  # the same MLflow run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["train.epochs"] == "2" and run.data.params["student.model"] == "vit_tiny_patch16_224"
    assert client.get_experiment(run.info.experiment_id).name == "fbt-workbench"
    top1 = client.get_metric_history(run_id, "distill/epoch/eval_top1")
    assert [m.value for m in sorted(top1, key=lambda m: m.step)] == pytest.approx(epoch_top1(run_dir))
    assert sorted(m.step for m in top1) == [2, 4]
    assert client.get_metric_history(run_id, "distill/train/ofa/t_to_f")
    assert not list(Path.cwd().glob("mlruns"))  # nothing written outside the run folder
