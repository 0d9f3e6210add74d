"""Activation sparsity and overlap of hidden nodes: how often each node is active, and how often
two teacher nodes are active together (the "small overlap" assumption of Luck Matters)."""
from __future__ import annotations

import torch
from torch import Tensor


def active_share(h: Tensor) -> Tensor:
    """Share of the inputs on which each node is active (``h > 0``): post-ReLU activations
    ``h`` ``[..., N, K]`` -> ``[..., K]``."""
    return (h > 0).float().mean(-2)


def coactive_share(h: Tensor) -> Tensor:
    """Mean pairwise co-activation: for every pair of distinct nodes ``j != k``, the share of inputs
    on which both are active, averaged over the pairs: ``h`` ``[..., N, K]`` -> ``[...]`` (NaN when
    K < 2). With independent nodes each active half the time it is 0.25; small overlap means less."""
    a = (h > 0).float()
    both = a.transpose(-1, -2) @ a / a.shape[-2]                 # [..., K, K]: P(j and k active)
    k = a.shape[-1]
    off_diagonal = both.sum((-1, -2)) - torch.diagonal(both, dim1=-2, dim2=-1).sum(-1)
    return off_diagonal / (k * (k - 1)) if k > 1 else torch.full(both.shape[:-2], float("nan"))
