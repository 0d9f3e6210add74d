"""The run's Lightning loggers, from ``cfg.logger``.

W&B never holds a run up: it starts with the run folder's W&B run id (so a resumed run re-attaches
to its W&B run), and when it cannot start (online without a login: checked first, W&B never
prompts; no network within ``settings.init_timeout``; an unwritable home; any error of
``wandb.init``) the run goes on without it, saying so in one warning: ``metrics.jsonl`` holds every
row anyway.
"""
from __future__ import annotations

import inspect
import logging
import os
import secrets
import string
import sys
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from tsdyn.runfolder.paths import WANDB_ID

log = logging.getLogger("tsdyn")



def wandb_run_id(run_dir: str | Path | None) -> str:
    """The W&B run id of the run in ``run_dir``: made at its first start (8 characters from a-z0-9,
    as W&B makes them) and kept in the folder; a new one each call when ``run_dir`` is None."""
    path = Path(run_dir) / WANDB_ID if run_dir is not None else None
    if path is not None and path.exists():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if path is not None:
        path.write_text(run_id + "\n")
    return run_id


def map_frozen_modules() -> None:
    """Let ``inspect.getmodule`` find the frozen modules' frames (``<frozen importlib._bootstrap>``
    ...) in its file -> module cache. Without it, each lookup of such a frame rescans all of
    ``sys.modules`` (thousands once torch is loaded), and pydantic (Python < 3.13) looks up every
    frame under each model class it builds: ``wandb.init`` imports ~80 of them (its launch
    package), ~1 s quiet, ~3 s on a loaded 2-core machine; ~0.3 s with the frozen frames mapped."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.origin == "frozen":
            inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(f"<frozen {name}>")), name)


def _start_wandb(node: DictConfig, run_dir: str | Path | None, hparams: dict) -> WandbLogger:
    logger = instantiate(node, id=wandb_run_id(run_dir))
    if logger._wandb_init.get("anonymous") is None:  # Lightning passes None; W&B warns about any value
        logger._wandb_init.pop("anonymous", None)
    if node.get("mode") == "online":
        import wandb
        if not wandb.login(prompt=False, verify=False):
            raise RuntimeError("not logged in (run `wandb login` or set WANDB_API_KEY)")
    map_frozen_modules()
    logger.log_hyperparams(hparams)  # wandb.init runs here
    return logger


def start_loggers(cfg: DictConfig, run_dir: str | Path | None) -> list[Logger]:
    """Every logger of ``cfg.logger``, started, with the resolved config as hyperparameters; a W&B
    logger that cannot start is left out (one warning)."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    loggers: list[Logger] = []
    for node in (cfg.logger or {}).values():
        if node is None:
            continue
        if not issubclass(get_class(node._target_), WandbLogger):
            logger = instantiate(node)
            logger.log_hyperparams(hparams)
            loggers.append(logger)
            continue
        try:
            loggers.append(_start_wandb(node, run_dir, hparams))
        except Exception as err:  # noqa: BLE001 - W&B is optional: the run goes on without it
            log.warning("tsdyn: W&B could not start (%s: %s); this run logs to metrics.jsonl only",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
    return loggers
