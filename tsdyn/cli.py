"""The command line before Hydra runs: a tsdyn command checks its overrides in the time Hydra needs
to compose the config, before torch loads, and refuses a bad one in one line (exit status 2):

- an override Hydra cannot parse; an unknown option of a group (the group's options named); a key
  the config does not have, also as ``+key=value`` or ``~key`` (the closest key named: ``did you
  mean student.width_mult?``). ``+`` adds a key only where a config takes new ones
  (:data:`OPEN`): Trainer options, new ``callbacks.<name>`` and ``logger.<name>`` entries,
  optimizer arguments, Hydra's settings;
- a bad value of a single run (``check``: :func:`tsdyn.config.check_values` for ``tsdyn.train``);
  the jobs of a multirun check theirs when they start (one bad job does not end the others).

Then Hydra runs the command as before (``-m``, ``--cfg``, ``-sc``, launchers). ``--help`` is
answered here when the help template (conf/hydra/help/) uses nothing Hydra computes for it (its
list of flags or groups, the config): the same text, without Hydra's scan of every config group.
"""
from __future__ import annotations

import copy
import difflib
import re
import string
import sys
from pathlib import Path
from typing import Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tsdyn.errors import ConfigError, exit_on_config_error

# absolute: Hydra resolves a relative config_path as a package when a console script (tsdyn-train) runs it
CONF = str(Path(__file__).resolve().parents[1] / "conf")
# where `+key=value` may add a key: Trainer options (tsdyn.config.check_trainer names the ones the loop
# honours), callbacks and loggers (a new entry; an existing one's fields are fixed), optimizer
# arguments (checked against the optimizer class, tsdyn.config.check_imports), Hydra's settings
OPEN = ("trainer", "callbacks", "logger", "optimizer", "hydra")
NEW_ENTRIES = ("callbacks", "logger")
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'|Could not delete from config\. '([^']+)' does not exist")
_PLUS_GROUP = re.compile(r"Multiple values for ([\w/.]+)\.")
_SWEEP = re.compile(r"Ambiguous value for argument '([^']+)'")


def check_command_line(config_name: str, argv: Sequence[str] | None = None,
                       check: Callable[[DictConfig], None] | None = None) -> None:
    """Check the command line of a Hydra command (``argv``, default ``sys.argv[1:]``) composing
    ``config_name``; a bad override or (a single run) a value ``check`` refuses ends the command
    with one line, exit status 2. ``--help`` is printed here (:func:`help_text`) where the template
    allows; ``--hydra-help``, completion and a command that picks another config (``--config-name``
    ...) are Hydra's alone."""
    args = get_args_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.help and not (args.hydra_help or args.config_path or args.config_name or args.config_dir):
        with exit_on_config_error():
            text = help_text(compose_checked(config_name, args.overrides))
        if text is not None:
            print(text)
            sys.exit(0)
    if (args.help or args.hydra_help or args.shell_completion or args.info or args.experimental_rerun
            or args.config_path or args.config_name or args.config_dir):
        return
    with exit_on_config_error():
        configs = compose_jobs(config_name, args.overrides, args.multirun)
        if check is not None and not args.cfg and not (args.multirun or is_multirun(configs[0])):
            check(without_hydra(configs[0]))


def help_text(cfg: DictConfig) -> str | None:
    """``--help``'s text from the composed ``cfg``'s ``hydra.help.template``, as Hydra makes it, or
    None when the template uses a field Hydra computes ($FLAGS_HELP, $APP_CONFIG_GROUPS ...)."""
    template = string.Template(str(OmegaConf.select(cfg, "hydra.help.template")))
    if any(m["named"] or m["braced"] for m in template.pattern.finditer(template.template)):
        return None
    return template.substitute()


def is_multirun(cfg: DictConfig) -> bool:
    """Whether the composed ``cfg`` (with its hydra node) runs as a multirun (a sweep preset says so)."""
    return OmegaConf.select(cfg, "hydra.mode", default=None) == RunMode.MULTIRUN


def without_hydra(cfg: DictConfig, run_dir: str = "<run folder>") -> DictConfig:
    """``cfg`` without its hydra node, ``run_dir`` (Hydra's output folder, known once the run
    starts) reading ``run_dir``."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
        if "run_dir" in cfg:
            cfg.run_dir = run_dir
    return cfg


def sweep_jobs(config_name: str, overrides: Sequence[str], config_dir: str = CONF) -> list[list[str]]:
    """Each job's override list of ``-m <overrides>`` (the preset's ``hydra.sweeper.params`` first,
    then the command line's; Hydra's basic sweeper's cartesian product), in launch order."""
    parsed = parse(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    return _expand(compose_checked(config_name, fixed, config_dir), parsed)


def _expand(fixed_cfg: DictConfig, parsed: list[Override]) -> list[list[str]]:
    params = [f"{k}={v}" for k, v in (OmegaConf.select(fixed_cfg, "hydra.sweeper.params") or {}).items()]
    return BasicSweeper.split_arguments(parse(params) + parsed, None)[0]


def compose_jobs(config_name: str, overrides: Sequence[str], multirun: bool = False,
                 config_dir: str = CONF) -> list[DictConfig]:
    """The composed config (hydra node included) of each job of the command: one for a single run,
    one per distinct combination of group options for a multirun (``-m``, or a preset that sets
    ``hydra.mode``; the jobs with the same groups have the same keys). :class:`ConfigError` for the
    first bad override."""
    parsed = parse(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    first = compose_checked(config_name, fixed, config_dir)
    if not (multirun or is_multirun(first)):
        if len(fixed) < len(parsed):
            compose_checked(config_name, overrides, config_dir)  # Hydra refuses: a sweep needs -m
        return [first]
    groups = set(group_names(config_dir))
    distinct = {tuple(o for o in job if o.split("=", 1)[0].lstrip("+~") in groups): job
                for job in _expand(first, parsed)}
    return [compose_checked(config_name, job, config_dir) for job in distinct.values()]


def parse(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of ``overrides``; :class:`ConfigError` naming the first it cannot parse."""
    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(list(overrides))
    except HydraException:
        for line in overrides:
            try:
                parser.parse_overrides([line])
            except HydraException as err:
                raise ConfigError(f"{line!r} is not an override Hydra can parse ({str(err).splitlines()[0]}): "
                                  f"expected key=value, +key=value, ~key or group=option") from None
        raise


def compose_checked(config_name: str, overrides: Sequence[str], config_dir: str = CONF,
                    bases: dict | None = None) -> DictConfig:
    """``config_name`` composed with ``overrides`` (its hydra node included), each ``+key`` checked
    (:func:`check_additions`); Hydra's composition errors as one :class:`ConfigError` line. With
    ``bases`` (a dict kept over calls: the jobs of a sweep) the configs composed with the group
    options only are kept there and each call applies its value overrides to a copy, as Hydra
    applies them after composing: a sweep's jobs in one composition per group combination."""
    try:
        cfg = _compose(config_name, overrides, config_dir, bases)
    except MissingConfigException as err:
        raise ConfigError(unknown_option(err, config_dir)) from None
    except (HydraException, OmegaConfBaseException) as err:
        match = _UNKNOWN_KEY.search(str(err))
        if match:
            key = match[1] or match[2]
            rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
            raise ConfigError(unknown_key(key, overrides, compose_checked(config_name, rest, config_dir))) from None
        match = _PLUS_GROUP.search(str(err))
        if match:
            line = next((o for o in overrides if o.startswith(f"+{match[1]}=")), match[1])
            raise ConfigError(f"{line}: {match[1]} is a config group that has an option already; "
                              f"choose another without the +: {line.lstrip('+')}") from None
        match = _SWEEP.search(str(err))
        if match:
            raise ConfigError(f"{match[1]}: a sweep over several values needs -m (--multirun); a list is "
                              f"written [a,b], a string with a comma quoted 'a,b'") from None
        raise ConfigError(first_line(err)) from None
    check_additions(cfg, parse(overrides))
    return cfg


def _compose(config_name: str, overrides: Sequence[str], config_dir: str, bases: dict | None = None) -> DictConfig:
    if bases is None:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=True)
    groups = set(group_names(config_dir))
    parsed = parse(overrides)
    chosen = tuple(o.input_line for o in parsed if o.key_or_group in groups or "/" in o.key_or_group)
    if chosen not in bases:
        bases[chosen] = _compose(config_name, chosen, config_dir)
    cfg = copy.deepcopy(bases[chosen])
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o.input_line not in chosen], cfg)
    return cfg


def check_additions(cfg: DictConfig, overrides: Sequence[Override]) -> None:
    """Each ``+key=value`` that is no config group adds a key where the config takes new ones
    (:data:`OPEN`; in :data:`NEW_ENTRIES` a new entry only, not a field of an existing one);
    anything else is a typo: :class:`ConfigError` naming the closest key."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    added = [o.key_or_group for o in overrides if o.is_add() and o.key_or_group not in choices]
    for key in added:
        top, *rest = key.split(".")
        if top in NEW_ENTRIES and rest:
            entry = f"{top}.{rest[0]}"
            if any(not _under(k, added) for k in dotted_keys(OmegaConf.select(cfg, entry), entry)):
                raise ConfigError(unknown_key(key, [o.input_line for o in overrides], cfg, exclude=added))
        elif top not in OPEN or not rest:
            raise ConfigError(unknown_key(key, [o.input_line for o in overrides], cfg, exclude=added))


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def dotted_keys(node, prefix: str = "") -> list[str]:
    """Every key of ``node`` (a config or a dict; lists are leaves), as full dotted paths below ``prefix``."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return []
    keys = []
    for name, value in node.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        keys += [key, *dotted_keys(value, key)]
    return keys


def unknown_key(key: str, overrides: Sequence[str], cfg: DictConfig, exclude: Sequence[str] = ()) -> str:
    """The one line for ``key``, which the config does not have: the override, and the closest key
    of ``cfg`` (its hydra node left out) or, without one close enough, the keys where it would be."""
    line = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
    keys = [k for k in dotted_keys(cfg) if not _under(k, ["hydra", *exclude])]
    parent, _, name = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    if parent in ("", *keys):   # a new name beside existing ones: the closest of those
        close = [f"{parent}.{c}".lstrip(".") for c in difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)]
    else:                       # a misspelt parent: the closest key as deep
        close = difflib.get_close_matches(key, [k for k in keys if k.count(".") == key.count(".")], n=1, cutoff=0.6)
    if close:
        return f"{line}: {key} is not a key of the config; did you mean {close[0]}?"
    return (f"{line}: {key} is not a key of the config (the keys {f'of {parent}' if parent else 'at the top'}: "
            f"{', '.join(siblings)})")


def unknown_option(err: MissingConfigException, config_dir: str = CONF) -> str:
    """The one line for ``group=option`` where the group has no such option: its options, the
    closest one, and the group that has it when it is another's (``experiment=width``: a sweep)."""
    group, _, option = str(err.missing_cfg_file).rpartition("/")
    options = list(err.options or [])
    if not group:
        return first_line(err)
    line = f"{group}={option} is not allowed: expected one of {', '.join(options)}"
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    if close:
        return f"{line}; did you mean {group}={close[0]}?"
    elsewhere = [g for g in group_names(config_dir) if g != group and (Path(config_dir) / g / f"{option}.yaml").is_file()]
    return f"{line}; {option} is an option of {elsewhere[0]}: {elsewhere[0]}={option}" if elsewhere else line


def group_names(config_dir: str = CONF) -> list[str]:
    """The config groups under ``config_dir`` (``hydra/launcher`` ...: nested ones by their path)."""
    root = Path(config_dir)
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("*.yaml") if p.parent != root)


def first_line(err: BaseException) -> str:
    """Hydra's message in one line: its first paragraph, lines joined."""
    return " ".join(x.strip() for x in str(err).strip().split("\n\n")[0].splitlines() if x.strip())

