"""OFA-KD (Hao et al., NeurIPS 2023; `distillers/ofa.py`): branches on the student's stages project
them into logit space, where the teacher's final logits teach them with the OFA loss.

`ce * CE + ofa * L_OFA(final logits) + ofa_branch * sum_k L_OFA(branch k)`. As OFA-KD
(`distillers/ofa.py` L121-139) the final-logit term (`ofa`, its `--kd-loss-weight`) and the branch
terms (`ofa_branch`, its `--ofa-loss-weight`) have separate weights. The final term uses `ofa_eps`;
branch k uses `ofa_stage_eps[k]` (its per-stage `--ofa-eps` list) or `ofa_eps` when that list is
empty. The branch architectures and their width rule are in `_ofa_branches.py`.
"""

from __future__ import annotations

from torch import Tensor

from ..adapters import get_adapter
from ..losses import ofa_loss
from ..config import LossConfig
from . import register
from ._base import Method, Setup, Thunk, prelogits_width
from ._ofa_branches import build_ofa_branches


@register
class OFA(Method):
    summary = "OFA-KD: stage branches taught in logit space by the teacher (OFA-KD's branches)"
    trains = ("student", "branches")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.s = get_adapter(self.student, setup.cfg.student.model)
        infos = self.s.describe(self.img_size)[1:]
        self.branches = build_ofa_branches(self.loss_cfg, [(i.layout, i.shape) for i in infos], self.num_classes,
                                           prelogits_width(self.teacher), [i.num_prefix for i in infos],
                                           prelogits_width(self.student))

    def stage_eps(self) -> list[float]:
        c = self.loss_cfg
        return list(c.ofa_stage_eps) or [c.ofa_eps] * len(c.ofa_stages)

    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        return {"ce": c.ce, "ofa": c.ofa, **{f"ofa/stage{s}": c.ofa_branch for s in c.ofa_stages}}

    def _ofa(self, student: Tensor, teacher: Tensor, target: Tensor, eps: float) -> Tensor:
        return ofa_loss(student, teacher, target, eps, self.loss_cfg.ofa_temperature)

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        t_logits = self.teacher_logits(x)
        outs = self.s.forward_stages(x)
        logits = self.s.head(outs[-1])
        branch_logits = self.branches(outs)  # cheap next to the models; weight-0 branches still run
        thunks: dict[str, Thunk] = {
            "ce": lambda: self.ce(logits, target),
            "ofa": lambda: self._ofa(logits, t_logits, target, self.loss_cfg.ofa_eps)}
        for stage, eps, z in zip(self.loss_cfg.ofa_stages, self.stage_eps(), branch_logits):
            thunks[f"ofa/stage{stage}"] = lambda z=z, e=eps: self._ofa(z, t_logits, target, e)
        return thunks
