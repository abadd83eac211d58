"""Hinton KD (OFA-KD's `distillers/kd.py`): `ce * CE + kd * T^2 KL(p_t || p_s)`, T = `loss.kd_temperature`.

The file to copy for a new logit-based method: a summary, the terms with their weights, and a
`compute` that runs the models once and returns each term as a thunk.
"""

from __future__ import annotations

from torch import Tensor

from ..losses import kd_loss
from ..config import LossConfig
from . import register
from ._base import Method, Thunk


@register
class KD(Method):
    summary = "Hinton KD: KL to the teacher's softened logits (OFA-KD's T = 1)"

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "kd": c.kd}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        t_logits = self.teacher_logits(x)
        logits = self.student(x)
        return {"ce": lambda: self.ce(logits, target),
                "kd": lambda: kd_loss(logits, t_logits, self.loss_cfg.kd_temperature)}
