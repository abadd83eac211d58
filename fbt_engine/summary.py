"""Fused-architecture summaries for `fbt-engine fuse` and the TUI's pair preview."""

from __future__ import annotations

from typing import Any

import torch

from .adapters import get_adapter
from .fusion import FusedModel, build_fused, param_table, plan_fusion
from .models import create_model


def model_info(name: str, model: torch.nn.Module, img_size: int) -> dict[str, Any]:
    adapter = get_adapter(model, name)
    return {"name": name, "kind": adapter.kind, "family": adapter.family,
            "params": sum(p.numel() for p in model.parameters()),
            "stages": [s.to_dict() for s in adapter.describe(img_size)]}


def torchinfo_stats(fused: FusedModel, img_size: int) -> Any:
    """torchinfo's statistics of F from one image. They cover every depth: `format_summary` prints
    them at any depth without another forward pass (`fbt-engine serve` keeps them for depth changes)."""
    from torchinfo import summary
    return summary(fused, input_size=(1, 3, img_size, img_size), depth=1, verbose=0,
                   col_names=("output_size", "num_params", "trainable"), row_settings=("var_names",),
                   device="cpu", mode="eval")


def format_summary(stats: Any, depth: int) -> str:
    """The torchinfo table at `depth` (the same text a summary run at that depth prints)."""
    stats.formatting.max_depth = depth
    return str(stats)


def torchinfo_summary(fused: FusedModel, img_size: int, depth: int) -> tuple[str, int]:
    """The torchinfo table of F (from images) and its mult-adds."""
    stats = torchinfo_stats(fused, img_size)
    return format_summary(stats, depth), int(stats.total_mult_adds)


def fuse_report(teacher: str, student: str, img_size: int = 224, num_classes: int = 1000, order: str = "auto",
                split: int = 3, mixer: str = "auto", depth: int = 2,
                teacher_kwargs: dict[str, Any] | None = None, student_kwargs: dict[str, Any] | None = None,
                ) -> dict[str, Any]:
    """Build T, S and F for a pair and describe them as plain data (the `fuse --json` object)."""
    t = create_model(teacher, img_size=img_size, num_classes=num_classes, **(teacher_kwargs or {}))
    s = create_model(student, img_size=img_size, num_classes=num_classes, **(student_kwargs or {}))
    plan = plan_fusion(t, s, img_size, order=order, split=split, mixer=mixer,
                       teacher_name=teacher, student_name=student)
    fused = build_fused(t, s, plan)
    text, mult_adds = torchinfo_summary(fused, img_size, depth)
    return {"teacher": model_info(teacher, t, img_size), "student": model_info(student, s, img_size),
            "plan": plan.to_dict(), "params": param_table(t, s, fused), "mult_adds": mult_adds,
            "img_size": img_size, "num_classes": num_classes, "depth": depth, "summary": text}
