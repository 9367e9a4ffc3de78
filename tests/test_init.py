"""Initializations: what torch.nn.init gives, and the physics the study relies on."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from initopt.engine.population import member_losses
from initopt.init import initialize
from initopt.models import MLP


def init_cfg(name: str, **kw):
    base = {"bias_std": 0.0, "std": 0.01, "distribution": "normal", "gain": 1.0,
            "mode": "fan_in", "nonlinearity": "relu"}
    return OmegaConf.create({**base, **kw, "name": name})


def deep_relu(width=256, depth=8, n_in=256):
    return MLP(n_in, [width] * depth, 1, "relu", bias=True)


def test_zero_init_gives_exactly_zero_weight_gradients_and_only_the_output_bias_learns():
    torch.manual_seed(0)
    model = MLP(2, [10, 5], 1, "relu", bias=True)
    initialize(model, init_cfg("zero"))
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,)).float()
    loss = member_losses(model(x).unsqueeze(0), y.unsqueeze(0), 2).sum()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)  # zero logits: ln 2
    loss.backward()
    for name, p in model.named_parameters():
        if name == "out.bias":
            assert p.grad.abs().item() > 0
        else:
            assert torch.count_nonzero(p.grad) == 0, name


def test_zero_init_on_ten_classes_starts_at_ln_10():
    model = MLP(8, [16], 10, "relu", bias=True)
    initialize(model, init_cfg("zero"))
    loss = member_losses(model(torch.randn(32, 8)).unsqueeze(0), torch.randint(0, 10, (1, 32)), 10).sum()
    assert loss.item() == pytest.approx(math.log(10), abs=1e-6)


def test_schemes_have_their_textbook_weight_variance():
    torch.manual_seed(0)
    model = MLP(400, [300], 200, "relu", bias=True)
    expected = {
        "normal": lambda fi, fo: 0.01**2,
        "xavier": lambda fi, fo: 2.0 / (fi + fo),
        "he": lambda fi, fo: 2.0 / fi,
    }
    for name, var in expected.items():
        for dist in ("normal", "uniform"):
            initialize(model, init_cfg(name, distribution=dist))
            w = model.fc1.weight
            assert w.var().item() == pytest.approx(var(400, 300), rel=0.03), (name, dist)
            assert torch.count_nonzero(model.fc1.bias) == 0


def test_bias_std_draws_normal_biases():
    torch.manual_seed(0)
    model = MLP(4, [5000], 1, "relu", bias=True)
    initialize(model, init_cfg("he", bias_std=0.5))
    assert model.fc1.bias.std().item() == pytest.approx(0.5, rel=0.05)


def _activation_variances(model: MLP, x: torch.Tensor) -> list[float]:
    out, variances = x, []
    for module in model:
        out = module(out)
        if isinstance(module, torch.nn.ReLU):
            variances.append(out.pow(2).mean().item())  # E[a^2], what the variance argument tracks
    return variances


@torch.no_grad()
def test_he_keeps_relu_activations_steady_while_xavier_halves_them_per_layer():
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    model = deep_relu()
    initialize(model, init_cfg("he"))
    he = _activation_variances(model, x)
    initialize(model, init_cfg("xavier"))
    xavier = _activation_variances(model, x)
    assert max(he) / min(he) < 1.6
    ratios = [b / a for a, b in zip(xavier, xavier[1:])]
    assert all(0.4 < r < 0.6 for r in ratios), ratios


@torch.no_grad()
def test_small_normal_vanishes_with_depth():
    torch.manual_seed(0)
    model = deep_relu()
    initialize(model, init_cfg("normal", std=0.01))
    v = _activation_variances(model, torch.randn(1024, 256))
    # each layer multiplies E[a^2] by fan_in * std^2 / 2 = 0.0128
    assert v[-1] / v[0] < 1e-10
