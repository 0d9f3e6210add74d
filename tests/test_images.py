"""Image data through torchvision's real loaders on small files written in the real formats; the
augmentation, the missing-data error and the teacher/data input checks."""

import numpy as np
import pytest
import torch
from torchvision import datasets

from tests.cli import interpreter
from tests.conftest import compose_cfg
from tests.test_config import IMAGE_OPTIONS
from tests.image_files import write_cifar10, write_mnist
from tsdyn.config import ConfigError, validate
from tsdyn.images import ImageData, augment, require_files
from tsdyn.nets import ConvReLUNet, save_teacher
from tsdyn.build import build

RNG = np.random.default_rng(0)


def grey(n):
    return RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
def test_mnist_family_decoded_from_gzipped_idx_files(tmp_path, dataset):
    train, test = grey(30), grey(12)
    write_mnist(tmp_path, dataset, train, test)
    data = ImageData(dataset, tmp_path, n_train=20, n_eval=5, norm_mean=[0.25], norm_std=[0.5])
    x = data.test_inputs((1, 28, 28), "cpu")
    expected = (test[0].astype(np.float32) / 255 - 0.25) / 0.5
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.test_labels("cpu").numpy(), test[1])
    np.testing.assert_array_equal(data.train_labels("cpu").numpy(), train[1][:20])  # the first n_train
    assert data.train_inputs(784, 0, "cpu").shape == (20, 784)                      # flattened for FC nets
    torch.testing.assert_close(data.eval_inputs(784, "cpu"), x[:5].flatten(1))      # the first n_eval
    assert not data.regenerate_each_epoch
    with pytest.raises(ValueError, match="input size 100"):
        data.train_inputs(100, 0, "cpu")


def accept_checksums(monkeypatch, md5: dict) -> None:
    """torchvision checks CIFAR-10's published checksums: point them at the files written here."""
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": md5["batches.meta"]})


