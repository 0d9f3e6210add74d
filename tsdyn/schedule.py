"""The learning-rate schedule of the ``optimizer`` group (``lr_schedule: {epoch: lr}``), shared by
training and teacher pre-training."""
from __future__ import annotations

import bisect
from typing import Mapping


def lr_at(epoch: int, base_lr: float, schedule: Mapping[int, float]) -> float:
    """Learning rate for 0-based ``epoch``: the value of the largest schedule key <= epoch, else
    ``base_lr``. ``schedule`` maps epoch -> lr, e.g. ``{20: 0.01, 30: 0.001}``."""
    starts = sorted(int(k) for k in schedule)
    i = bisect.bisect_right(starts, epoch)
    return float(schedule[starts[i - 1]]) if i else float(base_lr)
