"""dist: DIST's inter/intra relation terms wired to the models' logits (`dist_loss` has a float64
golden test in test_baseline_losses.py)."""

from __future__ import annotations

import pytest

from fbt_engine.baseline_losses import dist_loss
from method_helpers import batch, make, student_logits, teacher_logits


def test_dist_terms_sum_to_ofa_kds_loss() -> None:
    m = make("dist", loss={"dist": 2.0, "dist_beta": 0.5, "dist_gamma": 3.0, "dist_tau": 2.0})
    assert m.weights() == {"ce": 1.0, "dist/inter": 2.0 * 0.5 * 4, "dist/intra": 2.0 * 3.0 * 4}
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    s, t = student_logits(m, x), teacher_logits(m, x)
    want = 2.0 * dist_loss(s, t, beta=0.5, gamma=3.0, tau=2.0)
    assert total.item() - terms["ce"].item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["dist/inter"].item() == pytest.approx(dist_loss(s, t, 1.0, 0.0, 2.0).item() / 4, rel=1e-5)
    assert terms["dist/intra"].item() == pytest.approx(dist_loss(s, t, 0.0, 1.0, 2.0).item() / 4, rel=1e-5)
