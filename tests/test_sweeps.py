"""Sweep presets: each composes and expands to the jobs it documents, every job's config is valid,
seeds vary the student and never the teacher; the SLURM launcher presets compose. No training."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import ListConfig, OmegaConf

from tests.conftest import CONF
from tsdyn.config import validate
from tsdyn.sweeps import job_configs, main, sweep_jobs

pytestmark = pytest.mark.slow  # Hydra composes every job of every preset: make test-fast leaves them out

PRESETS = sorted(p.stem for p in (Path(CONF) / "sweep").glob("*.yaml") if p.stem != "none")

# preset -> (number of jobs, {key: the set of values its jobs take})
EXPECTED = {
    "width": (6, {"student.width_mult": {1, 2, 5, 10, 20, 50}, "student.num_students": {3}, "epochs": {100},
                  "callbacks.theory": {None}}),
    "batchnorm": (12, {"student.bn": {"none", "after_relu", "before_relu"}, "student.width_mult": {1, 2, 5, 10},
                       "callbacks.theory": {None}}),
    "luck": (8, {"student.init": {"default", "perturb", "same_dir", "same_sign"},
                 "student.perturb_std": {None, 0.0, 0.01, 0.03, 0.1, 0.3}, "student.width_mult": {10}}),
    "data": (12, {"data.n_train": {1000, 10000, 100000}, "data.regenerate_each_epoch": {False, True},
                  "data.std": {1, 10}}),
    "teacher": (9, {"teacher.strength_decay": {0, 0.5, 1, 1.5, 2, 2.5}, "teacher.bias_tune": {None, 0.5},
                    "teacher.d_out": {20, 100}, "teacher.ks": {(10, 15, 20, 25), (50, 75, 100, 125)},
                    "callbacks.theory": {None}}),
    "theorem": (3, {"teacher.d": {10}, "teacher.ks": {(20,)}, "teacher.d_out": {30}, "teacher.normalize": {"fan_in"},
                    "teacher.bias": {0.0}, "teacher.output_relu": {False}, "student.width_mult": {2, 5, 10},
                    "student.init": {"gaussian_plus_teacher"}, "student.perturb_std": {0.1},
                    "data.std": {1.0}, "data.batch_size": {64}, "data.regenerate_each_epoch": {True},
                    "optimizer.lr": {0.75}, "optimizer.renormalize": {"fan_in"}, "epochs": {20}}),
    "theorem_plain_sgd": (6, {"teacher.ks": {(10,)}, "teacher.d_out": {20, 100}, "student.width_mult": {2, 5, 10},
                              "student.init": {"perturb"}, "student.perturb_std": {0.0}, "optimizer.lr": {0.03},
                              "optimizer.renormalize": {None}}),
    "specialization": (24, {"teacher.strength_decay": {0, 0.5, 1, 1.5, 2, 2.5}, "student.width_mult": {1, 2, 5, 10},
                            "teacher.ks": {(10,)}, "teacher.d": {100}, "teacher.d_out": {50},
                            "teacher.bias_tune": {0.5}, "teacher.standardize_outputs": {True},
                            "student.num_students": {8}, "epochs": {100}}),
}


def values(cfgs, key):
    """The set of values ``key`` takes over the configs (lists as tuples)."""
    out = set()
    for cfg in cfgs:
        value = OmegaConf.select(cfg, key)
        out.add(tuple(value) if isinstance(value, ListConfig) else value)
    return out


def test_every_preset_has_an_expectation():
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_expands_to_its_jobs_and_each_is_valid(preset):
    n_jobs, expected = EXPECTED[preset]
    jobs = sweep_jobs([f"sweep={preset}"])
    assert len(jobs) == n_jobs and len({tuple(j) for j in jobs}) == n_jobs
    cfgs = job_configs(jobs)
    for cfg in cfgs:
        validate(cfg)
    for key, wanted in expected.items():
        assert values(cfgs, key) == wanted, key
    # one teacher per preset unless the preset sweeps the teacher itself
    teachers = values(cfgs, "teacher.seed"), values(cfgs, "teacher.ks")
    assert len(teachers[0]) == 1 and (preset == "teacher" or len(teachers[1]) == 1)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_a_multirun_with_its_params(preset):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={preset}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params


def test_seed_axis_varies_students_and_keeps_the_teacher():
    jobs = sweep_jobs(["sweep=theorem_plain_sgd", "student.seed=0,1,2", "epochs=2"])
    assert len(jobs) == 18
    cfgs = job_configs(jobs)
    assert values(cfgs, "student.seed") == {0, 1, 2} and values(cfgs, "teacher.seed") == {1}
    assert values(cfgs, "epochs") == {2}            # the command line beats the preset


def test_sweeps_cli_lists_jobs_and_names_a_bad_one(capsys):
    assert main(["sweep=theorem_plain_sgd"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "6 jobs" and out[0].startswith("#0: teacher.d_out=20 student.width_mult=2")
    assert main(["sweep=theorem_plain_sgd", "student.width_mult=2,-1"]) == 2
    err = capsys.readouterr().err
    assert "job 1" in err and "student.width_mult=-1" in err


def test_slurm_launchers_are_submitit_slurm_with_tsdyn_defaults(monkeypatch):
    monkeypatch.delenv("TSDYN_SLURM_PARTITION", raising=False)
    launchers = {}
    for preset in ("slurm", "slurm_gpu"):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("train", overrides=["sweep=width", f"hydra/launcher={preset}", "hydra.launcher.account=a"],
                          return_hydra_config=True)
        launchers[preset] = cfg.hydra.launcher
    for launcher in launchers.values():
        assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
        assert (launcher.partition, launcher.account, launcher.cpus_per_task) == (None, "a", 4)
    # CPU: no GPU asked for (a CPU partition refuses the job otherwise); GPU: one per job
    assert (launchers["slurm"].gpus_per_node, launchers["slurm"].gres, launchers["slurm"].timeout_min) == (None, None, 720)
    assert (launchers["slurm_gpu"].gpus_per_node, launchers["slurm_gpu"].timeout_min) == (1, 240)
