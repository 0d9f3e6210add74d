"""The report's figures, drawn for a paper: groups labelled by value (``width_mult 5``), one y-range
across the layer panels of a figure, integer epoch ticks, the Okabe-Ito colour-blind-safe palette,
PNG at 200 dpi and vector PDF, short titles; what each figure shows and how is said in its caption
(``FIGURES``, written into ``report.md``). Each ``fig_<name>(groups, spread)`` returns (Figure,
None), or (None, the reason it was skipped) when the runs lack its data."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tsdyn import keys
from tsdyn.metrics.matching import recovery_rate
from tsdyn.plots import grid
from tsdyn.report.aggregate import Group, band, final_band, last_arrays, layers_of, series_band
from tsdyn.runfolder.reader import RunFolder

TOP_K = 20          # sorted-correlation curves: the best TOP_K students per teacher node
MAX_PANELS = 24     # per-run figures (fan-out vs node index) show at most this many panels
DPI = 200
PANEL = 3.2         # inches per panel
MIN_WIDTH = 8.0     # inches
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "axes.formatter.useoffset": False}


def layer_title(layer: int) -> str:
    return f"layer {layer} (lowest)" if layer == 0 else f"layer {layer}"


def panels(n: int, max_cols: int = 4):
    """``n`` panels, the figure at least ``MIN_WIDTH`` inches wide (room for the title and legend)."""
    fig, axes = grid(n, max_cols, panel=PANEL)
    fig.set_figwidth(max(fig.get_figwidth(), MIN_WIDTH))
    return fig, axes


def same_ylim(axes: list[Axes], pad: float = 0.03) -> None:
    """One y-range for ``axes``: the union of their own, widened by ``pad`` of it at each end (in
    the axes' scale: a factor on a log axis), so that a panel whose own range is narrow does not
    draw its lines along the frame; a bottom set to 0 (a count or a rank) stays 0."""
    lows, highs = zip(*(ax.get_ylim() for ax in axes))
    low, high = min(lows), max(highs)
    if axes[0].get_yscale() == "log":
        factor = (high / low) ** pad
        low, high = low / factor, high * factor
    else:
        margin = pad * (high - low)
        low, high = (low if low == 0 else low - margin), high + margin
    for ax in axes:
        ax.set_ylim(low, high)


def integer_xticks(axes: list[Axes]) -> None:
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_band(ax, x, stats: np.ndarray, color, style: str = "-", marker: str | None = "o") -> None:
    """Mean line (``stats[:, 0]``) and band (``stats[:, 1:3]``: low and high)."""
    ax.plot(x, stats[:, 0], style, color=color, lw=1.5, marker=marker if len(x) < 25 else None, ms=3)
    ax.fill_between(x, stats[:, 1], stats[:, 2], color=color, alpha=0.2, lw=0)


def legend(fig: Figure, groups: list[Group], extra: list[tuple[str, str]] = ()) -> None:
    """One legend for the figure, below the panels: a line per group, plus ``(style, text)`` extras
    (drawn grey: a group's colour may be black)."""
    handles = [Line2D([], [], color=g.color, lw=2) for g in groups]
    labels = [g.label + ("" if g.counted or not g.runs else " (no run counted)") for g in groups]
    handles += [Line2D([], [], color="0.55", ls=style) for style, _ in extra]
    labels += [text for _, text in extra]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), frameon=False)


# Each takes the groups and the band kind (``spread``, see :func:`~tsdyn.report.aggregate.band`) and
# returns (Figure, None) or (None, the reason it was skipped). Titles are short; FIGURES' captions
# (report.md) say the rest.

