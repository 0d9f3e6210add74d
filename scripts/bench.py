"""Speed of the teacher-student loop: tsdyn against a plain PyTorch loop and the authors' loop.

Everything runs in this one process, on the same teacher, data and number of steps, and is
reported as same-run ratios (absolute speeds vary with the machine and its load):

  (a) plain    a plain PyTorch loop over pre-made batch tensors (nn.Linear student): the floor
  (b) authors  the authors' loop: DataLoader over an in-memory TensorDataset (shuffle, no workers),
               teacher forward every step, ``torch.isnan(loss).item()`` every step
  (c) tsdyn    tsdyn's real path: TeacherStudent + pl.Trainer, callbacks off
  (d) +cb      the same with the default callbacks (all analyses at their default frequency)
  (e) E=k      tsdyn with k students at once (``student.num_students=k``)

Usage: ``make bench`` or ``python scripts/bench.py [--widths 10 1 50] [--epochs 3] [--out docs/BENCHMARKS.md]``.
``--main-job`` also times the default main job (40 epochs) against the authors' loop for 40 epochs.
"""
from __future__ import annotations

import argparse
import platform
import statistics
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


def bench_tsdyn(width_mult, n_train, epochs, callbacks: str, num_students: int = 1) -> list[float]:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_cfg([f"student.width_mult={width_mult}", f"student.num_students={num_students}",
                           f"data.n_train={n_train}", f"epochs={epochs + 2}", f"callbacks={callbacks}",
                           "logger=none", "trainer.enable_progress_bar=false", f"run_dir={run_dir}"])
        module, trainer = build(cfg, Path(run_dir) if callbacks != "none" else None)
        timer = EpochTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module)
        return timer.epochs()


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
    p.add_argument("--max-gflop-per-step", type=float, default=4.0,
                   help="skip ensembles whose step exceeds this (e.g. E=64 at width_mult 50)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--main-job", action="store_true", help="also: the 40-epoch main job vs the authors' loop")
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
    ratios = []
    for wm in args.widths:
        cfg = compose_cfg([f"student.width_mult={wm}", "run_dir=/tmp/unused"])
        from hydra.utils import instantiate
        data = instantiate(cfg.data)
        teacher = instantiate(cfg.teacher)
        x = data.sample(args.n_train, teacher.d, torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = teacher(x)[0][0]
        flops = step_flops(teacher.d, [k * wm for k in teacher.ks], teacher.d_out)
        ensembles = [e for e in args.ensembles if e * flops <= args.max_gflop_per_step * 1e9]
        res = {"(a) plain": fmt(bench_plain(teacher, wm, x, y, args.epochs), steps),
               "(b) authors": fmt(bench_authors(teacher, wm, x, args.epochs), steps),
               "(c) tsdyn": fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none"), steps),
               "(d) tsdyn + callbacks": fmt(bench_tsdyn(wm, args.n_train, args.epochs, "default"), steps)}
        for e in ensembles:
            res[f"(e) tsdyn E={e}"] = fmt(bench_tsdyn(wm, args.n_train, args.epochs, "none", e), steps, e)
        for name, r in res.items():
            gf = r["student_steps_s"] * flops / 1e9
            lines.append((wm, name, r, gf))
            print(f"| {wm} | {name} | {r['steps_s']:.0f} | {r['student_steps_s']:.0f} | {gf:.1f} |", flush=True)
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
    lines += ["", "Same-run ratios (student-steps/s relative to E=1 for the ensembles):", "",
              "| width_mult | (c)/(a) | (c)/(b) | (d)/(c) | " + " | ".join(f"E={e}" for e in args.ensembles) + " |",
              "|---:|---:|---:|---:|" + "---:|" * len(args.ensembles), *ratios]
    if args.main_job:
        lines += ["", main_job_lines()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def main_job_lines() -> str:
    """The default main job (40 epochs, callbacks on) against the authors' loop for 40 epochs."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_cfg(["logger=none", "trainer.enable_progress_bar=false", f"run_dir={run_dir}"])
        module, trainer = build(cfg, Path(run_dir))
        t = time.perf_counter()
        trainer.fit(module)
        ours = time.perf_counter() - t
        x, teacher, epochs = module._train[0].cpu(), module.teacher.cpu(), cfg.epochs
    authors = sum(bench_authors(teacher, cfg.student.width_mult, x, epochs - 1))
    return (f"Main job (`python -m tsdyn.train`, 40 epochs, default callbacks): **{ours:.0f} s**; "
            f"the authors' loop, training only, same 40 epochs: **{authors * epochs / (epochs - 1):.0f} s**.")


if __name__ == "__main__":
    main()
