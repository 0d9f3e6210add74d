"""Fan-out norms and the matched / unmatched split of student nodes (docs/SCIENCE.md section 3).

The fan-out of hidden node k of layer l is every weight leaving it: column k of
``net.fan_out(l)`` (``[E, R, K_l]``; conv nets: a channel's outgoing kernels). Lucky student nodes
that match a teacher node keep a large fan-out, the others' fan-out shrinks (the "L-shape").

With a BatchNorm between a node and the next layer (BN after the ReLU, the authors' default
placement), what the next layer receives from node k is its normalised output times the column:
the effective fan-out is the column times ``gamma_k / sqrt(running_var_k + eps)`` (``gamma_k = 1``
without affine BN). It is the default for the norms below; ``bn_effective=False`` gives the raw
column. BN before the ReLU sits inside the node, so its fan-out is the raw column.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tsdyn.metrics.matching import best_match


def effective_fan_out(net, layer: int, bn_effective: bool = True) -> Tensor:
    """Outgoing weights of hidden layer ``layer``'s nodes, ``[E, R, K_l]`` (a copy): the columns of
    ``net.fan_out(layer)``, times the BatchNorm scale ``gamma_k / sqrt(running_var_k + eps)`` when a
    BN sits between the node and the next layer and ``bn_effective`` (see the module docstring)."""
    fan = net.fan_out(layer).detach()
    if bn_effective and net.bns is not None and net.bn_placement == "after_relu":
        bn = net.bns[layer]
        scale = torch.rsqrt(bn.running_var + bn.eps)                  # [E, K_l]
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        return fan * scale[:, None, :]
    return fan.clone()


def fanout_norms(net, layer: int, ord: float = 2, bn_effective: bool = True) -> Tensor:
    """``ord``-norm of each node's outgoing weights in hidden layer ``layer`` (effective under a
    BatchNorm after the ReLU unless ``bn_effective=False``, :func:`effective_fan_out`): ``[E, K_l]``."""
    return torch.linalg.vector_norm(effective_fan_out(net, layer, bn_effective), ord=ord, dim=-2)


def student_best_corr(c: Tensor) -> Tensor:
    """Each student node's best correlation with any live teacher node: ``c`` ``[E, K_t, K_s]``
    -> ``[E, K_s]`` (NaN where every teacher node is dead)."""
    dead = torch.isnan(c).all(-2)
    return torch.nan_to_num(c, nan=-2.0).amax(-2).masked_fill(dead, float("nan"))


def matched_students(c: Tensor, threshold: float) -> Tensor:
    """Student nodes that are the best partner of some live teacher node with correlation above
    ``threshold``: ``c`` ``[E, K_t, K_s]`` -> bool ``[E, K_s]``."""
    best, idx = best_match(c)                                    # [E, K_t]
    hit = (torch.nan_to_num(best, nan=-2.0) > threshold) & (idx >= 0)
    hits = torch.zeros(c.shape[0], c.shape[-1], device=c.device)
    return hits.scatter_add_(1, idx.clamp(min=0), hit.float()) > 0  # several teachers may share one


def masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """Median of ``x`` ``[E, K]`` over the entries where ``mask`` is true, per row: ``[E]``
    (the mean of the two middle values for an even count, as numpy; NaN for an empty row)."""
    return torch.nanquantile(x.double().masked_fill(~mask, float("nan")), 0.5, dim=-1).to(x.dtype)


def fanout_split(norms: Tensor, matched: Tensor) -> dict[str, Tensor]:
    """Matched vs unmatched fan-out: ``norms`` ``[E, K]``, ``matched`` bool ``[E, K]`` -> ``[E]`` each:
    ``matched_median``, ``unmatched_median`` and ``unmatched_below_1pct``, the share of unmatched
    nodes whose norm fell below 1% of the matched median (NaN without matched or unmatched nodes)."""
    matched_median = masked_median(norms, matched)
    below = (norms < 0.01 * matched_median[:, None]) & ~matched
    n_unmatched = (~matched).sum(-1)
    share = below.sum(-1) / n_unmatched.clamp(min=1)
    share = share.masked_fill((n_unmatched == 0) | torch.isnan(matched_median), float("nan"))
    return {"matched_median": matched_median, "unmatched_median": masked_median(norms, ~matched),
            "unmatched_below_1pct": share.to(norms.dtype)}
