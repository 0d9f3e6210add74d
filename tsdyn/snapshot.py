"""A snapshot: student and teacher hidden activations on the evaluation set at one moment of
training, and their node-matching correlations (what the matching analyses read; the notebook API
recomputes one from a checkpoint on any inputs)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import Tensor

from tsdyn.metrics.matching import as_samples, correlation


@dataclass
class Snapshot:
    """Student and teacher on the evaluation set at one moment of training.

    ``student_hidden[l]``: ``[E, N, K_s]``; ``teacher_hidden[l]``: ``[N, K_t]``; ``eval_loss``: ``[E]``.
    """
    epoch: int
    step: int
    student_hidden: list[Tensor]
    teacher_hidden: list[Tensor]
    eval_loss: Tensor

    @cached_property
    def corr(self) -> list[Tensor]:
        """Per layer, teacher x student correlation ``[E, K_t, K_s]`` (dead teacher rows NaN)."""
        return [correlation(as_samples(t), as_samples(s))
                for t, s in zip(self.teacher_hidden, self.student_hidden)]
