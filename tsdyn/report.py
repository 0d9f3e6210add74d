"""``python -m tsdyn.report [run or multirun folder]``: the paper's figures and a summary table from
run folders alone (no W&B), written to ``<folder>/report/``.

Runs are grouped by their overridden keys, seed keys left out (runs that differ only in seeds are
trials of one setting). Every value is aggregated over the completed runs of a group *and* over the
students inside each run (``student.num_students``; per-student keys ``<key>/s<i>``): the mean, and
a min-max band. Runs that diverged or failed are listed, never averaged in. Layer 0 is the lowest
hidden layer in every figure and table. Figures (PNG and PDF), each skipped with a note in the
table when the runs lack its data:

1. ``curves``: mean best correlation per layer and eval loss vs epoch;
2. ``luck``: mean / median top-% rank of the final winner per layer vs baseline epoch;
3. ``width``: final mean best correlation per layer vs width_mult;
4. ``fanout_nodes``: fan-out norm vs student node index at several epochs, and ``fanout_lshape``:
   best correlation vs fan-out norm at the end (the L-shape);
5. ``bn_bias``: BatchNorm bias histograms per layer, share <= 0 in the legend;
6. ``sorted_corr``: each teacher node's top-20 student correlations, sorted, at initialisation and
   at the end.
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tsdyn.plots import grid
from tsdyn.runs import RunFolder, find_runs, newest_output

LAYER_NOTE = "layer 0 = lowest hidden layer"
BAND_NOTE = "line: mean, band: min-max over seeds and students"
TOP_K = 20          # sorted-correlation curves: the best TOP_K students per teacher node
MAX_PANELS = 24     # per-run figures (fan-out vs node index) show at most this many panels
DPI = 100
PANEL = 3.2         # inches per panel
MIN_WIDTH = 8.0     # inches
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7}
ANALYSIS_KEYS = re.compile(  # end-of-run values listed in the analysis table (the figures hold the rest)
    r"match/layer\d+/hungarian_mean|fanout/layer\d+/(matched_median|unmatched_median|unmatched_below_1pct)"
    r"|bn/(student|teacher)/layer\d+/frac_nonpositive|drift/layer\d+/(abs|rel)_mean|theory/layer\d+/.+"
    r"|luck/layer\d+/(top_pct_(mean|median)/epoch[01]|spearman_init_vs_converge)|prune/.+")


# --------------------------------------------------------------------------- grouping and aggregation

@dataclass
class Group:
    """Runs that differ only in seed keys; ``label`` names the keys that differ between groups."""

    label: str
    runs: list[RunFolder]
    color: tuple

    @property
    def completed(self) -> list[RunFolder]:
        return [r for r in self.runs if r.status == "completed"]


def group_runs(runs: list[RunFolder]) -> list[Group]:
    """Groups in order of first appearance, labelled with the non-seed keys whose values differ."""
    keys = [dict(r.group_key()) for r in runs]
    names = sorted({k for key in keys for k in key})
    varying = [k for k in names if len({key.get(k) for key in keys}) > 1]
    by_key: dict[tuple, list[RunFolder]] = {}
    for run, key in zip(runs, keys):
        by_key.setdefault(tuple(key.get(k) for k in varying), []).append(run)
    n = len(by_key)
    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    groups = []
    for i, (values, members) in enumerate(by_key.items()):
        label = ", ".join(f"{k}={v}" for k, v in zip(varying, values) if v is not None) or "all runs"
        groups.append(Group(label, members, cmap(i if n <= 10 else i / max(n - 1, 1))))
    return groups


def band(samples: Iterable[np.ndarray]) -> tuple[float, float, float, int]:
    """(mean, min, max, count) of the finite values of all ``samples`` (NaN, NaN, NaN, 0 if none)."""
    values = np.concatenate([np.ravel(s) for s in samples] or [np.array([])]).astype(float)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan"), float("nan"), 0
    return float(values.mean()), float(values.min()), float(values.max()), int(values.size)


def final_band(group: Group, key: str) -> tuple[float, float, float, int]:
    """Final value of ``key`` over the group's completed runs and their students."""
    return band(v for r in group.completed if (v := r.final(key)) is not None)


