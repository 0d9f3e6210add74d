"""``tsdyn.report``: figures and the summary table from run folders alone. Synthetic run folders
written here by hand after the artifact contract (numbers known exactly), and one small real
multirun through the CLI."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
import yaml
import matplotlib.pyplot as plt
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex

from tests.multiruns import multirun
from tsdyn import plots
from tsdyn.report import FIGURES, band, main, top_sorted, write_report
from tsdyn.report.aggregate import PALETTE, WITH_UNFINISHED, group_runs, series_band, value_label
from tsdyn.report.figures import DPI, STYLE, fig_curves, fig_fanout_nodes, same_ylim, sorted_blocks
from tsdyn.report.markdown import markdown
from tsdyn.runfolder.reader import find_runs, read_metrics

KT = [3, 4]          # teacher hidden widths of the synthetic runs (layer 0 lowest)
E = 2                # students per run
EPOCHS = 2


def write_run(folder: Path, width_mult: int, seed: int, rng, status: str = "completed",
              init: str = "default", arrays: bool = True) -> dict:
    """A run folder after the contract; returns its final per-student layer-0 mean best and eval loss."""
    ks = [k * width_mult for k in KT]
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"student.width_mult={width_mult}", f"student.seed={seed}"]))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "teacher": {"ks": KT, "seed": 1}, "run_dir": "${hydra:runtime.output_dir}", "epochs": EPOCHS,
        "student": {"width_mult": width_mult, "num_students": E, "seed": seed, "init": init}}))
    rows, final = [], {}
    for epoch in range(EPOCHS + 1):
        values = {}
        for layer in range(len(KT)):
            values[f"match/layer{layer}/mean_best"] = rng.uniform(0.3, 1.0, E)
        values["loss/eval"] = rng.uniform(0.01, 1.0, E)
        if epoch == EPOCHS:
            for layer in range(len(KT)):
                for b in range(EPOCHS):
                    values[f"luck/layer{layer}/top_pct_mean/epoch{b}"] = rng.uniform(1, 50, E)
                    values[f"luck/layer{layer}/top_pct_median/epoch{b}"] = rng.uniform(1, 50, E)
        if status == "diverged" and epoch == EPOCHS:
            values = {k: np.zeros(E) for k in values}
        row = {"step": epoch * 10, "epoch": epoch}
        for key, v in values.items():
            row.update({key: float(v.mean()), f"{key}/min": float(v.min()), f"{key}/max": float(v.max()),
                        **{f"{key}/s{i}": float(x) for i, x in enumerate(v)}})
        rows.append(row)
        final.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
        if arrays:
            (folder / "arrays").mkdir(exist_ok=True)
            path = folder / "arrays" / "{}_epoch{:03d}.npz"
            save = lambda name, **a: np.savez_compressed(str(path).format(name, epoch), **a)  # noqa: E731
            corr = {f"corr_layer{l}": rng.uniform(-1, 1, (E, kt, ks)) for l, (kt, ks) in enumerate(zip(KT, ks))}
            save("match", **corr, **{f"best_student_layer{l}": corr[f"corr_layer{l}"].argmax(-1) for l in range(2)},
                 **{f"best_layer{l}": corr[f"corr_layer{l}"].max(-1) for l in range(2)})
            save("fanout", **{f"fanout_layer{l}": rng.uniform(1e-4, 2, (E, k)) for l, k in enumerate(ks)},
                 **{f"best_corr_layer{l}": corr[f"corr_layer{l}"].max(-2) for l in range(2)})
            save("bn", **{f"student_bias_layer{l}": rng.normal(-0.1, 0.1, (E, k)) for l, k in enumerate(ks)})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"status": status, "epochs": EPOCHS, "final": final,
                                                     **({"diverged_at_step": 15} if status == "diverged" else {})}))
    return {"mean_best": values["match/layer0/mean_best"], "loss": values["loss/eval"]}


def table_rows(md: str, section: str) -> dict[str, list[str]]:
    """The rows of the markdown table under ``## <section>``, by their first cell."""
    body = md.split(f"## {section}")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows[1:]}


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", cell)]


def synthetic_runs(folder: Path) -> tuple[Path, dict]:
    """Five synthetic runs in ``folder`` (width 1: two seeds; width 2, teacher-initialised: two
    seeds and one diverged) and their final values."""
    rng = np.random.default_rng(0)
    finals = {}
    for num, (width, seed, status) in enumerate([(1, 0, "completed"), (1, 1, "completed"), (2, 0, "completed"),
                                                 (2, 1, "completed"), (2, 2, "diverged")]):
        init = "perturb" if width == 2 else "default"
        finals[num] = write_run(folder / str(num), width, seed, rng, status, init=init)
    return folder, finals


