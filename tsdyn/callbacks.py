"""Thin callbacks: decide when to measure, call the pure metric functions, hand results to the
module's recorder. Every measurement reuses the module's evaluation snapshot of that moment."""
from __future__ import annotations

import copy
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from torch import Tensor

from tsdyn import plots
from tsdyn.metrics.accuracy import accuracy
from tsdyn.metrics.bn import bn_biases, frac_nonpositive
from tsdyn.metrics.drift import drift
from tsdyn.metrics.fanout import fanout_norms, fanout_split, matched_students, student_best_corr
from tsdyn.metrics.luck import convergence_epochs, nan_mean_median, spearman, top_pct
from tsdyn.metrics.matching import best_match, hungarian_match, match_count, match_summary
from tsdyn.metrics.pruning import prune_random_, prune_smallest_fanout_
from tsdyn.metrics.theory import batch_means, diag_ratio, op_norm_ratios, require_fc_without_bn
from tsdyn.module import per_student_loss
from tsdyn.nets import predict


def measured_epochs(trainer: pl.Trainer, every_n_epochs: int) -> int | None:
    """Completed epochs if a measurement is due at this epoch end (every N, the last, a stop)."""
    epoch = trainer.current_epoch + 1
    due = epoch % every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0) or trainer.should_stop
    return epoch if due else None


class EpochMeasurement(pl.Callback):
    """Runs :meth:`measure` before training (epoch 0) and after every ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = int(every_n_epochs)

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.current_epoch == 0 and trainer.global_step == 0:
            self.measure(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = measured_epochs(trainer, self.every_n_epochs)
        if epoch is not None:
            self.measure(trainer, pl_module, epoch)

    def measure(self, trainer: pl.Trainer, pl_module, epoch: int) -> None:
        raise NotImplementedError


def per_layer(row: Mapping[str, float], keys: Sequence[str]) -> dict[str, Any]:
    """End-of-run layout of ``analysis.json``: the scalar row's ``keys`` of the form
    ``<section>/[<group>/]layer<l>/<name>`` -> ``{[<group>: {]<name>: [value per layer][}]}``."""
    out: dict[str, Any] = {}
    for key in keys:
        m = re.fullmatch(r"[^/]+/(?:(.+)/)?layer(\d+)/(.+)", key)
        node = out.setdefault(m.group(1), {}) if m.group(1) else out
        values = node.setdefault(m.group(3), [])
        values.extend([None] * (int(m.group(2)) + 1 - len(values)))
        values[int(m.group(2))] = row[key]
    return out


class Measurement(EpochMeasurement):
    """An analysis measured before training and every ``every_n_epochs`` epochs: its scalars go to
    the recorder, its per-node arrays to ``arrays/<name>_epochNNN.npz``, its W&B media (only when a
    W&B logger is attached) every ``media_every_n_epochs`` and at the end, and its last scalars per
    layer to the ``<name>`` section of ``analysis.json`` at the end of the run."""

    name = ""

    def __init__(self, every_n_epochs: int = 1, media_every_n_epochs: int = 20):
        super().__init__(every_n_epochs)
        self.media_every_n_epochs = int(media_every_n_epochs)
        self.last: tuple[dict[str, float], list[str]] | None = None

    def compute(self, pl_module, epoch: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(per-student scalars ``{key: [E]}``, arrays ``{name: [E, ...]}``) at this moment."""
        raise NotImplementedError

    def media(self, trainer, pl_module, epoch: int, arrays: dict[str, Tensor]) -> None:
        """Hand images / histograms / tables to ``pl_module.recorder.log_media`` (default: none)."""

    def measure(self, trainer, pl_module, epoch: int) -> None:
        values, arrays = self.compute(pl_module, epoch)
        if not values:
            return
        recorder = pl_module.recorder
        self.last = (recorder.log_members(trainer, values, epoch), list(values))
        recorder.save_arrays(self.name, epoch, arrays)
        final = epoch >= (trainer.max_epochs or 0) or trainer.should_stop
        if recorder.media_loggers(trainer) and (epoch % self.media_every_n_epochs == 0 or final):
            self.media(trainer, pl_module, epoch, arrays)

    def analysis(self) -> dict[str, Any]:
        """This analysis' ``analysis.json`` section (default: the last scalars, per layer)."""
        return per_layer(*self.last)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.last is not None:
            pl_module.recorder.write_analysis(self.name, self.analysis())


