"""fbt: the three paths' OFA and feature terms, what each path trains, and the ablation switches
(`loss.feature = mse`, `fusion.share = false`). The fused model itself: tests/engine/test_fusion.py."""

from __future__ import annotations

import pytest
import torch

from fbt_engine.losses import ofa_loss
from fbt_engine.methods.fbt import MapMSE
from method_helpers import batch, make

NAMES = ["ce", "ofa/t->f", "nce/t->f", "ofa/f->s", "nce/f->s", "ofa/t->s", "nce/t->s", "ce/fused"]


def _sides(m, x):
    with torch.no_grad():
        t_outs = m.t.forward_stages(x)
        t_logits, t_feat = m.t.head_and_pooled(t_outs[-1])
        s_outs = m.s.forward_stages(x)
        s_logits, s_feat = m.s.head_and_pooled(s_outs[-1])
        f_logits, f_feat = m.fused.forward_from(m._x_split(x, s_outs, t_outs))
    return {"teacher": (t_logits, t_feat), "student": (s_logits, s_feat), "fused": (f_logits, f_feat)}


@pytest.mark.parametrize("pair", ["cnn->vit", "vit->cnn"])
def test_fbt_terms_and_total(pair: str) -> None:
    m = make("fbt", pair, loss={"ce": 0.5, "ofa": 2.0, "nce": 0.3, "fused_ce": 0.7, "ofa_eps": 1.5, "nce_dim": 4})
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    assert list(terms) == NAMES
    weights = {"ce": 0.5, "ofa": 2.0, "nce": 0.3, "ce/fused": 0.7}
    want = sum(weights[k if k == "ce/fused" else k.split("/")[0]] * v.item() for k, v in terms.items())
    assert total.item() == pytest.approx(want, rel=1e-5)
    sides = _sides(m, x)
    assert terms["ofa/t->f"].item() == pytest.approx(
        ofa_loss(sides["fused"][0], sides["teacher"][0], y, 1.5).item(), rel=1e-5)
    with torch.no_grad():
        nce = m.heads["f2s"](sides["student"][1], sides["fused"][1])
    assert terms["nce/f->s"].item() == pytest.approx(nce.item(), rel=1e-5)
    assert len(m.heads) == 3  # one InfoNCE (two heads and a temperature) per path


def test_f_to_s_does_not_train_the_fused_model() -> None:
    m = make("fbt", loss={"ce": 0.0, "paths": ["f->s"], "nce_dim": 4})
    total, terms = m(*batch())
    assert list(terms) == ["ofa/f->s", "nce/f->s"]
    total.backward()
    assert all(p.grad is None for p in m.fused.l2g.parameters())  # F is the (detached) target here
    assert any(p.grad is not None for p in m.student.parameters())


def test_zero_feature_weight_builds_no_heads() -> None:
    m = make("fbt", loss={"nce": 0.0, "paths": ["t->f", "t->s"]})
    assert m.term_names() == ["ce", "ofa/t->f", "ofa/t->s"] and len(m.heads) == 0


@pytest.mark.parametrize("pair", ["cnn->vit", "vit->cnn"])
def test_mse_feature_ablation(pair: str) -> None:
    """loss.feature = mse: pixel-wise MSE of the learner's stage-4 map, projected by a 1x1 conv to the
    target's width and grid, against the target's map (detached)."""
    m = make("fbt", pair, loss={"feature": "mse"})
    assert [n for n in m.term_names() if "/" in n and n != "ce/fused"] == \
        ["ofa/t->f", "mse/t->f", "ofa/f->s", "mse/f->s", "ofa/t->s", "mse/t->s"]
    assert all(isinstance(h, MapMSE) for h in m.heads.values())
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    with torch.no_grad():
        t4 = m.t.forward_stages(x)[-1]
        s4 = m.s.forward_stages(x)[-1]
        want = m.heads["t2s"](s4, t4)
    assert terms["mse/t->s"].item() == pytest.approx(want.item(), rel=1e-5)
    total.backward()
    assert all(p.grad is not None for h in m.heads.values() for p in h.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


@pytest.mark.parametrize("pair", ["cnn->vit", "vit->cnn"])
def test_unshared_fused_model_trains_its_own_copies(pair: str) -> None:
    m = make("fbt", pair, fusion={"share": False})
    s_ids = {id(p) for p in m.student.parameters()}
    assert not any(id(p) in s_ids for p in m.fused.parameters())  # copies, not S's modules
    params = m.params()
    assert params["shared_with_student"] == 0 and params["new_learnable"] > make("fbt", pair).params()["new_learnable"]
    m2 = make("fbt", pair, loss={"ce": 0.0, "paths": ["t->f"]}, fusion={"share": False})
    total, _ = m2(*batch())
    total.backward()  # T->F alone: only F (its copies and L2G) learns, S is untouched
    assert all(p.grad is None for p in m2.student.parameters())
    assert any(p.grad is not None for p in m2.fused.parameters())
    shared = make("fbt", pair, loss={"ce": 0.0, "paths": ["t->f"]})
    shared(*batch())[0].backward()  # with sharing the same loss reaches S's modules inside F
    assert any(p.grad is not None for p in shared.student.parameters())
