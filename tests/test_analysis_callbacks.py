"""The analysis callbacks end to end: short real runs with every callback on write every artifact
of the contract (metrics keys, arrays, analysis.json) and the W&B offline run holds the media."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy.stats import rankdata

from tests.conftest import compose_cfg
from tsdyn.callbacks import per_layer
from tsdyn.config import ConfigError, validate
from tsdyn.runfolder.reader import read_metrics
from tsdyn.train import run


LAYERS = range(4)
FAST = ["data.n_train=4096", "data.n_eval=1024", "steps_per_call=16", "log_every_n_steps=32",
        "trainer.enable_progress_bar=false", "callbacks=default", "logger=wandb", "optimizer.lr=0.1"]


def load(run_dir, name, epoch):
    return dict(np.load(Path(run_dir) / "arrays" / f"{name}_epoch{epoch:03d}.npz"))


def wandb_log(run_dir) -> bytes:
    (log,) = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    return log.read_bytes()


@pytest.fixture(scope="module")
def fc_run(tmp_path_factory):
    """3 epochs, no BatchNorm, every callback on; theory every 2 epochs, media every 2 epochs."""
    run_dir = tmp_path_factory.mktemp("fc") / "run"
    cfg = compose_cfg([*FAST, "epochs=3", "callbacks.theory.every_n_epochs=2",
                       *(f"callbacks.{c}.media_every_n_epochs=2" for c in ("matching", "fanout"))], run_dir)
    validate(cfg)
    summary = run(cfg, run_dir)
    assert summary["status"] == "completed"
    return cfg, run_dir


@pytest.mark.slow  # the end-to-end runs: make test-fast leaves them out
def test_every_array_of_the_contract(fc_run):
    cfg, run_dir = fc_run
    ks_t, ks_s = [10, 15, 20, 25], [100, 150, 200, 250]
    names = sorted(p.name for p in (run_dir / "arrays").iterdir())
    for epoch in range(4):
        for name in ("match", "fanout", "drift"):
            assert f"{name}_epoch{epoch:03d}.npz" in names
    assert [n for n in names if n.startswith("theory")] == ["theory_epoch000.npz", "theory_epoch002.npz",
                                                             "theory_epoch003.npz"]
    assert not [n for n in names if n.startswith("bn_")]  # no BatchNorm: nothing to record
    match, fan, drift, theory = (load(run_dir, n, 3) for n in ("match", "fanout", "drift", "theory"))
    for layer, (kt, ks) in enumerate(zip(ks_t, ks_s)):
        assert match[f"best_layer{layer}"].shape == match[f"best_student_layer{layer}"].shape == (1, kt)
        assert match[f"corr_layer{layer}"].shape == (1, kt, ks)
        np.testing.assert_allclose(match[f"corr_layer{layer}"].max(-1), match[f"best_layer{layer}"])
        assert fan[f"fanout_layer{layer}"].shape == fan[f"best_corr_layer{layer}"].shape == (1, ks)
        np.testing.assert_allclose(fan[f"best_corr_layer{layer}"], match[f"corr_layer{layer}"].max(-2))
        assert drift[f"abs_layer{layer}"].shape == drift[f"rel_layer{layer}"].shape == (1, ks)
        assert theory[f"beta_star_layer{layer}"].shape == theory[f"h_star_layer{layer}"].shape == (1, ks + 1, kt + 1)
        assert theory[f"beta_layer{layer}"].shape == theory[f"h_layer{layer}"].shape == (1, ks + 1, ks + 1)


@pytest.mark.slow
def test_fanout_and_drift_arrays_match_the_weights(fc_run):
    """Independent check: the final fan-out norms and drift recomputed with numpy from the
    checkpoint's weights and from the student's initial weights (rebuilt from its seed)."""
    cfg, run_dir = fc_run
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    init = instantiate(cfg.student)(instantiate(cfg.teacher))  # the same seeds: the initial student
    fan, drift = load(run_dir, "fanout", 3), load(run_dir, "drift", 3)
    for layer in LAYERS:
        w = state[f"student.weights.{layer + 1}"].numpy()
        w0 = init.weights[layer + 1].detach().numpy()
        np.testing.assert_allclose(fan[f"fanout_layer{layer}"], np.linalg.norm(w, axis=1), rtol=1e-5)
        np.testing.assert_allclose(drift[f"abs_layer{layer}"], np.sqrt(((w - w0) ** 2).mean(1)), rtol=1e-4)
        np.testing.assert_allclose(drift[f"rel_layer{layer}"],
                                   np.sqrt(((w - w0) ** 2).mean(1) / (w0 ** 2).mean(1)), rtol=1e-4)


@pytest.mark.slow
def test_every_metric_key_of_the_contract(fc_run):
    cfg, run_dir = fc_run
    rows = read_metrics(run_dir)
    keys = set().union(*rows)
    for layer in LAYERS:
        expected = [f"match/layer{layer}/{k}" for k in
                    ("mean_best", "hungarian_mean", "matchcnt_0.9", "matchcnt_0.95", "matchcnt_0.99")]
        expected += [f"fanout/layer{layer}/{k}" for k in ("matched_median", "unmatched_median", "unmatched_below_1pct")]
        expected += [f"drift/layer{layer}/abs_mean", f"drift/layer{layer}/rel_mean"]
        expected += [f"theory/layer{layer}/beta_star_diag_ratio", f"theory/layer{layer}/h_star_diag_ratio"]
        expected += [f"luck/layer{layer}/top_pct_{s}/epoch{b}" for s in ("mean", "median") for b in (0, 1, 2)]
        expected += [f"luck/layer{layer}/spearman_init_vs_converge"]
        assert set(expected) <= keys, set(expected) - keys
    assert {"prune/loss_before", "prune/fanout/loss_after", "prune/random/loss_after"} <= keys
    assert all("step" in r and "epoch" in r for r in rows)
    final_eval = [r["loss/eval"] for r in rows if "loss/eval" in r][-1]
    prune = next(r for r in rows if "prune/loss_before" in r)
    assert prune["prune/loss_before"] == pytest.approx(final_eval, rel=1e-5) and prune["epoch"] == 3
    # removing half of every layer hurts
    assert prune["prune/fanout/loss_after"] > final_eval and prune["prune/random/loss_after"] > final_eval


@pytest.mark.slow
def test_luck_in_analysis_json_redrawn_from_the_arrays(fc_run):
    """The luck table recomputed with numpy from the saved correlation matrices."""
    cfg, run_dir = fc_run
    analysis = json.loads((run_dir / "analysis.json").read_text())
    assert set(analysis) == {"match", "luck", "fanout", "drift", "theory", "sparsity", "pruning"}
    luck = analysis["luck"]
    assert luck["baseline_epochs"] == [0, 1, 2] and luck["final_epoch"] == 3
    final = load(run_dir, "match", 3)
    for b in luck["baseline_epochs"]:
        base = load(run_dir, "match", b)
        for layer in LAYERS:
            c, winners = base[f"corr_layer{layer}"][0], final[f"best_student_layer{layer}"][0]
            # the winner's 0-based position in each teacher row's descending order, tied students
            # sharing the best position (scipy's "min" ranks; dead students tie at correlation 0)
            pct = np.array([rankdata(-row, method="min")[k] - 1 for row, k in zip(c, winners)])
            pct = 100 * pct / c.shape[1]
            assert luck["top_pct_mean"][layer][b] == pytest.approx(pct.mean(), rel=1e-5)
            assert luck["top_pct_median"][layer][b] == pytest.approx(np.median(pct), rel=1e-5)
            np.testing.assert_allclose(luck["top_pct"][layer][b], pct[None], rtol=1e-5)
    for layer in LAYERS:
        best = np.stack([load(run_dir, "match", e)[f"best_layer{layer}"][0] for e in range(4)])
        crossed = best > luck["threshold"]
        expected = [int(np.argmax(col)) if col.any() else None for col in crossed.T]
        assert luck["convergence_epoch"][layer][0] == expected
        np.testing.assert_allclose(luck["init_best"][layer][0], best[0], rtol=1e-6)
    assert analysis["pruning"]["removed_per_layer"] == [50, 75, 100, 125]
    assert analysis["fanout"]["threshold"] == 0.9 and len(analysis["fanout"]["matched_median"]) == 4
    last = [r for r in read_metrics(run_dir) if "drift/layer3/rel_mean" in r][-1]
    assert analysis["drift"]["rel_mean"][3] == last["drift/layer3/rel_mean"]


@pytest.mark.slow
def test_wandb_run_holds_images_histograms_and_table(fc_run):
    cfg, run_dir = fc_run
    log = wandb_log(run_dir)
    for key in ("match/heatmap", "fanout/lshape", "match/final", "fanout/layer0/log10_matched",
                "fanout/layer3/log10_unmatched", "luck/layer0/top_pct_mean/epoch0", "prune/random/loss_after"):
        assert key.encode() in log, key
    assert b"histogram" in log and b"image-file" in log and b"table-file" in log
    (files,) = (run_dir / "wandb").glob("offline-run-*/files/media")
    assert len(list(files.glob("images/match/heatmap_*.png"))) == 3      # epochs 0, 2 and 3 (the end)
    (table,) = files.glob("table/match/final_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["student", "layer", "teacher node", "best student", "correlation", "fan-out norm"]
    assert len(data["data"]) == 10 + 15 + 20 + 25
    final = load(run_dir, "match", 3)
    row = data["data"][10 + 15 + 3]  # layer 2, teacher node 3
    assert row[1:4] == [2, 3, int(final["best_student_layer2"][0, 3])]
    assert row[4] == pytest.approx(float(final["best_layer2"][0, 3]), rel=1e-5)
    assert row[5] == pytest.approx(float(load(run_dir, "fanout", 3)["fanout_layer2"][0, row[3]]), rel=1e-5)


@pytest.mark.slow
def test_batchnorm_run_records_biases_for_every_student(tmp_path):
    """BatchNorm in student and teacher, two students, one epoch (luck has only the init baseline);
    the default beta/H theory callback skips the BN nets (no theory section, no theory arrays)."""
    cfg = compose_cfg([*FAST, "epochs=1", "student.bn=after_relu", "teacher.bn=before_relu",
                       "student.num_students=2"], tmp_path / "run")
    validate(cfg)
    run(cfg, cfg.run_dir)
    run_dir = Path(cfg.run_dir)
    bn = load(run_dir, "bn", 1)
    analysis = json.loads((run_dir / "analysis.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    for layer, (kt, ks) in enumerate(zip([10, 15, 20, 25], [100, 150, 200, 250])):
        assert bn[f"student_bias_layer{layer}"].shape == (2, ks) and bn[f"teacher_bias_layer{layer}"].shape == (1, kt)
        np.testing.assert_array_equal(bn[f"student_bias_layer{layer}"], state[f"student.bns.{layer}.bias"].numpy())
        share = (bn[f"student_bias_layer{layer}"] <= 0).mean(1)
        assert analysis["bn"]["student"]["frac_nonpositive"][layer] == pytest.approx(share.mean())
        assert analysis["bn"]["teacher"]["frac_nonpositive"][layer] == pytest.approx(
            (bn[f"teacher_bias_layer{layer}"] <= 0).mean())
    row = [r for r in read_metrics(run_dir) if "bn/student/layer0/frac_nonpositive" in r][-1]
    assert row["bn/student/layer0/frac_nonpositive/s1"] == pytest.approx(
        (bn["student_bias_layer0"][1] <= 0).mean())
    assert analysis["luck"]["baseline_epochs"] == [0] and "theory" not in analysis
    assert not list((run_dir / "arrays").glob("theory_*"))
    log = wandb_log(run_dir)
    assert b"bn/student/layer3/bias" in log and b"bn/teacher/layer0/bias" in log


def test_theory_on_batchnorm_nets_refused_before_any_work_when_required(tmp_path):
    for override, key in (("student.bn=after_relu", "student.bn='after_relu'"),
                          ("teacher.bn=before_relu", "teacher.bn='before_relu'")):
        with pytest.raises(ConfigError) as err:
            validate(compose_cfg([override, "callbacks.theory.required=true"], tmp_path))
        msg = str(err.value)
        assert msg.startswith(key) and "callbacks.theory.required=true" in msg and "\n" not in msg
        validate(compose_cfg([override], tmp_path))  # the default theory callback skips BN nets
    validate(compose_cfg(["student.bn=after_relu", "~callbacks.theory"], tmp_path))
    for override, named in (("callbacks.pruning.share=1.5", "callbacks.pruning.share=1.5"),
                            ("callbacks.luck.baseline_epochs=-1", "callbacks.luck.baseline_epochs=-1"),
                            ("callbacks.theory.n_samples=0", "callbacks.theory.n_samples=0"),
                            ("callbacks.fanout.media_every_n_epochs=0", "callbacks.fanout.media_every_n_epochs=0")):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            validate(compose_cfg([override], tmp_path))


def test_per_layer_layout():
    row = {"bn/student/layer1/frac_nonpositive": 0.5, "bn/student/layer0/frac_nonpositive": 0.25,
           "bn/teacher/layer0/frac_nonpositive": 1.0, "drift/layer0/abs_mean": 3.0}
    assert per_layer(row, list(row)) == {"student": {"frac_nonpositive": [0.25, 0.5]},
                                         "teacher": {"frac_nonpositive": [1.0]}, "abs_mean": [3.0]}


@pytest.mark.slow
def test_sparsity_recomputed_from_the_teacher(fc_run):
    """The teacher's active shares and co-activation recomputed with numpy from the teacher's own
    hidden activations on the evaluation inputs; the logged means are the arrays' means."""
    cfg, run_dir = fc_run
    teacher, data = instantiate(cfg.teacher), instantiate(cfg.data)
    hidden = [h[0].detach().numpy() > 0 for h in teacher(data.eval_inputs(cfg.teacher.d, "cpu"))[1]]
    arrays = load(run_dir, "sparsity", 3)
    last = [r for r in read_metrics(run_dir) if "sparsity/teacher/layer0/active_mean" in r][-1]
    analysis = json.loads((run_dir / "analysis.json").read_text())["sparsity"]
    for layer, active in enumerate(hidden):
        np.testing.assert_allclose(arrays[f"teacher_active_layer{layer}"][0], active.mean(0), rtol=1e-5)
        both = (active.T.astype(float) @ active) / len(active)
        k = active.shape[1]
        assert last[f"sparsity/teacher/layer{layer}/coactive_mean"] == pytest.approx(
            (both.sum() - np.trace(both)) / (k * (k - 1)), rel=1e-4)
        assert last[f"sparsity/student/layer{layer}/active_mean"] == pytest.approx(
            arrays[f"student_active_layer{layer}"].mean(), rel=1e-5)
        assert analysis["teacher"]["coactive_mean"][layer] == last[f"sparsity/teacher/layer{layer}/coactive_mean"]
    assert "sparsity/teacher/layer0/coactive_mean" in analysis["report"]
