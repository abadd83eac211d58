"""Build any registered method on a small real pair, as a run builds it, for the method tests."""

from __future__ import annotations

from typing import Any

import torch

from fbt_engine import config as C
from fbt_engine.methods._base import Method, Setup, build
from fbt_engine.task import create_student, create_teacher

NUM_CLASSES, IMG, N = 5, 32, 6
# A CNN teacher and a ViT student (the quickstart's kinds), and the reverse, both small.
RESNET = {"model": "resnet18"}
VIT = {"model": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "depth": 4}}
PAIRS = {"cnn->vit": (RESNET, VIT), "vit->cnn": (VIT, RESNET)}
TRAIN_LABELS = torch.arange(40) % NUM_CLASSES  # CRD's dataset labels: 40 samples


def config(method: str, pair: str = "cnn->vit", loss: dict[str, Any] | None = None,
           fusion: dict[str, Any] | None = None, smoothing: float = 0.0) -> C.RunConfig:
    teacher, student = PAIRS[pair]
    return C.from_dict({"method": method, "teacher": dict(teacher), "student": dict(student),
                        "data": {"img_size": IMG}, "aug": {"label_smoothing": smoothing},
                        "loss": loss or {}, "fusion": fusion or {}})


def make(method: str, pair: str = "cnn->vit", seed: int = 0, **kw: Any) -> Method:
    """The method with seeded random weights; the teacher's head is scaled up so its logits are not flat."""
    cfg = config(method, pair, **kw)
    torch.manual_seed(seed)
    teacher = create_teacher(cfg, NUM_CLASSES)
    student = create_student(cfg, NUM_CLASSES)
    return build(Setup(cfg, student, teacher, NUM_CLASSES, TRAIN_LABELS)).train()


def batch(seed: int = 1, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, IMG, IMG, generator=g)
    y = torch.randint(0, NUM_CLASSES, (N,), generator=g)
    if soft:  # a mixup-like target
        y = 0.7 * torch.nn.functional.one_hot(y, NUM_CLASSES).float() + 0.3 / NUM_CLASSES
    return x, y, torch.randint(0, len(TRAIN_LABELS), (N,), generator=g)


def student_logits(m: Method, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.student(x)


def teacher_logits(m: Method, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.teacher(x)


def prelogits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in terms.items()}
