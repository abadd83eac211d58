"""Creating the pair's models from a config, and the plain classification task of the teacher phase.

The distillation methods live in `methods/` (one module per method); `ClassifierTask` follows the
same contract, so the one training loop runs both phases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import RunConfig
from .losses import ce_loss
from .models import create_model


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
    """The teacher with random (to be trained), hub or no weights: loading happens in the runner.
    Hub weights (pretrained = true) unless teacher.checkpoint is an existing file: a checkpoint path
    that does not exist yet is where the teacher fine-tuned from them will be saved."""
    t = cfg.teacher
    have_file = bool(t.checkpoint) and Path(t.checkpoint).is_file()
    return create_model(t.model, img_size=cfg.data.img_size, num_classes=num_classes,
                        pretrained=t.pretrained and not have_file, **_kwargs(t))


class ClassifierTask(nn.Module):
    """Plain supervised classification of one model: how a teacher is trained (or fine-tuned) in a run.

    The same contract as a method (`methods/_base.py`), so one training loop runs both phases:
    `forward(x, y[, index]) -> (loss, terms)`, `weights()`, `eval_logits`, `params()`, `model`.
    """

    needs_index = False

    def __init__(self, model: nn.Module, label_smoothing: float, role: str = "teacher",
                 head_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.smoothing = label_smoothing
        self.role = role  # what the trained model is, for the parameter table
        self.head_only = head_only  # fine-tune the classifier alone: the backbone is frozen, in eval mode
        if head_only:
            head = model.get_classifier()
            keep = {id(p) for p in head.parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) in keep)

    def train(self, mode: bool = True) -> "ClassifierTask":
        super().train(mode)
        if self.head_only:  # BatchNorm statistics of the pretrained backbone stay as they were
            self.model.eval()
            self.model.get_classifier().train(mode)
        return self

    def weights(self) -> dict[str, float]:
        return {"ce": 1.0}

    def term_names(self) -> list[str]:
        return ["ce"]

    def forward(self, images: torch.Tensor, target: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ce_loss(self.model(images), target, self.smoothing if target.ndim == 1 else 0.0)
        return loss, {"ce": loss.detach()}

    def eval_logits(self, x: torch.Tensor, with_teacher: bool) -> dict[str, torch.Tensor]:
        return {"model": self.model(x)}

    def params(self) -> dict[str, int]:
        n = sum(p.numel() for p in self.model.parameters())
        return {self.role: n, "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}
