"""Fuse Before Transfer (ICCV 2025; method.md sections 3-6): a fused model F built from the
teacher's and the student's own modules (`fusion.py`) sits between them; knowledge flows T -> F -> S.

`ce * CE(S) + sum_paths (ofa * L_OFA + nce * L_feature) + fused_ce * CE(F)` over `loss.paths`:
T->F (the teacher teaches F), F->S (F teaches the student; F is the detached target there) and T->S.
The feature term (`loss.feature`) is the paper's spatial-agnostic InfoNCE on pooled features
(`nce/<path>`, one pair of learned projection heads and a temperature per path) or, as an ablation,
pixel-wise MSE on the stage-4 maps after a learned 1x1 projection to the target's width
(`mse/<path>`, FitNet-style; its weight is also `loss.nce`).

One step runs T (no grad), S and F's tail once each: F starts from L's stage-`split` activation,
which L's own forward already produced. With `fusion.share = false` F holds copies of S's modules
(the weight-sharing ablation) and, when S is L, runs its own copy of L's first stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import get_adapter
from ..baseline_losses import FitNetProjector
from ..fusion import build_fused, param_table, plan_fusion, to_nchw
from ..losses import InfoNCE, ofa_loss
from ..config import LossConfig
from . import register
from ._base import Method, Setup, Thunk

# Which side learns and which side teaches on each path: (learner, target).
PATH_SIDES = {"t->f": ("fused", "teacher"), "f->s": ("student", "fused"), "t->s": ("student", "teacher")}


def head_key(path: str) -> str:
    # nn.Module names cannot hold "."; "->" is legal but awkward in state_dict keys: t->f -> t2f.
    return path.replace("->", "2")


class MapMSE(nn.Module):
    """Pixel-wise MSE of a learner's stage-4 map, projected to the target's width and grid, against
    the target's map (detached): the feature loss FitNet uses, for the `loss.feature = mse` ablation."""

    def __init__(self, learner: tuple[str, tuple[int, ...], tuple[int, int], int],
                 target: tuple[str, tuple[int, ...], tuple[int, int], int]) -> None:
        super().__init__()
        self.views = (learner[0], learner[2], learner[3]), (target[0], target[2], target[3])
        self.proj = FitNetProjector((_channels(learner), *learner[2]), (_channels(target), *target[2]))

    def forward(self, learner_map: Tensor, target_map: Tensor) -> Tensor:
        x = self.proj(to_nchw(learner_map, *self.views[0]))
        return F.mse_loss(x, to_nchw(target_map.detach(), *self.views[1]))


def _channels(view: tuple[str, tuple[int, ...], tuple[int, int], int]) -> int:
    layout, shape = view[0], view[1]
    return shape[0] if layout == "nchw" else shape[-1]


