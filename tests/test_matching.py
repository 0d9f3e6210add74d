import math

import pytest
import numpy as np
import torch

from tsdyn.metrics.matching import as_samples, best_match, correlation, match_summary, recovery_rate


def test_correlation_matches_numpy_corrcoef():
    g = torch.Generator().manual_seed(0)
    t = torch.relu(torch.randn(500, 4, generator=g))
    s = torch.relu(torch.randn(3, 500, 6, generator=g) + t[:, :1])
    c = correlation(t, s)
    assert c.shape == (3, 4, 6)
    for e in range(3):
        full = np.corrcoef(t.numpy().T, s[e].numpy().T)
        np.testing.assert_allclose(c[e].numpy(), full[:4, 4:], atol=1e-5)


def test_dead_teacher_node_is_nan_and_counted_not_averaged():
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [5.0, 0.0]])  # node 1 never fires
    s = torch.tensor([[[2.0, 1.0], [4.0, 0.0], [6.0, 1.0], [10.0, 0.0]]])
    c = correlation(t, s)
    assert torch.isnan(c[0, 1]).all()
    best, idx = best_match(c)
    assert math.isclose(best[0, 0].item(), 1.0, abs_tol=1e-6) and idx[0, 0] == 0
    assert torch.isnan(best[0, 1]) and idx[0, 1] == -1
    summary = match_summary(best)
    assert math.isclose(summary["mean_best"].item(), 1.0, abs_tol=1e-6)  # not (1 + 0) / 2
    assert summary["dead_teacher"].item() == 1
    assert summary["frac_above_0.99"].item() == 1.0


def test_dead_student_node_gets_zero():
    t = torch.tensor([[1.0], [2.0], [0.5]])
    s = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [0.0, 0.5]]])
    c = correlation(t, s)
    assert c[0, 0, 0].item() == 0.0 and math.isclose(c[0, 0, 1].item(), 1.0, abs_tol=1e-6)


def test_best_match_ties_pick_first_and_summary_values():
    c = torch.tensor([[[0.5, 0.5, 0.1], [0.2, 0.96, 0.3], [0.991, 0.0, 0.0]]])
    best, idx = best_match(c)
    assert idx.tolist() == [[0, 1, 0]]
    s = match_summary(best, (0.9, 0.95, 0.99))
    assert math.isclose(s["mean_best"].item(), (0.5 + 0.96 + 0.991) / 3, rel_tol=1e-6)
    assert math.isclose(s["min_best"].item(), 0.5) and math.isclose(s["max_best"].item(), 0.991, rel_tol=1e-6)
    assert math.isclose(s["frac_above_0.9"].item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(s["frac_above_0.99"].item(), 1 / 3, rel_tol=1e-6)


def test_conv_maps_use_positions_as_samples():
    h = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2)  # [N, C, H, W]
    flat = as_samples(h)
    assert flat.shape == (8, 3)
    assert torch.equal(flat[:, 1], h[:, 1].reshape(-1))
    assert as_samples(torch.zeros(5, 7)).shape == (5, 7)


def test_hungarian_is_the_best_permutation_and_skips_dead_teachers():
    import itertools

    from tsdyn.metrics.matching import hungarian_match
    g = torch.Generator().manual_seed(4)
    c = torch.rand(2, 3, 5, generator=g)
    c[1, 1] = float("nan")  # a dead teacher node in student 1
    values, idx = hungarian_match(c)
    for e in range(2):
        rows = [j for j in range(3) if not torch.isnan(c[e, j]).all()]
        best = max(itertools.permutations(range(5), len(rows)),
                   key=lambda p: sum(c[e, j, k].item() for j, k in zip(rows, p)))
        assert [idx[e, j].item() for j in rows] == list(best)
        assert all(math.isclose(values[e, j].item(), c[e, j, k].item(), rel_tol=1e-6) for j, k in zip(rows, best))
    assert idx[1, 1] == -1 and torch.isnan(values[1, 1])
    # two teacher nodes that prefer the same student: one-to-one, unlike best_match
    c = torch.tensor([[[0.9, 0.8], [0.95, 0.1]]])
    assert hungarian_match(c)[1].tolist() == [[1, 0]] and best_match(c)[1].tolist() == [[0, 0]]


def test_match_count_by_hand():
    from tsdyn.metrics.matching import match_count
    c = torch.tensor([[[0.95, 0.92, 0.5], [0.99, 0.2, 0.1], [float("nan")] * 3]])
    counts = match_count(c, (0.9, 0.95))
    assert counts["matchcnt_0.9"].item() == 1.5     # (2 + 1) / 2 live teacher nodes
    assert counts["matchcnt_0.95"].item() == 0.5    # 0.95 itself is not above 0.95


def test_constant_student_node_gets_zero_and_ensemble_axis():
    g = torch.Generator().manual_seed(5)
    t = torch.relu(torch.randn(4096, 3, generator=g)) * 7
    s = torch.relu(torch.randn(2, 4096, 4, generator=g) + t[:, :1]) * 3
    s[0, :, 1] = 2.5   # constant: no correlation, exactly as a node that never fires
    s[1, :, 2] = t[:, 2] * 5 + 1
    c = correlation(t, s)
    assert (c[0, :, 1] == 0).all()
    assert math.isclose(c[1, 2, 2].item(), 1.0, abs_tol=1e-6)
    for e in range(2):
        with np.errstate(invalid="ignore", divide="ignore"):  # numpy: NaN for the constant column
            full = np.corrcoef(t.numpy().T, s[e].numpy().T)[:3, 3:]
        np.testing.assert_allclose(c[e].numpy(), np.nan_to_num(full), atol=1e-6)


def test_recovery_rate_by_hand():
    nan = float("nan")
    best = torch.tensor([[0.99, 0.50, nan, 0.96],
                         [0.97, 0.96, nan, 0.95],     # exactly 0.95 is not above
                         [0.10, 0.99, nan, nan]])
    got = recovery_rate(best, 0.95)
    assert got[0].item() == pytest.approx(2 / 3) and got[1].item() == pytest.approx(2 / 3)
    assert torch.isnan(got[2]) and got[3].item() == pytest.approx(1 / 2)