def fig_curves(groups: list[Group], spread: str):
    runs = [r for g in groups for r in g.counted]
    layers = layers_of(runs, "match", "mean_best")
    if not layers:
        return None, "no match/layer<l>/mean_best values in the runs counted"
    fig, axes = panels(len(layers) + 1, max_cols=5)
    for ax, layer in zip(axes, layers):
        for g in groups:
            epochs, stats = series_band(g, keys.layer_key("match", layer, "mean_best"), spread)
            if len(epochs):
                plot_band(ax, epochs, stats, g.color)
        ax.set(title=layer_title(layer), xlabel="epoch", ylabel="mean best correlation")
    ax = axes[-1]
    for g in groups:
        epochs, stats = series_band(g, "loss/eval", spread)
        if len(epochs):
            plot_band(ax, epochs, stats, g.color)
    ax.set(title="eval loss", xlabel="epoch", ylabel="loss", yscale="log")
    same_ylim(axes[:-1])
    integer_xticks(axes)
    fig.suptitle("Matching over training")
    legend(fig, groups)
    return fig, None


def fig_luck(groups: list[Group], spread: str):
    runs = [r for g in groups for r in g.counted]
    layers = layers_of(runs, "luck", keys.luck_rank("mean", 0))
    if not layers:
        return None, "no luck/layer<l>/top_pct_mean/epoch<b> values (the luck callback was off)"
    baselines = keys.luck_baselines({k for r in runs for k in r.keys()})
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for g in groups:
            for stat, style in (("mean", "-"), ("median", "--")):
                stats = np.array([final_band(g, keys.layer_key("luck", layer, keys.luck_rank(stat, b)), spread)[:3]
                                  for b in baselines])
                ok = np.isfinite(stats[:, 0])
                if ok.any():
                    plot_band(ax, np.array(baselines)[ok], stats[ok], g.color, style)
        ax.set(title=layer_title(layer), xlabel="baseline epoch b", ylabel="top-% rank at b", ylim=(0, None))
    same_ylim(axes)
    integer_xticks(axes)
    fig.suptitle("Luck: the final winner's rank at epoch b")
    legend(fig, groups, [("-", "mean over teacher nodes"), ("--", "median over teacher nodes")])
    return fig, None


def fig_width(groups: list[Group], spread: str):
    runs = [r for g in groups for r in g.counted]
    widths = sorted({r.config_value("student.width_mult") for r in runs} - {None})
    layers = layers_of(runs, "match", "mean_best")
    if len(widths) < 2 or not layers:
        return None, "fewer than two student.width_mult values among the runs counted"
    series: dict[tuple, list[Group]] = {}   # groups that differ only in width_mult share a line
    for g in groups:
        rest = tuple((k, v) for k, v in g.values.items() if k != "student.width_mult")
        series.setdefault(rest, []).append(g)
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for members in series.values():
            points = sorted(((r.config_value("student.width_mult"), g) for g in members for r in g.counted[:1]),
                            key=lambda p: p[0])
            xs = np.array([w for w, _ in points])
            stats = np.array([final_band(g, keys.layer_key("match", layer, "mean_best"), spread)[:3]
                              for _, g in points]).reshape(-1, 3)
            if len(xs):
                plot_band(ax, xs, stats, members[0].color)
        ax.set(title=layer_title(layer), xlabel="width_mult", ylabel="final mean best correlation", xscale="log")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
    same_ylim(axes)
    fig.suptitle("Final matching vs student width")
    legend(fig, [Group(dict(rest), [], members[0].color) for rest, members in series.items()])
    return fig, None


def array_runs(groups: list[Group], name: str, array: str) -> tuple[list[tuple[Group, RunFolder]], list[int]]:
    """(group, run) for each counted run whose last ``arrays/<name>_epochNNN.npz`` holds
    ``<array>_layer<l>`` arrays, and the union of those layers ``l``."""
    pairs, layers = [], set()
    for g in groups:
        for r in g.counted:
            found = keys.array_layers(last_arrays(r, name), array) if r.array_epochs(name) else []
            if found:
                pairs.append((g, r))
                layers.update(found)
    return pairs, sorted(layers)


