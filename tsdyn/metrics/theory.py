"""beta / H: the top-down recursion of the theory (PAPER.md section 2), fully connected nets without BN.

Augmented weights ``W~ = [[W, b], [0, 1]]`` and augmented activations ``f~ = [f, 1]``. From the
output (``H_L = I``) down: ``beta_l = W~_{l+1}^T H_{l+1} W~'_{l+1}`` and ``H_l = D_l beta_l D'_l``
with the student's gates ``D_l`` on the rows and the teacher's (for beta*, H*) or the student's
(for beta, H) on the columns; the bias row and column are never gated. Then the negative gradient
of the per-sample loss ``0.5 * ||y - y*||^2`` at student node k's pre-activation is
``g_k = D_k [sum_j beta*_kj f~*_j - sum_k' beta_kk' f~_k']``.

Shapes: ``beta*``, ``H*`` are ``[E, (N,) K_s + 1, K_t + 1]``; ``beta``, ``H`` are
``[E, (N,) K_s + 1, K_s + 1]`` (N = the sample axis, present per sample, absent in batch means).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from tsdyn.nets import ReLUNet

THEORY_KEYS = ("beta_star", "beta", "h_star", "h")


def require_fc_without_bn(net, role: str) -> None:
    """Raise a one-line ValueError unless ``net`` is a fully connected ReLUNet without BatchNorm."""
    if not isinstance(net, ReLUNet):
        raise ValueError(f"beta/H theory needs fully connected nets; the {role} is a {type(net).__name__}")
    if net.bns is not None:
        raise ValueError(f"beta/H theory needs nets without BatchNorm; the {role} has bn={net.bn_placement!r}")


def augmented_weight(w: Tensor, b: Tensor) -> Tensor:
    """``[[W, b], [0, 1]]``: ``w`` ``[E, out, in]``, ``b`` ``[E, out]`` -> ``[E, out + 1, in + 1]``."""
    top = torch.cat([w, b[..., None]], -1)
    bottom = torch.zeros_like(top[:, :1])
    bottom[..., -1] = 1.0
    return torch.cat([top, bottom], 1)


def with_one(f: Tensor) -> Tensor:
    """Append the constant 1 (the bias slot) to the node axis: ``[..., K]`` -> ``[..., K + 1]``."""
    return torch.cat([f, torch.ones_like(f[..., :1])], -1)


@torch.no_grad()
def backprop_terms(student: ReLUNet, teacher: ReLUNet, x: Tensor) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Per hidden layer, from the top down: ``(layer, {"beta_star", "beta", "h_star", "h"})``, each
    per sample (``[E, N, ...]``, see the module docstring), for the inputs ``x`` ``[N, d]``.
    Vectorised over samples; only one layer's terms are held at a time."""
    require_fc_without_bn(student, "student")
    require_fc_without_bn(teacher, "teacher")
    x = x.to(student.weights[0].dtype)
    _, fs = student(x)
    _, ft = teacher(x)
    eye = torch.eye(student.d_out + 1, dtype=x.dtype, device=x.device)[None, None]   # H_L = I
    h_star = h = eye
    for layer in reversed(range(student.num_hidden)):
        ws = augmented_weight(student.weights[layer + 1], student.biases[layer + 1])[:, None]
        wt = augmented_weight(teacher.weights[layer + 1], teacher.biases[layer + 1])[:, None]
        beta_star = ws.transpose(-1, -2) @ h_star @ wt
        beta = ws.transpose(-1, -2) @ h @ ws
        ds, dt = with_one((fs[layer] > 0).to(x.dtype)), with_one((ft[layer] > 0).to(x.dtype))
        h_star = beta_star * ds[..., :, None] * dt[..., None, :]
        h = beta * ds[..., :, None] * ds[..., None, :]
        yield layer, {"beta_star": beta_star, "beta": beta, "h_star": h_star, "h": h}


def batch_means(student: ReLUNet, teacher: ReLUNet, x: Tensor, chunk: int = 32) -> dict[str, list[Tensor]]:
    """Batch means of beta*, beta, H*, H on ``x`` ``[N, d]``: ``{key: [per hidden layer, lowest first]}``.

    The per-sample terms (``[E, n, K + 1, K + 1]`` per layer) are formed ``chunk`` samples at a time
    and summed, so memory stays bounded at wide students (the means are exact either way)."""
    sums: dict[str, list] = {k: [0.0] * student.num_hidden for k in THEORY_KEYS}
    for start in range(0, x.shape[0], chunk):
        xc = x[start:start + chunk]
        for layer, terms in backprop_terms(student, teacher, xc):
            for key, value in terms.items():
                sums[key][layer] = sums[key][layer] + value.expand(-1, xc.shape[0], -1, -1).sum(1)
    return {key: [v / x.shape[0] for v in per_layer] for key, per_layer in sums.items()}


def diag_ratio(m: Tensor, students: Tensor) -> Tensor:
    """Diagonal dominance of ``m`` ``[E, K_s + 1, K_t + 1]`` (beta* or H*) after reordering its rows
    by ``students`` ``[E, K_t]`` (teacher j's matched student, -1 = none): with
    ``M[j, j'] = m[students[j], j']`` over the matched teacher nodes (bias slots left out),
    ``mean_j |M_jj| / mean_{j != j'} |M_jj'|``. ``[E]``; NaN with fewer than two matched nodes."""
    k_t = students.shape[-1]
    rows = m.gather(1, students.clamp(min=0)[..., None].expand(-1, -1, m.shape[-1]))[..., :k_t].abs()
    ok = students >= 0
    pair = ok[:, :, None] & ok[:, None, :]
    eye = torch.eye(k_t, dtype=torch.bool, device=m.device)
    diag = (rows * (pair & eye)).sum((1, 2)) / (pair & eye).sum((1, 2))
    off = (rows * (pair & ~eye)).sum((1, 2)) / (pair & ~eye).sum((1, 2))
    return (diag / off).masked_fill(ok.sum(-1) < 2, float("nan"))
