"""The fused training step: forward, the hand-derived backward of the ReLU MLP ensemble and the
SGD update in one function, with no autograd graph, optionally compiled (torch.compile, inductor,
C++ wrapper).

It covers what the paper's main setting trains: a fully connected :class:`~tsdyn.nets.ReLUNet`
student without BatchNorm (any number of members E, with or without ``output_relu``), the MSE or
cross-entropy loss of :func:`tsdyn.nets.per_student_loss`, ``torch.optim.SGD`` with or without
momentum and weight decay, and the projected step (:func:`tsdyn.nets.normalize_rows` after every
update). It updates the student's parameters and the torch optimizer's momentum buffers in place,
so checkpoints, resuming and the learning-rate schedule (``param_groups[0]["lr"]``, read at every
call and passed as a tensor: a new value never recompiles) work as with the autograd path, which
it reproduces to float rounding (``tests/test_fused.py``).

Notation (per member e, batch of B samples): ``h_{-1} = x`` ``[B, d]``; ``z_l = h_{l-1} W_l^T + b_l``;
``h_l = relu(z_l)``; output ``out = z_L`` (``relu(z_L)`` with ``output_relu``). Backward:
``dz_L = dL/dout`` (masked by ``out > 0`` with ``output_relu``), ``dW_l = dz_l^T h_{l-1}``,
``db_l = sum_n dz_l``, ``dz_{l-1} = (dz_l W_l) * [h_{l-1} > 0]``.
"""
from __future__ import annotations

import logging
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from tsdyn.choices import STEP_MODES
from tsdyn.nets import ReLUNet, normalize_rows

log = logging.getLogger("tsdyn")

# auto compiles the fused step when a run has at least this many optimizer steps: below it the
# compilation (tens of seconds cold, a few from inductor's on-disk cache, 2-core machine) costs
# more than it saves (docs/BENCHMARKS.md, "Compilation").
COMPILE_MIN_STEPS = 20_000


def forward(weights: list[Tensor], biases: list[Tensor], x: Tensor,
            output_relu: bool) -> tuple[Tensor, list[Tensor]]:
    """``weights[l]`` ``[E, out_l, in_l]``, ``biases[l]`` ``[E, out_l]``, shared inputs ``x`` ``[B, d]``
    -> (output ``[E, B, d_out]``, post-ReLU hidden activations ``[E, B, K_l]`` per hidden layer).
    One member may come as 2-D ``[out_l, in_l]`` / ``[out_l]`` (no E axis anywhere): it takes the
    plain ``addmm`` kernels of :class:`~tsdyn.nets.ReLUNet`'s single-member forward."""
    h = x if weights[0].dim() == 2 else x.expand(weights[0].shape[0], *x.shape)
    hidden = []
    for layer, (w, b) in enumerate(zip(weights, biases)):
        z = F.linear(h, w, b) if w.dim() == 2 else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if layer == len(weights) - 1:
            return (torch.relu(z) if output_relu else z), hidden
        h = torch.relu(z)
        hidden.append(h)


