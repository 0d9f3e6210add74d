"""Luck: were the final winners already ahead early on? (docs/SCIENCE.md sections 2 and 3)

For teacher node j, the final best student k*(j) is looked up in the ordering of ``C_b[j, :]`` at a
baseline moment b (initialisation, or after epoch 1, 2, ...). Its 0-based position there (0 = the
best student at b) as a share of the layer's student nodes is the "top-%": 100 * position / K_s,
the authors' notebooks' convention (a winner that was already the best scores 0%).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from tsdyn.metrics.fanout import masked_median


def top_pct(c_base: Tensor, winners: Tensor) -> Tensor:
    """Top-% rank of each teacher node's final best student in the baseline ordering.

    ``c_base``: ``[E, K_t, K_s]`` correlations at the baseline; ``winners``: ``[E, K_t]`` final best
    student indices (-1 = dead teacher node). Returns ``[E, K_t]``: 100 * position / K_s with the
    0-based position = the number of students correlating strictly better than the winner at the
    baseline (ties share the best position); NaN for dead teacher nodes (at the baseline or at the end).
    """
    dead = (winners < 0) | torch.isnan(c_base).all(-1)
    own = c_base.gather(-1, winners.clamp(min=0)[..., None])             # [E, K_t, 1]
    position = (c_base > own).sum(-1)
    return (100.0 * position / c_base.shape[-1]).masked_fill(dead, float("nan"))


def nan_mean_median(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and median over the last axis ignoring NaN (numpy's nanmean / nanmedian): ``[E, K]`` -> ``[E]`` each."""
    return torch.nanmean(x, -1), masked_median(x, ~torch.isnan(x))


def convergence_epochs(best_history: Tensor, epochs: Sequence[int], threshold: float = 0.95) -> Tensor:
    """First measured epoch at which each teacher node's best correlation exceeds ``threshold``.

    ``best_history``: ``[T, E, K_t]`` best-match values at the measured ``epochs`` (length T,
    increasing; NaN = dead). Returns float ``[E, K_t]``: the epoch, ``inf`` if it never crossed,
    NaN if the node is dead at the end.
    """
    epochs_t = torch.as_tensor(list(epochs), dtype=torch.float64)
    crossed = torch.nan_to_num(best_history.double(), nan=-2.0) > threshold          # [T, E, K_t]
    first = torch.where(crossed, epochs_t[:, None, None], torch.full_like(epochs_t[:, None, None], float("inf")))
    return first.amin(0).masked_fill(torch.isnan(best_history[-1]), float("nan"))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between ``a`` and ``b`` (``[E, K]``) per member over the entries
    where both are non-NaN (``inf`` ranks last): ``[E]``; NaN when fewer than 3 entries remain or one
    side is constant."""
    out = []
    for x, y in zip(a.double().cpu().numpy(), b.double().cpu().numpy()):
        keep = ~(np.isnan(x) | np.isnan(y))
        x, y = x[keep], y[keep]
        ok = keep.sum() >= 3 and np.ptp(x) > 0 and len(np.unique(y)) > 1
        out.append(float(spearmanr(x, y).statistic) if ok else float("nan"))
    return torch.tensor(out, dtype=torch.float32)
