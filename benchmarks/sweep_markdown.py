"""A sweep folder's table as Markdown (for docs/benchmarks.md), read live from its run folders.

    python benchmarks/sweep_markdown.py runs/fmnist-r18-vit-compare

Columns: the grid point, seeds completed, student top-1 mean ± std (best epoch of each run), the gain
over the scratch cells at the same point, fused top-1, teacher top-1, run time (mean).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fbt_engine.sweep import Sweep, aggregate  # noqa: E402


def _ms(row: dict, name: str, fmt: str = "{:.2f}") -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean is None:
        return "-"
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))


def markdown(folder: str) -> str:
    sweep = Sweep.read(folder)
    _, groups = aggregate(sweep)
    keys = sweep.columns
    head = [*keys, "seeds", "student top-1 %", "vs scratch", "fused top-1 %", "teacher top-1 %", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        gain = g.get("student_vs_scratch")
        cells = [*(f"`{g[k]}`" if k == "variant" else str(g[k]) for k in keys), f"{g['completed']}/{g['seeds']}",
                 _ms(g, "student_top1"), "" if gain is None else f"{gain:+.2f}", _ms(g, "fused_top1"),
                 "-" if g["teacher_top1"] is None else f"{g['teacher_top1']:.2f}", _ms(g, "time_s", "{:.0f} s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(markdown(sys.argv[1]))
