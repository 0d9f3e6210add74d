"""SLURM for real, on a private one-node cluster (the ``slurm_cluster`` fixture, tests/slurm_cluster.py):
a sweep preset runs as one array under ``hydra/launcher=slurm`` and the report reads it; a failed
task is recorded in its folder while the others complete; a task pre-empted with
``scancel --signal=USR2`` checkpoints, is requeued, resumes and ends exactly as an uninterrupted
run (its twin task, the same config, is the uninterrupted run); the W&B group spans the tasks; no
sacct warning on a cluster without accounting. Plus the pieces that need no cluster (squeue
parsing, threads from SLURM)."""
import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.cli import Command
from tests.test_reliability import assert_same_run
from tsdyn.report import main as report
from tsdyn.runfolder.reader import find_runs, read_metrics
from tsdyn.slurm import GONE, SqueueWatcher, set_threads

# three tasks of the width preset, one CPU each (this node has 2): tasks 0 and 2, the same config
# (width_mult 2), train 3 short epochs of 512 steps; task 0 is pre-empted early in its first epoch (a
# few seconds of training still ahead: the signal must not come after its last step) and task 2 runs
# uninterrupted, the reference task 0 must end as; task 1 (width_mult 0) is refused, a failed task
SWEEP = ["sweep=width", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "student.width_mult=2,0,2",
         "student.num_students=1", "epochs=3", "data.n_train=32768", "data.n_eval=512", "steps_per_call=16",
         "log_every_n_steps=16", "trainer.enable_progress_bar=false", "callbacks=minimal", "logger=wandb"]
PREEMPTED, TWIN = 0, 2


def run_sweep(env: dict[str, str], sweep_dir: Path) -> SimpleNamespace:
    """The sweep through the cluster; task PREEMPTED gets USR2 once it has logged its first training
    loss (as SLURM's pre-emption, or the time limit through submitit, would)."""
    start = time.monotonic()
    proc = Command(["-m", "tsdyn.train", *SWEEP, f"hydra.sweep.dir={sweep_dir}"], env, merge_stderr=True)
    try:
        run_dir = sweep_dir / str(PREEMPTED)
        while not any("loss/train" in r for r in read_metrics(run_dir)):
            assert proc.poll() is None and time.monotonic() < start + 300, "the task ended before it trained"
            time.sleep(0.05)
        array_id = next((sweep_dir / ".submitit").glob(f"*_{PREEMPTED}")).name.split("_")[0]
        subprocess.run(["scancel", "--signal=USR2", f"{array_id}_{PREEMPTED}"], env=env, check=True)
    finally:
        proc.wait(timeout=400)
    output = proc.stdout
    print(f"\n$ python -m tsdyn.train {' '.join(SWEEP)} hydra.sweep.dir={sweep_dir}\n{output}"
          f"(exit {proc.returncode}, {time.monotonic() - start:.0f} s)")
    return SimpleNamespace(dir=sweep_dir, returncode=proc.returncode, output=output, array_id=array_id,
                           runs={r.path.name: r for r in find_runs(sweep_dir)})


def job_log(array_run, task: int) -> str:
    folder = array_run.dir / ".submitit" / f"{array_run.array_id}_{task}"
    return (folder / f"{array_run.array_id}_{task}_0_log.out").read_text()


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_preset_on_a_slurm_cluster(slurm_cluster, tmp_path):
    """One array run, checked four ways (one test: one xdist worker runs it, one cluster serves it)."""
    array_run = run_sweep(slurm_cluster, tmp_path / "sweep")
    assert array_run.returncode == 0, array_run.output[-3000:]
    runs_as_one_array_and_the_report_reads_it(array_run)
    failed_task_is_recorded_in_its_folder_and_the_others_complete(array_run)
    preempted_task_is_requeued_and_ends_as_its_uninterrupted_twin(array_run)
    wandb_group_spans_the_tasks(array_run)


