"""The book's figure style: one look for every chapter.

* Okabe & Ito's colour-blind-safe palette (:data:`PALETTE`), cycled in order;
* labelled axes with units, log scales for anything that grows geometrically
  (:func:`log_y`), light grids, no top/right spines;
* figures sized for the book's text column (:func:`figure`).

Use :func:`book_style` as a context manager, or call :func:`apply_style` once at
the top of a chapter. Functions return matplotlib objects; nothing is shown or
saved here.

Neighbours: what the figures show is mostly logged by :mod:`gradlab.monitor`
and :mod:`gradlab.lm`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import matplotlib as mpl
import matplotlib.pyplot as plt
from cycler import cycler

__all__ = ["PALETTE", "STYLE", "apply_style", "book_style", "figure", "log_x", "log_y", "annotate_threshold"]

#: Okabe & Ito (2008) palette, distinguishable under the common colour-vision deficiencies.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "font.family": "DejaVu Sans",
}


def apply_style() -> None:
    """Set the book's rcParams for the rest of the session (what a chapter does once)."""
    mpl.rcParams.update(STYLE)


@contextlib.contextmanager
def book_style() -> Iterator[None]:
    """The book's style inside a ``with`` block only."""
    with mpl.rc_context(STYLE):
        yield


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 6.4, height: float = 3.4,
           **kwargs):
    """``plt.subplots`` sized for the text column: ``width`` inches wide in all,
    ``height`` per row. Returns ``(fig, axes)`` with axes squeezed as usual."""
    return plt.subplots(nrows, ncols, figsize=(width, height * nrows), **kwargs)


def log_y(ax, label: str | None = None) -> None:
    """Log-scale the y axis (growth looks like a straight line) and label it.
    Minor ticks stay unlabelled, so that short ranges do not get crowded labels."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    if label is not None:
        ax.set_ylabel(label)


def log_x(ax, label: str | None = None) -> None:
    """Log-scale the x axis and label it (minor ticks unlabelled)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    if label is not None:
        ax.set_xlabel(label)


def annotate_threshold(ax, y: float, text: str, *, color: str = "0.35") -> None:
    """A dashed horizontal reference line with a label at its right end."""
    ax.axhline(y, color=color, linestyle="--", linewidth=1.0)
    ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=8, color=color)
