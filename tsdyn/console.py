"""What a run prints at the end: the per-layer matching table."""
from __future__ import annotations

from typing import Mapping

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