def first_member(arrays: Mapping[str, Tensor], prefix: str) -> list:
    """Student 0's ``<prefix><l>`` arrays as numpy, per layer (the dashboards show one student)."""
    layers = sorted(int(k[len(prefix):]) for k in arrays if re.fullmatch(re.escape(prefix) + r"\d+", k))
    return [arrays[f"{prefix}{layer}"][0].detach().cpu().numpy() for layer in layers]


class NodeMatching(Measurement):
    """Per hidden layer: each teacher node's best student correlation, summarised
    (``match/layer<l>/mean_best`` ...), the one-to-one (Hungarian) assignment's mean correlation
    (``hungarian_mean``), MatchCnt per threshold (``matchcnt_<t>``); arrays: best values, best
    students and the full correlation matrix. W&B: the matched-correlation heatmap, and at the end
    a table of the final matches."""

    name = "match"

    def __init__(self, every_n_epochs: int = 1, thresholds: Sequence[float] = (0.9, 0.95, 0.99),
                 media_every_n_epochs: int = 20):
        super().__init__(every_n_epochs, media_every_n_epochs)
        self.thresholds = tuple(float(t) for t in thresholds)

    def compute(self, pl_module, epoch: int):
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            best, idx = best_match(c)
            stats = {**match_summary(best, self.thresholds),
                     "hungarian_mean": torch.nanmean(hungarian_match(c)[0], -1),
                     **match_count(c, self.thresholds)}
            values.update({f"match/layer{layer}/{k}": v for k, v in stats.items()})
            arrays.update({f"best_layer{layer}": best, f"best_student_layer{layer}": idx, f"corr_layer{layer}": c})
        return values, arrays

    def media(self, trainer, pl_module, epoch, arrays):
        fig = plots.corr_heatmaps(first_member(arrays, "corr_layer"), f"teacher x best student, epoch {epoch}")
        pl_module.recorder.log_media(trainer, images={"match/heatmap": plots.to_image(fig)})

    def on_train_end(self, trainer, pl_module) -> None:
        """The W&B table of the final matches (every student, layer and teacher node)."""
        if not pl_module.recorder.media_loggers(trainer):
            return
        snap = pl_module.snapshot(trainer.current_epoch)
        rows = []
        for layer, c in enumerate(snap.corr):
            best, idx = (t.cpu() for t in best_match(c))
            fan = fanout_norms(pl_module.student, layer).cpu()
            for e in range(c.shape[0]):
                for j, (k, value) in enumerate(zip(idx[e].tolist(), best[e].tolist())):
                    rows.append([e, layer, j, k, value, float(fan[e, k]) if k >= 0 else None])
        columns = ["student", "layer", "teacher node", "best student", "correlation", "fan-out norm"]
        pl_module.recorder.log_media(trainer, tables={"match/final": (columns, rows)})


class FanOut(Measurement):
    """Per hidden layer: each student node's fan-out norm (L2 of its outgoing weights), split into
    matched nodes (the best partner of a teacher node with correlation above ``threshold``) and the
    rest: ``fanout/layer<l>/matched_median``, ``unmatched_median``, ``unmatched_below_1pct``.
    Under a BatchNorm after the ReLU the fan-out is the effective one (times gamma / sqrt(var + eps))
    unless ``bn_effective=False``. Arrays: norms, each student node's best correlation, the matched
    mask. W&B: log10-norm histograms of both groups and the L-shape scatter."""

    name = "fanout"

    def __init__(self, every_n_epochs: int = 1, threshold: float = 0.9, media_every_n_epochs: int = 20,
                 bn_effective: bool = True):
        super().__init__(every_n_epochs, media_every_n_epochs)
        self.threshold, self.bn_effective = float(threshold), bool(bn_effective)

    def compute(self, pl_module, epoch: int):
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            norms = fanout_norms(pl_module.student, layer, bn_effective=self.bn_effective)
            matched = matched_students(c, self.threshold).to(norms.device)
            values.update({f"fanout/layer{layer}/{k}": v for k, v in fanout_split(norms, matched).items()})
            arrays.update({f"fanout_layer{layer}": norms, f"best_corr_layer{layer}": student_best_corr(c),
                           f"matched_layer{layer}": matched})
        return values, arrays

    def media(self, trainer, pl_module, epoch, arrays):
        fans, corrs = first_member(arrays, "fanout_layer"), first_member(arrays, "best_corr_layer")
        histograms = {}
        for layer, (fan, matched) in enumerate(zip(fans, first_member(arrays, "matched_layer"))):
            log_fan = np.log10(np.maximum(fan, 1e-12))
            histograms[f"fanout/layer{layer}/log10_matched"] = log_fan[matched]
            histograms[f"fanout/layer{layer}/log10_unmatched"] = log_fan[~matched]
        fig = plots.lshape(corrs, fans, f"best correlation vs fan-out, epoch {epoch}")
        pl_module.recorder.log_media(trainer, images={"fanout/lshape": plots.to_image(fig)}, histograms=histograms)

    def analysis(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "bn_effective": self.bn_effective, **per_layer(*self.last)}


