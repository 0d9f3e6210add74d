"""Every object of a run from its (validated) config: the one module the entry points share
(``tsdyn.train``, ``tsdyn.pretrain_teacher``, ``scripts/bench.py``), so that none imports another.
Lightning loads only when :func:`build` assembles a run: teacher pre-training and the notebook API,
which need the teacher and the optimizer alone, start without it (~5 s)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from tsdyn.module import TeacherStudent


def build_teacher(cfg: DictConfig, data):
    """The teacher: loaded from its file (``teacher=pretrained``), or made anew, drawing the inputs
    it calibrates on (bias tuning, BatchNorm statistics) from ``data``."""
    if "checkpoint" in cfg.teacher:
        return instantiate(cfg.teacher)
    return instantiate(cfg.teacher, input_sampler=lambda n, g: data.sample(n, cfg.teacher.d, g))


def optimizer_options(cfg: DictConfig) -> tuple[Any, dict, str | None]:
    """The ``optimizer`` group split in three: the optimizer factory (``params=`` still to give),
    the lr schedule ``{epoch: lr}`` and the projection after each step (``renormalize``)."""
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    schedule = opt_cfg.pop("lr_schedule", None) or {}
    renormalize = opt_cfg.pop("renormalize", None)
    return instantiate(opt_cfg), schedule, renormalize


def trainer_options(cfg: DictConfig) -> tuple[dict, dict]:
    """The Trainer's arguments (``epochs`` as ``max_epochs``: the one number of epochs) and the
    gradient clipping the module applies itself, per student (``gradient_clip_val``,
    ``gradient_clip_algorithm``: Lightning clips only under automatic optimisation)."""
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    clip = {"value": options.pop("gradient_clip_val", None),
            "algorithm": options.pop("gradient_clip_algorithm", None) or "norm"}
    options["max_epochs"] = int(cfg.epochs)
    return options, clip


def build(cfg: DictConfig, run_dir: Path | None) -> tuple[TeacherStudent, pl.Trainer]:
    """The module and the trainer of a run, with its callbacks and loggers (none under
    ``trainer.fast_dev_run``, as Lightning does)."""
    from tsdyn.callbacks import StepProgressBar
    from tsdyn.loggers import start_loggers
    from tsdyn.module import TeacherStudent
    from tsdyn.interrupt import CheckpointOnInterrupt
    from tsdyn.runfolder.writer import Recorder

    data = instantiate(cfg.data)
    teacher = build_teacher(cfg, data)
    student = instantiate(cfg.student)(teacher)
    optimizer, lr_schedule, renormalize = optimizer_options(cfg)
    trainer_kwargs, clip = trainer_options(cfg)
    module = TeacherStudent(teacher, student, data, optimizer, lr_schedule, renormalize=renormalize,
                            loss=cfg.loss, steps_per_call=cfg.steps_per_call, log_every_n_steps=cfg.log_every_n_steps,
                            recorder=Recorder(run_dir), gradient_clip_val=clip["value"],
                            gradient_clip_algorithm=clip["algorithm"],
                            # .get: a resumed run's config may predate these keys
                            step=cfg.get("step", "auto"), fused_chunk=cfg.get("fused_chunk", 1))
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    if run_dir is not None:
        callbacks.append(CheckpointOnInterrupt(run_dir))
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    loggers = [] if trainer_kwargs.get("fast_dev_run") else start_loggers(cfg, run_dir)
    trainer = instantiate(trainer_kwargs, callbacks=callbacks, logger=loggers or False, _convert_="all")
    return module, trainer
