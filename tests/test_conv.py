"""The conv family: E grouped members == E separate torch.nn nets, channels are nodes (fan-out,
matching, student init), BatchNorm per member and channel."""
import numpy as np
import pytest
import torch
from torch import nn

from tsdyn.metrics.matching import as_samples, best_match, correlation
from tsdyn.metrics.pruning import prune_
from tsdyn.nets import ConvReLUNet, EnsembleBatchNorm, make_conv_teacher, make_student, predict


def reference(net: ConvReLUNet, e: int, drop: tuple[int, int] | None = None) -> nn.ModuleList:
    """Member ``e`` of ``net`` as plain torch.nn layers (Conv2d [out, in, k, k], BatchNorm2d, a Linear
    head over the [C, H, W]-flattened map), optionally with channel ``drop = (layer, k)`` deleted."""
    convs, bns = [], []
    for layer in range(net.num_hidden):
        w = net.weights[layer][e].detach().permute(0, 3, 1, 2)  # [out, k, k, in] -> [out, in, k, k]
        b = net.biases[layer][e].detach()
        keep_out = [k for k in range(w.shape[0]) if drop != (layer, k)]
        keep_in = [c for c in range(w.shape[1]) if drop != (layer - 1, c)]
        conv = nn.Conv2d(len(keep_in), len(keep_out), net.kernel_size)
        conv.weight.data, conv.bias.data = w[keep_out][:, keep_in].clone(), b[keep_out].clone()
        convs.append(conv)
        if net.bns is not None:
            src = net.bns[layer]
            bn = nn.BatchNorm2d(len(keep_out))
            bn.weight.data, bn.bias.data = src.weight[e, keep_out].detach().clone(), src.bias[e, keep_out].detach().clone()
            bn.running_mean.data = src.running_mean[e, keep_out].clone()
            bn.running_var.data = src.running_var[e, keep_out].clone()
            bns.append(bn)
    head_w = net.weights[-1][e].detach()                            # [d_out, H, W, C]
    keep = [c for c in range(head_w.shape[-1]) if drop != (net.num_hidden - 1, c)]
    head = nn.Linear(len(keep) * head_w.shape[1] * head_w.shape[2], head_w.shape[0])
    head.weight.data = head_w[..., keep].permute(0, 3, 1, 2).reshape(head_w.shape[0], -1).clone()
    head.bias.data = net.biases[-1][e].detach().clone()
    return nn.ModuleList([nn.ModuleList(convs), nn.ModuleList(bns), head])


def reference_forward(ref: nn.ModuleList, x: torch.Tensor, placement: str):
    convs, bns, head = ref
    hidden, h = [], x
    for layer, conv in enumerate(convs):
        z = conv(h)
        if placement == "before_relu":
            z = bns[layer](z)
        h = torch.relu(z)
        hidden.append(h)
        if placement == "after_relu":
            h = bns[layer](h)
    return head(h.flatten(1)), hidden


@pytest.mark.parametrize("bn", ["none", "after_relu", "before_relu"])
def test_ensemble_equals_separate_torch_nets_forward_and_training(bn):
    torch.manual_seed(0)
    net = ConvReLUNet((2, 11, 10), [3, 5, 4], 6, num_members=3, bn=bn)
    refs = [reference(net, e) for e in range(3)]
    x, y = torch.randn(8, 2, 11, 10), torch.randn(8, 6)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ref_opts = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9) for r in refs]
    for step in range(3):  # train mode: batch statistics, running statistics updated
        out, hidden = net(x)
        assert out.shape == (3, 8, 6) and [h.shape for h in hidden] == [(3, 8, 3, 9, 8), (3, 8, 5, 7, 6), (3, 8, 4, 5, 4)]
        opt.zero_grad()
        (out - y).pow(2).mean(dim=(1, 2)).sum().backward()
        opt.step()
        for e, (ref, ref_opt) in enumerate(zip(refs, ref_opts)):
            ref_out, ref_hidden = reference_forward(ref, x, bn)
            torch.testing.assert_close(out[e], ref_out, rtol=1e-4, atol=1e-5)
            for a, b in zip(hidden, ref_hidden):
                torch.testing.assert_close(a[e], b, rtol=1e-4, atol=1e-5)
            ref_opt.zero_grad()
            (ref_out - y).pow(2).mean().backward()
            ref_opt.step()
    for e, ref in enumerate(refs):  # the trained weights and the running statistics agree
        torch.testing.assert_close(net.weights[1][e].permute(0, 3, 1, 2), ref[0][1].weight, rtol=1e-4, atol=1e-6)
        if bn != "none":
            torch.testing.assert_close(net.bns[2].running_var[e], ref[1][2].running_var, rtol=1e-4, atol=1e-6)
    net.eval(), refs[1].eval()
    torch.testing.assert_close(net(x)[0][1], reference_forward(refs[1], x, bn)[0], rtol=1e-4, atol=1e-5)


