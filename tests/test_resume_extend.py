"""Extending a completed run: ``resume=<run folder> epochs=N`` goes on from its last epoch's
checkpoint to epoch N and ends as an uninterrupted N-epoch run of the same config would."""
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from tests.cli import tsdyn_train
from tests.conftest import SMALL, compose_cfg, locked_by_another_process, wandb_offline_log
from tsdyn import fused
from tsdyn.config import ConfigError
from tsdyn.resume import extend_run_folder, resumed_config
from tsdyn.runfolder.paths import HYDRA, SUMMARY, WANDB_ID, last_checkpoint
from tsdyn.runfolder.reader import read_metrics
from tsdyn.runfolder.state import check_resumable
from tsdyn.train import run

# 2000 // 64 = 31 optimizer steps per epoch; every analysis on: Luck and WeightDrift keep what they
# saw at the start, the theory (every 20 epochs) and the end-of-run results are measured at each end
EXTEND = ["data.n_train=2000", "data.n_eval=512", "steps_per_call=16", "log_every_n_steps=8",
          "trainer.enable_progress_bar=false", "logger=none", "callbacks=default"]


def started(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config of ``python -m tsdyn.train <overrides>`` in ``run_dir``, with the ``.hydra``
    files Hydra writes there."""
    cfg = compose_cfg(overrides, run_dir)
    (run_dir / HYDRA).mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / HYDRA / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / HYDRA / "overrides.yaml")
    return cfg


def resumed(run_dir: Path, *overrides: str) -> DictConfig:
    """The config ``python -m tsdyn.train resume=<run_dir> <overrides>`` runs with."""
    return resumed_config(run_dir, compose_cfg(list(overrides)), [f"resume={run_dir}", *overrides])


def stored_epochs(run_dir: Path) -> tuple[int, list[str]]:
    """``epochs`` in the folder's config, and its ``epochs=`` overrides."""
    overrides = OmegaConf.load(run_dir / HYDRA / "overrides.yaml")
    return OmegaConf.load(run_dir / HYDRA / "config.yaml").epochs, [o for o in overrides if o.startswith("epochs=")]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint(run_dir), weights_only=False, map_location="cpu")["state_dict"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_extended_run_equals_an_uninterrupted_run(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    first = run(started([*EXTEND, "logger=wandb", "epochs=2"], run_dir), run_dir)
    run_id = (run_dir / WANDB_ID).read_text()
    summary = run(resumed(run_dir, "epochs=4"), run_dir, resume=True)
    run(compose_cfg([*EXTEND, "epochs=4"], reference), reference)

    # every row (step, epoch, every key and value, in order) and every weight, bit for bit
    rows = read_metrics(run_dir)
    assert rows == read_metrics(reference)
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r["epoch"] for r in rows if "loss/eval" in r] == [0, 1, 2, 3, 4]
    # end-of-run results once, at the new end (the first part's were cut); the luck ranks need
    # the orderings kept since the start, the drift the initial weights: both equal the reference's
    assert [r["epoch"] for r in rows if "prune/loss_before" in r] == [4]
    assert [r["epoch"] for r in rows if "theory/layer0/h_star_diag_ratio" in r] == [0, 4]
    assert [r["epoch"] for r in rows if "luck/layer0/spearman_init_vs_converge" in r] == [4]
    assert [r["epoch"] for r in rows if "drift/layer0/abs_mean" in r] == [0, 1, 2, 3, 4]
    assert sorted(os.listdir(run_dir / "arrays")) == sorted(os.listdir(reference / "arrays"))
    assert read_json(run_dir / "analysis.json") == read_json(reference / "analysis.json")

    saved, ref = read_json(run_dir / SUMMARY), read_json(reference / SUMMARY)
    assert (saved["status"], saved["epochs"], saved["steps"]) == ("completed", 4, 4 * 31)
    assert saved["final"] == ref["final"]
    parts = saved["wall_time_s_parts"]
    assert len(parts) == 2 and parts[0] == first["wall_time_s"] and parts[1] > 0
    assert saved["wall_time_s"] == summary["wall_time_s"] == pytest.approx(sum(parts), abs=0.011)
    assert stored_epochs(run_dir) == (4, ["epochs=4"])  # the folder holds a 4-epoch run now

    # W&B: the same run id; the second part's offline run holds the rows of epochs 3 and 4
    assert (run_dir / WANDB_ID).read_text() == run_id
    assert [p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")] == [run_id.strip()] * 2
    logs = [wandb_offline_log(run_dir, part=part) for part in (0, 1)]
    for row in rows:
        if "loss/eval" in row:
            value = json.dumps(row["loss/eval"]).encode()
            assert (value in logs[0], value in logs[1]) == ((True, False) if row["epoch"] <= 2 else (False, True))


@pytest.mark.slow
def test_extended_run_keeps_the_step_path_its_start_chose(tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "COMPILE_MIN_STEPS", 100)  # under auto: 62 steps fused, 124 compiled
    run_dir = tmp_path / "run"
    run(started([*EXTEND, "callbacks=minimal", "epochs=2"], run_dir), run_dir)
    assert torch.load(last_checkpoint(run_dir), weights_only=False)["tsdyn"]["step_path"] == "fused"
    assert run(resumed(run_dir, "epochs=6"), run_dir, resume=True)["steps"] == 6 * 31  # 124 steps to go
    assert torch.load(last_checkpoint(run_dir), weights_only=False)["tsdyn"]["step_path"] == "fused"
    assert not [r for r in read_metrics(run_dir) if "time/compile_s" in r]


def _finished(folder: Path, status: str, epochs: int, planned: int = 3) -> Path:
    (folder / HYDRA).mkdir(parents=True)
    OmegaConf.save(compose_cfg([*SMALL, f"epochs={planned}"], folder), folder / HYDRA / "config.yaml")
    OmegaConf.save(OmegaConf.create(["student.width_mult=2", f"epochs={planned}"]), folder / HYDRA / "overrides.yaml")
    (folder / "metrics.jsonl").write_text('{"step": 0, "epoch": 0, "loss/eval": 1.0}\n')
    if status is not None:
        (folder / SUMMARY).write_text(json.dumps({"status": status, "epochs": epochs, "wall_time_s": 1.5}))
    return folder


def test_which_runs_extend_and_to_how_many_epochs(tmp_path):
    done = _finished(tmp_path / "done", "completed", 3)
    check_resumable(done, 4)
    with pytest.raises(ConfigError, match=rf"^resume='{done}' is not allowed: expected an unfinished run \(this "
                                          rf"one is completed; to extend it: resume={done} epochs=N, N > 3\)$"):
        check_resumable(done)
    for epochs in (3, 1):
        with pytest.raises(ConfigError, match=rf"^epochs={epochs} is not allowed: expected more than the 3 "
                                              rf"epochs the completed run in {done} ran$"):
            check_resumable(done, epochs)
    stopped = _finished(tmp_path / "stopped", "completed", 2)  # EarlyStopping, max_steps, max_time
    with pytest.raises(ConfigError, match=r"^resume=.* expected a run that ran all its epochs, to extend \(this "
                                          r"one stopped after 2 of 3\)$"):
        check_resumable(stopped, 5)
    diverged = _finished(tmp_path / "diverged", "diverged", 1)
    with pytest.raises(ConfigError, match=r"expected an unfinished run \(this one is diverged\)$"):
        check_resumable(diverged, 5)
    killed = _finished(tmp_path / "killed", "interrupted", 1)  # an unfinished run: not fewer epochs
    check_resumable(killed, 3)
    check_resumable(killed, 5)
    with pytest.raises(ConfigError, match=r"^epochs=2 is not allowed: expected at least the 3 epochs of the "
                                          r"unfinished run in .*killed$"):
        check_resumable(killed, 2)

    cfg = resumed(done, "epochs=5", "threads=2")
    assert (cfg.epochs, cfg.threads, cfg.optimizer.lr, cfg.run_dir) == (5, 2, 0.05, str(done))
    with pytest.raises(ConfigError, match=r"^optimizer.lr=0.5 is not allowed: expected no override with "
                                          r"resume= besides epochs, threads"):
        resumed(done, "epochs=5", "optimizer.lr=0.5")


def test_an_extended_folder_holds_an_unfinished_run_of_its_new_epochs(tmp_path):
    done = _finished(tmp_path / "done", "completed", 3)
    config, summary = (done / HYDRA / "config.yaml").read_text(), (done / SUMMARY).read_text()
    extend_run_folder(done, 3)                               # nothing to say: nothing written
    assert ((done / HYDRA / "config.yaml").read_text(), (done / SUMMARY).read_text()) == (config, summary)
    extend_run_folder(done, 7)
    assert stored_epochs(done) == (7, ["epochs=7"])
    assert OmegaConf.load(done / HYDRA / "overrides.yaml")[0] == "student.width_mult=2"
    assert (done / HYDRA / "config.yaml").read_text() == config.replace("epochs: 3", "epochs: 7")
    # until it completes again the run is unfinished: killed while extended, a plain resume= goes on
    assert read_json(done / SUMMARY) == {"run_dir": str(done), "wall_time_s": 1.5, "wall_time_s_parts": [1.5]}
    check_resumable(done)
    with pytest.raises(ConfigError, match=r"^epochs=5 is not allowed: expected at least the 7 epochs"):
        check_resumable(done, 5)


def test_a_folder_in_use_is_not_extended(tmp_path):
    done = _finished(tmp_path / "done", "completed", 3)
    config = (done / HYDRA / "config.yaml").read_bytes()
    with locked_by_another_process(done) as pid:
        with pytest.raises(ConfigError, match=rf"^run_dir='{done}' is not allowed: expected a folder no live "
                                              rf"process is writing \(process {pid} on .* is\)$"):
            run(resumed(done, "epochs=5"), done, resume=True)
    assert (done / HYDRA / "config.yaml").read_bytes() == config  # refused before anything was written


@pytest.mark.slow
def test_cli_extends_a_completed_run_and_refuses_no_more_epochs(tmp_path):
    run_dir = tmp_path / "run"
    assert tsdyn_train(*SMALL, "epochs=1", f"hydra.run.dir={run_dir}").returncode == 0
    config = (run_dir / HYDRA / "config.yaml").read_bytes()
    res = tsdyn_train(f"resume={run_dir}", "epochs=1")
    assert (res.returncode, res.stderr.strip().splitlines()) == (2, [
        f"tsdyn: config error: epochs=1 is not allowed: expected more than the 1 epochs the completed run in "
        f"{run_dir} ran"])
    assert (run_dir / HYDRA / "config.yaml").read_bytes() == config

    res = tsdyn_train(f"resume={run_dir}", "epochs=2")
    assert res.returncode == 0, res.stderr[-2000:]
    saved = read_json(run_dir / SUMMARY)
    assert (saved["status"], saved["epochs"], saved["steps"]) == ("completed", 2, 128)
    assert len(saved["wall_time_s_parts"]) == 2
    assert [r["epoch"] for r in read_metrics(run_dir) if "loss/eval" in r] == [0, 1, 2]
    assert stored_epochs(run_dir) == (2, ["epochs=2"])
