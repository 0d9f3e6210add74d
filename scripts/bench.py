"""Speed of the teacher-student loop: tsdyn against a plain PyTorch loop and the authors' loop.

Everything runs in this one process, on the same teacher, data and number of steps, and is
reported as same-run ratios (absolute speeds vary with the machine and its load):

  (a) plain    a plain PyTorch loop over pre-made batch tensors (nn.Linear student): the floor
  (b) authors  the authors' loop: DataLoader over an in-memory TensorDataset (shuffle, no workers),
               teacher forward every step, ``torch.isnan(loss).item()`` every step
  (c) tsdyn    tsdyn's real path: TeacherStudent + pl.Trainer, callbacks off
  (d) +cb      the same with the default callbacks (all analyses at their default frequency)
  (e) E=k      tsdyn with k students at once (``student.num_students=k``)
  (f) fused    tsdyn's fused step, uncompiled (``step=fused``)
  (g) compiled tsdyn's fused step compiled (``step=compiled``), one step per call or ``k`` (``fused_chunk=k``)
  (h) compiled E=k  the compiled fused step with k students at once
  (i) matmuls E=k   the matrix products of a step of k students and nothing else: the ceiling
                    any step of these shapes can reach (interleaved table only)

(c) and (e) take the autograd step (``step=autograd``). Compilation happens in the warm-up epoch;
its time is reported beside the table (inductor caches it on disk: a second run pays less).

Usage: ``make bench`` or ``python scripts/bench.py [--widths 10 1 50] [--epochs 3] [--out docs/BENCHMARKS.md]``.
``--main-job`` also times the default main job (40 epochs) split into startup, compilation,
training, per-epoch analyses and end-of-run work, beside the same job with ``step=autograd`` and
with ``callbacks=none logger=none`` (each a ``python -m tsdyn.train`` process), and the authors' loop.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tsdyn.build import build  # noqa: E402

BS = 64


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def plain_net(d: int, ks: list[int], d_out: int) -> nn.Sequential:
    layers, last = [], d
    for k in ks:
        layers += [nn.Linear(last, k), nn.ReLU()]
        last = k
    return nn.Sequential(*layers, nn.Linear(last, d_out))


def teacher_as_plain(teacher) -> nn.Sequential:
    net = plain_net(teacher.d, teacher.ks, teacher.d_out)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(linears, teacher.weights, teacher.biases):
            lin.weight.copy_(w[0])
            lin.bias.copy_(b[0])
    return net.requires_grad_(False)


def step_flops(d: int, ks: list[int], d_out: int) -> float:
    """Forward + backward FLOPs of one student step: 3 x 2 x batch x sum(in x out)."""
    sizes = [d, *ks, d_out]
    return 6.0 * BS * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def timed_epochs(run_epoch, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` epochs after one warm-up epoch."""
    run_epoch()
    out = []
    for _ in range(epochs):
        t = time.perf_counter()
        run_epoch()
        out.append(time.perf_counter() - t)
    return out


def bench_plain(teacher, width_mult, x, y, epochs):
    student = plain_net(teacher.d, [k * width_mult for k in teacher.ks], teacher.d_out)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    xb, yb = x.split(BS), y.split(BS)

    def epoch():
        for xi, yi in zip(xb, yb):
            loss = nn.functional.mse_loss(student(xi), yi)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return timed_epochs(epoch, epochs)


def bench_authors(teacher, width_mult, x, epochs):
    student = plain_net(teacher.d, [k * width_mult for k in teacher.ks], teacher.d_out)
    t_net = teacher_as_plain(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x), batch_size=BS, shuffle=True, num_workers=0, drop_last=True)
    loss_func = nn.MSELoss()

    def epoch():
        for (xi,) in loader:
            opt.zero_grad()
            target = t_net(xi)
            err = loss_func(student(xi), target.detach())
            if torch.isnan(err).item():
                raise RuntimeError("nan")
            err.backward()
            opt.step()
    return timed_epochs(epoch, epochs)


