
import pytest
import torch
from torch import nn

from tsdyn.nets import (EnsembleBatchNorm, ReLUNet, active_widths, make_student, make_teacher,
                        separable_rows)


def gaussian(n, d, g):
    return torch.randn(n, d, generator=g) * 10


def test_teacher_rows_distinct_nonzero_unit_norm_from_choices():
    t = make_teacher(20, [10, 15, 20, 25], 100, seed=3)
    for w, b in zip(t.weights, t.biases):
        w, b = w[0], b[0]
        # the authors' normalize_layer: the weight row (not the row with its bias) has unit norm
        norms = w.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
        assert (torch.cat([w, b[:, None]], 1).norm(dim=1) > 1.001).any()
        assert (w.abs().sum(1) > 0).all()
        assert len({tuple(r.tolist()) for r in w}) == w.shape[0]
        # entries come from {0, +-0.25, +-0.5}: relative to a row's smallest non-zero magnitude
        # they are 0, +-1 or +-2 (in some row both magnitudes occur)
        smallest = torch.where(w != 0, w.abs(), torch.inf).min(1).values
        rel = w / smallest[:, None]
        assert ((rel[..., None] - torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])).abs().min(-1).values < 1e-4).all()
        assert (rel.abs() > 1.5).any()


def test_teacher_normalize_by_weight_or_fan_in_from_the_same_draw():
    """Both rules divide the same drawn row and bias by one number: by the weight row's norm the
    bias is the drawn U(-0.5, 0.5) value over that norm (a drawn row's norm is a multiple of 0.25
    under a square root, at least 0.25); by the fan-in norm, (w, b) has unit norm."""
    by_w = make_teacher(8, [6, 5], 4, seed=1, normalize="weight")
    by_f = make_teacher(8, [6, 5], 4, seed=1, normalize="fan_in")
    for (ww, bw), (wf, bf) in zip(zip(by_w.weights, by_w.biases), zip(by_f.weights, by_f.biases)):
        ww, bw, wf, bf = ww[0].double(), bw[0].double(), wf[0].double(), bf[0].double()
        fan_in = torch.cat([wf, bf[:, None]], 1).norm(dim=1)
        torch.testing.assert_close(fan_in, torch.ones_like(fan_in), atol=1e-4, rtol=0)  # eps 1e-5
        # same direction of (w, b): by_w = by_f * ||(w, b)|| / ||w||, one factor per row
        factor = 1 / wf.norm(dim=1)
        torch.testing.assert_close(ww, wf * factor[:, None], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bw, bf * factor, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="teacher.normalize='l1'"):
        make_teacher(8, [6], 4, seed=1, normalize="l1")


def test_teacher_constant_bias():
    t = make_teacher(8, [6, 5], 4, seed=1, normalize="fan_in", bias=0.0)
    assert all((b == 0).all() for b in t.biases)
    t = make_teacher(8, [6], 4, seed=1, bias=-0.3)   # -0.3 / ||drawn row||: negative everywhere
    assert all((b < 0).all() for b in t.biases)


def test_teacher_seed_reproducible_and_distinct():
    a, b, c = (make_teacher(20, [10, 15], 30, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.weights[0], c.weights[0])


def test_weight_choices_respected_and_capacity_checked():
    g = torch.Generator().manual_seed(0)
    rows = separable_rows(6, 3, [-1.0, 1.0], g)
    assert set(rows.unique().tolist()) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="distinct non-zero rows"):
        separable_rows(9, 3, [-1.0, 1.0], g)  # only 8 sign patterns exist


