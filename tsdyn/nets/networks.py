"""The networks: fully connected and conv ReLU nets with an ensemble axis (``E`` batched
copies), their BatchNorm, the fan-in projection of projected SGD, and chunked prediction."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsdyn.choices import BN_PLACEMENTS, ROW_NORMS


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


@torch.no_grad()
def predict(net: EnsembleNet, x: Tensor, max_units: int = 2**25) -> Tensor:
    """``net``'s outputs ``[E, N, d_out]`` on inputs ``x`` ``[N, ...]``, without autograd, in chunks
    whose hidden activations hold about ``max_units`` numbers at most (conv maps are large), in
    the net's current mode (train / eval)."""
    chunk = max(1, max_units // (net.hidden_units * net.num_members))
    return torch.cat([net(x[i:i + chunk])[0] for i in range(0, len(x), chunk)], dim=1)


def per_student_loss(out: Tensor, target: Tensor, kind: str) -> Tensor:
    """``out``: ``[E, N, D]`` student outputs, ``target``: ``[N, D]`` teacher outputs -> ``[E]``.

    ``mse``: mean squared error over samples and outputs (``nn.MSELoss``); ``cross_entropy``:
    cross-entropy of the student's logits to the teacher's argmax."""
    if kind == "mse":
        return (out - target).pow(2).mean(dim=(1, 2))
    labels = target.argmax(-1).expand(out.shape[0], -1)
    return F.cross_entropy(out.transpose(1, 2), labels, reduction="none").mean(-1)
