"""scratch: cross-entropy on the student only, label smoothing on hard labels only."""

from __future__ import annotations

import numpy as np
import pytest

from method_helpers import batch, make, student_logits


def _ref_ce(logits: np.ndarray, y: np.ndarray, smoothing: float) -> float:
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    target = np.full_like(z, smoothing / z.shape[1])
    target[np.arange(len(y)), y] += 1 - smoothing
    return float(-(target * logp).sum(1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_on_the_student(smoothing: float) -> None:
    m = make("scratch", smoothing=smoothing)
    assert m.teacher is None and m.term_names() == ["ce"]
    x, y, idx = batch()
    _, terms = m(x, y, idx)
    assert terms["ce"].item() == pytest.approx(_ref_ce(student_logits(m, x).numpy(), y.numpy(), smoothing), rel=1e-5)


def test_soft_targets_are_not_smoothed_again() -> None:
    m = make("scratch", smoothing=0.1)
    x, y, idx = batch(soft=True)
    _, terms = m(x, y, idx)
    logits = student_logits(m, x).double()
    want = -(y.double() * logits.log_softmax(1)).sum(1).mean()
    assert terms["ce"].item() == pytest.approx(want.item(), rel=1e-5)
