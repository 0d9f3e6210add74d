"""``python -m tsdyn.train [overrides]``: build teacher, student, data, module, callbacks and
loggers from the Hydra config, train, and write the run folder's summary."""
from __future__ import annotations

import logging
import os
import sys
import warnings
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from tsdyn.config import ConfigError, validate
from tsdyn.console import print_match_table
from tsdyn.module import TeacherStudent
from tsdyn.recorder import Recorder

log = logging.getLogger("tsdyn")

# Known, harmless notices that would bury the run's own output.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
os.environ.setdefault("WANDB_SILENT", "true")


def build(cfg: DictConfig, run_dir: Path | None) -> tuple[TeacherStudent, pl.Trainer]:
    """Every object of a run from its (validated) config."""
    data = instantiate(cfg.data)
    teacher = instantiate(cfg.teacher, input_sampler=lambda n, g: data.sample(n, cfg.teacher.d, g))
    student = instantiate(cfg.student)(teacher)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    lr_schedule = opt_cfg.pop("lr_schedule", None) or {}
    module = TeacherStudent(teacher, student, data, instantiate(opt_cfg), lr_schedule,
                            loss=cfg.loss, steps_per_call=cfg.steps_per_call,
                            log_every_n_steps=cfg.log_every_n_steps, recorder=Recorder(run_dir))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, trainer


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one run; always writes ``summary.json`` (status completed / diverged / failed)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    module, trainer = build(cfg, run_dir)
    summary = {"status": "failed", "run_dir": str(run_dir)}
    start = time.perf_counter()
    try:
        trainer.fit(module)
        summary["status"] = "diverged" if module.diverged_at is not None else "completed"
        if module.diverged_at is not None:
            summary["diverged_at_step"] = module.diverged_at
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"tsdyn: config error: {err}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(cfg.run_dir)
    summary = run(cfg, run_dir)
    print_match_table(summary)
    if summary["status"] == "diverged":
        print(f"tsdyn: run diverged (non-finite loss) at step {summary['diverged_at_step']}; "
              f"metrics so far are in {run_dir}", file=sys.stderr)
        sys.exit(3)
    return summary["final"].get("match/layer0/mean_best")


if __name__ == "__main__":
    main()
