"""Each family's stem -> stage1..4 -> head reproduces the model's own forward."""

import pytest
import torch

from fbt_engine.adapters import get_adapter, split_depth
from fbt_engine.errors import ModelError
from fbt_engine.models import create_model

# (name, kwargs at small size, small size)
FAMILIES = [
    ("resnet18", {}, 64),
    ("resnet50", {}, 64),
    ("mobilenetv2_100", {}, 64),
    ("efficientnet_b0", {}, 64),
    ("tf_efficientnet_lite0", {}, 64),
    ("convnext_nano", {}, 64),
    ("swin_tiny_patch4_window7_224", {}, 32),
    ("swin_pico_patch4_window7_224", {}, 32),
    ("vit_tiny_patch16_224", {"patch_size": 4}, 32),
    ("deit_tiny_patch16_224", {"patch_size": 4, "class_token": False, "global_pool": "avg"}, 32),
    ("mixer_s16_224", {"patch_size": 4}, 32),
    ("resmlp_12_224", {"patch_size": 4}, 32),
]


def _check_forward(model, size):
    model.eval()
    adapter = get_adapter(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        out = adapter.forward(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    return adapter


@pytest.mark.parametrize("name,kwargs,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_stages_reproduce_forward_small(name, kwargs, size):
    model = create_model(name, img_size=size, num_classes=10, **kwargs)
    adapter = _check_forward(model, size)
    infos = adapter.describe(size)
    assert [i.name for i in infos] == ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [f[0] for f in FAMILIES])
def test_stages_reproduce_forward_224(name):
    _check_forward(create_model(name, num_classes=10), 224)


def test_adapter_holds_the_models_own_modules():
    model = create_model("resnet18", num_classes=10)
    adapter = get_adapter(model)
    assert adapter.stages[0] is model.layer1 and adapter.stages[3] is model.layer4
    vit = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    a = get_adapter(vit)
    assert a.stem.cls_token is vit.cls_token and a.stem.pos_embed is vit.pos_embed
    assert a.stages[0][0] is vit.blocks[0]


@pytest.mark.parametrize("name,stage3,stage4", [
    ("resnet18", (256, 14, 14), (512, 7, 7)),
    ("resnet50", (1024, 14, 14), (2048, 7, 7)),
    ("convnext_tiny", (384, 14, 14), (768, 7, 7)),
    ("mobilenetv2_100", (96, 14, 14), (1280, 7, 7)),
    ("swin_tiny_patch4_window7_224", (14, 14, 384), (7, 7, 768)),
    ("vit_small_patch16_224", (197, 384), (197, 384)),
    ("deit_tiny_patch16_224", (197, 192), (197, 192)),
    ("resmlp_12_224", (196, 384), (196, 384)),
])
def test_shapes_match_ofa_kd_at_224(name, stage3, stage4):
    model = create_model(name)
    infos = get_adapter(model).describe(224)
    assert infos[3].shape == stage3 and infos[4].shape == stage4


def test_split_depth():
    assert split_depth(12) == [2, 2, 6, 2]
    assert split_depth(24) == [4, 4, 12, 4]
    assert sum(split_depth(8)) == 8 and min(split_depth(8)) >= 1
    with pytest.raises(ValueError):
        split_depth(3)


def test_unsupported_model_names_the_families():
    model = create_model("densenet121", num_classes=10)
    with pytest.raises(ModelError) as err:
        get_adapter(model, "densenet121")
    assert "densenet121" in err.value.message and "resnet" in err.value.hint and "swin" in err.value.hint


def test_input_too_small_is_a_model_error():
    model = create_model("vit_tiny_patch16_224", num_classes=10)  # built for 224
    with pytest.raises(ModelError) as err:
        get_adapter(model).describe(32)
    assert "32x32" in err.value.message


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError) as err:
        create_model("resnet19")
    assert "resnet18" in err.value.hint
