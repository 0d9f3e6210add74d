"""Weight drift: how far each node's fan-out moved from its initial value (docs/SCIENCE.md section 3)."""
from __future__ import annotations

import torch
from torch import Tensor


def drift(w: Tensor, w_init: Tensor) -> tuple[Tensor, Tensor]:
    """Per node, the RMS of ``w - w_init`` over its fan-out, absolute and relative to the RMS of
    ``w_init``. ``w``, ``w_init``: ``[E, R, K]`` (column k = node k's outgoing weights, as
    ``net.fan_out(layer)``) -> (``abs`` ``[E, K]``, ``rel`` ``[E, K]``; ``rel`` NaN where the initial
    fan-out was all zero)."""
    w, w_init = w.detach().double(), w_init.detach().double()
    abs_ = (w - w_init).pow(2).mean(-2).sqrt()
    init = w_init.pow(2).mean(-2).sqrt()
    rel = torch.where(init > 0, abs_ / init, torch.full_like(init, float("nan")))
    return abs_.float(), rel.float()
