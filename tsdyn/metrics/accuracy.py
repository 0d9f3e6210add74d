"""Classification accuracy of logits against class labels: students and teachers on real images."""
from __future__ import annotations

from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Share of samples whose largest logit is their label: ``logits`` ``[..., N, D]``, ``labels``
    ``[N]`` (class indices) -> ``[...]``. With the teacher's argmax as ``labels`` it is the
    student's agreement with the teacher."""
    return (logits.argmax(-1) == labels).float().mean(-1)
