"""Pure helpers of the TUI: run state folding, smoothing, thinning, stderr parsing, filters, statuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fbt_engine.events import Event, LogLine, decode
from fbt_tui.engine_client import engine_command, parse_error
from fbt_tui.run_state import RunState, ema
from fbt_tui.runs import format_duration, scan_runs
from fbt_tui.screens.catalog import filter_models, format_params, sort_models
from fbt_tui.screens.configure import FIELDS, error_key, field_value, unique_name
from fbt_tui.widgets.charts import thin
from fbt_engine.errors import ConfigError


def test_statuses_derived_per_protocol(canned_runs: Path) -> None:
    got = {r.name: r.status for r in scan_runs(canned_runs)}
    assert got == {"a-scratch": "completed", "b-kd": "completed", "c-fbt": "completed",
                   "d-stopped": "stopped", "e-failed": "failed", "f-crashed": "crashed", "g-live": "running"}
    fbt = next(r for r in scan_runs(canned_runs) if r.name == "c-fbt")
    assert fbt.best_top1 == 75.0 and fbt.duration_s == 125.0 and fbt.method == "fbt"


def test_torn_last_line_and_unknown_types(tmp_path: Path) -> None:
    state = RunState()
    for line in ['{"v":1,"type":"started","run":"r","t":0,"pid":1}', '{"v":1,"type":"wibble","run":"r","t":1}',
                 "plain stderr-ish text", '{"v":1,"type":"step","run":"r","t":2,"step":1,"epoch":1,"loss":"nan",'
                 '"terms":{"ce":"inf","kd":0.5}}', '{"v":1,"type":"ste']:
        item = decode(line)
        if item is not None:
            state.apply(item)
    assert state.name == "r" and state.status == "running"
    assert "kd" in state.losses and "ce" not in state.losses and state.loss is None  # NaN/inf skipped
    assert "plain stderr-ish text" in state.log and '{"v":1,"type":"ste' in state.log


def test_phases_continue_the_x_axis() -> None:
    state = RunState()
    for ev in ({"type": "phase", "phase": "teacher"}, {"type": "step", "phase": "teacher", "step": 5, "loss": 1.0},
               {"type": "phase", "phase": "distill"}, {"type": "step", "phase": "distill", "step": 1, "loss": 2.0}):
        data = {k: v for k, v in ev.items() if k != "type"}
        state.apply(Event(type=ev["type"], run="r", t=0.0, data=data))
    assert state.losses["teacher total"] == ([5.0], [1.0]) and state.losses["total"] == ([6.0], [2.0])


def test_process_exit_without_final_event_is_a_crash() -> None:
    state = RunState(status="running")
    state.process_exited(1, ["Traceback ...", "RuntimeError: boom"])
    assert state.status == "crashed" and "RuntimeError: boom" in state.hint
    done = RunState()
    done.apply(Event("finished", "r", 1.0, {"reason": "stopped"}))
    done.process_exited(0, [])
    assert done.status == "stopped"


def test_ema_and_thin() -> None:
    assert ema([0.0, 10.0], alpha=0.5) == [0.0, 5.0]
    xs = list(range(1000))
    tx, ty = thin([float(x) for x in xs], [float(x) for x in xs], 50)
    assert len(tx) <= 50 and tx[0] == 0 and tx[-1] == 999


def test_parse_error() -> None:
    err = parse_error("some noise\nerror: unknown model 'x'\nhint: see fbt-engine models\n", 2)
    assert (err.message, err.hint) == ("unknown model 'x'", "see fbt-engine models")
    crash = parse_error('Traceback (most recent call last):\n  File "a.py"\nValueError: bad\n', 1)
    assert crash.message == "the engine crashed: ValueError: bad" and "Traceback" not in crash.message


def test_engine_command_from_env(monkeypatch) -> None:
    monkeypatch.setenv("FBT_ENGINE", "python 'my engine.py'")
    assert engine_command() == ["python", "my engine.py"]
    monkeypatch.delenv("FBT_ENGINE")
    # the engine installed beside this interpreter (an unactivated venv), else whatever PATH finds
    beside = Path(sys.executable).with_name("fbt-engine")
    assert engine_command() == ([str(beside)] if beside.is_file() else ["fbt-engine"])
    monkeypatch.setattr(sys, "executable", "/nowhere/bin/python")
    assert engine_command() == ["fbt-engine"]


def test_catalog_filters() -> None:
    models = [{"name": "resnet18", "family": "resnet", "kind": "cnn", "params": 11e6, "fusable": True},
              {"name": "vit_tiny", "family": "vit", "kind": "msa", "params": None, "fusable": False}]
    assert [m["name"] for m in filter_models(models, "RES")] == ["resnet18"]
    assert [m["name"] for m in filter_models(models, kind="msa")] == ["vit_tiny"]
    assert filter_models(models, fusable_only=True) == models[:1]
    assert [m["name"] for m in sort_models(models, "params", reverse=True)] == ["resnet18", "vit_tiny"]
    assert format_params(11689512) == "11.7M" and format_params(None) == "?"


def test_configure_helpers(tmp_path: Path) -> None:
    name = next(f for f in FIELDS if f.key == "name")
    epochs = next(f for f in FIELDS if f.key == "train.epochs")
    assert field_value(name, "123") == (False, "123") and field_value(epochs, " 5 ") == (False, 5)  # "123" stays a string
    kwargs, teacher_epochs = (next(f for f in FIELDS if f.key == k) for k in ("student.kwargs", "teacher.train.epochs"))
    assert field_value(kwargs, "{patch_size = 8}") == (False, {"patch_size": 8}) and field_value(kwargs, " ")[0]
    assert field_value(teacher_epochs, "")[0] and field_value(epochs, "abc") == (False, "abc")  # abc: named by validation
    assert error_key(ConfigError("`train.lr` in x must be > 0")) == "train.lr"
    (tmp_path / "a").mkdir()
    assert unique_name(tmp_path, "a") == "a-2" and unique_name(tmp_path, "b") == "b"
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s" and format_duration(None) == ""


def test_log_line_is_kept_as_text() -> None:
    assert isinstance(decode("not json"), LogLine)
    assert json.loads('{"a": 1}') == {"a": 1}


def test_one_shot_engine_killed_by_a_signal_is_named() -> None:
    from fbt_tui.engine_client import parse_error
    err = parse_error("", -9)
    assert "SIGKILL" in err.message and "out of memory" in err.message and err.returncode == -9
    assert parse_error("", 3).message == "the engine exited with code 3 and printed nothing"
