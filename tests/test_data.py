"""Gaussian inputs: their std, fixed vs regenerated training sets, independent evaluation set,
image-shaped draws for a conv teacher, and "a fresh batch every step"; the seeded generators, the
epoch's shuffle and the lr schedule a resumed run relies on to do what an uninterrupted one would."""
import pytest
import torch

from tsdyn.data import GaussianData, epoch_generator
from tsdyn.schedule import lr_at


def test_gaussian_inputs_have_the_configured_std_and_mean_zero():
    data = GaussianData(std=10.0, n_train=20000, n_eval=20000, seed=1)
    for x in (data.train_inputs(5, 0, "cpu"), data.eval_inputs(5, "cpu")):
        assert x.shape == (20000, 5)
        torch.testing.assert_close(x.std(0), torch.full((5,), 10.0), atol=0.2, rtol=0)
        torch.testing.assert_close(x.mean(0), torch.zeros(5), atol=0.25, rtol=0)
    # independent coordinates: the sample covariance is ~ 100 I
    cov = torch.cov(data.train_inputs(5, 0, "cpu").T)
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 3.0


def test_fixed_vs_regenerated_training_set_and_independent_eval_set():
    fixed = GaussianData(std=1.0, n_train=1000, n_eval=1000, seed=3)
    regen = GaussianData(std=1.0, n_train=1000, n_eval=1000, seed=3, regenerate_each_epoch=True)
    assert torch.equal(fixed.train_inputs(4, 0, "cpu"), fixed.train_inputs(4, 7, "cpu"))
    epochs = [regen.train_inputs(4, e, "cpu") for e in range(3)]
    assert torch.equal(epochs[0], fixed.train_inputs(4, 0, "cpu"))
    assert torch.equal(regen.train_inputs(4, 2, "cpu"), epochs[2])           # seeded by the epoch: resumable
    train, evals = epochs[0], regen.eval_inputs(4, "cpu")
    for a, b in [(epochs[0], epochs[1]), (epochs[1], epochs[2]), (train, evals)]:
        # no shared sample, and uncorrelated draws (|r| ~ 1/sqrt(4000))
        assert not (a[:, None] == b[None]).all(-1).any()
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(r) < 0.06
    assert not torch.equal(GaussianData(seed=4, n_train=10).train_inputs(4, 0, "cpu"),
                           GaussianData(seed=3, n_train=10).train_inputs(4, 0, "cpu"))


def test_image_shaped_gaussian_inputs():
    data = GaussianData(std=2.0, n_train=3000, n_eval=10, seed=0)
    x = data.train_inputs([1, 16, 16], 0, "cpu")
    assert x.shape == (3000, 1, 16, 16)
    assert abs(x.std().item() - 2.0) < 0.02


def test_regenerated_data_is_a_fresh_batch_every_step():
    """With regenerate_each_epoch the batches the training loop takes (the epoch's permutation,
    consecutive slices) never repeat a sample within or across epochs."""
    data = GaussianData(std=1.0, n_train=640, n_eval=10, batch_size=64, seed=5, regenerate_each_epoch=True)
    seen = []
    for epoch in range(3):
        x = data.train_inputs(3, epoch, "cpu")[data.shuffle(epoch, "cpu")]
        seen += [x[i * 64:(i + 1) * 64] for i in range(data.steps_per_epoch())]
    all_rows = torch.cat(seen)
    assert len(seen) == 30 and all_rows.shape == (1920, 3)
    assert torch.unique(all_rows, dim=0).shape[0] == 1920


def test_generators_depend_on_seed_epoch_and_stream_only():
    draw = lambda *a: torch.rand(5, generator=epoch_generator(*a))  # noqa: E731
    assert torch.equal(draw(3, 2, 0), draw(3, 2, 0))
    assert len({tuple(draw(*a).tolist()) for a in [(3, 2, 0), (4, 2, 0), (3, 1, 0), (3, 2, 1)]}) == 4


def test_epoch_shuffle_is_a_seeded_permutation_and_the_last_batch_dropped():
    data = GaussianData(n_train=4000, batch_size=64, seed=1)
    assert data.steps_per_epoch() == 62                      # 4000 // 64
    perm = data.shuffle(2, "cpu")
    assert torch.equal(perm.sort().values, torch.arange(4000)) and torch.equal(perm, data.shuffle(2, "cpu"))
    assert not torch.equal(perm, data.shuffle(3, "cpu"))


@pytest.mark.parametrize("epoch, lr", [(0, 0.1), (19, 0.1), (20, 0.01), (29, 0.01), (30, 0.001), (99, 0.001)])
def test_lr_schedule_steps_at_its_epochs(epoch, lr):
    assert lr_at(epoch, 0.1, {30: 0.001, 20: 0.01}) == lr      # keys in any order
    assert lr_at(epoch, 0.1, {}) == 0.1
