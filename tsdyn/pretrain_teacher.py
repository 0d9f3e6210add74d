"""``python -m tsdyn.pretrain_teacher teacher=conv data=fashion_mnist [overrides]``: train a teacher
on image labels and write the file that ``teacher=pretrained teacher.checkpoint=<path>`` loads.

Cross-entropy on the labels with the ``optimizer`` group's optimizer (SGD with momentum by
default, or ``optimizer=adam``); the test accuracy after every epoch goes to the console and to
``metrics.jsonl`` (``pretrain/test_accuracy``); the weights of the best epoch are kept. Then the
``prune`` share of every hidden layer's nodes with the smallest fan-out is removed
(:func:`tsdyn.metrics.pruning.prune_smallest_fanout_`), their incoming weights zeroed as well, so
that a removed node is constant and counts as a dead teacher node in matching. The teacher file
(``checkpoint``) records the architecture, the weights, the data set and both accuracies.
"""
from __future__ import annotations

import copy
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tsdyn.cli import CONF, check_command_line
from tsdyn.config import ConfigError, UNIT, check_imports, check_values, fail

if TYPE_CHECKING:
    import torch

    from tsdyn.nets import EnsembleNet


def validate_pretrain(cfg: DictConfig) -> None:
    """:func:`tsdyn.config.validate`, plus: labelled data, one teacher output per class, a pruning
    share in [0, 1)."""
    check_pretrain_values(cfg)
    check_imports(cfg)


def check_pretrain_values(cfg: DictConfig) -> None:
    """The checks of :func:`validate_pretrain` that need no torch (the command line runs them
    before Hydra starts): :func:`tsdyn.config.check_values` and the pre-training's own."""
    check_values(cfg)
    if cfg.data.get("num_classes") is None:
        fail("data", OmegaConf.select(cfg, "data._target_"), "labelled images (data=fashion_mnist, mnist or cifar10)")
    if "checkpoint" not in cfg.teacher and cfg.teacher.d_out != cfg.data.num_classes:
        fail("teacher.d_out", cfg.teacher.d_out, f"data.num_classes={cfg.data.num_classes} (one output per class)")
    if not (UNIT[0](cfg.prune) and cfg.prune < 1):
        fail("prune", cfg.prune, "a share in [0, 1) of each hidden layer's nodes")
    if cfg.optimizer.get("renormalize") is not None:
        fail("optimizer.renormalize", cfg.optimizer.renormalize, "null (projected SGD is for students only)")


def remove_nodes_(net: EnsembleNet, removed: list[torch.Tensor]) -> None:
    """Zero the incoming weights and biases of the nodes ``removed[l]`` (``[E, n_l]`` indices per
    hidden layer), whose fan-out pruning already zeroed: they become constant."""
    import torch

    with torch.no_grad():
        for layer, nodes in enumerate(removed):
            for e, idx in enumerate(nodes):
                net.weights[layer][e, idx] = 0.0
                net.biases[layer][e, idx] = 0.0


