"""Teacher-student node matching by activation correlation (docs/SCIENCE.md section 3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from tsdyn import keys

DEAD_STD = 1e-6  # a teacher node whose activation std is below this never fires: no correlation


def as_samples(h: Tensor) -> Tensor:
    """Node activations as a sample matrix: ``[..., N, K]`` stays; a conv map ``[..., N, C, H, W]``
    becomes ``[..., N*H*W, C]`` (spatial positions are samples, channels are nodes)."""
    if h.dim() in (4, 5):  # FC activations are [N, K] or [E, N, K]
        *lead, n, c, hh, ww = h.shape
        return h.movedim(-3, -1).reshape(*lead, n * hh * ww, c)
    return h


def correlation(t: Tensor, s: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation between every teacher node and every student node.

    ``t``: ``[N, K_t]`` teacher activations; ``s``: ``[..., N, K_s]`` student activations (leading
    axes, e.g. an ensemble of students, are batched). Returns ``[..., K_t, K_s]``. Rows of teacher
    nodes that never fire (std < ``DEAD_STD``) are NaN: their correlation is undefined. A student
    node that never fires (or is constant) gets 0. Computed in float64 for accuracy near 1; the
    student side is never centred in memory (the centred teacher makes ``tc^T s = tc^T (s - mean)``,
    and ``||s - mean||^2 = sum s^2 - N mean^2``): a third less time on the per-epoch hot path.
    """
    t = t.double()
    s = s.double()
    n = t.shape[-2]
    tc = t - t.mean(-2, keepdim=True)
    tn = tc.norm(dim=-2)                                   # [K_t]
    mean = s.mean(-2)
    sn = ((s * s).sum(-2) - n * mean * mean).clamp(min=0).sqrt()   # [..., K_s]
    c = torch.matmul(tc.transpose(-1, -2), s)              # [..., K_t, K_s]
    c = c / (tn[:, None] * sn[..., None, :] + eps)
    c = c.masked_fill((sn / n ** 0.5 < DEAD_STD)[..., None, :], 0.0)
    dead = tn / n ** 0.5 < DEAD_STD
    return c.masked_fill(dead[:, None], float("nan")).float()


def best_match(c: Tensor) -> tuple[Tensor, Tensor]:
    """Each teacher node's best student: ``c`` ``[..., K_t, K_s]`` -> (values ``[..., K_t]``,
    student indices ``[..., K_t]``). Dead teacher rows give value NaN, index -1."""
    dead = torch.isnan(c).all(-1)
    values, idx = torch.nan_to_num(c, nan=-2.0).max(-1)
    return values.masked_fill(dead, float("nan")), idx.masked_fill(dead, -1)


def match_summary(best: Tensor, thresholds: Sequence[float] = (0.9, 0.95, 0.99)) -> dict[str, Tensor]:
    """Per-layer summary of best-match values ``best`` ``[..., K_t]`` (NaN = dead teacher node).

    Returns tensors of shape ``[...]``: ``mean_best``, ``min_best``, ``max_best``, ``frac_above_<t>``
    (share of live teacher nodes whose best student correlates above t) and ``dead_teacher``
    (count of teacher nodes that never fire, kept out of every average).
    """
    live = ~torch.isnan(best)
    n_live = live.sum(-1).clamp(min=1)
    filled = torch.nan_to_num(best, nan=0.0)
    out = {
        "mean_best": filled.sum(-1) / n_live,
        "min_best": torch.where(live, best, torch.full_like(best, float("inf"))).amin(-1),
        "max_best": torch.where(live, best, torch.full_like(best, -float("inf"))).amax(-1),
    }
    for th in thresholds:
        out[keys.frac_above(th)] = ((filled > th) & live).sum(-1) / n_live
    out["dead_teacher"] = (~live).sum(-1).float()
    return out


def hungarian_match(c: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one assignment of teacher to student nodes maximising the total correlation
    (``scipy.optimize.linear_sum_assignment``): ``c`` ``[E, K_t, K_s]`` -> (values ``[E, K_t]``,
    student indices ``[E, K_t]``). Dead teacher rows (NaN) take no student: value NaN, index -1."""
    values = torch.full(c.shape[:2], float("nan"))
    idx = torch.full(c.shape[:2], -1, dtype=torch.long)
    for e, ce in enumerate(c.detach().cpu().double().numpy()):
        live = np.flatnonzero(~np.isnan(ce).all(-1))
        rows, cols = linear_sum_assignment(ce[live], maximize=True)
        values[e, live[rows]] = torch.from_numpy(ce[live[rows], cols]).float()
        idx[e, live[rows]] = torch.from_numpy(cols)
    return values.to(c.device), idx.to(c.device)


def match_count(c: Tensor, thresholds: Sequence[float]) -> dict[str, Tensor]:
    """The follow-up's MatchCnt: per threshold t, the mean over live teacher nodes of the number of
    student nodes whose correlation with it is above t. ``c`` ``[E, K_t, K_s]`` -> ``{f"matchcnt_{t:g}": [E]}``."""
    live = ~torch.isnan(c).all(-1)                               # [E, K_t]
    n_live = live.sum(-1).clamp(min=1)
    filled = torch.nan_to_num(c, nan=-2.0)
    return {keys.matchcnt(t): ((filled > t).sum(-1) * live).sum(-1) / n_live for t in thresholds}


def recovery_rate(best: Tensor, threshold: float = 0.95) -> Tensor:
    """The follow-up's specialization measure: per teacher node, the share of students (seeds) in
    which some student node correlates above ``threshold`` with it. ``best``: ``[S, K_t]`` each
    student's best correlation per teacher node (NaN = dead teacher node) -> ``[K_t]``, over the
    students where the node is live (NaN if it is dead in all of them)."""
    live = ~torch.isnan(best)
    hits = (torch.nan_to_num(best, nan=-2.0) > threshold) & live
    n = live.sum(0)
    return (hits.sum(0) / n.clamp(min=1)).to(torch.float64).masked_fill(n == 0, float("nan"))
