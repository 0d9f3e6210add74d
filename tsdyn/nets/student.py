"""Student initialisation: the default init, or the first teacher-sized block taken from the
teacher (``perturb``, ``same_dir``, ``same_sign``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from tsdyn.choices import INIT_MODES
from tsdyn.nets.networks import EnsembleNet



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
