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
