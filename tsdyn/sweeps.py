"""The jobs of a multirun, listed without running anything.

``python -m tsdyn.sweeps sweep=width [overrides]`` prints how many jobs ``python -m tsdyn.train -m
sweep=width [overrides]`` would launch and each job's overrides, and checks every job's config
(composition, the overrides' keys as :mod:`tsdyn.cli` checks them, and every value,
:func:`tsdyn.config.check_values`) first: a bad value in one job of a 200-job SLURM array is found
before anything is submitted, in about the time Hydra needs to compose the jobs (no torch). What
needs an import or a file read (:func:`tsdyn.config.check_imports`: a callback class from outside
tsdyn, optimizer arguments, the teacher file) is checked when each job starts. The expansion is
Hydra's basic sweeper's own (``hydra.sweeper.params`` of the preset first, then the command line's
overrides; cartesian product).
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from tsdyn import cli
from tsdyn.config import ConfigError, check_values

CONF = cli.CONF


def sweep_jobs(overrides: list[str], config_dir: str = CONF) -> list[list[str]]:
    """Each job's override list for ``python -m tsdyn.train -m <overrides>``, in launch order."""
    return cli.sweep_jobs("train", overrides, config_dir)


def job_configs(jobs: list[list[str]], config_dir: str = CONF) -> list[DictConfig]:
    """The composed config of each job as the job will see it, but without the hydra node: its
    ``run_dir`` (Hydra's output folder, known only once the job runs) reads ``<job N>``."""
    bases: dict = {}
    return [cli.without_hydra(cli.compose_checked("train", job, config_dir, bases), f"<job {num}>")
            for num, job in enumerate(jobs)]


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        jobs = sweep_jobs(overrides)
        configs = job_configs(jobs)
    except ConfigError as err:
        print(f"tsdyn: config error: {err}", file=sys.stderr)
        return 2
    for num, (job, cfg) in enumerate(zip(jobs, configs)):
        try:
            check_values(cfg)
        except ConfigError as err:
            print(f"tsdyn: config error in job {num} ({' '.join(job)}): {err}", file=sys.stderr)
            return 2
        print(f"#{num}: {' '.join(job)}")
    print(f"{len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
