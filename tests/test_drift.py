import math

import numpy as np
import pytest
import torch

from tsdyn.metrics.drift import drift


def test_drift_by_hand():
    w0 = torch.tensor([[[1.0, 0.0, 2.0], [1.0, 0.0, -2.0]]])   # [E=1, R=2, K=3]
    w = torch.tensor([[[2.0, 3.0, 2.0], [0.0, 4.0, -2.0]]])
    abs_, rel = drift(w, w0)
    np.testing.assert_allclose(abs_.numpy(), [[1.0, math.sqrt((9 + 16) / 2), 0.0]], rtol=1e-6)
    assert rel[0, 0].item() == pytest.approx(1.0) and rel[0, 2].item() == 0.0
    assert math.isnan(rel[0, 1].item())  # the initial fan-out was zero


def test_drift_matches_numpy_per_member():
    g = torch.Generator().manual_seed(1)
    w0, w = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    abs_, rel = drift(w, w0)
    a, b = w.numpy(), w0.numpy()
    expected = np.sqrt(((a - b) ** 2).mean(1))
    np.testing.assert_allclose(abs_.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(rel.numpy(), expected / np.sqrt((b ** 2).mean(1)), rtol=1e-5)
