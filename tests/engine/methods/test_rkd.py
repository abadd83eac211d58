"""rkd: distance and angle terms on the models' pre-logits features (`rkd_terms` has a float64
golden test in test_baseline_losses.py)."""

from __future__ import annotations

import pytest

from fbt_engine.baseline_losses import rkd_loss, rkd_terms
from method_helpers import batch, make, prelogits


def test_rkd_terms_and_ofa_kd_weights() -> None:
    m = make("rkd")
    assert m.weights() == {"ce": 1.0, "rkd/distance": 25.0, "rkd/angle": 50.0}
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    fs, ft = prelogits(m.student, x), prelogits(m.teacher, x)
    d, a = rkd_terms(fs, ft)
    assert terms["rkd/distance"].item() == pytest.approx(d.item(), rel=1e-4)
    assert terms["rkd/angle"].item() == pytest.approx(a.item(), rel=1e-4)
    assert total.item() - terms["ce"].item() == pytest.approx(rkd_loss(fs, ft).item(), rel=1e-4)
