"""Students out in timm's own format (RUN/export/timm: timm loads it with no other arguments, and its
preprocessing is exactly the run's evaluation transform) and as ONNX (checked with onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fbt_engine import config as C
from fbt_engine import run as R
from fbt_engine.cli import app

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def ok(result) -> str:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr[-3000:]
    return result.stdout


def refused(result, *words: str) -> str:
    """Exit 2, one error line naming the bad input, a hint, no traceback."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output[-2000:]}"
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished run (teacher trained in the run), written under the usual umask 022."""
    runs = tmp_path_factory.mktemp("export_runs")
    cfg = C.load_preset(TINY, ["train.epochs=1", "train.max_steps_per_epoch=2", "teacher.train.epochs=1"])
    old = os.umask(0o022)
    try:
        code, run_dir = R.start(cfg, runs_dir=str(runs))
    finally:
        os.umask(old)
    assert code == 0
    return run_dir


def val_images(run_dir: Path) -> tuple[list, torch.Tensor, torch.Tensor]:
    """The run's validation images as PIL images, their labels, and what the run's own loader feeds."""
    from PIL import Image
    from fbt_engine.data import build_datasets
    cfg = C.load_preset(run_dir / "config.toml")
    _, val, _ = build_datasets(cfg.data, cfg.aug)
    base, idx = getattr(val, "dataset", val), getattr(val, "indices", range(len(val)))
    images = [Image.fromarray(base.images[i]).convert("RGB") for i in idx]
    labels = torch.tensor([int(base.targets[i]) for i in idx])
    return images, labels, torch.stack([val[i][0] for i in range(len(val))])


def test_finished_run_writes_a_timm_folder_that_timm_loads_alone(finished):
    import timm
    from safetensors.torch import load_file
    from timm.data import resolve_data_config
    from fbt_engine.data import DIGITS_MEAN, DIGITS_STD
    folder = finished / "export" / "timm"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == (finished / "student.safetensors").read_bytes()
    assert not (finished / "config.json").exists()  # the timm config lives in export/timm only
    assert {mode(p) for p in folder.iterdir()} == {0o644}

    model = timm.create_model(f"local-dir:{folder}", pretrained=True)  # no other arguments
    data_cfg = resolve_data_config({}, model=model)
    assert tuple(data_cfg["input_size"]) == (3, 32, 32) and data_cfg["crop_pct"] == 1.0
    assert data_cfg["interpolation"] == "bilinear" and data_cfg["crop_mode"] == "center"
    assert data_cfg["mean"] == pytest.approx(DIGITS_MEAN) and data_cfg["std"] == pytest.approx(DIGITS_STD)
    assert model.num_classes == 10 and model.pretrained_cfg["label_names"] == [str(d) for d in range(10)]
    torch.testing.assert_close(model.state_dict(), load_file(finished / "student.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    assert cfg["model_args"] == {"patch_size": 8, "depth": 4, "num_classes": 10, "img_size": 32}


def test_an_exported_student_is_a_model_source(finished):
    """`teacher.model = "local-dir:RUN/export/timm"` distils from an earlier run's student; the run
    folder itself is refused with the export's name."""
    from safetensors.torch import load_file
    from fbt_engine.errors import ModelError
    from fbt_engine.models import create_model
    model = create_model(f"local-dir:{finished / 'export' / 'timm'}", img_size=32, num_classes=10, pretrained=True)
    torch.testing.assert_close(model.state_dict(), load_file(finished / "student.safetensors"))
    with pytest.raises(ModelError) as err:
        create_model(f"local-dir:{finished}", img_size=32, num_classes=10, pretrained=True)
    assert "is a run folder" in err.value.message and f"local-dir:{finished / 'export' / 'timm'}" in err.value.hint


