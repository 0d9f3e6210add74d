"""Whether a run folder holds a run, in which state, and whether a run may start or continue in it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from tsdyn.errors import fail
from tsdyn.runfolder.paths import HYDRA, METRICS, SUMMARY

UNFINISHED = (None, "interrupted", "failed")  # summary statuses a run can be resumed from (None: no summary)


def requeued() -> bool:
    """True in a SLURM job that was requeued (pre-emption, ``scontrol requeue``, submitit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def summary(folder: str | Path) -> dict:
    """The folder's ``summary.json``; empty when it has none (a run unfinished, or killed hard)."""
    path = Path(folder) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def status(folder: str | Path) -> str | None:
    """The ``status`` of the folder's ``summary.json``; None when it has none (unfinished)."""
    return summary(folder).get("status")


def wall_time_parts(folder: str | Path) -> list[float]:
    """The wall times (s) of the parts of the run in ``folder`` that wrote a summary, in order (a
    part killed hard wrote none); [] without a summary."""
    found = summary(folder)
    return list(found.get("wall_time_s_parts") or ([found["wall_time_s"]] if "wall_time_s" in found else []))


def holds_run(folder: str | Path) -> bool:
    """Whether a run has written metrics in ``folder``."""
    return (Path(folder) / METRICS).exists()


def continue_in(folder: Path) -> str:
    """What a run started in ``folder`` (not by ``resume=``) does there: ``"new"`` in a folder without
    a run; in a requeued SLURM job, ``"continue"`` an unfinished run found there, or ``"done"`` when
    that run completed (the pre-emption signal came after its last step: nothing is left to do); any
    other case is a :class:`~tsdyn.config.ConfigError` (an existing run is never overwritten)."""
    if not holds_run(folder):
        return "new"
    if requeued():
        found = status(folder)
        if found in UNFINISHED:
            return "continue"
        if found == "completed":
            return "done"
    fail("run_dir", str(folder), f"a folder without a run in it (to continue that run: "
                                 f"python -m tsdyn.train resume={folder})")


def check_resumable(folder: Path, epochs: int | None = None) -> None:
    """``resume=<folder>``, with ``epochs`` the ``epochs=`` given beside it (None: none given): a run
    folder (its ``.hydra/config.yaml``) whose run is unfinished (``epochs`` at least its own), or
    completed after all its epochs and extended (``epochs`` above them)."""
    config = folder / HYDRA / "config.yaml"
    if not config.is_file():
        fail("resume", str(folder), "a run folder (one holding .hydra/config.yaml)")
    found = summary(folder)
    if found.get("status") in UNFINISHED:
        if epochs is not None and epochs < (planned := int(OmegaConf.load(config).epochs)):
            fail("epochs", epochs, f"at least the {planned} epochs of the unfinished run in {folder}")
        return
    if found["status"] != "completed":
        fail("resume", str(folder), f"an unfinished run (this one is {found['status']})")
    done = int(found.get("epochs", 0))
    if epochs is None:
        fail("resume", str(folder), f"an unfinished run (this one is completed; to extend it: "
                                    f"resume={folder} epochs=N, N > {done})")
    if done < (planned := int(OmegaConf.load(config).epochs)):
        fail("resume", str(folder), f"a run that ran all its epochs, to extend (this one stopped after "
                                    f"{done} of {planned})")
    if epochs <= done:
        fail("epochs", epochs, f"more than the {done} epochs the completed run in {folder} ran")