class EpochTimer(pl.Callback):
    """Wall time from each epoch's start to the next one's: the training steps and all the epoch-end
    work (callbacks, evaluation, checkpoint). The first (warm-up) epoch is dropped; the last epoch has
    no successor and is not timed, nor is the end-of-run work."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.marks.append(time.perf_counter())

    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks[:-1], self.marks[1:])][1:]


COMPILE_TIMES: dict[str, float] = {}  # variant -> seconds its compilation took in this run


def bench_tsdyn(width_mult, n_train, epochs, callbacks: str, num_students: int = 1, step: str = "autograd",
                chunk: int = 1, name: str = "") -> list[float]:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_cfg([f"student.width_mult={width_mult}", f"student.num_students={num_students}",
                           f"data.n_train={n_train}", f"epochs={epochs + 2}", f"callbacks={callbacks}",
                           f"step={step}", f"fused_chunk={chunk}",
                           "logger=none", "trainer.enable_progress_bar=false", f"run_dir={run_dir}"])
        module, trainer = build(cfg, Path(run_dir) if callbacks != "none" else None)
        timer = EpochTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module)
        if module._fused is not None and module._fused.compile_seconds:
            COMPILE_TIMES[f"width_mult {width_mult} {name}"] = module._fused.compile_seconds
        return timer.epochs()


def bench_fused(wm: int, args, steps: int, flops: float) -> dict:
    """(f) the uncompiled fused step, (g) the compiled one at 1 and ``args.chunks`` steps per call,
    (h) the compiled one with the ensembles ``args.compiled_ensembles`` names for this width."""
    res = {"(f) fused": fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none", step="fused"), steps)}
    for k in [1, *args.chunks]:
        name = "(g) compiled" + (f" k={k}" if k > 1 else "")
        res[name] = fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none", step="compiled", chunk=k, name=name),
                        steps)
    for e in [int(pair.split(":")[1]) for pair in args.compiled_ensembles if int(pair.split(":")[0]) == wm]:
        name = f"(h) compiled E={e}"
        res[name] = fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none", e, step="compiled", name=name), steps, e)
    return res


def step_burst(variant: str, teacher, width_mult: int, x, y, members: int = 1, chunk: int = 1):
    """A function ``burst(n)`` running the next ``n`` training steps of ``variant`` (for the
    interleaved timing), the data handling of each loop included: ``plain`` and ``authors`` as in
    (a) and (b); ``autograd`` tsdyn's autograd step (ReLUNet, ``per_student_loss``, the torch
    optimizer, slices of the epoch's in-memory tensors); ``fused`` and ``compiled`` the fused step
    on the same slices, ``chunk`` steps per call (compiled at the first call, before any timing)."""
    from tsdyn.fused import FusedSGD
    from tsdyn.nets import per_student_loss
    from tsdyn.nets import make_student
    n_batches = len(x) // BS
    pos = [0]

    def batches(n):  # the first of the next n batches of the epoch (from the start when too few are left)
        i = pos[0] if pos[0] + n <= n_batches else 0
        pos[0] = i + n
        return i
    if variant in ("plain", "authors"):
        student = plain_net(teacher.d, [k * width_mult for k in teacher.ks], teacher.d_out)
        opt = torch.optim.SGD(student.parameters(), lr=0.05)
    if variant == "plain":
        def burst(n):
            i = batches(n)
            for xi, yi in zip(x[i * BS:(i + n) * BS].split(BS), y[i * BS:(i + n) * BS].split(BS)):
                loss = nn.functional.mse_loss(student(xi), yi)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return burst
    if variant == "authors":
        t_net, loss_func = teacher_as_plain(teacher), nn.MSELoss()
        loader = DataLoader(TensorDataset(x), batch_size=BS, shuffle=True, num_workers=0, drop_last=True)
        it = [iter(loader)]

        def burst(n):
            for _ in range(n):
                try:
                    (xi,) = next(it[0])
                except StopIteration:
                    it[0] = iter(loader)
                    (xi,) = next(it[0])
                opt.zero_grad()
                err = loss_func(student(xi), t_net(xi).detach())
                if torch.isnan(err).item():
                    raise RuntimeError("nan")
                err.backward()
                opt.step()
        return burst
    if variant == "matmuls":
        return matmul_burst([teacher.d, *[k * width_mult for k in teacher.ks], teacher.d_out], members)
    student = make_student(teacher, width_mult, members)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    loss_sum = torch.zeros(members)
    if variant == "autograd":
        def burst(n):
            i = batches(n)
            for j in range(i, i + n):
                losses = per_student_loss(student(x[j * BS:(j + 1) * BS])[0], y[j * BS:(j + 1) * BS], "mse")
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                loss_sum.add_(losses.detach())
        return burst
    fused = FusedSGD(student, opt, "mse", compile_steps=chunk if variant == "compiled" else 0)

    def burst(n):
        i = batches(n)
        for j in range(i, i + n - n % chunk, chunk):
            loss_sum.copy_(fused(x[j * BS:(j + chunk) * BS].view(chunk, BS, -1),
                                 y[j * BS:(j + chunk) * BS].view(chunk, BS, -1), loss_sum)[0])
    start = time.perf_counter()
    burst(chunk)  # compiles
    if variant == "compiled":
        COMPILE_TIMES[f"width_mult {width_mult} compiled E={members} k={chunk}"] = time.perf_counter() - start
    return burst


def matmul_burst(sizes: list[int], members: int):
    """``burst(n)``: the matrix products of ``n`` student steps and nothing else (per layer the
    forward product, the input gradient and the weight gradient, as batched products of
    ``members`` students into preallocated outputs): the ceiling a step of these shapes can reach."""
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(members, BS, n, generator=g) for n in sizes]
    weights = [torch.randn(members, o, i, generator=g) for i, o in zip(sizes[:-1], sizes[1:])]
    grads = [torch.empty_like(w) for w in weights]
    outs = [torch.empty_like(a) for a in acts]

    def burst(n):
        for _ in range(n):
            for l, w in enumerate(weights):
                torch.bmm(acts[l], w.transpose(1, 2), out=outs[l + 1])          # forward
            for l, w in enumerate(weights):
                torch.bmm(acts[l + 1], w, out=outs[l])                          # input gradient
                torch.bmm(acts[l + 1].transpose(1, 2), acts[l], out=grads[l])   # weight gradient
    return burst


INTERLEAVED = [("plain", 1, 1), ("authors", 1, 1), ("autograd", 1, 1), ("fused", 1, 1), ("compiled", 1, 1)]


def interleaved_lines(args, gemm: float) -> list[str]:
    """Per width: the variants of :data:`INTERLEAVED`, ``compiled`` at every ``args.chunks``, and
    the ``args.compiled_ensembles`` (autograd and compiled) timed in rounds: each round runs
    ``args.burst`` steps of every variant in turn, so a change of the machine's load hits all
    alike; the median over ``args.rounds`` rounds (the first dropped) gives each rate."""
    lines = ["", f"Interleaved step timing ({args.rounds} rounds of {args.burst} steps per variant, median; "
                 "the training loop alone, data handling included, no Lightning, no epoch-end work):", "",
             "| width_mult | variant | E | k | steps/s | student-steps/s | % of GEMM | / (a) plain | / (b) authors "
             "| / autograd (same E) |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for wm in args.compiled_widths:
        cfg = compose_cfg([f"student.width_mult={wm}", "run_dir=/tmp/unused"])
        from hydra.utils import instantiate
        data, teacher = instantiate(cfg.data), instantiate(cfg.teacher)
        x = data.sample(args.n_train, teacher.d, torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = teacher(x)[0][0]
        flops = step_flops(teacher.d, [k * wm for k in teacher.ks], teacher.d_out)
        ens = [int(pair.split(":")[1]) for pair in args.compiled_ensembles if int(pair.split(":")[0]) == wm]
        specs = [*INTERLEAVED, *[("compiled", 1, k) for k in args.chunks],
                 *[(v, e, 1) for e in ens for v in ("autograd", "compiled", "matmuls")]]
        bursts = [step_burst(v, teacher, wm, x, y, e, k) for v, e, k in specs]
        times = [[] for _ in specs]
        for _ in range(args.rounds + 1):
            for burst, t in zip(bursts, times):
                start = time.perf_counter()
                burst(args.burst)
                t.append((time.perf_counter() - start) / args.burst)
        rate = {spec: 1 / statistics.median(t[1:]) for spec, t in zip(specs, times)}
        for (v, e, k), r in rate.items():
            gemm_pct = 100 * e * r * flops / 1e9 / gemm
            lines.append(f"| {wm} | {v} | {e} | {k} | {r:.0f} | {e * r:.0f} | {gemm_pct:.0f}% | "
                         f"{e * r / rate[('plain', 1, 1)]:.2f} | {e * r / rate[('authors', 1, 1)]:.2f} | "
                         f"{r / rate[('autograd', e, 1)]:.2f} |")
            print(lines[-1], flush=True)
    return lines


def fmt(times: list[float], steps: int, students: int = 1) -> dict:
    med = statistics.median(times)
    return {"steps_s": steps / med, "student_steps_s": students * steps / med,
            "spread": (max(times) - min(times)) / med if len(times) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[10, 1, 50])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (after one warm-up)")
    p.add_argument("--n-train", type=int, default=32000, help="samples per epoch (steps = n / 64)")
    p.add_argument("--ensembles", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--compiled-widths", type=int, nargs="+", default=[10, 1],
                   help="widths whose fused and compiled variants (f), (g), (h) are timed")
    p.add_argument("--compiled-ensembles", nargs="+", default=["10:16", "1:64"],
                   help="width_mult:E pairs also timed with the compiled fused step (h)")
    p.add_argument("--chunks", type=int, nargs="+", default=[5],
                   help="steps per compiled call timed besides 1 (fused_chunk)")
    p.add_argument("--interleaved", action="store_true",
                   help="only the interleaved step timing (the --compiled-widths), not the per-epoch table")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--burst", type=int, default=100, help="steps per variant and round (interleaved)")
    p.add_argument("--max-gflop-per-step", type=float, default=4.0,
                   help="skip ensembles whose step exceeds this (e.g. E=64 at width_mult 50)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--main-job", action="store_true", help="also: the main job's phases (see above)")
    p.add_argument("--main-job-epochs", type=int, default=40)
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    gemm = matmul_gflops()  # measured again at the end: the higher one is the machine's rate
    steps = args.n_train // BS
    lines = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, python {platform.python_version()}.",
             "GEMM_LINE", ""]
    header = ("| width_mult | variant | steps/s | student-steps/s | GFLOP/s | % of GEMM | spread |\n"
              "|---:|---|---:|---:|---:|---:|---:|")
    lines.append(header)
    ratios, results, flops_of = [], {}, {}
    for wm in ([] if args.interleaved else args.widths):
        cfg = compose_cfg([f"student.width_mult={wm}", "run_dir=/tmp/unused"])
        from hydra.utils import instantiate
        data = instantiate(cfg.data)
        teacher = instantiate(cfg.teacher)
        x = data.sample(args.n_train, teacher.d, torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = teacher(x)[0][0]
        flops = step_flops(teacher.d, [k * wm for k in teacher.ks], teacher.d_out)
        flops_of[wm] = flops
        ensembles = [e for e in args.ensembles if e * flops <= args.max_gflop_per_step * 1e9]
        res = {"(a) plain": fmt(bench_plain(teacher, wm, x, y, args.epochs), steps),
               "(b) authors": fmt(bench_authors(teacher, wm, x, args.epochs), steps),
               "(c) tsdyn": fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none"), steps),
               "(d) tsdyn + callbacks": fmt(bench_tsdyn(wm, args.n_train, args.epochs, "default"), steps)}
        for e in ensembles:
            res[f"(e) tsdyn E={e}"] = fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none", e), steps, e)
        if wm in args.compiled_widths:
            res.update(bench_fused(wm, args, steps, flops))
        for name, r in res.items():
            gf = r["student_steps_s"] * flops / 1e9
            lines.append((wm, name, r, gf))
            print(f"| {wm} | {name} | {r['steps_s']:.0f} | {r['student_steps_s']:.0f} | {gf:.1f} |", flush=True)
        results[wm] = res
        c, e1 = res["(c) tsdyn"]["steps_s"], res["(e) tsdyn E=1"]["student_steps_s"]
        ratios.append(f"| {wm} | {c / res['(a) plain']['steps_s']:.2f} | {c / res['(b) authors']['steps_s']:.2f} | "
                      f"{res['(d) tsdyn + callbacks']['steps_s'] / c:.2f} | "
                      + " | ".join(f"{res[f'(e) tsdyn E={e}']['student_steps_s'] / e1:.1f}" if e in ensembles else "-"
                                   for e in args.ensembles)
                      + " |")
    gemm_end = matmul_gflops()
    lines[1] = (f"Large-matmul rate (2048^2 fp32 GEMM, same threads, best of the run's start "
                f"{gemm:.0f} and end {gemm_end:.0f}): **{max(gemm, gemm_end):.1f} GFLOP/s**. "
                f"{steps} steps per epoch, batch {BS}, median of {args.epochs} epochs after a warm-up.")
    gemm = max(gemm, gemm_end)
    lines = [line if isinstance(line, str) else
             f"| {line[0]} | {line[1]} | {line[2]['steps_s']:.0f} | {line[2]['student_steps_s']:.0f} | "
             f"{line[3]:.1f} | {100 * line[3] / gemm:.0f}% | {100 * line[2]['spread']:.0f}% |" for line in lines]
    if args.interleaved:
        lines = lines[:2]
    else:
        lines += ["", "Same-run ratios (student-steps/s relative to E=1 for the ensembles):", "",
                  "| width_mult | (c)/(a) | (c)/(b) | (d)/(c) | " + " | ".join(f"E={e}" for e in args.ensembles) + " |",
                  "|---:|---:|---:|---:|" + "---:|" * len(args.ensembles), *ratios]
        lines += fused_lines(results, gemm, flops_of)
    lines += interleaved_lines(args, gemm)
    lines += ["", "Compilation (first call; inductor's on-disk cache makes a second run's shorter): " + "; ".join(
        f"{name} {sec:.1f} s" for name, sec in COMPILE_TIMES.items()) + "."]
    if args.main_job:
        lines += ["", main_job_lines(args.main_job_epochs)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def fused_lines(results: dict, gemm: float, flops_of: dict) -> list[str]:
    """The fused step's same-run ratios per width (against (a), (b), (c); ensembles: % of the GEMM
    rate and student-steps/s over the authors' steps/s) and the compilation times of this run."""
    lines = ["", "Fused step, same-run ratios (student-steps/s over the named variant's steps/s):", "",
             "| width_mult | variant | / (a) plain | / (b) authors | / (c) autograd | % of GEMM |",
             "|---:|---|---:|---:|---:|---:|"]
    for wm, res in results.items():
        for name, r in res.items():
            if name[:3] in ("(f)", "(g)", "(h)"):
                ss = r["student_steps_s"]
                lines.append(f"| {wm} | {name} | {ss / res['(a) plain']['steps_s']:.2f} | "
                             f"{ss / res['(b) authors']['steps_s']:.2f} | {ss / res['(c) tsdyn']['steps_s']:.2f} | "
                             f"{100 * ss * flops_of[wm] / 1e9 / gemm:.0f}% |")
    return lines


