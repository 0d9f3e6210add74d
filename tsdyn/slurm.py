"""SLURM jobs (``hydra/launcher=slurm`` and ``slurm_gpu``, hydra-submitit-launcher).

- :func:`set_threads`: a job's torch threads are the CPUs SLURM gave it unless ``threads`` says
  otherwise.
- submitit follows a multirun's jobs with ``sacct``; on a cluster without accounting storage
  (``AccountingStorageType=accounting_storage/none``, common on small clusters) every poll fails
  and prints a warning. :class:`SqueueWithoutAccounting` asks the cluster once, says in one line
  that job states come from ``squeue`` there, and has submitit poll ``squeue``
  (:class:`SqueueWatcher`) for that multirun; with accounting nothing changes.
"""
from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger("tsdyn")

NO_ACCOUNTING = "accounting_storage/none"
GONE = "NOT_IN_SQUEUE"  # state of a job squeue no longer lists: it ended (SLURM forgets it MinJobAge after)


def set_threads(threads: int | None) -> None:
    """torch's threads: ``threads`` (the config key) if set, else the CPUs of this SLURM job
    (``SLURM_CPUS_PER_TASK``: without CPU binding torch would use every core of the node), else
    torch's default."""
    threads = threads or os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:
        import torch  # here: Hydra loads this module in every job, also one refused before it trains

        torch.set_num_threads(int(threads))


def accounting_storage() -> str | None:
    """The cluster's ``AccountingStorageType`` (``scontrol show config``); None if scontrol fails."""
    try:
        res = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    except OSError:  # no scontrol here
        return None
    for line in res.stdout.splitlines() if res.returncode == 0 else ():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip()
    return None


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher reading ``squeue --me --states=all`` instead of ``sacct``: the
    same states (PENDING, RUNNING, COMPLETED, FAILED, ...); a job that squeue no longer lists has
    ended, state :data:`GONE` (submitit then reads its result file, or reports it without one)."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--me", "--states=all", "--noheader", "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        listed = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered - self._finished:
            listed.setdefault(job_id, {"JobID": job_id, "State": GONE})
        return listed


class SqueueWithoutAccounting(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): a multirun on SLURM, on a cluster
    that keeps no job accounting, has its jobs followed with ``squeue`` (:class:`SqueueWatcher`),
    said once, instead of a ``sacct`` warning per poll. Any other multirun is left as it is."""

    def __init__(self) -> None:
        self.previous: SlurmInfoWatcher | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if not target.endswith(".SlurmLauncher") or accounting_storage() != NO_ACCOUNTING:
            return
        log.info("tsdyn: this cluster keeps no job accounting (AccountingStorageType=%s, no sacct): "
                 "job states come from squeue", NO_ACCOUNTING)
        self.previous = SlurmJob.watcher
        SlurmJob.watcher = SqueueWatcher(delay_s=self.previous._delay_s)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.previous is not None:
            SlurmJob.watcher, self.previous = self.previous, None
