import numpy as np
import pytest
import torch

from tsdyn.metrics.theory import backprop_terms, batch_means, diag_ratio, op_norm_ratios, with_one
from tsdyn.nets import ReLUNet, make_student, make_teacher


def nets(members=2, **student_kw):
    teacher = make_teacher(6, [5, 4, 3], 7, seed=1).double()
    student = make_student(teacher, width_mult=2, num_students=members, seed=0, **student_kw).double()
    return teacher, student


def forward_with_preactivations(net, x):
    """An independent forward pass that keeps each hidden layer's pre-activation ``[E, N, K]``."""
    h, zs = x.expand(net.num_members, *x.shape), []
    for layer, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = torch.einsum("enk,eok->eno", h, w) + b[:, None]
        if layer == net.num_hidden:
            return z, zs
        z.retain_grad()
        zs.append(z)
        h = torch.relu(z)


def test_gradient_identity_equals_autograd():
    """g_k = D_k [sum_j beta*_kj f*_j - sum_k' beta_kk' f_k'] is minus the gradient of the per-sample
    loss 0.5 ||y - y*||^2 at the student's pre-activations, on a 3-hidden-layer net."""
    teacher, student = nets()
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    y_star, f_star = teacher(x)
    y, zs = forward_with_preactivations(student, x)
    assert torch.allclose(y, student(x)[0])
    (0.5 * (y - y_star).pow(2).sum()).backward()   # a sum of per-sample losses: per-sample gradients
    _, f = student(x)
    seen = []
    for layer, terms in backprop_terms(student, teacher, x):
        k = student.ks[layer]
        drive = terms["beta_star"][..., :k, :] @ with_one(f_star[layer])[..., None]
        self_ = terms["beta"][..., :k, :] @ with_one(f[layer])[..., None]
        g = (f[layer] > 0) * (drive - self_).squeeze(-1)
        torch.testing.assert_close(g, -zs[layer].grad, rtol=1e-9, atol=1e-10)
        assert (g != 0).float().mean() > 0.2  # the identity is not trivially 0 = 0
        seen.append(layer)
    assert seen == [2, 1, 0]


def test_h_is_gated_beta_and_batch_means():
    teacher, student = nets(members=1)
    x = torch.randn(10, 6, dtype=torch.float64) * 3
    _, ft = teacher(x)
    _, fs = student(x)
    terms = dict(backprop_terms(student, teacher, x))
    means = batch_means(student, teacher, x)
    chunked = batch_means(student, teacher, x, chunk=3)
    for layer in range(3):
        ds, dt = with_one((fs[layer] > 0).double()), with_one((ft[layer] > 0).double())
        t = terms[layer]
        torch.testing.assert_close(t["h_star"], t["beta_star"] * ds[..., :, None] * dt[..., None, :])
        torch.testing.assert_close(t["h"], t["beta"] * ds[..., :, None] * ds[..., None, :])
        assert t["h_star"][0, :, -1, -1].eq(t["beta_star"][0, :, -1, -1]).all()  # bias slot ungated
        for key in ("beta_star", "beta", "h_star", "h"):
            torch.testing.assert_close(means[key][layer], t[key].expand(1, 10, -1, -1).mean(1))
            # formed 3 samples at a time (chunks 3 + 3 + 3 + 1): the same means
            torch.testing.assert_close(chunked[key][layer], means[key][layer])
    assert means["beta_star"][0].shape == (1, 11, 6) and means["h"][2].shape == (1, 7, 7)