def series_band(group: Group, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` per epoch over the group's completed runs and students: (epochs ``[T]``,
    ``[T, 3]`` mean / min / max)."""
    per_epoch: dict[int, list[np.ndarray]] = {}
    for run in group.completed:
        for epoch, values in run.series(key).items():
            per_epoch.setdefault(epoch, []).append(values)
    epochs = sorted(per_epoch)
    return np.array(epochs), np.array([band(per_epoch[e])[:3] for e in epochs]).reshape(-1, 3)


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


def plot_band(ax, x, stats: np.ndarray, color, style: str = "-", marker: str | None = "o") -> None:
    """Mean line (``stats[:, 0]``) and min-max band (``stats[:, 1:3]``)."""
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
# Each returns (Figure, None) or (None, the reason it was skipped).

def fig_curves(groups: list[Group]):
    runs = [r for g in groups for r in g.completed]
    layers = layers_of(runs, "match/layer{l}/mean_best")
    if not layers:
        return None, "no match/layer<l>/mean_best values in the completed runs"
    fig, axes = panels(len(layers) + 1, max_cols=5)
    for ax, layer in zip(axes, layers):
        for g in groups:
            epochs, stats = series_band(g, f"match/layer{layer}/mean_best")
            if len(epochs):
                plot_band(ax, epochs, stats, g.color)
        ax.set(title=layer_title(layer), xlabel="epoch (0 = init)", ylabel="mean best correlation")
    ax = axes[-1]
    for g in groups:
        epochs, stats = series_band(g, "loss/eval")
        if len(epochs):
            plot_band(ax, epochs, stats, g.color)
    ax.set(title="eval loss", xlabel="epoch (0 = init)", ylabel="loss", yscale="log")
    fig.suptitle(f"Teacher-student matching over training ({LAYER_NOTE}; {BAND_NOTE})", fontsize=9)
    legend(fig, groups)
    return fig, None


def fig_luck(groups: list[Group]):
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
                stats = np.array([final_band(g, f"luck/layer{layer}/top_pct_{stat}/epoch{b}")[:3] for b in baselines])
                ok = np.isfinite(stats[:, 0])
                if ok.any():
                    plot_band(ax, np.array(baselines)[ok], stats[ok], g.color, style)
        ax.set(title=layer_title(layer), xlabel="baseline epoch b (0 = init)", ylabel="top-% rank at b",
               ylim=(0, None))
    fig.suptitle(f"Luck: rank of each teacher node's final best student in the ordering at epoch b\n"
                 f"({LAYER_NOTE}; lower = the winner was already ahead; {BAND_NOTE})", fontsize=9)
    legend(fig, groups, [("-", "mean over teacher nodes"), ("--", "median over teacher nodes")])
    return fig, None


def fig_width(groups: list[Group]):
    runs = [r for g in groups for r in g.completed]
    widths = sorted({r.config_value("student.width_mult") for r in runs} - {None})
    layers = layers_of(runs, "match/layer{l}/mean_best")
    if len(widths) < 2 or not layers:
        return None, "fewer than two student.width_mult values among the completed runs"
    series: dict[tuple, list[Group]] = {}   # groups that differ only in width_mult share a line
    for g in groups:
        rest = tuple((k, v) for k, v in g.runs[0].group_key() if k != "student.width_mult")
        series.setdefault(rest, []).append(g)
    lines = [(members[0], members) for members in series.values()]
    fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        for first, members in lines:
            points = sorted(((r.config_value("student.width_mult"), g) for g in members for r in g.completed[:1]),
                            key=lambda p: p[0])
            xs = np.array([w for w, _ in points])
            stats = np.array([final_band(g, f"match/layer{layer}/mean_best")[:3] for _, g in points]).reshape(-1, 3)
            if len(xs):
                plot_band(ax, xs, stats, first.color)
        ax.set(title=layer_title(layer), xlabel="width_mult", ylabel="final mean best correlation", xscale="log")
        ax.set_xticks(widths, [str(w) for w in widths])
    fig.suptitle(f"Over-parameterisation: final matching vs student width ({LAYER_NOTE}; {BAND_NOTE})", fontsize=9)
    legend_groups = [Group(re.sub(r"(, )?student\.width_mult=[^,]*", "", first.label).strip(", ") or "all runs",
                           [], first.color) for first, _ in lines]
    legend(fig, legend_groups)
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


def fig_fanout_nodes(groups: list[Group]):
    pairs, _ = array_runs(groups, "fanout", "fanout_layer")
    if not pairs:
        return None, "no arrays/fanout_epochNNN.npz files (the fan-out callback was off)"
    shown = {}
    for g, r in pairs:            # one run per group: student 0 of its first completed run
        shown.setdefault(g.label, (g, r))
    chosen = [(g, r, layer) for g, r in shown.values()
              for layer in _layers_in(last_arrays(r, "fanout"), "fanout_layer")]
    note = f" (first {MAX_PANELS} panels)" if len(chosen) > MAX_PANELS else ""
    chosen = chosen[:MAX_PANELS]
    n_layers = len({layer for _, _, layer in chosen})
    fig, axes = panels(len(chosen), max_cols=max(n_layers, 3) if n_layers < 5 else 4)
    for ax, (g, r, layer) in zip(axes, chosen):
        epochs = r.array_epochs("fanout")
        picks = sorted({epochs[round(i * (len(epochs) - 1) / 3)] for i in range(4)})
        fans = [np.maximum(r.arrays("fanout", e)[f"fanout_layer{layer}"][0], 1e-12) for e in picks]
        for j, (epoch, fan) in enumerate(zip(picks, fans)):
            ax.plot(np.arange(len(fan)), fan, ".-", ms=3, lw=0.6,
                    color=colormaps["viridis"](j / max(len(picks) - 1, 1)), label=f"epoch {epoch}")
        ks = r.config_value("teacher.ks")
        if r.config_value("student.init", "default") != "default" and isinstance(ks, list) and layer < len(ks):
            ax.axvline(ks[layer] - 0.5, color="k", ls=":", lw=1, label="teacher-initialised | rest")
        spread = max(f.max() for f in fans) / min(f.min() for f in fans)
        ax.set(title=textwrap.fill(f"{g.label}: {layer_title(layer)}", 50), xlabel="student node index",
               ylabel="fan-out norm", yscale="log" if spread > 30 else "linear")
        ax.title.set_fontsize(7)
        if layer == 0:              # the first panel of each run's row
            ax.legend()
    fig.suptitle(f"Fan-out norm per student node (student 0 of one run per group; {LAYER_NOTE}){note}", fontsize=9)
    return fig, None


def fig_fanout_lshape(groups: list[Group]):
    fig, cells, shown = layer_panels(groups, "fanout", "best_corr_layer")
    if fig is None:
        return None, "no best_corr_layer<l> in arrays/fanout_epochNNN.npz"
    for ax, layer, found in cells:
        for g, arrays in found:
            ax.scatter(arrays[f"best_corr_layer{layer}"].ravel(),
                       np.maximum(arrays[f"fanout_layer{layer}"].ravel(), 1e-12), s=5, alpha=0.5, color=g.color, lw=0)
        ax.set(title=layer_title(layer), xlabel="best correlation with any teacher node", ylabel="fan-out norm",
               yscale="log", xlim=(-0.2, 1.02))
    fig.suptitle(f"L-shape at the end of training: every student node of every run ({LAYER_NOTE})", fontsize=9)
    legend(fig, shown)
    return fig, None


def fig_bn_bias(groups: list[Group]):
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
    fig.suptitle(f"Student BatchNorm biases at the end (all students of all runs; {LAYER_NOTE});\n"
                 f"legend: share of biases <= 0 per group (colours below)", fontsize=9)
    legend(fig, shown)
    return fig, None


def top_sorted(corr: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Each live teacher node's ``k`` largest student correlations, descending: ``corr``
    ``[E, K_t, K_s]`` -> ``[n_live, min(k, K_s)]`` (dead teacher rows, all NaN, left out)."""
    rows = corr.reshape(-1, corr.shape[-1])
    rows = rows[~np.isnan(rows).all(-1)]
    return -np.sort(-np.nan_to_num(rows, nan=-1.0), axis=-1)[:, :k]


def fig_sorted_corr(groups: list[Group]):
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
                stats = np.stack([stacked.mean(0), stacked.min(0), stacked.max(0)], axis=1)
                plot_band(ax, np.arange(1, width + 1), stats, g.color, style, marker=None)
        ax.set(title=layer_title(layer), xlabel="rank of the student node (1 = best)", ylabel="correlation")
    fig.suptitle(f"Sorted correlations: each teacher node's top-{TOP_K} students, at initialisation and at the end\n"
                 f"({LAYER_NOTE}; line: mean over teacher nodes, seeds and students; band: min-max)", fontsize=9)
    legend(fig, [g for g in groups if any(g is gg for gg, _ in pairs)],
           [("--", "initialisation (epoch 0)"), ("-", "end of training")])
    return fig, None


FIGURES: dict[str, tuple[str, Callable]] = {
    "curves": ("mean best correlation per layer and eval loss vs epoch", fig_curves),
    "luck": ("luck: top-% rank of the final winner vs baseline epoch", fig_luck),
    "width": ("final mean best correlation vs width_mult", fig_width),
    "fanout_nodes": ("fan-out norm vs student node index at several epochs", fig_fanout_nodes),
    "fanout_lshape": ("L-shape: best correlation vs fan-out norm at the end", fig_fanout_lshape),
    "bn_bias": ("BatchNorm bias histograms with the share <= 0", fig_bn_bias),
    "sorted_corr": ("sorted top-20 correlations per teacher node, init vs end", fig_sorted_corr),
}


# --------------------------------------------------------------------------- tables

def fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else (f"{x:.4g}" if x != 0 and (abs(x) < 0.01 or abs(x) >= 1000) else f"{x:.4f}")


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


def markdown(folder: Path, groups: list[Group], written: dict[str, str], skipped: dict[str, str]) -> str:
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

    bad = [r for r in runs if r.status != "completed"]
    if bad:
        lines += ["", "## Runs not completed (left out of every value and figure)", ""]
        lines += table(["run", "status", "detail"],
                       [[str(r.path.relative_to(folder) if r.path != folder else r.path), r.status,
                         str(r.summary.get("error") or (f"diverged at step {r.summary['diverged_at_step']}"
                                                        if "diverged_at_step" in r.summary else "")).replace("|", "/")]
                        for r in bad])
    lines += ["", "## Figures", ""]
    lines += [f"- `{name}.png` / `{name}.pdf`: {text}" for name, text in written.items()]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point

def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Figures and ``report.md`` for the runs in ``folder`` into ``out`` (default ``<folder>/report``);
    returns the path of ``report.md``."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folders in {folder} (a run folder holds .hydra/ or summary.json)")
    out = Path(out) if out is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    written, skipped = {}, {}
    for name, (text, make) in FIGURES.items():
        with rc_context(STYLE):
            fig, reason = make(groups)
            if fig is None:
                skipped[name] = reason
                continue
            for ext in ("png", "pdf"):
                fig.savefig(out / f"{name}.{ext}", dpi=DPI)
        written[name] = text
    path = out / "report.md"
    path.write_text(markdown(folder, groups, written, skipped))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tsdyn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="a run or multirun folder (default: the newest run or "
                                                  "multirun under outputs/)")
    parser.add_argument("--out", help="where to write (default: <folder>/report)")
    args = parser.parse_args(argv)
    folder = args.folder or newest_output()
    if folder is None:
        print("tsdyn.report: no folder given and no run under outputs/runs or outputs/multiruns", file=sys.stderr)
        return 2
    try:
        path = write_report(folder, args.out)
    except FileNotFoundError as err:
        print(f"tsdyn.report: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"written: {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
