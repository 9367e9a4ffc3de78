r"""One look for every figure: colour by init (the colours TensorBoard gives the README's
``init=(\w+)`` colour grouping, see ``INIT_COLOURS``; other inits after), line style by optimizer
(sgd solid, momentum dashed, adam dotted), a hollow marker per init at staggered places (so a line
lying exactly on another, zero's loss under normal's, still shows), or a marker and a lighter shade
for any other varying choice; the legend in its own panel; exact zeros on a log axis drawn at a
labelled "exactly 0" below the smallest positive decade (symlog); step axes logarithmic with
step 0 (initialization) at their left end. Every figure is saved as PNG and SVG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from initopt.report.collect import Group

# TensorBoard's default palette (Slate, Cyan, Pink, Yellow, Purple, Light Green, Orange) in the order
# its regex colour grouping hands it out: one colour per group in the order the groups' runs first
# reached TensorBoard, i.e. the sweep's job order; for the README's grid (``init=zero,normal,xavier,he``)
# that is zero, normal, xavier, he (seen in TensorBoard 2.21, docs/img/tb_timeseries.png).
# The report uses the same mapping; the README states it.
TENSORBOARD_PALETTE = ("#425066", "#12b5cb", "#e52592", "#f9ab00", "#9334e6", "#7cb342", "#e8710a")
INIT_COLOURS = {"zero": "#425066", "normal": "#12b5cb", "xavier": "#e52592", "he": "#f9ab00"}
COLOUR_NOTE = "colours as TensorBoard's init=(\\w+) grouping"
EXTRA_COLOURS = TENSORBOARD_PALETTE[4:] + ("#8c564b", "#17becf", "#bcbd22")
INIT_MARKERS = {"zero": "o", "normal": "s", "xavier": "^", "he": "v"}
EXTRA_MARKERS = ("D", "P", "X", "*")
OPTIM_STYLES = {"sgd": "-", "momentum": "--", "adam": ":"}
EXTRA_STYLES = ("-.", (0, (5, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))
REST_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
NOTE_LINES = 3  # a legend's note below it: the seeds, the band, how curves are binned
REST_GREY = "#3c3c3c"  # the legend's stand-in for an init's colour, lightened as each line of that choice is
ZERO_COLOUR = "#22c4c4"  # exact zeros in the heat maps: outside the magma colour map
ZERO_LABEL = "exactly 0"
DPI = 150
FORMATS = ("png", "svg")  # every figure: a raster to glance at, a vector to zoom into
MARK_DECADES = 0.25  # dense curves: a hollow marker every quarter decade of steps, each init's shifted


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


@dataclass(frozen=True)
class LineStyle:
    colour: str
    dash: object
    marker: str | None  # set only when a choice besides init and optim varies


def _lighter(colour: str, amount: float) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex([c + (1 - c) * amount for c in to_rgb(colour)])


class Styles:
    """The style of each group of a report, fixed once for all its figures. Choices in
    ``ignore`` (e.g. the learning rate on the lr-sensitivity x axis) do not change a style."""

    def __init__(self, groups: list[Group], ignore: tuple[str, ...] = ()):
        self.ignore = ignore
        self.inits = list(dict.fromkeys(g.init for g in groups))
        self.optims = list(dict.fromkeys(g.optim for g in groups))
        self.rests = list(dict.fromkeys(self._rest(g) for g in groups))
        extra_inits = [i for i in self.inits if i not in INIT_COLOURS]
        extra_optims = [o for o in self.optims if o not in OPTIM_STYLES]
        self.colours = {**INIT_COLOURS, **{i: EXTRA_COLOURS[k % len(EXTRA_COLOURS)] for k, i in enumerate(extra_inits)}}
        self.markers = {**INIT_MARKERS, **{i: EXTRA_MARKERS[k % len(EXTRA_MARKERS)] for k, i in enumerate(extra_inits)}}
        self.dashes = {**OPTIM_STYLES, **{o: EXTRA_STYLES[k % len(EXTRA_STYLES)] for k, o in enumerate(extra_optims)}}

    def _rest(self, group: Group) -> tuple:
        return tuple((k, v) for k, v in group.rest if k not in self.ignore)

    def label(self, group: Group) -> str:
        """The group's label less the ignored choices."""
        return ",".join(f"{k}={v}" for k, v in group.choice.items() if k not in self.ignore) or "all runs"

    def of(self, group: Group) -> LineStyle:
        colour = self.colours[group.init]
        if len(self.rests) < 2:
            return LineStyle(colour, self.dashes[group.optim], None)
        shade, marker = self._rest_look(colour, self.rests.index(self._rest(group)))
        return LineStyle(shade, self.dashes[group.optim], marker)

    def _rest_look(self, colour: str, k: int) -> tuple[str, str]:
        """The shade of ``colour`` and the marker of the k-th combination of the other choices."""
        return _lighter(colour, 0.55 * k / (len(self.rests) - 1)), REST_MARKERS[k % len(REST_MARKERS)]

    def kwargs(self, group: Group, sparse: bool = False) -> dict:
        """``ax.plot`` keywords. The marker says the init (or, when another choice varies, that
        choice); dense curves get hollow markers at staggered places (init k starts k/len(inits) of
        the way into the marker interval) so lines that coincide all stay visible; sparse curves
        (few points) a marker at every point."""
        style = self.of(group)
        marker = style.marker or self.markers[group.init]
        return {"color": style.colour, "linestyle": style.dash, "marker": marker, "markerfacecolor": "none",
                "markersize": 5 if sparse else 6, "markevery": None if sparse else 0.1, "linewidth": 1.5}

    def mark_indices(self, group: Group, steps: np.ndarray) -> list[int]:
        """Indices of a dense curve's markers: one every ``MARK_DECADES`` of log10(step), init k's
        shifted by k / (number of inits) of that interval, so coinciding lines show each marker."""
        positive = np.flatnonzero(steps > 0)
        if not len(positive):
            return []
        logs = np.log10(steps[positive])
        k = self.inits.index(group.init) if group.init in self.inits else 0
        start = logs[0] + MARK_DECADES * (k + 0.5) / max(1, len(self.inits))
        targets = np.arange(start, logs[-1], MARK_DECADES)
        return sorted({int(positive[min(np.searchsorted(logs, t), len(logs) - 1)]) for t in targets})

    def legend_entries(self) -> tuple[list, str]:
        """The legend's handles and title: colour = init, line style = optimizer, and, when another
        choice varies too, one entry per combination of the others (its marker and grey shade):
        one entry per choice, not per line (the study's 60 lines are 4 + 3 + 5 entries)."""
        from matplotlib.lines import Line2D

        by_rest = len(self.rests) >= 2
        init_marker = (lambda i: {}) if by_rest else \
            (lambda i: {"marker": self.markers[i], "markerfacecolor": "none", "markersize": 7})
        handles = [Line2D([], [], color=self.colours[i], lw=3, label=i, **init_marker(i)) for i in self.inits]
        handles += [Line2D([], [], color="black", linestyle=self.dashes[o], lw=1.6, label=o) for o in self.optims]
        if not by_rest:
            return handles, f"colour and marker: init ({COLOUR_NOTE})\nline style: optimizer"
        for k, rest in enumerate(self.rests):
            shade, marker = self._rest_look(REST_GREY, k)
            handles.append(Line2D([], [], color=shade, lw=1.5, marker=marker, markerfacecolor="none", markersize=7,
                                  label=",".join(f"{key}={value}" for key, value in rest)))
        return handles, "colour: init · line style: optimizer\nmarker and lighter shade: " + ", ".join(
            k for k, _ in self.rests[0])

    def legend_lines(self) -> int:
        """How many text lines :meth:`legend` draws in one column: its entries, its title and a note
        of up to :data:`NOTE_LINES`."""
        handles, title = self.legend_entries()
        return len(handles) + title.count("\n") + 1 + NOTE_LINES

    def legend(self, ax, note: str) -> None:
        """The legend (:meth:`legend_entries`) in its own (otherwise empty) axes; ``note`` below it."""
        ax.axis("off")
        handles, title = self.legend_entries()
        ax.legend(handles=handles, title=title, loc="upper left", fontsize=8, title_fontsize=8,
                  ncol=2 if len(handles) > 14 else 1, frameon=False)
        ax.text(0.0, 0.0, note, transform=ax.transAxes, fontsize=8, va="bottom", wrap=True)