class BNBias(Measurement):
    """For every BatchNorm layer of the student (and of the teacher, if it has BN): the share of
    biases <= 0 (``bn/student/layer<l>/frac_nonpositive``, ``bn/teacher/...``); arrays: the biases;
    W&B: their histograms. Logs nothing for nets without (affine) BatchNorm."""

    name = "bn"

    def compute(self, pl_module, epoch: int):
        values, arrays = {}, {}
        for role, net in (("student", pl_module.student), ("teacher", pl_module.teacher)):
            for layer, bias in enumerate(bn_biases(net)):
                values[f"bn/{role}/layer{layer}/frac_nonpositive"] = frac_nonpositive(bias)
                arrays[f"{role}_bias_layer{layer}"] = bias
        return values, arrays

    def media(self, trainer, pl_module, epoch, arrays):
        histograms = {}
        for role in ("student", "teacher"):
            for layer, bias in enumerate(first_member(arrays, f"{role}_bias_layer")):
                histograms[f"bn/{role}/layer{layer}/bias"] = bias
        pl_module.recorder.log_media(trainer, histograms=histograms)


class WeightDrift(Measurement):
    """Per hidden layer and node: RMS of its fan-out's change since initialisation, absolute and
    relative to the initial RMS (``drift/layer<l>/abs_mean``, ``rel_mean``: means over nodes);
    arrays: both per node. The initial fan-outs travel in the checkpoint (callback state)."""

    name = "drift"

    def __init__(self, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.init: list[Tensor] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.init is None:
            student = pl_module.student
            self.init = [student.fan_out(layer).detach().clone() for layer in range(student.num_hidden)]
        super().on_train_start(trainer, pl_module)

    def compute(self, pl_module, epoch: int):
        values, arrays = {}, {}
        for layer, w_init in enumerate(self.init):
            fan = pl_module.student.fan_out(layer)
            abs_, rel = drift(fan, w_init.to(fan.device))
            values.update({f"drift/layer{layer}/abs_mean": abs_.mean(-1),
                           f"drift/layer{layer}/rel_mean": torch.nanmean(rel, -1)})
            arrays.update({f"abs_layer{layer}": abs_, f"rel_layer{layer}": rel})
        return values, arrays

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.init = state_dict["init"]


class BetaH(Measurement):
    """The theory's batch means of beta*, beta, H*, H per hidden layer on the first ``n_samples``
    evaluation inputs (all of them if fewer; fully connected nets without BN only), and the diagonal
    dominance of beta* and H* after reordering students by their Hungarian match
    (``theory/layer<l>/beta_star_diag_ratio``, ``h_star_diag_ratio``), and beside it the authors'
    notebook measure, operator-norm ratios of H* and H split into best students and the rest
    (``h_star_ratio_op``, ``h_ratio_op``: :func:`tsdyn.metrics.theory.op_norm_ratios`). Arrays: the
    four means per layer."""

    name = "theory"

    def __init__(self, every_n_epochs: int = 20, n_samples: int = 256, required: bool = True):
        super().__init__(every_n_epochs)
        self.n_samples, self.required = int(n_samples), bool(required)
        self.skipped: str | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        """A BN or conv net: an error if the theory was ``required``, else one notice and no-ops."""
        try:
            require_fc_without_bn(pl_module.student, "student")
            require_fc_without_bn(pl_module.teacher, "teacher")
        except ValueError as err:
            if self.required:
                raise
            self.skipped = str(err)
            print(f"tsdyn: beta/H theory skipped: {err}", file=sys.stderr)

    def compute(self, pl_module, epoch: int):
        if self.skipped:
            return {}, {}
        means = batch_means(pl_module.student, pl_module.teacher, pl_module.x_eval[:self.n_samples])
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            students = hungarian_match(c)[1]
            for key in ("beta_star", "h_star"):
                values[f"theory/layer{layer}/{key}_diag_ratio"] = diag_ratio(means[key][layer], students)
            ratios = op_norm_ratios(means["h_star"][layer], means["h"][layer], best_match(c)[1])
            values.update({f"theory/layer{layer}/{key}_op": ratios[key] for key in ("h_star_ratio", "h_ratio")})
            arrays.update({f"{key}_layer{layer}": means[key][layer] for key in means})
        return values, arrays

    def analysis(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, **per_layer(*self.last)}


class Luck(EpochMeasurement):
    """Keeps the correlation matrices at initialisation and after epochs 1..``baseline_epochs`` and
    every epoch's best-match values; at the end of the run, per layer: the mean / median top-% rank
    of each teacher node's final best student in each baseline ordering
    (``luck/layer<l>/top_pct_mean/epoch<b>``, ``top_pct_median/epoch<b>``), and the Spearman rank
    correlation between a teacher node's best correlation at initialisation and the first epoch its
    best correlation exceeded ``threshold`` (``luck/layer<l>/spearman_init_vs_converge``; nodes that
    never got there rank last). Results also in ``analysis.json`` (``luck``)."""

    def __init__(self, baseline_epochs: int = 5, threshold: float = 0.95):
        super().__init__(every_n_epochs=1)
        self.baseline_epochs, self.threshold = int(baseline_epochs), float(threshold)
        self.baselines: dict[int, list[Tensor]] = {}  # epoch -> per layer [E, K_t, K_s]
        self.epochs: list[int] = []
        self.best: list[list[Tensor]] = []            # per measured epoch, per layer [E, K_t]
        self.final: list[Tensor] | None = None

    def measure(self, trainer, pl_module, epoch: int) -> None:
        corr = [c.cpu() for c in pl_module.snapshot(epoch).corr]
        if epoch <= self.baseline_epochs:
            self.baselines[epoch] = corr
        self.epochs.append(epoch)
        self.best.append([best_match(c)[0] for c in corr])
        self.final = corr

    def on_train_end(self, trainer, pl_module) -> None:
        if self.final is None:
            return
        baselines = sorted(b for b in self.baselines if b < self.epochs[-1])  # the end itself ranks trivially
        values: dict[str, Tensor] = {}
        nodes: dict[str, list] = {"top_pct": [], "init_best": [], "convergence_epoch": []}
        for layer, c_final in enumerate(self.final):
            winners = best_match(c_final)[1]
            pcts = [top_pct(self.baselines[b][layer], winners) for b in baselines]
            for b, pct in zip(baselines, pcts):
                mean, median = nan_mean_median(pct)
                values[f"luck/layer{layer}/top_pct_mean/epoch{b}"] = mean
                values[f"luck/layer{layer}/top_pct_median/epoch{b}"] = median
            conv = convergence_epochs(torch.stack([best[layer] for best in self.best]), self.epochs, self.threshold)
            # no epoch-0 ordering only when resumed from a checkpoint without this callback's state
            init_best = (best_match(self.baselines[0][layer])[0] if 0 in self.baselines
                         else torch.full_like(conv, float("nan")))
            values[f"luck/layer{layer}/spearman_init_vs_converge"] = spearman(init_best, conv)
            nodes["top_pct"].append([p.tolist() for p in pcts])
            nodes["init_best"].append(init_best.tolist())
            nodes["convergence_epoch"].append(conv.tolist())
        row = pl_module.recorder.log_members(trainer, values, self.epochs[-1])
        layers = range(len(self.final))
        pl_module.recorder.write_analysis("luck", {
            "baseline_epochs": baselines, "final_epoch": self.epochs[-1], "threshold": self.threshold,
            **{stat: [[row[f"luck/layer{layer}/{stat}/epoch{b}"] for b in baselines] for layer in layers]
               for stat in ("top_pct_mean", "top_pct_median")},
            "spearman_init_vs_converge": [row[f"luck/layer{layer}/spearman_init_vs_converge"] for layer in layers],
            **nodes})

    def state_dict(self) -> dict[str, Any]:
        return {"baselines": self.baselines, "epochs": self.epochs, "best": self.best, "final": self.final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: state_dict[k] for k in ("baselines", "epochs", "best", "final")})


