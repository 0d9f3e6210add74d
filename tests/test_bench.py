"""The benchmark scripts: their pure parts, and the GPU script run on the CPU (eager variants)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402
import bench_gpu  # noqa: E402


def test_phases_split_a_process_by_its_marks():
    marks = {"fit_start": 10.0, "epoch_start": [12.0, 20.0], "last_step": [18.0, 25.0], "checkpoint": [19.0, 26.5]}
    t = bench.phases(marks, start=0.0, end=30.0, compile_s=4.0)
    assert t == {"total": 30.0, "startup": 10.0, "compile": 4.0, "training": 6.0 + 5.0 - 4.0,
                 "epoch_analyses": 2.0 + 2.0 + 1.5, "end_of_run": 3.5}
    assert sum(v for k, v in t.items() if k != "total") == t["total"]
    no_checkpoint = bench.phases({**marks, "checkpoint": []}, 0.0, 30.0, 0.0)
    assert no_checkpoint["end_of_run"] == 5.0 and no_checkpoint["epoch_analyses"] == 4.0


def test_gpu_benchmark_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert bench_gpu.main(["--device", "cpu", "--ensembles", "1", "3", "--widths", "1", "--variants", "autograd",
                           "fused", "--steps", "6", "--chunk", "2", "--reps", "1", "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 1 |")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("1", "autograd"), ("1", "fused"),
                                                            ("3", "autograd"), ("3", "fused")]
    assert all(float(r[3]) > 0 and float(r[5]) > 0 for r in rows)
    assert float(rows[2][4]) == pytest.approx(3 * float(rows[2][3]), rel=0.01)  # student-steps = E x steps


def test_gpu_benchmark_without_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would time it")
    assert bench_gpu.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().err
