import numpy as np
import pytest
import torch

from tsdyn.metrics.pruning import (fanout_norms, num_removed, prune_, prune_random_,
                                   prune_smallest_fanout_, random_nodes, smallest_fanout_nodes)
from tsdyn.nets import ReLUNet


def small_net(members=2):
    torch.manual_seed(0)
    return ReLUNet(3, [4, 5], 2, num_members=members)


def test_fanout_norms_are_column_norms_of_next_weight():
    net = small_net()
    w1 = net.weights[1].detach().numpy()                     # [E, 5, 4]: fan-out of layer 0
    np.testing.assert_allclose(fanout_norms(net, 0).numpy(), np.linalg.norm(w1, axis=1), rtol=1e-6)
    np.testing.assert_allclose(fanout_norms(net, 0, ord=1).numpy(), np.abs(w1).sum(1), rtol=1e-6)
    assert fanout_norms(net, 1).shape == (2, 5)


def test_smallest_nodes_by_hand_with_ties():
    norms = torch.tensor([[3.0, 1.0, 1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 4.0, 1.0]])
    assert num_removed(5, 0.5) == 2 and num_removed(4, 0.5) == 2 and num_removed(5, 1.0) == 5
    assert smallest_fanout_nodes(norms, 0.5).tolist() == [[3, 1], [0, 1]]  # ties: lower index first
    assert smallest_fanout_nodes(norms, 0.0).shape == (2, 0)
    with pytest.raises(ValueError, match="share=1.5"):
        num_removed(5, 1.5)


def test_prune_equals_deleting_the_nodes():
    net = small_net(members=1)
    x = torch.randn(7, 3)
    w = [p.detach().numpy()[0].copy() for p in net.weights]
    b = [p.detach().numpy()[0].copy() for p in net.biases]
    removed = prune_smallest_fanout_(net, 0.5)
    keep = [np.setdiff1d(np.arange(k), r[0].numpy()) for k, r in zip([4, 5], removed)]
    # the reference net: the removed nodes' rows and columns deleted
    h = x.numpy()
    h = np.maximum(h @ w[0][keep[0]].T + b[0][keep[0]], 0)
    h = np.maximum(h @ w[1][keep[1]][:, keep[0]].T + b[1][keep[1]], 0)
    ref = h @ w[2][:, keep[1]].T + b[2]
    np.testing.assert_allclose(net(x)[0][0].detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    # the removed nodes are those with the smallest L1 fan-out (the paper's mean |fan-out|)
    l1 = np.abs(w[1]).sum(0)
    assert sorted(removed[0][0].tolist()) == sorted(np.argsort(l1)[:2].tolist())


def test_prune_is_per_member():
    net = small_net()
    before = net.weights[1].detach().clone()
    prune_(net, 0, torch.tensor([[0], [3]]))
    after = net.weights[1].detach()
    assert (after[0, :, 0] == 0).all() and torch.equal(after[0, :, 1:], before[0, :, 1:])
    assert (after[1, :, 3] == 0).all() and torch.equal(after[1, :, :3], before[1, :, :3])


def test_random_control_seeded_distinct_and_uniform():
    a = random_nodes(3, 10, 0.4, torch.Generator().manual_seed(5))
    b = random_nodes(3, 10, 0.4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (3, 4)
    assert all(len(set(row.tolist())) == 4 for row in a)
    counts = torch.bincount(random_nodes(2000, 10, 0.3, torch.Generator().manual_seed(1)).flatten(), minlength=10)
    assert (counts - 600).abs().max() < 90  # each node is picked with probability 0.3
    net = small_net()
    removed = prune_random_(net, 0.5, torch.Generator().manual_seed(2))
    for layer, idx in enumerate(removed):
        assert (net.fan_out(layer).gather(2, idx[:, None, :].expand(-1, net.fan_out(layer).shape[1], -1)) == 0).all()


def test_pruning_under_bn_ranks_by_the_effective_fanout():
    from tsdyn.metrics.fanout import fanout_norms
    torch.manual_seed(1)
    net = ReLUNet(3, [8, 6], 2, num_members=2, bn="after_relu")
    with torch.no_grad():
        for bn in net.bns:
            bn.running_var.uniform_(0.001, 100.0)
    effective = [fanout_norms(net, layer, ord=1) for layer in range(2)]
    raw = [fanout_norms(net, layer, ord=1, bn_effective=False) for layer in range(2)]
    removed = prune_smallest_fanout_(copy_net(net), 0.5)
    removed_raw = prune_smallest_fanout_(copy_net(net), 0.5, bn_effective=False)
    for layer in range(2):
        n = removed[layer].shape[1]
        for e in range(2):
            assert set(removed[layer][e].tolist()) == set(effective[layer][e].argsort()[:n].tolist())
            assert set(removed_raw[layer][e].tolist()) == set(raw[layer][e].argsort()[:n].tolist())
    assert any(set(a[e].tolist()) != set(b[e].tolist()) for a, b in zip(removed, removed_raw) for e in range(2))


def copy_net(net):
    import copy
    return copy.deepcopy(net)


def test_smallest_fanout_pruning_hurts_less_than_random_on_a_trained_student():
    """The paper's pruning claim on a real (briefly trained) over-parameterised student: removing
    the half of the hidden nodes with the smallest fan-out raises the teacher-regression loss far
    less than removing a random half (averaged over 10 random draws)."""
    from tsdyn.metrics.pruning import prune_random_
    from tsdyn.nets import make_student, make_teacher
    teacher = make_teacher(10, [8], 10, seed=0)
    student = make_student(teacher, width_mult=6, seed=0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    for _ in range(500):
        x = torch.randn(64, 10, generator=g) * 3
        loss = (student(x)[0] - teacher(x)[0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(4096, 10, generator=g) * 3
    y = teacher(x)[0]

    def loss_of(net):
        with torch.no_grad():
            return (net(x)[0] - y).pow(2).mean().item()

    by_fanout = copy_net(student)
    prune_smallest_fanout_(by_fanout, 0.5)
    random_losses = []
    for seed in range(10):
        net = copy_net(student)
        prune_random_(net, 0.5, torch.Generator().manual_seed(seed))
        random_losses.append(loss_of(net))
    assert loss_of(by_fanout) < 0.5 * np.mean(random_losses)
    assert loss_of(student) < loss_of(by_fanout)
