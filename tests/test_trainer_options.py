"""Trainer options: each one the loop honours does what Lightning's documentation says (a test
each), the others are refused in one line before any work; metrics reach Lightning's
callback_metrics (EarlyStopping, ModelCheckpoint) and any logger from the logger group."""
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from tests.conftest import compose_cfg, wandb_offline_log
from tsdyn.build import build
from tsdyn.config import ConfigError, validate
from tsdyn.module import clip_grad_per_member_
from tsdyn.runfolder.reader import read_metrics
from tsdyn.train import run

STEPS = 4096 // 64          # optimizer steps per epoch of the small config (tests/conftest.py SMALL)


@pytest.mark.parametrize("override, named, hint", [
    ("trainer.devices=2", "trainer.devices=2", "student.num_students"),
    ("+trainer.strategy=ddp", "trainer.strategy='ddp'", "hydra/launcher=slurm"),
    ("+trainer.num_nodes=2", "trainer.num_nodes=2", "multirun"),
    ("+trainer.max_epochs=2", "trainer.max_epochs=2", "epochs=N"),
    ("+trainer.accumulate_grad_batches=4", "trainer.accumulate_grad_batches=4", "data.batch_size"),
    ("+trainer.precision=16-mixed", "trainer.precision='16-mixed'", "expected 32"),
    ("+trainer.reload_dataloaders_every_n_epochs=1", "trainer.reload_dataloaders_every_n_epochs=1", "max_steps"),
    ("+trainer.limit_train_batches=0", "trainer.limit_train_batches=0", "training_step calls"),
    ("+trainer.gradient_clip_algorithm=max", "trainer.gradient_clip_algorithm='max'", "norm"),
])
def test_unsupported_trainer_options_refused_in_one_line(override, named, hint, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([override], tmp_path))
    msg = str(err.value)
    assert msg.startswith(named) and hint in msg and "\n" not in msg


def forward_batches(module) -> list[int]:
    """Records the batch size of every student forward pass (training batches and evaluations)."""
    sizes: list[int] = []
    module.student.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[-2]))
    return sizes


def fit(small_cfg, *overrides):
    cfg = small_cfg(*overrides)
    validate(cfg)
    module, trainer = build(cfg, None)
    sizes = forward_batches(module)
    trainer.fit(module)
    return module, trainer, [s for s in sizes if s == cfg.data.batch_size]


def test_epochs_is_the_one_number_of_epochs(small_cfg):
    _, trainer, batches = fit(small_cfg, "epochs=2")
    assert trainer.max_epochs == 2 and trainer.global_step == 2 * STEPS and len(batches) == 2 * STEPS


@pytest.mark.parametrize("limit, per_epoch", [(2, 20), (0.5, 30)])
def test_limit_train_batches_counts_training_step_calls(small_cfg, limit, per_epoch):
    """``steps_per_call=10``: an epoch of 64 steps is 7 calls; 2 of them, or half (3, as Lightning
    rounds), run, every one on whole batches from the start of the epoch (never a negative index)."""
    module, trainer, batches = fit(small_cfg, "epochs=2", "steps_per_call=10", f"+trainer.limit_train_batches={limit}")
    assert trainer.global_step == 2 * per_epoch and len(batches) == 2 * per_epoch


def test_max_steps_stops_at_that_step_and_measures_there(small_cfg):
    module, trainer, batches = fit(small_cfg, "epochs=5", "+trainer.max_steps=40")
    assert trainer.global_step == 40 and len(batches) == 40
    assert module.recorder.last["match/layer0/mean_best"] == pytest.approx(
        float(trainer.callback_metrics["match/layer0/mean_best"]))


def test_fast_dev_run_one_step_no_loggers_no_checkpoint(small_cfg):
    cfg = small_cfg("+trainer.fast_dev_run=true", "logger=csv")
    summary = run(cfg, cfg.run_dir)
    run_dir = Path(cfg.run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 1
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "csv").exists()
    assert [r["epoch"] for r in read_metrics(run_dir) if "match/layer0/mean_best" in r] == [0, 1]


@pytest.mark.slow
def test_max_time_ends_a_long_run(small_cfg):
    start = time.perf_counter()
    _, trainer, _ = fit(small_cfg, "epochs=100000", "+trainer.max_time={seconds:1}")
    assert 0 < trainer.global_step < 100000 * STEPS and time.perf_counter() - start < 120