def log_axis(ax, values: np.ndarray, axis: str = "y") -> None:
    """Log scale for positive ``values``; with exact zeros among them, symlog whose linear part
    holds only 0, labelled "exactly 0", one decade below the smallest positive value."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    if not (values == 0).any():
        if len(positive):
            setter("log")
        return
    low = 10.0 ** (math.floor(math.log10(positive.min())) - 1) if len(positive) else 1.0
    high = 10.0 ** math.ceil(math.log10(positive.max())) if len(positive) else 10.0
    setter("symlog", linthresh=low, linscale=0.4)
    decades = [10.0 ** e for e in range(round(math.log10(low)) + 1, round(math.log10(high)) + 1)]
    step = max(1, math.ceil(len(decades) / 6))
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(FixedLocator([0.0] + decades[::-1][::step][::-1]))
    target.set_minor_locator(FixedLocator([]))
    target.set_major_formatter(FuncFormatter(lambda v, _: ZERO_LABEL if v == 0 else f"$10^{{{math.log10(v):.0f}}}$"))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(-0.1 * low, high)


def save(fig, path: Path) -> Path:
    """Save as PNG (dpi ``DPI``) and, beside it, SVG (``path`` with each suffix of ``FORMATS``); close."""
    for suffix in FORMATS:
        fig.savefig(Path(path).with_suffix(f".{suffix}"), dpi=DPI)
        # the layout found for the first format holds for the next: constrained layout is half
        # of a save's time, and would be solved again for each format
        fig.set_layout_engine("none")
    plt().close(fig)
    return path


def step_axis(ax, label: str = "iteration") -> None:
    """A log step axis that also shows step 0 (initialization): symlog, linear on [0, 1]."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"{label} (log scale; 0 = initialization)")


BAND_LABEL = "band: lowest to highest seed (min-max)"


def seeds_note(groups: list[Group]) -> str:
    """``line: mean over n = 3 seeds``, ``band: lowest to highest seed`` (or n = 1: no band).

    Bands span min to max over the seeds, not mean ± sd: on a log axis mean - sd falls below 0
    wherever one seed spikes (He, steps 20-60) and would be drawn down to the axis floor, while
    the min-max band stays positive wherever every seed is."""
    ns = sorted({len(g.runs) for g in groups})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}"
    if ns[-1] < 2:
        return f"{n_text} seed per line: no band"
    return f"line: mean over {n_text} seeds\n{BAND_LABEL}" + ("\nn = 1: no band" if ns[0] < 2 else "")
