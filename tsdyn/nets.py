"""ReLU networks for teacher and student, with an ensemble dimension.

Every network holds ``E`` independent copies of the same architecture (``E = 1`` for the
teacher, ``E = student.num_students`` for the student) as batched weights, so that many
students train in one process with one kernel launch per layer. Layer 0 is the lowest hidden
layer everywhere.

Two families share one interface (``ks``, ``num_hidden``, ``num_members``, ``weights``,
``biases``, ``bns``, ``fan_out``, ``member``, ``arch``):

- :class:`ReLUNet`, fully connected: inputs ``x`` are ``[N, d]`` (shared by all copies) or
  ``[E, N, d]``; hidden activations are ``[E, N, K_l]`` (post-ReLU, i.e. the node's output);
- :class:`ConvReLUNet`, 3x3 convolutions without padding: inputs ``[N, C, H, W]`` or
  ``[E, N, C, H, W]``; hidden maps ``[E, N, K_l, H_l, W_l]`` (channels are the nodes).

The output is ``[E, N, d_out]`` for both.
"""
from __future__ import annotations

from typing import Callable, Sequence

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_PLACEMENTS = ("none", "after_relu", "before_relu")
INIT_MODES = ("default", "perturb", "same_dir", "same_sign", "gaussian_plus_teacher")
ROW_NORMS = ("weight", "fan_in")
DEFAULT_WEIGHT_CHOICES = (-0.5, -0.25, 0.0, 0.25, 0.5)


class EnsembleBatchNorm(nn.Module):
    """BatchNorm over the sample axis, one independent set of statistics per ensemble member.

    Equivalent to ``nn.BatchNorm1d(K)`` applied to each member separately.
    ``h``: ``[E, N, K]`` -> ``[E, N, K]``; conv maps in the grouped layout ``[N, E*K, H, W]``
    (member e's channels at ``e*K .. e*K+K-1``) -> the same, i.e. ``nn.BatchNorm2d(K)`` per member.
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
        if h.dim() == 4:  # grouped conv maps: every (member, channel) pair is one BatchNorm2d channel
            flat = lambda t: None if t is None else t.view(-1)  # noqa: E731 - views: stats update in place
            return F.batch_norm(h, flat(self.running_mean), flat(self.running_var), flat(self.weight),
                                flat(self.bias), self.training, self.momentum, self.eps)
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


class EnsembleNet(nn.Module):
    """What both families share. Subclasses set ``d`` (input size or shape), ``ks`` (hidden widths,
    lowest first), ``d_out``, ``num_members``, ``bn_placement``, ``weights[l]`` ``[E, out_l, ...]``
    and ``biases[l]`` ``[E, out_l]`` (the last entry is the output layer) and ``bns``."""

    KIND = ""  # the checkpoint's name of the family (:data:`NETS`)

    def _build(self, shapes: Sequence[tuple[int, ...]], bn: str, bn_affine: bool) -> None:
        """Parameters for per-member weight ``shapes`` (output size first; the last is the output
        layer), one BatchNorm per hidden layer unless ``bn="none"``, then the default init."""
        if bn not in BN_PLACEMENTS:
            raise ValueError(f"bn={bn!r}: allowed {BN_PLACEMENTS}")
        self.bn_placement = bn
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(self.num_members, *s)) for s in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(self.num_members, s[0])) for s in shapes)
        self.bns = nn.ModuleList(
            EnsembleBatchNorm(self.num_members, k, bn_affine) for k in self.ks) if bn != "none" else None
        # (weight, bias) per layer as a plain list: ParameterList indexing costs microseconds per
        # access on the hot path (Module.to/.cuda() keep these Parameter objects, moving their data)
        self._layers = list(zip(self.weights, self.biases))
        self.reset_parameters()

    @property
    def num_hidden(self) -> int:
        return len(self.ks)

    @property
    def bn_affine(self) -> bool:
        return self.bns is None or self.bns[0].weight is not None

    def arch(self) -> dict:
        """Constructor arguments but ``num_members``: with ``KIND`` they rebuild the net (checkpoints)."""
        return {"d": self.d, "ks": list(self.ks), "d_out": self.d_out, "bn": self.bn_placement,
                "bn_affine": self.bn_affine}

    def like(self, **changes) -> "EnsembleNet":
        """A new, default-initialised net of the same family and sizes, with ``changes`` to its
        constructor arguments (``ks``, ``num_members``, ``bn``, ...)."""
        return type(self)(**{**self.arch(), "num_members": self.num_members, **changes})

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default ``nn.Linear`` / ``nn.Conv2d`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        per member (fan_in: a row's inputs, times the kernel positions for a convolution)."""
        with torch.no_grad():
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w[0, 0].numel())
                w.uniform_(-bound, bound, generator=generator)
                b.uniform_(-bound, bound, generator=generator)

    def fan_out(self, layer: int) -> Tensor:
        """Outgoing weights of hidden layer ``layer``'s nodes as ``[E, R, K_l]``: column k holds every
        weight leaving node k (fully connected: R = the next layer's width; conv: R = the next
        layer's output channels x kernel positions, or d_out x positions for the linear head).
        A view: writes go to the weights, so zeroing a column removes the node from the network."""
        return self.weights[layer + 1].flatten(1, -2)

    def member(self, i: int) -> "EnsembleNet":
        """A one-member copy of ensemble member ``i`` (weights, biases and BN state)."""
        net = self.like(num_members=1)
        net.load_state_dict({k: v[i:i + 1] for k, v in self.state_dict().items()})
        return net.to(self.weights[0].device)


