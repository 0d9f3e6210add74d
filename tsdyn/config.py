"""Validation of a composed config, before any work: every bad value gets one line naming the
full key, the value given and what is allowed.

Two stages: :func:`check_values` needs no torch and no file beyond the image sets' (the command
line runs it before Hydra starts, and ``tsdyn.sweeps`` on every job), :func:`check_imports` then
imports what a key names (a callback class from outside :mod:`tsdyn.callbacks`, the optimizer
class) and reads the teacher file. :func:`validate` runs both, in that order."""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from tsdyn.choices import BN_PLACEMENTS, CLIP_ALGORITHMS, INIT_MODES, LOSSES, ROW_NORMS, STEP_MODES
from tsdyn.errors import ConfigError, exit_on_config_error, fail  # noqa: F401 - re-exported
from tsdyn.imagefiles import IMAGE_SETS, require_files


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


Rule = tuple[Callable[[Any], bool], str]
POSITIVE_INT: Rule = (lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT: Rule = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POSITIVE: Rule = (lambda v: _is_num(v) and v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: _is_num(v) and v >= 0, "a number >= 0")
UNIT: Rule = (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]")
OPEN_UNIT: Rule = (lambda v: v is None or (_is_num(v) and 0 < v < 1), "null or a number in (0, 1)")
BOOL: Rule = (lambda v: isinstance(v, bool), "true or false")
POSITIVE_INT_LIST: Rule = (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                           and all(_is_int(k) and k > 0 for k in v), "a non-empty list of positive integers")
NUMBER_LIST: Rule = (lambda v: isinstance(v, (list, tuple)) and any(_is_num(c) and c != 0 for c in v)
                     and all(_is_num(c) for c in v), "a list of numbers, not all zero")


THRESHOLD: Rule = (lambda v: UNIT[0](v), "a threshold in [0, 1]")
THRESHOLDS: Rule = (lambda v: isinstance(v, list) and all(UNIT[0](t) for t in v), "a list of thresholds in [0, 1]")


def one_of(choices) -> Rule:
    return (lambda v: v in choices, f"one of {list(choices)}")


RULES: dict[str, Rule] = {
    "teacher.d": (lambda v: POSITIVE_INT[0](v) or (isinstance(v, list) and len(v) == 3 and POSITIVE_INT_LIST[0](v)),
                  "a positive integer (fully connected teacher) or an input shape [C, H, W] (conv teacher: "
                  "image data, or Gaussian inputs of that shape)"),
    "teacher.kernel_size": POSITIVE_INT,
    "teacher.ks": POSITIVE_INT_LIST,
    "teacher.d_out": POSITIVE_INT,
    "teacher.seed": NON_NEGATIVE_INT,
    "teacher.weight_choices": NUMBER_LIST,
    "teacher.strength_decay": NON_NEGATIVE,
    "teacher.bias_tune": OPEN_UNIT,
    "teacher.normalize": one_of(ROW_NORMS),
    "teacher.bias": (lambda v: v is None or _is_num(v), "null (biases ~ U(-0.5, 0.5)) or a number (every bias)"),
    "teacher.standardize_outputs": BOOL,
    "teacher.bn": one_of(BN_PLACEMENTS),
    "teacher.bn_affine": BOOL,
    "student.width_mult": POSITIVE_INT,
    "student.num_students": POSITIVE_INT,
    "student.seed": NON_NEGATIVE_INT,
    "student.bn": one_of(BN_PLACEMENTS),
    "student.bn_affine": BOOL,
    "student.init": one_of(INIT_MODES),
    "student.init_scale": POSITIVE,
    "data.std": POSITIVE,
    "data.n_train": POSITIVE_INT,
    "data.n_eval": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "data.batch_size": POSITIVE_INT,
    "data.regenerate_each_epoch": BOOL,
    "data.seed": NON_NEGATIVE_INT,
    "data.dataset": one_of(IMAGE_SETS),
    "data.download": BOOL,
    "data.crop_padding": NON_NEGATIVE_INT,
    "data.hflip": BOOL,
    "data.num_classes": POSITIVE_INT,
    "data.norm_mean": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_num(m) for m in v),
                       "a list of numbers (one per channel)"),
    "data.norm_std": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_num(s) and s > 0 for s in v),
                      "a list of numbers > 0 (one per channel)"),
    "optimizer.lr": POSITIVE,
    "optimizer.momentum": NON_NEGATIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.renormalize": (lambda v: v is None or v in ROW_NORMS, f"null or one of {list(ROW_NORMS)}"),
    "teacher.output_relu": BOOL,
    "loss": one_of(LOSSES),
    "epochs": POSITIVE_INT,
    "steps_per_call": POSITIVE_INT,
    "step": one_of(STEP_MODES),
    "fused_chunk": POSITIVE_INT,
    "log_every_n_steps": POSITIVE_INT,
    "threads": (lambda v: v is None or POSITIVE_INT[0](v), "null or a positive integer"),
    "trainer.accelerator": one_of(("auto", "cpu", "gpu", "cuda", "mps")),
    "trainer.enable_progress_bar": BOOL,
    "trainer.fast_dev_run": (lambda v: isinstance(v, bool) or (_is_int(v) and v >= 0), "true, false or a number of steps"),
    "trainer.limit_train_batches": (lambda v: (_is_int(v) and v > 0) or (_is_num(v) and 0 < v <= 1),
                                    "a number of training_step calls > 0 or a share of the epoch in (0, 1]"),
    "trainer.max_steps": (lambda v: _is_int(v) and (v == -1 or v > 0), "-1 (no limit) or a positive integer"),
    "trainer.gradient_clip_val": (lambda v: v is None or (_is_num(v) and v > 0), "null or a number > 0"),
    "trainer.gradient_clip_algorithm": (lambda v: v is None or v in CLIP_ALGORITHMS,
                                        f"null or one of {list(CLIP_ALGORITHMS)}"),
    "logger.wandb.mode": one_of(("online", "offline", "disabled")),
    "logger.wandb.settings.init_timeout": POSITIVE,
}


