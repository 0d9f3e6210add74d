"""The jobs of a multirun, listed without running anything.

``python -m tsdyn.sweeps sweep=width [overrides]`` prints how many jobs ``python -m tsdyn.train -m
sweep=width [overrides]`` would launch and each job's overrides, and checks every job's config
(composition and :func:`tsdyn.config.validate`) first: a bad value in one job of a 200-job SLURM
array is found before anything is submitted. The expansion is Hydra's basic sweeper's own
(``hydra.sweeper.params`` of the preset first, then the command line's overrides; cartesian product).
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from tsdyn.config import ConfigError, validate

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def sweep_jobs(overrides: list[str], config_dir: str = CONF) -> list[list[str]]:
    """Each job's override list for ``python -m tsdyn.train -m <overrides>``, in launch order."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("train", overrides=fixed, return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params + list(overrides)), None)[0]


def job_configs(jobs: list[list[str]], config_dir: str = CONF) -> list[DictConfig]:
    """The composed config of each job as the job will see it, but without the hydra node: its
    ``run_dir`` (Hydra's output folder, known only once the job runs) reads ``<job N>``."""
    configs = []
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose("train", overrides=job)
            with open_dict(cfg):
                cfg.run_dir = f"<job {num}>"
            configs.append(cfg)
    return configs


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    jobs = sweep_jobs(overrides)
    for num, (job, cfg) in enumerate(zip(jobs, job_configs(jobs))):
        try:
            validate(cfg)
        except ConfigError as err:
            print(f"tsdyn: config error in job {num} ({' '.join(job)}): {err}", file=sys.stderr)
            return 2
        print(f"#{num}: {' '.join(job)}")
    print(f"{len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
