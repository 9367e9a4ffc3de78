"""How fast this machine's matrix products of a population step's shapes are, one thread.

    python scripts/bench_bmm.py [--members 200] [--repeats 5]

The study's step is mostly batched matrix products of K members' 64 x 64 blocks (batch 64,
hidden 64): ``torch.bmm`` of (K, 64, 64) x (K, 64, 64), as the forward pass and the two backward
products compute them. Printed: GFLOP/s (median of interleaved repeats) of that ``bmm``, of one
``mm`` of the same inner shape ((64 K) x 64 x 64) and of a 512^3 ``mm`` (a large product: the
machine's practical peak). When the batched product runs at the plain product's speed, the
population step is as fast as the machine's arithmetic allows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def seconds_per_call(fn, calls: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, b, h = args.members, 64, 64
    acts, weights = torch.randn(k, b, h), torch.randn(k, h, h)
    tall, square = torch.randn(k * b, h), torch.randn(h, h)
    a, c = torch.randn(512, 512), torch.randn(512, 512)
    cases = {
        f"bmm ({k}, 64, 64) x ({k}, 64, 64)": (lambda: torch.bmm(acts, weights.transpose(1, 2)), 2 * k * b * h * h),
        f"mm ({k * b} x 64) x (64 x 64)": (lambda: tall @ square, 2 * k * b * h * h),
        "mm 512 x 512 x 512": (lambda: a @ c, 2 * 512**3),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, flop) in cases.items():
            rates[name].append(flop / seconds_per_call(fn) / 1e9)
    for name, values in rates.items():
        print(f"{name:34} {statistics.median(values):6.1f} GFLOP/s (one thread)")


if __name__ == "__main__":
    main()
