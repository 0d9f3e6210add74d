"""Resume: an interrupted run continues where it stopped, a completed one can be extended, and a
run folder is never reused (config and folder side, light: no torch; the signals themselves are
:mod:`tsdyn.interrupt`).

- ``python -m tsdyn.train resume=<run folder>``: :class:`RunFolderGuard` points Hydra at that folder
  without touching its stored config, :func:`resumed_config` loads that config, and the run
  continues from ``checkpoints/last.ckpt``; the module cuts ``metrics.jsonl`` back to the rows the
  checkpoint had seen, so no row is duplicated.
- ``python -m tsdyn.train resume=<run folder> epochs=N`` extends a completed run to N epochs: the
  same path from its last epoch's checkpoint (the end-of-run rows after it are cut and written
  again at the new end), and the folder's config says ``epochs=N`` from then on
  (:func:`extend_run_folder`), as if the run had been started so.
- A fresh run never writes into a folder that holds a run (:func:`~tsdyn.runfolder.state.continue_in`),
  except a requeued SLURM job (pre-emption, submitit), which continues the run it finds there.

Hydra instantiates :class:`RunFolderGuard` in every job, and a job checks its config before it
trains: this module loads no torch, so a job refused for a bad value ends before torch loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from tsdyn.config import exit_on_config_error, fail
from tsdyn.runfolder.paths import HYDRA, METRICS, SUMMARY
from tsdyn.runfolder.reader import RUN_ONLY_KEYS
from tsdyn.runfolder.state import check_resumable, continue_in, requeued, status, wall_time_parts

# Overrides a resumed run accepts: those that change how it runs, not what it computes, and
# ``epochs`` (an unfinished run's: not fewer; a completed run's: more, which extends it:
# tsdyn.runfolder.state.check_resumable). Any other override is refused.
RESUME_OVERRIDES = ("resume", "epochs", *RUN_ONLY_KEYS)


def overridden_keys(overrides: Sequence[str]) -> list[str]:
    """The keys (or groups) the command line's ``overrides`` set."""
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]


def check_resume(folder: Path, composed: DictConfig, overrides: Sequence[str]) -> None:
    """:func:`~tsdyn.runfolder.state.check_resumable` with the ``epochs`` of ``composed`` if the
    ``overrides`` set it."""
    check_resumable(folder, int(composed.epochs) if "epochs" in overridden_keys(overrides) else None)


def resumed_config(folder: Path, composed: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The config of the run in ``folder`` (``.hydra/config.yaml``, as first composed), with the
    values of the allowed ``overrides`` (:data:`RESUME_OVERRIDES`) taken from ``composed``; any
    other override is a :class:`~tsdyn.config.ConfigError`."""
    check_resume(folder, composed, overrides)
    stored = OmegaConf.load(folder / HYDRA / "config.yaml")
    for key in overridden_keys(overrides):
        if key not in RESUME_OVERRIDES:
            fail(key, OmegaConf.select(composed, key), f"no override with resume= besides "
                 f"{', '.join(RESUME_OVERRIDES[1:])} (a resumed run keeps the config it started with)")
        OmegaConf.update(stored, key, OmegaConf.select(composed, key), force_add=True)
    with open_dict(stored):
        stored.run_dir = str(folder)
    return stored


def extend_run_folder(folder: Path, epochs: int) -> None:
    """Before a run resumed to ``epochs`` trains (its lock held), if that is more than its folder
    says (an extended run): ``.hydra/config.yaml`` and ``overrides.yaml`` say ``epochs`` from now
    on, as for a run started with that many, and a completed run's ``summary.json`` keeps only its
    wall times (no status: unfinished), so that the run, stopped in any way before its new end, is
    resumed as any unfinished run (plain ``resume=``). Nothing is written when the folder says
    ``epochs`` already, or has no config (a run started in-process, not by Hydra)."""
    from tsdyn.runfolder.writer import Recorder, atomic_write_text  # torch: only a run that trains extends

    config_file, overrides_file = folder / HYDRA / "config.yaml", folder / HYDRA / "overrides.yaml"
    config = OmegaConf.load(config_file) if config_file.exists() else None
    if config is None or int(config.epochs) == int(epochs):
        return
    if status(folder) == "completed":
        parts = wall_time_parts(folder)
        Recorder(folder).write_json(SUMMARY, {"run_dir": str(folder), "wall_time_s": round(sum(parts), 2),
                                              "wall_time_s_parts": parts})
    config.epochs = int(epochs)
    overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else OmegaConf.create([])
    kept = [o for o in overrides if overridden_keys([o]) != ["epochs"]]
    atomic_write_text(overrides_file, OmegaConf.to_yaml(OmegaConf.create([*kept, f"epochs={int(epochs)}"])))
    atomic_write_text(config_file, OmegaConf.to_yaml(config))


class RunFolderGuard(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml), run before Hydra writes anything:
    with ``resume=<folder>`` that folder becomes the run folder and Hydra leaves its stored config as
    it is; otherwise a run folder that already holds a run is refused (:func:`continue_in`). A bad
    folder ends the command with one line and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_config_error():
            if config.get("resume"):
                folder = Path(config.resume)
                check_resume(folder, config, config.hydra.overrides.task)
                with read_write(config), open_dict(config):
                    config.hydra.run.dir = str(folder)
                    config.hydra.output_subdir = None
            else:
                continue_in(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if any(sweep_dir.glob(f"*/{METRICS}")) and not requeued():
            with exit_on_config_error():
                fail("hydra.sweep.dir", str(sweep_dir), "a folder without runs in it")
