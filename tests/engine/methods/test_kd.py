"""kd: Hinton KD, `T^2 KL(p_t || p_s)` at OFA-KD's T = 1 by default, against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from method_helpers import batch, make, student_logits, teacher_logits


def _ref_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) / temp
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = log_softmax(t), log_softmax(s)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean() * temp * temp)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_term(temp: float) -> None:
    m = make("kd", loss={"kd_temperature": temp, "kd": 2.0, "ce": 0.5})
    x, y, idx = batch()
    total, terms = m(x, y, idx)
    s, t = student_logits(m, x).numpy(), teacher_logits(m, x).numpy()
    assert terms["kd"].item() == pytest.approx(_ref_kd(s, t, temp), rel=1e-4)
    assert total.item() == pytest.approx(0.5 * terms["ce"].item() + 2.0 * terms["kd"].item(), rel=1e-6)


def test_ofa_kd_default_temperature() -> None:
    assert make("kd").loss_cfg.kd_temperature == 1.0
