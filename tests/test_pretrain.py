"""Teacher pre-training on labelled images (written in the real IDX format), its teacher file, node
pruning, and students trained on the pretrained teacher."""
import copy
import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from tests import cli
from tests.conftest import CONF, ROOT, compose_cfg
from tests.image_files import learnable_images, write_mnist
from tsdyn.config import ConfigError
from tsdyn.metrics.accuracy import accuracy
from tsdyn.metrics.pruning import prune_, prune_smallest_fanout_
from tsdyn.nets import (ConvReLUNet, ReLUNet, calibrate_bn_, load_teacher, make_student, predict,
                        read_teacher_file, save_teacher)
from tsdyn.pretrain_teacher import pretrain, remove_nodes_, validate_pretrain
from tsdyn.runfolder.reader import find_runs, read_metrics
from tsdyn.build import build_teacher
from tsdyn.train import run

pytestmark = pytest.mark.slow  # end-to-end runs: make test-fast leaves them out

SMALL_TEACHER = ["teacher=conv", "teacher.ks=[4,6]", "data.n_train=800", "data.n_eval=40", "data.crop_padding=1",
                 "data.hflip=false", "optimizer.lr=0.05"]


def pretrain_cfg(root: Path | None, run_dir: Path, *overrides: str):
    """The composed pretrain config: the small teacher on the images under ``root``, or, without a
    root, only ``overrides``."""
    small = ["data=fashion_mnist", f"data.root={root}", *SMALL_TEACHER] if root is not None else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("pretrain", overrides=[*small, *overrides])
    with open_dict(cfg):
        cfg.run_dir, cfg.checkpoint = str(run_dir), str(run_dir / "teacher.pt")
    return cfg


@pytest.fixture(scope="module")
def images_root(tmp_path_factory):
    """Fashion-MNIST-format files whose labels a small conv net can learn (the square's position);
    10% of the test labels are wrong, so that a perfect teacher scores 90% (accuracy != agreement)."""
    root = tmp_path_factory.mktemp("images")
    (train_x, train_y), (test_x, test_y) = learnable_images(800, 0), learnable_images(200, 1, wrong_labels=0.1)
    write_mnist(root, "fashion_mnist", (train_x[:, 0], train_y), (test_x[:, 0], test_y))
    return root


@pytest.fixture(scope="module")
def pretrained(images_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pretrain")
    cfg = pretrain_cfg(images_root, run_dir, "epochs=3")
    validate_pretrain(cfg)
    return cfg, pretrain(cfg, run_dir)


def test_pretraining_learns_the_labels_and_keeps_the_best_epoch(images_root, pretrained):
    cfg, summary = pretrained
    data = instantiate(cfg.data)
    x, labels = data.test_inputs(cfg.teacher.d, "cpu"), data.test_labels("cpu")
    untrained = build_teacher(cfg, data)
    assert accuracy(predict(untrained, x), labels).item() < 0.3            # chance is 0.1
    rows = [r for r in read_metrics(cfg.run_dir) if "pretrain/test_accuracy" in r]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [12, 24, 36]
    accs = [r["pretrain/test_accuracy"] for r in rows]
    assert summary["test_accuracy"] == summary["test_accuracy_unpruned"] == max(accs) > 0.8
    assert summary["best_epoch"] == 1 + int(np.argmax(accs))
    teacher = load_teacher(summary["checkpoint"])                             # the file holds the best epoch
    assert accuracy(predict(teacher, x), labels).item() == pytest.approx(summary["test_accuracy"], abs=1e-7)
    assert json.loads((Path(cfg.run_dir) / "summary.json").read_text())["checkpoint"] == summary["checkpoint"]


def test_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]],
                           [[0.0, 1.0, 0.0], [0.0, 3.0, 1.0], [9.0, 0.0, 5.0], [0.0, 0.0, 1.0]]])  # [E=2, N=4, D=3]
    labels = torch.tensor([0, 1, 2, 2])
    assert accuracy(logits, labels).tolist() == [0.75, 0.5]    # argmax 0,1,2,0 and 1,1,0,2
    assert accuracy(logits[:1], logits[1].argmax(-1)).tolist() == [0.25]  # agreement of two nets