def test_strength_decay_then_normalise_in_the_follow_ups_order():
    """Draw rows -> divide fan-out column i of every layer above the first (the output layer too)
    by (1+i)^p -> normalise each row. So every row keeps unit weight norm, and the decayed rows
    are the plain draw's rows times the decay, renormalised (the plain teacher's rows are the draw
    up to one positive factor per row)."""
    plain = make_teacher(8, [6, 5], 4, seed=1)
    decayed = make_teacher(8, [6, 5], 4, seed=1, strength_decay=2.0)
    assert torch.equal(plain.weights[0], decayed.weights[0])  # the first layer is untouched
    for layer in (1, 2):                                       # the hidden layer above and the output layer
        w_plain, w = plain.weights[layer][0], decayed.weights[layer][0]
        torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-3, rtol=0)  # eps 1e-5 on norms ~0.05
        expected = w_plain / (1 + torch.arange(float(w.shape[1]))) ** 2
        expected = expected / expected.norm(dim=1, keepdim=True)
        torch.testing.assert_close(w, expected, atol=1e-3, rtol=0)
        # the row's bias is scaled by the same factor as its weights
        factor = w.norm(dim=1) / (w_plain / (1 + torch.arange(float(w.shape[1]))) ** 2).norm(dim=1)
        torch.testing.assert_close(decayed.biases[layer][0], plain.biases[layer][0] * factor, atol=1e-5, rtol=1e-4)


def test_standardized_outputs_have_mean_0_std_1_on_the_data():
    sampler = lambda n, g: gaussian(n, 20, g)  # noqa: E731
    t = make_teacher(20, [10, 15], 6, seed=2, bias_tune=0.5, standardize_outputs=True, input_sampler=sampler,
                     n_calibration=20000)
    ref = make_teacher(20, [10, 15], 6, seed=2, bias_tune=0.5, input_sampler=sampler, n_calibration=20000)
    y = t(gaussian(20000, 20, torch.Generator().manual_seed(7)))[0][0].double()
    torch.testing.assert_close(y.mean(0), torch.zeros(6, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(6, dtype=torch.float64), atol=0.03, rtol=0)
    # only the output layer changed, and each output row only by a positive scale
    assert all(torch.equal(a, b) for a, b in zip(t.weights[:-1], ref.weights[:-1]))
    w, w_ref = t.weights[-1][0], ref.weights[-1][0]
    cos = (w * w_ref).sum(1) / (w.norm(dim=1) * w_ref.norm(dim=1))
    torch.testing.assert_close(cos, torch.ones(6), atol=1e-5, rtol=0)
    assert not torch.allclose(w.norm(dim=1), w_ref.norm(dim=1), rtol=0.05)


def test_bias_tune_sets_active_fraction():
    t = make_teacher(20, [10, 15], 10, seed=2, bias_tune=0.3, input_sampler=lambda n, g: gaussian(n, 20, g))
    x = gaussian(20000, 20, torch.Generator().manual_seed(99))
    _, hidden = t(x)
    low, high = ((h[0] > 0).float().mean(0) for h in hidden)
    assert torch.allclose(low, torch.full_like(low, 0.3), atol=0.015)
    # upper layers see ReLU inputs: a node's pre-activation has an atom where all of its inputs are
    # zero, so the exact fraction is not always reachable, but it is close
    assert torch.allclose(high, torch.full_like(high, 0.3), atol=0.06)
    untuned = make_teacher(20, [10, 15], 10, seed=2)
    assert not torch.allclose((untuned(x)[1][0][0] > 0).float().mean(0), low, atol=0.05)


def test_ensemble_forward_equals_members():
    net = ReLUNet(7, [5, 6], 3, num_members=4)
    x = torch.randn(11, 7)
    out, hidden = net(x)
    for i in range(4):
        o, h = net.member(i)(x)
        assert torch.allclose(out[i], o[0], atol=1e-6)
        assert all(torch.allclose(a[i], b[0], atol=1e-6) for a, b in zip(hidden, h))


def test_ensemble_batchnorm_matches_torch_per_member():
    bn = EnsembleBatchNorm(3, 5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(3, 5))
        bn.bias.copy_(torch.randn(3, 5))
    h = torch.randn(3, 32, 5) * 4 + 1
    out = bn(h)
    for i in range(3):
        ref = nn.BatchNorm1d(5)
        with torch.no_grad():
            ref.weight.copy_(bn.weight[i])
            ref.bias.copy_(bn.bias[i])
        assert torch.allclose(out[i], ref(h[i]), atol=1e-5)
        assert torch.allclose(bn.running_mean[i], ref.running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var[i], ref.running_var, atol=1e-5)
        bn.eval(), ref.eval()
        assert torch.allclose(bn(h)[i], ref(h[i]), atol=1e-5)
        bn.train()


def test_student_widths_seeds_and_default_init_bounds():
    t = make_teacher(20, [10, 15], 7, seed=1)
    s = make_student(t, width_mult=3, num_students=2, seed=4)
    assert s.ks == [30, 45] and s.d_out == 7
    single = make_student(t, width_mult=3, num_students=1, seed=5)
    assert all(torch.equal(a[1], b[0]) for a, b in zip(s.parameters(), single.parameters()))
    assert not torch.equal(s.weights[0][0], s.weights[0][1])
    # weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear): inside the bound, filling it
    # (the extremes near it), with the uniform's std bound / sqrt(3)
    for w, b in zip(s.weights, s.biases):
        bound = 1 / w.shape[-1] ** 0.5
        for p in (w, b):
            assert p.abs().max() <= bound
            assert p.abs().max() > 0.85 * bound
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1)
        assert abs(w.mean().item()) < 0.1 * bound


