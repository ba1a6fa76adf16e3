"""One look for every fedhar figure, and the PNG + SVG + sidecar JSON they are saved as.

Figures are plain ``matplotlib.figure.Figure`` objects drawn by the Agg canvas: no pyplot,
so no global figure state, no GUI backend, nothing to close.
"""

from __future__ import annotations

import functools
import json
import re
import textwrap
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter

from fedhar import __version__
from fedhar.errors import FedharError
from simulations.plots.tables import Trace

# Okabe & Ito (2008), distinguishable with every common colour-vision deficiency; yellow
# (weak on white) last. Markers repeat the distinction without colour.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
# beyond eight series: Paul Tol's muted scheme, so no two series share a colour (up to 16)
TOL_MUTED = ("#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE", "#661100")
PALETTE = OKABE_ITO + TOL_MUTED
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8", "1")
MODE_COLOURS = {"lora": "#0072B2", "qlora": "#D55E00", "full": "#000000"}
GREY = "#8C8C8C"
DPI = 150

STYLE = {
    "font.size": 10, "axes.titlesize": 9.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 8.5, "legend.framealpha": 0.9, "figure.titlesize": 11.5, "figure.titleweight": "bold",
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "axes.prop_cycle": mpl.cycler(color=OKABE_ITO), "lines.linewidth": 1.8,
    "lines.markersize": 5, "svg.hashsalt": "fedhar", "svg.fonttype": "path", "savefig.facecolor": "white",
}


def styled(func):
    """Run a figure function under fedhar's rcParams (without touching the caller's)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def colours(keys) -> dict:
    """key -> colour, in the order the keys are given; distinct for up to 16 keys."""
    keys = list(dict.fromkeys(keys))
    if len(keys) > len(PALETTE):
        raise FedharError(f"{len(keys)} series are more than a figure can tell apart ({len(PALETTE)}); "
                          "narrow the input with --where")
    return {k: PALETTE[i] for i, k in enumerate(keys)}


def markers(keys) -> dict:
    """key -> marker, distinct for up to 16 keys (colour and marker both tell series apart)."""
    return {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(dict.fromkeys(keys))}


MIN_SCORE_SPAN = 0.10  # accuracy axes show at least 10 percentage points


def honest_score_axis(ax, values) -> None:
    """An accuracy axis in [0, 1] spanning at least MIN_SCORE_SPAN around the data, so a gap of a
    fraction of a point between unrepeated runs does not fill the panel."""
    values = [float(v) for v in values if v == v]
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max(0.02, (hi - lo) * 0.1)
    lo, hi = lo - pad, hi + pad
    if hi - lo < MIN_SCORE_SPAN:
        middle = (hi + lo) / 2
        lo, hi = middle - MIN_SCORE_SPAN / 2, middle + MIN_SCORE_SPAN / 2
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > 1:
        lo, hi = max(0.0, lo - (hi - 1)), 1.0
    ax.set_ylim(lo, hi)


def new_figure(panels: int = 1, width: float = 6.4, height: float = 4.4):
    fig = Figure(figsize=(width * panels if panels > 1 else width, height), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def title(fig: Figure, message: str) -> None:
    """A short title (what, on which data, n); what the figure says goes in its sidecar and caption."""
    width = int(80 * fig.get_figwidth() / 6.4)
    fig.suptitle(textwrap.fill(message, width))


def caption(ax, text: str, width: int = 80) -> None:
    """The small print above a panel: what is plotted, what it averages over."""
    ax.set_title(wrap(text, width), loc="left", color="#333333")


def wrap(text: str, width: int) -> str:
    """textwrap.fill that never breaks inside $mathtext$ (counted at a third of its source length)."""
    pieces = text.split("$")
    maths = pieces[1::2]
    for i in range(len(maths)):  # stand-ins: a run of one private-use character per formula
        pieces[2 * i + 1] = chr(0xE000 + i) * max(1, len(maths[i]) // 3)
    out = textwrap.fill("".join(pieces), width, break_long_words=False, break_on_hyphens=False)
    for i, math in enumerate(maths):
        out = re.sub(chr(0xE000 + i) + "+", lambda _, m=math: f"${m}$", out, count=1)
    return out


class Percent(Formatter):
    """0.725 -> '72.5%', with as few decimals as tell the ticks apart exactly."""

    def __call__(self, x, pos=None):
        locs = [v * 100 for v in (self.axis.get_majorticklocs() if self.axis is not None else [x])]
        digits = next((d for d in range(4) if all(abs(round(v, d) - v) < 1e-6 for v in locs)), 4)
        return f"{x * 100:.{digits}f}%"


def percent_axis(axis) -> None:
    axis.set_major_formatter(Percent())


def label_points(ax, xs, ys, labels, fontsize: float = 7.5) -> None:
    """Annotate points, moving a label down while it would overlap one already placed."""
    ax.get_xlim(), ax.get_ylim()  # let autoscaling settle before reading positions
    to_points = 72 / ax.figure.dpi
    step, placed = fontsize * 1.25, []  # placed: (left, bottom, width) in points
    for x, y, text in sorted(zip(xs, ys, labels), key=lambda p: (-p[1], p[0])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        left, width, dy = px + 5, 0.6 * fontsize * len(str(text)), 4.0
        while any(left < x0 + w and x0 < left + width and abs(py + dy - b) < step for x0, b, w in placed):
            dy -= step
        placed.append((left, py + dy, width))
        ax.annotate(text, (x, y), xytext=(5, dy), textcoords="offset points", fontsize=fontsize, color="#333333")


def save(fig: Figure, out_dir: str | Path, name: str, trace: Trace, *, kind: str, message: str,
         svg: bool = False) -> Figure:
    """Write NAME.png (dpi 150), NAME.svg if asked, and NAME.json naming the inputs and their sha256.

    The paths written, the inputs and the notes are also left on ``fig.fedhar``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedharError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.png"]
    fig.savefig(files[0], dpi=DPI, bbox_inches="tight", metadata={"Software": f"fedhar {__version__}"})
    if svg:
        files.append(out / f"{name}.svg")
        fig.savefig(files[-1], bbox_inches="tight", metadata={"Date": None, "Creator": f"fedhar {__version__}"})
    sidecar = {
        "figure": name, "kind": kind, "message": message, "files": [f.name for f in files],
        "inputs": list(trace.inputs.values()), "notes": list(trace.notes), "fedhar_version": __version__,
    }
    (out / f"{name}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    fig.fedhar = {**sidecar, "paths": [*files, out / f"{name}.json"]}
    return fig