class PhaseTimer(pl.Callback):
    """Wall-clock marks of a training process (added to ``python -m tsdyn.train`` as the last
    callback): fit start, each epoch's start and last step, each epoch's checkpoint (the end of its
    epoch-end work); written to ``path`` as JSON at the end of fit."""

    def __init__(self, path: str):
        self.path, self.marks = path, {"epoch_start": [], "last_step": [], "checkpoint": []}

    def on_fit_start(self, trainer, pl_module):
        self.marks["fit_start"] = time.time()

    def on_train_epoch_start(self, trainer, pl_module):
        self.marks["epoch_start"].append(time.time())
        self.marks["last_step"].append(None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.marks["last_step"][-1] = time.time()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.marks["checkpoint"].append(time.time())

    def on_fit_end(self, trainer, pl_module):
        self.marks["step_path"] = pl_module.step_path
        Path(self.path).write_text(json.dumps(self.marks))


def phases(marks: dict, start: float, end: float, compile_s: float) -> dict:
    """Seconds of a training process's phases from :class:`PhaseTimer`'s ``marks`` and the process's
    ``start`` and ``end``: ``startup`` (interpreter, imports, config, W&B, the nets: up to fit start),
    ``compile``, ``training`` (the epochs' steps, each epoch's shuffle and the teacher labelling
    included, compilation excluded), ``epoch_analyses`` (the measurements at the start and after
    every epoch, checkpoints included) and ``end_of_run`` (after the last epoch's checkpoint: the
    end-of-run analyses, the summary, closing the loggers, process exit)."""
    starts, steps = marks["epoch_start"], marks["last_step"]
    epoch_done = marks["checkpoint"][-1] if marks["checkpoint"] else steps[-1]
    training = sum(b - a for a, b in zip(starts, steps))
    analyses = (starts[0] - marks["fit_start"]) + sum(b - a for a, b in zip(steps[:-1], starts[1:])) \
        + (epoch_done - steps[-1])
    return {"total": end - start, "startup": marks["fit_start"] - start, "compile": compile_s,
            "training": training - compile_s, "epoch_analyses": analyses, "end_of_run": end - epoch_done}


def main_job(overrides: list[str]) -> dict:
    """``python -m tsdyn.train <overrides>`` in a new process (one torch thread, W&B offline), timed
    by :class:`PhaseTimer`: :func:`phases` plus the step path taken."""
    with tempfile.TemporaryDirectory() as run_dir:
        marks_file = Path(run_dir) / "phases.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]),
               "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        cmd = [sys.executable, "-m", "tsdyn.train", *overrides, "trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}/run", "+callbacks.zz_phases._target_=bench.PhaseTimer",
               f"+callbacks.zz_phases.path={marks_file}"]
        start = time.time()
        subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        end = time.time()
        marks = json.loads(marks_file.read_text())
        rows = [json.loads(line) for line in (Path(run_dir) / "run" / "metrics.jsonl").read_text().splitlines()]
        compile_s = sum(r.get("time/compile_s", 0.0) for r in rows)
        return {**phases(marks, start, end, compile_s), "path": marks["step_path"]}


