"""Real, tiny Hydra multiruns of ``python -m tsdyn.train -m`` as a command (the CLI path)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli import tsdyn_train

# seconds per job: a small training set, one thread, no progress bar
TINY = ["data.n_train=2048", "data.n_eval=512", "steps_per_call=16", "log_every_n_steps=16",
        "trainer.enable_progress_bar=false", "threads=1"]


def multirun(sweep_dir: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m tsdyn.train -m <TINY> <overrides>`` writing its jobs under ``sweep_dir``."""
    return tsdyn_train("-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}", timeout=timeout)
