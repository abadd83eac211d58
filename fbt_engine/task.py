"""What one training step computes, per method, as one module (DDP wraps exactly this).

`DistillModule.forward(images, target)` runs T (no grad), S and, for FBT, the fused tail once
each: F starts from L's stage-`split` activation that L's own forward already produced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .adapters import Adapter, get_adapter
from .config import RunConfig
from .fusion import FusedModel, build_fused, freeze, param_table, plan_fusion
from .losses import Objective, Outputs, build_objective
from .models import create_model
from .ofa_branches import OFABranches, build_ofa_branches, feature_width


def _kwargs(model_cfg: Any) -> dict[str, Any]:
    return dict(model_cfg.kwargs)


def create_student(cfg: RunConfig, num_classes: int) -> nn.Module:
    s = cfg.student
    model = create_model(s.model, img_size=cfg.data.img_size, num_classes=num_classes,
                         pretrained=s.pretrained, **_kwargs(s))
    if s.checkpoint:
        from .checkpoint import load_weights
        load_weights(model, s.checkpoint, "student")
    return model


def create_teacher(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The teacher with random (to be trained), hub or no weights: loading happens in the runner."""
    t = cfg.teacher
    return create_model(t.model, img_size=cfg.data.img_size, num_classes=num_classes,
                        pretrained=t.pretrained and not t.checkpoint, **_kwargs(t))


class DistillModule(nn.Module):
    """Student + (frozen) teacher + fused model + OFA branches + loss heads for one method."""

    def __init__(self, cfg: RunConfig, student: nn.Module, teacher: nn.Module | None, num_classes: int) -> None:
        super().__init__()
        self.method = cfg.method
        self.student = student
        self.s: Adapter = get_adapter(student, cfg.student.model) if cfg.method in ("ofa", "fbt") else None
        self.teacher = freeze(teacher) if teacher is not None and cfg.method != "scratch" else None
        self.t: Adapter | None = get_adapter(teacher, cfg.teacher.model) if cfg.method == "fbt" else None
        self.fused: FusedModel | None = None
        self.branches: OFABranches | None = None
        dims: dict[str, int] = {}
        if cfg.method == "fbt":
            plan = plan_fusion(teacher, student, cfg.data.img_size, order=cfg.fusion.order, split=cfg.fusion.split,
                               mixer=cfg.fusion.mixer, teacher_name=cfg.teacher.model, student_name=cfg.student.model)
            self.fused = build_fused(teacher, student, plan)
            dims = self._feature_dims(cfg.data.img_size)
        if cfg.method == "ofa":
            infos = self.s.describe(cfg.data.img_size)[1:]
            self.branches = build_ofa_branches(cfg.loss, [(i.layout, i.shape) for i in infos], num_classes,
                                               feature_width(teacher), [i.num_prefix for i in infos],
                                               feature_width(student))
        self.objective: Objective = build_objective(cfg.method, cfg.loss, dims, num_classes,
                                                    label_smoothing=cfg.aug.label_smoothing)

    def _feature_dims(self, img_size: int) -> dict[str, int]:
        """Pooled feature widths from one dry run (shapes are measured, never looked up)."""
        x = torch.zeros(1, 3, img_size, img_size)
        was = self.training
        self.eval()
        with torch.no_grad():
            t4 = self.t.forward_stages(x)[-1]
            s_outs = self.s.forward_stages(x)
            f_in = s_outs[self.fused.plan.split - 1] if self.fused.plan.local == "student" else \
                self.t.forward_stages(x, upto=self.fused.plan.split)[-1]
            dims = {"teacher": self.t.pooled(t4).shape[1], "student": self.s.pooled(s_outs[-1]).shape[1],
                    "fused": self.fused.forward_from(f_in)[1].shape[1]}
        self.train(was)
        return dims

    def train(self, mode: bool = True) -> "DistillModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics and dropout stay in inference mode
        return self

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.outputs(images, target))

    def outputs(self, x: torch.Tensor, target: torch.Tensor) -> Outputs:
        if self.method == "scratch":
            return Outputs(student_logits=self.student(x), target=target)
        if self.method == "kd":
            with torch.no_grad():
                t_logits = self.teacher(x)
            return Outputs(student_logits=self.student(x), teacher_logits=t_logits, target=target)
        if self.method == "ofa":
            with torch.no_grad():
                t_logits = self.teacher(x)
            outs = self.s.forward_stages(x)
            s_logits, s_feat = self.s.head_and_pooled(outs[-1])
            return Outputs(student_logits=s_logits, student_feat=s_feat, teacher_logits=t_logits,
                           branch_logits=self.branches(outs), target=target)
        return self._fbt_outputs(x, target)

    def _fbt_outputs(self, x: torch.Tensor, target: torch.Tensor) -> Outputs:
        split = self.fused.plan.split
        with torch.no_grad():
            t_outs = self.t.forward_stages(x)
            t_logits, t_feat = self.t.head_and_pooled(t_outs[-1])
        s_outs = self.s.forward_stages(x)
        s_logits, s_feat = self.s.head_and_pooled(s_outs[-1])
        # F reuses L's stage-`split` activation: no second pass through L's stem..stage`split`
        x_split = s_outs[split - 1] if self.fused.plan.local == "student" else t_outs[split - 1]
        f_logits, f_feat = self.fused.forward_from(x_split)
        return Outputs(student_logits=s_logits, student_feat=s_feat, teacher_logits=t_logits, teacher_feat=t_feat,
                       fused_logits=f_logits, fused_feat=f_feat, target=target)

    def eval_logits(self, x: torch.Tensor, with_teacher: bool) -> dict[str, torch.Tensor]:
        """Student, fused (fbt) and optionally teacher logits, running each model's stages once:
        F starts from L's stage-`split` activation, as in the training step."""
        if self.fused is None:
            out = {"student": self.student(x)}
            if with_teacher and self.teacher is not None:
                out["teacher"] = self.teacher(x)
            return out
        plan = self.fused.plan
        s_outs = self.s.forward_stages(x)
        t_outs = None
        if with_teacher or plan.local == "teacher":
            t_outs = self.t.forward_stages(x, upto=4 if with_teacher else plan.split)
        x_split = (s_outs if plan.local == "student" else t_outs)[plan.split - 1]
        out = {"student": self.s.head(s_outs[-1]), "fused": self.fused.forward_from(x_split)[0]}
        if with_teacher:
            out["teacher"] = self.t.head(t_outs[-1])
        return out

    def params(self) -> dict[str, int]:
        """Parameter counts for the `started` event."""
        if self.fused is not None:
            table = param_table(self.teacher, self.student, self.fused)
        else:
            table = {"student": sum(p.numel() for p in self.student.parameters())}
            if self.teacher is not None:
                table["teacher"] = sum(p.numel() for p in self.teacher.parameters())
        table["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return table


class TeacherModule(nn.Module):
    """Phase 1 when the teacher is trained in the same run: plain CE on the teacher."""

    method = "teacher"

    def __init__(self, teacher: nn.Module, label_smoothing: float) -> None:
        super().__init__()
        self.student = teacher  # the model this phase trains (named `student` so the loop is shared)
        self.teacher = None
        self.fused = None
        self.smoothing = label_smoothing

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from .losses import ce_loss
        loss = ce_loss(self.student(images), target, self.smoothing if target.ndim == 1 else 0.0)
        return loss, {"ce": loss.detach()}

    def params(self) -> dict[str, int]:
        n = sum(p.numel() for p in self.student.parameters())
        return {"teacher": n, "trainable": n}
