"""Metric keys: the one module that builds and parses them (nothing else formats or regex-parses a key).

A per-layer key is ``<section>/[<group>/]layer<l>/<name>``: ``match/layer0/mean_best``,
``bn/student/layer1/frac_nonpositive``, ``luck/layer0/top_pct_mean/epoch1`` (a name may hold a
``/``). Other keys are plain paths (``loss/eval``, ``prune/loss_before``). A run with E > 1 students
logs, beside the mean ``<key>``, ``<key>/min``, ``<key>/max`` and one ``<key>/s<i>`` per student.
Layer 0 is the lowest hidden layer. Per-layer arrays in ``arrays/*.npz`` are named ``<name>_layer<l>``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_LAYER_KEY = re.compile(r"(?P<section>[^/]+)/(?:(?P<group>.+)/)?layer(?P<layer>\d+)/(?P<name>.+)")
_MEMBER = re.compile(r"/(s\d+|min|max)$")
_ARRAY = re.compile(r"(?P<name>.+)_layer(?P<layer>\d+)")
STATS = ("min", "max")
TRAIN_LOSS = "loss/train"   # the one key logged per optimizer step (tagged with the epoch under way)
STEP_KEYS = (TRAIN_LOSS,)   # every other key is logged once per epoch (0 = initialisation) or at the end


@dataclass(frozen=True)
class LayerKey:
    """The parts of a per-layer key; ``group`` is None when the key has none."""

    section: str
    layer: int
    name: str
    group: str | None = None

    def __str__(self) -> str:
        return layer_key(self.section, self.layer, self.name, self.group)


def layer_key(section: str, layer: int, name: str, group: str | None = None) -> str:
    """``layer_key("match", 0, "mean_best")`` -> ``"match/layer0/mean_best"``; with ``group``:
    ``bn/student/layer0/...``."""
    return f"{section}/{group}/layer{layer}/{name}" if group else f"{section}/layer{layer}/{name}"


def parse_layer_key(key: str) -> LayerKey | None:
    """The parts of a per-layer key (per-student suffixes are part of the name), or None."""
    m = _LAYER_KEY.fullmatch(key)
    if m is None:
        return None
    return LayerKey(m["section"], int(m["layer"]), m["name"], m["group"])


def member_key(key: str, member: int) -> str:
    """Student ``member``'s value of ``key`` in a run with several students: ``<key>/s<i>``."""
    return f"{key}/s{member}"


def stat_key(key: str, stat: str) -> str:
    """The ``min`` / ``max`` over the students of ``key``: ``<key>/min``."""
    return f"{key}/{stat}"


def base_key(key: str) -> str:
    """``key`` without a per-student suffix: ``match/layer0/mean_best/s3`` -> ``match/layer0/mean_best``."""
    return _MEMBER.sub("", key)


def sort_key(key: str) -> list:
    """Sorts keys with their numbers in numeric order (``layer2`` before ``layer10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def layers(keys: Iterable[str], section: str, name: str, group: str | None = None) -> list[int]:
    """The layers ``l`` for which ``layer_key(section, l, name, group)`` is among ``keys``, ascending."""
    return sorted({p.layer for p in map(parse_layer_key, keys)
                   if p is not None and (p.section, p.name, p.group) == (section, name, group)})


# --------------------------------------------------------------------------- names inside a section

def frac_above(threshold: float) -> str:
    """Share of teacher nodes whose best correlation exceeds ``threshold``: ``frac_above_0.9``."""
    return f"frac_above_{threshold:g}"


def matchcnt(threshold: float) -> str:
    """MatchCnt at ``threshold``: ``matchcnt_0.9``."""
    return f"matchcnt_{threshold:g}"


def frac_above_thresholds(keys: Iterable[str], layer: int = 0) -> list[float]:
    """The thresholds, ascending, of every ``match/layer<layer>/frac_above_<t>`` key."""
    prefix = frac_above(0)[:-1]
    return sorted({float(p.name[len(prefix):]) for p in map(parse_layer_key, keys)
                   if p is not None and p.section == "match" and p.layer == layer and p.group is None
                   and p.name.startswith(prefix) and "/" not in p.name})


def luck_rank(stat: str, baseline: int) -> str:
    """Luck's top-% rank statistic ``stat`` (``mean`` / ``median``) at baseline epoch ``baseline``."""
    return f"top_pct_{stat}/epoch{baseline}"


def luck_baselines(keys: Iterable[str]) -> list[int]:
    """The baseline epochs of every ``luck/layer<l>/top_pct_mean/epoch<b>`` key, ascending."""
    prefix = luck_rank("mean", 0)[:-1]
    return sorted({int(p.name[len(prefix):]) for p in map(parse_layer_key, keys)
                   if p is not None and p.section == "luck" and p.name.startswith(prefix)
                   and p.name[len(prefix):].isdigit()})


# --------------------------------------------------------------------------- per-layer arrays

def array_key(name: str, layer: int) -> str:
    """The name of a per-layer array in ``arrays/*.npz``: ``array_key("corr", 0)`` -> ``corr_layer0``."""
    return f"{name}_layer{layer}"


def array_layers(names: Iterable[str], name: str) -> list[int]:
    """The layers ``l`` for which ``array_key(name, l)`` is among ``names``, ascending."""
    return sorted(int(m["layer"]) for n in names if (m := _ARRAY.fullmatch(n)) and m["name"] == name)
