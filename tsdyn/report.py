"""``python -m tsdyn.report [run or multirun folder]``: the paper's figures and a summary table from
run folders alone (no W&B), written to ``<folder>/report/``.

Runs are grouped by their overridden keys, seed keys left out (runs that differ only in seeds are
trials of one setting). Every value is aggregated over the completed runs of a group *and* over the
students inside each run (``student.num_students``; per-student keys ``<key>/s<i>``): the mean, and
in the figures a band of +- one standard deviation (``--band minmax``: min to max), in the tables
[min, max]. Runs that diverged or failed are listed, never averaged in. Layer 0 is the lowest
hidden layer in every figure and table. Figures are drawn for a paper: groups labelled by value
(``width_mult 5``), one y-range across the layer panels of a figure, integer epoch ticks, the
Okabe-Ito colour-blind-safe palette, PNG at 200 dpi and vector PDF, short titles; what each figure
shows and how is said in its caption in ``report.md``. Figures, each skipped with a note in the
table when the runs lack its data:

1. ``curves``: mean best correlation per layer and eval loss vs epoch;
2. ``luck``: mean / median top-% rank of the final winner per layer vs baseline epoch;
3. ``width``: final mean best correlation per layer vs width_mult;
4. ``fanout_nodes``: fan-out norm per student node, sorted, at several epochs, and ``fanout_lshape``:
   best correlation vs fan-out norm at the end (the L-shape);
5. ``bn_bias``: BatchNorm bias histograms per layer, share <= 0 in the legend;
6. ``sorted_corr``: each teacher node's top-20 student correlations, sorted, at initialisation and
   at the end;
7. ``fanout_sorted``: every student's final fan-out norms, sorted, per group and layer (log scale);
8. ``specialization``: per teacher node (index = strength rank under strength decay), the share of
   students whose best correlation with it exceeds 0.95 at the end, per layer.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tsdyn.metrics.matching import recovery_rate
from tsdyn.plots import grid
from tsdyn.runs import RunFolder, find_runs, newest_output

LAYER_NOTE = "layer 0 = lowest hidden layer"
BANDS = {"sd": "+- one standard deviation", "minmax": "min to max"}   # --band: the figures' bands
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]  # Okabe-Ito
TOP_K = 20          # sorted-correlation curves: the best TOP_K students per teacher node
MAX_PANELS = 24     # per-run figures (fan-out vs node index) show at most this many panels
DPI = 200
PANEL = 3.2         # inches per panel
MIN_WIDTH = 8.0     # inches
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "axes.formatter.useoffset": False}
ANALYSIS_KEYS = re.compile(  # end-of-run values listed in the analysis table (the figures hold the rest)
    r"match/layer\d+/hungarian_mean|fanout/layer\d+/(matched_median|unmatched_median|unmatched_below_1pct)"
    r"|bn/(student|teacher)/layer\d+/frac_nonpositive|drift/layer\d+/(abs|rel)_mean|theory/layer\d+/.+"
    r"|luck/layer\d+/(top_pct_(mean|median)/epoch[01]|spearman_init_vs_converge)|prune/.+")


# --------------------------------------------------------------------------- grouping and aggregation

@dataclass
class Group:
    """Runs that differ only in seed keys; ``values``: the keys that differ between groups and
    their values in this one."""

    values: dict[str, str]
    runs: list[RunFolder]
    color: str | tuple

    @property
    def label(self) -> str:
        return value_label(self.values)

    @property
    def completed(self) -> list[RunFolder]:
        return [r for r in self.runs if r.status == "completed"]


def value_label(values: dict[str, str]) -> str:
    """``{"student.width_mult": "5", "teacher.d_out": "20"}`` -> ``"width_mult 5, d_out 20"``: each
    key by its last part, or in full where two keys share that part; ``"all runs"`` when empty."""
    last = [k.rsplit(".", 1)[-1] for k in values]
    return ", ".join(f"{k if last.count(short) > 1 else short} {v}"
                     for (k, v), short in zip(values.items(), last)) or "all runs"


def colors(n: int) -> list:
    """``n`` colour-blind-safe colours: the Okabe-Ito palette, or viridis steps beyond 8."""
    return PALETTE[:n] if n <= len(PALETTE) else [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def group_runs(runs: list[RunFolder]) -> list[Group]:
    """Groups in order of first appearance, labelled with the non-seed keys whose values differ."""
    keys = [dict(r.group_key()) for r in runs]
    names = sorted({k for key in keys for k in key})
    varying = [k for k in names if len({key.get(k) for key in keys}) > 1]
    by_key: dict[tuple, list[RunFolder]] = {}
    for run, key in zip(runs, keys):
        by_key.setdefault(tuple(key.get(k) for k in varying), []).append(run)
    return [Group({k: v for k, v in zip(varying, values) if v is not None}, members, color)
            for (values, members), color in zip(by_key.items(), colors(len(by_key)))]


def band(samples: Iterable[np.ndarray], spread: str = "minmax") -> tuple[float, float, float, int]:
    """(mean, low, high, count) of the finite values of all ``samples`` (NaN, NaN, NaN, 0 if none):
    low, high = min, max (``spread="minmax"``) or mean -+ the standard deviation (``"sd"``, ddof 1;
    0 for one value)."""
    values = np.concatenate([np.ravel(s) for s in samples] or [np.array([])]).astype(float)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(values.mean())
    if spread == "sd":
        sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
        return mean, mean - sd, mean + sd, int(values.size)
    return mean, float(values.min()), float(values.max()), int(values.size)


def final_band(group: Group, key: str, spread: str = "minmax") -> tuple[float, float, float, int]:
    """Final value of ``key`` over the group's completed runs and their students."""
    return band((v for r in group.completed if (v := r.final(key)) is not None), spread)


