"""Activation sparsity and teacher-node overlap against numpy."""
import numpy as np
import pytest
import torch

from tsdyn.metrics.sparsity import active_share, coactive_share


def test_active_and_coactive_shares_match_numpy():
    h = torch.relu(torch.randn(3, 500, 6, generator=torch.Generator().manual_seed(0)) + 0.3)
    a = h.numpy() > 0
    np.testing.assert_allclose(active_share(h).numpy(), a.mean(1), rtol=1e-6)
    for e in range(3):
        pairs = [np.mean(a[e, :, j] & a[e, :, k]) for j in range(6) for k in range(6) if j != k]
        assert coactive_share(h)[e].item() == pytest.approx(np.mean(pairs), rel=1e-5)


def test_coactivation_of_disjoint_and_identical_nodes():
    x = torch.linspace(-1, 1, 1000)[:, None]
    disjoint = torch.relu(torch.cat([x, -x], 1))               # never active together
    assert coactive_share(disjoint).item() == 0.0
    same = torch.relu(torch.cat([x, x, x], 1))                 # always together, active half the time
    assert coactive_share(same).item() == pytest.approx(0.5, abs=1e-3)
    assert torch.isnan(coactive_share(torch.relu(x)))         # one node: no pair
