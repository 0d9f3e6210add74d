"""Reliability: divergence ends a run cleanly, a signal checkpoints at a step boundary and a resumed
run ends exactly where an uninterrupted one does, run folders are never reused, W&B never blocks."""
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from tests.cli import ENV, Command, tsdyn_train
from tests.conftest import SMALL, compose_cfg
from tsdyn.config import ConfigError
from tsdyn.runfolder.paths import WANDB_ID as WANDB_ID_FILE
from tsdyn.module import Interrupted
from tsdyn.runfolder.reader import read_metrics
from tsdyn.interrupt import StopOnSignal
from tsdyn.resume import resumed_config
from tsdyn.runfolder.paths import last_checkpoint
from tsdyn.runfolder.state import check_resumable, continue_in
from tsdyn.train import job, run

pytestmark = pytest.mark.slow  # end-to-end runs: make test-fast leaves them out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint(run_dir), weights_only=False, map_location="cpu")["state_dict"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same metric rows (step, epoch, keys and values) and the same final weights."""
    rows, ref = read_metrics(run_dir), read_metrics(reference)
    assert [(r["step"], r["epoch"], sorted(r)) for r in rows] == [(r["step"], r["epoch"], sorted(r)) for r in ref]
    for row, ref_row in zip(rows, ref):
        assert row == pytest.approx(ref_row, rel=1e-6, abs=1e-7)
    final, ref_final = weights(run_dir), weights(reference)
    assert final.keys() == ref_final.keys()
    for key in final:
        torch.testing.assert_close(final[key], ref_final[key], rtol=1e-6, atol=1e-7)


