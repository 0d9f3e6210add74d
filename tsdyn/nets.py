"""ReLU networks for teacher and student, with an ensemble dimension.

Every network holds ``E`` independent copies of the same architecture (``E = 1`` for the
teacher, ``E = student.num_students`` for the student) as batched weights, so that many
students train in one process with one kernel launch per layer. Layer 0 is the lowest hidden
layer everywhere.

Shapes: inputs ``x`` are ``[N, d]`` (shared by all copies) or ``[E, N, d]``; hidden activations
are ``[E, N, K_l]`` (post-ReLU, i.e. the node's output); the output is ``[E, N, d_out]``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import math

import torch
from torch import Tensor, nn

BN_PLACEMENTS = ("none", "after_relu", "before_relu")
INIT_MODES = ("default", "perturb", "same_dir", "same_sign")
DEFAULT_WEIGHT_CHOICES = (-0.5, -0.25, 0.0, 0.25, 0.5)


class EnsembleBatchNorm(nn.Module):
    """BatchNorm over the sample axis, one independent set of statistics per ensemble member.

    Equivalent to ``nn.BatchNorm1d(K)`` applied to each member separately.
    ``h``: ``[E, N, K]`` -> ``[E, N, K]``.
    """

    def __init__(self, num_members: int, width: int, affine: bool = True,
                 momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_members, width))
            self.bias = nn.Parameter(torch.zeros(num_members, width))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_members, width))
        self.register_buffer("running_var", torch.ones(num_members, width))

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            var, mean = torch.var_mean(h, dim=1, unbiased=False)
            with torch.no_grad():
                n = h.shape[1]
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        h = (h - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        if self.weight is not None:
            h = h * self.weight[:, None] + self.bias[:, None]
        return h


class ReLUNet(nn.Module):
    """Fully connected ReLU net: ``Linear -> ReLU`` per hidden layer, then a linear output.

    ``weights[l]``: ``[E, out_l, in_l]``, ``biases[l]``: ``[E, out_l]``; the last entry is the
    output layer. ``bn`` places an optional BatchNorm after (authors' default) or before the ReLU.
    """

    def __init__(self, d: int, ks: Sequence[int], d_out: int, num_members: int = 1,
                 bn: str = "none", bn_affine: bool = True):
        super().__init__()
        if bn not in BN_PLACEMENTS:
            raise ValueError(f"bn={bn!r}: allowed {BN_PLACEMENTS}")
        self.d, self.ks, self.d_out = int(d), [int(k) for k in ks], int(d_out)
        self.num_members, self.bn_placement = int(num_members), bn
        sizes = [self.d, *self.ks, self.d_out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_members, o, i)) for i, o in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_members, o)) for o in sizes[1:])
        self.bns = nn.ModuleList(
            EnsembleBatchNorm(num_members, k, bn_affine) for k in self.ks) if bn != "none" else None
        self.reset_parameters()

    @property
    def num_hidden(self) -> int:
        return len(self.ks)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per member."""
        with torch.no_grad():
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w.shape[-1])
                w.uniform_(-bound, bound, generator=generator)
                b.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x``: ``[N, d]`` or ``[E, N, d]`` -> (output ``[E, N, d_out]``, hidden ``[E, N, K_l]`` list)."""
        h = x.expand(self.num_members, *x.shape) if x.dim() == 2 else x
        hidden = []
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if layer == len(self.ks):
                return z, hidden
            if self.bn_placement == "before_relu":
                z = self.bns[layer](z)
            h = torch.relu(z)
            hidden.append(h)
            if self.bn_placement == "after_relu":
                h = self.bns[layer](h)
        raise AssertionError("unreachable")

    def fan_out(self, layer: int) -> Tensor:
        """Outgoing weights of hidden layer ``layer``'s nodes as ``[E, R, K_l]``: column k holds every
        weight leaving node k (here R = the next layer's width). A view: writes go to the weights,
        so zeroing a column removes the node from the network."""
        return self.weights[layer + 1]

    def member(self, i: int) -> "ReLUNet":
        """A one-member copy of ensemble member ``i`` (weights, biases and BN state)."""
        net = ReLUNet(self.d, self.ks, self.d_out, 1, self.bn_placement,
                      self.bns is None or self.bns[0].weight is not None)
        net.load_state_dict({k: v[i:i + 1] for k, v in self.state_dict().items()})
        return net.to(self.weights[0].device)


# --------------------------------------------------------------------------- teacher init

def separable_rows(rows: int, cols: int, choices: Sequence[float], generator: torch.Generator) -> Tensor:
    """``[rows, cols]`` matrix with entries i.i.d. from ``choices``, rows pairwise distinct and
    never all zero (rejection sampling). Raises if the choice set cannot give that many rows."""
    choices_t = torch.tensor(list(choices), dtype=torch.float64)
    capacity = len(choices_t) ** cols - (1 if bool((choices_t == 0).any()) else 0)
    if rows > capacity:
        raise ValueError(f"cannot draw {rows} distinct non-zero rows of length {cols} from {list(choices)}")
    out: list[Tensor] = []
    seen: set[tuple] = set()
    while len(out) < rows:
        idx = torch.randint(len(choices_t), (rows, cols), generator=generator)
        for row in choices_t[idx]:
            key = tuple(row.tolist())
            if key not in seen and bool(row.abs().sum() > 0):
                seen.add(key)
                out.append(row)
                if len(out) == rows:
                    break
    return torch.stack(out).float()


def init_teacher_(net: ReLUNet, seed: int, weight_choices: Sequence[float] = DEFAULT_WEIGHT_CHOICES,
                  strength_decay: float = 0.0) -> None:
    """The paper's "separable" teacher init, in place, on every layer including the output.

    Rows from ``weight_choices`` (distinct, non-zero), bias ~ U(-0.5, 0.5), then each row with
    its bias divided by its L2 norm + 1e-5. ``strength_decay`` p then divides the fan-out column
    of lower node i by (1+i)^p in every layer above the first.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer, (w, b) in enumerate(zip(net.weights, net.biases)):
            for m in range(net.num_members):
                rows, cols = w.shape[1:]
                wm = separable_rows(rows, cols, weight_choices, g)
                bm = torch.rand(rows, generator=g) - 0.5
                norm = torch.sqrt(wm.pow(2).sum(1) + bm.pow(2)) + 1e-5
                wm, bm = wm / norm[:, None], bm / norm
                if layer > 0 and strength_decay:
                    wm = wm / (1.0 + torch.arange(cols, dtype=wm.dtype)) ** strength_decay
                w[m].copy_(wm)
                b[m].copy_(bm)


@torch.no_grad()
def tune_biases_(net: ReLUNet, x: Tensor, active_fraction: float) -> None:
    """Shift every hidden bias so that its node is active on ``active_fraction`` of ``x``
    (``[N, d]``), layer by layer from the bottom (the follow-up's bias tuning; 0.5 = median)."""
    h = x.expand(net.num_members, *x.shape)
    for layer in range(net.num_hidden):
        w, b = net.weights[layer], net.biases[layer]
        z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        b -= torch.quantile(z, 1.0 - active_fraction, dim=1)
        z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        h = torch.relu(z)


@torch.no_grad()
def calibrate_bn_(net: ReLUNet, x: Tensor) -> None:
    """Set the BN running statistics of ``net`` to the exact batch statistics on ``x``."""
    if net.bns is None:
        return
    momenta = [bn.momentum for bn in net.bns]
    for bn in net.bns:
        bn.momentum = 1.0
    net.train()
    net(x)
    for bn, m in zip(net.bns, momenta):
        bn.momentum = m
    net.eval()


def make_teacher(d: int, ks: Sequence[int], d_out: int, seed: int,
                 weight_choices: Sequence[float] = DEFAULT_WEIGHT_CHOICES,
                 strength_decay: float = 0.0, bias_tune: float | None = None,
                 bn: str = "none", bn_affine: bool = True,
                 input_sampler: Callable[[int, torch.Generator], Tensor] | None = None,
                 n_calibration: int = 10000) -> ReLUNet:
    """Build the frozen, randomly initialised deep teacher (one member, eval mode).

    ``input_sampler(n, generator) -> [n, d]`` draws inputs from the data distribution; it is
    needed for bias tuning and for BatchNorm statistics.
    """
    teacher = ReLUNet(d, ks, d_out, 1, bn, bn_affine)
    init_teacher_(teacher, seed, weight_choices, strength_decay)
    if bias_tune is not None or bn != "none":
        if input_sampler is None:
            raise ValueError("teacher.bias_tune / teacher.bn need an input_sampler from the data")
        x = input_sampler(n_calibration, torch.Generator().manual_seed(int(seed) + 1))
        if bias_tune is not None:
            tune_biases_(teacher, x, float(bias_tune))
        calibrate_bn_(teacher, x)
    teacher.requires_grad_(False)
    return teacher.eval()


# --------------------------------------------------------------------------- student init

def make_student(teacher: ReLUNet, width_mult: int = 10, num_students: int = 1, seed: int = 0,
                 bn: str = "none", bn_affine: bool = True, init: str = "default",
                 perturb_std: float | None = None, init_scale: float = 1.0) -> ReLUNet:
    """A student of ``teacher``'s architecture with hidden widths times ``width_mult``.

    Member ``i`` is initialised from seed ``seed + i``, so an ensemble of E students equals E
    single-student runs with seeds ``seed .. seed+E-1``. ``init``:

    - ``default``: PyTorch's Linear init, times ``init_scale``;
    - ``perturb``: the first teacher-sized block of each layer (rows/columns ``< K_t``) is the
      teacher's weights + N(0, perturb_std^2) noise; in hidden layers the remaining columns of
      those rows are zero (so at std 0 the block computes exactly the teacher's nodes), while the
      output layer keeps the default init outside the block (the fan-out of the non-teacher
      nodes starts at the default scale, as in the theorem check); other rows keep the default
      init. With ``width_mult=1`` the whole student is the perturbed teacher;
    - ``same_dir``: that block takes the teacher's direction with the default init's norm;
    - ``same_sign``: default init, with signs flipped to the teacher's inside that block.
    """
    student = ReLUNet(teacher.d, [k * width_mult for k in teacher.ks], teacher.d_out,
                      num_students, bn, bn_affine)
    with torch.no_grad():
        for i in range(num_students):
            g = torch.Generator().manual_seed(int(seed) + i)
            layers = zip(student.weights, student.biases, teacher.weights, teacher.biases)
            for layer, (w, b, tw, tb) in enumerate(layers):
                bound = 1.0 / math.sqrt(w.shape[-1])
                w[i].uniform_(-bound, bound, generator=g).mul_(init_scale)
                b[i].uniform_(-bound, bound, generator=g).mul_(init_scale)
                if init != "default":
                    hidden = layer < teacher.num_hidden
                    _copy_teacher_block_(w[i], b[i], tw[0], tb[0], init, perturb_std, g, hidden)
    return student


def _copy_teacher_block_(w: Tensor, b: Tensor, tw: Tensor, tb: Tensor, mode: str,
                         perturb_std: float | None, g: torch.Generator, hidden: bool) -> None:
    rows, cols = tw.shape
    if mode == "perturb":
        if hidden:
            w[:rows] = 0.0
        w[:rows, :cols] = tw + perturb_std * torch.randn(tw.shape, generator=g)
        b[:rows] = tb + perturb_std * torch.randn(tb.shape, generator=g)
    elif mode == "same_dir":
        scale = w[:rows, :cols].norm() / tw.norm()
        w[:rows, :cols] = tw * scale
        b[:rows] = tb * scale
    elif mode == "same_sign":
        # flip where the signs disagree; a zero teacher weight leaves the student's as it is
        w[:rows, :cols] = torch.where(tw != 0, w[:rows, :cols].abs() * torch.sign(tw), w[:rows, :cols])
        b[:rows] = torch.where(tb != 0, b[:rows].abs() * torch.sign(tb), b[:rows])
    else:
        raise ValueError(f"student.init={mode!r}: allowed {INIT_MODES}")
