"""The notebook API: a run folder, or every job of a multirun, as Python objects and pandas tables.

``from tsdyn import load_run, load_runs`` (imported lazily: ``import tsdyn`` stays light)::

    run = load_run("outputs/runs/<date>/<time>")
    run.config                     # the run's config (OmegaConf), run_dir set to the folder
    run.metrics                    # per-epoch values: one row per epoch (0 = initialisation)
    run.teacher, run.students      # the nets of checkpoints/last.ckpt; students: one net per member
    run.arrays("fanout", epoch=5)  # arrays/fanout_epoch005.npz as {name: array}
    snap = run.snapshot()          # hidden activations and correlations on the run's eval inputs
    snap.corr[0]                   # layer 0's teacher x student correlations [E, K_t, K_s]

    runs = load_runs("outputs/multiruns/<date>/<time>")  # one row per job and epoch

Everything read from files goes through :mod:`tsdyn.runfolder.reader` (the report's reader); jobs
are grouped as the report groups them (:func:`tsdyn.report.aggregate.group_runs`); activations and
correlations come from the nets' ``forward`` and :func:`tsdyn.metrics.matching.correlation`, as
during training (:class:`tsdyn.snapshot.Snapshot`).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from tsdyn import keys
from tsdyn.build import build_teacher
from tsdyn.nets import EnsembleNet, per_student_loss
from tsdyn.report.aggregate import group_runs
from tsdyn.runfolder.paths import HYDRA, array_names, is_run_folder, last_checkpoint
from tsdyn.runfolder.reader import RunFolder, epoch_values, find_runs
from tsdyn.snapshot import Snapshot


def epoch_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The per-epoch values of metrics rows (:attr:`RunFolder.rows`): index ``epoch`` (completed
    epochs, 0 = initialisation), a column ``step`` (the optimizer step the epoch's values were
    logged at) and one column per key (ensemble runs: the mean ``<key>``, ``<key>/min``,
    ``<key>/max`` and ``<key>/s<i>``), each the last value logged for that epoch (as
    :meth:`RunFolder.series`); a missing or null value is NaN. The per-step keys
    (:data:`tsdyn.keys.STEP_KEYS`, tagged with the epoch *under way*) are left out: :func:`step_table`."""
    per_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        if values := epoch_values(row):
            per_epoch.setdefault(int(row["epoch"]), {}).update(step=row["step"], **values)
    table = pd.DataFrame.from_dict(per_epoch, orient="index", dtype=float)
    table = table[sorted(table.columns, key=lambda k: (k != "step", keys.sort_key(k)))] if len(table) else table
    table.index.name = "epoch"
    return table.astype({"step": int}).sort_index() if len(table) else table


def step_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The per-step values of metrics rows (:data:`tsdyn.keys.STEP_KEYS`: the training loss, the
    mean over the steps since the previous row): index ``step``, a column ``epoch`` (the epoch under
    way, 0-based) and one column per key."""
    picked = [{k: v for k, v in row.items() if k in ("step", "epoch") or keys.base_key(k) in keys.STEP_KEYS}
              for row in rows if any(keys.base_key(k) in keys.STEP_KEYS for k in row)]
    table = pd.DataFrame(picked, dtype=float)
    return table.astype({"step": int, "epoch": int}).set_index("step") if len(table) else table


def override_value(key: str, text: str) -> Any:
    """An override's value, typed as Hydra reads it (``"5"`` -> 5, ``"1e-3"`` -> 0.001, ``"conv"`` -> ``"conv"``)."""
    try:
        return OverridesParser.create().parse_overrides([f"{key}={text}"])[0].value()
    except OverrideParseException:
        return text