def test_divergence_keeps_metrics_and_last_good_checkpoint_and_exits_3(tmp_path):
    run_dir = tmp_path / "run"
    # epoch 0 trains normally; from epoch 1 on a learning rate of 1000 blows the weights up
    res = tsdyn_train(*SMALL, "logger=wandb", "optimizer.lr_schedule={1: 1000.0}", f"hydra.run.dir={run_dir}")
    assert res.returncode == 3, res.stderr[-2000:]
    assert "diverged (non-finite loss) at step 96" in res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    # the loss is checked every log_every_n_steps=32 steps: the first check of epoch 1 (64 steps) sees it
    assert (summary["status"], summary["diverged_at_step"], summary["epochs"], summary["steps"]) == ("diverged", 96, 1, 96)
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows if "match/layer0/mean_best" in r] == [0, 1]
    train = [(r["step"], r["loss/train"]) for r in rows if "loss/train" in r]
    assert [s for s, _ in train] == [32, 64, 96] and all(v is not None for _, v in train[:2])
    assert train[-1][1] is None  # the non-finite loss itself (JSON null)
    assert sorted(p.name for p in (run_dir / "arrays").iterdir()) == ["match_epoch000.npz", "match_epoch001.npz"]
    ckpt = torch.load(last_checkpoint(run_dir), weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 64  # the end of epoch 0, not overwritten by the diverged weights
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    log = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"diverged_at_step" in log and b'"diverged"' in log  # the W&B run summary


# 512 steps per epoch: a signal sent once epoch 1 has logged its first training loss (step 544)
# lands well inside that epoch; steps_per_call=100 puts it inside a call too
INTERRUPT = ["data.n_train=32768", "data.n_eval=512", "epochs=3", "steps_per_call=100", "log_every_n_steps=32",
             "trainer.enable_progress_bar=false", "callbacks=minimal"]


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    proc = Command(["-m", "tsdyn.train", *INTERRUPT, "logger=wandb", f"hydra.run.dir={run_dir}"], ENV)
    deadline = time.monotonic() + 120
    while not any(r["epoch"] >= 1 and "loss/train" in r for r in read_metrics(run_dir)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before epoch 1"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert f"resume={run_dir}" in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = torch.load(last_checkpoint(run_dir), weights_only=False, map_location="cpu")
    assert summary["status"] == "interrupted" and summary["steps"] == ckpt["global_step"]
    assert ckpt["epoch"] == 1 and 544 <= ckpt["global_step"] < 1024  # saved inside epoch 1
    assert ckpt["tsdyn"]["in_epoch"]

    # the folder holds a run: a fresh run may not write into it, not even Hydra's config files
    stored = (run_dir / ".hydra" / "config.yaml").read_bytes()
    res = tsdyn_train(*INTERRUPT, "epochs=1", f"hydra.run.dir={run_dir}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"tsdyn: config error: run_dir='{run_dir}' is not allowed: expected a folder without a run in it "
        f"(to continue that run: python -m tsdyn.train resume={run_dir})"]
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == stored

    res = tsdyn_train(f"resume={run_dir}", "trainer.enable_progress_bar=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == stored
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows if "loss/eval" in r] == [0, 1, 2, 3]  # no epoch twice
    steps = [r["step"] for r in rows if "loss/train" in r]
    assert steps == sorted(set(steps))
    # both W&B segments carry the run folder's W&B run id
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert [p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")] == [run_id, run_id]

    run(compose_cfg([*INTERRUPT, "logger=none"], reference), reference)
    assert_same_run(run_dir, reference)


class SignalAt(pl.Callback):
    """Test helper: sends ``signum`` to this process as call ``batch`` of epoch ``epoch`` starts."""

    def __init__(self, epoch: int, batch: int, signum: int):
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


def test_preemption_checkpoints_at_the_step_then_hands_over_to_submitit(small_cfg, tmp_path):
    """Under submitit, its pre-emption handler (SIGUSR2) runs only after the checkpoint and the
    summary are written, and its exit stays an Interrupted (no sweep handler swallows it); resuming
    from that mid-call checkpoint gives the uninterrupted run."""
    run_dir = tmp_path / "run"
    handed_over = []

    def submitit_handler(signum, _frame):  # as submitit's: requeue the job (here: note it), then exit
        handed_over.append((signum, last_checkpoint(run_dir).exists(),
                            json.loads((run_dir / "summary.json").read_text())["status"]))
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        cfg = small_cfg(f"+callbacks.signal={{_target_: tests.test_reliability.SignalAt, epoch: 1, batch: 2, "
                        f"signum: {int(signal.SIGUSR2)}}}")
        with pytest.raises(Interrupted):
            run(cfg, run_dir)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_over == [(signal.SIGUSR2, True, "interrupted")]
    # 64 steps per epoch, 16 per call: the signal comes before call 2 of epoch 1, one step is taken
    assert torch.load(last_checkpoint(run_dir), weights_only=False)["global_step"] == 64 + 2 * 16 + 1

    assert run(small_cfg(), run_dir, resume=True)["status"] == "completed"
    reference = tmp_path / "reference"
    run(compose_cfg(SMALL, reference), reference)
    assert_same_run(run_dir, reference)


def test_first_signal_asks_to_stop_second_ctrl_c_stops_at_once():
    module = SimpleNamespace(stop_signal=None)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopOnSignal(module):
        os.kill(os.getpid(), signal.SIGTERM)
        assert module.stop_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def _stored_run(folder: Path, status: str | None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(SMALL, folder), folder / ".hydra" / "config.yaml")
    (folder / "metrics.jsonl").write_text('{"step": 0, "epoch": 0, "loss/eval": 1.0}\n')
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


def test_requeued_job_whose_run_completed_leaves_it_as_it_is(tmp_path, monkeypatch, capsys):
    """SLURM's pre-emption signal can come after a run's last step: the requeued job then finds the
    run completed, and must end without training, writing or failing."""
    done = _stored_run(tmp_path / "done", None)
    (done / "summary.json").write_text(json.dumps({"status": "completed", "final": {"match/layer0/mean_best": 0.75}}))
    files = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert job(compose_cfg(SMALL, done)) == 0.75
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == files
    assert "completed before this requeued job started: nothing left to do" in capsys.readouterr().err


def test_run_folder_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert continue_in(tmp_path / "new") == "new"
    killed = _stored_run(tmp_path / "killed", None)  # killed hard: no summary
    with pytest.raises(ConfigError, match=r"^run_dir='.*killed' is not allowed: expected a folder without a run"):
        continue_in(killed)
    done = _stored_run(tmp_path / "done", "completed")
    with pytest.raises(ConfigError, match=r"^run_dir='.*done' is not allowed"):
        continue_in(done)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job continues its unfinished run
    assert continue_in(killed) == "continue"
    assert continue_in(done) == "done"              # ... and leaves a completed one as it is

    with pytest.raises(ConfigError, match=r"^resume='.*' is not allowed: expected a run folder"):
        check_resumable(tmp_path / "new")
    with pytest.raises(ConfigError, match=r"^resume='.*done' is not allowed: expected an unfinished run \(this one is completed; to extend"):
        check_resumable(done)

    composed = compose_cfg(["threads=2", "optimizer.lr=0.5", "data.seed=9"], tmp_path / "other")
    cfg = resumed_config(killed, composed, [f"resume={killed}", "threads=2"])
    assert (cfg.threads, cfg.optimizer.lr, cfg.data.seed, cfg.run_dir) == (2, 0.05, 2, str(killed))
    for override, named in [("optimizer.lr=0.5", "optimizer.lr=0.5"), ("data.seed=9", "data.seed=9")]:
        with pytest.raises(ConfigError, match=rf"^{named} is not allowed: expected no override with resume="):
            resumed_config(killed, composed, [f"resume={killed}", override])


def test_wandb_failing_to_start_leaves_the_run_to_local_metrics(small_cfg, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("simulated: wandb cannot start")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = small_cfg("logger=wandb", "epochs=1")
    with caplog.at_level(logging.WARNING, logger="tsdyn"):
        summary = run(cfg, cfg.run_dir)
    assert summary["status"] == "completed"
    said = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert said == ["tsdyn: W&B could not start (RuntimeError: simulated: wandb cannot start); "
                    "this run logs to metrics.jsonl only"]
    rows = read_metrics(cfg.run_dir)
    assert [r["epoch"] for r in rows if "match/layer0/mean_best" in r] == [0, 1]
    assert not list(Path(cfg.run_dir).glob("wandb/*run-*"))


def test_frozen_module_frames_are_found_without_rescanning_sys_modules(monkeypatch):
    """What keeps ``wandb.init`` from rescanning ``sys.modules`` for every frame of an import
    (tsdyn.loggers.map_frozen_modules): a frame of frozen ``importlib._bootstrap`` has no file
    that ``inspect`` maps to a module (``getmodule`` finds None) until it is mapped."""
    import importlib._bootstrap as bootstrap
    import inspect

    from tsdyn.loggers import map_frozen_modules

    frame = bootstrap._call_with_frames_removed(lambda: sys._getframe(1))
    assert frame.f_code.co_filename == "<frozen importlib._bootstrap>"
    path = inspect.getabsfile(frame)
    monkeypatch.setattr(inspect, "modulesbyfile", {f: m for f, m in inspect.modulesbyfile.items() if f != path})
    assert inspect.getmodule(frame) is None
    map_frozen_modules()
    assert inspect.getmodule(frame) is bootstrap


def test_wandb_online_without_login_and_unwritable_home_never_blocks(tmp_path):
    home = tmp_path / "home"
    home.write_text("")  # HOME is a file: nothing can be written under it
    env = {k: v for k, v in ENV.items() if k not in ("WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR")}
    env.update(HOME=str(home), WANDB_MODE="online", WANDB_SILENT="false")
    res = tsdyn_train(*SMALL, "epochs=1", "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert out.count("W&B could not start") == 1 and "not logged in" in out
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows if "match/layer0/mean_best" in r] == [0, 1]
