"""Training and evaluation inputs, made on the run's device and served from memory."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator determined by (seed, epoch, stream) alone, so that a resumed run draws exactly
    what an uninterrupted one would. Streams: 0 = training inputs, 1 = shuffling, 2 = evaluation,
    3 = image augmentation."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + stream) % (2**63))
    return g


class InMemoryData:
    """What the training loop asks of every data source besides its inputs: ``n_train``,
    ``batch_size``, ``seed``, the steps per epoch and the epoch's shuffle."""

    n_train: int
    batch_size: int
    seed: int

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last incomplete batch is dropped)."""
        return self.n_train // self.batch_size

    def shuffle(self, epoch: int, device: torch.device | str) -> Tensor:
        """The epoch's permutation of the training indices, ``[n_train]``."""
        return torch.randperm(self.n_train, generator=epoch_generator(self.seed, epoch, 1, device), device=device)


class GaussianData(InMemoryData):
    """Gaussian inputs x ~ N(0, std^2 I) (the paper uses std 10), flat (``d`` an int: ``[n, d]``)
    or image-shaped for a conv teacher (``d = (C, H, W)``: ``[n, C, H, W]``, the authors' ``--use_cnn``
    on Gaussian data).

    The training set is fixed (drawn once) unless ``regenerate_each_epoch``; the evaluation set is
    separate and fixed. Every draw is seeded from ``seed`` and the epoch.

    A fresh batch every step (the matrix-form theorem script): ``regenerate_each_epoch=true``. Each
    epoch then draws ``n_train`` new i.i.d. samples and its ``n_train // batch_size`` steps use each
    of them at most once, so every step's batch is ``batch_size`` fresh i.i.d. samples, independent
    of every other batch of the run: the same distribution as drawing a new batch per step (set
    ``n_train`` to a multiple of ``batch_size`` so that no drawn sample goes unused).
    """

    def __init__(self, std: float = 10.0, n_train: int = 100_000, n_eval: int = 10_240,
                 batch_size: int = 64, regenerate_each_epoch: bool = False, seed: int = 0):
        self.std, self.n_train, self.n_eval = float(std), int(n_train), int(n_eval)
        self.batch_size, self.regenerate_each_epoch, self.seed = int(batch_size), bool(regenerate_each_epoch), int(seed)

    def sample(self, n: int, d: int | Sequence[int], generator: torch.Generator) -> Tensor:
        """``[n, d]`` (or ``[n, *d]`` for a shape ``d``) inputs from the data distribution (on the
        generator's device)."""
        shape = (int(d),) if isinstance(d, int) else tuple(int(v) for v in d)
        return torch.randn(n, *shape, generator=generator, device=generator.device) * self.std

    def train_inputs(self, d: int | Sequence[int], epoch: int, device: torch.device | str) -> Tensor:
        """``[n_train, d]``: the same tensor every epoch unless ``regenerate_each_epoch``."""
        draw = epoch if self.regenerate_each_epoch else 0
        return self.sample(self.n_train, d, epoch_generator(self.seed, draw, 0, device))

    def eval_inputs(self, d: int | Sequence[int], device: torch.device | str) -> Tensor:
        """``[n_eval, d]``, drawn independently of the training set."""
        return self.sample(self.n_eval, d, epoch_generator(self.seed, 0, 2, device))