def test_member_inputs_and_member_copy():
    torch.manual_seed(1)
    net = ConvReLUNet((1, 8, 8), [3, 2], 4, num_members=2, bn="after_relu")
    x = torch.randn(2, 5, 1, 8, 8)  # a different batch per member
    out, hidden = net(x)
    for e in range(2):
        o, h = net.member(e)(x[e])
        torch.testing.assert_close(out[e], o[0])
        torch.testing.assert_close(hidden[1][e], h[1][0])
    assert net.member(1).arch() == {"d": [1, 8, 8], "ks": [3, 2], "d_out": 4, "bn": "after_relu",
                                    "bn_affine": True, "kernel_size": 3}


def test_batchnorm_on_grouped_maps_equals_batchnorm2d_per_member():
    bn = EnsembleBatchNorm(2, 3)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(2, 3))
        bn.bias.copy_(torch.randn(2, 3))
    h = torch.randn(5, 6, 4, 4) * 3 + 1  # [N, E*C, H, W]
    out = bn(h)
    for e in range(2):
        ref = nn.BatchNorm2d(3)
        ref.weight.data, ref.bias.data = bn.weight[e].detach().clone(), bn.bias[e].detach().clone()
        torch.testing.assert_close(out[:, 3 * e:3 * e + 3], ref(h[:, 3 * e:3 * e + 3]))
        torch.testing.assert_close(bn.running_mean[e], ref.running_mean)
        torch.testing.assert_close(bn.running_var[e], ref.running_var)


@pytest.mark.parametrize("bn", ["none", "before_relu"])
@pytest.mark.parametrize("layer", [0, 1])
def test_zeroing_a_channels_fan_out_deletes_the_channel(bn, layer):
    torch.manual_seed(2)
    net = ConvReLUNet((2, 9, 9), [4, 3], 5, num_members=2, bn=bn).eval()
    with torch.no_grad():
        for b in net.bns or []:
            b.bias.normal_(), b.running_mean.normal_(), b.running_var.uniform_(0.5, 2)
    fan = net.fan_out(layer)
    next_w = net.weights[layer + 1][1]
    assert fan.shape == (2, next_w[..., 0].numel(), next_w.shape[-1])
    np.testing.assert_array_equal(fan[1, :, 2].detach().numpy(), next_w[..., 2].reshape(-1).detach().numpy())
    prune_(net, layer, torch.tensor([[0], [2]]))  # member 1 loses channel 2 of this layer
    x = torch.randn(6, 2, 9, 9)
    ref = reference(net, 1, drop=(layer, 2)).eval()
    torch.testing.assert_close(net(x)[0][1], reference_forward(ref, x, bn)[0], rtol=1e-4, atol=1e-5)


def test_conv_teacher_rows_unit_norm_distinct_and_seeded():
    t = make_conv_teacher([1, 10, 10], [6, 5], 7, seed=3)
    for w, b in zip(t.weights, t.biases):
        rows = w[0].reshape(w.shape[1], -1)
        norms = rows.norm(dim=1)               # the weight row's norm (teacher.normalize=weight)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
        assert len({tuple(r.tolist()) for r in rows}) == rows.shape[0]
    again = make_conv_teacher([1, 10, 10], [6, 5], 7, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), again.parameters()))
    assert not any(p.requires_grad for p in t.parameters()) and not t.training


