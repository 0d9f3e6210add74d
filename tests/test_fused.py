"""The fused training step (tsdyn.fused) against autograd and torch.optim.SGD."""
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from pytorch_lightning.callbacks import Callback

from tsdyn.build import build
from tsdyn.config import ConfigError, validate
from tsdyn.fused import COMPILE_MIN_STEPS, FusedSGD, backward, choose_path, forward, loss_and_grad
from tsdyn.nets import per_student_loss
from tsdyn.nets import ReLUNet, renormalize_
from tsdyn.runfolder.reader import read_metrics
from tsdyn.train import run


def net_and_data(members, output_relu=False, steps=4, seed=0):
    torch.manual_seed(seed)
    net = ReLUNet(5, [7, 6], 4, num_members=members, output_relu=output_relu)
    x = torch.randn(steps * 8, 5) * 3
    y = torch.randn(steps * 8, 4)
    return net, x, y


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("members,output_relu", [(1, False), (3, True)])
def test_hand_derived_gradients_equal_autograd(loss, members, output_relu):
    net, x, y = net_and_data(members, output_relu)
    out, hidden = forward([w.detach() for w in net.weights], [b.detach() for b in net.biases], x, output_relu)
    ref_out, ref_hidden = net(x)
    torch.testing.assert_close(out, ref_out.detach())
    for h, r in zip(hidden, ref_hidden):
        torch.testing.assert_close(h, r.detach())
    losses, dz = loss_and_grad(out, y, loss)
    ref_losses = per_student_loss(ref_out, y, loss)
    torch.testing.assert_close(losses, ref_losses.detach())
    if output_relu:
        assert (out == 0).any()  # the mask below matters
        dz = torch.where(out > 0, dz, 0.0)
    dws, dbs = backward([w.detach() for w in net.weights], x, hidden, dz)
    ref_losses.sum().backward()
    for g, p in zip([*dws, *dbs], [*net.weights, *net.biases]):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_loss_gradients_against_numpy():
    out, y = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mse, d_mse = loss_and_grad(out, y, "mse")
    o, t = out.numpy(), y.numpy()
    np.testing.assert_allclose(mse.numpy(), ((o - t) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(d_mse.numpy(), 2 * (o - t) / 12)
    ce, d_ce = loss_and_grad(out, y, "cross_entropy")
    p = np.exp(o) / np.exp(o).sum(-1, keepdims=True)
    label = t.argmax(-1)
    np.testing.assert_allclose(ce.numpy(), -np.log(p[:, np.arange(3), label]).mean(-1))
    onehot = np.eye(4)[label]
    np.testing.assert_allclose(d_ce.numpy(), (p - onehot) / 3)
    with pytest.raises(ValueError, match="loss='l1'"):
        loss_and_grad(out, y, "l1")


def autograd_steps(net, opt, x, y, loss, renormalize, batch) -> torch.Tensor:
    """The autograd path's steps; returns each step's per-member losses ``[steps, E]``."""
    per_step = []
    for i in range(0, len(x), batch):
        losses = per_student_loss(net(x[i:i + batch])[0], y[i:i + batch], loss)
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
        if renormalize:
            renormalize_(net, renormalize)
        per_step.append(losses.detach())
    return torch.stack(per_step)


@pytest.mark.parametrize("members,loss,momentum,weight_decay,renormalize,output_relu", [
    (1, "mse", 0.0, 0.0, None, False),
    (3, "mse", 0.9, 5e-4, None, False),
    (1, "cross_entropy", 0.9, 0.0, "weight", False),
    (3, "cross_entropy", 0.0, 1e-3, "fan_in", True),
])
def test_300_fused_steps_give_autograd_sgd_weights(members, loss, momentum, weight_decay, renormalize, output_relu):
    steps, batch = 300, 8
    ref, x, y = net_and_data(members, output_relu, steps)
    fused = ReLUNet(5, [7, 6], 4, num_members=members, output_relu=output_relu)
    fused.load_state_dict(ref.state_dict())
    opts = [torch.optim.SGD(n.parameters(), lr=0.02, momentum=momentum, weight_decay=weight_decay)
            for n in (ref, fused)]
    ref_losses = autograd_steps(ref, opts[0], x, y, loss, renormalize, batch)
    step = FusedSGD(fused, opts[1], loss, renormalize)
    loss_sum, per_step = torch.zeros(members), []
    for i in range(0, steps, 3):  # several steps per call, and a short last call
        total, losses = step(x[i * batch:(i + 3) * batch].view(-1, batch, 5),
                             y[i * batch:(i + 3) * batch].view(-1, batch, 4), loss_sum)
        torch.testing.assert_close(total, loss_sum + losses.sum(0))
        loss_sum = total
        per_step.append(losses)
    assert torch.equal(torch.cat(per_step), ref_losses)  # each step's losses, as autograd's
    for a, b in zip(fused.parameters(), ref.parameters()):  # same kernels, same order: bit for bit
        assert torch.equal(a, b)
    assert not torch.equal(fused.weights[0], net_and_data(members, output_relu, steps)[0].weights[0])
    if momentum:  # the torch optimizer's own buffers hold the fused momentum: checkpoints carry it
        for p_ref, p in zip(ref.parameters(), fused.parameters()):
            assert torch.equal(opts[1].state[p]["momentum_buffer"], opts[0].state[p_ref]["momentum_buffer"])


def test_choose_path():
    net = ReLUNet(5, [7], 4)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    assert choose_path("auto", net, sgd, COMPILE_MIN_STEPS - 1) == "fused"
    assert choose_path("auto", net, sgd, COMPILE_MIN_STEPS) == "compiled"
    assert choose_path("autograd", net, sgd, 10**9) == "autograd"
    adam = torch.optim.Adam(net.parameters())
    assert choose_path("auto", net, adam, 10**9) == "autograd"
    with pytest.raises(ValueError, match="torch.optim.SGD"):
        choose_path("fused", net, adam, 1)
    bn_net = ReLUNet(5, [7], 4, bn="after_relu")
    with pytest.raises(ValueError, match="BatchNorm"):
        choose_path("compiled", bn_net, torch.optim.SGD(bn_net.parameters(), lr=0.1), 1)
    nesterov = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    assert choose_path("auto", net, nesterov, 1) == "autograd"
    assert choose_path("auto", net, sgd, 10**9, clipped=True) == "autograd"
    with pytest.raises(ValueError, match="clip"):
        choose_path("fused", net, sgd, 1, clipped=True)


def test_config_refuses_fused_step_where_it_does_not_apply(small_cfg):
    validate(small_cfg("step=fused", "optimizer=sgd_momentum"))
    with pytest.raises(ConfigError, match="step='fused' is not allowed.*BatchNorm"):
        validate(small_cfg("step=fused", "student.bn=after_relu"))
    with pytest.raises(ConfigError, match="step='compiled' is not allowed.*SGD"):
        validate(small_cfg("step=compiled", "optimizer=adam"))
    with pytest.raises(ConfigError, match="step='fused' is not allowed.*gradient clipping"):
        validate(small_cfg("step=fused", "+trainer.gradient_clip_val=1.0"))
    with pytest.raises(ConfigError, match="step='fast'"):
        validate(small_cfg("step=fast"))
    with pytest.raises(ConfigError, match="fused_chunk=0"):
        validate(small_cfg("fused_chunk=0"))


class Weights(Callback):
    def on_train_end(self, trainer, module):
        self.state = {k: v.clone() for k, v in module.student.state_dict().items()}
        self.path = module.step_path


def train_weights_and_metrics(cfg):
    module, trainer = build(cfg, None)
    probe = Weights()
    trainer.callbacks.append(probe)
    trainer.fit(module)
    return probe, module


@pytest.mark.slow  # two 3-epoch runs per case
@pytest.mark.parametrize("members", [1, 2])
def test_fused_run_equals_autograd_run(small_cfg, tmp_path, members):
    """The real path: the same per-epoch metrics, with a learning-rate schedule, momentum and weight
    decay, chunks that span log boundaries and are cut by the call boundaries."""
    common = ["epochs=3", f"student.num_students={members}", "optimizer=sgd_momentum",
              "optimizer.lr_schedule={1: 0.005}", "steps_per_call=20", "log_every_n_steps=30", "fused_chunk=4"]
    results = {}
    for step in ("autograd", "fused"):
        cfg = small_cfg(*common, f"step={step}")
        with open_dict(cfg):
            cfg.run_dir = str(tmp_path / step)
        results[step] = run(cfg, cfg.run_dir), read_metrics(cfg.run_dir)
    (ref, ref_rows), (fused, fused_rows) = results["autograd"], results["fused"]
    assert ref["status"] == fused["status"] == "completed" and ref["steps"] == fused["steps"] == 3 * 64
    assert fused_rows == ref_rows  # every metric of every epoch, and the training losses: identical
    assert [r["step"] for r in ref_rows if "loss/train" in r] == [30, 60, 64, 90, 120, 128, 150, 180, 192]


def test_fused_run_weights_and_path(small_cfg):
    weights = {}
    for step in ("autograd", "auto"):
        probe, module = train_weights_and_metrics(small_cfg("epochs=2", "optimizer.renormalize=weight", f"step={step}"))
        weights[step] = probe.state
        assert probe.path == ("autograd" if step == "autograd" else "fused")  # 128 steps: not compiled
    for k, v in weights["autograd"].items():
        assert torch.equal(weights["auto"][k], v)


@pytest.mark.slow
def test_compiled_step_equals_eager_and_learning_rate_changes_do_not_recompile():
    steps, batch, chunk = 40, 8, 2
    ref, x, y = net_and_data(2, False, steps)
    net = ReLUNet(5, [7, 6], 4, num_members=2)
    net.load_state_dict(ref.state_dict())
    opts = [torch.optim.SGD(n.parameters(), lr=0.02, momentum=0.9) for n in (ref, net)]
    eager, compiled = FusedSGD(ref, opts[0], "mse", "fan_in"), FusedSGD(net, opts[1], "mse", "fan_in", chunk)
    sums = torch.zeros(2), torch.zeros(2)
    for i in range(0, steps, chunk):
        rows = slice(i * batch, (i + chunk) * batch)
        xs, ys = x[rows].view(chunk, batch, 5), y[rows].view(chunk, batch, 4)
        if i == chunk:  # compiled already: a new learning rate (the lr schedule) must not recompile
            torch.compiler.set_stance("fail_on_recompile")
            for opt in opts:
                opt.param_groups[0]["lr"] = 0.01
        sums[0].copy_(eager(xs, ys, sums[0])[0])
        try:
            sums[1].copy_(compiled(xs, ys, sums[1])[0])
        finally:
            torch.compiler.set_stance("default")
    assert compiled.compile_seconds > 0 and compiled._compiled is not None
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sums[1], sums[0], rtol=1e-5, atol=1e-6)