class Pruning(pl.Callback):
    """After training, on copies of the student: remove the ``share`` of each hidden layer's nodes
    with the smallest fan-out (``norm_ord`` 1: the paper's mean |fan-out|; effective under a BatchNorm
    after the ReLU unless ``bn_effective=False``) and, as the control, a
    random ``share`` (seeded by ``seed``); the evaluation loss before and after each
    (``prune/loss_before``, ``prune/fanout/loss_after``, ``prune/random/loss_after``) and the
    ``pruning`` section of ``analysis.json``."""

    def __init__(self, share: float = 0.5, seed: int = 0, norm_ord: float = 1, bn_effective: bool = True):
        self.share, self.seed, self.norm_ord = float(share), int(seed), float(norm_ord)
        self.bn_effective = bool(bn_effective)

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        def eval_loss(net) -> Tensor:
            return per_student_loss(net(pl_module.x_eval)[0], pl_module.y_eval, pl_module.loss_kind)

        student = copy.deepcopy(pl_module.student).eval()
        by_fanout, by_chance = copy.deepcopy(student), copy.deepcopy(student)
        removed = prune_smallest_fanout_(by_fanout, self.share, ord=self.norm_ord, bn_effective=self.bn_effective)
        prune_random_(by_chance, self.share, torch.Generator().manual_seed(self.seed))
        values = {"prune/loss_before": eval_loss(student), "prune/fanout/loss_after": eval_loss(by_fanout),
                  "prune/random/loss_after": eval_loss(by_chance)}
        row = pl_module.recorder.log_members(trainer, values, trainer.current_epoch)
        pl_module.recorder.write_analysis("pruning", {
            "share": self.share, "norm_ord": self.norm_ord, "bn_effective": self.bn_effective, "seed": self.seed,
            "removed_per_layer": [int(r.shape[-1]) for r in removed],
            "widths": [int(pl_module.student.fan_out(layer).shape[-1]) for layer in range(len(removed))],
            "loss_before": row["prune/loss_before"], "fanout_loss_after": row["prune/fanout/loss_after"],
            "random_loss_after": row["prune/random/loss_after"]})