def test_conv_teacher_bn_statistics_come_from_the_data():
    images = lambda n, g: torch.rand(n, 1, 10, 10, generator=g) * 4 + 2  # noqa: E731
    t = make_conv_teacher([1, 10, 10], [3], 4, seed=0, bn="before_relu", input_sampler=images, n_calibration=500)
    x = images(500, torch.Generator().manual_seed(1))
    kernel = t.weights[0][0].permute(0, 3, 1, 2)
    z = torch.conv2d(x, kernel, t.biases[0][0])
    torch.testing.assert_close(t.bns[0].running_mean[0], z.mean(dim=(0, 2, 3)), rtol=0.02, atol=0.02)


def test_conv_student_blocks_compute_the_teachers_channels():
    t = make_conv_teacher([1, 12, 12], [3, 4], 5, seed=1)
    x = torch.randn(7, 1, 12, 12)
    same = make_student(t, width_mult=1, init="perturb", perturb_std=0.0)
    torch.testing.assert_close(same(x)[0], t(x)[0], rtol=1e-5, atol=1e-5)
    wide = make_student(t, width_mult=3, num_students=2, seed=4, init="perturb", perturb_std=0.0)
    assert wide.ks == [9, 12] and wide.weights[-1].shape == (2, 5, 8, 8, 12)
    _, th = t(x)
    _, sh = wide(x)
    for layer, k in enumerate(t.ks):
        torch.testing.assert_close(sh[layer][:, :, :k], th[layer].expand(2, -1, -1, -1, -1), rtol=1e-5, atol=1e-5)
        # matching on conv maps (positions are samples) finds every teacher channel at correlation 1
        best, idx = best_match(correlation(as_samples(th[layer][0]), as_samples(sh[layer])))
        torch.testing.assert_close(best, torch.ones_like(best), rtol=0, atol=1e-5)
        assert idx.tolist() == [list(range(k))] * 2


def test_default_student_init_is_torchs_conv_init_per_seed():
    t = make_conv_teacher([3, 9, 9], [4], 2, seed=0)
    s = make_student(t, width_mult=2, num_students=2, seed=5)
    single = make_student(t, width_mult=2, num_students=1, seed=6)
    assert all(torch.equal(a[1], b[0]) for a, b in zip(s.parameters(), single.parameters()))
    assert s.weights[0].abs().max() <= 1 / (3 * 9) ** 0.5        # U(-1/sqrt(fan_in), .): fan_in = C_in * 3 * 3
    assert s.weights[0].abs().max() > 0.9 / (3 * 9) ** 0.5


def test_predict_in_chunks_equals_one_pass():
    net = ConvReLUNet((1, 8, 8), [4, 4], 3, num_members=2)
    x = torch.randn(37, 1, 8, 8)
    with torch.no_grad():
        whole = net(x)[0]
    torch.testing.assert_close(predict(net, x, max_units=net.hidden_units * 2 * 5), whole)  # chunks of 5


def test_conv_teacher_on_gaussian_image_shaped_inputs(small_cfg):
    """The authors' --use_cnn on Gaussian data: a conv teacher reads N(0, std^2) inputs of shape
    (1, 16, 16); a short run learns its lowest layer's channels."""
    from tsdyn.config import validate
    from tsdyn.runfolder.reader import read_metrics
    from tsdyn.train import run
    cfg = small_cfg("teacher=conv", "teacher.ks=[4,5]", "teacher.bn=none", "student.width_mult=2",
                    "data.n_train=2048", "data.n_eval=256", "epochs=2", "steps_per_call=32", "optimizer.lr=0.02")
    validate(cfg)
    assert list(cfg.teacher.d) == [1, 16, 16]
    summary = run(cfg, cfg.run_dir)
    assert summary["status"] == "completed"
    rows = read_metrics(cfg.run_dir)
    match = [r["match/layer0/mean_best"] for r in rows if "match/layer0/mean_best" in r]
    evals = [r["loss/eval"] for r in rows if "loss/eval" in r]
    assert match[-1] > match[0] + 0.05 and evals[-1] < 0.8 * evals[0], (match, evals)
