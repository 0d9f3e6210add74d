"""Interruption: a signal never tears a run.

- :class:`StopOnSignal`: SIGINT and SIGTERM (and, under submitit, its pre-emption signal) only ask
  the training loop to stop (``TeacherStudent.stop_signal``); it stops after the current optimizer
  step by raising :class:`~tsdyn.module.Interrupted`.
- :class:`CheckpointOnInterrupt`: while Lightning unwinds, ``checkpoints/last.ckpt`` is written at
  that step (the module adds its loop state and the size of ``metrics.jsonl`` to it), where
  ``resume=`` (:mod:`tsdyn.resume`) continues exactly.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tsdyn.module import Interrupted, TeacherStudent
from tsdyn.runfolder.paths import last_checkpoint


class StopOnSignal:
    """Within ``with``: SIGINT and SIGTERM, and submitit's pre-emption signal where submitit handles
    it (``SUBMITIT_PREEMPT_SIGNAL``, default USR2), set ``module.stop_signal`` and say so in one line;
    the training loop then stops after the current optimizer step. A second SIGINT stops at once
    (``KeyboardInterrupt``, no checkpoint). On exit the previous handlers come back, and after a
    pre-emption signal submitit's own handler runs (it requeues the job; its exit becomes
    :class:`~tsdyn.module.Interrupted`, which a multirun's per-job error handling lets through)."""

    def __init__(self, module: TeacherStudent):
        self.module = module
        self.preempt = getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}", None)
        self.signals = [signal.SIGINT, signal.SIGTERM]
        if self.preempt is not None and callable(signal.getsignal(self.preempt)):
            self.signals.append(self.preempt)
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def _handle(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT and self.module.stop_signal is not None:
            raise KeyboardInterrupt
        self.module.stop_signal = signum
        print(f"tsdyn: {signal.Signals(signum).name} received: stopping after this optimizer step "
              f"(checkpoint, then exit; press Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        received = self.module.stop_signal
        if received is not None and received == self.preempt and received in self.previous:
            try:
                self.previous[received](received, None)
            except SystemExit:  # submitit requeued the job and exits: no sweep handler may swallow that
                raise Interrupted(received) from None


class CheckpointOnInterrupt(pl.Callback):
    """Writes :func:`last_checkpoint` when a signal ends training (:class:`~tsdyn.module.Interrupted`
    from the loop, or Lightning's own SIGTERM exit at the end of a call or epoch): always at a step
    boundary, so ``resume=`` continues exactly there."""

    def __init__(self, run_dir: str | Path):
        self.path = last_checkpoint(run_dir)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (Interrupted, SIGTERMException)):
            trainer.save_checkpoint(self.path, weights_only=False)