def layer_panels(groups: list[Group], name: str, array: str):
    """One panel per layer for the end-of-run ``<array>_layer<l>`` arrays of ``name``: (figure, [(axis,
    layer, [(group, arrays) of each run holding that layer])], groups shown), or (None, [], [])."""
    pairs, layers = array_runs(groups, name, array)
    if not pairs:
        return None, [], []
    fig, axes = panels(len(layers))
    cells = [(ax, layer, [(g, last_arrays(r, name)) for g, r in pairs if keys.array_key(array, layer) in last_arrays(r, name)])
             for ax, layer in zip(axes, layers)]
    return fig, cells, [g for g in groups if any(g is gg for gg, _ in pairs)]


def teacher_block(run: RunFolder, layer: int) -> int:
    """How many of ``layer``'s first student nodes started at the teacher's nodes (0 at default init)."""
    ks = run.config_value("teacher.ks")
    initialised = run.config_value("student.init", "default") != "default"
    return ks[layer] if initialised and isinstance(ks, list) and layer < len(ks) else 0


def sorted_blocks(fan: np.ndarray, block: int) -> np.ndarray:
    """``fan`` ``[K]`` sorted descending within ``fan[:block]`` and within ``fan[block:]``."""
    return np.concatenate([-np.sort(-fan[:block]), -np.sort(-fan[block:])])


def fig_fanout_nodes(groups: list[Group], _spread: str):
    pairs, _ = array_runs(groups, "fanout", "fanout")
    if not pairs:
        return None, "no arrays/fanout_epochNNN.npz files (the fan-out callback was off)"
    shown = {}
    for g, r in pairs:            # one run per group: student 0 of its first counted run
        shown.setdefault(g.label, (g, r))
    chosen = [(g, r, layer) for g, r in shown.values()
              for layer in keys.array_layers(last_arrays(r, "fanout"), "fanout")]
    chosen = chosen[:MAX_PANELS]
    n_layers = len({layer for _, _, layer in chosen})
    fig, axes = panels(len(chosen), max_cols=max(n_layers, 3) if n_layers < 5 else 4)
    picks_shown, lowest, highest = [], np.inf, 0.0
    for ax, (g, r, layer) in zip(axes, chosen):
        epochs = r.array_epochs("fanout")
        picks = sorted({epochs[round(i * (len(epochs) - 1) / 3)] for i in range(4)})
        picks_shown.append(picks)
        block = teacher_block(r, layer)
        for j, epoch in enumerate(picks):
            fan = np.maximum(r.arrays("fanout", epoch)[keys.array_key("fanout", layer)][0], 1e-12)
            lowest, highest = min(lowest, fan.min()), max(highest, fan.max())
            ax.plot(np.arange(len(fan)), sorted_blocks(fan, block), "-", lw=1.2,
                    color=colormaps["viridis"](0.85 * j / max(len(picks) - 1, 1)), label=f"epoch {epoch}")
        if block:
            ax.axvline(block - 0.5, color="k", ls=":", lw=1, label="teacher-initialised | rest")
        ax.set(title=f"{g.label}\n{layer_title(layer)}", xlabel="student node (sorted)", ylabel="fan-out norm")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:             # log scale where the norms span more than 1.5 decades
        ax.set_yscale("log" if highest / lowest > 30 else "linear")
    same_ylim(axes)
    if all(p == picks_shown[0] for p in picks_shown):   # one legend when every panel shows the same epochs
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)), frameon=False)
    else:
        for ax in axes:
            ax.legend()
    fig.suptitle("Fan-out norm per student node")
    return fig, None


def fig_fanout_lshape(groups: list[Group], _spread: str):
    fig, cells, shown = layer_panels(groups, "fanout", "best_corr")
    if fig is None:
        return None, "no best_corr_layer<l> in arrays/fanout_epochNNN.npz"
    for ax, layer, found in cells:
        for g, arrays in found:
            ax.scatter(arrays[keys.array_key("best_corr", layer)].ravel(),
                       np.maximum(arrays[keys.array_key("fanout", layer)].ravel(), 1e-12),
                       s=6, alpha=0.6, color=g.color, lw=0)
        ax.set(title=layer_title(layer), xlabel="best correlation with a teacher node", ylabel="fan-out norm",
               yscale="log", xlim=(-0.2, 1.02))
    same_ylim([ax for ax, _, _ in cells])
    fig.suptitle("L-shape at the end of training")
    legend(fig, shown)
    return fig, None


