"""The LightningModule: a student regresses a frozen teacher on in-memory inputs.

Overhead is kept off the hot path: the teacher labels each epoch's training set in one no-grad
pass, batches are contiguous slices of a shuffled device tensor, one ``training_step`` runs
``steps_per_call`` optimizer steps (manual optimisation), and the loss is read back to the host
only every ``log_every_n_steps`` steps.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from tsdyn.data import GaussianData
from tsdyn.metrics.matching import as_samples, correlation
from tsdyn.nets import ReLUNet
from tsdyn.recorder import Recorder

LOSSES = ("mse", "cross_entropy")


def lr_at(epoch: int, base_lr: float, schedule: Mapping[int, float]) -> float:
    """Learning rate for 0-based ``epoch``: the value of the largest schedule key <= epoch, else
    ``base_lr``. ``schedule`` maps epoch -> lr, e.g. ``{20: 0.01, 30: 0.001}``."""
    keys = sorted(int(k) for k in schedule)
    i = bisect.bisect_right(keys, epoch)
    return float(schedule[keys[i - 1]]) if i else float(base_lr)


def per_student_loss(out: Tensor, target: Tensor, kind: str) -> Tensor:
    """``out``: ``[E, N, D]`` student outputs, ``target``: ``[N, D]`` teacher outputs -> ``[E]``.

    ``mse``: mean squared error over samples and outputs (``nn.MSELoss``); ``cross_entropy``:
    cross-entropy of the student's logits to the teacher's argmax."""
    if kind == "mse":
        return (out - target).pow(2).mean(dim=(1, 2))
    labels = target.argmax(-1).expand(out.shape[0], -1)
    return F.cross_entropy(out.transpose(1, 2), labels, reduction="none").mean(-1)


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
    extras: dict = field(default_factory=dict)

    @cached_property
    def corr(self) -> list[Tensor]:
        """Per layer, teacher x student correlation ``[E, K_t, K_s]`` (dead teacher rows NaN)."""
        return [correlation(as_samples(t), as_samples(s))
                for t, s in zip(self.teacher_hidden, self.student_hidden)]


class TeacherStudent(pl.LightningModule):
    def __init__(self, teacher: ReLUNet, student: ReLUNet, data: GaussianData,
                 optimizer: Callable[..., torch.optim.Optimizer], lr_schedule: Mapping[int, float] | None = None,
                 loss: str = "mse", steps_per_call: int = 32, log_every_n_steps: int = 100,
                 recorder: Recorder | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.teacher, self.student, self.data = teacher, student, data
        self.optimizer_factory, self.lr_schedule = optimizer, dict(lr_schedule or {})
        self.loss_kind, self.steps_per_call, self.log_every = loss, int(steps_per_call), int(log_every_n_steps)
        self.recorder = recorder or Recorder(None)
        self.diverged_at: int | None = None
        self._snapshot: Snapshot | None = None
        self._train: tuple[Tensor, Tensor] | None = None  # fixed training set and its labels

    # ------------------------------------------------------------------ data
    @torch.no_grad()
    def label(self, x: Tensor, chunk: int = 16384) -> Tensor:
        """Teacher outputs for ``x`` ``[N, d]`` -> ``[N, d_out]``, in chunks, without autograd."""
        return torch.cat([self.teacher(x[i:i + chunk])[0][0] for i in range(0, len(x), chunk)])

    def train_dataloader(self) -> DataLoader:
        n_calls = -(-self.data.steps_per_epoch() // self.steps_per_call)
        return DataLoader(range(n_calls), batch_size=None, shuffle=False)

    def on_fit_start(self) -> None:
        self.teacher.eval()
        self.x_eval = self.data.eval_inputs(self.teacher.d, self.device)
        with torch.no_grad():
            y, hidden = self.teacher(self.x_eval)
        self.y_eval, self.teacher_eval_hidden = y[0], [h[0] for h in hidden]

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        for group, base in zip(self.optimizers().optimizer.param_groups, self._base_lrs):
            group["lr"] = lr_at(epoch, base, self.lr_schedule)
        if self.data.regenerate_each_epoch or self._train is None:
            x = self.data.train_inputs(self.teacher.d, epoch, self.device)
            self._train = (x, self.label(x))
        perm = self.data.shuffle(epoch, self.device)
        self._x, self._y = self._train[0][perm], self._train[1][perm]
        self._loss_sum = torch.zeros(self.student.num_members, device=self.device)
        self._loss_count = 0

    # ------------------------------------------------------------------ training
    def training_step(self, call: int) -> None:
        opt = self.optimizers()
        bs, steps = self.data.batch_size, self.data.steps_per_epoch()
        for i in range(call * self.steps_per_call, min((call + 1) * self.steps_per_call, steps)):
            out, _ = self.student(self._x[i * bs:(i + 1) * bs])
            losses = per_student_loss(out, self._y[i * bs:(i + 1) * bs], self.loss_kind)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(losses.sum())
            opt.step()
            self._loss_sum += losses.detach()
            self._loss_count += 1
            if self.global_step % self.log_every == 0:
                loss = self._flush_train_loss()
                self.log("loss", loss.mean().item(), prog_bar=True, logger=False)
                if self.diverged_at is not None:
                    return

    def on_train_start(self) -> None:
        if self.global_step == 0:
            self._log_eval(0)

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            self._flush_train_loss()
        self._log_eval(self.current_epoch + 1)

    def _log_eval(self, epoch: int) -> None:
        self.recorder.log_members(self.trainer, {"loss/eval": self.snapshot(epoch).eval_loss}, epoch)

    def _flush_train_loss(self) -> Tensor:
        """The one host sync of the loop: mean training loss since the last flush; NaN/Inf stops."""
        loss = (self._loss_sum / self._loss_count).cpu()
        self._loss_sum.zero_()
        self._loss_count = 0
        if not torch.isfinite(loss).all():
            self.diverged_at = self.global_step
            self.trainer.should_stop = True
        self.recorder.log_members(self.trainer, {"loss/train": loss}, epoch=self.current_epoch)
        return loss

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def snapshot(self, epoch: int) -> Snapshot:
        """The student on the evaluation set after ``epoch`` completed epochs (0 = initialisation),
        in eval mode; computed once and shared by every callback that asks at the same step."""
        if self._snapshot is None or (self._snapshot.step, self._snapshot.epoch) != (self.global_step, epoch):
            was_training = self.student.training
            self.student.eval()
            out, hidden = self.student(self.x_eval)
            self.student.train(was_training)
            self._snapshot = Snapshot(epoch, self.global_step, hidden, self.teacher_eval_hidden,
                                      per_student_loss(out, self.y_eval, self.loss_kind))
        return self._snapshot

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = self.optimizer_factory(params=self.student.parameters())
        self._base_lrs = [g["lr"] for g in opt.param_groups]
        return opt
