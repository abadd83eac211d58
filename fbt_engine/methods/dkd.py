"""Decoupled KD (OFA-KD's `distillers/dkd.py`): `dkd * (alpha * TCKD + beta * NCKD)`.

Logged as two terms, `dkd/tckd` (weight `dkd * dkd_alpha`) and `dkd/nckd` (`dkd * dkd_beta`), so a
reader sees which half moves. OFA-KD has no warm-up of the DKD loss (mdistiller ramps it over 20
epochs); neither has this.
"""

from __future__ import annotations

from torch import Tensor

from ..baseline_losses import dkd_terms
from ..config import LossConfig
from . import register
from ._base import Method, Thunk, once


@register
class DKD(Method):
    summary = "decoupled KD: target-class and non-target-class KL, weighted apart"

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "dkd/tckd": c.dkd * c.dkd_alpha, "dkd/nckd": c.dkd * c.dkd_beta}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        t_logits = self.teacher_logits(x)
        logits = self.student(x)
        both = once(lambda: dkd_terms(logits, t_logits, target, self.loss_cfg.dkd_temperature))
        return {"ce": lambda: self.ce(logits, target), "dkd/tckd": lambda: both()[0],
                "dkd/nckd": lambda: both()[1]}
