"""``python -m tsdyn.bn_bias model=vgg16_bn``: the share of BatchNorm biases <= 0, per layer, of a
pretrained torchvision classification model (the paper's evidence for sparse activations).

Never downloads: the weights come from ``weights_file`` or from the torch hub cache, where
torchvision itself would keep them (``<torch.hub.get_dir()>/checkpoints/<file name of the url>``).
Prints the per-layer table and saves the histogram figure (``out``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tsdyn.cli import CONF, check_command_line
from tsdyn.config import ConfigError, fail

if TYPE_CHECKING:  # torch and torchvision load once the command line is checked
    import torch
    from torch import nn


def architecture(model: str) -> nn.Module:
    """The randomly initialised torchvision ``model``; :class:`ConfigError` for an unknown name or a
    model without (affine) BatchNorm layers."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if model not in names:
        fail("model", model, f"a torchvision classification model, one of {names}")
    net = torchvision.models.get_model(model, weights=None)
    if not bias_table(net):
        fail("model", model, "a model with (affine) BatchNorm layers, e.g. vgg16_bn or resnet50")
    return net


def weights_path(model: str, weights: str = "DEFAULT", weights_file: str | None = None) -> Path:
    """The state_dict file for ``model``: ``weights_file`` if given, else torchvision's file for the
    ``weights`` entry in the torch hub cache. :class:`ConfigError` (saying where to put the file)
    when it is not there."""
    import torch
    import torchvision

    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            fail("weights_file", weights_file, "an existing state_dict file")
        return path
    enum = torchvision.models.get_model_weights(model)
    if weights not in enum.__members__:
        fail("weights", weights, f"one of {list(enum.__members__)} for {model}")
    url = enum[weights].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ConfigError(f"no weights for {model} offline: put {url} at {path} "
                          f"(or pass weights_file=/path/to/state_dict.pth); tsdyn never downloads")
    return path


def load_model(model: str, weights: str = "DEFAULT", weights_file: str | None = None) -> nn.Module:
    """``model`` with its pretrained state_dict (see :func:`weights_path`), in eval mode."""
    import torch

    net = architecture(model)
    state = torch.load(weights_path(model, weights, weights_file), map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("state_dict", state))
    return net.eval()


def bias_table(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(module name, bias [C])`` of every affine BatchNorm layer of ``net``, in module order."""
    from torch import nn

    return [(name, m.bias.detach()) for name, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None]


def report(model: str, layers: list[tuple[str, torch.Tensor]], out: Path, console: Console | None = None) -> None:
    """Print the per-layer table and save the histogram figure to ``out``."""
    import torch

    from tsdyn import plots
    from tsdyn.metrics.bn import frac_nonpositive

    table = Table(title=f"BatchNorm biases of {model}: share <= 0 per layer")
    for col in ("layer", "module", "channels", "share <= 0", "mean bias"):
        table.add_column(col, justify="right")
    for i, (name, bias) in enumerate(layers):
        table.add_row(str(i), name, str(bias.numel()), f"{100 * frac_nonpositive(bias).item():.2f}%",
                      f"{bias.mean().item():.4f}")
    every = torch.cat([b for _, b in layers])
    table.add_row("all", "", str(every.numel()), f"{100 * frac_nonpositive(every).item():.2f}%",
                  f"{every.mean().item():.4f}")
    (console or Console()).print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.bias_histograms([b.numpy() for _, b in layers], [str(i) for i in range(len(layers))],
                          f"{model}: BatchNorm biases per layer").savefig(out)
    (console or Console()).print(f"histograms: {out}")


@hydra.main(version_base="1.3", config_path=CONF, config_name="bn_bias")
def main(cfg: DictConfig) -> None:
    try:
        net = load_model(cfg.model, cfg.weights, cfg.weights_file)
    except ConfigError as err:
        print(f"tsdyn: config error: {err}", file=sys.stderr)
        sys.exit(2)
    report(cfg.model, bias_table(net), Path(cfg.out))


def cli() -> None:
    """``python -m tsdyn.bn_bias`` and the ``tsdyn-bn-bias`` console script: the overrides checked
    first (:func:`tsdyn.cli.check_command_line`: the model's name needs torchvision, checked after)."""
    check_command_line("bn_bias")
    main()


if __name__ == "__main__":
    cli()
