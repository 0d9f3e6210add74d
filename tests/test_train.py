"""End-to-end: real (small) training runs through the same code path as the CLI."""
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import wandb_offline_log
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