def test_timm_preprocessing_gives_evals_top1_exactly(finished):
    """timm's own transform from the exported config feeds the model the very tensors the run's
    evaluation fed it, so top-1 through timm alone equals `fbt-engine eval`'s on the same weights."""
    import timm
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(f"local-dir:{finished / 'export' / 'timm'}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    images, labels, ours = val_images(finished)
    x = torch.stack([transform(im) for im in images])
    assert torch.equal(x, ours)
    with torch.no_grad():
        correct = (model(x).argmax(1) == labels).sum().item()
    result = json.loads(ok(invoke("eval", finished / "student.safetensors", "--json")))
    assert result["images"] == len(images) == 64
    assert correct / len(images) * 100 == pytest.approx(result["top1"], abs=1e-9)


def test_export_command_reproduces_the_runs_export_byte_for_byte(finished, tmp_path):
    out = tmp_path / "again"
    result = invoke("export", finished, "--out", out)
    assert f"-> {out}: model.safetensors, config.json" in ok(result)
    assert f"timm.create_model('local-dir:{out}', pretrained=True)" in result.stderr
    for name in ("model.safetensors", "config.json"):
        assert (out / name).read_bytes() == (finished / "export" / "timm" / name).read_bytes()
        assert mode(out / name) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stopped_run_exports_its_best_checkpoint(finished, tmp_path):
    """No student.safetensors: the default export takes best.pt and reads the data set for its facts,
    which give the same config.json as the finished student's metadata."""
    from safetensors.torch import load_file
    run = tmp_path / "stopped"
    run.mkdir()
    shutil.copy(finished / "config.toml", run)
    shutil.copytree(finished / "checkpoints", run / "checkpoints")
    result = json.loads(ok(invoke("export", run, "--json")))
    assert result["weights"] == str(run / "checkpoints" / "best.pt") and result["out"] == str(run / "export" / "timm")
    out = run / "export" / "timm"
    assert (out / "config.json").read_bytes() == (finished / "export" / "timm" / "config.json").read_bytes()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["module"]
    want = {k.removeprefix("student."): v for k, v in best.items() if k.startswith("student.")}
    torch.testing.assert_close(load_file(out / "model.safetensors"), want)
    refused(invoke("export", run, "--weights", "student"), "student.safetensors", "fbt-engine resume",
            "--weights best or last")


@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime not installed (pip install 'fbt-workbench[onnx]')")
def test_onnx_export_matches_pytorch(finished, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import timm
    result = invoke("export", finished, "--format", "onnx")
    text = ok(result)
    out = finished / "export" / "onnx"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx"]
    assert {mode(p) for p in out.iterdir()} == {0o644}
    assert "max abs diff" in text and "top-1 agreement 100%" in text
    assert (out / "config.json").read_bytes() == (finished / "export" / "timm" / "config.json").read_bytes()
    # the graph on real validation images (any batch size) agrees with the timm-loaded student
    model = timm.create_model(f"local-dir:{finished / 'export' / 'timm'}", pretrained=True).eval()
    _, _, x = val_images(finished)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:13].numpy()})[0]
    with torch.no_grad():
        want = model(x[:13]).numpy()
    assert np.abs(got - want).max() < 1e-4
    check = json.loads(ok(invoke("export", finished, "--format", "onnx", "--out", tmp_path / "o", "--json")))["check"]
    assert check["max_abs_diff"] <= 1e-4 <= check["tolerance"]  # 1e-4, relative to the logits' scale when above 1
    assert check["inputs"] == 8 and check["top1_agreement"] == 1.0
    assert (tmp_path / "o" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()  # deterministic


@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime not installed (pip install 'fbt-workbench[onnx]')")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_export_of_a_cnn_student(exporter, monkeypatch, tmp_path):
    """A CNN (BatchNorm, pooling) through either exporter: when torch's default (torch.export based)
    one fails, the TorchScript one takes over."""
    import timm
    from fbt_engine.checkpoint import timm_config
    from fbt_engine.export import write_onnx_folder
    if exporter == "torchscript":
        real = torch.onnx.export

        def no_dynamo(*args, **kwargs):
            if kwargs.get("dynamo"):
                raise RuntimeError("an operator torch.export cannot trace")
            return real(*args, **kwargs)
        monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10).eval()
    files, check = write_onnx_folder(model, timm_config(model, 48, (0.5,), (0.25,), 10), tmp_path)
    assert [f.name for f in files] == ["model.onnx", "config.json"]
    assert check["exporter"] == exporter and check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.onnx"]  # no temporary folder left


@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime not installed (pip install 'fbt-workbench[onnx]')")
def test_onnx_graph_that_disagrees_is_not_kept(monkeypatch, tmp_path):
    import timm
    from fbt_engine import export as E
    from fbt_engine.checkpoint import timm_config
    from fbt_engine.errors import FBTError
    monkeypatch.setattr(E, "ONNX_TOLERANCE", 1e-12)  # float32 graphs never agree this closely
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    model = timm.create_model("resnet10t", num_classes=10).eval()
    with pytest.raises(FBTError) as err:
        E.write_onnx_folder(model, timm_config(model, 32, (0.5,), (0.25,), 10), tmp_path)
    assert "differ from the PyTorch student's" in err.value.message and "--format timm" in err.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier export"  # left as it was


def test_onnx_missing_names_the_pip_command(finished, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    refused(invoke("export", finished, "--format", "onnx", "--out", tmp_path / "o"), "onnxruntime",
            "pip install 'fbt-workbench[onnx]'")
    assert not (tmp_path / "o").exists()


def test_bad_inputs_are_refused(finished, tmp_path):
    refused(invoke("export", tmp_path / "missing"), str(tmp_path / "missing"), "hint: give runs/<name>")
    result = invoke("export", finished, "--format", "tflite")
    assert result.exit_code == 2 and "tflite" in result.output and "onnx" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(finished / "config.toml", empty)
    refused(invoke("export", empty), "has no checkpoint yet", "hint: wait for the first epoch")
    refused(invoke("export", finished / "student.safetensors", "--weights", "best"), "is a file")
    assert not (empty / "export").exists()
