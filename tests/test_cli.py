"""The command line a user meets: console scripts, tab completion, ``--help``, the single-run
presets, and the commands a finished run prints (run as printed)."""
import glob
import os
import re
import shlex
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests import cli
from tests.cli import USER_ENV
from tests.conftest import CONF, ROOT, compose_cfg
from tests.multiruns import TINY
from tsdyn.config import validate
from tsdyn.runfolder.reader import newest_output
from tsdyn.sweeps import sweep_jobs

SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$',  # pyproject.toml's [project.scripts] (no tomllib on 3.10)
                          (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0], re.M))
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF).iterdir()
          if g.is_dir() and g.name != "hydra"}


def install_script(folder: Path, name: str) -> Path:
    """The launcher ``pip install`` writes for the console script ``name`` (``module:function``),
    in ``folder``, running this interpreter."""
    module, function = SCRIPTS[name].split(":")
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    path.chmod(0o755)
    return path


def test_console_scripts_name_callable_entry_points():
    assert set(SCRIPTS) == {"tsdyn-train", "tsdyn-report", "tsdyn-pretrain", "tsdyn-bn-bias", "tsdyn-sweeps"}
    for target in SCRIPTS.values():
        module, function = target.split(":")
        assert callable(getattr(import_module(module), function)), target


def test_bash_tab_completion_of_tsdyn_train(tmp_path):
    """Hydra's bash completion, installed as its README line says, completes ``tsdyn-train stu<TAB>``."""
    install_script(tmp_path, "tsdyn-train")
    script = ('eval "$(tsdyn-train -sc install=bash)"\n'
              'COMP_LINE="tsdyn-train stu"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(tsdyn-train stu); COMP_CWORD=1\n'
              'hydra_bash_completion\n'
              'echo "completions: ${COMPREPLY[@]}"\n')
    env = {**USER_ENV, "PATH": f"{tmp_path}{os.pathsep}{USER_ENV['PATH']}"}
    res = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # the group (student=fc ...) and its keys (student.width_mult=...)
    assert sorted(res.stdout.strip().splitlines()[-1].split()[1:]) == ["student.", "student="]


def test_help_lists_every_group_with_its_options_and_three_example_commands_that_compose(tmp_path):
    res = cli.interpreter(["-m", "tsdyn.train", "--help"], USER_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) < 40
    for group, options in GROUPS.items():
        line = [x for x in lines if x.split()[:1] == [group]]
        assert len(line) == 1, group
        listed = line[0].split(None, 1)[1].split(";")[0]
        assert sorted(o.strip() for o in listed.split(",")) == options, group
    block = lines[lines.index("EXAMPLES") + 1:]
    examples = [x.split("#")[0].split() for x in block[:block.index("")]]
    assert len(examples) == 3 and all(words[0] == "tsdyn-train" for words in examples)
    examples = [words[1:] for words in examples]
    for overrides in examples:        # each composes and validates (a multirun: each of its jobs)
        for job in sweep_jobs(overrides):
            validate(compose_cfg(job, tmp_path))


def test_experiment_theorem_is_one_job_of_the_theorem_sweep(tmp_path):
    preset = OmegaConf.to_container(compose_cfg(["experiment=theorem"], tmp_path))
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        job = compose("train", overrides=["sweep=theorem", "student.width_mult=5"])
    job = OmegaConf.to_container(job)
    job["run_dir"] = preset["run_dir"]
    preset.pop("sweep")     # sweep=none composes to an empty node
    assert preset == job


def test_experiment_presets_set_what_they_promise(tmp_path):
    bn = compose_cfg(["experiment=bn_student"], tmp_path)
    validate(bn)
    assert bn.student.bn == "after_relu" and bn.callbacks.theory is None
    images = compose_cfg(["experiment=fashion_mnist_student", "teacher.checkpoint=t.pt"], tmp_path)
    assert (images.teacher._target_, images.data.dataset) == ("tsdyn.nets.load_teacher", "fashion_mnist")
    assert (images.optimizer._target_, images.optimizer.lr) == ("torch.optim.Adam", 0.001)


def test_newest_output_is_the_latest_run_or_multirun(tmp_path):
    assert newest_output(tmp_path) is None
    for folder in ("runs/2026-01-02/10-00-00-000000", "multiruns/2026-01-02/09-00-00-000000",
                   "multiruns/2026-01-01/23-00-00-000000"):
        (tmp_path / folder).mkdir(parents=True)
    assert newest_output(tmp_path) == tmp_path / "runs/2026-01-02/10-00-00-000000"
    (tmp_path / "multiruns/2026-01-02/11-00-00-000000").mkdir(parents=True)
    assert newest_output(tmp_path) == tmp_path / "multiruns/2026-01-02/11-00-00-000000"


@pytest.mark.slow
def test_a_run_ends_by_naming_its_folder_and_commands_that_work_as_printed(tmp_path):
    res = cli.run(["-m", "tsdyn.train", *TINY, "epochs=1", "callbacks=minimal", "logger=wandb",
                   "trainer.enable_progress_bar=true"], USER_ENV, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for quiet in ("anonymous setting", "GPU available", "TPU available"):   # known-harmless notices
        assert quiet not in res.stderr + res.stdout, quiet
    lines = res.stdout.strip().splitlines()[-3:]
    assert lines[0].startswith("run folder: ")
    folder = Path(lines[0].split(": ", 1)[1])
    assert (folder / "summary.json").exists() and newest_output(tmp_path / "outputs") == folder
    sync = shlex.split(lines[1].split(": ", 1)[1])
    assert sync[:2] == ["wandb", "sync"] and len(glob.glob(str(tmp_path / sync[2]))) == 1   # the offline run
    report = shlex.split(lines[2].split(": ", 1)[1])
    assert report[:3] == ["python", "-m", "tsdyn.report"]
    res = cli.run(report[1:], USER_ENV, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name for p in (folder / "report").iterdir()} >= {"report.md", "curves.png", "curves.pdf"}


@pytest.mark.parametrize("module,config", [("tsdyn.pretrain_teacher", "pretrain"), ("tsdyn.bn_bias", "bn_bias")])
def test_the_other_commands_help_names_real_options_and_examples_that_compose(module, config):
    res = cli.interpreter(["-m", module, "--help"], USER_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) < 30
    for line in lines:                              # each listed option is a file of its group
        words = line.split()
        if words and words[0] in GROUPS and ";" in line:
            options = [o.split()[0] for o in line.split(None, 1)[1].split(";")[0].split(",")]
            assert set(options) <= set(GROUPS[words[0]]), line
    block = lines[lines.index("EXAMPLES") + 1:]
    examples = [shlex.split(x.split("#")[0]) for x in block[:block.index("")]]
    assert len(examples) == 3
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for words in examples:
            assert words[0] == f"tsdyn-{config.replace('_', '-')}"
            compose(config, overrides=words[1:])


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["-m", "tsdyn.train", "--help"], ["-m", "tsdyn.train", "student.width_mult=abc"],
                                  ["-m", "tsdyn.train", "trainer.devices=2", "hydra.run.dir=/nonexistent/r"]])
def test_a_forked_command_answers_as_a_new_interpreter_does(argv):
    """The tests' commands (tests/cli.py: forked from a server that imported the libraries) exit, print
    and warn exactly as the same command in a new interpreter."""
    forked, new = cli.run(argv, USER_ENV), cli.interpreter(argv, USER_ENV)
    assert (forked.returncode, forked.stdout, forked.stderr) == (new.returncode, new.stdout, new.stderr)
    assert new.returncode == (0 if "--help" in argv else 2)
