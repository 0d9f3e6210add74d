"""Data and the lr schedule: the pieces a resumed run relies on to draw what an uninterrupted one would."""
import pytest
import torch

from tsdyn.data import GaussianData, epoch_generator
from tsdyn.module import lr_at


def test_generators_depend_on_seed_epoch_and_stream_only():
    draw = lambda *a: torch.rand(5, generator=epoch_generator(*a))  # noqa: E731
    assert torch.equal(draw(3, 2, 0), draw(3, 2, 0))
    assert len({tuple(draw(*a).tolist()) for a in [(3, 2, 0), (4, 2, 0), (3, 1, 0), (3, 2, 1)]}) == 4


def test_gaussian_data_fixed_or_regenerated_and_separate_eval():
    data = GaussianData(std=10.0, n_train=4000, n_eval=3000, batch_size=64, seed=1)
    x0, x1 = data.train_inputs(7, 0, "cpu"), data.train_inputs(7, 1, "cpu")
    assert x0.shape == (4000, 7) and torch.equal(x0, x1)
    assert x0.std().item() == pytest.approx(10.0, rel=0.05) and abs(x0.mean().item()) < 0.5
    assert not torch.equal(data.eval_inputs(7, "cpu")[:10], x0[:10])
    regen = GaussianData(n_train=4000, batch_size=64, regenerate_each_epoch=True, seed=1)
    assert not torch.equal(regen.train_inputs(7, 0, "cpu"), regen.train_inputs(7, 1, "cpu"))
    assert data.steps_per_epoch() == 62                      # 4000 // 64: the last partial batch dropped
    perm = data.shuffle(2, "cpu")
    assert torch.equal(perm.sort().values, torch.arange(4000)) and torch.equal(perm, data.shuffle(2, "cpu"))
    assert not torch.equal(perm, data.shuffle(3, "cpu"))


@pytest.mark.parametrize("epoch, lr", [(0, 0.1), (19, 0.1), (20, 0.01), (29, 0.01), (30, 0.001), (99, 0.001)])
def test_lr_schedule_steps_at_its_epochs(epoch, lr):
    assert lr_at(epoch, 0.1, {30: 0.001, 20: 0.01}) == lr      # keys in any order
    assert lr_at(epoch, 0.1, {}) == 0.1