def test_cifar10_decoded_from_pickled_batches(tmp_path, monkeypatch):
    train = (RNG.integers(0, 256, (25, 3, 32, 32), dtype=np.uint8), RNG.integers(0, 10, 25))
    test = (RNG.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8), RNG.integers(0, 10, 7))
    accept_checksums(monkeypatch, write_cifar10(tmp_path, train, test))
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    data = ImageData("cifar10", tmp_path, shape=[3, 32, 32], input_dim=3072, n_train=25, n_eval=7,
                     crop_padding=4, hflip=True, norm_mean=mean, norm_std=std)
    expected = (test[0].astype(np.float32) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(data.test_inputs((3, 32, 32), "cpu").numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.train_labels("cpu").numpy(), train[1])
    assert data.regenerate_each_epoch and data.train_inputs((3, 32, 32), 0, "cpu").shape == (25, 3, 32, 32)


def transforms_of(image: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded image, flipped or not: what augmentation may return."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=image.dtype)
    padded[:, p:p + h, p:p + w] = image
    crops = [padded[:, i:i + h, j:j + w] for i in range(2 * p + 1) for j in range(2 * p + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def test_augmentation_is_a_random_padded_crop_and_flip_per_image():
    images = torch.rand(200, 2, 6, 5)
    out = augment(images, 2, True, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    which = []
    for image, result in zip(images, out):
        hits = [k for k, t in enumerate(transforms_of(image, 2)) if torch.equal(t, result)]
        assert hits, "not a padded crop (or its mirror image) of the input"
        which.append(hits[0])
    flipped = np.mean([k >= 25 for k in which])
    assert 0.35 < flipped < 0.65 and len({k % 25 for k in which}) == 25  # all 25 offsets occur
    again = augment(images, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(augment(images, 0, False, torch.Generator()), images)


def test_training_epochs_are_augmented_anew_and_reproducibly(tmp_path):
    write_mnist(tmp_path, "fashion_mnist", grey(40), grey(10))
    make = lambda: ImageData("fashion_mnist", tmp_path, n_train=40, n_eval=10, crop_padding=2, hflip=True, seed=3)  # noqa: E731
    data = make()
    assert data.regenerate_each_epoch
    e1, e2 = data.train_inputs((1, 28, 28), 1, "cpu"), data.train_inputs((1, 28, 28), 2, "cpu")
    assert not torch.equal(e1, e2)
    assert torch.equal(make().train_inputs((1, 28, 28), 1, "cpu"), e1)        # a resumed run sees the same epoch
    assert torch.equal(data.test_inputs((1, 28, 28), "cpu"), make().test_inputs((1, 28, 28), "cpu"))  # never augmented


def test_missing_files_message_names_folder_files_and_make_data(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        require_files("fashion_mnist", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "t10k-labels-idx1-ubyte" in msg and "make data" in msg and "\n" not in msg
    write_mnist(tmp_path, "fashion_mnist", grey(5), grey(5))
    require_files("fashion_mnist", tmp_path)  # the gzipped files are enough
    (tmp_path / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-images-idx3-ubyte \("):
        require_files("fashion_mnist", tmp_path)


def test_cli_without_data_stops_before_training_with_one_line(tmp_path):
    res = interpreter(["-m", "tsdyn.train", "teacher=conv", "data=fashion_mnist", "~callbacks.theory",
                       f"data.root={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/r"])
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tsdyn: config error: data.root=")
    assert f"{tmp_path}/nothing/FashionMNIST/raw" in lines[0] and "make data" in lines[0]
    assert "train-images-idx3-ubyte" in lines[0]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.fixture
def fmnist_root(tmp_path):
    write_mnist(tmp_path, "fashion_mnist", grey(64), grey(16))
    return tmp_path


def image_cfg(root, *overrides):
    theory = [] if any(o.startswith("callbacks.theory") for o in overrides) else ["~callbacks.theory"]
    return compose_cfg(["data=fashion_mnist", f"data.root={root}", "data.n_train=64", "data.n_eval=16",
                        "logger=none", *theory, *overrides], root / "run")


def test_fully_connected_teacher_reads_flattened_images(fmnist_root):
    cfg = image_cfg(fmnist_root, "teacher=deep_random")
    validate(cfg)
    assert cfg.teacher.d == 784
    module, _ = build(cfg, None)
    assert module.teacher.d == 784 and module.student.d == 784
    x = module.data.train_inputs(module.teacher.d, 0, "cpu")
    assert module.teacher(x)[0].shape == (1, 64, 100)


@pytest.mark.parametrize("overrides,named", [
    (["teacher=deep_random", "teacher.d=100"], "teacher.d=100 is not allowed: expected a teacher reading "
                                               "data=fashion_mnist's inputs 784 (flattened [1, 28, 28])"),
    (["teacher=conv", "teacher.d=[1,32,32]"], "teacher.d=[1, 32, 32] is not allowed"),
    (["teacher=conv", "teacher.bn=none", "callbacks.theory.required=true"],
     "callbacks.theory.required=True is not allowed"),
])
def test_teacher_data_input_mismatch_is_a_config_error(fmnist_root, overrides, named):
    cfg = image_cfg(fmnist_root, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_conv_teacher_on_gaussian_data_reads_image_shaped_inputs(tmp_path):
    """The authors' --use_cnn on Gaussian data: inputs of shape (1, 16, 16); a shape must have 3 axes."""
    cfg = compose_cfg(["teacher=conv", "data=gaussian", "~callbacks.theory"], tmp_path)
    validate(cfg)
    assert list(cfg.teacher.d) == [1, 16, 16]
    bad = compose_cfg(["teacher=conv", "data=gaussian", "teacher.d=[16,16]", "~callbacks.theory"], tmp_path)
    with pytest.raises(ConfigError, match=r"teacher.d=\[16, 16\] is not allowed: .*input shape \[C, H, W\]"):
        validate(bad)


def test_pretrained_teacher_of_other_images_is_refused(fmnist_root):
    path = fmnist_root / "cifar_teacher.pt"
    save_teacher(ConvReLUNet((3, 32, 32), [4], 10), path)
    cfg = image_cfg(fmnist_root, "teacher=pretrained", f"teacher.checkpoint={path}")
    with pytest.raises(ConfigError, match=r"teacher.checkpoint=.* expected a teacher reading data=fashion_mnist's "
                                          r"inputs \[1, 28, 28\]; this one reads \[3, 32, 32\]"):
        validate(cfg)
    cfg = image_cfg(fmnist_root, "teacher=pretrained", f"teacher.checkpoint={fmnist_root}/none.pt")
    with pytest.raises(ConfigError, match="teacher.checkpoint=.*a teacher file written by"):
        validate(cfg)


def write_image_set(root, dataset, monkeypatch):
    """Fake files of ``dataset`` under ``root``: 300 training and 70 test images."""
    if dataset == "cifar10":
        rgb = lambda n: (RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), RNG.integers(0, 10, n))  # noqa: E731
        accept_checksums(monkeypatch, write_cifar10(root, rgb(300), rgb(70)))
    else:
        write_mnist(root, dataset, grey(300), grey(70))


@pytest.mark.slow  # decodes the image sets and builds conv nets
@pytest.mark.parametrize("group,option", sorted(IMAGE_OPTIONS))
def test_every_image_option_composes_and_builds(group, option, tmp_path, monkeypatch):
    dataset = option if group == "data" else "fashion_mnist"
    write_image_set(tmp_path, dataset, monkeypatch)
    overrides = [f"data={dataset}", f"data.root={tmp_path}", "data.n_train=256", "data.n_eval=64", f"{group}={option}"]
    if group == "teacher":
        overrides.append("~callbacks.theory")
    if option in ("pretrained", "fashion_mnist_student"):     # teacher=pretrained, or a preset that picks it
        save_teacher(ConvReLUNet((1, 28, 28), [4, 5], 10), tmp_path / "teacher.pt")
        overrides.append(f"teacher.checkpoint={tmp_path / 'teacher.pt'}")
    cfg = compose_cfg(overrides, tmp_path / "run")
    validate(cfg)
    module, trainer = build(cfg, tmp_path / "run")
    assert module.student.ks == [k * cfg.student.width_mult for k in module.teacher.ks]
    assert type(module.student) is type(module.teacher) and trainer.max_epochs == cfg.epochs
    x = module.data.eval_inputs(module.teacher.d, "cpu")
    assert module.teacher(x)[0].shape == (1, 64, module.teacher.d_out)
    assert module.student(x[:2])[0].shape == (cfg.student.num_students, 2, module.teacher.d_out)