# The fields of tsdyn's analyses (tsdyn.callbacks), by class: each class declares its entry as its
# ``config_rules``; kept here so that checking them needs no torch. A callback class from elsewhere
# declares its own ``config_rules``, read when it is imported (check_imports).
ANALYSIS_RULES: dict[str, Rule] = {"every_n_epochs": POSITIVE_INT, "media_every_n_epochs": POSITIVE_INT}
CALLBACK_RULES: dict[str, dict[str, Rule]] = {
    "tsdyn.callbacks.NodeMatching": {**ANALYSIS_RULES, "thresholds": THRESHOLDS},
    "tsdyn.callbacks.FanOut": {**ANALYSIS_RULES, "threshold": THRESHOLD, "bn_effective": BOOL},
    "tsdyn.callbacks.BNBias": ANALYSIS_RULES,
    "tsdyn.callbacks.WeightDrift": ANALYSIS_RULES,
    "tsdyn.callbacks.BetaH": {**ANALYSIS_RULES, "n_samples": POSITIVE_INT, "required": BOOL},
    "tsdyn.callbacks.Sparsity": ANALYSIS_RULES,
    "tsdyn.callbacks.Luck": {**ANALYSIS_RULES, "baseline_epochs": NON_NEGATIVE_INT, "threshold": THRESHOLD},
    "tsdyn.callbacks.Pruning": {"share": UNIT, "seed": NON_NEGATIVE_INT, "norm_ord": POSITIVE, "bn_effective": BOOL},
    "tsdyn.callbacks.LabelAccuracy": ANALYSIS_RULES,
}
# optimizer keys that are tsdyn's, not the optimizer class's arguments
OPTIMIZER_OWN = ("_target_", "_partial_", "lr_schedule", "renormalize")