def runs_as_one_array_and_the_report_reads_it(array_run):
    # one array job, one task per job of the sweep, asking for one CPU and no GPU
    assert sorted(p.name for p in (array_run.dir / ".submitit").glob("[!.]*")) == \
        [array_run.array_id] + [f"{array_run.array_id}_{i}" for i in range(3)]
    script = (array_run.dir / ".submitit" / array_run.array_id / f"{array_run.array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%" in script and "#SBATCH --cpus-per-task=1" in script
    assert "gpu" not in script and "gres" not in script
    # no accounting on this cluster: said once, no sacct warning
    assert array_run.output.count("job states come from squeue") == 1
    assert "sacct" not in array_run.output.replace("no sacct", "")
    assert report([str(array_run.dir), "--figures", "none"]) == 0   # the table (the figures: test_report)
    md = (array_run.dir / "report" / "report.md").read_text()
    assert "3 runs in 2 groups" in md and "status: 2 completed, 1 failed" in md
    assert "| width_mult 2 | 2/2 | 2 | 3 |" in md and "| width_mult 0 | 0/1 | 0 | - |" in md


def failed_task_is_recorded_in_its_folder_and_the_others_complete(array_run):
    assert {name: r.status for name, r in array_run.runs.items()} == \
        {"0": "completed", "1": "failed", "2": "completed"}
    failed = array_run.runs["1"].summary
    assert failed["exit_code"] == 2 and "student.width_mult=0 is not allowed" in failed["error"]
    for name in ("0", "2"):
        assert [r["epoch"] for r in read_metrics(array_run.runs[name].path) if "loss/eval" in r] == [0, 1, 2, 3]


def preempted_task_is_requeued_and_ends_as_its_uninterrupted_twin(array_run):
    log = job_log(array_run, PREEMPTED)
    assert "this job is preempted" in log and f"Requeued job {array_run.array_id}_{PREEMPTED}" in log
    assert log.count("Starting with JobEnvironment") == 2          # the first run and the requeued one
    assert job_log(array_run, TWIN).count("Starting with JobEnvironment") == 1
    run_dir, twin = array_run.runs[str(PREEMPTED)].path, array_run.runs[str(TWIN)].path
    steps = [r["step"] for r in read_metrics(run_dir) if "loss/train" in r]
    assert steps == sorted(set(steps))                             # no step twice

    # the same config run uninterrupted (task 2): the same rows, weights and final metrics
    assert_same_run(run_dir, twin)
    final, uninterrupted = (array_run.runs[str(t)].summary["final"] for t in (PREEMPTED, TWIN))
    assert final == uninterrupted
    shown = ("loss/eval", "match/layer0/mean_best")
    print(f"\npre-empted and requeued task: final {json.dumps({k: final[k] for k in shown})}"
          f"\nuninterrupted run:            final {json.dumps({k: uninterrupted[k] for k in shown})}")


def wandb_group_spans_the_tasks(array_run):
    group = f"width-{array_run.dir.parent.name}_{array_run.dir.name}".encode()
    logs = {name: sorted((array_run.runs[name].path / "wandb").glob("offline-run-*/run-*.wandb")) for name in ("0", "2")}
    assert [len(logs["0"]), len(logs["2"])] == [2, 1]              # the requeued task: two parts of one W&B run
    assert len({p.parent.name.rsplit("-", 1)[1] for p in logs["0"]}) == 1
    for name in ("0", "2"):
        for path in logs[name]:
            data = path.read_bytes()
            assert group in data and b"student.width_mult=2" in data
    assert not (array_run.runs["1"].path / "wandb").exists()       # refused before W&B started


def test_squeue_watcher_reads_states_and_ends_jobs_squeue_forgot():
    watcher = SqueueWatcher(delay_s=60)
    for job in ("7_0", "7_1", "7_2", "7_3", "6"):
        watcher.register_job(job)
    info = watcher.read_info("7_[2-3%64]|PENDING|\n7_0|COMPLETED|vm\n7_1|RUNNING|vm\n9|RUNNING|vm\n")
    assert {job: info[job]["State"] for job in ("7_0", "7_1", "7_2", "7_3", "6")} == \
        {"7_0": "COMPLETED", "7_1": "RUNNING", "7_2": "PENDING", "7_3": "PENDING", "6": GONE}
    watcher._info_dict.update(info)
    assert [watcher.is_done(job, mode="cache") for job in ("7_0", "7_1", "7_2", "6")] == [True, False, False, True]


def test_threads_follow_the_cpus_slurm_gives_unless_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        set_threads(None)
        assert torch.get_num_threads() == 3
        set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

