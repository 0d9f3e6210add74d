import numpy as np
import pytest
import torch
from torch import nn

from tsdyn.metrics.bn import bn_biases, frac_nonpositive
from tsdyn.nets import EnsembleBatchNorm, ReLUNet


def test_frac_nonpositive_by_hand_counts_zero():
    bias = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [-0.1, -0.2, -0.3, 0.1]])
    assert frac_nonpositive(bias).tolist() == [0.5, 0.75]


def test_bn_biases_of_tsdyn_and_torch_nets():
    net = ReLUNet(5, [4, 3], 2, num_members=2, bn="after_relu")
    with torch.no_grad():
        net.bns[1].bias.copy_(torch.tensor([[-1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    biases = bn_biases(net)
    assert [b.shape for b in biases] == [(2, 4), (2, 3)]
    assert frac_nonpositive(biases[1]).tolist() == pytest.approx([2 / 3, 0.0])
    assert bn_biases(ReLUNet(5, [4], 2)) == [] and bn_biases(ReLUNet(5, [4], 2, bn="after_relu", bn_affine=False)) == []
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                        nn.BatchNorm2d(6, affine=False), nn.Flatten(), nn.LazyLinear(2), nn.BatchNorm1d(2))
    assert [b.shape for b in bn_biases(cnn)] == [(4,), (2,)]


def test_nonpositive_bias_means_sparse_node_whatever_the_weight_sign():
    """BN before ReLU: node active on < half of the inputs exactly when its bias is <= 0, also with a
    negative BN weight -- so the share of biases <= 0 is the share of sparse nodes."""
    bn = EnsembleBatchNorm(1, 6)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, -0.5, 1.0, -3.0]]))
        bn.bias.copy_(torch.tensor([[-0.3, -0.3, 0.4, 0.4, -1.0, 1.0]]))
    z = torch.randn(1, 20000, 6, generator=torch.Generator().manual_seed(0)) * 3 + 5
    active = (torch.relu(bn(z)) > 0).float().mean(1)[0]
    sparse = (active < 0.5).numpy()
    np.testing.assert_array_equal(sparse, (bn.bias[0] <= 0).detach().numpy())
    assert frac_nonpositive(bn.bias).item() == pytest.approx(sparse.mean())