MULTI_PROCESS = ("tsdyn trains in one process on one device; for several students in one run use "
                 "student.num_students, for many runs a multirun (-m) or hydra/launcher=slurm")
# Trainer options the loop cannot honour: key -> (the values it can, what to do instead). The loop
# drives the optimizer itself (several steps per training_step) and has no validation loop.
TRAINER_REFUSED: dict[str, Rule] = {
    "trainer.max_epochs": (lambda v: False, "no value: the number of epochs is epochs=N"),
    "trainer.devices": (lambda v: v in (1, "1") or (isinstance(v, list) and len(v) == 1),
                        f"1 or one device id in a list, e.g. [0] ({MULTI_PROCESS})"),
    "trainer.num_nodes": (lambda v: v == 1, f"1 ({MULTI_PROCESS})"),
    "trainer.strategy": (lambda v: v in ("auto", "single_device"), f"'auto' ({MULTI_PROCESS})"),
    "trainer.precision": (lambda v: v in (32, "32", "32-true"), "32 (the loop steps the optimizer itself: "
                          "no mixed-precision loss scaling)"),
    "trainer.accumulate_grad_batches": (lambda v: v == 1, "1 (every step updates; use a larger data.batch_size)"),
    "trainer.limit_val_batches": (lambda v: v == 0, "0 (no validation loop: the analyses evaluate every epoch)"),
    "trainer.val_check_interval": (lambda v: v is None, "null (no validation loop: the analyses evaluate every epoch)"),
    "trainer.overfit_batches": (lambda v: v == 0, "0 (use data.n_train for a small training set)"),
    "trainer.callbacks": (lambda v: v is None, "null (callbacks come from the callbacks group: +callbacks.<name>=...)"),
    "trainer.logger": (lambda v: v is None, "null (loggers come from the logger group: logger=csv, logger=[wandb,csv])"),
    "trainer.enable_checkpointing": (lambda v: v is True, "true (checkpoints are the callbacks' checkpoint entry: "
                                     "~callbacks.checkpoint turns them off)"),
}
TRAINER_HONOURED = ("_target_", "accelerator", "enable_progress_bar", "enable_model_summary", "num_sanity_val_steps",
                    "log_every_n_steps", "fast_dev_run", "limit_train_batches", "max_steps", "max_time", "min_epochs",
                    "min_steps", "gradient_clip_val", "gradient_clip_algorithm", "default_root_dir", "deterministic",
                    "benchmark", "detect_anomaly", "profiler", "inference_mode")


def check_trainer(cfg: DictConfig) -> None:
    """Trainer options: each one the loop honours (``TRAINER_HONOURED``), or one it cannot at the one
    value it can (``TRAINER_REFUSED``); anything else is refused, naming the options there are."""
    for name in (_plain(cfg, "trainer") or {}):
        key = f"trainer.{name}"
        if key in TRAINER_REFUSED:
            ok, allowed = TRAINER_REFUSED[key]
            if not ok(_plain(cfg, key)):
                fail(key, _plain(cfg, key), allowed)
        elif name not in TRAINER_HONOURED:
            fail(key, _plain(cfg, key), f"a Trainer option tsdyn's loop honours: "
                 f"{', '.join(TRAINER_HONOURED[1:])} (or {', '.join(k[8:] for k in TRAINER_REFUSED)} at one value)")


