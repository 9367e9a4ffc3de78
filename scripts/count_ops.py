"""Operator calls per training step: the framework's loop against a minimal hand-written loop.

    python scripts/count_ops.py [--steps 100] [--optim momentum] [--hidden 64,64] [--log-every 1]

On a small network the CPU step is bound by per-operator overhead, so the number of operator
calls per step predicts the loop ratio of ``scripts/bench.py`` without timing anything (the
count is exact and the same on a busy machine). Two counts per step, each the difference
between a run of 2N and one of N steps divided by N (so set-up, the evaluation at
initialization and the final evaluation cancel; flushes and checkpoints are amortized in):

* ``torch calls``: Python-level calls into torch (functions and tensor methods), counted by a
  ``TorchFunctionMode``: what the Python interpreter pays for;
* ``ATen ops``: every operator that reaches the dispatcher, backward included, counted by a
  ``TorchDispatchMode``.

The framework runs ``engine.build(cfg, data).fit(sinks=None)``, logging gradient norms every
``--log-every`` steps into its device buffers (flushed to the host every 100 steps); the hand
loop is ``scripts/bench.py``'s minimal loop (same model, data, batch order and torch.optim
optimizer; nothing recorded).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from bench import minimal_run  # beside this script
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset

CPU = torch.device("cpu")


class TorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def framework(cfg, data) -> None:
    engine.build(cfg, data).fit()


def hand_loop(cfg, data) -> None:
    """scripts/bench.py's minimal loop, without its final evaluation."""
    minimal_run(cfg, data, evaluations=False)


def counted(run, cfg, data, mode_cls) -> Counter:
    mode = mode_cls()
    with mode:
        run(cfg, data)
    return mode.calls


def per_step(run, overrides: list[str], steps: int, mode_cls) -> tuple[float, Counter]:
    """Calls per step: (count at 2N steps - count at N steps) / N, and that difference by name."""
    cfgs = [compose_job([*overrides, f"steps={n}", f"eval_every={n}"]) for n in (steps, 2 * steps)]
    data = load_dataset(cfgs[0].data, CPU, torch.float32)
    short, long = (counted(run, c, data, mode_cls) for c in cfgs)
    diff = long - short
    return sum(diff.values()) / steps, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optim", default="momentum")
    parser.add_argument("--hidden", default="64,64")
    parser.add_argument("--data", default="moons")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--top", type=int, default=0, help="also list the framework's N most called ops")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"model.hidden=[{args.hidden}]", f"data={args.data}", f"batch_size={args.batch_size}",
                 f"optim={args.optim}", f"log_every={args.log_every}", "flush_every=100", "act_every=0"]
    print(f"MLP hidden [{args.hidden}] on {args.data}, batch {args.batch_size}, optim={args.optim}, "
          f"log_every={args.log_every}; calls per step (difference of {2 * args.steps} and {args.steps} steps)")
    for label, mode_cls in (("torch calls", TorchCalls), ("ATen ops", AtenOps)):
        ours, by_name = per_step(framework, overrides, args.steps, mode_cls)
        hand, _ = per_step(hand_loop, overrides, args.steps, mode_cls)
        print(f"  {label:>11}: framework {ours:6.1f}  hand loop {hand:6.1f}  ratio {ours / hand:.2f}")
        if args.top:
            top = ", ".join(f"{name} {n / args.steps:.1f}" for name, n in by_name.most_common(args.top))
            print(f"      framework's most called: {top}")


if __name__ == "__main__":
    main()
