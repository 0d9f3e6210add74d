"""Multiruns through the CLI: the joblib and submitit_local launchers each run two real jobs into
their own run folders; a job that diverges or fails is recorded as such and the others go on; the
jobs of a multirun share one W&B group and each closes its own W&B run."""
import json
from pathlib import Path

import pytest

from tests.multiruns import multirun
from tsdyn.runfolder.reader import find_runs, read_metrics

pytestmark = pytest.mark.slow  # end-to-end runs: make test-fast leaves them out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_runs_two_seed_jobs_with_one_teacher(launcher, tmp_path):
    res = multirun(tmp_path, f"hydra/launcher={launcher}", "callbacks=minimal", "logger=none", "epochs=1",
                   "student.seed=0,1")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["0", "1"]
    assert [r.overrides["student.seed"] for r in runs] == ["0", "1"]
    for run in runs:
        assert run.status == "completed" and run.summary["epochs"] == 1
        assert [row["epoch"] for row in read_metrics(run.path) if "match/layer0/mean_best" in row] == [0, 1]
    # same teacher: identical teacher weights in both checkpoints; different students
    import torch
    states = [torch.load(r.path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
              for r in runs]
    assert torch.equal(states[0]["teacher.weights.0"], states[1]["teacher.weights.0"])
    assert not torch.equal(states[0]["student.weights.0"], states[1]["student.weights.0"])


def test_failing_and_diverging_jobs_are_recorded_and_the_rest_completes(tmp_path):
    # basic launcher: every job runs in this one process, one after the other, with W&B on.
    # teacher variants: a bad value (config error, exit 2), an error while building (no 10 distinct
    # rows from a single weight choice), a good teacher; lr 1e6 diverges, lr 0.05 trains.
    res = multirun(tmp_path, "logger=wandb", "callbacks=minimal", "epochs=1", "optimizer.lr=1e6,0.05",
                   "teacher={ks:[0]},{weight_choices:[0.5]},{seed:1}")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = find_runs(tmp_path)
    assert [r.status for r in runs] == ["failed", "failed", "diverged", "failed", "failed", "completed"]
    assert "teacher.ks=[0]" in runs[0].summary["error"] and runs[0].summary["exit_code"] == 2
    assert "ValueError" in runs[1].summary["error"] and "cannot draw 10 distinct" in runs[1].summary["error"]
    assert runs[2].summary["diverged_at_step"] > 0 and read_metrics(runs[2].path)  # metrics up to the NaN kept
    good = runs[5]
    ends = res.stdout.strip().splitlines()[-3:]     # the multirun ends by naming its folder and next commands
    assert ends == [f"multirun folder: {tmp_path}", f"upload to W&B:    wandb sync {tmp_path}/*/wandb/offline-run-*",
                    f"figures + table:  python -m tsdyn.report {tmp_path}"]
    assert len(list(tmp_path.glob("*/wandb/offline-run-*"))) >= 2
    assert [row["epoch"] for row in read_metrics(good.path) if "match/layer0/mean_best" in row] == [0, 1]
    evals = [row["loss/eval"] for row in read_metrics(good.path) if "loss/eval" in row]
    assert evals[-1] < evals[0] / 2                               # it trained

    # W&B: one offline run per job that got as far as building its loggers, all in one group, each
    # named after its own overrides; the completed job's run is its own, not the diverged job's
    logs = {i: list((runs[i].path / "wandb").glob("offline-run-*/run-*.wandb")) for i in (2, 5)}
    assert all(len(files) == 1 for files in logs.values())
    diverged, completed = (logs[i][0].read_bytes() for i in (2, 5))
    group = f"multirun-{tmp_path.parent.name}_{tmp_path.name}".encode()
    assert group in diverged and group in completed
    assert b"optimizer.lr=1000000.0,teacher={seed:1}" in diverged
    assert b"optimizer.lr=0.05,teacher={seed:1}" in completed
    assert b"optimizer.lr=1000000.0,teacher={seed:1}" not in completed
    assert b'"diverged"' in diverged and b'"completed"' in completed


def test_wandb_identity_names_group_after_preset_and_time_and_run_after_overrides():
    from omegaconf import OmegaConf

    from tsdyn.multirun import wandb_identity
    hydra_cfg = OmegaConf.create({
        "runtime": {"choices": {"sweep": "width"}}, "sweep": {"dir": "outputs/multiruns/2025-01-31/12-00-00-000001"},
        "overrides": {"task": ["student.width_mult=5", "sweep=width", "student.seed=1"]}, "job": {"num": 3}})
    assert wandb_identity(hydra_cfg) == {"group": "width-2025-01-31_12-00-00-000001",
                                         "name": "student.width_mult=5,student.seed=1"}
    hydra_cfg.overrides.task = ["sweep=width"]
    assert wandb_identity(hydra_cfg)["name"] == "job3"