@pytest.fixture
def synthetic(tmp_path):
    return synthetic_runs(tmp_path)


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory, worker_id):
    """The synthetic runs and the path of their default report, drawn once per test session (~8 s):
    under xdist by the first worker to need it, in the folder the workers share, while the others wait."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared if worker_id == "master" else shared.parent
    folder, path = shared / "synthetic", shared / "synthetic" / "report" / "report.md"
    with FileLock(shared / "synthetic.lock"):
        if not path.exists():
            synthetic_runs(folder)
            write_report(folder)
    _, finals = synthetic_runs(tmp_path_factory.mktemp("synthetic"))  # the same values (one seed), computed here
    return folder, finals, path


@pytest.mark.slow  # draws and saves every figure
def test_report_writes_every_figure_and_the_table_matches(synthetic_report):
    folder, finals, path = synthetic_report
    out = path.parent
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").exists(), name
    md = path.read_text()
    assert "Skipped figures" not in md and "Layer 0 = lowest hidden layer" in md
    rows = table_rows(md, "Final values")
    assert set(rows) == {"width_mult 1", "width_mult 2"}   # seeds pooled, labelled by value
    for label, runs in (("width_mult 1", [0, 1]), ("width_mult 2", [2, 3])):  # run 4 diverged
        cells = rows[label]
        assert cells[0] == f"{len(runs)}/{len(runs) + (label.endswith('2'))}" and cells[1] == str(E * len(runs))
        for col, key in ((3, "loss"), (4, "mean_best")):
            values = np.concatenate([finals[i][key] for i in runs])
            assert numbers(cells[col]) == pytest.approx([values.mean(), values.min(), values.max()], abs=6e-5)
    assert "| 4 | diverged | diverged at step 15 |" in md


@pytest.mark.slow  # draws and saves every figure
def test_who_wins_counts_teacher_node_j_won_by_student_j(synthetic_report):
    folder, _, path = synthetic_report
    md = path.read_text()
    rows = table_rows(md, "Who wins")
    assert list(rows) == ["width_mult 2"]          # the teacher-initialised group only
    shares = []
    for num in (2, 3):
        idx = np.load(folder / str(num) / "arrays" / f"match_epoch{EPOCHS:03d}.npz")["best_student_layer1"]
        shares += [np.mean(idx[e] == np.arange(KT[1])) for e in range(E)]
    assert numbers(rows["width_mult 2"][1]) == pytest.approx([np.mean(shares), min(shares), max(shares)],
                                                                     abs=6e-5)


@pytest.mark.slow  # reads the whole report
def test_figures_option_draws_the_named_figures_and_the_same_table(synthetic_report, tmp_path, capsys):
    folder, _, full = synthetic_report
    assert main([str(folder), "--out", str(tmp_path / "two"), "--figures", "width,curves"]) == 0
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"report.md", *(f"{n}.{e}" for n in ("curves", "width")
                                                                          for e in ("png", "pdf"))}
    md, full_md = (tmp_path / "two" / "report.md").read_text(), full.read_text()
    assert md.split("## Figures")[0] == full_md.split("## Figures")[0]        # every table as in the full report
    assert "not drawn (left out by `--figures`): `luck`, `fanout_nodes`," in md and "`curves.png`" in md
    assert main([str(folder), "--out", str(tmp_path / "none"), "--figures", "none"]) == 0
    assert [p.name for p in (tmp_path / "none").iterdir()] == ["report.md"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(folder), "--out", str(tmp_path / "bad"), "--figures", "curves,curvs"])
    assert stop.value.code == 2 and not (tmp_path / "bad").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m tsdyn.report: error: --figures: 'curvs' is not a figure; expected all, none or names from "
        + ", ".join(FIGURES))


@pytest.mark.slow  # draws and saves the figures it has data for
def test_missing_data_skips_figures_with_a_note(tmp_path):
    rng = np.random.default_rng(1)
    write_run(tmp_path / "0", 1, 0, rng, arrays=False)
    write_run(tmp_path / "1", 1, 1, rng, status="failed", arrays=False)
    md = write_report(tmp_path).read_text()
    written = {p.stem for p in (tmp_path / "report").glob("*.png")}
    assert written == {"curves", "luck"}
    notes = dict(re.findall(r"^- `(\w+)`: (.+)$", md.split("## Skipped figures")[1], re.M))
    assert set(notes) == set(FIGURES) - written
    assert notes["width"].startswith("fewer than two student.width_mult values")
    assert notes["fanout_nodes"].startswith("no arrays/fanout_epochNNN.npz")
    assert "| 1 | failed |" in md


def test_top_sorted_and_band():
    corr = np.array([[[0.1, 0.9, 0.5], [np.nan, np.nan, np.nan]]])          # E=1, K_t=2 (one dead), K_s=3
    assert top_sorted(corr, k=2).tolist() == [[0.9, 0.5]]
    assert band([np.array([1.0, np.nan]), np.array([3.0])])[:4] == (2.0, 1.0, 3.0, 2)
    assert band([np.array([1.0, np.nan]), np.array([3.0])], "sd") == pytest.approx((2.0, 2 - 2 ** 0.5, 2 + 2 ** 0.5, 2))
    assert band([np.array([4.0])], "sd") == (4.0, 4.0, 4.0, 1)


def test_value_labels_and_sorted_blocks():
    assert value_label({"student.width_mult": "5", "teacher.d_out": "20"}) == "width_mult 5, d_out 20"
    assert value_label({"student.bn": "none", "teacher.bn": "after_relu", "epochs": "3"}) == \
        "student.bn none, teacher.bn after_relu, epochs 3"
    assert value_label({}) == "all runs"
    assert value_label({"student": "{init:perturb,perturb_std:0.1}"}) == "init perturb, perturb_std 0.1"
    assert value_label({"teacher": "{ks:[50,75,100,125]}", "student.bn": "none"}) == "ks [50, 75, 100, 125], bn none"
    assert sorted_blocks(np.array([3.0, 1.0, 2.0, 5.0, 4.0]), 2).tolist() == [3.0, 1.0, 5.0, 4.0, 2.0]
    assert sorted_blocks(np.array([3.0, 1.0, 2.0]), 0).tolist() == [3.0, 2.0, 1.0]


def png_dpi(path: Path) -> float:
    """The resolution a PNG file states (its pHYs chunk: pixels per metre), in dots per inch."""
    data = path.read_bytes()
    at = data.index(b"pHYs") + 4
    return int.from_bytes(data[at:at + 4], "big") * 0.0254


def inside(fig) -> bool:
    """Whether everything ``fig`` draws (titles, labels, tick labels, legends) lies within its edges."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()                                       # lays the figure out (constrained layout)
    box = fig.get_tightbbox(canvas.get_renderer())      # inches
    return box.x0 >= -0.01 and box.y0 >= -0.01 and box.x1 <= fig.get_figwidth() + 0.01 \
        and box.y1 <= fig.get_figheight() + 0.01


