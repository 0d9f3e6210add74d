"""Real images (Fashion-MNIST, MNIST, CIFAR-10) through torchvision's dataset classes, decoded once
into memory and served like :class:`tsdyn.data.GaussianData`, plus their labels.

A training epoch's inputs are made from the decoded images by batched tensor ops: random crop with
zero padding, random horizontal flip, then per-channel normalisation -- torchvision's
``RandomCrop(size, padding) -> RandomHorizontalFlip -> ToTensor -> Normalize`` applied to the
whole set at once, drawn from a generator seeded by (seed, epoch), so a resumed run sees the same
epoch. Test images are only normalised.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import datasets

from tsdyn.data import InMemoryData, epoch_generator
from tsdyn.imagefiles import IMAGE_SETS, require_files


def _gunzip_missing(dataset: str, root: str | Path) -> None:
    """Decompress ``<file>.gz`` where torchvision needs ``<file>`` (through a temporary file, so
    that a concurrent run never reads a half-written one)."""
    spec = IMAGE_SETS[dataset]
    folder = Path(root) / spec.folder
    for name in spec.files if spec.gzipped else ():
        target, packed = folder / name, folder / f"{name}.gz"
        if not target.is_file() and packed.is_file():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)


def decode(dataset: str, root: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """One split through torchvision's loader: (images ``[N, C, H, W]`` uint8, labels ``[N]`` int64)."""
    if not download:
        require_files(dataset, root)
        _gunzip_missing(dataset, root)
    ds = getattr(datasets, IMAGE_SETS[dataset].loader)(str(root), train=train, download=download)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # CIFAR: NHWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def augment(images: Tensor, crop_padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """Random crop of each image back to its size after ``crop_padding`` zero pixels on every side,
    then a horizontal flip with probability 1/2 if ``hflip``. ``images``: ``[N, C, H, W]`` (on the
    generator's device) -> ``[N, C, H, W]``; offsets and flips drawn per image from ``generator``."""
    n, c, h, w = images.shape
    if crop_padding:
        p, dev = int(crop_padding), images.device
        padded = F.pad(images, (p, p, p, p))
        top = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev) + torch.arange(h, device=dev)
        left = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev) + torch.arange(w, device=dev)
        rows = padded.gather(2, top[:, None, :, None].expand(n, c, h, w + 2 * p))
        images = rows.gather(3, left[:, None, None, :].expand(n, c, h, w))
    if hflip:
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class ImageData(InMemoryData):
    """Labelled images from a local folder (``root``), decoded once and kept in memory.

    The training set is the first ``n_train`` training images, augmented anew every epoch when
    ``crop_padding`` or ``hflip`` is set; the evaluation set (node matching; conv maps give
    ``n_eval * H * W`` samples) is the first ``n_eval`` test images; accuracies use the whole test
    split. ``shape`` ``[C, H, W]``, ``input_dim`` (its product) and ``num_classes`` are facts of
    the data set, written in its config for the teacher's interpolations and checked here.
    Inputs come shaped for the net that asks: ``d`` an int gives flattened ``[N, d]`` rows (fully
    connected nets), ``d`` a shape gives ``[N, C, H, W]``.
    """

    labelled = True

    def __init__(self, dataset: str, root: str = "data", download: bool = False,
                 shape: Sequence[int] = (1, 28, 28), input_dim: int = 784, num_classes: int = 10,
                 n_train: int = 60_000, n_eval: int = 1000, batch_size: int = 64, crop_padding: int = 0,
                 hflip: bool = False, norm_mean: Sequence[float] = (0.5,), norm_std: Sequence[float] = (0.5,),
                 seed: int = 0):
        if dataset not in IMAGE_SETS:
            raise ValueError(f"data.dataset={dataset!r}: allowed {list(IMAGE_SETS)}")
        self.dataset, self.root = dataset, str(root)
        self.shape, self.input_dim, self.num_classes = tuple(int(s) for s in shape), int(input_dim), int(num_classes)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        self.norm_mean, self.norm_std = [float(m) for m in norm_mean], [float(s) for s in norm_std]
        train_x, train_y = decode(dataset, root, True, download)
        test_x, test_y = decode(dataset, root, False, download)
        title = IMAGE_SETS[dataset].title
        if tuple(train_x.shape[1:]) != self.shape or math.prod(self.shape) != self.input_dim:
            raise ValueError(f"data.shape={list(self.shape)}, data.input_dim={self.input_dim}: the {title} "
                             f"images are {list(train_x.shape[1:])} ({math.prod(train_x.shape[1:])} values)")
        if len(self.norm_mean) != self.shape[0] or len(self.norm_std) != self.shape[0]:
            raise ValueError(f"data.norm_mean / data.norm_std: expected {self.shape[0]} values (one per channel)")
        for key, n, available in (("n_train", n_train, len(train_x)), ("n_eval", n_eval, len(test_x))):
            if not 0 < int(n) <= available:
                raise ValueError(f"data.{key}={n}: {title} has {available} images in that split")
        self.n_train, self.n_eval = int(n_train), int(n_eval)
        self._images = {"train": train_x[:self.n_train], "test": test_x}
        self._labels = {"train": train_y[:self.n_train], "test": test_y}
        self._on_device: dict[tuple[str, str], Tensor] = {}

    @property
    def regenerate_each_epoch(self) -> bool:
        """Augmented data sets make new training inputs (to be labelled anew) every epoch."""
        return bool(self.crop_padding or self.hflip)

    # ------------------------------------------------------------------ tensors on the device
    def _cached(self, key: str, device: torch.device | str, make) -> Tensor:
        slot = (key, str(torch.device(device)))
        if slot not in self._on_device:
            self._on_device[slot] = make()
        return self._on_device[slot]

    def _raw(self, split: str, device: torch.device | str) -> Tensor:
        return self._cached(f"raw/{split}", device, lambda: self._images[split].to(device))

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 ``[N, C, H, W]`` -> float, scaled to [0, 1], minus ``norm_mean``, over ``norm_std``."""
        mean = torch.tensor(self.norm_mean, device=images.device)[:, None, None]
        std = torch.tensor(self.norm_std, device=images.device)[:, None, None]
        return (images.float() / 255.0 - mean) / std

    def _shaped(self, x: Tensor, d: int | Sequence[int]) -> Tensor:
        if isinstance(d, int):
            if d != self.input_dim:
                raise ValueError(f"a net with input size {d} cannot read {list(self.shape)} images ({self.input_dim} values)")
            return x.flatten(1)
        if tuple(d) != self.shape:
            raise ValueError(f"a net with input shape {list(d)} cannot read {list(self.shape)} images")
        return x

    # ------------------------------------------------------------------ the data interface
    def sample(self, n: int, d: int | Sequence[int], generator: torch.Generator) -> Tensor:
        """``n`` training images drawn at random (with replacement, from ``generator``),
        normalised, not augmented: calibration inputs (BatchNorm statistics)."""
        idx = torch.randint(self.n_train, (n,), generator=generator, device=generator.device)
        return self._shaped(self.normalise(self._raw("train", generator.device)[idx]), d)

    def train_inputs(self, d: int | Sequence[int], epoch: int, device: torch.device | str) -> Tensor:
        """``[n_train, ...]`` normalised training images; augmented with the epoch's draw if any."""
        if not self.regenerate_each_epoch:
            return self._shaped(self._cached("train", device, lambda: self.normalise(self._raw("train", device))), d)
        g = epoch_generator(self.seed, epoch, 3, device)
        return self._shaped(self.normalise(augment(self._raw("train", device), self.crop_padding, self.hflip, g)), d)

    def train_labels(self, device: torch.device | str) -> Tensor:
        """``[n_train]`` class labels of the training images (index-aligned with :meth:`train_inputs`)."""
        return self._cached("train_labels", device, lambda: self._labels["train"].to(device))

    def test_inputs(self, d: int | Sequence[int], device: torch.device | str) -> Tensor:
        """The whole test split, normalised: ``[N_test, ...]``."""
        return self._shaped(self._cached("test", device, lambda: self.normalise(self._raw("test", device))), d)

    def test_labels(self, device: torch.device | str) -> Tensor:
        return self._cached("test_labels", device, lambda: self._labels["test"].to(device))

    def eval_inputs(self, d: int | Sequence[int], device: torch.device | str) -> Tensor:
        """The evaluation set of node matching: the first ``n_eval`` test images, ``[n_eval, ...]``."""
        return self.test_inputs(d, device)[:self.n_eval]
