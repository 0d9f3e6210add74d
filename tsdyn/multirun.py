"""Jobs of a Hydra multirun (``python -m tsdyn.train -m ...``).

A sweep runs many jobs, often in one process (Hydra's basic launcher): one job that fails, diverges
or is given a bad value must not end the others. In a multirun a job's failure is therefore recorded
in its run folder (``summary.json`` with status ``failed`` or ``diverged``) and the job returns
instead of raising or exiting. The jobs of one multirun also share one W&B group, named after the
sweep and its time, and each W&B run is named after the job's overridden keys.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from tsdyn.runfolder.paths import SUMMARY

log = logging.getLogger("tsdyn")
T = TypeVar("T")


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m`` or a preset that sets ``hydra.mode: MULTIRUN``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wandb_identity(hydra_cfg) -> dict[str, str]:
    """W&B ``group`` and ``name`` of a multirun job, from its Hydra config (``HydraConfig.get()``).

    group: ``<sweep preset>-<sweep time>``, the time taken from the multirun folder's last two parts
    (``outputs/multiruns/2025-01-31/12-00-00-000000`` -> ``width-2025-01-31_12-00-00-000000``), the
    same for every job of the multirun; a multirun without a preset is ``multirun-<time>``.
    name: the job's overrides, ``key=value`` joined by commas (the preset choice left out), e.g.
    ``student.seed=1,student.width_mult=5``; ``job<num>`` when the job has none.
    """
    sweep = hydra_cfg.runtime.choices.get("sweep") or "none"
    stamp = "_".join(Path(str(hydra_cfg.sweep.dir)).parts[-2:])
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("sweep=")]
    return {"group": f"{'multirun' if sweep == 'none' else sweep}-{stamp}",
            "name": ",".join(overrides) or f"job{hydra_cfg.job.num}"}


def _finish_wandb() -> None:
    """End a W&B run that a failed job left open, so that the next job starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


def record_failure(run_dir: Path, err: BaseException) -> dict:
    """The job's ``summary.json`` after ``err``: kept as the run wrote it if it wrote one (status
    ``failed`` or ``diverged``), else a ``failed`` summary naming the error. Returns the summary."""
    path = Path(run_dir) / SUMMARY
    if path.exists():
        return json.loads(path.read_text())
    # a config error ends the job with sys.exit(2) inside `except ConfigError`: name that error
    cause = err.__context__ if isinstance(err, SystemExit) and err.__context__ is not None else err
    summary = {"status": "failed", "run_dir": str(run_dir), "error": f"{type(cause).__name__}: {cause}",
               "epochs": 0, "steps": 0, "wall_time_s": 0.0, "final": {}}
    if isinstance(err, SystemExit):
        summary["exit_code"] = err.code
    from tsdyn.runfolder.writer import Recorder  # torch: the job has imported it already
    Recorder(run_dir).write_json(SUMMARY, summary)
    return summary


def multirun_job(job: Callable[[DictConfig], T], cfg: DictConfig) -> T | None:
    """Run ``job(cfg)`` as one job of a multirun: W&B group and name filled in where the config
    leaves them null; a failure (exception or ``sys.exit``) is logged and recorded in the run folder
    (:func:`record_failure`) and the job returns None, so the multirun goes on. Ctrl-C still stops."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None:
        with open_dict(wandb_cfg):
            for key, value in wandb_identity(HydraConfig.get()).items():
                if wandb_cfg.get(key) is None:
                    wandb_cfg[key] = value
    try:
        return job(cfg)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - recorded; the other jobs go on
        if isinstance(err, SystemExit) and err.code in (None, 0):
            return None
        _finish_wandb()
        summary = record_failure(Path(cfg.run_dir), err)
        log.error("job %s %s (%s); the multirun goes on. %s", HydraConfig.get().job.num, summary["status"],
                  summary.get("error", f"step {summary.get('diverged_at_step')}"),
                  "" if isinstance(err, SystemExit) else traceback.format_exc())
        return None