def test_gaussian_plus_teacher_init_is_the_authors_perturb():
    t = make_teacher(10, [20], 30, seed=1, normalize="fan_in", bias=0.0, output_relu=True)
    s = make_student(t, width_mult=5, num_students=2, seed=0, init="gaussian_plus_teacher", perturb_std=0.1)
    assert s.ks == [100] and s.output_relu
    noise = []
    for w, b, tw, tb in zip(s.weights, s.biases, t.weights, t.biases):
        rows, cols = tw.shape[1:]
        block = w[:, :rows, :cols] - tw                       # the teacher added into the first block
        noise += [block.flatten(), w[:, rows:].flatten(), w[:, :rows, cols:].flatten(),
                  (b[:, :rows] - tb).flatten(), b[:, rows:].flatten()]
    noise = torch.cat(noise).double()
    assert noise.std().item() == pytest.approx(0.1, rel=0.03) and abs(noise.mean().item()) < 0.005
    s0 = make_student(t, width_mult=2, seed=0, init="gaussian_plus_teacher", perturb_std=0.0)
    x = torch.randn(50, 10)
    torch.testing.assert_close(s0(x)[0], t(x)[0])             # std 0: the other nodes are silent


def test_student_of_a_pruned_teacher_is_sized_from_its_active_nodes():
    from tsdyn.metrics.pruning import prune_smallest_fanout_
    from tsdyn.pretrain_teacher import remove_nodes_
    t = make_teacher(20, [10, 15], 7, seed=1)
    assert active_widths(t) == [10, 15]
    remove_nodes_(t, prune_smallest_fanout_(t, 0.4))
    assert active_widths(t) == [6, 9]
    assert make_student(t, width_mult=3).ks == [18, 27]
    with pytest.raises(ValueError, match="needs an unpruned teacher"):
        make_student(t, init="perturb", perturb_std=0.0)


@pytest.mark.parametrize("mode", ["perturb", "same_dir", "same_sign"])
def test_student_teacher_block_init(mode):
    t = make_teacher(20, [10, 15], 7, seed=1)
    s = make_student(t, width_mult=2, seed=0, init=mode, perturb_std=0.0)
    for layer, (w, tw) in enumerate(zip(s.weights, t.weights)):
        rows, cols = tw.shape[1:]
        block, tblock = w[0, :rows, :cols], tw[0]
        if mode == "perturb":
            assert torch.equal(block, tblock)
            if layer < t.num_hidden:
                assert (w[0, :rows, cols:] == 0).all()
        elif mode == "same_dir":
            cos = (block * tblock).sum() / (block.norm() * tblock.norm())
            assert cos > 0.9999
        else:
            nz = tblock != 0
            assert torch.equal(torch.sign(block[nz]), torch.sign(tblock[nz]))


def test_perturbed_width1_student_computes_teacher():
    t = make_teacher(20, [10, 15, 20], 7, seed=1)
    s = make_student(t, width_mult=1, init="perturb", perturb_std=0.0)
    x = torch.randn(50, 20) * 10
    assert torch.allclose(s(x)[0], t(x)[0], atol=1e-5)
