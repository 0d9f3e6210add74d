"""The LightningModule: a student regresses a frozen teacher on in-memory inputs.

Overhead is kept off the hot path: the teacher labels each epoch's training set in one no-grad
pass, batches are contiguous slices of a shuffled device tensor, one ``training_step`` runs
``steps_per_call`` optimizer steps (manual optimisation), and the loss is read back to the host
only every ``log_every_n_steps`` steps.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tsdyn import keys
from tsdyn.data import GaussianData
from tsdyn.errors import Interrupted
from tsdyn.fused import FusedSGD, choose_path
from tsdyn.nets import per_student_loss, predict, ReLUNet, renormalize_
from tsdyn.runfolder.writer import Recorder
from tsdyn.schedule import lr_at
from tsdyn.snapshot import Snapshot



class Diverged(Exception):
    """A non-finite training loss (checked every ``log_every_n_steps`` steps) ended training."""

    def __init__(self, step: int):
        super().__init__(step)  # the constructor's argument: the exception pickles
        self.step = step

    def __str__(self) -> str:
        return f"non-finite training loss at step {self.step}"


def _advance_step_counter(trainer: pl.Trainer, n: int) -> None:
    """Count ``n`` optimizer steps taken outside ``LightningOptimizer.step`` in the trainer's
    ``global_step`` (the manual-optimisation progress tracker that ``step()`` would increment)."""
    trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(n)


@torch.no_grad()
def clip_grad_per_member_(params: Sequence[Tensor], max_value: float, algorithm: str = "norm") -> None:
    """Clip the gradients of an ensemble in place, each student on its own: every parameter is
    ``[E, ...]`` (student first). ``norm``: student e's gradients are scaled by
    ``min(1, max_value / ||g_e||)``, ``||g_e||`` the L2 norm over all of e's parameters (what
    ``torch.nn.utils.clip_grad_norm_`` does to one net); ``value``: every entry clamped to
    ``[-max_value, max_value]``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if algorithm == "value":
        for g in grads:
            g.clamp_(-max_value, max_value)
        return
    norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()   # [E]
    scale = (max_value / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


class TeacherStudent(pl.LightningModule):
    def __init__(self, teacher: ReLUNet, student: ReLUNet, data: GaussianData,
                 optimizer: Callable[..., torch.optim.Optimizer], lr_schedule: Mapping[int, float] | None = None,
                 loss: str = "mse", steps_per_call: int = 32, log_every_n_steps: int = 100,
                 recorder: Recorder | None = None, renormalize: str | None = None,
                 gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm",
                 step: str = "auto", fused_chunk: int = 1):
        super().__init__()
        self.automatic_optimization = False
        self.teacher, self.student, self.data = teacher, student, data
        self.optimizer_factory, self.lr_schedule = optimizer, dict(lr_schedule or {})
        self.loss_kind, self.steps_per_call, self.log_every = loss, int(steps_per_call), int(log_every_n_steps)
        self.recorder = recorder or Recorder(None)
        # projected SGD (None, or normalize_rows' ``by``): the student starts on the sphere (projected
        # here, as the authors normalise before training) and is projected after every optimizer step
        self.renormalize = renormalize
        if renormalize:
            renormalize_(student, renormalize)
        self.clip_val, self.clip_algorithm = gradient_clip_val, gradient_clip_algorithm  # per student
        self.step_mode, self.fused_chunk = step, int(fused_chunk)  # tsdyn.fused.choose_path
        self.step_path = "autograd"  # the path training takes (set at the start of training)
        self._fused: FusedSGD | None = None
        self._chunk = 1  # optimizer steps per call of the step function
        self._compile_logged = 0.0
        self.stop_signal: int | None = None  # set by a signal handler (tsdyn.interrupt.StopOnSignal)
        self._in_epoch = False  # between on_train_epoch_start and on_train_epoch_end (checkpointed)
        self._resumed: dict | None = None  # this module's part of the checkpoint resumed from
        self._snapshot: Snapshot | None = None
        self._train: tuple[Tensor, Tensor] | None = None  # fixed training set and its labels

    # ------------------------------------------------------------------ data
    def label(self, x: Tensor) -> Tensor:
        """Teacher outputs for ``x`` ``[N, ...]`` -> ``[N, d_out]``, in chunks, without autograd."""
        return predict(self.teacher, x)[0]

    def train_dataloader(self) -> DataLoader:
        n_calls = -(-self.data.steps_per_epoch() // self.steps_per_call)
        return DataLoader(range(n_calls), batch_size=None, shuffle=False)

    def on_fit_start(self) -> None:
        self.teacher.eval()
        self.x_eval = self.data.eval_inputs(self.teacher.d, self.device)
        with torch.no_grad():
            y, hidden = self.teacher(self.x_eval)
        self.y_eval, self.teacher_eval_hidden = y[0], [h[0] for h in hidden]

    def epoch_steps(self) -> int:
        """Optimizer steps in one epoch: the data's, fewer when the trainer runs fewer calls of
        ``steps_per_call`` steps (``limit_train_batches``, ``fast_dev_run``)."""
        return min(self.data.steps_per_epoch(), self.trainer.num_training_batches * self.steps_per_call)

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        for group, base in zip(self._opt.param_groups, self._base_lrs):
            group["lr"] = lr_at(epoch, base, self.lr_schedule)
        if self.data.regenerate_each_epoch or self._train is None:
            x = self.data.train_inputs(self.teacher.d, epoch, self.device)
            self._train = (x, self.label(x))
        perm = self.data.shuffle(epoch, self.device)
        self._x, self._y = self._train[0][perm], self._train[1][perm]
        self._loss_sum = torch.zeros(self.student.num_members, device=self.device)
        self._flushed_at = self.global_step
        self._in_epoch = True

    # ------------------------------------------------------------------ training
    def training_step(self, _call: int) -> None:
        """``steps_per_call`` optimizer steps on consecutive batches of the epoch's tensor.

        The steps drive the torch optimizer directly: Lightning's per-step hooks
        (``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``) would cost more
        than a small step itself, so they are not called (use batch or epoch hooks). The trainer's
        step counter advances by the steps taken, so ``global_step``, checkpoints and loggers all
        count optimizer steps. The position in the epoch comes from ``global_step`` (every epoch has
        the same steps), so a call resumed from a checkpoint taken inside it goes on where it stopped;
        the last call stops at ``trainer.max_steps``. A non-finite loss (:class:`Diverged`) or a signal
        (``stop_signal``: :class:`Interrupted`) ends training after the current step (a fused chunk
        already under way is finished first)."""
        bs, steps = self.data.batch_size, self.epoch_steps()
        first = self.global_step - self.current_epoch * steps
        last = min((first // self.steps_per_call + 1) * self.steps_per_call, steps)
        if self.trainer.max_steps >= 0:
            last = min(last, first + self.trainer.max_steps - self.global_step)
        step0, x, y, loss_sum = self.global_step, self._x, self._y, self._loss_sum
        step, i = step0, first
        try:
            while i < last:
                # after a signal, one step only: training ends after the step under way, as without chunks
                n = 1 if self.stop_signal is not None else min(self._chunk, last - i)
                total, losses = self._take_steps(x[i * bs:(i + n) * bs], y[i * bs:(i + n) * bs], n, loss_sum)
                i, step = i + n, step + n
                if step % self.log_every >= n:  # no log boundary among these steps
                    loss_sum.copy_(total)
                else:
                    self._add_losses(losses, step - n)
                if self.stop_signal is not None:
                    raise Interrupted(self.stop_signal)
        finally:
            _advance_step_counter(self.trainer, step - step0)

    def _take_steps(self, x: Tensor, y: Tensor, n: int, loss_sum: Tensor) -> tuple[Tensor, Tensor]:
        """``n`` optimizer steps on the ``n`` consecutive batches of ``x`` ``[n * B, d]`` (targets ``y``
        ``[n * B, D]``): one call of the fused step, or ``n`` = 1 autograd step. Returns ``loss_sum``
        plus each step's per-member losses, added in order, and those losses ``[n, E]``."""
        if self._fused is not None:
            return self._fused(x.view(n, -1, x.shape[-1]), y.view(n, -1, y.shape[-1]), loss_sum)
        opt = self._opt
        out, _ = self.student(x)
        losses = per_student_loss(out, y, self.loss_kind)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        if self.clip_val:
            clip_grad_per_member_(list(self.student.parameters()), self.clip_val, self.clip_algorithm)
        opt.step()
        if self.renormalize:
            renormalize_(self.student, self.renormalize)
        losses = losses.detach()
        return loss_sum + losses, losses.unsqueeze(0)

    def _add_losses(self, losses: Tensor, after: int) -> None:
        """The per-member losses ``[n, E]`` of steps ``after + 1`` ... ``after + n`` added in order to the
        training-loss sum, which is logged at every multiple of ``log_every_n_steps`` among them (a
        fused chunk may span one: the record is the same as with one step per call)."""
        for step, row in enumerate(losses.unbind(0), start=after + 1):
            self._loss_sum += row
            if step % self.log_every == 0:
                loss = self._flush_train_loss(step)
                self.log("loss", loss.mean().item(), prog_bar=True, logger=False)

    def on_train_start(self) -> None:
        # a resumed (or extended) run keeps the path its first part chose: the same arithmetic throughout
        pinned = (self._resumed or {}).get("step_path")
        steps = self.trainer.max_epochs * self.data.steps_per_epoch() - self.global_step
        self.step_path = pinned or choose_path(self.step_mode, self.student, self._opt, steps, bool(self.clip_val))
        if self.step_path != "autograd":
            self._fused = FusedSGD(self.student, self._opt, self.loss_kind, self.renormalize,
                                   compile_steps=self.fused_chunk if self.step_path == "compiled" else 0)
            self._chunk = self.fused_chunk
        if self.global_step == 0:
            self._log_eval(0)
        if self._resumed is not None and self._resumed["in_epoch"]:  # resumed inside an epoch
            self.on_train_epoch_start()
            self._loss_sum.copy_(self._resumed["loss_sum"])
            self._flushed_at = self._resumed["flushed_at"]

    def on_train_epoch_end(self) -> None:
        if self.global_step > self._flushed_at:
            self._flush_train_loss(self.global_step)
        self._log_eval(self.current_epoch + 1)
        if self._fused is not None and self._fused.compile_seconds > self._compile_logged:
            self._compile_logged = self._fused.compile_seconds  # paid in this epoch's first call
            self.recorder.log(self.trainer, {"time/compile_s": self._compile_logged}, self.current_epoch,
                              monitor=False)
        self._in_epoch = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What a resumed run needs besides weights and Lightning's loop state: whether the epoch
        was under way, the training-loss accumulator, how much of ``metrics.jsonl`` and which array
        files were written, and the training step's path (``step_path``)."""
        checkpoint["tsdyn"] = {"in_epoch": self._in_epoch, "loss_sum": self._loss_sum.detach().cpu(),
                               "flushed_at": self._flushed_at, "metrics_bytes": self.recorder.metrics_bytes(),
                               "arrays": self.recorder.arrays_files(), "step_path": self.step_path}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming: rows and array files written after the checkpoint are dropped (they will be
        written again; after a completed run's last epoch: its end-of-run results, measured again at
        the extended run's end)."""
        self._resumed = checkpoint["tsdyn"]
        self.recorder.rewind(self._resumed["metrics_bytes"], self._resumed.get("arrays"))

    def _log_eval(self, epoch: int) -> None:
        self.recorder.log_members(self.trainer, {"loss/eval": self.snapshot(epoch).eval_loss}, epoch)

    def _flush_train_loss(self, step: int) -> Tensor:
        """The one host sync of the loop: mean training loss ``[E]`` over the steps since the last
        flush, logged at ``step``; a NaN/Inf ends training (:class:`Diverged`, after logging it)."""
        loss = (self._loss_sum / (step - self._flushed_at)).cpu()
        self._loss_sum.zero_()
        self._flushed_at = step
        self.recorder.log_members(self.trainer, {keys.TRAIN_LOSS: loss}, epoch=self.current_epoch, step=step)
        if not torch.isfinite(loss).all():
            raise Diverged(step)
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
        self._opt = opt
        return opt