def fig_bn_bias(groups: list[Group], _spread: str):
    fig, cells, shown = layer_panels(groups, "bn", "student_bias")
    if fig is None:
        return None, "no arrays/bn_epochNNN.npz files (no student with BatchNorm, or the BN callback was off)"
    for ax, layer, found in cells:
        pooled: dict[str, tuple[Group, list[np.ndarray]]] = {}
        teacher = None
        for g, arrays in found:
            pooled.setdefault(g.label, (g, []))[1].append(arrays[keys.array_key("student_bias", layer)].ravel())
            teacher = arrays.get(keys.array_key("teacher_bias", layer), teacher)
        for g, chunks in pooled.values():
            bias = np.concatenate(chunks)
            ax.hist(bias, bins=30, histtype="step", lw=1.4, color=g.color,
                    label=f"{100 * np.mean(bias <= 0):.1f}% <= 0")
        if teacher is not None:
            ax.hist(teacher.ravel(), bins=30, histtype="step", color="k", ls="--",
                    label=f"teacher {100 * np.mean(teacher <= 0):.1f}% <= 0")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set(title=layer_title(layer), xlabel="BatchNorm bias", ylabel="count")
        ax.legend(fontsize=6)
    fig.suptitle("Student BatchNorm biases at the end")
    legend(fig, shown)
    return fig, None


