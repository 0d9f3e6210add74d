"""Where everything of a run lives inside its folder (``cfg.run_dir``)::

    .hydra/config.yaml, overrides.yaml   the composed config and the command line's overrides
    metrics.jsonl                        one JSON row per logged step or epoch (the durable record)
    summary.json                         status, epochs, steps, wall time, final values
    analysis.json                        end-of-run results, one section per analysis
    arrays/<name>_epoch<NNN>.npz         per-node arrays and matrices of one analysis at one epoch
    checkpoints/last.ckpt                the latest checkpoint (epoch ends, signals): resume= reads it
    wandb_run_id                         the W&B run id, so a resumed run re-attaches to its W&B run
    run.lock                             held by the live process writing the folder
"""
from __future__ import annotations

import re
from pathlib import Path

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ANALYSIS = "analysis.json"
ARRAYS = "arrays"
HYDRA = ".hydra"
WANDB_ID = "wandb_run_id"
LOCK = "run.lock"


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run's latest checkpoint is: epoch ends (ModelCheckpoint ``save_last``) and signals."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def arrays_file(run_dir: str | Path, name: str, epoch: int) -> Path:
    """``arrays/<name>_epoch<NNN>.npz``: analysis ``name``'s arrays after ``epoch`` epochs."""
    return Path(run_dir) / ARRAYS / f"{name}_epoch{epoch:03d}.npz"


def array_epochs(run_dir: str | Path, name: str) -> list[int]:
    """Epochs with an :func:`arrays_file` of analysis ``name``, ascending."""
    pattern = re.compile(rf"{re.escape(name)}_epoch(\d+)\.npz")
    return sorted(int(m.group(1)) for f in (Path(run_dir) / ARRAYS).glob(f"{name}_epoch*.npz")
                  if (m := pattern.fullmatch(f.name)))


def array_names(run_dir: str | Path) -> list[str]:
    """The analyses with an :func:`arrays_file` (``<name>`` of ``arrays/<name>_epochNNN.npz``), sorted."""
    return sorted({m.group(1) for f in (Path(run_dir) / ARRAYS).glob("*_epoch*.npz")
                   if (m := re.fullmatch(r"(.+)_epoch\d+\.npz", f.name))})


def is_run_folder(folder: str | Path) -> bool:
    """A folder holding a run's config or its summary."""
    return (Path(folder) / HYDRA).is_dir() or (Path(folder) / SUMMARY).exists()
