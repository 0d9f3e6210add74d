"""Thin callbacks: decide when to measure, call the pure metric functions, hand results to the
module's recorder. Every measurement reuses the module's evaluation snapshot of that moment."""
from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl

from tsdyn.metrics.matching import best_match, match_summary


def measured_epochs(trainer: pl.Trainer, every_n_epochs: int) -> int | None:
    """Completed epochs if a measurement is due at this epoch end (every N, the last, a stop)."""
    epoch = trainer.current_epoch + 1
    due = epoch % every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0) or trainer.should_stop
    return epoch if due else None


class EpochMeasurement(pl.Callback):
    """Runs :meth:`measure` before training (epoch 0) and after every ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = int(every_n_epochs)

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.current_epoch == 0 and trainer.global_step == 0:
            self.measure(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = measured_epochs(trainer, self.every_n_epochs)
        if epoch is not None:
            self.measure(trainer, pl_module, epoch)

    def measure(self, trainer: pl.Trainer, pl_module, epoch: int) -> None:
        raise NotImplementedError


class NodeMatching(EpochMeasurement):
    """Per hidden layer: each teacher node's best student correlation, summarised
    (``match/layer<l>/mean_best`` ...), plus the best values and indices as arrays."""

    def __init__(self, every_n_epochs: int = 1, thresholds: Sequence[float] = (0.9, 0.95, 0.99)):
        super().__init__(every_n_epochs)
        self.thresholds = tuple(float(t) for t in thresholds)

    def measure(self, trainer, pl_module, epoch: int) -> None:
        snap = pl_module.snapshot(epoch)
        values, arrays = {}, {}
        for layer, c in enumerate(snap.corr):
            best, idx = best_match(c)
            values.update({f"match/layer{layer}/{k}": v
                           for k, v in match_summary(best, self.thresholds).items()})
            arrays[f"best_layer{layer}"], arrays[f"best_student_layer{layer}"] = best, idx
        pl_module.recorder.log_members(trainer, values, epoch)
        pl_module.recorder.save_arrays("match", epoch, arrays)
