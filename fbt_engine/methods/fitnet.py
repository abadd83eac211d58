"""FitNet hints (OFA-KD's `distillers/fitnet.py`): each distilled student stage, through a 1x1 conv
to the teacher's width, regresses the teacher's same stage by MSE (summed over `loss.fitnet_stages`).

Deviation: OFA-KD runs FitNet on CNN pairs only (it asserts equal grids); here any pair works:
token and NHWC stages are viewed as NCHW maps (prefix tokens dropped) and the projected map is
resized to the teacher's grid (average pooling down, bilinear up).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..adapters import get_adapter
from ..baseline_losses import FitNet as FitNetLoss
from ..fusion import to_nchw
from ..config import LossConfig
from . import register
from ._base import Method, Setup, Thunk


@register
class FitNet(Method):
    summary = "FitNet hints: MSE between projected student stages and the teacher's stages"
    trains = ("student", "fitnet")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        cfg = setup.cfg
        self.s = get_adapter(self.student, cfg.student.model)
        self.t = get_adapter(self.teacher, cfg.teacher.model)
        self.stages = sorted(set(self.loss_cfg.fitnet_stages))
        s_info, t_info = self.s.describe(self.img_size)[1:], self.t.describe(self.img_size)[1:]
        self._views = [(i.layout, i.grid, i.num_prefix) for i in s_info], \
                      [(i.layout, i.grid, i.num_prefix) for i in t_info]
        self.fitnet = FitNetLoss([(s_info[k - 1].channels, *s_info[k - 1].grid) for k in self.stages],
                                 [(t_info[k - 1].channels, *t_info[k - 1].grid) for k in self.stages])

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "fitnet": c.fitnet}

    def _maps(self, outs: list[Tensor], views: list[tuple[str, tuple[int, int], int]]) -> list[Tensor]:
        return [to_nchw(outs[k - 1], *views[k - 1]) for k in self.stages]

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        with torch.no_grad():
            t_maps = self._maps(self.t.forward_stages(x, upto=self.stages[-1]), self._views[1])
        outs = self.s.forward_stages(x)
        logits = self.s.head(outs[-1])
        return {"ce": lambda: self.ce(logits, target),
                "fitnet": lambda: self.fitnet(self._maps(outs, self._views[0]), t_maps)}