def loss_and_grad(out: Tensor, target: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Per-member loss ``[E]`` (as :func:`tsdyn.nets.per_student_loss`) and the gradient of their
    sum with respect to ``out`` ``[E, B, D]`` (``target``: ``[B, D]`` teacher outputs).

    ``mse``: loss ``mean (out - y)^2``, gradient ``2 (out - y) / (B D)``; ``cross_entropy`` to the
    teacher's argmax ``c``: loss ``mean_n logsumexp(out_n) - out_{n,c}``, gradient
    ``(softmax(out) - onehot(c)) / B``. Each is formed in the order and by the kernels autograd
    uses (float rounding included: the eager fused step gives autograd's weights bit for bit)."""
    n, d = target.shape
    if kind == "mse":
        diff = out - target
        return diff.pow(2).mean(dim=(1, 2)), (2.0 * diff) * (1.0 / (n * d))
    if kind != "cross_entropy":
        raise ValueError(f"loss={kind!r}: allowed ('mse', 'cross_entropy')")
    logp = torch.log_softmax(out.transpose(1, 2), dim=1)  # [E, D, B]: F.cross_entropy's layout
    labels = target.argmax(-1).expand(out.shape[0], -1)
    losses = -logp.gather(1, labels.unsqueeze(1)).squeeze(1).mean(-1)
    dlogp = F.one_hot(labels, d).to(out.dtype).transpose(1, 2) * (-1.0 / n)  # nll's and mean's backward
    dz = torch.ops.aten._log_softmax_backward_data(dlogp, logp, 1, out.dtype)
    return losses, dz.transpose(1, 2)


def backward(weights: list[Tensor], x: Tensor, hidden: list[Tensor],
             dz: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Gradients ``(dW_l [E, out_l, in_l], db_l [E, out_l])`` of every layer from the output
    gradient ``dz`` ``[E, B, d_out]`` (ReLU mask applied), the inputs ``x`` ``[B, d]`` and the
    hidden activations of :func:`forward` (one member: all without the E axis). ``dW_l`` is formed
    as autograd forms it: ``dz_l^T h_{l-1}`` for one member (``addmm``'s backward for the transposed
    weight), the transpose of ``h_{l-1}^T dz_l`` for several (``baddbmm``'s); the two orders round
    differently on some CPUs."""
    inputs = [x if dz.dim() == 2 else x.expand(weights[0].shape[0], *x.shape), *hidden]
    dws, dbs = [], []
    for layer in range(len(weights) - 1, -1, -1):
        dws.append(dz.t().mm(inputs[layer]) if dz.dim() == 2
                   else torch.bmm(inputs[layer].transpose(1, 2), dz).transpose(1, 2))
        dbs.append(dz.sum(-2))
        if layer:
            dz = torch.where(hidden[layer - 1] > 0, torch.matmul(dz, weights[layer]), 0.0)
    return dws[::-1], dbs[::-1]


def _add_(p: Tensor, g: Tensor, scale: Tensor | float) -> Tensor:
    """``p += scale * g`` in place: torch's own ``add_(alpha=)`` kernel for a number (as the torch
    optimizer), a product for a tensor (compiled: a new value is no new graph)."""
    return p.add_(g * scale) if isinstance(scale, Tensor) else p.add_(g, alpha=scale)


def sgd_steps_(weights: list[Tensor], biases: list[Tensor], buffers: list[Tensor], xs: Tensor, ys: Tensor,
               lr: Tensor | float, loss_sum: Tensor, *, loss: str, output_relu: bool, momentum: float,
               weight_decay: float, renormalize: str | None) -> tuple[Tensor, Tensor]:
    """``k`` SGD steps in place, on batches ``xs`` ``[k, B, d]`` with targets ``ys`` ``[k, B, D]``:
    ``torch.optim.SGD``'s update (``g += wd p``; ``buf = momentum buf + g``; ``p -= lr buf``;
    ``buffers``: one per weight then per bias, unused without momentum), then each layer's rows
    normalised by :func:`~tsdyn.nets.normalize_rows` if ``renormalize``. Returns ``loss_sum``
    ``[E]`` plus each step's per-member losses, added in order, and those losses ``[k, E]`` (new
    tensors: CUDA graphs need outputs)."""
    single = weights[0].shape[0] == 1  # one member: 2-D views, the single-member kernels
    if single:
        weights, biases, buffers = [w[0] for w in weights], [b[0] for b in biases], [v[0] for v in buffers]
    params, step_losses = [*weights, *biases], []
    for x, y in zip(xs.unbind(0), ys.unbind(0)):
        out, hidden = forward(weights, biases, x, output_relu)
        losses, dz = loss_and_grad(out.unsqueeze(0) if single else out, y, loss)
        if output_relu:
            dz = torch.where(out > 0, dz, 0.0)
        dws, dbs = backward(weights, x, hidden, dz.squeeze(0) if single else dz)
        for i, (p, g) in enumerate(zip(params, [*dws, *dbs])):
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if momentum:
                g = buffers[i].mul_(momentum).add_(g)
            _add_(p, g, -lr)
        if renormalize:
            for w, b in zip(weights, biases):
                nw, nb = normalize_rows(w, b, renormalize)
                w.copy_(nw)
                b.copy_(nb)
        loss_sum = loss_sum + losses
        step_losses.append(losses)
    return loss_sum, torch.stack(step_losses)


def unsupported(student, optimizer: torch.optim.Optimizer) -> str | None:
    """Why the fused step cannot train ``student`` with ``optimizer`` (None: it can)."""
    if not isinstance(student, ReLUNet) or student.bn_placement != "none":
        return "it covers fully connected students without BatchNorm"
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return "it covers torch.optim.SGD with one parameter group"
    group = optimizer.param_groups[0]
    if group["dampening"] or group["nesterov"] or group["maximize"]:
        return "it covers SGD without dampening, nesterov or maximize"
    return None


def choose_path(mode: str, student, optimizer: torch.optim.Optimizer, steps: int, clipped: bool = False) -> str:
    """The training step a run takes, ``compiled``, ``fused`` or ``autograd``, for ``mode`` (one of
    :data:`STEP_MODES`) and a run of ``steps`` optimizer steps (``clipped``: with gradient clipping,
    which the fused step does not do): ``auto`` takes the fused step where it covers the run,
    compiled from :data:`COMPILE_MIN_STEPS` steps on; ``fused`` and ``compiled`` raise
    ``ValueError`` where it does not."""
    if mode not in STEP_MODES:
        raise ValueError(f"step={mode!r}: allowed {STEP_MODES}")
    reason = None if mode == "autograd" else unsupported(student, optimizer)
    if mode != "autograd" and clipped:
        reason = "it does not clip gradients"
    if mode == "auto":
        return "autograd" if reason else ("compiled" if steps >= COMPILE_MIN_STEPS else "fused")
    if reason:
        raise ValueError(f"step={mode}: the fused step cannot train this run: {reason}")
    return mode


class FusedSGD:
    """Fused SGD steps of ``student`` on its parameters and ``optimizer``'s momentum buffers, in
    place, any number of steps per call; build it once the student is on its device and the
    optimizer's state is loaded. ``compile_steps`` k > 0: calls of k steps run through
    torch.compile (inductor; on the CPU with its C++ wrapper: no Python between kernels; with
    ``cuda_graphs``, as one CUDA graph), compiled at the first such call; other calls, and every
    call if compilation fails (a warning says so), run the same function eagerly.
    ``compile_seconds``: the time that compilation took."""

    def __init__(self, student: ReLUNet, optimizer: torch.optim.SGD, loss: str,
                 renormalize: str | None = None, compile_steps: int = 0, cuda_graphs: bool = False):
        reason = unsupported(student, optimizer)
        if reason:
            raise ValueError(f"the fused step cannot train this run: {reason}")
        self.optimizer, self.compile_steps = optimizer, int(compile_steps)
        group = optimizer.param_groups[0]
        self._step = partial(sgd_steps_, loss=loss, output_relu=student.output_relu, momentum=group["momentum"],
                             weight_decay=group["weight_decay"], renormalize=renormalize)
        # detached views: in-place updates reach the parameters, no autograd records them
        self._weights = [w.detach() for w in student.weights]
        self._biases = [b.detach() for b in student.biases]
        self._buffers = []
        if group["momentum"]:
            # torch's SGD starts a buffer as the first gradient; 0 * momentum + g is that exactly
            for p in (*student.weights, *student.biases):
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self._buffers.append(state["momentum_buffer"])
        self._compiled = None
        if self.compile_steps and cuda_graphs:
            for t in (*self._weights, *self._biases, *self._buffers):
                torch._dynamo.mark_static_address(t)  # updated in place inside the graph
            self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        elif self.compile_steps:
            self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
        self._ready = False  # compiled already
        self.compile_seconds = 0.0

    def __call__(self, xs: Tensor, ys: Tensor, loss_sum: Tensor) -> tuple[Tensor, Tensor]:
        """``xs`` ``[k, B, d]``, ``ys`` ``[k, B, D]``: k steps. Returns ``loss_sum`` ``[E]`` plus the
        steps' per-member losses, added in order, and those losses ``[k, E]``."""
        lr = self.optimizer.param_groups[0]["lr"]
        if self._compiled is None or xs.shape[0] != self.compile_steps:
            return self._step(self._weights, self._biases, self._buffers, xs, ys, lr, loss_sum)
        args = (self._weights, self._biases, self._buffers, xs, ys,
                torch.tensor(lr, dtype=xs.dtype, device=xs.device), loss_sum)
        if self._ready:
            return self._compiled(*args)
        start = time.perf_counter()
        try:
            result = self._compiled(*args)
        except Exception as err:  # noqa: BLE001 - no compiler, unsupported backend ...: run eagerly
            log.warning("tsdyn: compiling the fused step failed (%s: %s); running it uncompiled",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self._compiled = None
            return self(xs, ys, loss_sum)
        self._ready = True
        self.compile_seconds = time.perf_counter() - start
        log.info("tsdyn: fused step compiled in %.1f s", self.compile_seconds)
        return result
