"""Reading run folders back (``tsdyn.report``, notebooks): the artifacts of the run-folder contract
(``metrics.jsonl``, ``summary.json``, ``arrays/<name>_epochNNN.npz``, ``.hydra/``), no W&B needed.

Per-student values: a run with E > 1 students logs ``<key>/s<i>`` beside the mean ``<key>``; every
accessor here returns one value per student (``[E]``), so that aggregates over seeds can pool the
students of a run with the students of other runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from tsdyn import keys
from tsdyn.runfolder.paths import ANALYSIS, HYDRA, METRICS, SUMMARY, array_epochs, arrays_file, is_run_folder

SEED_KEY = re.compile(r"(^|\.)seed$")  # a config key, not a metric key
# config keys that change how a run runs, not what it computes (a different accelerator changes
# float rounding only): a resumed run accepts them, the report's groups ignore them
RUN_ONLY_KEYS = ("threads", "trainer.enable_progress_bar", "trainer.accelerator", "trainer.devices")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run folder's metrics file (a torn last line from a crash is skipped)."""
    rows = []
    path = Path(run_dir) / METRICS
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def epoch_values(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row's per-epoch values: ``step``, ``epoch`` and the per-step keys left out."""
    return {k: v for k, v in row.items() if k not in ("step", "epoch") and keys.base_key(k) not in keys.STEP_KEYS}


def split_override(line: str) -> tuple[str, str]:
    """``"student.width_mult=5"`` -> ``("student.width_mult", "5")`` (a leading ``+``/``++``/``~`` is dropped)."""
    key, _, value = line.partition("=")
    return key.lstrip("+~"), value


@dataclass
class RunFolder:
    """One run folder (``cfg.run_dir``)."""

    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    _arrays: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> "RunFolder":
        path = Path(path)
        file = path / HYDRA / "overrides.yaml"
        lines = yaml.safe_load(file.read_text()) or [] if file.exists() else []
        return cls(path, dict(split_override(str(line)) for line in lines))

    @cached_property
    def summary(self) -> dict[str, Any]:
        file = self.path / SUMMARY
        return json.loads(file.read_text()) if file.exists() else {}

    @cached_property
    def analysis(self) -> dict[str, Any]:
        """``analysis.json``: one section per analysis, end-of-run results."""
        file = self.path / ANALYSIS
        return json.loads(file.read_text()) if file.exists() else {}

    def report_keys(self) -> set[str]:
        """The keys the run's analyses list for the report's table (``report`` of each section)."""
        return {k for section in self.analysis.values() if isinstance(section, dict) for k in section.get("report", [])}

    @property
    def status(self) -> str:
        """``completed``, ``diverged``, ``failed``, ``interrupted`` ... or ``unfinished`` (no summary)."""
        return self.summary.get("status", "unfinished")

    @cached_property
    def config(self) -> dict[str, Any]:
        """The job's composed config (``.hydra/config.yaml``), unresolved interpolations left as text."""
        file = self.path / HYDRA / "config.yaml"
        return OmegaConf.to_container(OmegaConf.load(file), resolve=False) if file.exists() else {}

    def config_value(self, key: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    @cached_property
    def num_students(self) -> int:
        return int(self.config_value("student.num_students", 1) or 1)

    def members(self, row: dict[str, Any], key: str) -> np.ndarray | None:
        """The per-student values ``[E]`` of ``key`` in a metrics row or the summary's ``final``
        (None where the key is absent; a null value reads NaN)."""
        if keys.member_key(key, 0) in row:
            values = [row.get(keys.member_key(key, i)) for i in range(self.num_students)]
        elif key in row:
            values = [row[key]]
        else:
            return None
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    @cached_property
    def end(self) -> dict[str, Any]:
        """The run's values at its end: ``summary.json``'s ``final``; for a run without them (still
        training, or stopped by a signal) the last logged value of each per-epoch key."""
        if "final" in self.summary:
            return self.summary["final"]
        last: dict[str, Any] = {}
        for row in self.rows:
            last.update(epoch_values(row))
        return last

    @cached_property
    def epochs_done(self) -> int | None:
        """The epochs the run trained: ``summary.json``'s for a completed run; otherwise the last epoch
        with per-epoch values (epoch 0: the initialisation alone; None: no values yet)."""
        if self.status == "completed":
            return self.summary.get("epochs")
        return max((int(row["epoch"]) for row in self.rows if epoch_values(row)), default=None)

    def final(self, key: str) -> np.ndarray | None:
        """Per-student values ``[E]`` of ``key`` at the end of the run (:attr:`end`)."""
        return self.members(self.end, key)

    def series(self, key: str) -> dict[int, np.ndarray]:
        """``{epoch: [E]}`` for every epoch a row holds ``key`` (the last such row of each epoch)."""
        out = {}
        for row in self.rows:
            values = self.members(row, key)
            if values is not None:
                out[int(row["epoch"])] = values
        return out

    def keys(self) -> set[str]:
        """Every scalar key of the run's values at its end (:attr:`end`), per-student suffixes dropped."""
        return {keys.base_key(k) for k in self.end}

    def array_epochs(self, name: str) -> list[int]:
        """Epochs with an ``arrays/<name>_epochNNN.npz`` file, ascending."""
        return array_epochs(self.path, name)

    def arrays(self, name: str, epoch: int) -> dict[str, np.ndarray]:
        """Every array of ``arrays/<name>_epoch<epoch>.npz`` (leading student axis E); read once."""
        if (name, epoch) not in self._arrays:
            with np.load(arrays_file(self.path, name, epoch)) as data:
                self._arrays[name, epoch] = {k: data[k] for k in data.files}
        return self._arrays[name, epoch]

    def group_key(self) -> tuple[tuple[str, str], ...]:
        """The run's overrides without the seed keys (``student.seed``, ``data.seed`` ...) and the
        :data:`RUN_ONLY_KEYS`: runs that differ in these only are trials of one setting."""
        return tuple(sorted((k, v) for k, v in self.overrides.items()
                            if not SEED_KEY.search(k) and k not in (*RUN_ONLY_KEYS, "resume")))


def find_runs(folder: str | Path) -> list[RunFolder]:
    """The run folders in ``folder``: itself if it is one, else every folder below it holding a
    ``.hydra`` folder or a ``summary.json`` (a multirun's jobs), in job order."""
    folder = Path(folder)
    if is_run_folder(folder):
        return [RunFolder.load(folder)]
    found = {p.parent for p in folder.rglob(HYDRA) if p.is_dir()}
    found |= {p.parent for p in folder.rglob(SUMMARY)}
    found = {p for p in found if "wandb" not in p.relative_to(folder).parts}

    def order(p: Path):
        return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in p.relative_to(folder).parts)
    return [RunFolder.load(p) for p in sorted(found, key=order)]


def newest_output(root: str | Path = "outputs") -> Path | None:
    """The newest run or multirun folder, ``<root>/runs/<date>/<time>`` or
    ``<root>/multiruns/<date>/<time>`` (both named by their start time), or None."""
    candidates = [p for kind in ("runs", "multiruns") for p in (Path(root) / kind).glob("*/*") if p.is_dir()]
    return max(candidates, key=lambda p: (p.parent.name, p.name)) if candidates else None