@pytest.mark.parametrize("net", [ConvReLUNet((1, 9, 9), [3, 4], 5, bn="after_relu"),
                                 ReLUNet(6, [5, 4], 3, bn="before_relu", bn_affine=False)])
def test_teacher_file_round_trips_architecture_weights_and_bn_state(tmp_path, net):
    x = torch.randn(50, *((1, 9, 9) if isinstance(net, ConvReLUNet) else (6,))) * 2 + 1
    calibrate_bn_(net, x)  # non-trivial running statistics
    save_teacher(net, tmp_path / "t.pt", dataset="somewhere", test_accuracy=0.5)
    loaded = load_teacher(tmp_path / "t.pt")
    assert type(loaded) is type(net) and loaded.arch() == net.arch() and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    out, hidden = net.eval()(x)
    out2, hidden2 = loaded(x)
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(hidden, hidden2))
    assert read_teacher_file(tmp_path / "t.pt")["meta"] == {"dataset": "somewhere", "test_accuracy": 0.5}
    torch.save({"state_dict": net.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tsdyn teacher file"):
        load_teacher(tmp_path / "other.pt")


def test_pruning_removes_exactly_the_smallest_fanout_nodes():
    torch.manual_seed(0)
    net = ConvReLUNet((1, 10, 10), [6, 8], 4, bn="before_relu").eval()
    x = torch.randn(20, 1, 10, 10)
    calibrate_bn_(net, x)
    l1 = [np.abs(net.fan_out(layer).detach().numpy()[0]).sum(0) for layer in range(2)]
    only_fanout = copy.deepcopy(net)
    removed = prune_smallest_fanout_(net, 0.5)
    remove_nodes_(net, removed)
    hidden = net(x)[1]
    for layer, (idx, norms) in enumerate(zip(removed, l1)):
        assert sorted(idx[0].tolist()) == sorted(np.argsort(norms)[:len(norms) // 2].tolist())
        kept = [k for k in range(len(norms)) if k not in idx[0].tolist()]
        fan = net.fan_out(layer)[0]
        assert (fan[:, idx[0]] == 0).all() and (fan[:, kept] != 0).any(0).all()
        assert (net.weights[layer][0, idx[0]] == 0).all() and (net.biases[layer][0, idx[0]] == 0).all()
        h = hidden[layer][0][:, idx[0]]                                    # removed: constant maps
        assert (h == h[:1, :, :1, :1]).all()
        assert (hidden[layer][0][:, kept].flatten(2).std(-1) > 0).any()
        prune_(only_fanout, layer, idx)
    # zeroing the incoming weights too changes nothing downstream: the nodes were already cut off
    torch.testing.assert_close(net(x)[0], only_fanout(x)[0])


def test_pretraining_with_pruning_writes_the_pruned_teacher(images_root, tmp_path):
    cfg = pretrain_cfg(images_root, tmp_path, "epochs=1", "prune=0.5")
    summary = pretrain(cfg, tmp_path)
    assert [len(r) for r in summary["removed_nodes"]] == [2, 3]
    teacher = load_teacher(cfg.checkpoint)
    for layer, nodes in enumerate(summary["removed_nodes"]):
        assert (teacher.fan_out(layer)[0][:, nodes] == 0).all()
    assert summary["test_accuracy"] <= summary["test_accuracy_unpruned"]
    # as the authors do, a student of the pruned teacher is sized from its active nodes (4-2, 6-3)
    assert make_student(teacher, width_mult=2).ks == [4, 6]


@pytest.mark.parametrize("override,named", [("teacher.d_out=12", "teacher.d_out=12 is not allowed"),
                                            ("prune=1.0", "prune=1.0 is not allowed")])
def test_pretraining_config_errors(images_root, tmp_path, override, named):
    with pytest.raises(ConfigError, match=named):
        validate_pretrain(pretrain_cfg(images_root, tmp_path, override))
    gaussian = pretrain_cfg(None, tmp_path, "data=gaussian", "teacher=deep_random", "teacher.d_out=10")
    with pytest.raises(ConfigError, match="data='tsdyn.data.GaussianData' is not allowed: expected labelled images"):
        validate_pretrain(gaussian)


def test_students_on_the_pretrained_teacher_log_matching_accuracy_agreement(images_root, pretrained, tmp_path):
    _, teacher_summary = pretrained
    cfg = compose_cfg(["teacher=pretrained", f"teacher.checkpoint={teacher_summary['checkpoint']}",
                       "data=fashion_mnist", f"data.root={images_root}", "data.n_train=800", "data.n_eval=40",
                       "data.crop_padding=1", "data.hflip=false", "student.width_mult=2", "student.num_students=2",
                       "epochs=3", "optimizer=adam", "optimizer.lr=0.01", "logger=none", "~callbacks.theory",
                       "steps_per_call=4",
                       "log_every_n_steps=4", "trainer.enable_progress_bar=false"], tmp_path / "run")
    summary = run(cfg, cfg.run_dir)
    assert summary["status"] == "completed"
    rows = read_metrics(cfg.run_dir)
    teacher_acc = [r["eval/teacher_accuracy"] for r in rows if "eval/teacher_accuracy" in r]
    assert teacher_acc == [pytest.approx(teacher_summary["test_accuracy"], abs=1e-7)]  # logged once
    assert teacher_acc[0] <= 0.9 + 1e-6                           # the wrong labels: accuracy != agreement
    acc = [r for r in rows if "eval/accuracy" in r]
    assert [r["epoch"] for r in acc] == [0, 1, 2, 3]
    assert all(f"eval/agreement/s{i}" in acc[-1] and f"eval/accuracy/s{i}" in acc[-1] for i in range(2))
    assert acc[0]["eval/agreement"] < 0.5 < 0.8 < acc[-1]["eval/agreement"]   # the students learn the teacher
    assert acc[-1]["eval/accuracy"] > 0.7
    match = [r for r in rows if "match/layer1/mean_best" in r]
    assert [r["epoch"] for r in match] == [0, 1, 2, 3] and "match/layer0/mean_best/s1" in match[-1]
    assert any("bn/teacher/layer1/frac_nonpositive" in r for r in rows)          # the teacher has BN
    evals = [r["loss/eval"] for r in rows if "loss/eval" in r]
    assert evals[-1] < evals[0] / 10                                            # it regresses the logits
    # the logged values are the trained students' accuracy and agreement on the whole test split
    teacher = load_teacher(teacher_summary["checkpoint"])
    student = make_student(teacher, width_mult=2, num_students=2)
    state = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    data = instantiate(cfg.data)
    x, labels = data.test_inputs(teacher.d, "cpu"), data.test_labels("cpu")
    out = predict(student.eval(), x)
    for i, (acc_i, agree_i) in enumerate(zip(accuracy(out, labels), accuracy(out, predict(teacher, x)[0].argmax(-1)))):
        assert acc[-1][f"eval/accuracy/s{i}"] == pytest.approx(acc_i.item(), abs=1e-7)
        assert acc[-1][f"eval/agreement/s{i}"] == pytest.approx(agree_i.item(), abs=1e-7)


def test_the_printed_student_command_trains_as_printed(images_root, tmp_path):
    """``tsdyn.pretrain_teacher`` ends by printing the student command; run as printed (from the
    same folder), it trains students that learn the teacher, no divergence."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    small = [f"data.root={images_root}", *SMALL_TEACHER[1:], "epochs=1", "threads=1"]
    res = cli.run(["-m", "tsdyn.pretrain_teacher", "teacher=conv", "data=fashion_mnist", *small], env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = res.stdout.strip().splitlines()[-1].split("train students on it: ", 1)[1]
    words = shlex.split(printed)
    assert words[:4] == ["python", "-m", "tsdyn.train", "experiment=fashion_mnist_student"]
    res = cli.run(words[1:], env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = find_runs(tmp_path / "outputs" / "runs")
    assert run.status == "completed" and run.summary["epochs"] == 2
    evals = [r["loss/eval"] for r in read_metrics(run.path) if "loss/eval" in r]
    assert len(evals) == 3 and evals[0] > evals[1] > evals[2] and evals[2] < 0.8 * evals[0]   # 24 Adam steps


def test_pretraining_refuses_projected_sgd(images_root, tmp_path):
    cfg = pretrain_cfg(images_root, tmp_path, "optimizer.renormalize=weight")
    with pytest.raises(ConfigError, match=r"optimizer.renormalize='weight' is not allowed: expected null"):
        validate_pretrain(cfg)
