"""The image sets tsdyn reads and the files each needs on disk: checked by validation before torch
(and torchvision) load; :mod:`tsdyn.images` decodes them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class ImageSet:
    """A torchvision data set as tsdyn reads it: the files it needs under ``<root>/<folder>``
    (``gzipped``: each may also be there as ``<file>.gz``, the form they are published in)."""
    title: str
    loader: str          # the class in torchvision.datasets
    folder: str
    files: tuple[str, ...]
    gzipped: bool


IMAGE_SETS = {
    "fashion_mnist": ImageSet("Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw", MNIST_FILES, True),
    "mnist": ImageSet("MNIST", "MNIST", "MNIST/raw", MNIST_FILES, True),
    "cifar10": ImageSet("CIFAR-10", "CIFAR10", "cifar-10-batches-py",
                        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"), False),
}


def missing_files(dataset: str, root: str | Path) -> list[str]:
    """The files of ``dataset`` absent from ``root`` (a gzipped copy counts where allowed)."""
    spec, folder = IMAGE_SETS[dataset], Path(root) / IMAGE_SETS[dataset].folder
    return [f for f in spec.files
            if not (folder / f).is_file() and not (spec.gzipped and (folder / f"{f}.gz").is_file())]


def require_files(dataset: str, root: str | Path) -> None:
    """Raise ``FileNotFoundError`` with a one-line message (folder, files, ``make data``) unless
    every file of ``dataset`` is under ``root``."""
    missing = missing_files(dataset, root)
    if missing:
        spec = IMAGE_SETS[dataset]
        folder = (Path(root) / spec.folder).resolve()
        gz = " (or their .gz files)" if spec.gzipped else ""
        raise FileNotFoundError(
            f"data.root={str(root)!r}: no {spec.title} in {folder}: missing {', '.join(missing)}{gz}; "
            f"`make data` fetches Fashion-MNIST there, other sets must be copied in, or set "
            f"data.download=true to let torchvision download it")
