"""What a run leaves for people and other tools: summary.csv, TensorBoard, the student's timm config.
(W&B, trackio and MLflow: test_loggers.py.)"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from fbt_engine import config as C
from fbt_engine import run as R
from fbt_engine.errors import FBTError
from fbt_engine.events import Event, read_events

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def events(run_dir: Path, type_: str) -> list[Event]:
    return [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, Event) and e.type == type_]


def summary(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "summary.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return train_teacher(tmp_path_factory.mktemp("teacher_runs"))


def train_teacher(runs: Path) -> Path:
    """A 1-step teacher (and a 1-step distillation), as a file for tiny() runs (test_loggers.py too)."""
    path = runs / "teacher.safetensors"
    cfg = C.load_preset(TINY, [f"teacher.checkpoint={json.dumps(str(path))}", "train.epochs=1",
                               "train.max_steps_per_epoch=1"])
    code, run_dir = R.start(cfg, runs_dir=str(runs))
    assert code == 0 and path.is_file()
    rows = summary(run_dir)  # the teacher phase has its rows too, told apart by `phase`
    assert [(r["phase"], r["epoch"]) for r in rows] == [("teacher", "1"), ("distill", "1")]
    return path


def tiny(teacher_file: Path, *overrides: str) -> C.RunConfig:
    return C.load_preset(TINY, [f"teacher.checkpoint={json.dumps(str(teacher_file))}",
                                "train.max_steps_per_epoch=2", *overrides])


def test_summary_csv_one_row_per_epoch(teacher_file, tmp_path):
    code, run_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path))
    assert code == 0
    rows = summary(run_dir)
    evals = events(run_dir, "eval")
    assert [r["epoch"] for r in rows] == ["1", "2"] and {r["phase"] for r in rows} == {"distill"}
    header = list(rows[0])
    assert header[:3] == ["phase", "epoch", "train_loss"]
    assert header[-7:] == ["eval_top1", "eval_top5", "fused_top1", "teacher_top1", "ema_top1", "lr", "time"]
    assert {"ce", "ofa/t->f", "nce/f->s"} <= set(header)
    for row, ev in zip(rows, evals):
        assert float(row["eval_top1"]) == pytest.approx(ev.get("student_top1"))
        assert float(row["fused_top1"]) == pytest.approx(ev.get("fused_top1"))
        assert float(row["teacher_top1"]) == pytest.approx(ev.get("teacher_top1"))
        assert row["ema_top1"] == ""  # no EMA in this run
        steps = [s for s in events(run_dir, "step") if s.get("epoch") == ev.get("epoch")]
        assert float(row["train_loss"]) == pytest.approx(sum(s.get("loss") for s in steps) / len(steps), rel=1e-4)
        assert float(row["lr"]) == pytest.approx(steps[-1].get("lr"))
    assert not (run_dir / "tensorboard").exists()  # off by default


def test_summary_csv_after_stop_and_resume_has_no_duplicate_epochs(teacher_file, tmp_path):
    when = lambda loop: loop.state.epoch == 1 and loop.state.epoch_step == 1  # noqa: E731 - mid epoch 2
    code, run_dir = R.start(tiny(teacher_file), runs_dir=str(tmp_path), stop_when=when)
    assert code == 0 and [r["epoch"] for r in summary(run_dir)] == ["1"]
    # as if killed after epoch 2 was logged but before its checkpoint: the resumed run repeats epoch 2
    with open(run_dir / "summary.csv", "a", encoding="utf-8") as f:
        f.write("distill,2,9.9" + "," * (len(summary(run_dir)[0]) - 3) + "\n")
    assert R.resume(run_dir) == 0
    rows = summary(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    last = events(run_dir, "eval")[-1]
    assert float(rows[-1]["eval_top1"]) == pytest.approx(last.get("student_top1"))
    assert float(rows[-1]["train_loss"]) != pytest.approx(9.9)
    assert float(rows[1]["time"]) > float(rows[0]["time"])  # the clock continues across the resume


def test_tensorboard_missing_is_a_preflight_error(teacher_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(FBTError) as err:
        R.start(tiny(teacher_file, "log.tensorboard=true"), runs_dir=str(tmp_path / "runs"))
    assert "pip install 'fbt-workbench[tensorboard]'" in err.value.hint and "log.tensorboard" in err.value.message
    assert "log.tensorboard = false" in err.value.hint  # the older spelling's own way out
    assert not (tmp_path / "runs" / "tiny").exists()  # failed before the run folder


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard package is not installed")
def test_tensorboard_event_file_written(teacher_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    code, run_dir = R.start(tiny(teacher_file, 'log.backends=["tensorboard"]', "train.epochs=1"), runs_dir=str(tmp_path))
    assert code == 0
    assert list((run_dir / "tensorboard" / "distill").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tensorboard" / "distill"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/eval_top1", "epoch/train_loss", "epoch/epoch", "train/loss", "train/lr", "train/ce"} <= tags
    top1 = acc.Scalars("epoch/eval_top1")
    assert [e.value for e in top1] == pytest.approx([e.get("student_top1") for e in events(run_dir, "eval")])
    assert top1[-1].step == events(run_dir, "step")[-1].get("step")  # x = global step, as train/*
    assert [e.value for e in top1] == pytest.approx([float(r["eval_top1"]) for r in summary(run_dir)])


def test_log_table_is_validated_and_outside_the_config_hash():
    cfg = C.load_preset(TINY)
    assert cfg.log.tensorboard is False
    assert C.config_hash(C.load_preset(TINY, ["log.tensorboard=true"])) == C.config_hash(cfg)
    with pytest.raises(C.ConfigError, match="log.tensorbord"):
        C.load_preset(TINY, ["log.tensorbord=true"])


def test_exported_student_carries_its_preprocessing(teacher_file, tmp_path):
    """timm resolves the run's 32 px and the digits' mean/std from export/timm/config.json (not 224 px, 0.5,
    crop 0.9); the same config is in student.safetensors' metadata. Loading it: test_export.py."""
    import timm
    from safetensors import safe_open
    from timm.data import resolve_data_config
    from fbt_engine.data import DIGITS_MEAN, DIGITS_STD
    code, run_dir = R.start(tiny(teacher_file, "train.epochs=1"), runs_dir=str(tmp_path))
    assert code == 0
    cfg = json.loads((run_dir / "export" / "timm" / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["num_classes"] == 10
    assert cfg["model_args"] == {"patch_size": 8, "depth": 4, "num_classes": 10, "img_size": 32}
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 1.0 and pc["interpolation"] == "bilinear"
    assert pc["label_names"] == [str(d) for d in range(10)]

    student = run_dir / "student.safetensors"
    with safe_open(str(student), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == cfg and json.loads(meta["pretrained_cfg"]) == pc

    model = timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                              pretrained_cfg_overlay=dict(pc, file=str(student)))
    data_cfg = resolve_data_config(model=model)
    assert tuple(data_cfg["input_size"]) == (3, 32, 32) and data_cfg["crop_pct"] == 1.0
    assert data_cfg["mean"] == pytest.approx(DIGITS_MEAN) and data_cfg["std"] == pytest.approx(DIGITS_STD)
    assert data_cfg["interpolation"] == "bilinear"
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["module"]
    torch.testing.assert_close(model.head.weight, trained["student.head.weight"])
    # the one-liner: timm reads the export folder's config.json and model.safetensors
    local = timm.create_model(f"local-dir:{run_dir / 'export' / 'timm'}", pretrained=True)
    assert resolve_data_config(model=local) == data_cfg
    torch.testing.assert_close(local.head.weight, trained["student.head.weight"])


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="the tensorboard package is not installed")
def test_tensorboard_resume_after_a_kill_drops_the_steps_it_repeats(tmp_path):
    """A killed process logged steps 4-5 past its checkpoint at step 3; the resumed one logs 4-6 again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from fbt_engine.loggers import TensorBoardSink

    def log(sink: TensorBoardSink, steps: range, loss: float) -> None:
        for s in steps:
            sink.step(Event(type="step", run="r", t=float(s), data={"phase": "distill", "step": s, "loss": loss}))
        sink.close()

    log(TensorBoardSink(tmp_path), range(1, 6), 1.0)
    log(TensorBoardSink(tmp_path), range(4, 7), 2.0)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "distill"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0),
                                                                       (5, 2.0), (6, 2.0)]
