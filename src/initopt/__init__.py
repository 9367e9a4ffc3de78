"""initopt: how weight initialization and the optimizer shape training."""

__version__ = "0.1.0"
