"""``python -m tsdyn.bn_bias``: per-layer share of BatchNorm biases <= 0 of a torchvision model whose
weights the test writes itself (never downloaded)."""
import os

import pytest
import torch
import torchvision
from rich.console import Console

from tests import cli
from tsdyn.bn_bias import bias_table, load_model, report
from tsdyn.config import ConfigError

MODEL = "mobilenet_v3_small"  # small, with BatchNorm


@pytest.fixture(scope="module")
def state():
    """A state_dict whose BN biases are known: layer i has i+1 non-positive biases among the first
    i+1 channels (the rest positive)."""
    net = torchvision.models.get_model(MODEL, weights=None)
    with torch.no_grad():
        for i, (_, bias) in enumerate(bias_table(net)):
            bias.fill_(0.5)
            bias[:min(i + 1, bias.numel())] = -0.25
            bias[0] = 0.0  # zero counts as non-positive
    return net.state_dict()


def expected_shares(state):
    net = torchvision.models.get_model(MODEL, weights=None)
    return [min(i + 1, b.numel()) / b.numel() for i, (_, b) in enumerate(bias_table(net))]


@pytest.mark.slow
def test_weights_file_table_and_figure(state, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    net = load_model(MODEL, weights_file=str(path))
    layers = bias_table(net)
    shares = [(b <= 0).float().mean().item() for _, b in layers]
    assert shares == pytest.approx(expected_shares(state)) and len(layers) > 10
    console = Console(record=True, width=200)
    report(MODEL, layers, tmp_path / "fig" / "hist.png", console)
    text = console.export_text()
    first, last = layers[0][1], layers[-1][1]
    assert f"{100 * 1 / first.numel():.2f}%" in text
    assert f"{100 * min(len(layers), last.numel()) / last.numel():.2f}%" in text
    assert (tmp_path / "fig" / "hist.png").stat().st_size > 10_000


def test_weights_from_torch_hub_cache(state, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.get_model_weights(MODEL).DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
    layers = bias_table(load_model(MODEL))
    assert [(b <= 0).float().mean().item() for _, b in layers] == pytest.approx(expected_shares(state))


def test_model_without_bn_or_unknown_is_refused():
    with pytest.raises(ConfigError, match="model='alexnet' is not allowed: expected a model with"):
        load_model("alexnet")
    with pytest.raises(ConfigError, match="model='vgg16_bnn' is not allowed"):
        load_model("vgg16_bnn")


@pytest.mark.slow
def test_cli_without_weights_says_where_to_put_them(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    res = cli.run(["-m", "tsdyn.bn_bias", f"model={MODEL}", f"hydra.run.dir={tmp_path}/out"], env, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    file_name = torchvision.models.get_model_weights(MODEL).DEFAULT.url.rsplit("/", 1)[-1]
    expected = tmp_path / "torch" / "hub" / "checkpoints" / file_name
    assert len(lines) == 1 and str(expected) in lines[0] and "never downloads" in lines[0]
    assert not list((tmp_path / "out").glob("*.png"))
