"""Charts on top of textual-plotext: loss terms vs step, accuracy per epoch, run overlays.

Each chart is redrawn by an explicit `draw(...)` call (from a timer), never per event. Long series
are thinned to a few points per column so a long run costs the same to draw as a short one.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from ..run_state import ema

Series = tuple[str, list[float], list[float]]  # (label, xs, ys)
COLORS = ("cyan", "magenta", "green", "orange", "blue", "red", "yellow", "white")
EMA_ALPHA = 0.1


def thin(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """Keep at most `max_points` evenly spaced points (always keeping the last one)."""
    n = len(xs)
    if n <= max_points or max_points < 2:
        return xs, ys
    stride = n / (max_points - 1)
    idx = sorted({min(n - 1, int(i * stride)) for i in range(max_points - 1)} | {n - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


class Chart(PlotextPlot):
    """A line chart of labelled series with optional EMA smoothing and log-scale y axis."""

    def __init__(self, title: str, xlabel: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title_text = title
        self.xlabel_text = xlabel
        self.smooth = False
        self.log_scale = False
        self.markers = "braille"

    def draw(self, series: list[Series]) -> None:
        """Replace the plotted data and schedule one repaint."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        suffix = "".join([" (EMA)" if self.smooth else "", " (log)" if self.log_scale else ""])
        plt.title(self.title_text + suffix)
        plt.xlabel(self.xlabel_text)
        max_points = max(20, 2 * (self.size.width or 80))
        drawn = 0
        for i, (label, xs, ys) in enumerate(series):
            xs, ys = self._prepare(xs, ys, max_points)
            if not xs:
                continue
            plt.plot(xs, ys, label=label, marker=self.markers, color=COLORS[i % len(COLORS)])
            drawn += 1
        if self.log_scale and drawn:
            plt.yscale("log")
        self.refresh()

    def _prepare(self, xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
        if self.smooth:
            ys = ema(ys, EMA_ALPHA)
        if self.log_scale:
            # Log axes cannot show zero or negative values: drop them rather than crash.
            pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        return thin(list(xs), list(ys), max_points)


class AccChart(Chart):
    """Accuracy per epoch: markers matter more than lines with few points."""

    def __init__(self, title: str = "top-1 accuracy (%)", *, id: str | None = None) -> None:
        super().__init__(title, "epoch", id=id)
        self.markers = "hd"
