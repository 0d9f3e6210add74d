"""Shared test helpers: compose the real Hydra config with overrides and a tmp run folder."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)

# A small, fast version of the main job (seconds, not minutes). Node matching and the checkpoint
# only: a test that needs the analyses adds "callbacks=default" (tests/test_analysis_callbacks.py).
SMALL = ["data.n_train=4096", "data.n_eval=1024", "epochs=3", "steps_per_call=16",
         "log_every_n_steps=32", "trainer.enable_progress_bar=false", "logger=none", "callbacks=minimal"]


def compose_cfg(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed train config, as ``python -m tsdyn.train <overrides>`` would see it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg


def wandb_offline_log(run_dir: Path, until: bytes = b'"completed"', timeout: float = 60) -> bytes:
    """The bytes of a run's one W&B offline run (wandb 0.31 keeps it as one protobuf transaction log,
    read by `wandb sync`; string fields are stored verbatim). Its service process may still be
    flushing when finish() returns: wait until ``until`` (the summary's status) is in it."""
    (log,) = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while until not in (data := log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return data


@pytest.fixture
def small_cfg(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_cfg([*SMALL, *overrides], tmp_path / "run")
    return make


@pytest.fixture(autouse=True)
def _no_wandb_run_leaks():
    """A test that starts a W&B run must not hand it to the next test."""
    yield
    import wandb
    if wandb.run is not None:
        wandb.finish()