def test_gradient_clip_per_student_matches_torch_on_each():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 5, generator=g)), torch.nn.Parameter(torch.randn(3, 4, generator=g))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * torch.tensor([0.01, 1.0, 10.0]).view(-1, *[1] * (p.dim() - 1))
    expected = []
    for e in range(3):
        single = [torch.nn.Parameter(p.detach()[e].clone()) for p in params]
        for s, p in zip(single, params):
            s.grad = p.grad[e].clone()
        torch.nn.utils.clip_grad_norm_(single, 1.0)
        expected.append([s.grad for s in single])
    clipped = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(clipped, params):
        c.grad = p.grad.clone()
    clip_grad_per_member_(clipped, 1.0, "norm")
    for e in range(3):
        for p, want in zip(clipped, expected[e]):
            torch.testing.assert_close(p.grad[e], want, rtol=1e-5, atol=1e-7)
    clip_grad_per_member_(params, 0.5, "value")
    assert all(p.grad.abs().max() <= 0.5 for p in params)


def test_gradient_clip_val_bounds_each_update(small_cfg):
    """Plain SGD: one clipped step moves each student's parameters by at most lr * clip."""
    moves = {}
    for clip in (None, 1e-3):
        cfg = small_cfg("+trainer.fast_dev_run=true", "student.num_students=2", "optimizer.lr=0.1",
                        *([f"+trainer.gradient_clip_val={clip}"] if clip else []))
        module, trainer = build(cfg, None)
        before = [p.detach().clone() for p in module.student.parameters()]
        trainer.fit(module)
        moves[clip] = torch.stack([(p.detach() - b).flatten(1).pow(2).sum(1)
                                   for p, b in zip(module.student.parameters(), before)]).sum(0).sqrt()
    assert (moves[1e-3] <= 0.1 * 1e-3 * (1 + 1e-4)).all() and (moves[None] > 10 * 0.1 * 1e-3).all()


@pytest.mark.slow
def test_early_stopping_and_best_checkpoint_on_a_matching_key(small_cfg, tmp_path):
    """callbacks=early_stopping (every analysis + EarlyStopping on match/layer1/mean_best), made to
    stop after one epoch without progress; a ModelCheckpoint on the same key keeps the best epoch."""
    cfg = small_cfg("callbacks=early_stopping", "epochs=20", "callbacks.early_stopping.patience=1",
                    "callbacks.early_stopping.min_delta=1.0", "~callbacks.theory",
                    "+callbacks.best._target_=pytorch_lightning.callbacks.ModelCheckpoint",
                    "+callbacks.best.monitor=match/layer1/mean_best", "+callbacks.best.mode=max",
                    f"+callbacks.best.dirpath={tmp_path}/best")
    validate(cfg)
    module, trainer = build(cfg, Path(cfg.run_dir))
    trainer.fit(module)
    stop = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    best = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor)
    assert trainer.current_epoch == 2 and stop.stopped_epoch == 1          # epochs 1 and 2, then stopped
    assert set(trainer.callback_metrics) >= {"match/layer1/mean_best", "loss/eval", "sparsity/teacher/layer0/coactive_mean"}
    rows = [r for r in read_metrics(cfg.run_dir) if "match/layer1/mean_best" in r]
    assert float(best.best_model_score) == pytest.approx(max(r["match/layer1/mean_best"] for r in rows[1:]))
    assert Path(best.best_model_path).exists()


def test_tensorboard_logger_by_config_alone_gets_epoch(small_cfg):
    cfg = small_cfg("logger=tensorboard", "epochs=1")
    assert run(cfg, cfg.run_dir)["status"] == "completed"
    (events,) = (Path(cfg.run_dir) / "tensorboard").glob("events.out.tfevents.*")
    data = events.read_bytes()
    assert b"match/layer0/mean_best" in data and b"loss/train" in data and b"epoch" in data


@pytest.mark.slow
def test_wandb_plots_per_epoch_keys_against_the_epoch(small_cfg):
    cfg = small_cfg("logger=wandb", "epochs=1")
    run(cfg, cfg.run_dir)
    data = wandb_offline_log(cfg.run_dir)
    # a MetricRecord: name (field 1) then step_metric (field 4) "epoch"
    assert b'\n\x16match/layer0/mean_best"\x05epoch' in data
    assert b'loss/train"\x05epoch' not in data
