
import pytest
import torch
from torch import nn

from tsdyn.nets import (EnsembleBatchNorm, ReLUNet, make_student, make_teacher,
                        separable_rows)


def gaussian(n, d, g):
    return torch.randn(n, d, generator=g) * 10


def test_teacher_rows_distinct_nonzero_unit_norm_from_choices():
    t = make_teacher(20, [10, 15, 20, 25], 100, seed=3)
    for w, b in zip(t.weights, t.biases):
        w, b = w[0], b[0]
        aug = torch.cat([w, b[:, None]], 1)
        norms = aug.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
        assert (w.abs().sum(1) > 0).all()
        assert len({tuple(r.tolist()) for r in w}) == w.shape[0]
        # entries come from {0, +-0.25, +-0.5}: relative to a row's smallest non-zero magnitude
        # they are 0, +-1 or +-2 (in some row both magnitudes occur)
        smallest = torch.where(w != 0, w.abs(), torch.inf).min(1).values
        rel = w / smallest[:, None]
        assert ((rel[..., None] - torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])).abs().min(-1).values < 1e-4).all()
        assert (rel.abs() > 1.5).any()


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


def test_strength_decay_scales_upper_layer_columns():
    plain = make_teacher(8, [6, 5], 4, seed=1)
    decayed = make_teacher(8, [6, 5], 4, seed=1, strength_decay=2.0)
    assert torch.equal(plain.weights[0], decayed.weights[0])  # the first layer is untouched
    ratio = decayed.weights[1][0] / plain.weights[1][0]
    expected = 1 / (1 + torch.arange(6.0)) ** 2
    mask = plain.weights[1][0] != 0
    assert torch.allclose(ratio[mask], expected.expand_as(ratio)[mask], rtol=1e-5)


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
    for w in s.weights:
        assert w.abs().max() <= 1 / w.shape[-1] ** 0.5


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
