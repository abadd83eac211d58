"""Teachers from anywhere: timm-0.6 and DeiT/ViT checkpoints through timm's own filter, wrapped
training checkpoints, tagged / hf-hub: / local-dir: names (never downloading), and the fresh-classifier
rule (a classifier of another class count is refused, or fine-tuned first with [teacher.train])."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch

from fbt_engine import config as C
from fbt_engine import preflight
from fbt_engine.checkpoint import FreshClassifier, load_weights
from fbt_engine.errors import DamagedFile, ModelError
from fbt_engine.models import create_model, model_exists
from fbt_engine.task import ClassifierTask

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.toml"


def timm06_swin_layout(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm 1.0's Swin state_dict written as timm 0.6.5 wrote it (checked against a real 0.6.5 Swin-T file:
    these are all the differences). 0.6.5: the classifier is `head` (1.0: `head.fc`); a stage's patch merging
    sits at its end (`layers.i.downsample`, 1.0: `layers.i+1.downsample`, so 0.6 has layers.0-2 and 1.0
    layers.1-3); `relative_position_index` and `attn_mask` buffers are saved (1.0: not persistent)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            out[f"{name}.relative_position_index"] = module.relative_position_index.clone()
        if getattr(module, "attn_mask", None) is not None:
            out[f"{name}.attn_mask"] = module.attn_mask.clone()
    return out


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_swin_t_in_timm_06_layout_from_a_timm_train_checkpoint_loads_exactly(tmp_path):
    """OFA-KD's CIFAR-100 teachers: Swin-T, 100 classes, timm 0.6.5's train.py checkpoint
    (state_dict + argparse args), saved from DataParallel (`module.`)."""
    torch.manual_seed(0)
    src = timm.create_model("swin_tiny_patch4_window7_224", num_classes=100)
    old = timm06_swin_layout(src.state_dict(), src)
    assert "head.weight" in old and "layers.0.downsample.reduction.weight" in old
    path = tmp_path / "cifar_swin_tiny.pth"
    torch.save({"epoch": 299, "arch": "swin_tiny_patch4_window7_224", "args": argparse.Namespace(lr=5e-4),
                "state_dict": {f"module.{k}": v for k, v in old.items()}, "version": 2}, path)
    model = create_model("swin_tiny_patch4_window7_224", img_size=224, num_classes=100)
    assert load_weights(model, path, "teacher") == []
    _same_outputs(model, src, 224)


def test_small_swin_in_timm_06_layout_as_safetensors(tmp_path):
    from safetensors.torch import save_file
    src = create_model("swin_pico_patch4_window7_224", img_size=224, num_classes=10)
    save_file({k: v.contiguous() for k, v in timm06_swin_layout(src.state_dict(), src).items()}, tmp_path / "t.safetensors")
    model = create_model("swin_pico_patch4_window7_224", img_size=224, num_classes=10)
    assert load_weights(model, tmp_path / "t.safetensors") == []
    _same_outputs(model, src, 224)


def test_deit_checkpoint_in_its_model_wrapper_loads_and_resizes_to_cifar_size(tmp_path):
    """DeiT's released files are {'model': state_dict}; at 32x32 timm's filter resamples pos_embed."""
    src = timm.create_model("deit_tiny_patch16_224", num_classes=100)
    path = tmp_path / "deit_tiny.bin"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)
    same = create_model("deit_tiny_patch16_224", img_size=224, num_classes=100)
    assert load_weights(same, path) == []
    _same_outputs(same, src, 224)
    small = create_model("deit_tiny_patch16_224", img_size=32, num_classes=100)
    assert load_weights(small, path) == []
    assert small.pos_embed.shape[1] == 1 + (32 // 16) ** 2
    torch.testing.assert_close(small.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


class NotWeights:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_in_a_training_checkpoint_is_still_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": timm.create_model("resnet18", num_classes=10).state_dict(), "x": NotWeights()}, path)
    with pytest.raises(DamagedFile, match="could run code"):
        load_weights(create_model("resnet18", num_classes=10), path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_a_classifier_of_another_class_count_is_refused_naming_the_fix(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(FreshClassifier) as exc:
        load_weights(model, tmp_path / "imagenet.pth", "teacher")
    assert "fc.weight" in exc.value.message and "[1000, 512]" in exc.value.message and "[10, 512]" in exc.value.message
    assert "[teacher.train]" in exc.value.hint and 'tune = "head"' in exc.value.hint


def test_a_fresh_classifier_is_allowed_when_fine_tuned_next_and_the_backbone_loads(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    model = create_model("resnet18", num_classes=10)
    assert load_weights(model, tmp_path / "imagenet.pth", "teacher", fresh_head_ok=True) == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_another_architecture_is_still_refused_not_taken_for_a_fresh_head(tmp_path):
    torch.save(timm.create_model("resnet34", num_classes=1000).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(Exception, match="does not fit the model"):
        load_weights(create_model("resnet18", num_classes=10), tmp_path / "r34.pth", fresh_head_ok=True)


def test_tagged_names_are_models_and_build_without_downloading():
    assert model_exists("resnet18.a1_in1k") and model_exists("hf-hub:timm/resnet18.a1_in1k")
    model = create_model("resnet18.a1_in1k", num_classes=10)  # pretrained=False: nothing is fetched
    assert model.pretrained_cfg["tag"] == "a1_in1k" and model.num_classes == 10
    vit = create_model("vit_tiny_patch16_224.augreg_in21k", img_size=32, num_classes=10)
    assert vit.patch_embed.img_size == (32, 32)
    with pytest.raises(ModelError, match="no pretrained tag 'nope' for resnet18"):
        create_model("resnet18.nope")


def test_hf_hub_name_offline_says_so_and_what_to_do(monkeypatch):
    from timm.models import _hub

    def offline(model_id, cache_dir=None):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(_hub, "load_model_config_from_hf", offline)
    with pytest.raises(ModelError) as exc:
        create_model("hf-hub:timm/resnet18.a1_in1k", num_classes=10)
    assert "hf-hub:timm/resnet18.a1_in1k" in exc.value.message and "Hugging Face Hub" in exc.value.message
    assert "internet" in exc.value.hint and "checkpoint" in exc.value.hint


def test_hf_hub_name_reads_the_architecture_from_its_config(monkeypatch):
    from timm.models import _hub
    monkeypatch.setattr(_hub, "load_model_config_from_hf",
                        lambda model_id, cache_dir=None: ({"architecture": "resnet18", "num_classes": 1000}, "resnet18", {}))
    model = create_model("hf-hub:timm/resnet18.a1_in1k", num_classes=10)
    assert type(model).__name__ == "ResNet" and model.num_classes == 10


def test_local_dir_folder_builds_and_loads_its_weights(tmp_path):
    from timm.models import save_for_hf
    src = timm.create_model("resnet18", num_classes=10)
    save_for_hf(src, tmp_path / "teacher")
    model = create_model(f"local-dir:{tmp_path / 'teacher'}", num_classes=10, pretrained=True)
    _same_outputs(model, src, 32)
    with pytest.raises(ModelError, match="not a timm model folder"):
        create_model(f"local-dir:{tmp_path / 'missing'}")


def _cfg(tmp_path, **teacher):
    cfg = C.load_preset(TINY)
    train = teacher.pop("train", cfg.teacher.train)
    return C.replace(cfg, runs_dir=str(tmp_path), teacher=C.replace(cfg.teacher, train=train, **teacher))


def test_preflight_refuses_pretrained_imagenet_teacher_on_digits_without_teacher_train(tmp_path):
    with pytest.raises(FreshClassifier, match="1000 classes") as exc:
        preflight.check(_cfg(tmp_path, pretrained=True, train=None), source="x.toml")
    assert "[teacher.train]" in exc.value.hint
    preflight.check(_cfg(tmp_path, pretrained=True), source="x.toml")  # fine-tuned first: fine


def test_preflight_refuses_a_fresh_head_file_without_teacher_train(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(FreshClassifier):
        preflight.check(_cfg(tmp_path, checkpoint=str(tmp_path / "imagenet.pth"), train=None), source="x.toml")
    report = preflight.check(_cfg(tmp_path, checkpoint=str(tmp_path / "imagenet.pth")), source="x.toml")
    assert any("classifier is fresh" in line for line in report.checks)


def test_teacher_train_tune_is_a_choice(tmp_path):
    from fbt_engine.errors import ConfigError
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="teacher.train.tune"):
        C.validate(C.replace(cfg, teacher=C.replace(cfg.teacher, train=C.replace(cfg.teacher.train, tune="heads"))),
                   "x.toml")


def test_head_only_fine_tuning_trains_the_classifier_alone():
    model = create_model("resnet18", num_classes=10)
    task = ClassifierTask(model, 0.0, head_only=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    task.train()
    assert not model.bn1.training and model.fc.training
    assert task.params()["trainable"] == 10 * 512 + 10


def test_run_fine_tunes_the_head_of_a_fresh_head_teacher_first_and_keeps_the_source(tmp_path):
    """An ImageNet-classifier resnet18 file on digits with [teacher.train] tune = "head": the backbone is
    loaded, the classifier alone is trained, the result goes to the run folder; the source file is untouched."""
    import os
    import subprocess
    import sys
    from fbt_engine.checkpoint import file_digest, read_state_dict
    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    before = file_digest(tmp_path / "imagenet.pth")
    res = subprocess.run([sys.executable, "-m", "fbt_engine.cli", "run", str(TINY), "--runs-dir", str(tmp_path / "runs"),
                          "--set", f'teacher.checkpoint="{tmp_path / "imagenet.pth"}"', "--set", 'teacher.train.tune="head"',
                          "--set", "train.epochs=1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert file_digest(tmp_path / "imagenet.pth") == before
    [tuned] = list((tmp_path / "runs").glob("*/teacher.safetensors"))
    sd = read_state_dict(tuned)
    assert sd["fc.weight"].shape == (10, 512)
    torch.testing.assert_close(sd["layer4.1.conv2.weight"], src.state_dict()["layer4.1.conv2.weight"])


def test_pretrained_teacher_with_a_checkpoint_path_not_written_yet_starts_from_the_hub_weights(tmp_path, monkeypatch):
    """pretrained = true + teacher.checkpoint that does not exist yet: the hub weights are the start
    (formerly a random teacher); once the file exists it is used and nothing is downloaded."""
    from fbt_engine import task
    asked = []
    monkeypatch.setattr(task, "create_model", lambda name, pretrained=False, **kw: asked.append(pretrained))
    cfg = _cfg(tmp_path, pretrained=True, checkpoint=str(tmp_path / "teacher.safetensors"))
    task.create_teacher(cfg, 10)
    (tmp_path / "teacher.safetensors").write_bytes(b"x")
    task.create_teacher(cfg, 10)
    assert asked == [True, False]
