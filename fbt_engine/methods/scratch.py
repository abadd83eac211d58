"""Training the student alone with cross-entropy: the baseline every distillation must beat."""

from __future__ import annotations

from torch import Tensor

from ..config import LossConfig
from . import register
from ._base import Method, Thunk


@register
class Scratch(Method):
    summary = "no teacher: cross-entropy on the labels"
    needs_teacher = False

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce}

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        logits = self.student(x)
        return {"ce": lambda: self.ce(logits, target)}
