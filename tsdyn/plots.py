"""Small figures for the dashboards (matplotlib, no pyplot: no GUI backend, no global state).

Every function takes plain numpy arrays (one student) and returns a ``Figure``;
:func:`to_image` renders it to the ``[H, W, 4]`` uint8 array that ``tsdyn.runfolder.writer.Recorder.log_media`` takes.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PANEL = 2.6  # inches per panel
DPI = 72


def grid(n: int, max_cols: int = 4, panel: float = PANEL, fast: bool = False) -> tuple[Figure, list]:
    """A figure with ``n`` panels of ``panel`` inches in rows of at most ``max_cols``; the unused
    panels are hidden. ``fast``: a fixed layout, drawn ~3x faster than matplotlib's "constrained"
    one (the dashboards' figures, drawn during training)."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel * cols, panel * rows), dpi=DPI, layout=None if fast else "constrained")
    if fast:
        width, height = panel * cols, panel * rows  # margins in inches: room for labels and titles
        fig.subplots_adjust(left=0.85 / width, right=1 - 0.9 / width, bottom=0.5 / height,
                            top=1 - 0.5 / height, wspace=0.65, hspace=0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def to_image(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an RGBA ``[H, W, 4]`` uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def matched_heatmap(c: np.ndarray) -> np.ndarray:
    """Teacher nodes x their best students: ``c`` ``[K_t, K_s]`` -> ``[K_t, K_t]`` with column j' the
    best student of teacher node j' (dead teacher nodes: NaN column), so matches sit on the diagonal."""
    live = ~np.isnan(c).all(1)
    best = np.where(live, np.nanargmax(np.where(np.isnan(c), -np.inf, c), axis=1), 0)
    return np.where(live[None, :], c[:, best], np.nan)


def corr_heatmaps(corrs: Sequence[np.ndarray], title: str) -> Figure:
    """One heatmap per layer of :func:`matched_heatmap` (correlation -1..1)."""
    fig, axes = grid(len(corrs), fast=True)
    for layer, (ax, c) in enumerate(zip(axes, corrs)):
        im = ax.imshow(matched_heatmap(c), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set(title=f"layer {layer}", xlabel="its best student", ylabel="teacher node")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # node indices
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes, shrink=0.8, pad=0.02)
    fig.suptitle(title)
    return fig


def lshape(best_corrs: Sequence[np.ndarray], fanouts: Sequence[np.ndarray], title: str) -> Figure:
    """Per layer, each student node's best correlation (x) against log10 of its fan-out norm (y)."""
    fig, axes = grid(len(fanouts), fast=True)
    for layer, (ax, corr, fan) in enumerate(zip(axes, best_corrs, fanouts)):
        ax.scatter(corr, np.log10(np.maximum(fan, 1e-12)), s=6, alpha=0.6)
        ax.set(title=f"layer {layer}", xlabel="best correlation", ylabel="log10 fan-out norm", xlim=(-1, 1))
    fig.suptitle(title)
    return fig


def bias_histograms(biases: Sequence[np.ndarray], names: Sequence[str], title: str) -> Figure:
    """One histogram per BatchNorm layer, titled with its share of biases <= 0."""
    fig, axes = grid(len(biases), max_cols=5)
    for ax, bias, name in zip(axes, biases, names):
        ax.hist(bias, bins=40, color="tab:blue")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_title(f"{name}: {100 * np.mean(bias <= 0):.1f}% <= 0", fontsize=8)
    fig.suptitle(title)
    return fig