class Run:
    """One run folder (:func:`load_run`). The nets are read from ``checkpoints/last.ckpt`` (the end
    of the last completed epoch, or where a signal stopped the run), everything else from the
    folder's files; each is read once, on first use."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.path = folder.path

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, epochs={self.summary.get('epochs')})"

    # ------------------------------------------------------------------ files
    @cached_property
    def config(self) -> DictConfig:
        """The run's composed config (``.hydra/config.yaml``), ``run_dir`` set to this folder (Hydra
        stores it as ``${hydra:...}``, which resolves only inside Hydra)."""
        file = self.path / HYDRA / "config.yaml"
        if not file.exists():
            raise FileNotFoundError(f"{file}: missing (the run's config, written by python -m tsdyn.train)")
        cfg = OmegaConf.load(file)
        with open_dict(cfg):
            cfg.run_dir = str(self.path)
        return cfg

    @property
    def overrides(self) -> dict[str, str]:
        """The command line's overrides (``.hydra/overrides.yaml``): ``{"student.width_mult": "5"}``."""
        return self.folder.overrides

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: ``status``, ``epochs``, ``steps``, ``wall_time_s``, ``final`` values ..."""
        return self.folder.summary

    @property
    def status(self) -> str:
        """``completed``, ``diverged``, ``failed``, ``interrupted``, or ``unfinished`` (no summary)."""
        return self.folder.status

    @property
    def analysis(self) -> dict[str, Any]:
        """``analysis.json``: the end-of-run results, one section per analysis (``luck``, ``fanout`` ...)."""
        return self.folder.analysis

    @property
    def num_students(self) -> int:
        return self.folder.num_students

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """One row per epoch (0 = initialisation), one column per per-epoch key: :func:`epoch_table`."""
        return epoch_table(self.folder.rows)

    @cached_property
    def steps(self) -> pd.DataFrame:
        """The training loss per logged optimizer step: :func:`step_table`."""
        return step_table(self.folder.rows)

    def array_names(self) -> list[str]:
        """The analyses with saved arrays (``arrays/<name>_epochNNN.npz``): ``["drift", "fanout", ...]``."""
        return array_names(self.path)

    def array_epochs(self, name: str) -> list[int]:
        """The epochs with saved arrays of analysis ``name``, ascending."""
        return self.folder.array_epochs(name)

    def arrays(self, name: str, epoch: int | None = None) -> dict:
        """Analysis ``name``'s saved arrays: at ``epoch``, ``{array name: array}`` (e.g.
        ``fanout_layer0`` ``[E, K_s]``; every array has the student axis E first); without
        ``epoch``, ``{epoch: {array name: array}}`` for every saved epoch. Per-layer arrays are named
        ``<name>_layer<l>`` (:func:`tsdyn.keys.array_key`)."""
        epochs = self.array_epochs(name)
        if not epochs:
            saved = ", ".join(self.array_names()) or "none"
            raise FileNotFoundError(f"{self.path}: no arrays/{name}_epochNNN.npz; saved: {saved}")
        if epoch is None:
            return {e: self.folder.arrays(name, e) for e in epochs}
        if epoch not in epochs:
            raise FileNotFoundError(f"{self.path}: no arrays/{name}_epoch{epoch:03d}.npz; epochs saved: {epochs}")
        return self.folder.arrays(name, epoch)

    # ------------------------------------------------------------------ nets
    @cached_property
    def checkpoint(self) -> dict[str, Any]:
        """``checkpoints/last.ckpt`` (tensors only, on the CPU)."""
        path = last_checkpoint(self.path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (the checkpoint callback was off, or the run stopped in "
                                    f"its first epoch)")
        return torch.load(path, map_location="cpu", weights_only=True)

    @property
    def checkpoint_epoch(self) -> int:
        """Completed epochs when the checkpoint was written (fewer than ``summary["epochs"]`` only
        when a signal stopped the run inside an epoch)."""
        ckpt = self.checkpoint
        return int(ckpt["epoch"]) + (0 if ckpt["tsdyn"]["in_epoch"] else 1)

    def _net(self, net: EnsembleNet, prefix: str) -> EnsembleNet:
        state = {k[len(prefix):]: v for k, v in self.checkpoint["state_dict"].items() if k.startswith(prefix)}
        net.load_state_dict(state)
        net.requires_grad_(False)
        return net.eval()

    @cached_property
    def data(self):
        """The run's data source (``cfg.data``), e.g. for :meth:`eval_inputs`; image data reads its
        files from ``data.root`` (relative to the working directory, as in the run)."""
        return instantiate(self.config.data)

    @cached_property
    def teacher(self) -> EnsembleNet:
        """The frozen teacher (one member, eval mode), its weights and BatchNorm state from the
        checkpoint; built as the run built it (:func:`tsdyn.build.build_teacher`: ``teacher=pretrained``
        needs its teacher file still in place)."""
        return self._net(build_teacher(self.config, self.data), "teacher.")

    @cached_property
    def student(self) -> EnsembleNet:
        """The student ensemble (E = ``student.num_students`` members, eval mode) from the checkpoint."""
        return self._net(instantiate(self.config.student)(self.teacher), "student.")

    @cached_property
    def students(self) -> list[EnsembleNet]:
        """Each student of the ensemble as its own one-member net (:meth:`EnsembleNet.member`)."""
        return [self.student.member(i).requires_grad_(False).eval() for i in range(self.student.num_members)]

    def eval_inputs(self) -> Tensor:
        """The run's evaluation inputs (the ones node matching used), ``[n_eval, ...]`` on the CPU."""
        return self.data.eval_inputs(self.teacher.d, "cpu")

    @torch.no_grad()
    def snapshot(self, x: Tensor | None = None) -> Snapshot:
        """Teacher and students on inputs ``x`` ``[N, ...]`` (default :meth:`eval_inputs`), in eval
        mode: ``teacher_hidden[l]`` ``[N, K_t]``, ``student_hidden[l]`` ``[E, N, K_s]`` (conv: maps
        ``[..., K, H, W]``), ``eval_loss`` ``[E]`` (the run's loss to the teacher's outputs) and
        ``corr[l]`` ``[E, K_t, K_s]``, the Pearson correlation of every teacher node with every
        student node (dead teacher rows NaN; :func:`tsdyn.metrics.matching.correlation`)."""
        x = self.eval_inputs() if x is None else x
        y, teacher_hidden = self.teacher(x)
        out, student_hidden = self.student(x)
        return Snapshot(self.checkpoint_epoch, int(self.checkpoint["global_step"]), student_hidden,
                        [h[0] for h in teacher_hidden], per_student_loss(out, y[0], self.config.loss))