class ReLUNet(EnsembleNet):
    """Fully connected ReLU net: ``Linear -> ReLU`` per hidden layer, then a linear output (a ReLU
    on it too with ``output_relu``, as in the authors' matrix-form theorem check).

    ``weights[l]``: ``[E, out_l, in_l]``, ``biases[l]``: ``[E, out_l]``; the last entry is the
    output layer. ``bn`` places an optional BatchNorm after (authors' default) or before the ReLU.
    """

    def __init__(self, d: int, ks: Sequence[int], d_out: int, num_members: int = 1,
                 bn: str = "none", bn_affine: bool = True, output_relu: bool = False):
        super().__init__()
        self.d, self.ks, self.d_out = int(d), [int(k) for k in ks], int(d_out)
        self.num_members, self.output_relu = int(num_members), bool(output_relu)
        sizes = [self.d, *self.ks, self.d_out]
        self._build(list(zip(sizes[1:], sizes[:-1])), bn, bn_affine)

    KIND = "fc"

    def arch(self) -> dict:
        return {**super().arch(), "output_relu": self.output_relu}

    @property
    def hidden_units(self) -> int:
        """Hidden activations per sample and member, all layers together."""
        return sum(self.ks)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x``: ``[N, d]`` or ``[E, N, d]`` -> (output ``[E, N, d_out]``, hidden ``[E, N, K_l]`` list).

        A single member on shared inputs (the teacher; one student) takes plain ``addmm`` kernels,
        several members one ``baddbmm`` per layer."""
        single = self.num_members == 1 and x.dim() == 2
        h = x if single or x.dim() == 3 else x.expand(self.num_members, *x.shape)
        hidden = []
        for layer, (w, b) in enumerate(self._layers):
            z = F.linear(h, w.squeeze(0), b.squeeze(0)) if single else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if layer == len(self.ks):
                z = torch.relu(z) if self.output_relu else z
                break
            if self.bn_placement == "before_relu":
                z = self._bn(layer, z, single)
            h = torch.relu(z)
            hidden.append(h)
            if self.bn_placement == "after_relu":
                h = self._bn(layer, h, single)
        if single:
            return z.unsqueeze(0), [a.unsqueeze(0) for a in hidden]
        return z, hidden

    def _bn(self, layer: int, h: Tensor, single: bool) -> Tensor:
        return self.bns[layer](h.unsqueeze(0)).squeeze(0) if single else self.bns[layer](h)


class ConvReLUNet(EnsembleNet):
    """Convolutional ReLU net (the authors' ``ModelConv``): per hidden layer a ``kernel_size`` x
    ``kernel_size`` convolution without padding (each layer shrinks the map by ``kernel_size - 1``)
    -> ReLU, with an optional per-channel BatchNorm after (authors' default) or before the ReLU;
    then a linear head on the flattened last map. Channels are the nodes.

    ``d = (C, H, W)`` is the input shape. Weights are stored channels-last, so that a node's
    fan-out is a view: ``weights[l]`` ``[E, K_l, k, k, K_{l-1}]`` (``weights[l][e, o, i, j, c]``
    weighs input channel c at kernel position (i, j) for output channel o), the head
    ``weights[-1]`` ``[E, d_out, H_L, W_L, K_L]``; ``biases[l]`` ``[E, out_l]``. The E members run
    as one grouped convolution (member e's channels at ``e*K .. e*K+K-1``).
    """

    KIND = "conv"

    def __init__(self, d: Sequence[int], ks: Sequence[int], d_out: int, num_members: int = 1,
                 bn: str = "none", bn_affine: bool = True, kernel_size: int = 3):
        super().__init__()
        c, height, width = (int(v) for v in d)
        self.d, self.ks, self.d_out = (c, height, width), [int(k) for k in ks], int(d_out)
        self.num_members, self.kernel_size = int(num_members), int(kernel_size)
        shrink = self.kernel_size - 1
        self.map_sizes = [(height - shrink * (l + 1), width - shrink * (l + 1)) for l in range(len(self.ks))]
        if min(self.map_sizes[-1]) < 1:
            raise ValueError(f"{len(self.ks)} unpadded {kernel_size}x{kernel_size} convolutions leave no map "
                             f"of a {height}x{width} input")
        k = self.kernel_size
        shapes = [(o, k, k, i) for i, o in zip([c, *self.ks[:-1]], self.ks)]
        self._build([*shapes, (self.d_out, *self.map_sizes[-1], self.ks[-1])], bn, bn_affine)

    def arch(self) -> dict:
        return {**super().arch(), "d": list(self.d), "kernel_size": self.kernel_size}

    @property
    def hidden_units(self) -> int:
        """Hidden activations per sample and member (channels x positions), all layers together."""
        return sum(k * h * w for k, (h, w) in zip(self.ks, self.map_sizes))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x``: ``[N, C, H, W]`` or ``[E, N, C, H, W]`` -> (output ``[E, N, d_out]``, hidden maps
        ``[E, N, K_l, H_l, W_l]`` list, post-ReLU)."""
        members = self.num_members
        if x.dim() == 5:  # per-member inputs, in the grouped layout [N, E*C, H, W]
            h, groups = x.transpose(0, 1).flatten(1, 2), members
        else:             # shared inputs: one ungrouped convolution computes every member
            h, groups = x, 1
        hidden = []
        for layer, (w, b) in enumerate(self._layers[:-1]):
            kernel = w.permute(0, 1, 4, 2, 3).flatten(0, 1)  # [E*K, C_in, k, k]
            z = F.conv2d(h, kernel, b.flatten(), groups=groups)
            groups = members
            if self.bn_placement == "before_relu":
                z = self.bns[layer](z)
            h = torch.relu(z)
            hidden.append(h.unflatten(1, (members, -1)).transpose(0, 1))
            if self.bn_placement == "after_relu":
                h = self.bns[layer](h)
        w, b = self._layers[-1]
        return torch.einsum("nekhw,eohwk->eno", h.unflatten(1, (members, -1)), w) + b[:, None], hidden


NETS = {net.KIND: net for net in (ReLUNet, ConvReLUNet)}


def normalize_rows(w: Tensor, b: Tensor, by: str, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Each row (an output node's incoming weights, ``w``: ``[..., out, *in]``) and its bias
    (``b``: ``[..., out]``) divided by the same norm + ``eps``:

    - ``by="weight"``: the norm of the weight row alone (the authors' ``normalize_layer``: the
      main script's teacher and its ``--normalize`` student projection);
    - ``by="fan_in"``: the norm of the weights and the bias together (the matrix-form theorem
      script, whose columns carry the bias as one more entry).
    Returns new tensors; ``w`` and ``b`` are not changed."""
    sq = w.flatten(b.dim()).pow(2).sum(-1)
    if by == "fan_in":
        sq = sq + b.pow(2)
    elif by != "weight":
        raise ValueError(f"normalize by={by!r}: allowed {ROW_NORMS}")
    norm = sq.sqrt() + eps
    return w / norm.view(*norm.shape, *(1,) * (w.dim() - b.dim())), b / norm


@torch.no_grad()
def renormalize_(net: EnsembleNet, by: str) -> None:
    """Projected SGD's projection, in place: every layer's rows (the output layer's too) rescaled
    to unit norm by :func:`normalize_rows` (``by``: ``weight`` or ``fan_in``)."""
    for w, b in zip(net.weights, net.biases):
        nw, nb = normalize_rows(w, b, by)
        w.copy_(nw)
        b.copy_(nb)


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


def init_teacher_(net: EnsembleNet, seed: int, weight_choices: Sequence[float] = DEFAULT_WEIGHT_CHOICES,
                  strength_decay: float = 0.0, normalize: str = "weight", bias: float | None = None) -> None:
    """The paper's "separable" teacher init, in place, on every layer including the output, in
    the follow-up's order:

    1. rows from ``weight_choices`` (distinct, non-zero), bias ~ U(-0.5, 0.5) (or the constant
       ``bias``, as the matrix-form theorem script's ``-bias`` row);
    2. strength decay p: in every layer above the first (the output layer too) the fan-out column
       of lower node i divided by (1+i)^p;
    3. each row and its bias divided by a norm + 1e-5 (:func:`normalize_rows`): ``normalize="weight"``
       the weight row's norm (the authors' main script), ``"fan_in"`` the norm of the weights and
       the bias together (their theorem script).

    A row is everything an output node (a conv: an output channel) reads; a node's fan-out column
    is the weights' last axis. Normalising after the decay leaves each row at unit norm, so the
    decay makes the low-index nodes of a layer dominate their readers' rows.
    """
    if normalize not in ROW_NORMS:
        raise ValueError(f"teacher.normalize={normalize!r}: allowed {ROW_NORMS}")
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer, (w, b) in enumerate(zip(net.weights, net.biases)):
            for m in range(net.num_members):
                rows, cols = w.shape[1], w[0, 0].numel()
                wm = separable_rows(rows, cols, weight_choices, g).view(w.shape[1:])
                bm = torch.rand(rows, generator=g) - 0.5
                if bias is not None:
                    bm = torch.full_like(bm, float(bias))
                if layer > 0 and strength_decay:
                    wm = wm / (1.0 + torch.arange(w.shape[-1], dtype=wm.dtype)) ** strength_decay
                wm, bm = normalize_rows(wm, bm, normalize, eps=1e-5)
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
def standardize_outputs_(net: EnsembleNet, x: Tensor) -> None:
    """Rescale every output row and bias so that each output has mean 0 and std 1 on ``x``
    (``[N, ...]``; the follow-up's last-layer tuning): with the output's mean m and std s on
    ``x``, ``w <- w / s`` and ``b <- (b - m) / s``. Outputs that are constant on ``x`` keep their
    scale and only lose their mean. Before an output ReLU (the outputs' pre-activations)."""
    relu = isinstance(net, ReLUNet) and net.output_relu
    if relu:
        net.output_relu = False
    try:
        z = predict(net, x)                               # [E, N, d_out] pre-activations
    finally:
        if relu:
            net.output_relu = True
    std, mean = torch.std_mean(z, dim=1, unbiased=False)  # [E, d_out]
    scale = torch.where(std > 0, std, torch.ones_like(std))
    w, b = net.weights[-1], net.biases[-1]
    w /= scale.view(*scale.shape, *(1,) * (w.dim() - 2))
    b.sub_(mean).div_(scale)


@torch.no_grad()
def calibrate_bn_(net: EnsembleNet, x: Tensor) -> None:
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
                 bn: str = "none", bn_affine: bool = True, output_relu: bool = False,
                 normalize: str = "weight", bias: float | None = None, standardize_outputs: bool = False,
                 input_sampler: Callable[[int, torch.Generator], Tensor] | None = None,
                 n_calibration: int = 10000) -> ReLUNet:
    """Build the frozen, randomly initialised deep teacher (one member, eval mode): the separable
    init (:func:`init_teacher_`: ``weight_choices``, ``strength_decay``, ``normalize``, ``bias``),
    then the follow-up's tuning on the data: ``bias_tune`` (:func:`tune_biases_`), BatchNorm
    statistics, then ``standardize_outputs`` (:func:`standardize_outputs_`).

    ``input_sampler(n, generator) -> [n, d]`` draws inputs from the data distribution; it is
    needed for the tuning steps and for BatchNorm statistics.
    """
    return _init_teacher(ReLUNet(d, ks, d_out, 1, bn, bn_affine, output_relu), seed, weight_choices, strength_decay,
                         normalize, bias, bias_tune, standardize_outputs, input_sampler, n_calibration)


def make_conv_teacher(d: Sequence[int], ks: Sequence[int], d_out: int, seed: int,
                      weight_choices: Sequence[float] = DEFAULT_WEIGHT_CHOICES,
                      strength_decay: float = 0.0, bn: str = "none", bn_affine: bool = True,
                      kernel_size: int = 3, normalize: str = "weight", standardize_outputs: bool = False,
                      input_sampler: Callable[[int, torch.Generator], Tensor] | None = None,
                      n_calibration: int = 1000) -> ConvReLUNet:
    """The frozen conv teacher for image-shaped inputs ``d = (C, H, W)`` (images, or Gaussian
    inputs of that shape): :class:`ConvReLUNet` with the separable init (per output channel),
    optional output standardisation and BatchNorm statistics from ``input_sampler``'s inputs. The
    starting point of ``tsdyn.pretrain_teacher``."""
    return _init_teacher(ConvReLUNet(d, ks, d_out, 1, bn, bn_affine, kernel_size), seed, weight_choices,
                         strength_decay, normalize, None, None, standardize_outputs, input_sampler, n_calibration)


def _init_teacher(teacher: EnsembleNet, seed: int, weight_choices: Sequence[float], strength_decay: float,
                  normalize: str, bias: float | None, bias_tune: float | None, standardize_outputs: bool,
                  input_sampler: Callable[[int, torch.Generator], Tensor] | None,
                  n_calibration: int) -> EnsembleNet:
    """Separable init, optional bias tuning and output standardisation, BN statistics from the
    data (all on the same ``n_calibration`` inputs); frozen, in eval mode."""
    bn = teacher.bn_placement
    init_teacher_(teacher, seed, weight_choices, strength_decay, normalize, bias)
    if bias_tune is not None or standardize_outputs or bn != "none":
        if input_sampler is None:
            raise ValueError("teacher.bias_tune / teacher.standardize_outputs / teacher.bn need an input_sampler "
                             "from the data")
        x = input_sampler(n_calibration, torch.Generator().manual_seed(int(seed) + 1))
        if bias_tune is not None:
            tune_biases_(teacher, x, float(bias_tune))
        calibrate_bn_(teacher, x)
        if standardize_outputs:
            standardize_outputs_(teacher.eval(), x)
    teacher.requires_grad_(False)
    return teacher.eval()


TEACHER_FILE_FORMAT = "tsdyn.teacher/1"


def save_teacher(net: EnsembleNet, path: str | Path, **meta) -> None:
    """A teacher file: the family and architecture (so that loading cannot silently build another
    net), the weights and BN state of member 0, and ``meta`` (plain values: data set, accuracy ...)."""
    torch.save({"format": TEACHER_FILE_FORMAT, "kind": net.KIND, "arch": net.arch(), "meta": meta,
                "state_dict": {k: v[:1].detach().cpu().clone() for k, v in net.state_dict().items()}}, path)


def read_teacher_file(path: str | Path) -> dict:
    """The content of a file written by :func:`save_teacher` (``kind``, ``arch``, ``meta``,
    ``state_dict``); ``ValueError`` for any other file."""
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format") != TEACHER_FILE_FORMAT:
        raise ValueError(f"{path} is not a tsdyn teacher file ({TEACHER_FILE_FORMAT})")
    return content


def load_teacher(checkpoint: str | Path) -> EnsembleNet:
    """The frozen teacher (one member, eval mode) of a :func:`save_teacher` file, built from the
    architecture the file records."""
    content = read_teacher_file(checkpoint)
    teacher = NETS[content["kind"]](**content["arch"], num_members=1)
    teacher.load_state_dict(content["state_dict"])
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def predict(net: EnsembleNet, x: Tensor, max_units: int = 2**25) -> Tensor:
    """``net``'s outputs ``[E, N, d_out]`` on inputs ``x`` ``[N, ...]``, without autograd, in chunks
    whose hidden activations hold about ``max_units`` numbers at most (conv maps are large), in
    the net's current mode (train / eval)."""
    chunk = max(1, max_units // (net.hidden_units * net.num_members))
    return torch.cat([net(x[i:i + chunk])[0] for i in range(0, len(x), chunk)], dim=1)


# --------------------------------------------------------------------------- student init

def active_widths(net: EnsembleNet) -> list[int]:
    """Per hidden layer, the nodes of member 0 that a pruning left in place: a removed node has
    all-zero incoming weights, bias and fan-out (``tsdyn.pretrain_teacher``); every other node counts.
    The authors size the student of a pruned teacher from these counts."""
    widths = []
    for layer, k in enumerate(net.ks):
        w, b = net.weights[layer][0], net.biases[layer][0]
        dead = (w.flatten(1).abs().sum(-1) == 0) & (b == 0) & (net.fan_out(layer)[0].abs().sum(0) == 0)
        widths.append(k - int(dead.sum()))
    return widths


def make_student(teacher: EnsembleNet, width_mult: int = 10, num_students: int = 1, seed: int = 0,
                 bn: str = "none", bn_affine: bool = True, init: str = "default",
                 perturb_std: float | None = None, init_scale: float = 1.0) -> EnsembleNet:
    """A student of ``teacher``'s architecture and family (fully connected or conv) with hidden
    widths (conv: channels) times ``width_mult``: the teacher's active nodes per layer
    (:func:`active_widths`: all of them, unless the teacher was pruned) times ``width_mult``.

    Member ``i`` is initialised from seed ``seed + i``, so an ensemble of E students equals E
    single-student runs with seeds ``seed .. seed+E-1``. ``init``:

    - ``default``: PyTorch's Linear / Conv2d init, times ``init_scale``;
    - ``perturb``: the first teacher-sized block of each layer (rows/columns ``< K_t``) is the
      teacher's weights + N(0, perturb_std^2) noise; in hidden layers the remaining columns of
      those rows are zero (so at std 0 the block computes exactly the teacher's nodes), while the
      output layer keeps the default init outside the block (the fan-out of the non-teacher
      nodes starts at the default scale). With ``width_mult=1`` the whole student is the
      perturbed teacher;
    - ``same_dir``: that block takes the teacher's direction with the default init's norm;
    - ``same_sign``: default init, with signs flipped to the teacher's inside that block;
    - ``gaussian_plus_teacher``: the authors' matrix-form theorem check (``--perturb``): every
      weight and bias N(0, perturb_std^2), then the teacher's weights and biases added into the
      first teacher-sized block of every layer.
    """
    widths = active_widths(teacher)
    if widths != list(teacher.ks) and init != "default":
        raise ValueError(f"student.init={init!r} needs an unpruned teacher; this one has {widths} of {teacher.ks} "
                         f"nodes active")
    student = teacher.like(ks=[k * width_mult for k in widths], num_members=num_students, bn=bn, bn_affine=bn_affine)
    with torch.no_grad():
        for i in range(num_students):
            g = torch.Generator().manual_seed(int(seed) + i)
            layers = zip(student.weights, student.biases, teacher.weights, teacher.biases)
            for layer, (w, b, tw, tb) in enumerate(layers):
                if init == "gaussian_plus_teacher":
                    w[i].normal_(0.0, perturb_std, generator=g)
                    b[i].normal_(0.0, perturb_std, generator=g)
                else:
                    bound = 1.0 / math.sqrt(w[0, 0].numel())
                    w[i].uniform_(-bound, bound, generator=g).mul_(init_scale)
                    b[i].uniform_(-bound, bound, generator=g).mul_(init_scale)
                if init != "default":
                    hidden = layer < teacher.num_hidden
                    _copy_teacher_block_(w[i], b[i], tw[0], tb[0], init, perturb_std, g, hidden)
    return student


def _copy_teacher_block_(w: Tensor, b: Tensor, tw: Tensor, tb: Tensor, mode: str,
                         perturb_std: float | None, g: torch.Generator, hidden: bool) -> None:
    rows = tw.shape[0]
    block = (slice(rows), ..., slice(tw.shape[-1]))  # output rows x input columns (conv: all kernel positions)
    if mode == "perturb":
        if hidden:
            w[:rows] = 0.0
        w[block] = tw + perturb_std * torch.randn(tw.shape, generator=g)
        b[:rows] = tb + perturb_std * torch.randn(tb.shape, generator=g)
    elif mode == "gaussian_plus_teacher":
        w[block] += tw
        b[:rows] += tb
    elif mode == "same_dir":
        scale = w[block].norm() / tw.norm()
        w[block] = tw * scale
        b[:rows] = tb * scale
    elif mode == "same_sign":
        # flip where the signs disagree; a zero teacher weight leaves the student's as it is
        w[block] = torch.where(tw != 0, w[block].abs() * torch.sign(tw), w[block])
        b[:rows] = torch.where(tb != 0, b[:rows].abs() * torch.sign(tb), b[:rows])
    else:
        raise ValueError(f"student.init={mode!r}: allowed {INIT_MODES}")
