"""What a run prints at the end: the per-layer matching table, then where the run is and what to do next."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tsdyn import keys


def print_match_table(summary: Mapping, console: Console | None = None) -> None:
    """Per hidden layer (layer 0 = lowest): mean / min / max best correlation, shares above the
    thresholds and dead teacher nodes, from ``summary["final"]`` (ensemble means when E > 1)."""
    final = summary.get("final", {})
    layers = keys.layers(final, "match", "mean_best")
    fracs = keys.frac_above_thresholds(final)
    table = Table(title=f"Teacher-student node matching ({summary.get('status')}, "
                        f"epoch {summary.get('epochs')}, eval loss {final.get('loss/eval', float('nan')):.4g})")
    for col in ["layer", "mean best", "min best", "max best", *[f"> {f}" for f in fracs], "dead teacher"]:
        table.add_column(col, justify="right")
    for layer in layers:
        get = lambda name: final.get(keys.layer_key("match", layer, name), float("nan"))  # noqa: E731
        table.add_row(str(layer), f"{get('mean_best'):.4f}", f"{get('min_best'):.4f}", f"{get('max_best'):.4f}",
                      *[f"{100 * get(keys.frac_above(f)):.0f}%" for f in fracs], f"{get('dead_teacher'):.0f}")
    (console or Console()).print(table)


def next_steps(folder: str | Path, multirun: bool = False) -> list[str]:
    """What to do with a finished run (``multirun``: a multirun folder): where it is, the command
    that uploads its offline W&B runs (when it has any) and the command that draws its figures."""
    folder = Path(folder)
    pattern = ("*/" if multirun else "") + "wandb/offline-run-*"
    lines = [f"{'multirun' if multirun else 'run'} folder: {folder}"]
    if any(folder.glob(pattern)):
        lines.append(f"upload to W&B:    wandb sync {folder / pattern}")
    lines.append(f"figures + table:  python -m tsdyn.report {folder}")
    return lines


class NextSteps(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): at the end of a multirun, print
    :func:`next_steps` for its folder (a single run prints its own, after its table)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print("\n".join(next_steps(config.hydra.sweep.dir, multirun=True)), flush=True)
