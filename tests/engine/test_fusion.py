"""The fused model: builds for the paper's pairs and others, shares weights by identity, lets
gradients flow where the method says, and adds exactly the L2G projector's parameters."""

import pytest
import torch

from fbt_engine.adapters import get_adapter
from fbt_engine.fusion import build_fused, choose_local, count, param_table, plan_fusion
from fbt_engine.models import create_model

SWIN_T, VIT_S, MIXER_B, CONVNEXT_T = ("swin_tiny_patch4_window7_224", "vit_small_patch16_224",
                                      "mixer_b16_224", "convnext_tiny")
R18, MBV2, DEIT_T, SWIN_P, RESMLP = ("resnet18", "mobilenetv2_100", "deit_tiny_patch16_224",
                                     "swin_pico_patch4_window7_224", "resmlp_12_224")
CIFAR_PAIRS = [(t, s) for t in (SWIN_T, VIT_S, MIXER_B) for s in (R18, MBV2)] + \
    [(CONVNEXT_T, s) for s in (DEIT_T, RESMLP, SWIN_P)] + [(MIXER_B, DEIT_T), (MIXER_B, SWIN_P), (SWIN_T, RESMLP)]
IMAGENET_PAIRS = [(t, s) for t in (SWIN_T, "vit_base_patch16_224", MIXER_B) for s in (R18, MBV2)] + \
    [(t, s) for t in ("resnet50", CONVNEXT_T) for s in (DEIT_T, "swin_nano_patch4_window7_224", RESMLP)]
OTHER_PAIRS = [("efficientnet_b0", "vit_tiny_patch16_224"), ("convnext_nano", RESMLP),
               ("deit_small_patch16_224", MBV2)]

_cache: dict = {}


def model_224(name, role):
    """One model per (name, role) for the 224 tests: creating Mixer-B/ViT-B is the slow part."""
    if (name, role) not in _cache:
        _cache[(name, role)] = create_model(name, num_classes=100)
    return _cache[(name, role)]


def fuse(t, s, size, **kw):
    plan = plan_fusion(t, s, size, **kw)
    return plan, build_fused(t, s, plan)


