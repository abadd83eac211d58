"""DIST (OFA-KD's `distillers/dist.py`): Pearson-correlation relations between student and teacher
probabilities, across the classes of a sample (inter) and across the samples of a class (intra).

Logged as `dist/inter` (weight `dist * dist_beta * tau^2`) and `dist/intra` (`dist * dist_gamma * tau^2`).
"""

from __future__ import annotations

from torch import Tensor

from ..baseline_losses import dist_terms
from ..config import LossConfig
from ..ddp import gather_batch
from . import register
from ._base import Method, Thunk, once


@register
class DIST(Method):
    summary = "DIST: inter- and intra-class correlation with the teacher's probabilities"

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        t2 = c.dist_tau ** 2
        return {"ce": c.ce, "dist/inter": c.dist * c.dist_beta * t2, "dist/intra": c.dist * c.dist_gamma * t2}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        t_logits = self.teacher_logits(x)
        logits = self.student(x)
        # the intra-class relation runs over the samples: those of the global batch (ranks gather the rows)
        both = once(lambda: dist_terms(gather_batch(logits), gather_batch(t_logits), self.loss_cfg.dist_tau))
        return {"ce": lambda: self.ce(logits, target), "dist/inter": lambda: both()[0],
                "dist/intra": lambda: both()[1]}
