"""Analyses: each a small class on the one base :class:`Analysis`, which says when it runs, calls
the pure metric functions (``tsdyn.metrics``) and returns a :class:`Result`; the base records it.
Every measurement reuses the module's evaluation snapshot of that moment. Adding one: a pure
function, a class here, a line in ``conf/callbacks/default.yaml`` (docs/EXTENDING.md)."""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from torch import Tensor

from tsdyn import keys, plots
from tsdyn.config import ANALYSIS_RULES, CALLBACK_RULES, Rule
from tsdyn.metrics.accuracy import accuracy
from tsdyn.metrics.bn import bn_biases, frac_nonpositive
from tsdyn.metrics.drift import drift
from tsdyn.metrics.fanout import fanout_norms, fanout_split, matched_students, student_best_corr
from tsdyn.metrics.luck import convergence_epochs, nan_mean_median, spearman, top_pct
from tsdyn.metrics.matching import as_samples, best_match, hungarian_match, match_count, match_summary
from tsdyn.metrics.pruning import prune_random_, prune_smallest_fanout_
from tsdyn.metrics.sparsity import active_share, coactive_share
from tsdyn.metrics.theory import batch_means, diag_ratio, op_norm_ratios, require_fc_without_bn
from tsdyn.nets import per_student_loss, predict


def run_ends(trainer: pl.Trainer, epochs: int) -> bool:
    """Whether training stops after ``epochs`` completed epochs: the last epoch, a stop asked for
    (``EarlyStopping``, ``max_time``, a signal), or ``max_steps`` reached."""
    return (epochs >= (trainer.max_epochs or 0) or trainer.should_stop
            or 0 <= trainer.max_steps <= trainer.global_step)


def per_layer(row: Mapping[str, float], keys_: Sequence[str]) -> dict[str, Any]:
    """End-of-run layout of ``analysis.json``: the scalar row's per-layer ``keys_``
    (``<section>/[<group>/]layer<l>/<name>``) -> ``{[<group>: {]<name>: [value per layer][}]}``;
    keys without a layer are left out."""
    out: dict[str, Any] = {}
    for key in keys_:
        parts = keys.parse_layer_key(key)
        if parts is None:
            continue
        node = out.setdefault(parts.group, {}) if parts.group else out
        values = node.setdefault(parts.name, [])
        values.extend([None] * (parts.layer + 1 - len(values)))
        values[parts.layer] = row[key]
    return out


Media = dict  # log_media's arguments: {"images": {key: [H, W, C] uint8}, "histograms": ..., "tables": ...}


@dataclass
class Result:
    """What an analysis measured, as one value.

    ``scalars``: per-student values ``{key: [E]}`` (every logger, ``metrics.jsonl``, the ensemble
    means in ``trainer.callback_metrics``); ``arrays``: ``{name: [E, ...]}`` per-node arrays and
    matrices (``arrays/<analysis>_epochNNN.npz``); ``media``: draws the W&B images / histograms /
    tables (called only when media are due and a W&B logger is attached: figures cost time);
    ``summary``: settings and results for the analysis' section of ``analysis.json``, beside the
    last scalars per layer."""

    scalars: Mapping[str, Tensor] = field(default_factory=dict)
    arrays: Mapping[str, Tensor] = field(default_factory=dict)
    media: Callable[[], Media] | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)


