"""Shared test helpers: compose the real Hydra config with overrides and a tmp run folder.

Light at import (no torch, Hydra or OmegaConf): under xdist the controller loads this file too, before
it starts the workers, and runs no test; a test process sets itself up in :func:`pytest_configure`."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import yaml

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parents[1] / "conf")


class _ParsedOnce:
    """``yaml`` as ``OmegaConf.load`` uses it, each text parsed once: Hydra parses every file of the
    config tree again at each composition (a fifth of its ~0.2 s), and the tests compose hundreds of
    times. The same text gives the same objects; each caller gets its own copy."""

    def __init__(self):
        self._parsed: dict[str, object] = {}

    def __getattr__(self, name):
        return getattr(yaml, name)

    def load(self, stream, Loader):  # noqa: N803 - yaml's own keyword
        text = stream if isinstance(stream, str) else stream.read()
        if text not in self._parsed:
            self._parsed[text] = yaml.load(text, Loader=Loader)
        return copy.deepcopy(self._parsed[text])


ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# inductor's first compile on a machine builds and runs a test program per vector ISA the CPU
# lists (six g++ builds, ~10 s, cached per machine): trusted here, where every compile's result is
# checked against the uncompiled step
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")

# A small, fast version of the main job (seconds, not minutes). Node matching and the checkpoint
# only: a test that needs the analyses adds "callbacks=default" (tests/test_analysis_callbacks.py).
SMALL = ["data.n_train=4096", "data.n_eval=1024", "epochs=3", "steps_per_call=16",
         "log_every_n_steps=32", "trainer.enable_progress_bar=false", "logger=none", "callbacks=minimal"]


def compose_cfg(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed train config, as ``python -m tsdyn.train <overrides>`` would see it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg


def wandb_offline_log(run_dir: Path, until: bytes = b'"completed"', timeout: float = 60,
                      part: int | None = None) -> bytes:
    """The bytes of a run's one W&B offline run (wandb 0.31 keeps it as one protobuf transaction log,
    read by `wandb sync`; string fields are stored verbatim), or with ``part`` those of one part of a
    resumed run (each part is an offline run of its own, ``offline-run-<start time>-<id>``; in order
    of start). Its service process may still be flushing when finish() returns: wait until
    ``until`` (the summary's status) is in it."""
    logs = sorted((Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    (log,) = logs if part is None else [logs[part]]
    deadline = time.monotonic() + timeout
    while until not in (data := log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return data


@contextmanager
def locked_by_another_process(folder: Path) -> Iterator[int]:
    """Within ``with``: another live process holds ``folder``'s run lock; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from tsdyn.runfolder.lock import RunLock
        with RunLock({str(folder)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


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


@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """A private one-node SLURM cluster (tests/slurm_cluster.py) for this test session; yields the
    environment its commands and jobs run under (``SLURM_CONF``; ``PYTHONPATH``: this checkout, so
    that the jobs run the code under test). Where SLURM cannot start, the tests that use it are
    skipped with the reason."""
    import shutil
    import tempfile
    import time

    from tests import slurm_cluster
    root = Path(tempfile.mkdtemp(prefix="tsdyn-slurm-"))  # not under pytest's 0700 folders: munged reaches it
    start = time.perf_counter()
    try:
        slurm_cluster.up(root)
    except slurm_cluster.Unavailable as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no SLURM cluster: {err}")
    print(f"\nSLURM cluster up in {time.perf_counter() - start:.1f} s ({root})")
    try:
        yield {**slurm_cluster.env(root), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    finally:
        slurm_cluster.down(root)
        shutil.rmtree(root, ignore_errors=True)


def pytest_configure(config):
    """With xdist workers (``-n N``), this controller starts the one fork server their commands fork
    from (tests/cli.py), before the workers start: they find it through the environment. A process
    that runs tests: one torch thread, and Hydra's YAML parsed once per text (:class:`_ParsedOnce`)."""
    from tests.cli import SHARED_SERVER, shareable, start_shared_server
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        if shareable():
            os.environ[SHARED_SERVER] = start_shared_server()
        return
    import omegaconf.omegaconf
    import torch
    omegaconf.omegaconf.yaml = _ParsedOnce()
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The SLURM run, then the other end-to-end runs (marked slow), then the rest: the long tests start
    first on the workers and the short ones fill in behind them, instead of one long test ending the
    suite alone (stable: each group keeps its order)."""
    items.sort(key=lambda item: (item.get_closest_marker("slurm") is None, item.get_closest_marker("slow") is None))