def _plain(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first bad value of ``cfg`` (a composed train config)."""
    check_values(cfg)
    check_imports(cfg)


def check_values(cfg: DictConfig) -> None:
    """The checks of :func:`validate` that import nothing heavy and read no file but the image
    sets' (their presence): every value, and the teacher's input size unless a teacher file says it."""
    check_trainer(cfg)
    for key, (ok, allowed) in RULES.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = _plain(cfg, key)
        if not ok(value):
            fail(key, value, allowed)

    schedule = _plain(cfg, "optimizer.lr_schedule") or {}
    if not isinstance(schedule, dict):
        fail("optimizer.lr_schedule", schedule, "a mapping {epoch: lr}")
    for epoch, lr in schedule.items():
        if not (_is_int(epoch) and epoch >= 0):
            fail("optimizer.lr_schedule", schedule, f"integer epochs >= 0 as keys (got {epoch!r})")
        if not (_is_num(lr) and lr > 0):
            fail(f"optimizer.lr_schedule.{epoch}", lr, "a learning rate > 0")

    init = _plain(cfg, "student.init")
    if init in ("perturb", "gaussian_plus_teacher"):
        std = _plain(cfg, "student.perturb_std")
        if not (_is_num(std) and std >= 0):
            fail("student.perturb_std", std, f"a noise std >= 0 (student.init={init} needs one)")

    check_fused_step(cfg)

    n_train, bs = _plain(cfg, "data.n_train"), _plain(cfg, "data.batch_size")
    if _is_int(n_train) and _is_int(bs) and bs > n_train:
        fail("data.batch_size", bs, f"at most data.n_train={n_train}")

    for name in (_plain(cfg, "callbacks") or {}):
        target = _plain(cfg, f"callbacks.{name}._target_")
        if target in CALLBACK_RULES:
            check_callback_fields(cfg, name, CALLBACK_RULES[target])
        if theory_required(cfg, name):
            for net in ("student", "teacher"):
                bn = _plain(cfg, f"{net}.bn")
                if bn not in (None, "none"):
                    fail(f"{net}.bn", bn, f"'none' while callbacks.{name}.required=true (the beta/H theory needs "
                                          f"fully connected nets without BatchNorm); set it to false to skip")

    check_image_files(cfg)
    if not teacher_file_given(cfg):
        d = _plain(cfg, "teacher.d")
        check_inputs(cfg, "teacher.d", d, "conv" if isinstance(d, list) else "fc", d)


def check_imports(cfg: DictConfig) -> None:
    """The checks of :func:`validate` that import what the config names or read a file (after
    :func:`check_values`, whose checks need neither): each callback class from outside
    :mod:`tsdyn.callbacks` imports and its fields meet its ``config_rules``; every optimizer key is an
    argument of the optimizer class; the teacher file is one, reading the data's inputs."""
    for name in (_plain(cfg, "callbacks") or {}):
        target = _plain(cfg, f"callbacks.{name}._target_")
        if target is not None and target not in CALLBACK_RULES:
            check_callback_fields(cfg, name, getattr(import_target(f"callbacks.{name}._target_", target),
                                                     "config_rules", {}))
    check_optimizer_arguments(cfg)
    if teacher_file_given(cfg):
        from tsdyn.nets import read_teacher_file  # torch.load
        value = _plain(cfg, "teacher.checkpoint")
        try:
            teacher_file = read_teacher_file(value)
        except (TypeError, OSError, ValueError) as err:
            fail("teacher.checkpoint", value, f"a teacher file written by python -m tsdyn.pretrain_teacher ({err})")
        check_inputs(cfg, "teacher.checkpoint", value, teacher_file["kind"], teacher_file["arch"]["d"])


def import_target(key: str, target: str) -> type:
    """The class ``target`` (the value of ``key``); one that does not import is refused."""
    try:
        return get_class(target)
    except Exception as err:  # noqa: BLE001 - hydra wraps every import failure
        fail(key, target, f"an importable class ({str(err).splitlines()[0]})")


def check_optimizer_arguments(cfg: DictConfig) -> None:
    """Every key of the ``optimizer`` group (``+optimizer.nesterov=true`` adds one) is an argument of
    its class, or one of tsdyn's own (:data:`OPTIMIZER_OWN`)."""
    target = _plain(cfg, "optimizer._target_")
    if target is None:
        return
    arguments = [a for a in inspect.signature(import_target("optimizer._target_", target)).parameters
                 if a not in ("self", "params")]
    for key in _plain(cfg, "optimizer"):
        if key not in OPTIMIZER_OWN and key not in arguments:
            fail(f"optimizer.{key}", _plain(cfg, f"optimizer.{key}"),
                 f"an argument of {target}: {', '.join(arguments)} (or {', '.join(OPTIMIZER_OWN[2:])})")


def check_fused_step(cfg: DictConfig) -> None:
    """``step=fused`` / ``compiled`` need what the fused step covers (tsdyn.fused): a fully connected
    student without BatchNorm trained by plain SGD (momentum and weight decay allowed)."""
    step = _plain(cfg, "step")
    if step not in ("fused", "compiled"):
        return
    needs = "auto or autograd for this run: the fused step covers fully connected students without " \
            "BatchNorm trained by torch.optim.SGD"
    if _plain(cfg, "student.bn") not in (None, "none") or isinstance(_plain(cfg, "teacher.d"), list):
        fail("step", step, needs + f" (student.bn={_plain(cfg, 'student.bn')}, teacher.d={_plain(cfg, 'teacher.d')})")
    if _plain(cfg, "optimizer._target_") != "torch.optim.SGD" or any(
            _plain(cfg, f"optimizer.{k}") for k in ("dampening", "nesterov", "maximize")):
        fail("step", step, needs + f" without dampening or nesterov (optimizer: {_plain(cfg, 'optimizer')})")
    if _plain(cfg, "trainer.gradient_clip_val"):
        fail("step", step, needs + f" without gradient clipping (trainer.gradient_clip_val="
                                   f"{_plain(cfg, 'trainer.gradient_clip_val')})")


def check_callback_fields(cfg: DictConfig, name: str, rules: dict[str, Rule]) -> None:
    """The fields of ``callbacks.<name>`` against ``rules`` (its class's ``config_rules``)."""
    for field, (ok, allowed) in rules.items():
        value = _plain(cfg, f"callbacks.{name}.{field}")
        if value is not None and not ok(value):
            fail(f"callbacks.{name}.{field}", value, allowed)


def theory_required(cfg: DictConfig, name: str) -> bool:
    """Whether callback ``name`` is the beta/H theory and must run (``required``, the default for an
    explicit request); the default callbacks set ``required: false`` and skip BN / conv nets."""
    return (_plain(cfg, f"callbacks.{name}._target_") == "tsdyn.callbacks.BetaH"
            and _plain(cfg, f"callbacks.{name}.required") is not False)


def teacher_file_given(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "teacher.checkpoint", default="__absent__") != "__absent__"


def check_image_files(cfg: DictConfig) -> None:
    """The image files are present, unless torchvision downloads them."""
    dataset = _plain(cfg, "data.dataset")
    if dataset is not None and not _plain(cfg, "data.download"):
        try:
            require_files(dataset, _plain(cfg, "data.root"))
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None


def check_inputs(cfg: DictConfig, key: str, value: Any, kind: str, d: Any) -> None:
    """The teacher reads the data: its input size or shape ``d`` (a ``kind`` ``fc`` or ``conv`` net,
    given by ``key`` = ``value``: the config's teacher, or a teacher file's) equal to the data's,
    and the beta/H theory kept to fully connected teachers."""
    dataset = _plain(cfg, "data.dataset")
    shape = _plain(cfg, "data.shape")
    if shape is not None and d != (shape if kind == "conv" else _plain(cfg, "data.input_dim")):
        expected = shape if kind == "conv" else f"{_plain(cfg, 'data.input_dim')} (flattened {shape})"
        fail(key, value, f"a teacher reading data={dataset}'s inputs {expected}; this one reads {d}")
    if shape is None and kind == "conv" and not (isinstance(d, list) and len(d) == 3):
        fail(key, value, "an input shape [C, H, W]: image data (data=fashion_mnist, mnist or cifar10) or "
                         "Gaussian inputs of that shape")
    for name in (_plain(cfg, "callbacks") or {}):
        if kind == "conv" and theory_required(cfg, name):
            fail(f"callbacks.{name}.required", True, f"false for a conv teacher (the beta/H theory needs fully "
                                                      f"connected nets), or ~callbacks.{name}")
