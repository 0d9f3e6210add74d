import numpy as np
import pytest
import torch

from tsdyn.nets import ReLUNet, normalize_rows, renormalize_


def test_normalize_rows_by_weight_and_by_fan_in_against_numpy():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, generator=g)
    wn, bn = normalize_rows(w, b, "weight")
    norm = np.linalg.norm(w.numpy(), axis=-1)
    np.testing.assert_allclose(wn.numpy(), w.numpy() / norm[..., None], rtol=1e-6)
    np.testing.assert_allclose(bn.numpy(), b.numpy() / norm, rtol=1e-6)
    wf, bf = normalize_rows(w, b, "fan_in")
    full = np.concatenate([w.numpy(), b.numpy()[..., None]], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([wf, bf[..., None]], -1), axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(wf.numpy(), w.numpy() / np.linalg.norm(full, axis=-1)[..., None], rtol=1e-6)
    with pytest.raises(ValueError, match="by='rows'"):
        normalize_rows(w, b, "rows")


def test_renormalize_every_layer_and_output_relu():
    torch.manual_seed(0)
    net = ReLUNet(4, [6, 5], 3, num_members=2, output_relu=True)
    renormalize_(net, "weight")
    for w in net.weights:
        np.testing.assert_allclose(w.detach().norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    plain = ReLUNet(4, [6, 5], 3, num_members=2)
    plain.load_state_dict(net.state_dict())
    x = torch.randn(200, 4)
    out, linear = net(x)[0], plain(x)[0]
    assert (linear < 0).any()                                # the output ReLU has something to cut
    torch.testing.assert_close(out, torch.relu(linear))
    assert net.like().output_relu  # students copy the teacher's output ReLU


def test_projected_sgd_starts_on_the_sphere_and_stays_there(small_cfg):
    """optimizer.renormalize: the student is projected before the first step (the authors normalise
    before training) and after every step; the trained rows have unit fan-in (weights and bias)."""
    from tsdyn.build import build
    from tsdyn.train import run
    cfg = small_cfg("optimizer.renormalize=fan_in", "epochs=1", "data.n_train=640")
    module, _ = build(cfg, None)
    for w, b in zip(module.student.weights, module.student.biases):
        norms = torch.cat([w.detach(), b.detach()[..., None]], -1).norm(dim=-1)
        np.testing.assert_allclose(norms.numpy(), 1.0, rtol=1e-5)
    assert run(cfg, cfg.run_dir)["status"] == "completed"
    state = torch.load(f"{cfg.run_dir}/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for layer in range(5):
        w, b = state[f"student.weights.{layer}"], state[f"student.biases.{layer}"]
        np.testing.assert_allclose(torch.cat([w, b[..., None]], -1).norm(dim=-1).numpy(), 1.0, rtol=1e-5)
