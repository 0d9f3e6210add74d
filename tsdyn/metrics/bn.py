"""BatchNorm bias signs: evidence for sparse activations (docs/SCIENCE.md sections 2 and 3).

With BatchNorm before a ReLU, node k outputs ``relu(gamma_k * xhat + beta_k)`` with ``xhat`` of zero
mean and unit variance, so it is active on less than half of the inputs (for a symmetric ``xhat``)
exactly when its bias ``beta_k <= 0``, whatever the sign of its weight ``gamma_k``: the share of
non-positive biases is the share of sparsely active nodes.
"""
from __future__ import annotations

from torch import Tensor, nn


def frac_nonpositive(bias: Tensor) -> Tensor:
    """Share of biases <= 0 over the last axis: ``[..., K]`` -> ``[...]``."""
    return (bias.detach() <= 0).float().mean(-1)


def bn_biases(net: nn.Module) -> list[Tensor]:
    """The biases of ``net``'s BatchNorm layers, lowest first.

    A tsdyn net (``net.bns``: EnsembleBatchNorm per hidden layer, or None) gives ``[E, K_l]`` per
    hidden layer (none without BN or with non-affine BN); any other module (e.g. a torchvision
    model) gives ``[C]`` per affine ``nn.modules.batchnorm._BatchNorm``, in module order."""
    if hasattr(net, "bns"):
        return [bn.bias.detach() for bn in (net.bns or []) if bn.bias is not None]
    return [m.bias.detach() for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None]
