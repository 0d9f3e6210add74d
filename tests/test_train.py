"""End-to-end: real (small) training runs through the same code path as the CLI."""
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import wandb_offline_log
from tsdyn.build import build
from tsdyn.callbacks import StepProgressBar
from tsdyn.runfolder.reader import read_metrics
from tsdyn.train import run


def rows_with(rows, key):
    return [r for r in rows if key in r]


@pytest.mark.slow
def test_training_makes_lowest_layer_match(small_cfg):
    cfg = small_cfg("data.n_train=16384", "epochs=6", "optimizer.lr=0.1")
    summary = run(cfg, cfg.run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == 6 and summary["steps"] == 6 * 256
    rows = read_metrics(cfg.run_dir)
    match = rows_with(rows, "match/layer0/mean_best")
    assert [r["epoch"] for r in match] == list(range(7))
    start, end = match[0]["match/layer0/mean_best"], match[-1]["match/layer0/mean_best"]
    assert start < 0.6 and end > 0.95, (start, end)
    evals = [r["loss/eval"] for r in rows_with(rows, "loss/eval")]
    assert evals[-1] < evals[0] / 10
    assert len(rows_with(rows, "loss/train")) == 6 * 256 // 32
    saved = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert saved["final"]["match/layer0/mean_best"] == end


def test_run_folder_holds_checkpoint_with_teacher_and_arrays(small_cfg, tmp_path):
    cfg = small_cfg("epochs=1")
    run(cfg, cfg.run_dir)
    run_dir = Path(cfg.run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert any(k.startswith("teacher.weights") for k in ckpt["state_dict"])
    arrays = sorted(p.name for p in (run_dir / "arrays").glob("match_*"))
    assert arrays == ["match_epoch000.npz", "match_epoch001.npz"]


@pytest.mark.slow
def test_wandb_offline_run_has_per_layer_summary(small_cfg):
    cfg = small_cfg("logger=wandb", "epochs=1")
    run(cfg, cfg.run_dir)
    log = wandb_offline_log(cfg.run_dir)
    for layer in range(4):
        assert f"match/layer{layer}/mean_best".encode() in log
    assert b'"completed"' in log  # the summary's status: only the summary holds it
    assert b"width_mult" in log   # the resolved config


def test_ensemble_logs_per_student_and_aggregate(small_cfg):
    cfg = small_cfg("student.num_students=3", "epochs=1")
    run(cfg, cfg.run_dir)
    last = rows_with(read_metrics(cfg.run_dir), "match/layer0/mean_best")[-1]
    per = [last[f"match/layer0/mean_best/s{i}"] for i in range(3)]
    assert abs(last["match/layer0/mean_best"] - sum(per) / 3) < 1e-6
    assert last["match/layer0/mean_best/min"] == min(per) and last["match/layer0/mean_best/max"] == max(per)
    assert len(set(per)) == 3


def test_progress_bar_counts_optimizer_steps_and_shows_epoch_and_loss(small_cfg):
    cfg = small_cfg("epochs=2", "trainer.enable_progress_bar=true")          # 64 steps per epoch, 16 per call
    module, trainer = build(cfg, Path(cfg.run_dir))
    (bar,) = [c for c in trainer.callbacks if isinstance(c, StepProgressBar)]
    seen = []

    class Spy(pl.Callback):  # the bar as drawn after the previous call, and at the epoch's end
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.record()

        def on_train_epoch_end(self, trainer, pl_module):
            self.record()

        def record(self):
            task = bar.progress.tasks[bar.train_progress_bar_id]
            seen.append((task.description, task.completed, task.total))

    trainer.callbacks.append(Spy())
    trainer.fit(module)
    assert seen == [(f"epoch {e}/2", done, 64) for e in (1, 2) for done in (0, 16, 32, 48, 64)]
    metrics = bar.get_metrics(trainer, module)
    assert "v_num" not in metrics and metrics["loss"] > 0
