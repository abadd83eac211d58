"""Presets: every file loads and validates; every paper preset's teacher, student and fused model
build (at a reduced input size); bad presets give one clear ConfigError; `--set` overrides."""

from pathlib import Path

import pytest
import torch

from fbt_engine.config import RunConfig, apply_overrides, from_dict, load_preset, read_toml, to_dict
from fbt_engine.errors import ConfigError
from fbt_engine.fusion import build_fused, plan_fusion
from fbt_engine.models import create_model

PRESETS = Path(__file__).resolve().parents[2] / "presets"
ALL = sorted(PRESETS.rglob("*.toml"))
PAPER = sorted(PRESETS.glob("cifar100/*.toml")) + sorted(PRESETS.glob("imagenet/*.toml"))


def rel(p: Path) -> str:
    return str(p.relative_to(PRESETS))


# --- (a) every preset loads -----------------------------------------------------------------

def test_there_are_presets():
    assert len(list(PRESETS.glob("cifar100/*.toml"))) == 12
    assert len(list(PRESETS.glob("imagenet/*.toml"))) == 12


@pytest.mark.parametrize("path", ALL, ids=[rel(p) for p in ALL])
def test_every_preset_loads(path):
    cfg = load_preset(path)
    assert isinstance(cfg, RunConfig) and cfg.student.model


# --- the paper presets follow the paper's recipe --------------------------------------------

@pytest.mark.parametrize("path", PAPER, ids=[rel(p) for p in PAPER])
def test_paper_preset_recipe(path):
    cfg = load_preset(path)
    assert cfg.name == path.stem and cfg.method == "fbt" and cfg.data.img_size == 224
    assert cfg.fusion.split == 3 and cfg.loss.ofa_temperature == 1.0
    cnn_student = cfg.student.model in ("resnet18", "mobilenetv2_100")
    if path.parent.name == "cifar100":
        assert cfg.data.name == "cifar100" and cfg.loss.ofa_eps == 1.0
        assert cfg.teacher.checkpoint == f"checkpoints/cifar100/{cfg.teacher.model}.safetensors"
        assert not cfg.teacher.pretrained and cfg.teacher.train is None
        assert cfg.train.epochs == 300 and cfg.train.sched == "cosine"
        expected = (("sgd", 0.05, 1e-3, 2e-3, 3) if cnn_student else ("adamw", 5e-4, 1e-5, 0.05, 20))
        t = cfg.train
        assert (t.optimizer, t.lr, t.min_lr, t.weight_decay, t.warmup_epochs) == expected
    else:
        assert cfg.data.name == "imagefolder" and cfg.data.root and cfg.loss.ofa_eps == 1.5
        assert cfg.teacher.pretrained and not cfg.teacher.checkpoint
        if cnn_student:
            t = cfg.train
            assert (t.sched, t.epochs, t.lr, t.batch_size, t.decay_epochs) == ("step", 100, 0.1, 64, 30)
        else:
            assert cfg.train.ema_decay == 0.99996 and cfg.train.epochs == 300
    if cnn_student:
        assert cfg.train.momentum == 0.9 and not cfg.aug.randaugment
    else:
        a = cfg.aug
        assert (a.randaugment, a.mixup, a.cutmix, a.random_erasing, a.label_smoothing) == \
            ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.25, 0.1)
        assert cfg.train.grad_clip == 5.0
    assert cfg.aug.label_smoothing == 0.1


# --- (b) the paper presets' models build and fuse at a reduced size -------------------------

SMALL = 64
# Test-only kwargs so isotropic models have a usable token grid at SMALL (8x8 tokens); the
# presets themselves run at 224 with the models' own patch sizes.
SMALL_KWARGS = {
    "vit_small_patch16_224": {"patch_size": 8}, "vit_base_patch16_224": {"patch_size": 8},
    "deit_tiny_patch16_224": {"patch_size": 8}, "mixer_b16_224": {"patch_size": 8},
    "resmlp_12_224": {"patch_size": 8},
}