def drawn(folder: Path, make):
    """The groups of the runs in ``folder``, figure ``make`` of them (mean +- sd bands) and its
    visible panels, after checking that it draws nothing beyond its edges."""
    groups = group_runs(find_runs(folder))
    with rc_context(STYLE):
        fig, _ = make(groups, "sd")
        assert inside(fig)
    return groups, fig, [ax for ax in fig.axes if ax.get_visible()]


def test_groups_ignore_seeds_and_keys_that_do_not_change_results(tmp_path):
    for name, overrides in {"0": ["student.width_mult=1", "threads=1", "trainer.enable_progress_bar=False"],
                            "1": ["student.width_mult=1", "student.seed=1", "trainer.enable_progress_bar=false"],
                            "2": ["student.width_mult=2", "trainer.accelerator=cpu"]}.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    groups = group_runs(find_runs(tmp_path))
    assert [(g.label, [r.path.name for r in g.runs]) for g in groups] == \
        [("width_mult 1", ["0", "1"]), ("width_mult 2", ["2"])]


def test_curves_figure_is_paper_ready(synthetic):
    groups, fig, axes = drawn(synthetic[0], fig_curves)
    layer_axes = axes[:len(KT)]
    assert len({ax.get_ylim() for ax in layer_axes}) == 1                       # one y-range across layers
    for ax in axes:                                                              # integer epoch ticks
        assert all(float(t).is_integer() for t in ax.get_xticks())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["width_mult 1", "width_mult 2"]
    assert [to_hex(g.color) for g in groups] == [c.lower() for c in PALETTE[:2]]
    # the band of group "width_mult 1", layer 0: mean +- sd (ddof 1) over 2 runs x 2 students per epoch
    runs = [r for r in groups[0].counted]
    per_epoch = np.array([[row[f"match/layer0/mean_best/s{i}"] for r in runs for i in range(E)
                           for row in [[x for x in read_metrics(r.path) if x["epoch"] == epoch][-1]]]
                          for epoch in range(EPOCHS + 1)])
    line = layer_axes[0].lines[0]
    assert line.get_ydata() == pytest.approx(per_epoch.mean(1))
    fill = layer_axes[0].collections[0].get_paths()[0].vertices[:, 1]           # the band's outline
    sd = per_epoch.std(1, ddof=1)
    assert fill.min() == pytest.approx((per_epoch.mean(1) - sd).min()) and \
        fill.max() == pytest.approx((per_epoch.mean(1) + sd).max())


