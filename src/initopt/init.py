"""Named weight initializations, each a call into ``torch.nn.init``.

==========  ==========================================================================
``zero``    W = 0
``normal``  W ~ N(0, std^2)
``xavier``  Var W = gain^2 * 2 / (fan_in + fan_out)      (normal, or uniform on +-sqrt(3 Var))
``he``      Var W = gain(nonlinearity)^2 / fan,  fan = fan_in or fan_out (2 / fan_in for ReLU)
==========  ==========================================================================

Biases are zero unless ``bias_std > 0``, then b ~ N(0, bias_std^2).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn


def _init_weight(w: torch.Tensor, cfg: DictConfig) -> None:
    if cfg.name == "zero":
        nn.init.zeros_(w)
    elif cfg.name == "normal":
        nn.init.normal_(w, mean=0.0, std=cfg.std)
    elif cfg.name == "xavier":
        fn = nn.init.xavier_normal_ if cfg.distribution == "normal" else nn.init.xavier_uniform_
        fn(w, gain=cfg.gain)
    elif cfg.name == "he":
        fn = nn.init.kaiming_normal_ if cfg.distribution == "normal" else nn.init.kaiming_uniform_
        fn(w, mode=cfg.mode, nonlinearity=cfg.nonlinearity)
    else:
        raise ValueError(f"unknown init {cfg.name!r}")


def _init_bias(b: torch.Tensor, cfg: DictConfig) -> None:
    if cfg.bias_std > 0:
        nn.init.normal_(b, mean=0.0, std=cfg.bias_std)
    else:
        nn.init.zeros_(b)


@torch.no_grad()
def initialize(model: nn.Module, cfg: DictConfig) -> None:
    """Apply the configured scheme to every Linear layer's weight and bias, in layer order."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _init_weight(module.weight, cfg)
            if module.bias is not None:
                _init_bias(module.bias, cfg)
