"""Teacher initialisation: separable weights, strength decay, bias tuning, BatchNorm calibration."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from tsdyn.nets.networks import ConvReLUNet, EnsembleNet, ROW_NORMS, ReLUNet, normalize_rows, predict

DEFAULT_WEIGHT_CHOICES = (-0.5, -0.25, 0.0, 0.25, 0.5)


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
