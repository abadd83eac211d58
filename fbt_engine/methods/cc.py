"""Correlation congruence as OFA-KD trains it (`distillers/correlation.py`, RepDistiller's `Correlation`).

Both pre-logits features go through a learned `Linear(D, cc_feat_dim)`; the loss is
`cc_scale * mean_i sum_d |e_s - e_t|[i, d] * |e_s - e_t|[i + 1, d]` over consecutive samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..baseline_losses import CC as CCLoss
from ..config import LossConfig
from ..ddp import gather_batch
from . import register
from ._base import Method, Setup, Thunk, logits_and_prelogits, prelogits_width


@register
class CC(Method):
    summary = "correlation congruence between embedded features of consecutive samples"
    trains = ("student", "cc")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        c = self.loss_cfg
        self.cc = CCLoss(prelogits_width(self.student), prelogits_width(self.teacher), c.cc_feat_dim, c.cc_scale)

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "cc": c.cc}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        with torch.no_grad():
            _, t_feat = logits_and_prelogits(self.teacher, x)
        logits, feat = logits_and_prelogits(self.student, x)
        return {"ce": lambda: self.ce(logits, target), "cc": lambda: self.cc(gather_batch(feat), gather_batch(t_feat))}  # consecutive samples of the global batch
