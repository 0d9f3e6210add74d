"""Aggregation of run folders for the report: runs grouped by their non-seed overrides, values
pooled over the counted runs of a group (the completed ones; with ``--unfinished`` also those still
training or stopped, at their last evaluated epoch) and the students of each run (mean and a band:
+- one standard deviation or min to max)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from matplotlib import colormaps

from tsdyn import keys
from tsdyn.metrics.matching import recovery_rate
from tsdyn.runfolder.reader import RunFolder

LAYER_NOTE = "layer 0 = lowest hidden layer"
COMPLETED = ("completed",)                                   # the statuses whose runs a report counts
WITH_UNFINISHED = ("completed", "unfinished", "interrupted")  # --unfinished: also runs still training or stopped
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]  # Okabe-Ito


@dataclass
class Group:
    """Runs that differ only in seed keys; ``values``: the keys that differ between groups and
    their values in this one."""

    values: dict[str, str]
    runs: list[RunFolder]
    color: str | tuple
    statuses: tuple[str, ...] = COMPLETED

    @property
    def label(self) -> str:
        return value_label(self.values)

    @property
    def counted(self) -> list[RunFolder]:
        """The runs whose values the report shows: those with one of ``statuses``."""
        return [r for r in self.runs if r.status in self.statuses]


def value_label(values: dict[str, str]) -> str:
    """``{"student.width_mult": "5", "teacher.d_out": "20"}`` -> ``"width_mult 5, d_out 20"``: each
    key by its last part, or in full where two keys share that part; a value that sets several keys
    of a group (``{"student": "{init:perturb,perturb_std:0.1}"}``) by its entries (``"init perturb,
    perturb_std 0.1"``); ``"all runs"`` when empty."""
    values = {k: v for key, value in values.items() for k, v in override_entries(key, value).items()}
    last = [k.rsplit(".", 1)[-1] for k in values]
    return ", ".join(f"{k if last.count(short) > 1 else short} {v}"
                     for (k, v), short in zip(values.items(), last)) or "all runs"


def override_entries(key: str, value: str) -> dict[str, str]:
    """``("student", "{init:perturb,perturb_std:0.1}")`` -> ``{"student.init": "perturb",
    "student.perturb_std": "0.1"}`` (Hydra's dict-valued override, parsed by Hydra's own grammar);
    any other value as it is, ``{key: value}``."""
    if not (value.startswith("{") and value.endswith("}")):
        return {key: value}
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    return {f"{key}.{k}": str(v) for k, v in parsed.items()}


def colors(n: int) -> list:
    """``n`` colour-blind-safe colours: the Okabe-Ito palette, or viridis steps beyond 8."""
    return PALETTE[:n] if n <= len(PALETTE) else [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def group_runs(runs: list[RunFolder], statuses: tuple[str, ...] = COMPLETED) -> list[Group]:
    """Groups in order of first appearance, labelled with the non-seed keys whose values differ;
    each counts its runs with one of ``statuses``."""
    settings = [dict(r.group_key()) for r in runs]
    names = sorted({k for key in settings for k in key})
    varying = [k for k in names if len({key.get(k) for key in settings}) > 1]
    by_key: dict[tuple, list[RunFolder]] = {}
    for run, key in zip(runs, settings):
        by_key.setdefault(tuple(key.get(k) for k in varying), []).append(run)
    return [Group({k: v for k, v in zip(varying, values) if v is not None}, members, color, statuses)
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
    """Final value of ``key`` over the group's counted runs and their students."""
    return band((v for r in group.counted if (v := r.final(key)) is not None), spread)


def series_band(group: Group, key: str, spread: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` per epoch over the group's counted runs and students: (epochs ``[T]``,
    ``[T, 3]`` mean / low / high, see :func:`band`)."""
    per_epoch: dict[int, list[np.ndarray]] = {}
    for run in group.counted:
        for epoch, values in run.series(key).items():
            per_epoch.setdefault(epoch, []).append(values)
    epochs = sorted(per_epoch)
    return np.array(epochs), np.array([band(per_epoch[e], spread)[:3] for e in epochs]).reshape(-1, 3)


def layers_of(runs: Iterable[RunFolder], section: str, name: str) -> list[int]:
    """Hidden layers ``l`` for which some run has the final key ``<section>/layer<l>/<name>``."""
    return keys.layers({k for r in runs for k in r.keys()}, section, name)


def last_arrays(run: RunFolder, name: str) -> dict[str, np.ndarray]:
    """The run's arrays of ``name`` at its last saved epoch."""
    return run.arrays(name, run.array_epochs(name)[-1])


def teacher_block_wins(run: RunFolder) -> dict[int, np.ndarray]:
    """Per layer, per student: the share of live teacher nodes j whose final best student is student
    node j, the one that started at teacher node j (student.init perturb / same_dir / same_sign)."""
    epochs = run.array_epochs("match")
    if not epochs:
        return {}
    arrays = last_arrays(run, "match")
    out = {}
    for layer in keys.array_layers(arrays, "best_student"):
        idx = arrays[keys.array_key("best_student", layer)]                      # [E, K_t], -1 = dead
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
    fans = {layer: arrays[keys.array_key("fanout", layer)] for layer in keys.array_layers(arrays, "fanout")
            if layer < len(ks)}
    return {layer: (fan[:, :ks[layer]].ravel(), fan[:, ks[layer]:].ravel()) for layer, fan in fans.items()}


def specialization_rows(groups: list[Group], threshold: float = 0.95) -> list[list[str]]:
    """Per group and layer: the share of students recovering each teacher node (index order)."""
    rows = []
    for g in groups:
        per_layer: dict[int, list[np.ndarray]] = {}
        for r in g.counted:
            if r.array_epochs("match"):
                arrays = last_arrays(r, "match")
                for layer in keys.array_layers(arrays, "best"):
                    per_layer.setdefault(layer, []).append(arrays[keys.array_key("best", layer)])
        for layer, best in sorted(per_layer.items()):
            rate = recovery_rate(torch.as_tensor(np.concatenate(best)), threshold).numpy()
            rows.append([g.label, str(layer), str(sum(len(b) for b in best)),
                         " ".join("-" if np.isnan(v) else f"{v:.2f}" for v in rate)])
    return rows
