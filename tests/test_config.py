"""Every config group option composes and instantiates; bad values fail early, naming the key."""
from pathlib import Path

import pytest

from tests.cli import interpreter
from tests.conftest import CONF, compose_cfg
from tsdyn.config import ConfigError, validate
from tsdyn.build import build

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONF).iterdir() if g.is_dir()}
# options that need image files or a teacher file: composed and built in tests/test_images.py
IMAGE_OPTIONS = {("data", "fashion_mnist"), ("data", "mnist"), ("data", "cifar10"), ("teacher", "conv"),
                 ("teacher", "pretrained"), ("experiment", "fashion_mnist_student")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts
                                          if g != "sweep" and (g, o) not in IMAGE_OPTIONS])
def test_every_group_option_composes_and_builds(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}", "data.n_train=256", "data.n_eval=64"], tmp_path)
    validate(cfg)
    module, trainer = build(cfg, tmp_path)
    assert module.student.ks == [k * cfg.student.width_mult for k in module.teacher.ks]
    assert trainer.max_epochs == cfg.epochs


def test_default_is_the_papers_main_job(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert (cfg.teacher.d, list(cfg.teacher.ks), cfg.teacher.d_out) == (20, [10, 15, 20, 25], 100)
    assert (cfg.student.width_mult, cfg.data.std, cfg.data.batch_size, cfg.epochs) == (10, 10.0, 64, 40)
    assert (cfg.data.n_train, cfg.data.n_eval) == (100000, 10240)
    assert (cfg.optimizer._target_, cfg.optimizer.momentum, cfg.loss) == ("torch.optim.SGD", 0.0, "mse")


BAD = [
    ("student.width_mult=-1", "student.width_mult=-1"),
    ("student.width_mult=0", "student.width_mult=0"),
    ("teacher.ks=[]", "teacher.ks=[]"),
    ("teacher.ks=[10,-3]", "teacher.ks=[10, -3]"),
    ("data.std=0", "data.std=0"),
    ("data.batch_size=200000", "data.batch_size=200000"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1"),
    ("optimizer.lr_schedule={-1:0.1}", "optimizer.lr_schedule={-1: 0.1}"),
    ("student.bn=sideways", "student.bn='sideways'"),
    ("student.init=lucky", "student.init='lucky'"),
    ("student.init=perturb", "student.perturb_std=None"),
    ("callbacks.matching.thresholds=[0.5,1.5]", "callbacks.matching.thresholds=[0.5, 1.5]"),
    ("loss=hinge", "loss='hinge'"),
    ("teacher.bias_tune=1.5", "teacher.bias_tune=1.5"),
    ("teacher.normalize=l2", "teacher.normalize='l2'"),
    ("teacher.bias=low", "teacher.bias='low'"),
    ("teacher.standardize_outputs=maybe", "teacher.standardize_outputs='maybe'"),
    ("student.init=gaussian_plus_teacher", "student.perturb_std=None"),
    ("callbacks.fanout.bn_effective=2", "callbacks.fanout.bn_effective=2"),
    # one case per bad value of the reliability issue (a case may need several overrides)
    ("teacher.ks=[10,0]", "teacher.ks=[10, 0]"),
    ("teacher.d=0", "teacher.d=0"),
    ("student.width_mult=2.5", "student.width_mult=2.5"),
    ("student.num_students=0", "student.num_students=0"),
    ("data.std=-1", "data.std=-1"),
    ("data.n_train=0", "data.n_train=0"),
    ("data.n_eval=1", "data.n_eval=1"),
    ("optimizer.lr=0", "optimizer.lr=0"),
    ("optimizer=adam optimizer.lr=-1e-3", "optimizer.lr=-0.001"),
    ("optimizer.lr_schedule={1.5:0.01}", "optimizer.lr_schedule={1.5: 0.01}"),
    ("optimizer.lr_schedule={ten:0.01}", "optimizer.lr_schedule={'ten': 0.01}"),
    ("optimizer.lr_schedule={5:-0.01}", "optimizer.lr_schedule.5=-0.01"),
    ("teacher.bn=middle", "teacher.bn='middle'"),
    ("student.init=perturb student.perturb_std=-0.1", "student.perturb_std=-0.1"),
    ("data=fashion_mnist data.download=true teacher.d=20", "teacher.d=20"),  # input size != the data's
    ("callbacks.fanout.threshold=-0.1", "callbacks.fanout.threshold=-0.1"),
    ("callbacks.luck.threshold=1.01", "callbacks.luck.threshold=1.01"),
    ("student.bn=after_relu callbacks.theory.required=true", "student.bn='after_relu'"),  # beta/H on BN
    ("teacher=conv teacher.bn=none data=fashion_mnist data.download=true callbacks.theory.required=true",
     "callbacks.theory.required=True"),  # beta/H theory on a conv net
    ("epochs=0", "epochs=0"),
    ("steps_per_call=0", "steps_per_call=0"),
    ("log_every_n_steps=-5", "log_every_n_steps=-5"),
    ("threads=0", "threads=0"),
    ("trainer.accelerator=tpuu", "trainer.accelerator='tpuu'"),
    ("logger.wandb.mode=onlin", "logger.wandb.mode='onlin'"),
    ("+optimizer.momentun=0.9", "optimizer.momentun=0.9"),        # not an argument of torch.optim.SGD
    ("optimizer=adam +optimizer.nesterov=true", "optimizer.nesterov=True"),
]


@pytest.mark.parametrize("override,named", BAD)
def test_bad_value_names_key_and_value(override, named, tmp_path):
    cfg = compose_cfg(override.split(), tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert named in msg and "expected" in msg and "\n" not in msg


def _cli(*overrides, tmp_path):
    return interpreter(["-m", "tsdyn.train", *overrides, f"hydra.run.dir={tmp_path}/r"])


def test_cli_bad_value_one_line_before_any_work(tmp_path):
    res = _cli("student.width_mult=-2", tmp_path=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["tsdyn: config error: student.width_mult=-2 is not allowed: expected a positive integer"]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_cli_unknown_teacher_lists_choices(tmp_path):
    res = _cli("teacher=deep_randon", tmp_path=tmp_path)
    assert res.returncode != 0
    assert "deep_randon" in res.stderr and "deep_random_large" in res.stderr
