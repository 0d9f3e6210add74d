"""``python -m tsdyn.train [overrides]``: build teacher, student, data, module, callbacks and
loggers from the Hydra config, train, and write the run folder's summary.

The command line is checked (:mod:`tsdyn.cli`: overrides, keys, values) before Hydra runs and torch
loads; this module imports torch, Lightning and W&B only inside the functions that train."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tsdyn.cli import CONF, check_command_line
from tsdyn.config import check_values, exit_on_config_error, validate
from tsdyn.errors import Interrupted
from tsdyn.multirun import in_multirun, multirun_job
from tsdyn.runfolder.lock import RunLock
from tsdyn.runfolder.paths import last_checkpoint
from tsdyn.runfolder.state import continue_in, summary as stored_summary, wall_time_parts

log = logging.getLogger("tsdyn")

# Known, harmless notices that would bury the run's own output.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# resume= (tsdyn.resume): the module restores its position inside an epoch itself
# (TeacherStudent.training_step), and the run's own checkpoints/ folder is written again
warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty.*")
# SLURM's commands installed, the job not started by srun: tsdyn runs one process per job anyway
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used.*")
HARMLESS_LINES = ("Tip:", "GPU available:", "TPU available:")  # Lightning's notes on hardware and its tips
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda r: not any(text in r.getMessage() for text in HARMLESS_LINES))
# torch's C++ extension builder (the compiled step) on a machine without the CUDA toolkit
logging.getLogger("torch.utils.cpp_extension").addFilter(lambda r: "No CUDA runtime is found" not in r.getMessage())
os.environ.setdefault("WANDB_SILENT", "true")


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train one run, or with ``resume`` continue it from ``checkpoints/last.ckpt`` (from the start
    if it stopped before its first checkpoint), to ``cfg.epochs`` (more than it had: the run is
    extended). Always writes ``summary.json`` (``wall_time_s``: the sum of ``wall_time_s_parts``,
    one per part of a resumed run), status
    ``completed``, ``diverged`` (``diverged_at_step``: where the non-finite loss was seen),
    ``interrupted`` (a signal: the checkpoint is saved, then :class:`Interrupted` is raised) or
    ``failed`` (the error is re-raised, or training ended without the trainer finishing). A folder
    another live process is writing is refused (:class:`~tsdyn.runfolder.lock.RunLock`)."""
    from tsdyn.resume import extend_run_folder
    from tsdyn.slurm import set_threads

    set_threads(cfg.get("threads"))
    with RunLock(run_dir):
        if resume:
            extend_run_folder(run_dir, cfg.epochs)
        return _run(cfg, run_dir, resume)


def _run(cfg: DictConfig, run_dir: Path, resume: bool) -> dict:
    from pytorch_lightning.loggers import WandbLogger
    from pytorch_lightning.trainer.states import TrainerStatus
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from tsdyn.build import build
    from tsdyn.module import Diverged
    from tsdyn.interrupt import StopOnSignal

    module, trainer = build(cfg, run_dir)
    ckpt = last_checkpoint(run_dir) if resume else None
    if ckpt is not None and not ckpt.exists():
        module.recorder.rewind(0, [])
        ckpt = None
    parts = wall_time_parts(run_dir) if ckpt is not None else []  # the parts before this one
    summary = {"status": "failed", "run_dir": str(run_dir)}
    start = time.perf_counter()
    with StopOnSignal(module):
        try:
            trainer.fit(module, ckpt_path=ckpt)
            if trainer.state.status == TrainerStatus.FINISHED and not trainer.interrupted:
                summary["status"] = "completed"
            else:
                summary["error"] = f"training ended with the trainer {trainer.state.status.value}"
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
            parts.append(round(time.perf_counter() - start, 2))
            summary.update(epochs=trainer.current_epoch, steps=trainer.global_step, wall_time_s=round(sum(parts), 2),
                           wall_time_s_parts=parts, final=module.recorder.last)
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
    from tsdyn.console import next_steps, print_match_table
    from tsdyn.resume import resumed_config

    with exit_on_config_error():
        validate(cfg)
        if cfg.get("resume"):
            run_dir = Path(cfg.resume)
            cfg = resumed_config(run_dir, cfg, HydraConfig.get().overrides.task)
            validate(cfg)
            resume = True
        else:
            run_dir = Path(cfg.run_dir)
            found = continue_in(run_dir)
            if found == "done":
                print(f"tsdyn: the run in {run_dir} completed before this requeued job started: "
                      f"nothing left to do", file=sys.stderr)
                return stored_summary(run_dir)["final"].get("match/layer0/mean_best")
            resume = found == "continue"
    summary = run(cfg, run_dir, resume)
    print_match_table(summary)
    if not in_multirun():  # a multirun prints them once, for its folder (tsdyn.console.NextSteps)
        print("\n".join(next_steps(run_dir)), flush=True)
    if summary["status"] == "diverged":
        print(f"tsdyn: run diverged (non-finite loss) at step {summary['diverged_at_step']}; "
              f"metrics so far are in {run_dir}", file=sys.stderr)
        sys.exit(3)
    return summary["final"].get("match/layer0/mean_best")


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def main(cfg: DictConfig) -> float | None:
    # in a multirun a job's failure is recorded in its folder and the other jobs go on
    return multirun_job(job, cfg) if in_multirun() else job(cfg)


def cli() -> None:
    """``python -m tsdyn.train`` and the ``tsdyn-train`` console script: the command line checked
    first (:func:`tsdyn.cli.check_command_line`, no torch), then Hydra's run."""
    check_command_line("train", check=check_values)
    try:
        main()
    except Interrupted as stop:  # checkpoint saved: exit as a process ended by that signal would
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    cli()
