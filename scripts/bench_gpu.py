"""Speed of the training step on a GPU: autograd against the fused step, eager and compiled, with
and without CUDA graphs, for E = 1, 64 and 1024 students at once.

Every variant trains the same ReLUNet student (the main job's teacher architecture, hidden widths x
``width_mult``) on the same batches in this one process; the table gives steps/s and
student-steps/s, and each variant's ratio to the autograd step of the same E (same-run ratios):

  autograd     ReLUNet forward, ``per_student_loss``, ``backward()``, ``torch.optim.SGD.step()`` (tsdyn's
               autograd path)
  fused        the fused step (``tsdyn.fused.FusedSGD``), eager
  compiled     the fused step through torch.compile (inductor), ``--chunk`` steps per call
  cudagraphs   the same, compiled with ``mode="reduce-overhead"`` (CUDA graphs: one launch per call)

Usage: ``python scripts/bench_gpu.py [--ensembles 1 64 1024] [--widths 10 1] [--out gpu.md]``.
Without CUDA it says so and exits (``--device cpu`` runs it on the CPU, for testing).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tsdyn.fused import FusedSGD  # noqa: E402
from tsdyn.nets import per_student_loss  # noqa: E402
from tsdyn.nets import ReLUNet  # noqa: E402

D, KS, D_OUT, BS = 20, [10, 15, 20, 25], 100, 64
VARIANTS = ("autograd", "fused", "compiled", "cudagraphs")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(variant: str, members: int, width_mult: int, device: torch.device, chunk: int):
    """A fresh student of ``members`` members and a function running ``chunk`` SGD steps of
    ``variant`` on ``xs`` ``[chunk, BS, D]``, ``ys`` ``[chunk, BS, D_OUT]`` (losses into ``loss_sum``)."""
    torch.manual_seed(0)
    student = ReLUNet(D, [k * width_mult for k in KS], D_OUT, members).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    loss_sum = torch.zeros(members, device=device)
    if variant == "autograd":
        def step(xs, ys):
            for x, y in zip(xs, ys):
                losses = per_student_loss(student(x)[0], y, "mse")
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                loss_sum.add_(losses.detach())
        return step
    fused = FusedSGD(student, opt, "mse", compile_steps=0 if variant == "fused" else chunk,
                     cuda_graphs=variant == "cudagraphs")
    return lambda xs, ys: loss_sum.copy_(fused(xs, ys, loss_sum)[0])


def time_variant(variant: str, members: int, width_mult: int, device: torch.device, steps: int,
                 chunk: int, reps: int) -> tuple[float, float]:
    """(median seconds per step over ``reps`` runs of ``steps`` steps, seconds of the first call:
    compilation and warm-up)."""
    xs = torch.randn(steps, BS, D, device=device) * 10
    ys = torch.randn(steps, BS, D_OUT, device=device)
    step = make_step(variant, members, width_mult, device, chunk)
    k = 1 if variant == "autograd" else chunk
    sync(device)
    start = time.perf_counter()
    step(xs[:k], ys[:k])
    step(xs[:k], ys[:k])  # CUDA graphs record on a later call
    sync(device)
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for i in range(0, steps - steps % k, k):
            step(xs[i:i + k], ys[i:i + k])
        sync(device)
        times.append((time.perf_counter() - start) / (steps - steps % k))
    return statistics.median(times), first


def table(device: torch.device, ensembles: list[int], widths: list[int], variants: list[str], steps: int,
          chunk: int, reps: int) -> str:
    lines = [f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch "
             f"{torch.__version__}; {steps} steps per timing, batch {BS}, median of {reps}, {chunk} steps "
             f"per compiled call.", "",
             "| width_mult | E | variant | steps/s | student-steps/s | x autograd | first call (s) |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for wm in widths:
        for e in ensembles:
            base = None
            for variant in variants:
                per_step, first = time_variant(variant, e, wm, device, steps, chunk, reps)
                base = base or per_step
                lines.append(f"| {wm} | {e} | {variant} | {1 / per_step:.0f} | {e / per_step:.0f} | "
                             f"{base / per_step:.2f} | {first:.1f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ensembles", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--widths", type=int, nargs="+", default=[10, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=500, help="steps per timing")
    p.add_argument("--chunk", type=int, default=5, help="steps per compiled call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing timed (--device cpu runs it on the CPU)", file=sys.stderr)
        return 0
    device = torch.device(args.device)
    variants = [v for v in args.variants if device.type == "cuda" or v != "cudagraphs"]
    text = table(device, args.ensembles, args.widths, variants, args.steps, args.chunk, args.reps)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
