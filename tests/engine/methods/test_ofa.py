"""ofa: OFA-KD's weighting (distillers/ofa.py L121-139): the final-logit term and the branch terms have
separate weights; each branch has its own eps; every term is taught by the teacher's final logits.
The branch architectures are tested in tests/engine/test_ofa_branches.py."""

from __future__ import annotations

import pytest
import torch

from fbt_engine.losses import ofa_loss
from method_helpers import batch, make, teacher_logits


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_ofa_terms_weights_and_eps(soft: bool) -> None:
    m = make("ofa", loss={"ce": 0.5, "ofa": 1.5, "ofa_branch": 0.7, "ofa_eps": 1.5, "ofa_stages": [2, 4],
                          "ofa_stage_eps": [1.2, 2.0]})
    x, y, idx = batch(soft=soft)
    total, terms = m(x, y, idx)
    assert list(terms) == ["ce", "ofa", "ofa/stage2", "ofa/stage4"]
    with torch.no_grad():
        outs = m.s.forward_stages(x)
        s_logits, branches = m.s.head(outs[-1]), m.branches(outs)
    t = teacher_logits(m, x)
    want = {"ofa": ofa_loss(s_logits, t, y, 1.5), "ofa/stage2": ofa_loss(branches[0], t, y, 1.2),
            "ofa/stage4": ofa_loss(branches[1], t, y, 2.0)}
    for k, v in want.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-5), k
    weighted = 0.5 * terms["ce"] + 1.5 * terms["ofa"] + 0.7 * (terms["ofa/stage2"] + terms["ofa/stage4"])
    assert total.item() == pytest.approx(weighted.item(), rel=1e-6)


def test_ofa_zero_weights_remove_terms() -> None:
    assert make("ofa", loss={"ofa_branch": 0.0}).term_names() == ["ce", "ofa"]
    assert make("ofa", loss={"ofa": 0.0, "ofa_stages": [1, 3]}).term_names() == ["ce", "ofa/stage1", "ofa/stage3"]


def test_ofa_kd_defaults() -> None:
    c = make("ofa").loss_cfg
    assert (c.ce, c.ofa, c.ofa_branch, c.ofa_eps, c.ofa_temperature, c.ofa_stages) == (1.0, 1.0, 1.0, 1.0, 1.0,
                                                                                         [1, 2, 3, 4])
