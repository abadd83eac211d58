"""textual-plotext as a Chart drawing surface, for benchmarks/chart_redraw.py only.

The TUI draws with textual-plot (docs/tui.md says why); this adapter puts textual-plotext behind
the same `show(lines, xlabel, log_y)` so the comparison runs the very same run screen, legend,
smoothing and thinning, and differs only in the library that draws. Needs
`pip install "textual-plotext==1.0.1" "plotext>=5.2.8,<6"` (the extra `chart-bench`).
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from fbt_tui.widgets.charts import MARKER_EVERY, Line, marker_points


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class PlotextArea(PlotextPlot, can_focus=False):
    DEFAULT_CSS = "PlotextArea { width: 1fr; height: 1fr; }"

    @property
    def columns(self) -> int:
        return max(10, self.size.width - 8)

    def show(self, lines: list[Line], xlabel: str, log_y: bool) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel(xlabel)
        every = max(2, self.columns // MARKER_EVERY)
        for line in lines:
            color = rgb(line.color)
            plt.plot(line.xs, line.ys, marker="braille", color=color)
            mx, my = marker_points(line.xs, line.ys, every, line.slot, len(lines))
            plt.scatter(mx, my, marker=line.marker, color=color)
        if log_y and lines:
            plt.yscale("log")
        self.refresh()
