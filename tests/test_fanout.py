import math

import numpy as np
import pytest
import torch

from tsdyn.metrics.fanout import fanout_split, masked_median, matched_students, student_best_corr

NAN = float("nan")


def test_matched_students_shared_partner_below_threshold_and_dead_teacher():
    c = torch.tensor([[[0.95, 0.20, 0.10, 0.0],     # teacher 0 -> student 0 (matched)
                       [0.50, 0.40, 0.30, 0.0],     # teacher 1 -> student 0 again, below threshold
                       [NAN, NAN, NAN, NAN],        # dead teacher: matches nobody
                       [0.10, 0.20, 0.93, 0.0]]])   # teacher 3 -> student 2
    assert matched_students(c, 0.9).tolist() == [[True, False, True, False]]
    assert matched_students(c, 0.94).tolist() == [[True, False, False, False]]
    # the lower-correlating teacher sharing student 0 must not unset it (order independence)
    assert matched_students(c[:, [1, 0, 2, 3]], 0.9).tolist() == [[True, False, True, False]]
    best = student_best_corr(c)
    np.testing.assert_allclose(best.numpy(), [[0.95, 0.40, 0.93, 0.0]], rtol=1e-6)
    assert torch.isnan(student_best_corr(torch.full((1, 2, 3), NAN))).all()


def test_fanout_split_by_hand():
    norms = torch.tensor([[2.0, 0.001, 1.0, 0.5, 0.005, 4.0],
                          [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    matched = torch.tensor([[True, False, True, False, False, True],
                            [False] * 6])
    out = fanout_split(norms, matched)
    assert out["matched_median"][0].item() == pytest.approx(2.0)          # of 2, 1, 4
    assert out["unmatched_median"][0].item() == pytest.approx(0.005)      # of 0.001, 0.5, 0.005
    assert out["unmatched_below_1pct"][0].item() == pytest.approx(2 / 3)  # 0.001 and 0.005 < 0.02
    assert math.isnan(out["matched_median"][1].item()) and math.isnan(out["unmatched_below_1pct"][1].item())
    assert out["unmatched_median"][1].item() == pytest.approx(1.0)


def test_masked_median_matches_numpy_even_counts():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 9, generator=g)
    mask = torch.rand(4, 9, generator=g) > 0.4
    mask[0] = True
    got = masked_median(x, mask).numpy()
    for e in range(4):
        assert got[e] == pytest.approx(np.median(x[e].numpy()[mask[e].numpy()]), rel=1e-6)


def bn_net(placement="after_relu", affine=True):
    from tsdyn.nets import ReLUNet
    torch.manual_seed(0)
    net = ReLUNet(3, [6, 5], 2, num_members=2, bn=placement, bn_affine=affine)
    with torch.no_grad():
        for bn in net.bns:
            bn.running_var.uniform_(0.01, 9.0)
            bn.running_mean.normal_()
            if bn.weight is not None:
                bn.weight.normal_()
    return net.eval()


def next_layer_jacobian_norms(net, layer):
    """||d z_{l+1} / d h_k|| per node k, by autograd through torch's own batch_norm (eval mode):
    how strongly node k's output moves the next layer's pre-activations."""
    out = []
    for e in range(net.num_members):
        bn = net.bns[layer]

        def next_pre(h):
            if net.bn_placement == "after_relu":
                h = torch.nn.functional.batch_norm(h[None], bn.running_mean[e], bn.running_var[e],
                                                   None if bn.weight is None else bn.weight[e],
                                                   None if bn.bias is None else bn.bias[e], False, 0.0, bn.eps)[0]
            return net.weights[layer + 1][e] @ h + net.biases[layer + 1][e]

        jac = torch.autograd.functional.jacobian(next_pre, torch.rand(net.ks[layer]))   # [K_next, K_l]
        out.append(jac.norm(dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("placement,affine", [("after_relu", True), ("after_relu", False), ("before_relu", True)])
def test_effective_fanout_is_what_the_next_layer_sees(placement, affine):
    from tsdyn.metrics.fanout import fanout_norms
    net = bn_net(placement, affine)
    for layer in range(net.num_hidden):
        expected = next_layer_jacobian_norms(net, layer)
        torch.testing.assert_close(fanout_norms(net, layer), expected, rtol=1e-5, atol=1e-6)
        raw = net.weights[layer + 1].detach().norm(dim=1)
        torch.testing.assert_close(fanout_norms(net, layer, bn_effective=False), raw)
        if placement == "after_relu":  # the BN scale matters: raw and effective orderings differ
            assert not torch.equal(expected.argsort(-1), raw.argsort(-1))
