"""``python -m tsdyn.train [overrides]``: build teacher, student, data, module, callbacks and
loggers from the Hydra config, train, and write the run folder's summary."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tsdyn.callbacks import StepProgressBar
from tsdyn.config import exit_on_config_error, validate
from tsdyn.console import next_steps, print_match_table
from tsdyn.loggers import start_loggers
from tsdyn.module import Diverged, Interrupted, TeacherStudent
from tsdyn.multirun import in_multirun, multirun_job
from tsdyn.recorder import Recorder
from tsdyn.resume import CheckpointOnInterrupt, StopOnSignal, continue_in, last_checkpoint, resumed_config
from tsdyn.slurm import set_threads

log = logging.getLogger("tsdyn")

# Known, harmless notices that would bury the run's own output.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# resume= (tsdyn.resume): the module restores its position inside an epoch itself
# (TeacherStudent.training_step), and the run's own checkpoints/ folder is written again
warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty.*")
HARMLESS_LINES = ("Tip:", "GPU available:", "TPU available:")  # Lightning's notes on hardware and its tips
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda r: not any(text in r.getMessage() for text in HARMLESS_LINES))
os.environ.setdefault("WANDB_SILENT", "true")


def build_teacher(cfg: DictConfig, data):
    """The teacher: loaded from its file (``teacher=pretrained``), or made anew, drawing the inputs
    it calibrates on (bias tuning, BatchNorm statistics) from ``data``."""
    if "checkpoint" in cfg.teacher:
        return instantiate(cfg.teacher)
    return instantiate(cfg.teacher, input_sampler=lambda n, g: data.sample(n, cfg.teacher.d, g))


def build(cfg: DictConfig, run_dir: Path | None) -> tuple[TeacherStudent, pl.Trainer]:
    """Every object of a run from its (validated) config."""
    data = instantiate(cfg.data)
    teacher = build_teacher(cfg, data)
    student = instantiate(cfg.student)(teacher)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    lr_schedule = opt_cfg.pop("lr_schedule", None) or {}
    renormalize = opt_cfg.pop("renormalize", None)
    module = TeacherStudent(teacher, student, data, instantiate(opt_cfg), lr_schedule, renormalize=renormalize,
                            loss=cfg.loss, steps_per_call=cfg.steps_per_call,
                            log_every_n_steps=cfg.log_every_n_steps, recorder=Recorder(run_dir))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if run_dir is not None:
        callbacks.append(CheckpointOnInterrupt(run_dir))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    loggers = start_loggers(cfg, run_dir)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, trainer


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train one run, or with ``resume`` continue it from ``checkpoints/last.ckpt`` (from the start
    if it stopped before its first checkpoint). Always writes ``summary.json``, status
    ``completed``, ``diverged`` (``diverged_at_step``: where the non-finite loss was seen),
    ``interrupted`` (a signal: the checkpoint is saved, then :class:`Interrupted` is raised) or
    ``failed`` (the error is re-raised)."""
    set_threads(cfg.get("threads"))
    module, trainer = build(cfg, run_dir)
    ckpt = last_checkpoint(run_dir) if resume else None
    if ckpt is not None and not ckpt.exists():
        module.recorder.rewind(0)
        ckpt = None
    summary = {"status": "failed", "run_dir": str(run_dir)}
    start = time.perf_counter()
    with StopOnSignal(module):
        try:
            trainer.fit(module, ckpt_path=ckpt)
            summary["status"] = "completed"
        except Diverged as err:
            summary.update(status="diverged", diverged_at_step=err.step)
        except (Interrupted, SIGTERMException) as err:  # Lightning's own SIGTERM exit: at a call's end
            stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGTERM)
            summary.update(status="interrupted", error=str(stop))
            print(f"tsdyn: {stop} at step {trainer.global_step}, checkpoint saved; continue with: "
                  f"python -m tsdyn.train resume={run_dir}", file=sys.stderr)
            raise stop from None
        except BaseException as err:  # noqa: BLE001 - recorded, then re-raised
            summary["error"] = f"{type(err).__name__}: {err}"
            raise
        finally:
            summary.update(epochs=trainer.current_epoch, steps=trainer.global_step,
                           wall_time_s=round(time.perf_counter() - start, 2), final=module.recorder.last)
            module.recorder.write_summary(trainer, summary)
            ok = summary["status"] == "completed"
            for lg in trainer.loggers:
                lg.finalize("success" if ok else "failed")
                if isinstance(lg, WandbLogger):  # end this job's W&B run: the next job must not inherit it
                    lg.experiment.finish(exit_code=0 if ok else 1)
    return summary


def job(cfg: DictConfig) -> float | None:
    """One run from its config (``resume=<folder>``: that run, continued with its own config): exits
    2 on a bad value, 3 when training diverges; a signal raises :class:`Interrupted`."""
    with exit_on_config_error():
        validate(cfg)
        if cfg.get("resume"):
            run_dir = Path(cfg.resume)
            cfg = resumed_config(run_dir, cfg, HydraConfig.get().overrides.task)
            validate(cfg)
            resume = True
        else:
            run_dir = Path(cfg.run_dir)
            resume = continue_in(run_dir)
    summary = run(cfg, run_dir, resume)
    print_match_table(summary)
    if not in_multirun():  # a multirun prints them once, for its folder (tsdyn.console.NextSteps)
        print("\n".join(next_steps(run_dir)), flush=True)
    if summary["status"] == "diverged":
        print(f"tsdyn: run diverged (non-finite loss) at step {summary['diverged_at_step']}; "
              f"metrics so far are in {run_dir}", file=sys.stderr)
        sys.exit(3)
    return summary["final"].get("match/layer0/mean_best")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # in a multirun a job's failure is recorded in its folder and the other jobs go on
    return multirun_job(job, cfg) if in_multirun() else job(cfg)


def cli() -> None:
    """``python -m tsdyn.train`` and the ``tsdyn-train`` console script."""
    try:
        main()
    except Interrupted as stop:  # checkpoint saved: exit as a process ended by that signal would
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    cli()
