"""E students trained together == the same E students trained one by one (same seeds, same batches)."""
from pathlib import Path

import pytest
import torch

from tsdyn.runfolder.reader import read_metrics
from tsdyn.train import run

pytestmark = pytest.mark.slow  # end-to-end runs: make test-fast leaves them out


def final_state(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]


@pytest.mark.parametrize("bn", ["none", "after_relu"])
def test_three_students_together_equal_three_runs(small_cfg, tmp_path, bn):
    common = ["data.n_train=6400", "epochs=3", "student.width_mult=2", f"student.bn={bn}",
              "optimizer.momentum=0.9", "student.seed=7"]  # 300 steps with momentum
    together = small_cfg(*common, "student.num_students=3")
    run(together, together.run_dir)
    state = final_state(together.run_dir)
    rows = [r for r in read_metrics(together.run_dir) if "match/layer0/mean_best" in r]
    for i in range(3):
        single = small_cfg(*common, f"student.seed={7 + i}")
        single.run_dir = str(tmp_path / f"single{i}")
        run(single, single.run_dir)
        single_state = final_state(single.run_dir)
        for key, value in single_state.items():
            if key.startswith("student."):
                torch.testing.assert_close(state[key][i], value[0], rtol=1e-4, atol=1e-5, msg=key)
        single_rows = [r for r in read_metrics(single.run_dir) if "match/layer0/mean_best" in r]
        assert [r["epoch"] for r in single_rows] == [r["epoch"] for r in rows]
        for a, b in zip(rows, single_rows):
            for layer in range(4):
                key = f"match/layer{layer}/mean_best"
                assert a[f"{key}/s{i}"] == pytest.approx(b[key], abs=1e-4)
        evals = [r for r in read_metrics(together.run_dir) if "loss/eval" in r]
        single_evals = [r for r in read_metrics(single.run_dir) if "loss/eval" in r]
        assert len(evals) == len(single_evals) == 4
        for a, b in zip(evals, single_evals):
            assert a[f"loss/eval/s{i}"] == pytest.approx(b["loss/eval"], rel=1e-4)
