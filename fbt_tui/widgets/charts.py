"""Charts: loss terms vs step, accuracy per epoch, run overlays (on the textual-plot widget).

A `Chart` is a plot with its legend beside it, never over the data. Every series has its own
colour and its own marker glyph (`STYLES`, one table), so ten loss terms stay apart even for a
reader who cannot tell the colours apart; the legend is a checkbox list: space, enter or a click
hides or shows a series. A chart is redrawn by an explicit `draw(...)` call from a timer, never per
event, and long series are thinned to a few points per column first, so a long run costs the same
to draw as a short one. docs/tui.md says why textual-plot and not textual-plotext (with numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import SelectionList, Static
from textual.widgets.selection_list import Selection
from textual_plot import HiResMode, NumericAxisFormatter, PlotWidget

from ..run_state import ema

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)
# (colour, marker) per series, in order of first appearance: Okabe-Ito's colour-blind-safe
# palette and three more, each with a marker glyph of its own (the second way to tell them apart).
STYLES: tuple[tuple[str, str], ...] = (
    ("#56b4e9", "●"), ("#e69f00", "■"), ("#009e73", "▲"), ("#f0e442", "◆"), ("#cc79a7", "✚"),
    ("#d55e00", "✖"), ("#0072b2", "○"), ("#bbbbbb", "□"), ("#a6d854", "△"), ("#ff7f7f", "◇"),
)
EMA_ALPHA = 0.1
MARKER_EVERY = 12  # columns between two markers of one series
POINTS_PER_COLUMN = 2  # a series is thinned to this many points per plot column (braille: 2 dots)
LEGEND_WIDTH = 30  # at most; long run names are cut


def thin(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """Keep at most `max_points` evenly spaced points (always keeping the last one)."""
    n = len(xs)
    if n <= max_points or max_points < 2:
        return list(xs), list(ys)
    stride = n / (max_points - 1)
    idx = sorted({min(n - 1, int(i * stride)) for i in range(max_points - 1)} | {n - 1})
    return [xs[i] for i in idx], [ys[i] for i in idx]


def marker_points(xs: Sequence[float], ys: Sequence[float], count: int, slot: int, slots: int
                  ) -> tuple[list[float], list[float]]:
    """`count` points spread along a line for its markers, shifted by `slot`/`slots` of a gap so
    that lines lying on top of each other show their markers side by side instead of stacked."""
    n = len(xs)
    if n <= count:
        return list(xs), list(ys)
    gap = (n - 1) / max(1, count)
    idx = sorted({min(n - 1, int(gap * (k + (slot + 0.5) / max(1, slots)))) for k in range(count)})
    return [xs[i] for i in idx], [ys[i] for i in idx]


@dataclass(frozen=True)
class Line:
    """One series ready to draw: already smoothed, filtered and thinned."""

    label: str
    xs: list[float]
    ys: list[float]
    color: str
    marker: str
    slot: int  # its index among the lines drawn (staggers the markers)


class LogFormatter(NumericAxisFormatter):
    """Ticks for an axis that holds log10 of the data: labels show the data's own values."""

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [f"{10 ** t:.3g}" for t in ticks]


class IntegerFormatter(NumericAxisFormatter):
    """Whole-number ticks (epochs)."""

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        ticks = [t for t in super().get_ticks(min_, max_, max_ticks) if t == int(t)]
        if len(ticks) < 2:
            ticks = [float(t) for t in range(math.ceil(min_), math.floor(max_) + 1)]
        return ticks

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [str(int(t)) for t in ticks]