def test_unfinished_runs_count_at_their_last_evaluated_epoch_only_when_asked(tmp_path):
    """Run 0 completed; run 1 still training (no summary yet), run 2 stopped by a signal (no final
    values): both evaluated through epoch 1, and a training-loss row of epoch 2 under way."""
    rng = np.random.default_rng(1)
    for num, status in enumerate(["completed", "unfinished", "interrupted"]):
        write_run(tmp_path / str(num), 1, num, rng, status)
        if status != "completed":
            rows = read_metrics(tmp_path / str(num))[:EPOCHS]
            rows.append({"step": 25, "epoch": EPOCHS, "loss/train": 0.5, "loss/train/s0": 0.4, "loss/train/s1": 0.6})
            (tmp_path / str(num) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            summary = tmp_path / str(num) / "summary.json"
            summary.unlink() if status == "unfinished" else summary.write_text(json.dumps({"status": status}))
    key = "match/layer0/mean_best"
    last = {num: [r for r in read_metrics(tmp_path / str(num)) if key in r][-1] for num in range(3)}
    per_student = {num: [last[num][f"{key}/s{i}"] for i in range(E)] for num in range(3)}

    assert main([str(tmp_path), "--figures", "none"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    row = table_rows(md, "Final values")["all runs"]
    assert row[:3] == ["1/3", str(E), str(EPOCHS)]
    assert numbers(row[4]) == pytest.approx([np.mean(per_student[0]), min(per_student[0]), max(per_student[0])], abs=1e-4)
    assert set(table_rows(md, "Runs not counted")) == {"1", "2"} and "Runs not finished" not in md

    assert main([str(tmp_path), "--figures", "curves", "--unfinished"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    row = table_rows(md, "Final values")["all runs"]
    assert row[:3] == ["3/3", str(3 * E), f"{EPOCHS - 1} of {EPOCHS},{EPOCHS}"]
    pooled = sum(per_student.values(), [])
    assert numbers(row[4]) == pytest.approx([np.mean(pooled), min(pooled), max(pooled)], abs=1e-4)
    assert table_rows(md, "Runs not finished (counted at their last evaluated epoch)") == \
        {"1": ["unfinished", f"{EPOCHS - 1} of {EPOCHS}"], "2": ["interrupted", f"{EPOCHS - 1} of {EPOCHS}"]}
    assert "Runs not counted" not in md and (tmp_path / "report" / "curves.png").exists()
    group = group_runs(find_runs(tmp_path), WITH_UNFINISHED)[0]
    epochs, stats = series_band(group, key, "minmax")          # the last epoch: the completed run alone
    assert list(epochs) == list(range(EPOCHS + 1))
    assert stats[-1] == pytest.approx([np.mean(per_student[0]), min(per_student[0]), max(per_student[0])])
    assert stats[-2, 1] == pytest.approx(min(r[f"{key}/s{i}"] for num in range(3) for i in range(E)
                                             for r in read_metrics(tmp_path / str(num)) if r["epoch"] == EPOCHS - 1 and key in r))


def test_fanout_figure_sorts_each_block(synthetic):
    groups, _, axes = drawn(synthetic[0], fig_fanout_nodes)
    assert len({ax.get_ylim() for ax in axes}) == 1
    # panels: (width 1: layers 0, 1), (width 2, teacher-initialised: layers 0, 1); last epoch's line
    for ax, block in zip(axes, [0, 0, KT[0], KT[1]]):
        y = ax.lines[-2 if block else -1].get_ydata()
        for part in (y[:block], y[block:]):
            assert (np.diff(part) <= 0).all()
    run = groups[1].counted[0]
    fan = run.arrays("fanout", EPOCHS)["fanout_layer1"][0]
    assert sorted(axes[3].lines[-2].get_ydata()) == pytest.approx(sorted(fan))


@pytest.mark.slow  # reads the whole report
def test_report_files_are_200_dpi_png_and_pdf(synthetic_report):
    out = synthetic_report[2].parent
    for name in FIGURES:
        assert DPI == 200 and png_dpi(out / f"{name}.png") == pytest.approx(200, abs=0.1), name
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name
    assert "band: +- one standard deviation" in (out / "report.md").read_text()
    folder = synthetic_report[0]
    assert "band: min to max" in markdown(folder, group_runs(find_runs(folder)), ["curves"], {}, "minmax")


@pytest.mark.slow
def test_report_on_a_real_multirun(tmp_path):
    res = multirun(tmp_path, "logger=none", "epochs=2", "student.num_students=2", "student.bn=after_relu",
                   "callbacks.theory=null", "student.width_mult=1,2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Skipped figures" not in md
    assert {p.stem for p in (tmp_path / "report").glob("*.png")} == set(FIGURES)
    rows = table_rows(md, "Final values")
    for num, label in ((0, "width_mult 1"), (1, "width_mult 2")):
        metrics = read_metrics(tmp_path / str(num))
        for col, key in ((3, "loss/eval"), (4, "match/layer0/mean_best")):
            last = [r for r in metrics if key in r][-1]
            values = [last[f"{key}/s{i}"] for i in range(2)]
            assert numbers(rows[label][col]) == pytest.approx([np.mean(values), min(values), max(values)],
                                                              rel=2e-4, abs=6e-5)


def test_panels_share_one_y_range_with_room_above_and_below_every_line():
    fig, (wide, narrow, ranks, log_a, log_b) = plt.subplots(1, 5)
    wide.plot([0.2, 0.8])
    narrow.plot([0.85, 0.86])                      # alone, matplotlib leaves it 0.0005 of room
    same_ylim([wide, narrow])
    low, high = wide.get_ylim()
    assert narrow.get_ylim() == (low, high) and high - 0.86 > 0.02 * (high - low) and 0.2 - low > 0.02 * (high - low)
    ranks.plot([0, 30])
    ranks.set_ylim(0, None)                        # a rank axis starts at 0
    same_ylim([ranks])
    assert ranks.get_ylim()[0] == 0 and ranks.get_ylim()[1] > 31.5
    for ax, ys in ((log_a, [1e-4, 1e-2]), (log_b, [0.5, 1.0])):
        ax.plot(ys)
        ax.set_yscale("log")
    same_ylim([log_a, log_b])
    low, high = log_a.get_ylim()
    assert log_b.get_ylim() == (low, high) and np.log10(high / 1.0) > 0.02 * np.log10(high / low) > 0
    plt.close(fig)


def test_dashboard_figures_draw_inside_their_edges():
    rng = np.random.default_rng(0)
    fans = [10 ** rng.uniform(-10, 0.5, 40) for _ in range(4)]            # log10 tick labels down to -10
    assert inside(plots.lshape([rng.uniform(-0.2, 1, 40) for _ in range(4)], fans, "L-shape"))
    assert inside(plots.corr_heatmaps([rng.uniform(-1, 1, (10, 30)) for _ in range(4)], "matching"))


def section_rows(md: str, section: str) -> list[list[str]]:
    body = md.split(f"## {section}")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")][1:]


@pytest.mark.slow  # writes a whole report / runs the command in a subprocess
def test_specialization_and_teacher_block_fanout_tables(synthetic_report):
    """Recomputed with numpy from the saved arrays of the completed runs (run 4 diverged)."""
    folder, _, path = synthetic_report
    md = path.read_text()
    groups = {"width_mult 1": [0, 1], "width_mult 2": [2, 3]}
    spec = {(r[0], int(r[1])): r for r in section_rows(md, "Specialization")}
    fan = {(r[0], int(r[1])): r for r in section_rows(md, "Fan-out of the teacher-initialised")}
    assert set(fan) == {("width_mult 2", 0), ("width_mult 2", 1)}   # perturbed init only
    for label, runs in groups.items():
        for layer in (0, 1):
            last = [np.load(folder / str(n) / "arrays" / f"match_epoch{EPOCHS:03d}.npz") for n in runs]
            best = np.concatenate([a[f"best_layer{layer}"] for a in last])
            assert spec[(label, layer)][2] == str(len(best))
            assert numbers(spec[(label, layer)][3]) == pytest.approx((best > 0.95).mean(0), abs=0.006)
            if label == "width_mult 2":
                fans = [np.load(folder / str(n) / "arrays" / f"fanout_epoch{EPOCHS:03d}.npz")[f"fanout_layer{layer}"]
                        for n in runs]
                for col, part in ((2, np.concatenate([f[:, :KT[layer]].ravel() for f in fans])),
                                  (3, np.concatenate([f[:, KT[layer]:].ravel() for f in fans]))):
                    want = [np.median(part), part.min(), part.max()]
                    assert numbers(fan[(label, layer)][col]) == pytest.approx(want, rel=2e-3), (label, layer, col)  # 4 digits
