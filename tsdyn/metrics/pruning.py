"""Node removal by fan-out ("lottery ticket" pruning, docs/SCIENCE.md section 3) and its random control.

Works on any net that exposes ``fan_out(layer) -> [E, R, K_l]``: a writeable view whose column k
holds every weight leaving node k of hidden layer ``layer`` (``ReLUNet``: the next layer's weight;
conv nets: a channel's outgoing kernels). Zeroing a column removes the node from the network.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from tsdyn.metrics.fanout import fanout_norms

__all__ = ["fanout_norms", "num_removed", "smallest_fanout_nodes", "random_nodes", "prune_",
           "prune_smallest_fanout_", "prune_random_"]


def num_removed(width: int, share: float) -> int:
    """How many of ``width`` nodes a ``share`` in [0, 1] removes: ``floor(share * width)``."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share={share!r}: expected a number in [0, 1]")
    return int(share * width + 1e-9)


def smallest_fanout_nodes(norms: Tensor, share: float) -> Tensor:
    """Indices of the ``share`` of nodes with the smallest fan-out: ``norms`` ``[E, K]`` -> ``[E, n]``
    (n = :func:`num_removed`), ascending by norm; ties go to the lower index (stable sort)."""
    n = num_removed(norms.shape[-1], share)
    return torch.sort(norms, dim=-1, stable=True).indices[..., :n]


def random_nodes(num_members: int, width: int, share: float, generator: torch.Generator) -> Tensor:
    """The random-removal control: ``[E, n]`` node indices, an independent uniformly random subset
    of ``width`` nodes per member, drawn from ``generator`` (seeded by the caller)."""
    n = num_removed(width, share)
    keys = torch.rand(num_members, width, generator=generator, device=generator.device)
    return keys.argsort(dim=-1)[:, :n]


@torch.no_grad()
def prune_(net, layer: int, nodes: Tensor) -> Tensor:
    """Remove ``nodes`` (``[E, n]`` indices per member) of hidden layer ``layer`` in place by zeroing
    their fan-out columns. Returns ``nodes``."""
    fan = net.fan_out(layer)                                           # [E, R, K]
    mask = torch.zeros(fan.shape[0], fan.shape[-1], dtype=torch.bool, device=fan.device)
    mask.scatter_(1, nodes.to(fan.device), True)
    fan.masked_fill_(mask[:, None, :], 0.0)
    return nodes


def prune_smallest_fanout_(net, share: float, layers: Sequence[int] | None = None, ord: float = 1,
                           bn_effective: bool = True) -> list[Tensor]:
    """Remove the ``share`` of nodes with the smallest fan-out norm (``ord`` 1 ranks like the mean
    |fan-out| of the paper, 2 by the L2 norm; under a BatchNorm after the ReLU the effective fan-out
    unless ``bn_effective=False``, see :mod:`tsdyn.metrics.fanout`) in each hidden layer of
    ``layers`` (default: all). Norms are taken before any removal. Returns the removed indices per
    layer, ``[E, n_l]`` each."""
    layers = range(net.num_hidden) if layers is None else layers
    chosen = [smallest_fanout_nodes(fanout_norms(net, layer, ord, bn_effective), share) for layer in layers]
    return [prune_(net, layer, idx) for layer, idx in zip(layers, chosen)]


def prune_random_(net, share: float, generator: torch.Generator,
                  layers: Sequence[int] | None = None) -> list[Tensor]:
    """The control: remove a random ``share`` of each hidden layer's nodes (per member, from
    ``generator``). Returns the removed indices per layer, ``[E, n_l]`` each."""
    layers = range(net.num_hidden) if layers is None else layers
    out = []
    for layer in layers:
        fan = net.fan_out(layer)
        out.append(prune_(net, layer, random_nodes(fan.shape[0], fan.shape[-1], share, generator)))
    return out