def top_sorted(corr: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Each live teacher node's ``k`` largest student correlations, descending: ``corr``
    ``[E, K_t, K_s]`` -> ``[n_live, min(k, K_s)]`` (dead teacher rows, all NaN, left out)."""
    rows = corr.reshape(-1, corr.shape[-1])
    rows = rows[~np.isnan(rows).all(-1)]
    return -np.sort(-np.nan_to_num(rows, nan=-1.0), axis=-1)[:, :k]


def fig_sorted_corr(groups: list[Group], spread: str):
    pairs, layers = array_runs(groups, "match", "corr")
    if not pairs:
        return None, "no corr_layer<l> in arrays/match_epochNNN.npz (the full correlation matrices)"
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for g in groups:
            for which, style in ((0, "--"), (-1, "-")):
                found = [r.arrays("match", r.array_epochs("match")[which]) for gg, r in pairs if gg is g]
                curves = [top_sorted(a[keys.array_key("corr", layer)]) for a in found if keys.array_key("corr", layer) in a]
                curves = [c for c in curves if len(c)]
                if not curves:
                    continue
                width = min(c.shape[1] for c in curves)
                stacked = np.concatenate([c[:, :width] for c in curves])
                stats = np.array([band([column], spread)[:3] for column in stacked.T])
                plot_band(ax, np.arange(1, width + 1), stats, g.color, style, marker=None)
        ax.set(title=layer_title(layer), xlabel="rank of the student node (1 = best)", ylabel="correlation")
    same_ylim(axes)
    integer_xticks(axes)
    fig.suptitle(f"Each teacher node's top-{TOP_K} student correlations")
    legend(fig, [g for g in groups if any(g is gg for gg, _ in pairs)],
           [("--", "initialisation (epoch 0)"), ("-", "end of training")])
    return fig, None


def fig_fanout_sorted(groups: list[Group], _spread: str):
    pairs, _ = array_runs(groups, "fanout", "fanout")
    if not pairs:
        return None, "no arrays/fanout_epochNNN.npz files (the fan-out callback was off)"
    cells: dict[tuple[str, int], tuple[Group, list[np.ndarray]]] = {}
    for g, r in pairs:
        arrays = last_arrays(r, "fanout")
        for layer in keys.array_layers(arrays, "fanout"):
            cells.setdefault((g.label, layer), (g, []))[1].extend(arrays[keys.array_key("fanout", layer)])
    chosen = list(cells.items())[:MAX_PANELS]
    fig, axes = panels(len(chosen))
    for ax, ((label, layer), (g, fans)) in zip(axes, chosen):
        for fan in fans:
            ax.plot(np.arange(len(fan)), np.sort(np.maximum(fan, 1e-12))[::-1], ".-", ms=2, lw=0.6, color=g.color,
                    alpha=0.7)
        ax.set(title=f"{label}\n{layer_title(layer)}", xlabel="student node (sorted)", ylabel="fan-out norm",
               yscale="log")
    same_ylim(axes)
    integer_xticks(axes)
    fig.suptitle("Final fan-out norms, sorted")
    return fig, None


def fig_specialization(groups: list[Group], _spread: str, threshold: float = 0.95):
    fig, cells, shown = layer_panels(groups, "match", "best")
    if fig is None:
        return None, "no best_layer<l> in arrays/match_epochNNN.npz"
    for ax, layer, found in cells:
        for g in shown:
            best = [a[keys.array_key("best", layer)] for gg, a in found if gg is g]
            if best:
                rate = recovery_rate(torch.as_tensor(np.concatenate(best)), threshold).numpy()
                ax.plot(np.arange(len(rate)), rate, "o-", ms=3, color=g.color)
        ax.set(title=layer_title(layer), xlabel="teacher node", ylabel=f"share of students, best corr > {threshold}",
               ylim=(-0.03, 1.03))
    integer_xticks([ax for ax, _, _ in cells])
    fig.suptitle("Teacher nodes recovered")
    legend(fig, shown)
    return fig, None


# name: (caption in report.md, with {band} and {layers} filled in; the figure function)
FIGURES: dict[str, tuple[str, Callable]] = {
    "curves": ("Mean best correlation of each teacher node with any student node, per hidden layer, and the "
               "eval loss, vs epoch (0 = initialisation). Line: mean over the runs of a group and their "
               "students; band: {band}. {layers}.", fig_curves),
    "luck": ("Luck: for each teacher node, the top-% rank that its final best student held in the ordering "
             "by correlation at baseline epoch b (0 = initialisation); lower = the winner was already ahead. "
             "Solid: mean over teacher nodes, dashed: median; band: {band} over runs and students. {layers}.",
             fig_luck),
    "width": ("Over-parameterisation: final mean best correlation per layer vs student width_mult; groups "
              "that differ only in width_mult form one line. Band: {band} over runs and students. {layers}.",
              fig_width),
    "fanout_nodes": ("Fan-out norm of every student node of student 0 of one run per group (at most "
                     f"{MAX_PANELS} panels), at four "
                     "epochs, sorted in descending order (with teacher-initialised students: within the "
                     "teacher-initialised block, left of the dotted line, and within the rest). {layers}.",
                     fig_fanout_nodes),
    "fanout_lshape": ("L-shape: every student node of every run counted at the end of training, its best "
                      "correlation with a teacher node against its fan-out norm. {layers}.", fig_fanout_lshape),
    "bn_bias": ("Histograms of the student BatchNorm biases at the end (all students of all runs), per group, "
                "with the share <= 0 in each panel's legend (the teacher's: dashed). {layers}.", fig_bn_bias),
    "sorted_corr": (f"Each teacher node's top-{TOP_K} student correlations, sorted, at initialisation (dashed) "
                    "and at the end (solid). Line: mean over teacher nodes, runs and students; band: {band}. "
                    "{layers}.", fig_sorted_corr),
    "fanout_sorted": (f"Final fan-out norms of every student node, sorted in descending order: one line per "
                      f"student of every run counted of a group (at most {MAX_PANELS} panels). "
                      "{layers}.", fig_fanout_sorted),
    "specialization": ("Specialization: for each teacher node, in index order (the strength rank under strength "
                       "decay), the share of all students of a group whose best correlation with it exceeds 0.95 "
                       "at the end. {layers}.", fig_specialization),
}
