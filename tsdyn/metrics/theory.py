"""beta / H: the top-down recursion of the theory (docs/SCIENCE.md section 2), fully connected nets without BN.

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


def op_norm_ratios(h_star: Tensor, h: Tensor, students: Tensor) -> dict[str, Tensor]:
    """The authors' notebook measure of how block-diagonal H* and H are: students split into
    ``u``, the distinct best students of the teacher nodes (``students`` ``[E, K_t]``, -1 = none),
    and ``r``, the rest; with the operator norm ``op(A)`` (largest singular value) and bias slots
    left out (``h_star`` ``[E, K_s + 1, K_t + 1]``, ``h`` ``[E, K_s + 1, K_s + 1]``):

    - ``h_star_uu = op(H*[u, :]) / sqrt(n_u K_t)``, ``h_star_ur = op(H*[r, :]) / sqrt(n_r K_t)``;
    - ``h_uu = op(H[u, u]) / n_u``, ``h_ur = op(H[r, u]) / sqrt(n_u n_r)``, ``h_rr = op(H[r, r]) / n_r``;
    - ``h_star_ratio = h_star_ur / h_star_uu`` (small: the matched students carry H*) and
      ``h_ratio = h_uu h_rr / h_ur^2`` (large: little coupling between the two groups).

    Returns ``{name: [E]}``; NaN where ``u`` or ``r`` is empty. (The notebooks also divide by the
    values of layer 0 at initialisation; that is left to the reader of the logged values.)"""
    k_s, k_t = h.shape[-1] - 1, h_star.shape[-1] - 1
    out: dict[str, list[float]] = {k: [] for k in ("h_star_uu", "h_star_ur", "h_uu", "h_ur", "h_rr")}
    op = lambda a: torch.linalg.matrix_norm(a.double(), ord=2).item() if a.numel() else float("nan")  # noqa: E731
    for e in range(h.shape[0]):
        u = torch.unique(students[e][students[e] >= 0]).to(h.device)
        is_u = torch.zeros(k_s, dtype=torch.bool, device=h.device)
        is_u[u] = True
        r = torch.nonzero(~is_u).flatten()
        n_u, n_r = len(u), len(r)
        hs, hh = h_star[e, :k_s, :k_t], h[e, :k_s, :k_s]
        out["h_star_uu"].append(op(hs[u]) / (n_u * k_t) ** 0.5 if n_u else float("nan"))
        out["h_star_ur"].append(op(hs[r]) / (n_r * k_t) ** 0.5 if n_r else float("nan"))
        out["h_uu"].append(op(hh[u][:, u]) / n_u if n_u else float("nan"))
        out["h_ur"].append(op(hh[r][:, u]) / (n_u * n_r) ** 0.5 if n_u and n_r else float("nan"))
        out["h_rr"].append(op(hh[r][:, r]) / n_r if n_r else float("nan"))
    t = {k: torch.tensor(v, dtype=h.dtype) for k, v in out.items()}
    t["h_star_ratio"] = t["h_star_ur"] / t["h_star_uu"]
    t["h_ratio"] = t["h_uu"] * t["h_rr"] / t["h_ur"] ** 2
    return t
