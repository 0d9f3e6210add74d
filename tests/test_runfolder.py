"""The run-folder package: the writer's files read back by the reader, rewind on resume, the
state checks and the lock against a second live process."""
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import locked_by_another_process
from tsdyn.config import ConfigError
from tsdyn.runfolder import paths
from tsdyn.runfolder.lock import RunLock
from tsdyn.runfolder.reader import find_runs, read_metrics
from tsdyn.runfolder.state import check_resumable, continue_in, status
from tsdyn.runfolder.writer import Recorder, member_scalars


def test_member_scalars_mean_min_max_and_each_student():
    row = member_scalars({"a": torch.tensor([1.0, float("nan"), 3.0]), "b": torch.tensor([2.0])})
    assert row["a"] == 2.0 and row["a/min"] == 1.0 and row["a/max"] == 3.0   # NaN left out of the stats
    assert row["a/s0"] == 1.0 and math.isnan(row["a/s1"]) and row["a/s2"] == 3.0
    assert row["b"] == 2.0 and "b/s0" not in row                           # one value: no per-student keys


def test_written_rows_arrays_and_summary_read_back(tmp_path):
    rec = Recorder(tmp_path)
    rec.log_members(None, {"match/layer0/mean_best": torch.tensor([0.5, 0.7])}, epoch=0)
    rec.log(None, {"loss/train": 1.0}, epoch=0, step=10)
    rec.log_members(None, {"match/layer0/mean_best": torch.tensor([0.8, 0.9])}, epoch=1, step=20)
    rec.save_arrays("match", 1, {"corr_layer0": torch.ones(2, 3, 4)})
    rec.write_summary(None, {"status": "completed", "final": rec.last})
    rec.write_analysis("match", {"report": ["match/layer0/mean_best"]})
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("student: {num_students: 2}\n")

    run = find_runs(tmp_path)[0]
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 0, 1]
    assert run.status == "completed" and run.num_students == 2
    np.testing.assert_allclose(run.series("match/layer0/mean_best")[1], [0.8, 0.9])
    np.testing.assert_allclose(run.final("match/layer0/mean_best"), [0.8, 0.9])
    assert run.keys() == {"match/layer0/mean_best", "loss/train"}
    assert run.array_epochs("match") == [1] and run.arrays("match", 1)["corr_layer0"].shape == (2, 3, 4)
    assert run.report_keys() == {"match/layer0/mean_best"}
    assert paths.arrays_file(tmp_path, "match", 1).name == "match_epoch001.npz"


def test_rewind_cuts_the_metrics_file_and_the_arrays_back_and_reloads_last(tmp_path):
    rec = Recorder(tmp_path)
    rec.log(None, {"x": 1.0}, epoch=0)
    rec.save_arrays("match", 0, {"best": np.zeros(2)})
    kept, arrays = rec.metrics_bytes(), rec.arrays_files()
    rec.log(None, {"x": 2.0, "y": 5.0}, epoch=1)
    rec.save_arrays("match", 1, {"best": np.ones(2)})
    with open(tmp_path / paths.METRICS, "a") as f:
        f.write('{"torn": ')                               # a crash in the middle of a row
    resumed = Recorder(tmp_path)
    resumed.rewind(kept, arrays)
    assert read_metrics(tmp_path) == [{"step": 0, "epoch": 0, "x": 1.0}] and resumed.last == {"x": 1.0}
    assert arrays == ["match_epoch000.npz"] and resumed.arrays_files() == arrays
    resumed.save_arrays("match", 1, {"best": np.ones(2)})
    resumed.rewind(kept)                                     # a checkpoint that predates the list: all kept
    assert resumed.arrays_files() == ["match_epoch000.npz", "match_epoch001.npz"]


def test_state_of_a_folder(tmp_path):
    assert continue_in(tmp_path) == "new" and status(tmp_path) is None
    Recorder(tmp_path).log(None, {"x": 1.0}, epoch=0)
    with pytest.raises(ConfigError, match="run_dir=.*resume="):
        continue_in(tmp_path)
    with pytest.raises(ConfigError, match="resume=.*a run folder"):
        check_resumable(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")
    check_resumable(tmp_path)                                 # no summary: unfinished
    (tmp_path / paths.SUMMARY).write_text(json.dumps({"status": "completed"}))
    with pytest.raises(ConfigError, match="an unfinished run \\(this one is completed; to extend it"):
        check_resumable(tmp_path)


def test_lock_refuses_a_folder_another_live_process_writes(tmp_path):
    with locked_by_another_process(tmp_path) as pid:
        with pytest.raises(ConfigError, match=f"run_dir='{tmp_path}'.*process {pid} on .* is"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):                                   # released when its process ended
        assert (tmp_path / paths.LOCK).read_text().startswith("process ")
