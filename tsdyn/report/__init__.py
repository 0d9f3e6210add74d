"""``python -m tsdyn.report [run or multirun folder]``: the paper's figures and a summary table from
run folders alone (no W&B), written to ``<folder>/report/``.

Runs are grouped by their overridden keys, seed keys left out (runs that differ only in seeds are
trials of one setting). Every value is aggregated over the completed runs of a group *and* over the
students inside each run (``student.num_students``; per-student keys ``<key>/s<i>``): the mean, and
in the figures a band of +- one standard deviation (``--band minmax``: min to max), in the tables
[min, max]. Runs that diverged or failed are listed, never averaged in. ``--unfinished`` also
counts runs still training or stopped by a signal, at their last evaluated epoch (a study's
progress, drawn while it runs). Layer 0 is the lowest hidden layer in every figure and table.
Figures are drawn for a paper (:mod:`tsdyn.report.figures`); what each figure shows and how is said
in its caption in ``report.md``. Figures, each skipped with a note in the table when the runs lack
its data:

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

``--figures curves,width`` draws only the figures named (``--figures none``: ``report.md`` alone).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

BANDS = {"sd": "+- one standard deviation", "minmax": "min to max"}   # --band: the figures' bands
# the report's API, imported when first used: numpy, torch and matplotlib load after --help has answered
_LAZY = {"band": "aggregate", "group_runs": "aggregate", "DPI": "figures", "FIGURES": "figures",
         "STYLE": "figures", "top_sorted": "figures"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


def write_report(folder: str | Path, out: str | Path | None = None, spread: str = "sd",
                 figures: list[str] | None = None, unfinished: bool = False) -> Path:
    """Figures and ``report.md`` for the runs in ``folder`` into ``out`` (default ``<folder>/report``),
    the figures' bands ``spread`` (``sd`` or ``minmax``, see :func:`band`); ``figures``: the names
    to draw (default: every figure of ``FIGURES``; ``[]``: report.md alone); ``unfinished``: count
    runs still training or stopped by a signal too, at their last evaluated epoch. Returns the path
    of ``report.md``."""
    from matplotlib import rc_context

    from tsdyn.report.aggregate import COMPLETED, WITH_UNFINISHED, group_runs
    from tsdyn.report.figures import DPI, FIGURES, STYLE
    from tsdyn.report.markdown import markdown
    from tsdyn.runfolder.reader import find_runs

    wanted = set(FIGURES if figures is None else figure_names(figures))
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"no run folders in {folder} (a run folder holds .hydra/ or summary.json)")
    out = Path(out) if out is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs, WITH_UNFINISHED if unfinished else COMPLETED)
    written, skipped = [], {}
    for name, (_, make) in FIGURES.items():
        if name not in wanted:
            continue
        with rc_context(STYLE):
            fig, reason = make(groups, spread)
            if fig is None:
                skipped[name] = reason
                continue
            for ext in ("png", "pdf"):   # the constrained layout keeps every label inside the figure
                fig.savefig(out / f"{name}.{ext}", dpi=DPI)
                fig.set_layout_engine("none")  # the layout the first file solved, kept for the second
        written.append(name)
    path = out / "report.md"
    left_out = [name for name in FIGURES if name not in wanted]
    path.write_text(markdown(folder, groups, written, skipped, spread, left_out))
    return path


def figure_names(value: str | list[str]) -> list[str]:
    """The figures to draw: ``all``, ``none``, names of ``FIGURES`` comma-separated (``--figures``)
    or as a list; a name that is not a figure raises ``ValueError``."""
    from tsdyn.report.figures import FIGURES

    if isinstance(value, str):
        value = {"all": list(FIGURES), "none": []}.get(value, [n.strip() for n in value.split(",")])
    unknown = [n for n in value if n not in FIGURES]
    if unknown:
        raise ValueError(f"--figures: {', '.join(map(repr, unknown))} is not a figure; expected all, none or "
                         f"names from {', '.join(FIGURES)}")
    return list(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tsdyn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="a run or multirun folder (default: the newest run or "
                                                  "multirun under outputs/)")
    parser.add_argument("--out", help="where to write (default: <folder>/report)")
    parser.add_argument("--band", choices=list(BANDS), default="sd",
                        help="the figures' bands around the mean over seeds and students (default: sd)")
    parser.add_argument("--figures", default="all", metavar="NAMES",
                        help="the figures to draw: all (default), none (report.md alone) or names, "
                             "comma-separated (e.g. curves,width)")
    parser.add_argument("--unfinished", action="store_true",
                        help="also count runs still training or stopped by a signal, at their last "
                             "evaluated epoch (default: completed runs only)")
    args = parser.parse_args(argv)
    try:
        figures = figure_names(args.figures)
    except ValueError as err:
        parser.error(str(err))
    from tsdyn.runfolder.reader import newest_output

    folder = args.folder or newest_output()
    if folder is None:
        print("tsdyn.report: no folder given and no run under outputs/runs or outputs/multiruns", file=sys.stderr)
        return 2
    try:
        path = write_report(folder, args.out, args.band, figures, args.unfinished)
    except FileNotFoundError as err:
        print(f"tsdyn.report: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"written: {path.parent}")
    return 0