def check_forward_backward(teacher_name, student_name):
    t, s = model_224(teacher_name, "teacher"), model_224(student_name, "student")
    plan, f = fuse(t, s, 224, teacher_name=teacher_name, student_name=student_name)
    f.train()
    s.zero_grad(set_to_none=True)
    out = f(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 100)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is None for p in t.parameters())
    assert any(p.grad is not None for p in f.l2g.parameters())
    assert param_table(t, s, f)["new_learnable"] == count(f.l2g.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("pair", CIFAR_PAIRS, ids=[f"{t}->{s}" for t, s in CIFAR_PAIRS])
def test_cifar_pairs_build_at_224(pair):
    check_forward_backward(*pair)


@pytest.mark.slow
@pytest.mark.parametrize("pair", IMAGENET_PAIRS, ids=[f"{t}->{s}" for t, s in IMAGENET_PAIRS])
def test_imagenet_pairs_build_at_224(pair):
    check_forward_backward(*pair)


@pytest.mark.parametrize("pair", OTHER_PAIRS, ids=[f"{t}->{s}" for t, s in OTHER_PAIRS])
def test_pairs_outside_the_paper(pair):
    check_forward_backward(*pair)


def test_order_rule():
    assert choose_local("msa", "cnn", "auto")[0] == "student"
    assert choose_local("cnn", "msa", "auto")[0] == "teacher"
    assert choose_local("cnn", "cnn", "auto")[0] == "student"
    assert choose_local("mlp", "msa", "auto")[0] == "student"
    assert choose_local("msa", "cnn", "teacher-first")[0] == "teacher"
    assert choose_local("cnn", "msa", "student-first")[0] == "student"


# --- small inputs: every combination of kinds trains one step ---------------------------------
SMALL = {
    "resnet18": {}, "mobilenetv2_100": {}, "convnext_nano": {},
    "vit_tiny_patch16_224": {"patch_size": 4}, "swin_pico_patch4_window7_224": {},
    "mixer_s16_224": {"patch_size": 4}, "resmlp_12_224": {"patch_size": 4},
    "deit_tiny_patch16_224": {"patch_size": 4},
}
COMBOS = {
    "cnn->msa": ("resnet18", "vit_tiny_patch16_224"),
    "cnn->mlp": ("convnext_nano", "resmlp_12_224"),
    "msa->cnn": ("swin_pico_patch4_window7_224", "resnet18"),
    "mlp->cnn": ("mixer_s16_224", "mobilenetv2_100"),
    "mlp->msa": ("mixer_s16_224", "deit_tiny_patch16_224"),
    "cnn->cnn": ("convnext_nano", "resnet18"),
    "msa->msa": ("vit_tiny_patch16_224", "swin_pico_patch4_window7_224"),
}


def small_pair(tn, sn, size=32, **kw):
    t = create_model(tn, img_size=size, num_classes=10, **SMALL[tn])
    s = create_model(sn, img_size=size, num_classes=10, **SMALL[sn])
    # timm zero-initialises some heads (Mixer, ViT): a trained teacher's is not, and a zero head
    # would stop every gradient through F in a one-step test (G may be the student: its head
    # leaves zero after its first update, so give it a nonzero one too)
    torch.nn.init.normal_(t.get_classifier().weight, std=0.02)
    torch.nn.init.normal_(s.get_classifier().weight, std=0.02)
    plan, f = fuse(t, s, size, teacher_name=tn, student_name=sn, **kw)
    return t, s, plan, f


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_combination_trains_one_step_at_32(combo):
    t, s, plan, f = small_pair(*COMBOS[combo])
    f.train()
    trainable = [p for p in f.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.SGD(trainable, lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(f(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))
    assert all(p.grad is None for p in t.parameters())


def test_parameters_are_shared_by_identity():
    t, s, plan, f = small_pair("swin_pico_patch4_window7_224", "resnet18")
    assert plan.local == "student"
    t_ids, s_ids = {id(p) for p in t.parameters()}, {id(p) for p in s.parameters()}
    l2g_ids = {id(p) for p in f.l2g.parameters()}
    for p in f.parameters():
        assert (id(p) in t_ids) + (id(p) in s_ids) + (id(p) in l2g_ids) == 1
    assert f.local[1] is s.layer1 and f.local[3] is s.layer3
    assert f.tail[0] is t.layers[3]
    assert f.head.head is t.head
    table = param_table(t, s, f)
    assert table["new_learnable"] == count(f.l2g.parameters()) > 0
    assert table["fused_total"] == table["shared_with_teacher"] + table["shared_with_student"] + table["new_learnable"]


def test_student_local_gets_gradient_on_stage1():
    t, s, plan, f = small_pair("vit_tiny_patch16_224", "resnet18")
    assert plan.local == "student"
    f(torch.randn(2, 3, 32, 32)).sum().backward()
    # (timm zero-initialises each block's last BN gamma, so look at the whole stage)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.layer1.parameters())
    assert all(p.grad is None for p in t.parameters())


def test_student_global_gets_gradient_on_stage4():
    t, s, plan, f = small_pair("convnext_nano", "vit_tiny_patch16_224")
    assert plan.local == "teacher"
    f(torch.randn(2, 3, 32, 32)).sum().backward()
    stage4 = get_adapter(s).stages[3]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage4.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert s.patch_embed.proj.weight.grad is None  # S's stem is not part of F


def test_frozen_teacher_stays_in_eval_mode():
    t, s, plan, f = small_pair("convnext_nano", "resnet18")
    f.train()
    assert not t.training and all(not m.training for m in t.modules())
    assert s.training


@pytest.mark.parametrize("split", [1, 2, 3])
def test_split_is_configurable(split):
    t, s, plan, f = small_pair("swin_pico_patch4_window7_224", "resnet18", split=split)
    assert plan.split == split and len(f.local) == split + 1 and len(f.tail) == 4 - split
    assert f(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_forward_from_reuses_the_local_activation():
    t, s, plan, f = small_pair("swin_pico_patch4_window7_224", "resnet18")
    f.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x3 = get_adapter(s).forward_stages(x, upto=3)[-1]
        logits, pooled = f.forward_from(x3)
        torch.testing.assert_close(logits, f(x))
    assert pooled.shape == (2, 384)  # swin_pico stage4 width: 48 * 8


def test_vit_target_gets_class_token_and_pos_embed():
    t, s, plan, f = small_pair("resnet18", "vit_tiny_patch16_224")
    assert plan.l2g.out_prefix == 1 and plan.l2g.pos_embed
    assert f.l2g.prefix_tokens.shape == (1, 1, 192)
    torch.testing.assert_close(f.l2g.prefix_tokens.detach(), s.cls_token.detach())
    assert f.l2g.prefix_tokens is not s.cls_token  # a learnable copy, counted as new


def test_grid_mismatch_is_bridged():
    # resnet18 at 32: stage3 is 2x2; vit patch 4 at 32: 8x8 tokens
    t, s, plan, f = small_pair("resnet18", "vit_tiny_patch16_224")
    assert plan.l2g.in_grid == (2, 2) and plan.l2g.out_grid == (8, 8)
    assert plan.l2g.resample == "interp+conv1x1"
    t, s, plan, f = small_pair("resnet18", "vit_tiny_patch16_224", size=64)
    assert plan.l2g.in_grid == (4, 4) and plan.l2g.out_grid == (16, 16)


# --- a CNN as G: L2G's output has G's own statistics (BatchNorm (+ReLU), calibrated) ------------

def _warmed_teacher(name, images):
    """A teacher whose BN running statistics are not the fresh 0/1: a few train-mode passes."""
    t = create_model(name, img_size=images.shape[-1], num_classes=10)
    t.train()
    with torch.no_grad():
        for chunk in images.split(32):
            t(chunk)
    return t.eval()


def _digits(n=384, size=32):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("pair", [("resnet18", "mobilenetv2_050"), ("resnet18", "resnet18"),
                                  ("mobilenetv2_100", "resnet18"), ("resnet18", "convnext_nano")])
def test_cnn_global_gets_its_own_input_statistics(pair):
    tn, sn = pair
    torch.manual_seed(0)
    t = _warmed_teacher(tn, torch.randn(96, 3, 32, 32) * 0.7 + 0.3)
    s = create_model(sn, img_size=32, num_classes=10)
    plan, f = fuse(t, s, 32, teacher_name=tn, student_name=sn)
    # ResNet's stage 3 ends in a ReLU, MobileNetV2's in a linear bottleneck
    assert plan.l2g.norm == ("batchnorm+relu" if tn == "resnet18" else "batchnorm")
    assert isinstance(f.l2g.norm, torch.nn.BatchNorm2d)
    ta, la = get_adapter(t), get_adapter(s)
    x = torch.randn(16, 3, 32, 32)
    for train in (True, False):
        f.train(train)
        with torch.no_grad():
            t_feat = ta.pooled(ta.forward_stages(x)[-1])
            f_feat = f.forward_from(la.forward_stages(x, upto=3)[-1])[1]
        ratio = (f_feat.norm(dim=1).mean() / t_feat.norm(dim=1).mean()).item()
        assert 0.5 < ratio < 2.0, (train, ratio)  # the signed LayerNorm output gave ~6-7x
        assert f_feat.std(0).mean() > 0.05 * f_feat.abs().mean()  # no collapse across the batch


def test_non_cnn_global_keeps_layernorm():
    for tn, sn in (("swin_pico_patch4_window7_224", "resnet18"), ("resnet18", "vit_tiny_patch16_224")):
        t, s, plan, f = small_pair(tn, sn)
        assert plan.l2g.norm == "layernorm" and isinstance(f.l2g.norm, torch.nn.LayerNorm)


@pytest.mark.slow
def test_cnn_to_cnn_infonce_learns_on_digits():
    """T->F InfoNCE on real images (digits at 32px) falls clearly below chance (ln 32 = 3.47)
    within 60 steps (3.02 over the last 5); with the LayerNorm L2G it stayed near chance."""
    import math
    from fbt_engine.losses import InfoNCE
    torch.manual_seed(0)
    x = _digits()
    t = _warmed_teacher("resnet18", x[:128])
    s = create_model("mobilenetv2_050", img_size=32, num_classes=10)
    plan, f = fuse(t, s, 32, teacher_name="resnet18", student_name="mobilenetv2_050")
    ta, la = get_adapter(t), get_adapter(s)
    f.train()
    nce = InfoNCE(512, 512)  # both pool ResNet-18's stage 4
    params = [p for p in [*f.parameters(), *nce.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    g, losses = torch.Generator().manual_seed(0), []
    for _ in range(60):
        xb = x[torch.randint(0, len(x), (32,), generator=g)]
        with torch.no_grad():
            t_feat = ta.pooled(ta.forward_stages(xb)[-1])
        loss = nce(f.forward_from(la.forward_stages(xb, upto=3)[-1])[1], t_feat)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < math.log(32) - 0.3, losses


# --- G = the student: one BN update per step ---------------------------------------------------

def test_teacher_first_updates_student_bn_once_per_step():
    t = create_model("resnet18", img_size=32, num_classes=10)
    s = create_model("mobilenetv2_050", img_size=32, num_classes=10)
    plan, f = fuse(t, s, 32, order="teacher-first", teacher_name="resnet18", student_name="mobilenetv2_050")
    assert plan.local == "teacher" and plan.global_ == "student"
    f.train()
    s.train()
    bns = [m for m in f.tail.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    s_modules = {id(m) for m in s.modules()}
    assert bns and all(id(m) in s_modules for m in bns)  # S's own BNs, shared by identity
    before = [int(m.num_batches_tracked) for m in bns]
    ta, sa = get_adapter(t), get_adapter(s)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):  # the training step's order: T, S, then F from T's stage-3 activation
        with torch.no_grad():
            t_outs = ta.forward_stages(x)
        s_outs = sa.forward_stages(x)
        s_logits = sa.head(s_outs[-1])
        f_logits, _ = f.forward_from(t_outs[2])
        (s_logits.sum() + f_logits.sum()).backward()
    assert [int(m.num_batches_tracked) for m in bns] == [b + 2 for b in before]  # +1 per step
    assert all(m.track_running_stats for m in bns)
    f.eval()  # evaluation: F uses S's running statistics
    with torch.no_grad():
        f.forward_from(t_outs[2])
    assert [int(m.num_batches_tracked) for m in bns] == [b + 2 for b in before]


# --- prefix tokens: distillation and register tokens --------------------------------------------

@pytest.mark.parametrize("name,kw,n_prefix", [
    ("deit_tiny_distilled_patch16_224", {"patch_size": 4}, 2),  # class + distillation token
    ("vit_small_patch14_reg4_dinov2", {"patch_size": 4, "depth": 4}, 5),  # class + 4 registers
    ("vit_little_patch16_reg4_gap_256", {"patch_size": 4, "depth": 4}, 4),  # 4 registers, no class token
])
def test_vit_global_gets_all_its_prefix_tokens(name, kw, n_prefix):
    t = create_model("resnet18", img_size=32, num_classes=10)
    s = create_model(name, img_size=32, num_classes=10, **kw)
    torch.nn.init.normal_(s.head.weight, std=0.02)
    plan, f = fuse(t, s, 32, teacher_name="resnet18", student_name=name)
    assert plan.local == "teacher" and plan.l2g.out_prefix == n_prefix
    own = torch.cat([p for p in (getattr(s, n, None) for n in ("cls_token", "dist_token", "reg_token"))
                     if p is not None], dim=1)
    torch.testing.assert_close(f.l2g.prefix_tokens.detach(), own.detach())
    x = torch.randn(2, 3, 32, 32)
    out = f(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert f.l2g.prefix_tokens.grad is not None
    assert f.l2g(get_adapter(t).forward_stages(x, upto=3)[-1]).shape[1:] == get_adapter(s).describe(32)[3].shape
    table = param_table(t, s, f)
    assert table["new_learnable"] == count(f.l2g.parameters())


# --- mixers and heads -----------------------------------------------------------------------------

@pytest.mark.parametrize("combo", ["msa->cnn", "cnn->msa", "cnn->mlp", "cnn->cnn"])
def test_swin_mixer_trains(combo):
    from timm.models.swin_transformer import SwinTransformerBlock
    t, s, plan, f = small_pair(*COMBOS[combo], mixer="swin")
    assert plan.l2g.mixer == "swin" and isinstance(f.l2g.mixer, SwinTransformerBlock)
    f.train()
    out = f(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.l2g.mixer.parameters())
    assert "swin" in plan.chain


def test_mixer_heads_suit_the_l2g_width():
    swin_t = model_224(SWIN_T, "teacher")
    vit_t = model_224("vit_tiny_patch16_224", "student")
    r18 = model_224(R18, "student")
    plan = plan_fusion(swin_t, r18, 224, teacher_name=SWIN_T, student_name=R18)
    assert plan.l2g.out_channels == 384 and plan.l2g.heads == 12  # Swin's head dim 32 (was 24 heads: 16)
    plan = plan_fusion(r18, vit_t, 224, teacher_name=R18, student_name="vit_tiny_patch16_224")
    assert plan.l2g.out_channels == 192 and plan.l2g.heads == 3  # ViT-T's own: head dim 64
    plan = plan_fusion(swin_t, r18, 224, mixer="swin", teacher_name=SWIN_T, student_name=R18)
    assert plan.l2g.window == 7 and plan.l2g.heads == 12


def test_unknown_mixer_is_refused():
    from fbt_engine.errors import ModelError
    with pytest.raises(ModelError):
        small_pair("swin_pico_patch4_window7_224", "resnet18", mixer="conv")
