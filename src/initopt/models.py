"""The networks under study."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def layer_names(n_hidden: int) -> list[str]:
    """``fc1 .. fcN, out``; zero-padded (fc01..fc10) when N >= 10 so names sort by depth."""
    width = len(str(n_hidden))
    return [f"fc{i:0{width}d}" for i in range(1, n_hidden + 1)] + ["out"]


class MLP(nn.Sequential):
    """x -> [Linear -> activation] * len(hidden) -> Linear -> logits.

    Layers are named ``fc1 .. fcN`` and ``out``, so parameter names read
    ``fc1.weight``, ``out.bias`` in TensorBoard tags and reports.
    """

    def __init__(self, n_in: int, hidden: list[int], n_out: int, activation: str, bias: bool):
        sizes = [n_in, *hidden, n_out]
        names = layer_names(len(hidden))
        modules: list[tuple[str, nn.Module]] = []
        for i, name in enumerate(names):
            modules.append((name, nn.Linear(sizes[i], sizes[i + 1], bias=bias)))
            if name != "out":
                modules.append((f"act{name[2:]}", ACTIVATION_MODULES[activation]()))
        super().__init__(OrderedDict(modules))

    def activation_layers(self) -> list[tuple[str, nn.Module]]:
        """The hidden layers' nonlinearities ``act1 .. actN``: their outputs are the activations."""
        return [(n, m) for n, m in self.named_children() if n.startswith("act")]


def build_model(cfg, n_in: int, n_out: int) -> MLP:
    return MLP(n_in, list(cfg.hidden), n_out, cfg.activation, cfg.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