@register
class FBT(Method):
    summary = "Fuse Before Transfer: teacher -> fused model (T's and S's own modules) -> student"
    trains = ("student", "fused", "heads")

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        cfg, c = setup.cfg, self.loss_cfg
        self.s = get_adapter(self.student, cfg.student.model)
        self.t = get_adapter(self.teacher, cfg.teacher.model)
        plan = plan_fusion(self.teacher, self.student, self.img_size, order=cfg.fusion.order,
                           split=cfg.fusion.split, mixer=cfg.fusion.mixer, teacher_name=cfg.teacher.model,
                           student_name=cfg.student.model)
        self.share = cfg.fusion.share
        self.fused = build_fused(self.teacher, self.student, plan, share=self.share)
        self.paths = list(c.paths)
        self.feature = c.feature
        self.heads = nn.ModuleDict()
        if c.nce > 0:  # one dry run measures every side's width (or map) for all paths
            sides = self._feature_dims() if self.feature == "infonce" else self._map_views()
            for path in self.paths:
                learner, target = PATH_SIDES[path]
                self.heads[head_key(path)] = InfoNCE(sides[learner], sides[target], c.nce_dim, c.nce_tau_init) \
                    if self.feature == "infonce" else MapMSE(sides[learner], sides[target])

    # --- shapes, measured by dry runs ------------------------------------------------------------
    def _feature_dims(self) -> dict[str, int]:
        """Pooled feature widths from one dry run (shapes are measured, never looked up)."""
        x = torch.zeros(1, 3, self.img_size, self.img_size)
        was = self.training
        self.eval()
        with torch.no_grad():
            t_feat = self.t.pooled(self.t.forward_stages(x)[-1])
            s_outs = self.s.forward_stages(x)
            f_feat = self.fused.forward_from(self._x_split(x, s_outs, None))[1]
        self.train(was)
        return {"teacher": t_feat.shape[1], "student": self.s.pooled(s_outs[-1]).shape[1], "fused": f_feat.shape[1]}

    def _map_views(self) -> dict[str, tuple[str, tuple[int, ...], tuple[int, int], int]]:
        """(layout, shape, grid, prefix) of each side's stage-4 map; F's is G's (L2G feeds G's own shapes)."""
        def view(adapter: object) -> tuple[str, tuple[int, ...], tuple[int, int], int]:
            info = adapter.describe(self.img_size)[4]
            return info.layout, info.shape, info.grid, info.num_prefix
        g = self.s if self.fused.plan.global_ == "student" else self.t
        return {"teacher": view(self.t), "student": view(self.s), "fused": view(g)}

    def _x_split(self, x: Tensor, s_outs: list[Tensor] | None, t_outs: list[Tensor] | None) -> Tensor:
        """L's stage-`split` activation, F's input: reused from L's own forward where F shares L."""
        plan = self.fused.plan
        if plan.local == "teacher":
            outs = t_outs if t_outs is not None else self.t.forward_stages(x, upto=plan.split)
            return outs[plan.split - 1]
        if not self.share:
            return self.fused.local(x)  # F's own copy of S's first stages
        return s_outs[plan.split - 1]

    # --- the method --------------------------------------------------------------------------------
    @classmethod
    def term_weights(cls, c: LossConfig) -> dict[str, float]:
        feature = "nce" if c.feature == "infonce" else "mse"
        weights = {"ce": c.ce}
        for path in c.paths:
            weights[f"ofa/{path}"] = c.ofa
            weights[f"{feature}/{path}"] = c.nce
        weights["ce/fused"] = c.fused_ce
        return weights

    def compute(self, x: Tensor, target: Tensor, index: Tensor | None) -> dict[str, Thunk]:
        with torch.no_grad():
            t_outs = self.t.forward_stages(x)
            t_logits, t_feat = self.t.head_and_pooled(t_outs[-1])
        s_outs = self.s.forward_stages(x)
        s_logits, s_feat = self.s.head_and_pooled(s_outs[-1])
        f_logits, f_feat, f_map = self.fused.forward_from(self._x_split(x, s_outs, t_outs), with_map=True)
        self._fused_feat = f_feat.detach()  # for health_signals (read on logged steps only)
        sides = {"teacher": (t_logits, t_feat, t_outs[-1]), "student": (s_logits, s_feat, s_outs[-1]),
                 "fused": (f_logits, f_feat, f_map)}
        c = self.loss_cfg
        thunks: dict[str, Thunk] = {"ce": lambda: self.ce(s_logits, target),
                                    "ce/fused": lambda: self.ce(f_logits, target)}
        feature = "nce" if self.feature == "infonce" else "mse"
        for path in self.paths:
            learner, teacher = (sides[side] for side in PATH_SIDES[path])
            # the target side is detached inside ofa_loss, InfoNCE and MapMSE
            thunks[f"ofa/{path}"] = lambda a=learner, b=teacher: ofa_loss(a[0], b[0], target, c.ofa_eps,
                                                                          c.ofa_temperature)
            if c.nce > 0:
                head = self.heads[head_key(path)]
                k = 1 if feature == "nce" else 2  # pooled features or stage-4 maps
                thunks[f"{feature}/{path}"] = lambda a=learner, b=teacher, h=head, k=k: h(a[k], b[k])
        return thunks

    def health_signals(self) -> dict[str, Tensor]:
        """Device scalars for the health checks (health.py) from the last step: `fused_spread`, the
        RMS distance of F's unit-length pooled features from their batch mean (0: the batch
        collapsed to one point, about 1: spread out; free of the features' scale and width), and
        each InfoNCE path's temperature `tau/<path>`."""
        out: dict[str, Tensor] = {}
        feat = getattr(self, "_fused_feat", None)
        if feat is not None and feat.shape[0] > 1:
            unit = F.normalize(feat.float().flatten(1), dim=1)
            out["fused_spread"] = unit.var(dim=0, unbiased=False).sum().sqrt()
        for path in self.paths:
            head = self.heads[head_key(path)] if head_key(path) in self.heads else None
            if isinstance(head, InfoNCE):
                out[f"tau/{path}"] = head.tau.detach()
        return out

    def eval_logits(self, x: Tensor, with_teacher: bool) -> dict[str, Tensor]:
        """Student, fused and optionally teacher logits, running each model's stages once: F starts
        from L's stage-`split` activation, as in the training step."""
        plan = self.fused.plan
        s_outs = self.s.forward_stages(x)
        t_outs = None
        if with_teacher or plan.local == "teacher":
            t_outs = self.t.forward_stages(x, upto=4 if with_teacher else plan.split)
        out = {"model": self.s.head(s_outs[-1]), "fused": self.fused.forward_from(self._x_split(x, s_outs, t_outs))[0]}
        if with_teacher:
            out["teacher"] = self.t.head(t_outs[-1])
        return out

    def params(self) -> dict[str, int]:
        table = param_table(self.teacher, self.student, self.fused)
        table["extra"] = table["new_learnable"] + sum(p.numel() for p in self.heads.parameters())
        table["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return table
