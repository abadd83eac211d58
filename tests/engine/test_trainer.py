"""The trainer on real (tiny) data: events, teacher phase, exact resume, stop, NaN, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fbt_engine import config as C
from fbt_engine import methods
from fbt_engine import run as R
from fbt_engine.errors import FBTError
from fbt_engine.events import Event, read_events

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"


def events(run_dir: Path, type_: str | None = None) -> list[Event]:
    evs = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event)]
    return [e for e in evs if type_ is None or e.type == type_]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """One teacher trained in-pipeline (1 epoch) and shared by the tests of this module."""
    runs = tmp_path_factory.mktemp("teacher_runs")
    path = runs / "teacher.safetensors"
    cfg = C.load_preset(TINY, [f"teacher.checkpoint={json.dumps(str(path))}", "train.epochs=1",
                               "train.max_steps_per_epoch=1"])
    code, run_dir = R.start(cfg, runs_dir=str(runs))
    assert code == 0
    assert path.is_file()
    assert [e.get("phase") for e in events(run_dir, "phase")] == ["teacher", "distill"]
    return path


def tiny(teacher_file: Path, *overrides: str) -> C.RunConfig:
    return C.load_preset(TINY, [f"teacher.checkpoint={json.dumps(str(teacher_file))}", *overrides])


def test_event_stream_and_outputs(teacher_file, tmp_path):
    code, run_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path))
    assert code == 0
    types = [e.type for e in events(run_dir)]
    assert types[0] == "started" and types[-1] == "finished"
    assert "phase" not in types[:1] and types.count("eval") == 2 and types.count("checkpoint") == 2
    step = events(run_dir, "step")[-1]
    assert {"ce", "ofa/t->f", "nce/t->f", "ofa/f->s", "nce/f->s", "ofa/t->s", "nce/t->s"} <= set(step.get("terms"))
    assert step.get("samples_per_s") > 0 and step.get("lr") > 0
    ev = events(run_dir, "eval")[-1]
    for key in ("student_top1", "student_top5", "fused_top1", "teacher_top1"):
        assert 0 <= ev.get(key) <= 100
    fin = events(run_dir, "finished")[0]
    assert fin.get("reason") == "completed" and fin.get("best")["epoch"] in (1, 2)
    for name in ("config.toml", "log.txt", "checkpoints/last.pt", "checkpoints/best.pt", "student.safetensors"):
        assert (run_dir / name).is_file(), name
    # the resolved preset repeats the run exactly
    assert C.load_preset(run_dir / "config.toml") == C.replace(tiny(teacher_file), name=run_dir.name,
                                                                runs_dir=str(tmp_path))


def test_student_safetensors_loads_with_timm(teacher_file, tmp_path):
    import timm
    from fbt_engine.evaluate import evaluate_run
    code, run_dir = R.start(tiny(teacher_file, "train.epochs=1"), runs_dir=str(tmp_path))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=10, img_size=32, patch_size=8,
                              depth=4, pretrained_cfg_overlay=dict(file=str(run_dir / "student.safetensors"),
                                                                   num_classes=10))
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["module"]
    torch.testing.assert_close(model.head.weight, trained["student.head.weight"])
    ev = events(run_dir, "eval")[-1]
    result = evaluate_run(run_dir / "student.safetensors", [])
    assert result["top1"] == pytest.approx(ev.get("student_top1"))


@pytest.mark.parametrize("stop_at", ["mid_epoch", "epoch_end"])
def test_resume_is_exact(teacher_file, tmp_path, stop_at):
    """Deterministic CPU: stop during/after epoch 1, resume, and get the uninterrupted epoch-2 numbers."""
    full_code, full_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path / "full"))
    if stop_at == "mid_epoch":
        when = lambda loop: loop.state.epoch == 1 and loop.state.epoch_step == 1  # noqa: E731
    else:
        when = lambda loop: loop.state.epoch == 0 and loop.state.epoch_step == loop.steps_per_epoch  # noqa: E731
    code, run_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path / "split"), stop_when=when)
    assert code == 0 and events(run_dir, "finished")[-1].get("reason") == "stopped"
    assert R.resume(run_dir) == 0
    full_evals = [(e.get("epoch"), e.get("student_top1"), e.get("fused_top1")) for e in events(full_dir, "eval")]
    split_evals = [(e.get("epoch"), e.get("student_top1"), e.get("fused_top1")) for e in events(run_dir, "eval")]
    assert split_evals == full_evals
    full_losses = [(e.get("step"), e.get("loss")) for e in events(full_dir, "step")]
    split_losses = {(e.get("step"), e.get("loss")) for e in events(run_dir, "step")}
    assert set(full_losses) == split_losses
    assert events(run_dir, "started")[-1].get("resumed") is True
    assert events(run_dir, "finished")[-1].get("reason") == "completed"


def test_resume_refuses_a_completed_run(teacher_file, tmp_path):
    code, run_dir = R.start(tiny(teacher_file, "train.epochs=1"), runs_dir=str(tmp_path))
    with pytest.raises(C.ConfigError.__mro__[1]) as err:  # FBTError
        R.resume(run_dir)
    assert "already completed" in err.value.message


def test_nan_loss_fails_naming_step_and_term(teacher_file, tmp_path, monkeypatch):
    from fbt_engine.methods.fbt import FBT
    original = FBT.compute
    calls = {"n": 0}

    def poisoned(self, x, target, index):
        calls["n"] += x.device.type != "meta"  # preflight's dry run on meta is not a step
        thunks = original(self, x, target, index)
        if calls["n"] >= 6:  # epoch 2 (4 steps an epoch), second step
            name = self.term_names()[2]
            fn = thunks[name]
            thunks[name] = lambda: fn() * float("nan")
        return thunks

    monkeypatch.setattr(FBT, "compute", poisoned)
    code, run_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path))
    assert code == 1
    failed = events(run_dir, "failed")[-1]
    assert failed.get("kind") == "nan_loss" and failed.get("step") == 6
    assert failed.get("term") == failed.get("term") and failed.get("term") != "total"
    assert failed.get("term") in events(run_dir, "step")[-1].get("terms")
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 1  # the last good checkpoint is kept
    assert all(torch.isfinite(v).all() for v in ckpt["module"].values() if v.is_floating_point())


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    cfg = C.load_preset(TINY, [f"teacher.checkpoint={json.dumps(str(tmp_path / 'nope.safetensors'))}"])
    cfg = C.replace(cfg, teacher=C.replace(cfg.teacher, train=None))
    with pytest.raises(FBTError) as err:  # before any work: no run folder is made
        R.start(cfg, runs_dir=str(tmp_path / "runs"))
    assert "nope.safetensors" in err.value.message and "does not exist" in err.value.message
    assert "[teacher.train]" in err.value.hint
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", [m for m in methods.names() if m != "fbt"])
def test_baselines_train(teacher_file, tmp_path, method):
    """Every method of the registry trains end to end in a run, logging each of its terms."""
    code, run_dir = R.start(tiny(teacher_file, f"method={json.dumps(method)}", "train.epochs=1"),
                            runs_dir=str(tmp_path))
    assert code == 0
    terms = set(events(run_dir, "step")[-1].get("terms"))
    assert terms == {n for n, w in methods.get(method).term_weights(C.LossConfig()).items() if w > 0}
    assert len(terms) >= 1 + (method != "scratch")
    ev = events(run_dir, "eval")[-1]
    assert ev.get("fused_top1") is None
    assert (ev.get("teacher_top1") is None) == (method == "scratch")


def test_model_ema_and_step_schedule(teacher_file, tmp_path):
    code, run_dir = R.start(tiny(teacher_file, "train.ema_decay=0.9", 'train.sched="step"', "train.decay_epochs=1",
                                 'method="kd"'), runs_dir=str(tmp_path))
    assert code == 0
    evs = events(run_dir, "eval")
    assert all(e.get("ema_top1") is not None for e in evs)
    lrs = [e.get("lr") for e in events(run_dir, "step")]
    assert lrs == pytest.approx([1e-3] * 4 + [1e-4] * 4)  # 4 steps an epoch, x0.1 after each epoch
