"""Small image data sets written in the real on-disk formats torchvision reads (never downloaded):
the MNIST family's gzipped IDX files and CIFAR-10's pickled batches."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FOLDERS = {"fashion_mnist": "FashionMNIST/raw", "mnist": "MNIST/raw"}
CIFAR_FOLDER = "cifar-10-batches-py"


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """A uint8 array as a gzipped IDX file (magic: 0, 0, type 0x08 = ubyte, number of dimensions)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, dataset: str, train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray]) -> Path:
    """``(images [N, 28, 28] uint8, labels [N])`` per split as the four ``*-ubyte.gz`` files."""
    folder = Path(root) / MNIST_FOLDERS[dataset]
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("t10k", test)):
        write_idx_gz(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


def write_cifar10(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """``(images [N, 3, 32, 32] uint8, labels [N])`` per split as CIFAR-10's pickled batches (the
    training set split over ``data_batch_1..5``, rows of 3072 bytes: the R, G, B planes) and
    ``batches.meta``. Returns ``{file name: md5}`` (torchvision checks the published checksums)."""
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = train
    parts = [(f"data_batch_{i + 1}", chunk) for i, chunk in enumerate(np.array_split(np.arange(len(images)), 5))]
    batches = [(name, images[idx], labels[idx]) for name, idx in parts] + [("test_batch", *test)]
    for name, x, y in batches:
        entry = {"batch_label": name, "labels": [int(v) for v in y], "data": x.reshape(len(x), 3072),
                 "filenames": [f"{name}_{i}.png" for i in range(len(x))]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": len(images) // 5, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def learnable_images(n: int, seed: int, channels: int = 1, size: int = 28,
                     wrong_labels: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class (0..9) is where a bright 6x6 square sits on a noisy background:
    ``(images [n, C, size, size] uint8, labels [n])``; a small conv net learns them in an epoch.
    The first ``wrong_labels`` share of the images carry another class's label."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 10, n)
    images = rng.integers(0, 90, (n, channels, size, size)).astype(np.uint8)
    for i, c in enumerate(classes):
        top, left = 3 + 12 * (c // 5), 2 + 5 * (c % 5)
        images[i, :, top:top + 6, left:left + 6] = 230
    wrong = int(wrong_labels * n)
    labels = classes.copy()
    labels[:wrong] = (classes[:wrong] + rng.integers(1, 10, wrong)) % 10
    return images, labels
