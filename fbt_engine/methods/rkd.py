"""Relational KD (OFA-KD's `distillers/rkd.py`): match the distances and angles between samples'
pre-logits features. Logged as `rkd/distance` (weight `rkd * rkd_distance`) and `rkd/angle`
(`rkd * rkd_angle`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..baseline_losses import rkd_terms
from ..config import LossConfig
from ..ddp import gather_batch
from . import register
from ._base import Method, Thunk, logits_and_prelogits, once


@register
class RKD(Method):
    summary = "relational KD: pairwise distances and triplet angles of the features"

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "rkd/distance": c.rkd * c.rkd_distance, "rkd/angle": c.rkd * c.rkd_angle}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        with torch.no_grad():
            _, t_feat = logits_and_prelogits(self.teacher, x)
        logits, feat = logits_and_prelogits(self.student, x)
        # distances and angles between all the global batch's samples (ranks gather the rows)
        both = once(lambda: rkd_terms(gather_batch(feat), gather_batch(t_feat)))
        return {"ce": lambda: self.ce(logits, target), "rkd/distance": lambda: both()[0],
                "rkd/angle": lambda: both()[1]}