_models: dict = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The forwards here are tiny: one intra-op thread avoids OpenMP oversubscription on a busy
    machine (measured on 2 shared cores: 54 s -> 14 s for this file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(mc, role):
    """Random weights (teacher.pretrained and checkpoint are not read here: no download, no file).

    One model per (role, name, kwargs): creating (initialising) ViT-B/Mixer-B is the slow part, and
    the forwards below run in eval mode without gradients, so a model can serve several tests."""
    kwargs = {**mc.kwargs, **SMALL_KWARGS.get(mc.model, {})}
    key = (role, mc.model, repr(sorted(kwargs.items())))
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = create_model(mc.model, img_size=SMALL, num_classes=10, **kwargs)
    return _models[key]


@pytest.mark.parametrize("path", PAPER, ids=[rel(p) for p in PAPER])
def test_paper_preset_models_fuse(path):
    cfg = load_preset(path)
    teacher, student = small_model(cfg.teacher, "teacher"), small_model(cfg.student, "student")
    plan = plan_fusion(teacher, student, SMALL, order=cfg.fusion.order, split=cfg.fusion.split,
                       mixer=cfg.fusion.mixer, teacher_name=cfg.teacher.model, student_name=cfg.student.model)
    fused = build_fused(teacher, student, plan)
    fused.eval()
    student.eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert fused(x).shape == (2, 10)
        assert student(x).shape == (2, 10)
        assert teacher(x).shape == (2, 10)
    # the CNN of the pair is local (method.md section 3)
    cnn = ("resnet", "mobilenet", "convnext")
    if cfg.student.model.startswith(cnn):
        assert plan.local == "student"
    elif cfg.teacher.model.startswith(cnn):
        assert plan.local == "teacher"
    else:
        assert plan.local == "student"


# --- (c) bad presets: exactly one clear ConfigError -----------------------------------------

GOOD = '''
name = "t"
[teacher]
model = "resnet18"
[student]
model = "resnet18"
[train]
epochs = 2
'''


def write(tmp_path, text, name="bad.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path, overrides=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_preset(path, overrides)
    return info.value


def test_good_base_loads(tmp_path):
    assert load_preset(write(tmp_path, GOOD, "good.toml")).train.epochs == 2


def test_unknown_key_names_it_and_suggests_the_nearest(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("epochs = 2", "epoch = 2")))
    assert "`train.epoch`" in err.message and "bad.toml" in err.message
    assert "train.epochs" in err.hint


def test_unknown_top_level_key(tmp_path):
    err = error_of(write(tmp_path, 'methd = "kd"\n' + GOOD))
    assert "`methd`" in err.message and "`method`" in err.hint


def test_unknown_section(tmp_path):
    err = error_of(write(tmp_path, GOOD + "[fuson]\nsplit = 2\n"))
    assert "`fuson`" in err.message and "fusion" in err.hint


def test_wrong_type_names_key_type_and_file(tmp_path):
    p = write(tmp_path, GOOD.replace("epochs = 2", 'epochs = "two"'))
    err = error_of(p)
    assert "`train.epochs`" in err.message and "int" in err.message and str(p) in err.message


def test_wrong_type_float_field(tmp_path):
    p = write(tmp_path, GOOD + '[loss]\nofa_eps = "1.5"\n')
    err = error_of(p)
    assert "`loss.ofa_eps`" in err.message and "float" in err.message and str(p) in err.message


def test_bool_is_not_an_int(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace("epochs = 2", "epochs = true")))
    assert "`train.epochs`" in err.message and "int" in err.message


def test_unknown_method(tmp_path):
    err = error_of(write(tmp_path, 'method = "fbtt"\n' + GOOD))
    assert "`method`" in err.message and "fbtt" in err.message
    assert "`fbt`" in err.hint and "scratch" in err.hint


def test_bad_data_name(tmp_path):
    err = error_of(write(tmp_path, GOOD + '[data]\nname = "cifar10"\n'))
    assert "`data.name`" in err.message and "cifar10" in err.message and "cifar100" in err.hint


def test_missing_student_model(tmp_path):
    err = error_of(write(tmp_path, GOOD.replace('[student]\nmodel = "resnet18"\n', "")))
    assert "`student.model`" in err.message and "missing" in err.message and "[student]" in err.hint


@pytest.mark.parametrize("split", [0, 4])
def test_split_out_of_range(tmp_path, split):
    err = error_of(write(tmp_path, GOOD + f"[fusion]\nsplit = {split}\n"))
    assert "`fusion.split`" in err.message and str(split) in err.message


def test_imagefolder_needs_a_root(tmp_path):
    err = error_of(write(tmp_path, GOOD + '[data]\nname = "imagefolder"\n'))
    assert "`data.root`" in err.message


def test_invalid_toml_and_missing_file(tmp_path):
    err = error_of(write(tmp_path, "name = \n"))
    assert "not valid TOML" in err.message
    err = error_of(tmp_path / "nope.toml")
    assert "does not exist" in err.message


def test_bad_override_key_is_caught(tmp_path):
    err = error_of(write(tmp_path, GOOD, "good.toml"), ["train.epoch=5"])
    assert "`train.epoch`" in err.message and "train.epochs" in err.hint
    err = error_of(write(tmp_path, GOOD, "good.toml"), ["train.epochs"])
    assert "=" in err.message


# --- (d) `--set` overrides change exactly the named fields ----------------------------------

def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("path", [PRESETS / "cifar100" / "swin_t-resnet18.toml",
                                  PRESETS / "imagenet" / "convnext_t-deit_t.toml"], ids=rel)
def test_overrides_change_exactly_those_fields(path):
    base = _flat(to_dict(load_preset(path)))
    over = _flat(to_dict(load_preset(path, ["train.epochs=2", "loss.ofa_eps=1.25"])))
    changed = {k for k in base if base[k] != over[k]}
    assert changed == {"train.epochs", "loss.ofa_eps"}
    assert over["train.epochs"] == 2 and over["loss.ofa_eps"] == 1.25
    assert isinstance(over["loss.ofa_eps"], float)


def test_override_strings_lists_and_bools(tmp_path):
    p = write(tmp_path, GOOD, "good.toml")
    cfg = load_preset(p, ["method=kd", "teacher.pretrained=true", "loss.paths=['t->s']",
                          "data.name=cifar100", "train.lr=1e-2"])
    assert (cfg.method, cfg.teacher.pretrained, cfg.loss.paths, cfg.data.name, cfg.train.lr) == \
        ("kd", True, ["t->s"], "cifar100", 0.01)


def test_apply_overrides_does_not_touch_its_input():
    data = read_toml(PRESETS / "cifar100" / "swin_t-resnet18.toml")
    before = repr(data)
    out = apply_overrides(data, ["train.epochs=2", "fusion.split=2"])
    assert repr(data) == before
    cfg = from_dict(out)
    assert cfg.train.epochs == 2 and cfg.fusion.split == 2
