"""Whether a run folder holds a run, in which state, and whether a run may start or continue in it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tsdyn.errors import fail
from tsdyn.runfolder.paths import HYDRA, METRICS, SUMMARY

UNFINISHED = (None, "interrupted", "failed")  # summary statuses a run can be resumed from (None: no summary)


def requeued() -> bool:
    """True in a SLURM job that was requeued (pre-emption, ``scontrol requeue``, submitit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def status(folder: str | Path) -> str | None:
    """The ``status`` of the folder's ``summary.json``; None when it has none (unfinished)."""
    path = Path(folder) / SUMMARY
    return json.loads(path.read_text()).get("status") if path.exists() else None


def holds_run(folder: str | Path) -> bool:
    """Whether a run has written metrics in ``folder``."""
    return (Path(folder) / METRICS).exists()


def continue_in(folder: Path) -> bool:
    """Whether a run started in ``folder`` (not by ``resume=``) continues a run found there: False
    for a folder without one, True in a requeued SLURM job if that run is unfinished; any other
    case is a :class:`~tsdyn.config.ConfigError` (an existing run is never overwritten)."""
    if not holds_run(folder):
        return False
    if requeued() and status(folder) in UNFINISHED:
        return True
    fail("run_dir", str(folder), f"a folder without a run in it (to continue that run: "
                                 f"python -m tsdyn.train resume={folder})")


def check_resumable(folder: Path) -> None:
    """``resume=<folder>``: a run folder (its ``.hydra/config.yaml``) whose run is unfinished."""
    if not (folder / HYDRA / "config.yaml").is_file():
        fail("resume", str(folder), "a run folder (one holding .hydra/config.yaml)")
    found = status(folder)
    if found not in UNFINISHED:
        fail("resume", str(folder), f"an unfinished run (this one is {found})")