class LabelAccuracy(EpochMeasurement):
    """On labelled data (images), per student: the accuracy on the whole test split against the
    true labels (``eval/accuracy``) and the agreement with the teacher's argmax (``eval/agreement``);
    once, the teacher's own accuracy (``eval/teacher_accuracy``). Logs nothing on unlabelled data."""

    def __init__(self, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.teacher_classes: Tensor | None = None

    def measure(self, trainer, pl_module, epoch: int) -> None:
        data, device = pl_module.data, pl_module.device
        if not getattr(data, "labelled", False):
            return
        x, labels = data.test_inputs(pl_module.teacher.d, device), data.test_labels(device)
        values = {}
        if self.teacher_classes is None:
            teacher_out = predict(pl_module.teacher, x)
            self.teacher_classes = teacher_out[0].argmax(-1)
            values["eval/teacher_accuracy"] = accuracy(teacher_out, labels)
        student, was_training = pl_module.student, pl_module.student.training
        student.eval()
        out = predict(student, x)
        student.train(was_training)
        values.update({"eval/accuracy": accuracy(out, labels), "eval/agreement": accuracy(out, self.teacher_classes)})
        pl_module.recorder.log_members(trainer, values, epoch)


class StepProgressBar(RichProgressBar):
    """Lightning's progress bar counting optimizer steps (one ``training_step`` runs
    ``steps_per_call`` of them), described ``epoch <e>/<epochs>`` (1-based), with the last training
    loss and without Lightning's version number. Added by ``tsdyn.train.build`` when
    ``trainer.enable_progress_bar`` is true."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.lightning_module.data.steps_per_epoch()

    def _get_train_description(self, current_epoch: int) -> str:
        return f"epoch {current_epoch + 1}/{self.trainer.max_epochs}"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.train_progress_bar_id is None:  # resumed inside an epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step - trainer.current_epoch * self.total_train_batches)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