def load_run(folder: str | Path) -> Run:
    """A run folder (``outputs/runs/<date>/<time>``, or one job of a multirun) as a :class:`Run`."""
    folder = Path(folder)
    if not is_run_folder(folder):
        raise FileNotFoundError(f"{folder}: not a run folder (it holds neither .hydra/ nor summary.json)")
    return Run(RunFolder.load(folder))


def load_runs(folder: str | Path) -> pd.DataFrame:
    """Every run below ``folder`` (a multirun folder; a run folder gives its one run) as one table,
    one row per run and epoch: columns ``job`` (the run's folder relative to ``folder``), ``group``
    (its setting, labelled as in the report: the non-seed overrides that differ between runs),
    one column per overridden key (its value, typed: 5, 0.1, "conv"; missing where a run lacks it),
    ``status``, ``epoch``, then the run's :attr:`Run.metrics` columns. Runs that diverged or failed
    are kept (filter on ``status``); a run without metrics gives no row."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(f"{folder}: no run folders in it (a run folder holds .hydra/ or summary.json)")
    label = {id(run): group.label for group in group_runs(runs) for run in group.runs}
    override_keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    tables = []
    for run in runs:
        table = epoch_table(run.rows).reset_index()
        ids = {"job": run.path.relative_to(folder).as_posix(), "group": label[id(run)],
               **{k: override_value(k, run.overrides[k]) if k in run.overrides else np.nan for k in override_keys},
               "status": run.status}
        tables.append(pd.concat([pd.DataFrame([ids] * len(table)), table], axis=1))
    return pd.concat(tables, ignore_index=True)
