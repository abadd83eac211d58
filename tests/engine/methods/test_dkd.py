"""dkd: decoupled KD wired to the models' logits; `dkd_terms` itself is checked against a float64
reference in test_baseline_losses.py."""

from __future__ import annotations

import pytest

from fbt_engine.baseline_losses import dkd_loss, dkd_terms
from method_helpers import batch, make, student_logits, teacher_logits


def test_dkd_terms_and_weights() -> None:
    m = make("dkd", loss={"dkd": 0.5, "dkd_alpha": 2.0, "dkd_beta": 3.0, "dkd_temperature": 2.0})
    assert m.weights() == {"ce": 1.0, "dkd/tckd": 1.0, "dkd/nckd": 1.5}
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    s, t = student_logits(m, x), teacher_logits(m, x)
    tckd, nckd = dkd_terms(s, t, y, 2.0)
    assert terms["dkd/tckd"].item() == pytest.approx(tckd.item(), rel=1e-5)
    assert terms["dkd/nckd"].item() == pytest.approx(nckd.item(), rel=1e-5)
    # the two weighted terms are OFA-KD's `kd_loss_weight * dkd_loss(alpha, beta, T)`
    assert total.item() - terms["ce"].item() == pytest.approx(0.5 * dkd_loss(s, t, y, 2.0, 3.0, 2.0).item(), rel=1e-5)


def test_ofa_kd_defaults() -> None:
    c = make("dkd").loss_cfg
    assert (c.dkd_alpha, c.dkd_beta, c.dkd_temperature) == (1.0, 2.0, 1.0)
