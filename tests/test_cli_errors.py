"""The command line's answers before torch loads (tsdyn.cli): a typo, an unknown key or option, an
override Hydra cannot parse or a bad value is one line on stderr, exit status 2, naming the key and
what is allowed; valid commands pass untouched; the light path never imports torch."""

import pytest
from omegaconf import OmegaConf

from tests.cli import ROOT, USER_ENV, interpreter
from tsdyn import cli
from tsdyn.cli import check_command_line
from tsdyn.config import ANALYSIS_RULES, CALLBACK_RULES, check_values

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "wandb", "matplotlib", "scipy", "torchvision", "pandas")

REFUSED = [  # (command line, what the one line must say)
    (["student.widht_mult=5"], "student.widht_mult is not a key of the config; did you mean student.width_mult?"),
    (["+student.widht_mult=5"], "student.widht_mult is not a key of the config; did you mean student.width_mult?"),
    (["studnt.width_mult=5"], "did you mean student.width_mult?"),
    (["teachr=deep_random"], "did you mean teacher?"),
    (["+unknown=3"], "unknown is not a key of the config (the keys at the top: teacher, student, data,"),
    (["~student.foo"], "student.foo is not a key of the config (the keys of student: _target_, _partial_, width_mult"),
    (["+callbacks.matching.foo=1"], "callbacks.matching.foo is not a key of the config (the keys of callbacks.matching:"),
    (["+experiment=width"], "experiment=width is not allowed: expected one of bn_student, fashion_mnist_student, "
                            "theorem; width is an option of sweep: sweep=width"),
    (["+experiment=theorem"], "+experiment=theorem: experiment is a config group that has an option already; "
                              "choose another without the +: experiment=theorem"),
    (["teacher=nope"], "teacher=nope is not allowed: expected one of conv, deep_random, deep_random_large, "
                       "follow_up, pretrained"),
    (["teacher=deep_randon"], "did you mean teacher=deep_random?"),
    (["hydra/launcher=slurmm"], "hydra/launcher=slurmm is not allowed: expected one of basic, joblib, slurm,"),
    (["student.width_mult=["], "'student.width_mult=[' is not an override Hydra can parse"),
    (["student.width_mult=1,2"], "student.width_mult=1,2: a sweep over several values needs -m (--multirun)"),
    (["-m", "teacher=deep_random,nope"], "teacher=nope is not allowed"),
    (["-m", "student.widht_mult=1,2"], "did you mean student.width_mult?"),
    (["sweep=width", "student.num_studnts=2"], "did you mean student.num_students?"),
    (["student.width_mult=0"], "student.width_mult=0 is not allowed: expected a positive integer"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: expected a number > 0"),
]


@pytest.mark.parametrize("argv,says", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_bad_command_line_is_one_line_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        check_command_line("train", argv, check=check_values)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tsdyn: config error: ")
    assert says in err


@pytest.mark.parametrize("argv", [
    [], ["--hydra-help"], ["-sc", "install=bash"], ["--cfg", "job", "student.width_mult=5"],
    ["+trainer.max_steps=5", "+trainer.gradient_clip_val=1.0"],
    ["+callbacks.best._target_=pytorch_lightning.callbacks.ModelCheckpoint", "+callbacks.best.mode=max"],
    ["+callbacks.signal={_target_: tests.test_reliability.SignalAt, epoch: 1}"],
    ["+optimizer.nesterov=true", "optimizer.momentum=0.9"],
    ["-m", "student.width_mult=1,2"], ["sweep=width"], ["-m", "sweep=width", "hydra/launcher=slurm"],
    ["experiment=theorem"], ["~callbacks.theory"], ["+hydra.job.env_set.X=1"],
    ["--config-name", "nope"],   # another config: Hydra's alone
])
def test_valid_command_lines_pass(argv, capsys):
    check_command_line("train", argv, check=check_values)
    assert capsys.readouterr().err == ""


def test_help_is_the_template_as_hydra_renders_it(capsys):
    with pytest.raises(SystemExit) as stop:
        check_command_line("train", ["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("tsdyn-train (python -m tsdyn.train): train students")   # ${hydra.help.header}
    assert "\nGROUPS (group=option; main keys)\n" in out and "\nEXAMPLES\n" in out
    assert 'eval "$(tsdyn-train -sc install=bash)"' in out                           # "$$" is one "$"
    cfg = cli.compose_checked("train", [])
    cfg.hydra.help.template = "groups: $APP_CONFIG_GROUPS"        # a field Hydra computes: Hydra answers
    assert cli.help_text(cfg) is None


@pytest.mark.slow  # composes every job of every sweep preset twice (~5 s)
def test_a_sweeps_jobs_composed_once_per_group_combination_equal_hydras_own():
    from tsdyn.sweeps import sweep_jobs
    # the preset's own axis (student.bn), one narrowed on the command line, a group axis, an addition
    jobs = sweep_jobs(["sweep=batchnorm", "student.width_mult=1,2", "teacher=deep_random,follow_up",
                       "+trainer.max_steps=5"])
    assert len(jobs) == 12
    bases = {}
    for job in jobs:
        fast, own = cli.compose_checked("train", job, bases=bases), cli.compose_checked("train", job)
        assert OmegaConf.to_container(cli.without_hydra(fast)) == OmegaConf.to_container(cli.without_hydra(own))
    assert len(bases) == 2


def test_a_multirun_leaves_values_to_its_jobs(capsys):
    """One bad job of a sweep is recorded by that job, the others run (tsdyn.multirun)."""
    check_command_line("train", ["-m", "student.width_mult=0,2"], check=check_values)
    assert capsys.readouterr().err == ""


def test_the_other_commands_check_their_keys(capsys):
    from tsdyn.pretrain_teacher import check_pretrain_values
    for config, argv, check, says in [("pretrain", ["prune=1.5", "data.download=true"], check_pretrain_values, "prune=1.5 is not allowed"),
                                      ("pretrain", ["epoch=3"], check_pretrain_values, "did you mean epochs?"),
                                      ("bn_bias", ["modl=vgg16_bn"], None, "did you mean model?")]:
        with pytest.raises(SystemExit) as stop:
            check_command_line(config, argv, check=check)
        assert stop.value.code == 2 and says in capsys.readouterr().err


def test_every_analysis_class_declares_its_rules_in_the_light_table():
    import tsdyn.callbacks as callbacks
    analyses = [c for c in vars(callbacks).values()
                if isinstance(c, type) and issubclass(c, callbacks.Analysis) and c is not callbacks.Analysis]
    assert {f"tsdyn.callbacks.{c.__name__}" for c in analyses} == set(CALLBACK_RULES)
    for cls in analyses:
        assert cls.config_rules == CALLBACK_RULES[f"tsdyn.callbacks.{cls.__name__}"], cls
    assert callbacks.Analysis.config_rules is ANALYSIS_RULES


def test_the_light_path_imports_no_torch():
    """Importing every entry point, checking a command line, composing and checking every value of
    a run and of a sweep's jobs, and a multirun job refused for a bad value (Hydra's callbacks of
    the train config instantiated, as in every job; the job exits 2): none of torch, Lightning,
    W&B, matplotlib, scipy (a top-level heavy import in tsdyn.train, tsdyn.config, tsdyn.cli,
    tsdyn.resume ... fails this). Teacher pre-training and the notebook API load torch, never
    Lightning."""
    code = ("import sys\n"
            "import tsdyn, tsdyn.train, tsdyn.sweeps, tsdyn.pretrain_teacher, tsdyn.bn_bias, tsdyn.report\n"
            "from hydra import compose, initialize_config_dir\n"
            "from hydra.utils import instantiate\n"
            "from tsdyn.config import check_values\n"
            "from tsdyn.cli import check_command_line\n"
            "check_command_line('train', ['student.width_mult=5', 'callbacks.matching.thresholds=[0.9]'], check_values)\n"
            "assert tsdyn.sweeps.main(['sweep=width']) == 0\n"
            f"with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['student.width_mult=0'], return_hydra_config=True)\n"
            "for callback in cfg.hydra.callbacks.values():\n"
            "    instantiate(callback)\n"
            "try:\n"
            "    tsdyn.train.job(cfg)\n"
            "except SystemExit as stop:\n"
            "    assert stop.code == 2, stop.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            # then every module teacher pre-training and the notebook API import, where they import it:
            # torch, but never Lightning (~5 s of their start-up)
            "import ast, importlib, inspect, tsdyn.pretrain_teacher as p\n"
            "for node in ast.walk(ast.parse(inspect.getsource(p))):\n"
            "    if isinstance(node, ast.ImportFrom) and node.module.startswith('tsdyn'):\n"
            "        importlib.import_module(node.module)\n"
            "import tsdyn.notebook\n"
            "print('torch' in sys.modules, sorted(m for m in sys.modules if 'lightning' in m))\n")
    res = interpreter(["-c", code], USER_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[-2:] == ["[]", "True []"], res.stdout[-500:]


def test_known_harmless_notices_are_hidden_and_others_are_not():
    code = ("import logging, warnings, tsdyn.train\n"
            "logging.basicConfig()\n"
            "warnings.warn('The `srun` command is available on your system but is not used. HINT: ...')\n"
            "warnings.warn('control notice one')\n"
            "log = logging.getLogger('torch.utils.cpp_extension')\n"
            "log.warning(\"No CUDA runtime is found, using CUDA_HOME='%s'\", '/usr/local')\n"
            "log.warning('control notice two')\n")
    res = interpreter(["-c", code], USER_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "control notice one" in res.stderr and "control notice two" in res.stderr
    assert "srun" not in res.stderr and "CUDA_HOME" not in res.stderr


@pytest.mark.parametrize("module,argv,says", [
    ("tsdyn.train", ["student.widht_mult=5"], "did you mean student.width_mult?"),
    ("tsdyn.train", ["+experiment=width"], "sweep=width"),
    ("tsdyn.train", ["student.width_mult=0"], "expected a positive integer"),
    ("tsdyn.pretrain_teacher", ["teacher=nope"], "expected one of conv,"),
    ("tsdyn.sweeps", ["sweep=width", "student.widht_mult=5"], "did you mean student.width_mult?"),
])
def test_commands_answer_one_line_without_torch(module, argv, says):
    res = interpreter(["-X", "importtime", "-m", module, *argv], USER_ENV)
    assert res.returncode == 2
    imported = [x.split("|")[-1].strip() for x in res.stderr.splitlines() if x.startswith("import time:")]
    lines = [x for x in res.stderr.splitlines() if not x.startswith("import time:")]
    assert len(lines) == 1 and says in lines[0], lines
    assert not set(imported) & set(HEAVY), set(imported) & set(HEAVY)
