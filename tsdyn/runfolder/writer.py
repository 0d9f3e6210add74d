"""The one place that writes results: every Lightning logger, the run folder's metrics file,
per-epoch arrays and the summary. Keys are the same everywhere (e.g. ``match/layer0/mean_best``).

Every row reaches every logger through Lightning's logger API (``Logger.log_metrics``) at the
optimizer step, with its ``epoch`` attached, as Lightning's own logging does; an epoch's values
(ensemble means) also go into ``trainer.callback_metrics`` (as ``LightningModule.log`` would put them), where
``EarlyStopping`` and ``ModelCheckpoint(monitor=...)`` find them. In W&B a per-epoch key is plotted
against ``epoch`` (``define_metric``), the training loss against the step.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import Tensor

from tsdyn import keys
from tsdyn.runfolder.paths import ANALYSIS, ARRAYS, METRICS, SUMMARY, arrays_file
from tsdyn.runfolder.reader import read_metrics

if TYPE_CHECKING:  # Lightning itself loads with a trainer: teacher pre-training writes run folders without it
    from pytorch_lightning.loggers import WandbLogger


def member_scalars(values: Mapping[str, Tensor]) -> dict[str, float]:
    """Per-member values ``{key: [E]}`` -> flat scalars. With one member: ``{key: v}``; with E > 1:
    the mean under ``key`` plus ``key/min``, ``key/max`` and ``key/s<i>`` for each student.
    Keys may differ in E (e.g. a student's and the teacher's values). All values come to the host
    in one transfer."""
    if not values:
        return {}
    names = list(values)
    flat = [values[k].detach().float().reshape(-1) for k in names]
    rows = np.split(torch.cat(flat).cpu().numpy(), np.cumsum([len(v) for v in flat])[:-1])
    out: dict[str, float] = {}
    for key, row in zip(names, rows):
        if row.size == 1:
            out[key] = float(row[0])
            continue
        finite = row[np.isfinite(row)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
        out[keys.stat_key(key, "min")] = float(finite.min()) if finite.size else float("nan")
        out[keys.stat_key(key, "max")] = float(finite.max()) if finite.size else float("nan")
        out.update({keys.member_key(key, i): float(v) for i, v in enumerate(row)})
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


class Recorder:
    """Writes to ``run_dir`` (``metrics.jsonl``, ``arrays/``, ``summary.json``, ``analysis.json``)
    and to the trainer's loggers. ``run_dir=None`` writes to the loggers only (tests, benchmarks)."""

    def __init__(self, run_dir: str | Path | None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.last: dict[str, float] = {}
        self.analysis: dict[str, Any] = {}
        self._epoch_axis: set[tuple[int, str]] = set()  # (W&B logger, key) plotted against the epoch
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def log(self, trainer, metrics: Mapping[str, float], epoch: int, step: int | None = None,
            monitor: bool = True) -> None:
        """One row: appended to the metrics file and sent to every logger with ``epoch`` attached,
        at ``step`` (default ``trainer.global_step``). An epoch's row (no ``step`` given) is plotted
        against the epoch in W&B, and with ``monitor`` its ensemble means (keys without a
        per-student suffix) go to ``trainer.callback_metrics`` (as 0-d tensors, as ``LightningModule.log``
        leaves them; the end-of-run rows pass ``monitor=False``)."""
        per_epoch = step is None
        if step is None:
            step = int(trainer.global_step) if trainer is not None else 0
        metrics = dict(metrics)
        self.last.update(metrics)
        if self.run_dir is not None:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(_json_safe({"step": step, "epoch": epoch, **metrics})) + "\n")
        if trainer is None:
            return
        wandb_loggers = self.media_loggers(trainer) if per_epoch else []
        for logger in trainer.loggers:
            if logger in wandb_loggers:
                self._epoch_x_axis(logger, metrics)
            logger.log_metrics({**metrics, "epoch": epoch}, step=step)
        if per_epoch and monitor:  # the dict Lightning's monitors read; LightningModule.log costs ~1 ms a key
            trainer.callback_metrics.update({key: torch.tensor(float(value), dtype=torch.get_default_dtype())
                                             for key, value in metrics.items() if keys.base_key(key) == key})

    def _epoch_x_axis(self, logger: WandbLogger, metrics: Mapping[str, float]) -> None:
        """W&B: plot the per-epoch keys of ``metrics`` against ``epoch`` (declared once per key)."""
        experiment = logger.experiment
        if not hasattr(experiment, "define_metric"):
            return
        for key in metrics:
            if (id(logger), key) not in self._epoch_axis:
                experiment.define_metric(key, step_metric="epoch")
                self._epoch_axis.add((id(logger), key))

    def metrics_bytes(self) -> int:
        """Size of the metrics file so far: a checkpoint records it for :meth:`rewind`."""
        path = self.run_dir / METRICS if self.run_dir is not None else None
        return path.stat().st_size if path is not None and path.exists() else 0

    def arrays_files(self) -> list[str]:
        """The names of the files in ``arrays/`` so far: a checkpoint records them for :meth:`rewind`."""
        folder = self.run_dir / ARRAYS if self.run_dir is not None else None
        return sorted(p.name for p in folder.glob("*.npz")) if folder is not None and folder.is_dir() else []

    def rewind(self, nbytes: int, arrays: list[str] | None = None) -> None:
        """Resuming from a checkpoint: cut the metrics file back to the ``nbytes`` it had then (the
        rows after it, a torn last line included, are written again), remove the array files that
        were not among its ``arrays`` (None: keep them all), and take ``last`` from the rows kept."""
        if self.run_dir is None:
            return
        path = self.run_dir / METRICS
        if path.exists():
            with open(path, "r+b") as f:
                f.truncate(nbytes)
        if arrays is not None:
            for name in set(self.arrays_files()) - set(arrays):
                (self.run_dir / ARRAYS / name).unlink()
        self.last = {}
        for row in read_metrics(self.run_dir):
            self.last.update({k: math.nan if v is None else v for k, v in row.items() if k not in ("step", "epoch")})

    def log_members(self, trainer, values: Mapping[str, Tensor], epoch: int,
                    step: int | None = None, monitor: bool = True) -> dict[str, float]:
        """Per-student tensors ``{key: [E]}``, logged via :func:`member_scalars`; returns the row."""
        row = member_scalars(values)
        self.log(trainer, row, epoch, step, monitor)
        return row

    def save_arrays(self, name: str, epoch: int, arrays: Mapping[str, Tensor | np.ndarray]) -> Path | None:
        """Matrices and per-node vectors of one epoch: ``arrays/<name>_epoch<NNN>.npz`` (compressed)."""
        if self.run_dir is None:
            return None
        path = arrays_file(self.run_dir, name, epoch)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, **{k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v
                                    for k, v in arrays.items()})
        os.replace(tmp, path)
        return path

    def write_json(self, name: str, content: Mapping[str, Any]) -> None:
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / name, json.dumps(_json_safe(dict(content)), indent=2) + "\n")

    def write_analysis(self, section: str, content: Mapping[str, Any]) -> None:
        """One section of ``analysis.json`` (end-of-run results: ``luck``, ``fanout``, ...), kept
        beside the sections written before."""
        self.analysis[section] = dict(content)
        self.write_json(ANALYSIS, self.analysis)

    @staticmethod
    def media_loggers(trainer) -> list[WandbLogger]:
        """The trainer's loggers that take images, histograms and tables (W&B)."""
        from pytorch_lightning.loggers import WandbLogger

        return [lg for lg in (trainer.loggers if trainer is not None else []) if isinstance(lg, WandbLogger)]

    def log_media(self, trainer, images: Mapping[str, np.ndarray] | None = None,
                  histograms: Mapping[str, np.ndarray] | None = None,
                  tables: Mapping[str, tuple[list[str], list[list]]] | None = None) -> None:
        """Images (``[H, W, 3|4]`` uint8), histograms (arrays of values; non-finite ones dropped) and
        tables (``(columns, rows)``) to every W&B logger at ``trainer.global_step``. Other loggers
        and the run folder take no media: the saved arrays redraw them."""
        loggers = self.media_loggers(trainer)
        if not loggers:
            return
        import wandb
        media = {k: wandb.Image(v) for k, v in (images or {}).items()}
        media.update({k: wandb.Histogram(np.asarray(v)[np.isfinite(v)]) for k, v in (histograms or {}).items()})
        media.update({k: wandb.Table(columns=list(cols), data=rows) for k, (cols, rows) in (tables or {}).items()})
        for logger in loggers:
            logger.log_metrics(media, step=int(trainer.global_step))

    def write_summary(self, trainer, summary: Mapping[str, Any]) -> None:
        """``summary.json`` (atomic) and each logger's run summary (W&B's ``run.summary``), which
        holds the last value of every logged key already: ``final`` is not added to it a second time."""
        self.write_json(SUMMARY, summary)
        for logger in (trainer.loggers if trainer is not None else []):
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "summary"):
                experiment.summary.update(_json_safe({k: v for k, v in summary.items() if k != "final"}))
