"""The report's ``report.md``: final values per group, the analyses' end-of-run values, who wins
among teacher-initialised students, runs left out, figures written (with their captions) and skipped."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tsdyn import keys
from tsdyn.report import BANDS
from tsdyn.report.aggregate import (COMPLETED, LAYER_NOTE, Group, band, final_band, layers_of, specialization_rows,
                                    teacher_block_fanout, teacher_block_wins)
from tsdyn.report.figures import FIGURES
from tsdyn.runfolder.reader import RunFolder


def fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else (f"{x:.4g}" if x != 0 and (abs(x) < 0.01 or abs(x) >= 1000) else f"{x:.4f}")


def median_cell(values: np.ndarray) -> str:
    """``median [min, max]`` of the finite ``values``, or ``n/a``."""
    v = values[np.isfinite(values)]
    return f"{fmt(float(np.median(v)))} [{fmt(float(v.min()))}, {fmt(float(v.max()))}]" if v.size else "n/a"


def cell(stats: tuple[float, float, float, int]) -> str:
    mean, lo, hi, n = stats
    return "n/a" if n == 0 else (fmt(mean) if n == 1 else f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]")


def epochs_cell(run: RunFolder) -> str | None:
    """The epochs a run trained: ``"40"``, or ``"12 of 40"`` for a run not finished (None: none)."""
    done = run.epochs_done
    if done is None or run.status == "completed":
        return None if done is None else str(done)
    return f"{done} of {run.config_value('epochs', '?')}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(folder: Path, groups: list[Group], written: list[str], skipped: dict[str, str], spread: str,
             left_out: list[str] = ()) -> str:
    runs = [r for g in groups for r in g.runs]
    by_status: dict[str, int] = {}
    for r in runs:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    done = [r for g in groups for r in g.counted]
    statuses = groups[0].statuses if groups else COMPLETED
    counted = " or ".join([", ".join(statuses[:-1]), statuses[-1]] if len(statuses) > 1 else statuses)
    unfinished = statuses != COMPLETED
    layers = layers_of(done, "match", "mean_best")
    lines = [f"# tsdyn report: {folder}", "",
             f"{len(runs)} runs in {len(groups)} groups (runs that differ only in seed keys form one group); "
             f"status: {', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))}.",
             f"Values: mean [min, max] over the runs of a group counted here ({counted}) and the students of "
             "each run (student.num_students), at the end of training"
             + (" or, for a run not finished, at its last evaluated epoch" if unfinished else "")
             + f". {LAYER_NOTE.capitalize()}.", "", "## Final values", ""]
    header = ["group", "runs (counted/all)", "students", "epochs", "eval loss",
              *[f"layer {layer} mean best" for layer in layers]]
    rows = []
    for g in groups:
        epochs = sorted({epochs_cell(r) for r in g.counted} - {None})
        rows.append([g.label, f"{len(g.counted)}/{len(g.runs)}", str(sum(r.num_students for r in g.counted)),
                     ",".join(epochs) or "-", cell(final_band(g, "loss/eval")),
                     *[cell(final_band(g, keys.layer_key("match", layer, "mean_best"))) for layer in layers]])
    lines += table(header, rows)

    shown = sorted({k for r in done for k in r.report_keys()}, key=keys.sort_key)
    if shown:
        lines += ["", "## Analyses (end of training)", ""]
        rows = [[k, *[cell(final_band(g, k)) for g in groups]] for k in shown]
        lines += table(["key", *[g.label for g in groups]], [r for r in rows if set(r[1:]) != {"n/a"}])

    perturbed = [g for g in groups
                 if g.counted and g.counted[0].config_value("student.init", "default") != "default"]
    wins = {g.label: [teacher_block_wins(r) for r in g.counted] for g in perturbed}
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
            fans = [teacher_block_fanout(r) for r in g.counted]
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

    def name(r: RunFolder) -> str:
        return str(r.path.relative_to(folder) if r.path != folder else r.path)

    open_runs = [r for r in done if r.status != "completed"]
    if open_runs:
        lines += ["", "## Runs not finished (counted at their last evaluated epoch)", ""]
        lines += table(["run", "status", "epochs"], [[name(r), r.status, epochs_cell(r) or "-"] for r in open_runs])
    bad = [r for r in runs if r.status not in statuses]
    if bad:
        lines += ["", "## Runs not counted (left out of every value and figure)", ""]
        lines += table(["run", "status", "detail"],
                       [[name(r), r.status,
                         str(r.summary.get("error") or (f"diverged at step {r.summary['diverged_at_step']}"
                                                        if "diverged_at_step" in r.summary else "")).replace("|", "/")]
                        for r in bad])
    lines += ["", "## Figures", ""]
    lines += [f"- `{name}.png` / `{name}.pdf`: "
              + FIGURES[name][0].format(band=BANDS[spread], layers=LAYER_NOTE.capitalize()) for name in written]
    if left_out:
        lines += [f"- not drawn (left out by `--figures`): {', '.join(f'`{name}`' for name in left_out)}"]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"