class Analysis(pl.Callback):
    """The one base of every analysis: says when it runs and records what it returns.

    A subclass implements :meth:`measure` (before training, epoch 0, after every
    ``every_n_epochs`` epochs, and once training ended after the last epoch if that was not one of
    them: after the last checkpoint, so that an extended run measures at its new end instead)
    and/or :meth:`finish` (once, after training), each returning a :class:`Result` (or None:
    nothing this time). The base records it everywhere: the scalars to every logger and the
    metrics file, the arrays to ``arrays/<name>_epochNNN.npz``, the media to W&B every
    ``media_every_n_epochs`` and at the end, and at the end of the run the ``<name>`` section of
    ``analysis.json``, which lists under ``report`` the keys that ``tsdyn.report`` tabulates (those
    whose name is in ``report_names``; None: all). ``config_rules`` validates the analysis' fields
    in ``callbacks.<entry>`` before any work (:func:`tsdyn.config.validate`); tsdyn's own analyses
    keep theirs in :data:`tsdyn.config.CALLBACK_RULES`, which validation reads without importing torch."""

    name = ""
    config_rules: ClassVar[dict[str, Rule]] = ANALYSIS_RULES
    report_names: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, every_n_epochs: int = 1, media_every_n_epochs: int = 20):
        self.every_n_epochs, self.media_every_n_epochs = int(every_n_epochs), int(media_every_n_epochs)
        self._row: dict[str, float] = {}
        self._keys: list[str] = []
        self._summary: dict[str, Any] = {}

    def measure(self, pl_module, epoch: int) -> Result | None:
        """The analysis after ``epoch`` completed epochs (0 = initialisation)."""
        return None

    def finish(self, trainer: pl.Trainer, pl_module) -> Result | None:
        """The analysis once training ended."""
        return None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.current_epoch == 0 and trainer.global_step == 0:
            self.record(trainer, pl_module, 0, self.measure(pl_module, 0), final=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0:
            self.record(trainer, pl_module, epoch, self.measure(pl_module, epoch), final=run_ends(trainer, epoch))

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs:  # the last epoch, not measured at its end
            self.record(trainer, pl_module, epoch, self.measure(pl_module, epoch), final=True, monitor=False)
        self.record(trainer, pl_module, epoch, self.finish(trainer, pl_module), final=True, monitor=False)
        if self._keys or self._summary:
            pl_module.recorder.write_analysis(self.name, {**per_layer(self._row, self._keys), **self._summary,
                                                          "report": [k for k in self._keys if self._in_report(k)]})

    def _in_report(self, key: str) -> bool:
        parts = keys.parse_layer_key(key)
        return self.report_names is None or (parts.name if parts is not None else key) in self.report_names

    def record(self, trainer: pl.Trainer, pl_module, epoch: int, result: Result | None, final: bool,
               monitor: bool = True) -> None:
        """``result`` to the loggers, the run folder and (at the end) W&B media."""
        if result is None:
            return
        recorder = pl_module.recorder
        if result.scalars:
            self._row, self._keys = recorder.log_members(trainer, result.scalars, epoch, monitor=monitor), \
                list(result.scalars)
        if result.arrays:
            recorder.save_arrays(self.name, epoch, result.arrays)
        if result.media is not None and recorder.media_loggers(trainer) and (
                epoch % self.media_every_n_epochs == 0 or final):
            recorder.log_media(trainer, **result.media())
        self._summary.update(result.summary)


def first_member(arrays: Mapping[str, Tensor], name: str) -> list:
    """Student 0's ``<name>_layer<l>`` arrays as numpy, per layer (the dashboards show one student)."""
    return [arrays[keys.array_key(name, layer)][0].detach().cpu().numpy()
            for layer in keys.array_layers(arrays, name)]


class NodeMatching(Analysis):
    """Per hidden layer: each teacher node's best student correlation, summarised
    (``match/layer<l>/mean_best`` ...), the one-to-one (Hungarian) assignment's mean correlation
    (``hungarian_mean``), MatchCnt per threshold (``matchcnt_<t>``); arrays: best values, best
    students and the full correlation matrix. W&B: the matched-correlation heatmap, and at the end
    a table of the final matches."""

    name = "match"
    config_rules = CALLBACK_RULES["tsdyn.callbacks.NodeMatching"]
    report_names = ("hungarian_mean",)  # mean_best has the report's main table

    def __init__(self, every_n_epochs: int = 1, thresholds: Sequence[float] = (0.9, 0.95, 0.99),
                 media_every_n_epochs: int = 20):
        super().__init__(every_n_epochs, media_every_n_epochs)
        self.thresholds = tuple(float(t) for t in thresholds)

    def measure(self, pl_module, epoch: int) -> Result:
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            best, idx = best_match(c)
            stats = {**match_summary(best, self.thresholds),
                     "hungarian_mean": torch.nanmean(hungarian_match(c)[0], -1),
                     **match_count(c, self.thresholds)}
            values.update({keys.layer_key("match", layer, k): v for k, v in stats.items()})
            arrays.update({keys.array_key("best", layer): best, keys.array_key("best_student", layer): idx,
                           keys.array_key("corr", layer): c})

        def media() -> Media:
            fig = plots.corr_heatmaps(first_member(arrays, "corr"), f"teacher x best student, epoch {epoch}")
            return {"images": {"match/heatmap": plots.to_image(fig)}}
        return Result(values, arrays, media)

    def finish(self, trainer, pl_module) -> Result:
        """The W&B table of the final matches (every student, layer and teacher node)."""
        def media() -> Media:
            rows = []
            for layer, c in enumerate(pl_module.snapshot(trainer.current_epoch).corr):
                best, idx = (t.cpu() for t in best_match(c))
                fan = fanout_norms(pl_module.student, layer).cpu()
                for e in range(c.shape[0]):
                    for j, (k, value) in enumerate(zip(idx[e].tolist(), best[e].tolist())):
                        rows.append([e, layer, j, k, value, float(fan[e, k]) if k >= 0 else None])
            columns = ["student", "layer", "teacher node", "best student", "correlation", "fan-out norm"]
            return {"tables": {"match/final": (columns, rows)}}
        return Result(media=media)


class FanOut(Analysis):
    """Per hidden layer: each student node's fan-out norm (L2 of its outgoing weights), split into
    matched nodes (the best partner of a teacher node with correlation above ``threshold``) and the
    rest: ``fanout/layer<l>/matched_median``, ``unmatched_median``, ``unmatched_below_1pct``.
    Under a BatchNorm after the ReLU the fan-out is the effective one (times gamma / sqrt(var + eps))
    unless ``bn_effective=False``. Arrays: norms, each student node's best correlation, the matched
    mask. W&B: log10-norm histograms of both groups and the L-shape scatter."""

    name = "fanout"
    config_rules = CALLBACK_RULES["tsdyn.callbacks.FanOut"]
    report_names = ("matched_median", "unmatched_median", "unmatched_below_1pct")

    def __init__(self, every_n_epochs: int = 1, threshold: float = 0.9, media_every_n_epochs: int = 20,
                 bn_effective: bool = True):
        super().__init__(every_n_epochs, media_every_n_epochs)
        self.threshold, self.bn_effective = float(threshold), bool(bn_effective)

    def measure(self, pl_module, epoch: int) -> Result:
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            norms = fanout_norms(pl_module.student, layer, bn_effective=self.bn_effective)
            matched = matched_students(c, self.threshold).to(norms.device)
            values.update({keys.layer_key("fanout", layer, k): v for k, v in fanout_split(norms, matched).items()})
            arrays.update({keys.array_key("fanout", layer): norms, keys.array_key("best_corr", layer): student_best_corr(c),
                           keys.array_key("matched", layer): matched})

        def media() -> Media:
            fans, corrs = first_member(arrays, "fanout"), first_member(arrays, "best_corr")
            histograms = {}
            for layer, (fan, matched) in enumerate(zip(fans, first_member(arrays, "matched"))):
                log_fan = np.log10(np.maximum(fan, 1e-12))
                histograms[keys.layer_key("fanout", layer, "log10_matched")] = log_fan[matched]
                histograms[keys.layer_key("fanout", layer, "log10_unmatched")] = log_fan[~matched]
            fig = plots.lshape(corrs, fans, f"best correlation vs fan-out, epoch {epoch}")
            return {"images": {"fanout/lshape": plots.to_image(fig)}, "histograms": histograms}
        return Result(values, arrays, media, summary={"threshold": self.threshold, "bn_effective": self.bn_effective})


class BNBias(Analysis):
    """For every BatchNorm layer of the student (and of the teacher, if it has BN): the share of
    biases <= 0 (``bn/student/layer<l>/frac_nonpositive``, ``bn/teacher/...``); arrays: the biases;
    W&B: their histograms. Logs nothing for nets without (affine) BatchNorm."""

    name = "bn"

    def measure(self, pl_module, epoch: int) -> Result:
        values, arrays = {}, {}
        for role, net in (("student", pl_module.student), ("teacher", pl_module.teacher)):
            for layer, bias in enumerate(bn_biases(net)):
                values[keys.layer_key("bn", layer, "frac_nonpositive", group=role)] = frac_nonpositive(bias)
                arrays[keys.array_key(f"{role}_bias", layer)] = bias

        def media() -> Media:
            return {"histograms": {keys.layer_key("bn", layer, "bias", group=role): bias
                                   for role in ("student", "teacher")
                                   for layer, bias in enumerate(first_member(arrays, f"{role}_bias"))}}
        return Result(values, arrays, media)


class WeightDrift(Analysis):
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

    def measure(self, pl_module, epoch: int) -> Result:
        values, arrays = {}, {}
        for layer, w_init in enumerate(self.init):
            fan = pl_module.student.fan_out(layer)
            abs_, rel = drift(fan, w_init.to(fan.device))
            values.update({keys.layer_key("drift", layer, "abs_mean"): abs_.mean(-1),
                           keys.layer_key("drift", layer, "rel_mean"): torch.nanmean(rel, -1)})
            arrays.update({keys.array_key("abs", layer): abs_, keys.array_key("rel", layer): rel})
        return Result(values, arrays)

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.init = state_dict["init"]


class BetaH(Analysis):
    """The theory's batch means of beta*, beta, H*, H per hidden layer on the first ``n_samples``
    evaluation inputs (all of them if fewer; fully connected nets without BN only), and the diagonal
    dominance of beta* and H* after reordering students by their Hungarian match
    (``theory/layer<l>/beta_star_diag_ratio``, ``h_star_diag_ratio``), and beside it the authors'
    notebook measure, operator-norm ratios of H* and H split into best students and the rest
    (``h_star_ratio_op``, ``h_ratio_op``: :func:`tsdyn.metrics.theory.op_norm_ratios`). Arrays: the
    four means per layer."""

    name = "theory"
    config_rules = CALLBACK_RULES["tsdyn.callbacks.BetaH"]

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

    def measure(self, pl_module, epoch: int) -> Result | None:
        if self.skipped:
            return None
        means = batch_means(pl_module.student, pl_module.teacher, pl_module.x_eval[:self.n_samples])
        values, arrays = {}, {}
        for layer, c in enumerate(pl_module.snapshot(epoch).corr):
            students = hungarian_match(c)[1]
            for key in ("beta_star", "h_star"):
                values[keys.layer_key("theory", layer, f"{key}_diag_ratio")] = diag_ratio(means[key][layer], students)
            ratios = op_norm_ratios(means["h_star"][layer], means["h"][layer], best_match(c)[1])
            values.update({keys.layer_key("theory", layer, f"{key}_op"): ratios[key] for key in ("h_star_ratio", "h_ratio")})
            arrays.update({keys.array_key(key, layer): means[key][layer] for key in means})
        return Result(values, arrays, summary={"n_samples": self.n_samples})


class Sparsity(Analysis):
    """Per hidden layer, on the evaluation set: the share of inputs on which each node is active,
    averaged over nodes, for teacher and student (``sparsity/teacher/layer<l>/active_mean``,
    ``sparsity/student/...``), and the mean pairwise co-activation of teacher nodes
    (``sparsity/teacher/layer<l>/coactive_mean``: the paper's "small overlap" assumption, 0.25 for
    independent nodes each active half the time). Arrays: every node's active share."""

    name = "sparsity"

    def measure(self, pl_module, epoch: int) -> Result:
        snap, values, arrays = pl_module.snapshot(epoch), {}, {}
        for layer, (t, s) in enumerate(zip(snap.teacher_hidden, snap.student_hidden)):
            teacher = as_samples(t)[None]                                   # [1, N, K_t]
            active = {"teacher": active_share(teacher), "student": active_share(as_samples(s))}  # [1|E, K]
            values.update({keys.layer_key("sparsity", layer, "active_mean", role): share.mean(-1)
                           for role, share in active.items()})
            values[keys.layer_key("sparsity", layer, "coactive_mean", "teacher")] = coactive_share(teacher)
            arrays.update({keys.array_key(f"{role}_active", layer): share for role, share in active.items()})
        return Result(values, arrays)


class Luck(Analysis):
    """Keeps the correlation matrices at initialisation and after epochs 1..``baseline_epochs`` and
    every epoch's best-match values; at the end of the run, per layer: the mean / median top-% rank
    of each teacher node's final best student in each baseline ordering
    (``luck/layer<l>/top_pct_mean/epoch<b>``, ``top_pct_median/epoch<b>``), and the Spearman rank
    correlation between a teacher node's best correlation at initialisation and the first epoch its
    best correlation exceeded ``threshold`` (``luck/layer<l>/spearman_init_vs_converge``; nodes that
    never got there rank last). Results also in ``analysis.json`` (``luck``)."""

    name = "luck"
    config_rules = CALLBACK_RULES["tsdyn.callbacks.Luck"]
    report_names = (*(keys.luck_rank(stat, b) for stat in ("mean", "median") for b in (0, 1)),
                    "spearman_init_vs_converge")

    def __init__(self, baseline_epochs: int = 5, threshold: float = 0.95):
        super().__init__(every_n_epochs=1)
        self.baseline_epochs, self.threshold = int(baseline_epochs), float(threshold)
        self.baselines: dict[int, list[Tensor]] = {}  # epoch -> per layer [E, K_t, K_s]
        self.epochs: list[int] = []
        self.best: list[list[Tensor]] = []            # per measured epoch, per layer [E, K_t]
        self.final: list[Tensor] | None = None

    def measure(self, pl_module, epoch: int) -> None:
        corr = [c.cpu() for c in pl_module.snapshot(epoch).corr]
        if epoch <= self.baseline_epochs:
            self.baselines[epoch] = corr
        self.epochs.append(epoch)
        self.best.append([best_match(c)[0] for c in corr])
        self.final = corr

    def finish(self, trainer, pl_module) -> Result | None:
        if self.final is None:
            return None
        baselines = sorted(b for b in self.baselines if b < self.epochs[-1])  # the end itself ranks trivially
        values: dict[str, Tensor] = {}
        nodes: dict[str, list] = {"top_pct": [], "init_best": [], "convergence_epoch": []}
        means: dict[str, list] = {"top_pct_mean": [], "top_pct_median": [], "spearman_init_vs_converge": []}
        for layer, c_final in enumerate(self.final):
            winners = best_match(c_final)[1]
            pcts = [top_pct(self.baselines[b][layer], winners) for b in baselines]
            stats = {"mean": [], "median": []}
            for b, pct in zip(baselines, pcts):
                for stat, value in zip(("mean", "median"), nan_mean_median(pct)):
                    values[keys.layer_key("luck", layer, keys.luck_rank(stat, b))] = value
                    stats[stat].append(ensemble_mean(value))
            conv = convergence_epochs(torch.stack([best[layer] for best in self.best]), self.epochs, self.threshold)
            # no epoch-0 ordering only when resumed from a checkpoint without this callback's state
            init_best = (best_match(self.baselines[0][layer])[0] if 0 in self.baselines
                         else torch.full_like(conv, float("nan")))
            rho = spearman(init_best, conv)
            values[keys.layer_key("luck", layer, "spearman_init_vs_converge")] = rho
            means["top_pct_mean"].append(stats["mean"])
            means["top_pct_median"].append(stats["median"])
            means["spearman_init_vs_converge"].append(ensemble_mean(rho))
            nodes["top_pct"].append([p.tolist() for p in pcts])
            nodes["init_best"].append(init_best.tolist())
            nodes["convergence_epoch"].append(conv.tolist())
        return Result(values, summary={"baseline_epochs": baselines, "final_epoch": self.epochs[-1],
                                       "threshold": self.threshold, **means, **nodes})

    def state_dict(self) -> dict[str, Any]:
        return {"baselines": self.baselines, "epochs": self.epochs, "best": self.best, "final": self.final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: state_dict[k] for k in ("baselines", "epochs", "best", "final")})


