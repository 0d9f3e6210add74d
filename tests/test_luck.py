import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tsdyn.metrics.luck import convergence_epochs, nan_mean_median, spearman, top_pct

NAN = float("nan")


def test_top_pct_by_hand_0_based_with_ties_and_dead_teacher():
    # 2 teacher nodes x 5 students at the baseline; node 1 never fires (NaN row). The authors'
    # notebooks: the winner's 0-based position in the baseline's descending order, 100 * pos / K_s
    c_base = torch.tensor([[[0.1, 0.9, 0.5, 0.5, 0.2], [NAN] * 5]])
    assert top_pct(c_base, torch.tensor([[1, 0]]))[0, 0].item() == 0.0                    # already the best
    assert top_pct(c_base, torch.tensor([[2, 0]]))[0, 0].item() == pytest.approx(20.0)  # only 0.9 beats it
    assert top_pct(c_base, torch.tensor([[3, 0]]))[0, 0].item() == pytest.approx(20.0)  # a tie shares position 1
    assert top_pct(c_base, torch.tensor([[4, 0]]))[0, 0].item() == pytest.approx(60.0)
    assert top_pct(c_base, torch.tensor([[0, 0]]))[0, 0].item() == pytest.approx(80.0)  # the last
    assert math.isnan(top_pct(c_base, torch.tensor([[0, 0]]))[0, 1].item())
    live = torch.tensor([[[0.1, 0.9, 0.5, 0.5, 0.2], [0.3, 0.2, 0.1, 0.0, -0.1]]])
    assert math.isnan(top_pct(live, torch.tensor([[1, -1]]))[0, 1].item())  # dead at the end


def test_top_pct_matches_numpy_ranking_per_member():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(3, 6, 40, generator=g) * 2 - 1
    winners = torch.randint(40, (3, 6), generator=g)
    got = top_pct(c, winners).numpy()
    for e in range(3):
        for j in range(6):
            order = list(np.argsort(-c[e, j].numpy()))       # no ties in random floats
            assert got[e, j] == pytest.approx(100 * order.index(winners[e, j].item()) / 40)


def test_nan_mean_median_is_numpys():
    x = torch.tensor([[1.0, NAN, 4.0, 2.0], [3.0, 5.0, NAN, NAN], [NAN] * 4])
    mean, median = nan_mean_median(x)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(mean.numpy(), np.nanmean(x.numpy(), -1))
        np.testing.assert_allclose(median.numpy(), np.nanmedian(x.numpy(), -1))


def test_convergence_epochs_first_crossing_never_and_dead():
    # epochs 0, 1, 2, 5; teacher nodes: crosses at 1 (then dips), at 5, never, dead at the end
    history = torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.96, 0.6, 0.9, 0.97]],
                            [[0.94, 0.95, 0.9, 0.99]], [[0.99, 0.951, 0.94, NAN]]])
    got = convergence_epochs(history, [0, 1, 2, 5], threshold=0.95)
    assert got[0, :3].tolist() == [1.0, 5.0, float("inf")]
    assert math.isnan(got[0, 3].item())


def test_spearman_matches_scipy_with_never_ranked_last():
    init = torch.tensor([[0.9, 0.2, 0.5, 0.7, NAN, 0.1]])
    conv = torch.tensor([[1.0, float("inf"), 3.0, 2.0, 1.0, float("inf")]])
    expected = spearmanr([0.9, 0.2, 0.5, 0.7, 0.1], [1, 99, 3, 2, 99]).statistic
    assert spearman(init, conv)[0].item() == pytest.approx(expected, abs=1e-6)
    assert expected < -0.9  # closer start, earlier convergence
    assert math.isnan(spearman(init, torch.ones_like(conv))[0].item())  # constant: undefined