def evaluate_accuracy(net: EnsembleNet, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the one-member ``net`` (put in eval mode) on inputs ``x`` with ``labels``."""
    from tsdyn.metrics.accuracy import accuracy
    from tsdyn.nets import predict

    net.eval()
    return float(accuracy(predict(net, x), labels)[0])


def pretrain(cfg: DictConfig, run_dir: Path) -> dict:
    """Train ``cfg.teacher`` on ``cfg.data``'s labels; write the teacher file and ``summary.json``."""
    import torch
    import torch.nn.functional as F

    from tsdyn.build import build_teacher, optimizer_options
    from tsdyn.metrics.pruning import prune_smallest_fanout_
    from tsdyn.nets import save_teacher
    from tsdyn.runfolder.writer import Recorder
    from tsdyn.schedule import lr_at
    from tsdyn.slurm import set_threads

    set_threads(cfg.get("threads"))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    start = time.perf_counter()
    data = instantiate(cfg.data)
    teacher = build_teacher(cfg, data).to(device).requires_grad_(True)
    optimizer, schedule, _ = optimizer_options(cfg)  # renormalize: refused in validate_pretrain
    opt = optimizer(params=teacher.parameters())
    base_lrs = [g["lr"] for g in opt.param_groups]
    recorder = Recorder(run_dir)
    x_test, y_test = data.test_inputs(teacher.d, device), data.test_labels(device)
    y_train, bs, steps = data.train_labels(device), data.batch_size, data.steps_per_epoch()
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(int(cfg.epochs)):
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = lr_at(epoch, base, schedule)
        teacher.train()
        perm = data.shuffle(epoch, device)
        x, y = data.train_inputs(teacher.d, epoch, device)[perm], y_train[perm]
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            loss = F.cross_entropy(teacher(x[i * bs:(i + 1) * bs])[0][0], y[i * bs:(i + 1) * bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        acc = evaluate_accuracy(teacher, x_test, y_test)
        train_loss = float(loss_sum) / steps
        recorder.log(None, {"pretrain/loss/train": train_loss, "pretrain/test_accuracy": acc},
                     epoch + 1, step=(epoch + 1) * steps)
        print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, test accuracy {100 * acc:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch + 1, copy.deepcopy(teacher.state_dict())
    teacher.load_state_dict(best_state)
    removed = prune_smallest_fanout_(teacher, float(cfg.prune), ord=float(cfg.prune_norm_ord))
    remove_nodes_(teacher, removed)
    final_acc = evaluate_accuracy(teacher, x_test, y_test)
    meta = {"dataset": data.dataset, "shape": list(data.shape), "norm_mean": data.norm_mean,
            "norm_std": data.norm_std, "epochs": int(cfg.epochs), "best_epoch": best_epoch,
            "test_accuracy_unpruned": best_acc, "prune": float(cfg.prune),
            "removed_nodes": [r[0].tolist() for r in removed], "test_accuracy": final_acc}
    Path(cfg.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    save_teacher(teacher, cfg.checkpoint, **meta)
    summary = {"status": "completed", "checkpoint": str(cfg.checkpoint), **meta,
               "wall_time_s": round(time.perf_counter() - start, 2)}
    recorder.log(None, {"pretrain/test_accuracy_final": final_acc}, int(cfg.epochs), step=int(cfg.epochs) * steps)
    recorder.write_summary(None, summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONF, config_name="pretrain")
def main(cfg: DictConfig) -> float:
    try:
        validate_pretrain(cfg)
    except ConfigError as err:
        print(f"tsdyn: config error: {err}", file=sys.stderr)
        sys.exit(2)
    summary = pretrain(cfg, Path(cfg.run_dir))
    pruned = f", {100 * summary['test_accuracy']:.2f}% after pruning {summary['prune']:g}" if summary["prune"] else ""
    print(f"teacher: best test accuracy {100 * summary['test_accuracy_unpruned']:.2f}% (epoch {summary['best_epoch']})"
          f"{pruned}; written to {summary['checkpoint']}\n"
          f"train students on it: {student_command(summary['checkpoint'], HydraConfig.get().overrides.task)}")
    return summary["test_accuracy"]


def student_command(checkpoint: str, overrides: list[str]) -> str:
    """The command that trains students on the teacher file ``checkpoint``: the image-student preset
    (conf/experiment/fashion_mnist_student.yaml: Adam at lr 1e-3) on the data the teacher was
    trained on (the data overrides of the pre-training command, ``overrides``)."""
    data = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "data"
            or o.lstrip("+~").startswith("data.")]
    words = ["python", "-m", "tsdyn.train", "experiment=fashion_mnist_student", f"teacher.checkpoint={checkpoint}", *data]
    return " ".join(shlex.quote(w) for w in words)


def cli() -> None:
    """``python -m tsdyn.pretrain_teacher`` and the ``tsdyn-pretrain`` console script: the command
    line checked first (:func:`tsdyn.cli.check_command_line`, no torch), then Hydra's run."""
    check_command_line("pretrain", check=check_pretrain_values)
    main()


if __name__ == "__main__":
    cli()