def series_band(group: Group, key: str, spread: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` per epoch over the group's completed runs and students: (epochs ``[T]``,
    ``[T, 3]`` mean / low / high, see :func:`band`)."""
    per_epoch: dict[int, list[np.ndarray]] = {}
    for run in group.completed:
        for epoch, values in run.series(key).items():
            per_epoch.setdefault(epoch, []).append(values)
    epochs = sorted(per_epoch)
    return np.array(epochs), np.array([band(per_epoch[e], spread)[:3] for e in epochs]).reshape(-1, 3)


def layers_of(runs: Iterable[RunFolder], pattern: str) -> list[int]:
    """Hidden layers ``l`` for which some run has a final key matching ``pattern`` with ``{l}``."""
    regex = re.compile(pattern.replace("{l}", r"(\d+)"))
    return sorted({int(m.group(1)) for r in runs for k in r.keys() if (m := regex.fullmatch(k))})


def layer_title(layer: int) -> str:
    return f"layer {layer} (lowest)" if layer == 0 else f"layer {layer}"


def panels(n: int, max_cols: int = 4):
    """``n`` panels, the figure at least ``MIN_WIDTH`` inches wide (room for the title and legend)."""
    fig, axes = grid(n, max_cols, panel=PANEL)
    fig.set_figwidth(max(fig.get_figwidth(), MIN_WIDTH))
    return fig, axes


def same_ylim(axes: list[Axes]) -> None:
    """One y-range for ``axes``: the union of their own."""
    lows, highs = zip(*(ax.get_ylim() for ax in axes))
    for ax in axes:
        ax.set_ylim(min(lows), max(highs))


def integer_xticks(axes: list[Axes]) -> None:
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_band(ax, x, stats: np.ndarray, color, style: str = "-", marker: str | None = "o") -> None:
    """Mean line (``stats[:, 0]``) and band (``stats[:, 1:3]``: low and high)."""
    ax.plot(x, stats[:, 0], style, color=color, lw=1.5, marker=marker if len(x) < 25 else None, ms=3)
    ax.fill_between(x, stats[:, 1], stats[:, 2], color=color, alpha=0.2, lw=0)


def legend(fig: Figure, groups: list[Group], extra: list[tuple[str, str]] = ()) -> None:
    """One legend for the figure, below the panels: a line per group, plus ``(style, text)`` extras."""
    handles = [Line2D([], [], color=g.color, lw=2) for g in groups]
    labels = [g.label + ("" if g.completed or not g.runs else " (no completed run)") for g in groups]
    handles += [Line2D([], [], color="k", ls=style) for style, _ in extra]
    labels += [text for _, text in extra]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), frameon=False)


# --------------------------------------------------------------------------- figures
# Each takes the groups and the band kind (``spread``, see :func:`band`) and returns (Figure, None)
# or (None, the reason it was skipped). Titles are short; FIGURES' captions (report.md) say the rest.

def fig_curves(groups: list[Group], spread: str):
    runs = [r for g in groups for r in g.completed]
    layers = layers_of(runs, "match/layer{l}/mean_best")
    if not layers:
        return None, "no match/layer<l>/mean_best values in the completed runs"
    fig, axes = panels(len(layers) + 1, max_cols=5)
    for ax, layer in zip(axes, layers):
        for g in groups:
            epochs, stats = series_band(g, f"match/layer{layer}/mean_best", spread)
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
    runs = [r for g in groups for r in g.completed]
    layers = layers_of(runs, "luck/layer{l}/top_pct_mean/epoch0")
    if not layers:
        return None, "no luck/layer<l>/top_pct_mean/epoch<b> values (the luck callback was off)"
    baselines = sorted({int(m.group(1)) for r in runs for k in r.keys()
                        if (m := re.fullmatch(r"luck/layer\d+/top_pct_mean/epoch(\d+)", k))})
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for g in groups:
            for stat, style in (("mean", "-"), ("median", "--")):
                stats = np.array([final_band(g, f"luck/layer{layer}/top_pct_{stat}/epoch{b}", spread)[:3]
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
    runs = [r for g in groups for r in g.completed]
    widths = sorted({r.config_value("student.width_mult") for r in runs} - {None})
    layers = layers_of(runs, "match/layer{l}/mean_best")
    if len(widths) < 2 or not layers:
        return None, "fewer than two student.width_mult values among the completed runs"
    series: dict[tuple, list[Group]] = {}   # groups that differ only in width_mult share a line
    for g in groups:
        rest = tuple((k, v) for k, v in g.values.items() if k != "student.width_mult")
        series.setdefault(rest, []).append(g)
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for members in series.values():
            points = sorted(((r.config_value("student.width_mult"), g) for g in members for r in g.completed[:1]),
                            key=lambda p: p[0])
            xs = np.array([w for w, _ in points])
            stats = np.array([final_band(g, f"match/layer{layer}/mean_best", spread)[:3]
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


def last_arrays(run: RunFolder, name: str) -> dict[str, np.ndarray]:
    """The run's arrays of ``name`` at its last saved epoch."""
    return run.arrays(name, run.array_epochs(name)[-1])


def _layers_in(arrays: dict[str, np.ndarray], prefix: str) -> list[int]:
    return sorted(int(m.group(1)) for k in arrays if (m := re.fullmatch(rf"{prefix}(\d+)", k)))


def array_runs(groups: list[Group], name: str, prefix: str) -> tuple[list[tuple[Group, RunFolder]], list[int]]:
    """(group, run) for each completed run whose last ``arrays/<name>_epochNNN.npz`` holds
    ``<prefix><l>`` arrays, and the union of those layers ``l``."""
    pairs, layers = [], set()
    for g in groups:
        for r in g.completed:
            found = _layers_in(last_arrays(r, name), prefix) if r.array_epochs(name) else []
            if found:
                pairs.append((g, r))
                layers.update(found)
    return pairs, sorted(layers)


def layer_panels(groups: list[Group], name: str, prefix: str):
    """One panel per layer for the end-of-run ``<prefix><l>`` arrays of ``name``: (figure, [(axis,
    layer, [(group, arrays) of each run holding that layer])], groups shown), or (None, [], [])."""
    pairs, layers = array_runs(groups, name, prefix)
    if not pairs:
        return None, [], []
    fig, axes = panels(len(layers))
    cells = [(ax, layer, [(g, last_arrays(r, name)) for g, r in pairs if f"{prefix}{layer}" in last_arrays(r, name)])
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
    pairs, _ = array_runs(groups, "fanout", "fanout_layer")
    if not pairs:
        return None, "no arrays/fanout_epochNNN.npz files (the fan-out callback was off)"
    shown = {}
    for g, r in pairs:            # one run per group: student 0 of its first completed run
        shown.setdefault(g.label, (g, r))
    chosen = [(g, r, layer) for g, r in shown.values()
              for layer in _layers_in(last_arrays(r, "fanout"), "fanout_layer")]
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
            fan = np.maximum(r.arrays("fanout", epoch)[f"fanout_layer{layer}"][0], 1e-12)
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
    fig, cells, shown = layer_panels(groups, "fanout", "best_corr_layer")
    if fig is None:
        return None, "no best_corr_layer<l> in arrays/fanout_epochNNN.npz"
    for ax, layer, found in cells:
        for g, arrays in found:
            ax.scatter(arrays[f"best_corr_layer{layer}"].ravel(),
                       np.maximum(arrays[f"fanout_layer{layer}"].ravel(), 1e-12), s=6, alpha=0.6, color=g.color, lw=0)
        ax.set(title=layer_title(layer), xlabel="best correlation with a teacher node", ylabel="fan-out norm",
               yscale="log", xlim=(-0.2, 1.02))
    same_ylim([ax for ax, _, _ in cells])
    fig.suptitle("L-shape at the end of training")
    legend(fig, shown)
    return fig, None


def fig_bn_bias(groups: list[Group], _spread: str):
    fig, cells, shown = layer_panels(groups, "bn", "student_bias_layer")
    if fig is None:
        return None, "no arrays/bn_epochNNN.npz files (no student with BatchNorm, or the BN callback was off)"
    for ax, layer, found in cells:
        pooled: dict[str, tuple[Group, list[np.ndarray]]] = {}
        teacher = None
        for g, arrays in found:
            pooled.setdefault(g.label, (g, []))[1].append(arrays[f"student_bias_layer{layer}"].ravel())
            teacher = arrays.get(f"teacher_bias_layer{layer}", teacher)
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
    pairs, layers = array_runs(groups, "match", "corr_layer")
    if not pairs:
        return None, "no corr_layer<l> in arrays/match_epochNNN.npz (the full correlation matrices)"
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for g in groups:
            for which, style in ((0, "--"), (-1, "-")):
                found = [r.arrays("match", r.array_epochs("match")[which]) for gg, r in pairs if gg is g]
                curves = [top_sorted(a[f"corr_layer{layer}"]) for a in found if f"corr_layer{layer}" in a]
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
    pairs, _ = array_runs(groups, "fanout", "fanout_layer")
    if not pairs:
        return None, "no arrays/fanout_epochNNN.npz files (the fan-out callback was off)"
    cells: dict[tuple[str, int], tuple[Group, list[np.ndarray]]] = {}
    for g, r in pairs:
        arrays = last_arrays(r, "fanout")
        for layer in _layers_in(arrays, "fanout_layer"):
            cells.setdefault((g.label, layer), (g, []))[1].extend(arrays[f"fanout_layer{layer}"])
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
    fig, cells, shown = layer_panels(groups, "match", "best_layer")
    if fig is None:
        return None, "no best_layer<l> in arrays/match_epochNNN.npz"
    for ax, layer, found in cells:
        for g in shown:
            best = [a[f"best_layer{layer}"] for gg, a in found if gg is g]
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
    "fanout_lshape": ("L-shape: every student node of every completed run at the end of training, its best "
                      "correlation with a teacher node against its fan-out norm. {layers}.", fig_fanout_lshape),
    "bn_bias": ("Histograms of the student BatchNorm biases at the end (all students of all runs), per group, "
                "with the share <= 0 in each panel's legend (the teacher's: dashed). {layers}.", fig_bn_bias),
    "sorted_corr": (f"Each teacher node's top-{TOP_K} student correlations, sorted, at initialisation (dashed) "
                    "and at the end (solid). Line: mean over teacher nodes, runs and students; band: {band}. "
                    "{layers}.", fig_sorted_corr),
    "fanout_sorted": (f"Final fan-out norms of every student node, sorted in descending order: one line per "
                      f"student of every completed run of a group (at most {MAX_PANELS} panels). "
                      "{layers}.", fig_fanout_sorted),
    "specialization": ("Specialization: for each teacher node, in index order (the strength rank under strength "
                       "decay), the share of all students of a group whose best correlation with it exceeds 0.95 "
                       "at the end. {layers}.", fig_specialization),
}


# --------------------------------------------------------------------------- tables

def fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else (f"{x:.4g}" if x != 0 and (abs(x) < 0.01 or abs(x) >= 1000) else f"{x:.4f}")


def median_cell(values: np.ndarray) -> str:
    """``median [min, max]`` of the finite ``values``, or ``n/a``."""
    v = values[np.isfinite(values)]
    return f"{fmt(float(np.median(v)))} [{fmt(float(v.min()))}, {fmt(float(v.max()))}]" if v.size else "n/a"


def cell(stats: tuple[float, float, float, int]) -> str:
    mean, lo, hi, n = stats
    return "n/a" if n == 0 else (fmt(mean) if n == 1 else f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def teacher_block_wins(run: RunFolder) -> dict[int, np.ndarray]:
    """Per layer, per student: the share of live teacher nodes j whose final best student is student
    node j, the one that started at teacher node j (student.init perturb / same_dir / same_sign)."""
    epochs = run.array_epochs("match")
    if not epochs:
        return {}
    arrays = last_arrays(run, "match")
    out = {}
    for layer in _layers_in(arrays, "best_student_layer"):
        idx = arrays[f"best_student_layer{layer}"]                       # [E, K_t], -1 = dead
        live = idx >= 0
        hits = (idx == np.arange(idx.shape[-1])) & live
        out[layer] = hits.sum(-1) / np.maximum(live.sum(-1), 1)
    return out


def teacher_block_fanout(run: RunFolder) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer: the final fan-out norms of the teacher-initialised student nodes (the first K_t
    of each student, student.init other than default) and of the rest, every student pooled."""
    ks = run.config_value("teacher.ks")
    if not run.array_epochs("fanout") or not isinstance(ks, list):
        return {}
    arrays = last_arrays(run, "fanout")
    fans = {layer: arrays[f"fanout_layer{layer}"] for layer in _layers_in(arrays, "fanout_layer") if layer < len(ks)}
    return {layer: (fan[:, :ks[layer]].ravel(), fan[:, ks[layer]:].ravel()) for layer, fan in fans.items()}


def specialization_rows(groups: list[Group], threshold: float = 0.95) -> list[list[str]]:
    """Per group and layer: the share of students recovering each teacher node (index order)."""
    rows = []
    for g in groups:
        per_layer: dict[int, list[np.ndarray]] = {}
        for r in g.completed:
            if r.array_epochs("match"):
                arrays = last_arrays(r, "match")
                for layer in _layers_in(arrays, "best_layer"):
                    per_layer.setdefault(layer, []).append(arrays[f"best_layer{layer}"])
        for layer, best in sorted(per_layer.items()):
            rate = recovery_rate(torch.as_tensor(np.concatenate(best)), threshold).numpy()
            rows.append([g.label, str(layer), str(sum(len(b) for b in best)),
                         " ".join("-" if np.isnan(v) else f"{v:.2f}" for v in rate)])
    return rows


def markdown(folder: Path, groups: list[Group], written: list[str], skipped: dict[str, str], spread: str) -> str:
    runs = [r for g in groups for r in g.runs]
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    done = [r for g in groups for r in g.completed]
    layers = layers_of(done, "match/layer{l}/mean_best")
    lines = [f"# tsdyn report: {folder}", "",
             f"{len(runs)} runs in {len(groups)} groups (runs that differ only in seed keys form one group); "
             f"status: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}.",
             "Values: mean [min, max] over the completed runs of a group and the students of each run "
             f"(student.num_students), at the end of training. {LAYER_NOTE.capitalize()}.", "",
             "## Final values", ""]
    header = ["group", "runs (completed/all)", "students", "epochs", "eval loss",
              *[f"layer {layer} mean best" for layer in layers]]
    rows = []
    for g in groups:
        epochs = sorted({r.summary.get("epochs") for r in g.completed} - {None})
        rows.append([g.label, f"{len(g.completed)}/{len(g.runs)}", str(sum(r.num_students for r in g.completed)),
                     ",".join(map(str, epochs)) or "-", cell(final_band(g, "loss/eval")),
                     *[cell(final_band(g, f"match/layer{layer}/mean_best")) for layer in layers]])
    lines += table(header, rows)

    keys = sorted({k for r in done for k in r.keys() if ANALYSIS_KEYS.fullmatch(k)}, key=natural)
    if keys:
        lines += ["", "## Analyses (end of training)", ""]
        rows = [[k, *[cell(final_band(g, k)) for g in groups]] for k in keys]
        lines += table(["key", *[g.label for g in groups]], [r for r in rows if set(r[1:]) != {"n/a"}])

    perturbed = [g for g in groups
                 if g.completed and g.completed[0].config_value("student.init", "default") != "default"]
    wins = {g.label: [teacher_block_wins(r) for r in g.completed] for g in perturbed}
    win_layers = sorted({layer for per_run in wins.values() for w in per_run for layer in w})
    if win_layers:
        lines += ["", "## Who wins: teacher-initialised students", "",
                  "Share of teacher nodes j whose final best student is student node j, the node that started "
                  "at teacher node j.", ""]
        lines += table(["group", *[f"layer {layer}" for layer in win_layers]],
                       [[label, *[cell(band(w[layer] for w in per_run if layer in w)) for layer in win_layers]]
                        for label, per_run in wins.items()])

        lines += ["", "## Fan-out of the teacher-initialised nodes and of the rest (end of training)", "",
                  "Median [min, max] of the final fan-out norms, every student of the group pooled.", ""]
        fan_rows = []
        for g in perturbed:
            fans = [teacher_block_fanout(r) for r in g.completed]
            for layer in sorted({layer for f in fans for layer in f}):
                block = [np.concatenate([f[layer][i] for f in fans if layer in f]) for i in (0, 1)]
                fan_rows.append([g.label, str(layer), *[median_cell(b) for b in block]])
        lines += table(["group", "layer", "teacher-initialised nodes", "other nodes"], fan_rows)

    spec = specialization_rows(groups)
    if spec:
        lines += ["", "## Specialization: teacher nodes recovered", "",
                  "Per teacher node in index order (the strength rank under strength decay): the share of students "
                  "whose best correlation with it exceeds 0.95 at the end (- = a dead teacher node).", ""]
        lines += table(["group", "layer", "students", "share per teacher node"], spec)

    bad = [r for r in runs if r.status != "completed"]
    if bad:
        lines += ["", "## Runs not completed (left out of every value and figure)", ""]
        lines += table(["run", "status", "detail"],
                       [[str(r.path.relative_to(folder) if r.path != folder else r.path), r.status,
                         str(r.summary.get("error") or (f"diverged at step {r.summary['diverged_at_step']}"
                                                        if "diverged_at_step" in r.summary else "")).replace("|", "/")]
                        for r in bad])
    lines += ["", "## Figures", ""]
    lines += [f"- `{name}.png` / `{name}.pdf`: " + FIGURES[name][0].format(band=BANDS[spread], layers=LAYER_NOTE.capitalize())
              for name in written]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point

def write_report(folder: str | Path, out: str | Path | None = None, spread: str = "sd") -> Path:
    """Figures and ``report.md`` for the runs in ``folder`` into ``out`` (default ``<folder>/report``),
    the figures' bands ``spread`` (``sd`` or ``minmax``, see :func:`band`); returns the path of
    ``report.md``."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folders in {folder} (a run folder holds .hydra/ or summary.json)")
    out = Path(out) if out is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    written, skipped = [], {}
    for name, (_, make) in FIGURES.items():
        with rc_context(STYLE):
            fig, reason = make(groups, spread)
            if fig is None:
                skipped[name] = reason
                continue
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{name}.{ext}", dpi=DPI, bbox_inches="tight", pad_inches=0.05)
        written.append(name)
    path = out / "report.md"
    path.write_text(markdown(folder, groups, written, skipped, spread))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tsdyn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="a run or multirun folder (default: the newest run or "
                                                  "multirun under outputs/)")
    parser.add_argument("--out", help="where to write (default: <folder>/report)")
    parser.add_argument("--band", choices=list(BANDS), default="sd",
                        help="the figures' bands around the mean over seeds and students (default: sd)")
    args = parser.parse_args(argv)
    folder = args.folder or newest_output()
    if folder is None:
        print("tsdyn.report: no folder given and no run under outputs/runs or outputs/multiruns", file=sys.stderr)
        return 2
    try:
        path = write_report(folder, args.out, args.band)
    except FileNotFoundError as err:
        print(f"tsdyn.report: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"written: {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