def ensemble_mean(values: Tensor) -> float:
    """The mean over students of ``values`` ``[E]``, NaN members left out (as the logged mean)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


class Pruning(Analysis):
    """After training, on copies of the student: remove the ``share`` of each hidden layer's nodes
    with the smallest fan-out (``norm_ord`` 1: the paper's mean |fan-out|; effective under a BatchNorm
    after the ReLU unless ``bn_effective=False``) and, as the control, a
    random ``share`` (seeded by ``seed``); the evaluation loss before and after each
    (``prune/loss_before``, ``prune/fanout/loss_after``, ``prune/random/loss_after``) and the
    ``pruning`` section of ``analysis.json``."""

    name = "pruning"
    config_rules = CALLBACK_RULES["tsdyn.callbacks.Pruning"]

    def __init__(self, share: float = 0.5, seed: int = 0, norm_ord: float = 1, bn_effective: bool = True):
        super().__init__()
        self.share, self.seed, self.norm_ord = float(share), int(seed), float(norm_ord)
        self.bn_effective = bool(bn_effective)

    @torch.no_grad()
    def finish(self, trainer, pl_module) -> Result:
        def eval_loss(net) -> Tensor:
            return per_student_loss(net(pl_module.x_eval)[0], pl_module.y_eval, pl_module.loss_kind)

        student = copy.deepcopy(pl_module.student).eval()
        by_fanout, by_chance = copy.deepcopy(student), copy.deepcopy(student)
        removed = prune_smallest_fanout_(by_fanout, self.share, ord=self.norm_ord, bn_effective=self.bn_effective)
        prune_random_(by_chance, self.share, torch.Generator().manual_seed(self.seed))
        losses = {"loss_before": eval_loss(student), "fanout_loss_after": eval_loss(by_fanout),
                  "random_loss_after": eval_loss(by_chance)}
        return Result({"prune/loss_before": losses["loss_before"], "prune/fanout/loss_after": losses["fanout_loss_after"],
                       "prune/random/loss_after": losses["random_loss_after"]},
                      summary={"share": self.share, "norm_ord": self.norm_ord, "bn_effective": self.bn_effective,
                               "seed": self.seed,
                               "removed_per_layer": [int(r.shape[-1]) for r in removed],
                               "widths": [int(pl_module.student.fan_out(layer).shape[-1]) for layer in range(len(removed))],
                               **{k: ensemble_mean(v) for k, v in losses.items()}})


class LabelAccuracy(Analysis):
    """On labelled data (images), per student: the accuracy on the whole test split against the
    true labels (``eval/accuracy``) and the agreement with the teacher's argmax (``eval/agreement``);
    once, at the start, the teacher's own accuracy (``eval/teacher_accuracy``). Logs nothing on
    unlabelled data."""

    name = "accuracy"

    def __init__(self, every_n_epochs: int = 1):
        super().__init__(every_n_epochs)
        self.teacher_classes: Tensor | None = None

    def measure(self, pl_module, epoch: int) -> Result | None:
        data, device = pl_module.data, pl_module.device
        if not getattr(data, "labelled", False):
            return None
        x, labels = data.test_inputs(pl_module.teacher.d, device), data.test_labels(device)
        values = {}
        if self.teacher_classes is None:  # at the start, and again after a resume (not logged again then)
            teacher_out = predict(pl_module.teacher, x)
            self.teacher_classes = teacher_out[0].argmax(-1)
            if epoch == 0:
                values["eval/teacher_accuracy"] = accuracy(teacher_out, labels)
        student, was_training = pl_module.student, pl_module.student.training
        student.eval()
        out = predict(student, x)
        student.train(was_training)
        values.update({"eval/accuracy": accuracy(out, labels), "eval/agreement": accuracy(out, self.teacher_classes)})
        return Result(values)


class StepProgressBar(RichProgressBar):
    """Lightning's progress bar counting optimizer steps (one ``training_step`` runs
    ``steps_per_call`` of them), described ``epoch <e>/<epochs>`` (1-based), with the last training
    loss and without Lightning's version number. Added by ``tsdyn.build.build`` when
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