def test_beta_star_and_h_star_by_explicit_per_sample_recursion():
    """beta*/H* of one sample of a 2-hidden-layer net, by numpy with explicit gate matrices:
    H_2 = I; beta_1 = W~_2^T W~*_2; H_1 = D_1 beta_1 D*_1; beta_0 = W~_1^T H_1 W~*_1 (augmented weights,
    the bias slot never gated)."""
    teacher = make_teacher(4, [3, 2], 5, seed=1).double()
    student = make_student(teacher, width_mult=2, seed=0).double()
    x = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    terms = dict(backprop_terms(student, teacher, x))

    def aug(net, layer):
        w, b = net.weights[layer][0].detach().numpy(), net.biases[layer][0].detach().numpy()
        return np.block([[w, b[:, None]], [np.zeros((1, w.shape[1])), np.ones((1, 1))]])

    def gates(net):
        h, out = x.numpy()[0], []
        for layer in range(net.num_hidden):
            z = net.weights[layer][0].detach().numpy() @ h + net.biases[layer][0].detach().numpy()
            out.append(np.diag(np.append((z > 0).astype(float), 1.0)))
            h = np.maximum(z, 0)
        return out

    ds, dt = gates(student), gates(teacher)
    h_star = np.eye(6)
    for layer in (1, 0):
        beta_star = aug(student, layer + 1).T @ h_star @ aug(teacher, layer + 1)
        h_star = ds[layer] @ beta_star @ dt[layer]
        np.testing.assert_allclose(terms[layer]["beta_star"][0, 0].numpy(), beta_star, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(terms[layer]["h_star"][0, 0].numpy(), h_star, rtol=1e-10, atol=1e-12)
        assert np.abs(beta_star).sum() > 0 and (h_star != beta_star).any()


def test_op_norm_ratios_by_numpy():
    g = torch.Generator().manual_seed(0)
    h_star = torch.randn(1, 7, 4, generator=g, dtype=torch.float64)    # K_s = 6, K_t = 3 (+ bias slots)
    h = torch.randn(1, 7, 7, generator=g, dtype=torch.float64)
    students = torch.tensor([[4, 1, 4]])                                # u = {1, 4} (shared best), r = {0, 2, 3, 5}
    got = op_norm_ratios(h_star, h, students)
    hs, hh = h_star[0, :6, :3].numpy(), h[0, :6, :6].numpy()
    u, r = [1, 4], [0, 2, 3, 5]
    op = lambda a: np.linalg.svd(a, compute_uv=False)[0]  # noqa: E731
    expected = {"h_star_uu": op(hs[u]) / np.sqrt(2 * 3), "h_star_ur": op(hs[r]) / np.sqrt(4 * 3),
                "h_uu": op(hh[np.ix_(u, u)]) / 2, "h_ur": op(hh[np.ix_(r, u)]) / np.sqrt(8),
                "h_rr": op(hh[np.ix_(r, r)]) / 4}
    expected["h_star_ratio"] = expected["h_star_ur"] / expected["h_star_uu"]
    expected["h_ratio"] = expected["h_uu"] * expected["h_rr"] / expected["h_ur"] ** 2
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-9), key
    assert torch.isnan(op_norm_ratios(h_star, h, torch.tensor([[-1, -1, -1]]))["h_star_ratio"]).all()


def test_diag_ratio_by_hand():
    # 3 teacher nodes (+ bias column), 4 students (+ bias row); teacher j matched to student [2, 0, -1]
    m = torch.tensor([[[4.0, 1.0, 9.0, 9.0],
                       [9.0, 9.0, 9.0, 9.0],
                       [2.0, -1.0, 9.0, 9.0],
                       [9.0, 9.0, 9.0, 9.0],
                       [9.0, 9.0, 9.0, 9.0]]])
    # reordered over matched teachers {0, 1}: [[m[2,0], m[2,1]], [m[0,0], m[0,1]]] = [[2, -1], [4, 1]]
    ratio = diag_ratio(m, torch.tensor([[2, 0, -1]]))
    assert ratio.item() == pytest.approx(((2 + 1) / 2) / ((1 + 4) / 2))
    assert torch.isnan(diag_ratio(m, torch.tensor([[2, -1, -1]]))).all()


def test_refuses_batchnorm_and_non_fc_nets():
    teacher = make_teacher(6, [5, 4], 7, seed=1)
    bn_student = ReLUNet(6, [10, 8], 7, bn="after_relu")
    with pytest.raises(ValueError, match="the student has bn='after_relu'"):
        next(backprop_terms(bn_student, teacher, torch.randn(4, 6)))
    with pytest.raises(ValueError, match="fully connected nets; the teacher is a Linear"):
        next(backprop_terms(ReLUNet(6, [10, 8], 7), torch.nn.Linear(6, 7), torch.randn(4, 6)))