MAIN_JOBS = {  # name -> overrides of the 40-epoch main job
    "main job (default: every analysis, W&B offline)": [],
    "main job, autograd step (before the fused step)": ["step=autograd"],
    "main job, callbacks=none logger=none": ["callbacks=none", "logger=none"],
}


def main_job_lines(epochs: int = 40, extra: list[str] | None = None) -> str:
    """The main job's wall time split into phases, three ways (:data:`MAIN_JOBS`), each its own
    process, and the authors' loop for the same epochs (training only, in this process)."""
    extra = [f"epochs={epochs}", *(extra or [])]
    def merged(overrides):  # a job's own overrides win over extra's for the same key
        own = {o.split("=")[0] for o in overrides}
        return [*overrides, *(e for e in extra if e.split("=")[0] not in own)]
    times = {name: main_job(merged(overrides)) for name, overrides in MAIN_JOBS.items()}
    cfg = compose_cfg([*extra, "run_dir=/tmp/unused"])
    from hydra.utils import instantiate
    data, teacher = instantiate(cfg.data), instantiate(cfg.teacher)
    x = data.train_inputs(teacher.d, 0, "cpu")
    authors = sum(bench_authors(teacher, cfg.student.width_mult, x, epochs - 1)) * epochs / (epochs - 1)
    keys = ["total", "startup", "compile", "training", "epoch_analyses", "end_of_run"]
    lines = [f"Main job ({epochs} epochs, `python -m tsdyn.train`, one process each), wall seconds:", "",
             "| job | step | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
    lines += [f"| {name} | {t['path']} | " + " | ".join(f"{t[k]:.1f}" for k in keys) + " |"
              for name, t in times.items()]
    names = list(MAIN_JOBS)
    total = {name: times[name]["total"] for name in names}
    lines += ["", f"Default / callbacks=none logger=none: **{total[names[0]] / total[names[2]]:.2f}**; "
                  f"default / autograd step: **{total[names[0]] / total[names[1]]:.2f}**; the authors' loop, "
                  f"training only, same epochs: **{authors:.0f} s**."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
