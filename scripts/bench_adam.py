"""A population's Adam update: torch's fused kernel on a scratch, then each member's lr
(initopt.engine.optimizer, the path taken while it applies) against the ``torch._foreach`` passes.

    python scripts/bench_adam.py [--repeats 30] [--members 20,200,400]

For each population size K, the parameters of the study's toy model (2-64-64-1) and of the deep
narrow one (ten hidden layers of 50), float32, one learning rate in five per member (the study's
lr sweep), random gradients: ``PopulationOptimizer.step`` with the fused path, then with the
passes, alternated ``--repeats`` times. Printed: the median milliseconds of each and passes /
fused (> 1: the fused path is faster). The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from initopt.engine.optimizer import PopulationOptimizer

LRS = (0.003, 0.01, 0.03, 0.1, 0.3)
MODELS = {
    "toy 2-64-64-1": [(64, 2), (64,), (64, 64), (64,), (1, 64), (1,)],
    "deep 10x50": [(50, 2), (50,)] + [(50, 50), (50,)] * 9 + [(1, 50), (1,)],
}


def optimizer(shapes, members: int, fused: bool) -> tuple[PopulationOptimizer, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(members, *s, generator=generator) for s in shapes]
    hyper = {"lr": [LRS[k % len(LRS)] for k in range(members)], "beta1": [0.9] * members,
             "beta2": [0.999] * members, "eps": [1e-8] * members, "weight_decay": [0.0] * members}
    opt = PopulationOptimizer(params, "adam", hyper)
    if not fused:
        opt._scratch = None  # the passes
    return opt, [torch.randn(p.shape, generator=generator) for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--members", default="20,200,400")
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}")
    print(f"{'model':<14} {'K':>4} {'fused ms':>9} {'passes ms':>10} {'passes/fused':>13}")
    for label, shapes in MODELS.items():
        for k in (int(m) for m in args.members.split(",")):
            variants = {name: optimizer(shapes, k, name == "fused") for name in ("fused", "passes")}
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats + 1):  # the first round warms up
                for name, (opt, grads) in variants.items():
                    start = time.perf_counter()
                    opt.step(grads)
                    times[name].append(time.perf_counter() - start)
            fused, passes = (statistics.median(times[v][1:]) for v in ("fused", "passes"))
            print(f"{label:<14} {k:>4} {fused * 1e3:9.2f} {passes * 1e3:10.2f} {passes / fused:13.2f}")


if __name__ == "__main__":
    main()