class PlotArea(PlotWidget, can_focus=False):
    """The drawing surface of a Chart (textual-plot): braille lines plus sparse marker glyphs.

    The mouse wheel zooms and a drag pans (the zoom survives redraws); `reset_zoom` undoes it.
    Not focusable, so the screen's keys stay the screen's.
    """

    DEFAULT_CSS = "PlotArea { width: 1fr; height: 1fr; }"

    def on_mount(self) -> None:
        self.margin_top = 1
        self.margin_left = 8

    def on_resize(self) -> None:
        # textual-plot resizes its canvases only on a layout refresh of its own: a neighbour
        # (the legend) changing width would otherwise leave them drawing at the old width.
        self.refresh(layout=True)

    def reset_zoom(self) -> None:
        self.action_reset_scales()

    @property
    def columns(self) -> int:
        return max(10, self.size.width - self.margin_left)

    def show(self, lines: list[Line], xlabel: str, log_y: bool) -> None:
        """Replace the plotted lines (one repaint follows)."""
        self.clear()
        self.set_xlabel(xlabel)
        self.set_x_formatter(IntegerFormatter() if xlabel == "epoch" else NumericAxisFormatter())
        self.set_y_formatter(LogFormatter() if log_y else NumericAxisFormatter())
        every = max(2, self.columns // MARKER_EVERY)
        drawn = [(ln, [math.log10(y) for y in ln.ys] if log_y else ln.ys) for ln in lines]
        self._pad([ln.xs for ln, _ in drawn], [ys for _, ys in drawn])
        for line, ys in drawn:
            self.plot(line.xs, ys, line_style=line.color, hires_mode=HiResMode.BRAILLE)
            mx, my = marker_points(line.xs, ys, every, line.slot, len(lines))
            self.scatter(mx, my, marker=line.marker, marker_style=f"bold {line.color}")

    def _pad(self, xss: list[list[float]], yss: list[list[float]]) -> None:
        """Two blank points just outside the data, so the autoscaled frame leaves a margin: the
        newest point and the extremes sit inside the axes instead of under them."""
        xs, ys = [x for xs in xss for x in xs], [y for ys in yss for y in ys]
        if not xs:
            return
        (x0, x1), (y0, y1) = (min(xs), max(xs)), (min(ys), max(ys))
        px, py = (x1 - x0) * 0.02 or 0.5, (y1 - y0) * 0.06 or 0.5
        self.scatter([x0, x1 + px], [y0 - py, y1 + py], marker=" ", marker_style="none")


# Drawing surfaces by name; benchmarks/chart_redraw.py adds textual-plotext's to compare the two.
AREAS: dict[str, Callable[..., Widget]] = {"textual-plot": PlotArea}


def legend_prompt(label: str, color: str, marker: str) -> Text:
    text = Text.assemble((f"─{marker}─", f"bold {color}"), " ")
    text.append(label if len(label) <= LEGEND_WIDTH - 10 else label[:LEGEND_WIDTH - 11] + "…")
    return text


class Chart(Vertical):
    """Labelled series with a legend beside the plot, optional EMA smoothing and log-scale y.

    `hidden` holds the labels switched off in the legend; it survives redraws and new series.
    """

    DEFAULT_CSS = """
    Chart { height: 1fr; }
    Chart > Horizontal { height: 1fr; }
    Chart .chart-side { width: auto; height: 1fr; }
    Chart .chart-title { text-style: bold; padding: 0 1; width: 1fr; }
    Chart SelectionList, Chart SelectionList:focus { width: 1fr; height: 1fr; border: none; padding: 0; }
    """
    area_kind = "textual-plot"  # the key into AREAS

    def __init__(self, title: str, xlabel: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title_text = title
        self.xlabel_text = xlabel
        self.smooth = False
        self.log_scale = False
        self.hidden: set[str] = set()
        self.styles_of: dict[str, int] = {}  # label -> index into STYLES, fixed at first sight
        self.series: list[Series] = []

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield AREAS[self.area_kind](id=f"{self.id or 'chart'}-plot")
            with Vertical(classes="chart-side"):
                yield Static(self.title_text, classes="chart-title")
                yield SelectionList[str](id=f"{self.id or 'chart'}-legend")

    @property
    def area(self) -> Widget:
        return self.query_one(f"#{self.id or 'chart'}-plot")

    @property
    def legend(self) -> SelectionList[str]:
        return self.query_one(SelectionList)

    def style_of(self, label: str) -> tuple[str, str]:
        """(colour, marker) of a series: the next free style the first time a label is seen."""
        if label not in self.styles_of:
            self.styles_of[label] = len(self.styles_of) % len(STYLES)
        return STYLES[self.styles_of[label]]

    def draw(self, series: list[Series]) -> None:
        """Replace the plotted data and schedule one repaint."""
        self.series = series
        self._update_legend([label for label, _, _ in series])
        suffix = ", ".join(word for word, on in (("EMA", self.smooth), ("log", self.log_scale)) if on)
        self.query_one(".chart-title", Static).update(self.title_text + (f" ({suffix})" if suffix else ""),
                                                      layout=False)
        self.area.show(self.lines(series), self.xlabel_text, self.log_scale)  # type: ignore[attr-defined]

    def lines(self, series: list[Series]) -> list[Line]:
        """The visible series, smoothed/filtered/thinned, each with its fixed style."""
        max_points = max(20, POINTS_PER_COLUMN * getattr(self.area, "columns", self.size.width or 80))
        out: list[Line] = []
        for label, xs, ys in series:
            color, marker = self.style_of(label)
            if label in self.hidden:
                continue
            txs, tys = self._prepare(xs, ys, max_points)
            if txs:
                out.append(Line(label, txs, tys, color, marker, len(out)))
        return out

    def _prepare(self, xs: Sequence[float], ys: Sequence[float], max_points: int
                 ) -> tuple[list[float], list[float]]:
        if self.smooth:
            ys = ema(list(ys), EMA_ALPHA)
        if self.log_scale:
            # Log axes cannot show zero or negative values: drop them rather than crash.
            pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        return thin(xs, ys, max_points)

    def _update_legend(self, labels: list[str]) -> None:
        legend = self.legend
        shown = [legend.get_option_at_index(i).value for i in range(legend.option_count)]
        if shown == labels:
            return
        with legend.prevent(SelectionList.SelectedChanged):
            legend.clear_options()
            legend.add_options([Selection(legend_prompt(label, *self.style_of(label)), label,
                                          label not in self.hidden) for label in labels])
        # As wide as its longest line (checkbox 3, "─●─ " 4, the label), within LEGEND_WIDTH.
        widest = max([len(self.title_text) + 2, *(len(label) + 9 for label in labels)])
        self.query_one(".chart-side").styles.width = min(LEGEND_WIDTH, widest)

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        event.stop()
        labels = {label for label, _, _ in self.series}
        self.hidden = (self.hidden - labels) | (labels - set(event.selection_list.selected))
        self.draw(self.series)

    def toggle(self, label: str) -> None:
        """Hide a shown series or show a hidden one (what a click in the legend does)."""
        self.legend.toggle(label)

    def show_all(self) -> None:
        self.legend.select_all()

    def reset_zoom(self) -> None:
        reset = getattr(self.area, "reset_zoom", None)
        if reset is not None:
            reset()


class AccChart(Chart):
    """Accuracy per epoch."""

    def __init__(self, title: str = "top-1 accuracy (%)", *, id: str | None = None) -> None:
        super().__init__(title, "epoch", id=id)
