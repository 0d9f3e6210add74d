"""The notebook API (tsdyn.notebook) on short real runs, and the example notebook executed end to end."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import tsdyn
from tests.cli import interpreter
from tests.conftest import ROOT, SMALL, compose_cfg
from tests.multiruns import TINY
from tsdyn.notebook import epoch_table, load_run, load_runs
from tsdyn.train import run as train

NOTEBOOK = ROOT / "docs" / "examples" / "main_job.ipynb"


def hydra_run(run_dir: Path, *overrides: str, base: list[str] = SMALL) -> Path:
    """A short run in-process, with the ``.hydra/`` files that ``python -m tsdyn.train`` would write
    (``base``: the overrides of a small run, node matching and the checkpoint only)."""
    cfg = compose_cfg([*base, *overrides], run_dir)
    assert train(cfg, run_dir)["status"] == "completed"
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return run_dir


@pytest.fixture(scope="module")
def two_students(tmp_path_factory):
    """3 epochs, two students, node matching and the checkpoint."""
    return load_run(hydra_run(tmp_path_factory.mktemp("nb") / "run", "student.num_students=2"))


def test_metrics_table_holds_the_runs_values(two_students):
    run = two_students
    final = run.summary["final"]
    assert list(run.metrics.index) == [0, 1, 2, 3]
    last = run.metrics.iloc[-1]
    for key in ("match/layer0/mean_best", "match/layer0/mean_best/s0", "match/layer0/mean_best/s1", "loss/eval"):
        assert last[key] == final[key]
    assert last["step"] == run.summary["steps"] == 3 * 64
    assert "loss/train" not in run.metrics and run.steps["loss/train"].iloc[-1] == final["loss/train"]
    assert list(run.steps.index) == [32 * i for i in range(1, 7)] and run.steps["epoch"].iloc[-1] == 2


def test_epoch_table_keeps_each_epochs_last_value_and_reads_null_as_nan():
    rows = [{"step": 0, "epoch": 0, "a": 1.0}, {"step": 5, "epoch": 0, "loss/train": 9.0, "loss/train/s0": 8.0},
            {"step": 10, "epoch": 1, "a": 2.0, "b": None}, {"step": 10, "epoch": 1, "a": 3.0}]
    table = epoch_table(rows)
    assert list(table.columns) == ["step", "a", "b"] and list(table.index) == [0, 1]
    assert table.loc[1, "a"] == 3.0 and np.isnan(table.loc[1, "b"]) and np.isnan(table.loc[0, "b"])
    assert list(table["step"]) == [0, 10]


def test_nets_are_the_checkpoints_and_each_student_is_its_member(two_students):
    run = two_students
    x = run.eval_inputs()
    out, _ = run.student(x)
    for k, member in enumerate(run.students):
        torch.testing.assert_close(member(x)[0][0], out[k], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    snap = run.snapshot()   # the nets at the end reproduce the last epoch's logged loss and saved matrices
    assert snap.epoch == 3 and snap.step == 3 * 64
    np.testing.assert_allclose(snap.eval_loss.numpy(), [run.metrics[f"loss/eval/s{k}"].iloc[-1] for k in range(2)],
                               rtol=1e-5)
    saved = run.arrays("match", epoch=3)
    for layer, corr in enumerate(snap.corr):
        np.testing.assert_allclose(corr.numpy(), saved[f"corr_layer{layer}"], atol=1e-6)


def test_correlations_on_new_inputs_are_pearsons(two_students):
    run = two_students
    x = run.data.sample(700, run.teacher.d, torch.Generator().manual_seed(7))
    snap = run.snapshot(x)
    xs = x.double().numpy()
    for k, member in enumerate(run.students):   # layer 0 by hand: relu(x W^T + b)
        w, b = member.weights[0][0].double().numpy(), member.biases[0][0].double().numpy()
        np.testing.assert_allclose(snap.student_hidden[0][k].numpy(), np.maximum(xs @ w.T + b, 0), atol=1e-4)
    for layer, corr in enumerate(snap.corr):
        t = snap.teacher_hidden[layer].double().numpy()
        for k in range(2):
            s = snap.student_hidden[layer][k].double().numpy()
            with np.errstate(invalid="ignore"):
                expected = np.corrcoef(t.T, s.T)[:t.shape[1], t.shape[1]:]  # [K_t, K_s]; NaN for a silent node
            expected[:, s.std(0) == 0] = 0.0                                # the API: a silent student node gets 0
            np.testing.assert_allclose(corr[k].numpy(), expected, atol=2e-5)
        assert np.nanmax(corr.numpy()) > 0.5


def test_arrays_by_name_and_epoch(two_students):
    run = two_students
    assert run.array_names() == ["match"]
    every = run.arrays("match")
    assert list(every) == [0, 1, 2, 3]
    assert every[2] is run.arrays("match", epoch=2)
    assert every[3]["corr_layer1"].shape == (2, 15, 150)
    with pytest.raises(FileNotFoundError, match="saved: match"):
        run.arrays("fanout")
    with pytest.raises(FileNotFoundError, match=r"epochs saved: \[0, 1, 2, 3\]"):
        run.arrays("match", epoch=7)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(run.path / "arrays")


def test_load_runs_one_row_group_per_job_with_the_swept_key(tmp_path):
    for job, width in enumerate((1, 2)):
        hydra_run(tmp_path / str(job), "epochs=1", f"student.width_mult={width}", "student.seed=3")
    table = load_runs(tmp_path)
    assert list(table.columns[:5]) == ["job", "group", "epochs", "student.width_mult", "student.seed"]
    assert table.groupby("job").size().to_dict() == {"0": 2, "1": 2}
    for job, width in enumerate((1, 2)):
        rows = table[table["job"] == str(job)]
        assert set(rows["student.width_mult"]) == {width} and set(rows["group"]) == {f"width_mult {width}"}
        assert list(rows["epoch"]) == [0, 1] and set(rows["status"]) == {"completed"}
        final = json.loads((tmp_path / str(job) / "summary.json").read_text())["final"]
        assert rows["match/layer0/mean_best"].iloc[-1] == final["match/layer0/mean_best"]


def test_import_tsdyn_is_light_and_the_api_lazy():
    code = "import sys, tsdyn; print(sorted({'torch', 'pandas', 'tsdyn.notebook'} & set(sys.modules)))"
    out = interpreter(["-c", code])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert tsdyn.load_run is load_run and tsdyn.load_runs is load_runs
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tsdyn.nope  # noqa: B018


@pytest.mark.slow
def test_example_notebook_runs_on_a_short_main_job(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the run in this process (its command line is tests/test_cli.py's subject), every analysis but the theory
    run_dir = hydra_run(tmp_path / "run", *TINY, "epochs=2", "student.num_students=2", "logger=none",
                        "callbacks.theory=null", base=[])
    monkeypatch.setenv("TSDYN_RUN", str(run_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    # and one cell of ours at the end: the notebook API never imports Lightning (~5 s of start-up)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sorted(m for m in sys.modules if 'lightning' in m))"))
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300).execute()   # raises on a failing cell
    assert nb.cells.pop().outputs[0]["text"] == "[]\n"
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2            # the L-shape and the luck curve
    assert "completed after 2 epochs, 2 students" in outputs[0]["text"]
    assert "<table" in outputs[1]["data"]["text/html"]                           # the metrics table
