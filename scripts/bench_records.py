"""The training phase of a study-like population: its arithmetic vs its records.

    python scripts/bench_records.py [--members 50] [--steps 1500] [--repeats 3]

One population of the toy MLP (2-64-64-1 ReLU on moons, batch 64, EMA momentum; the study's
model), ``--members`` seeds, ``--steps`` steps, evaluations every 500 steps, trained three ways,
interleaved (A B C A B C ...), each a fresh ``engine.build``:

* records:    every member's scalars at every step (log_every=1, flush_every=100) to its own
              TensorBoard run, as the population launcher writes them (mirrored in memory);
* drain only: the same recording on the device and the device->host drains, no sinks;
* arithmetic: the same steps with no records at all (log_every=0, no sinks).

Printed: the medians over repeats, of wall time and of this process's CPU time (steadier on a
shared machine), records / arithmetic (issue 17's target: <= 1.5) and the writing's cost a row
(records - drain only). Also ``uptime``: the machine is shared, read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from initopt import engine, tbread
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.sinks import PopulationLogs
from initopt.tb import RunLogger

TOY = ["model.hidden=[64,64]", "data=moons", "batch_size=64", "optim=momentum", "act_every=0"]


def population_fit(steps: int, members: int, log_every: int, logdir: Path | None) -> tuple[float, float]:
    """Seconds of ``Training.fit`` alone, wall and this process's CPU (building and closing the
    loggers not counted)."""
    cfg = compose_job([*TOY, f"steps={steps}", "eval_every=500", "flush_every=100", f"log_every={log_every}"])
    data = load_dataset(cfg.data, torch.device("cpu"), torch.float32)
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(members))))
    logs = None
    if logdir is not None:
        names = training.population.names
        logs = PopulationLogs([RunLogger(logdir / f"m{k}", names, heatmap=False, mirror=True) for k in range(members)])
    start, cpu = time.perf_counter(), time.process_time()
    training.fit(logs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if logs is not None:
        logs.close()
        tbread.drop_mirrors(logdir)  # as a sweep's end takes them
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    walls: dict[str, list[tuple[float, float]]] = {"records": [], "drain only": [], "arithmetic": []}
    population_fit(20, args.members, 1, None)  # warm-up: imports, data, first allocations
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            walls["records"].append(population_fit(args.steps, args.members, 1, Path(tmp) / f"r{r}"))
            walls["drain only"].append(population_fit(args.steps, args.members, 1, None))
            walls["arithmetic"].append(population_fit(args.steps, args.members, 0, None))
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1][0]:.2f} s wall {v[-1][1]:.2f} s CPU"
                                              for k, v in walls.items()), flush=True)
    rows = args.members * args.steps
    print(f"{args.members} members x {args.steps} steps ({rows} TensorBoard rows), medians of {args.repeats}:")
    for i, clock in enumerate(("wall", "CPU")):
        med = {k: statistics.median(t[i] for t in v) for k, v in walls.items()}
        print(f"  {clock}: " + ", ".join(f"fit {k} {v:.2f} s" for k, v in med.items()))
        print(f"  {clock}: records / arithmetic {med['records'] / med['arithmetic']:.2f} (target <= 1.5), "
              f"drain only / arithmetic {med['drain only'] / med['arithmetic']:.2f}, "
              f"writing {(med['records'] - med['drain only']) / rows * 1e6:.1f} us a row")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
