"""Cost of logging every step: the framework's loop with per-step gradient-norm logging
(to real TensorBoard event files) against the same loop with step logging off, and with the
per-tensor statistics of the default config on top (weight norm and update ratio every
``--param-every`` steps, histograms every ``--hist-every``).

    python scripts/bench_logging.py [--steps 2000] [--repeats 7] [--hidden 64,64]

All variants train the same 2-64-64-1 ReLU MLP on moons (batch 64, EMA momentum) from
the same seed; they are run interleaved (A B C A B C ...) so machine noise hits all alike,
and the ratios of medians are printed. Not a test: timing thresholds don't belong in tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.sinks import PopulationLogs
from initopt.tb import RunLogger


def one_run(data, hidden: list[int], steps: int, log_every: int, logdir: Path | None) -> float:
    cfg = compose_job([f"model.hidden=[{','.join(map(str, hidden))}]", "optim=momentum", "batch_size=64",
                       f"steps={steps}", f"eval_every={steps}", "flush_every=100", f"log_every={log_every}",
                       "act_every=0"])
    training = engine.build(cfg, data)
    logs = PopulationLogs([RunLogger(logdir, training.population.names)]) if logdir else None
    start = time.perf_counter()
    training.fit(logs)
    if logs is not None:
        logs.close()  # the events must be on disk for the time to count
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hidden", default="64,64")
    parser.add_argument("--param-every", type=int, default=50)
    parser.add_argument("--hist-every", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden = [int(h) for h in args.hidden.split(",")]
    data = load_dataset(OmegaConf.create({
        "name": "moons", "n_samples": 1000, "noise": 0.2, "factor": 0.5, "test_fraction": 0.25,
        "seed": 0, "limit_train": 0, "preprocess": "none"}), torch.device("cpu"), torch.float32)

    times: dict[str, list[float]] = {"off": [], "every step": [], "+ tensor stats": []}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(data, hidden, 200, 1, Path(tmp) / "warmup")
        for r in range(args.repeats):
            times["off"].append(one_run(data, hidden, args.steps, 0, None))
            times["every step"].append(one_run(data, hidden, args.steps, 1, Path(tmp) / f"r{r}"))
            times["+ tensor stats"].append(one_run(data, hidden, args.steps, 1, Path(tmp) / f"s{r}",
                                                   args.param_every, args.hist_every))
    med = {k: statistics.median(v) for k, v in times.items()}
    arch = "-".join(map(str, [2, *hidden, 1]))
    print(f"MLP {arch}, batch 64, {args.steps} steps, median of {args.repeats} interleaved runs")
    for k, v in med.items():
        print(f"  logging {k:>10}: {v * 1e6 / args.steps:7.1f} us/step")
    print(f"  ratio every-step / off: {med['every step'] / med['off']:.3f}")
    print(f"  ratio every-step + tensor stats (param_every={args.param_every}, hist_every={args.hist_every})"
          f" / off: {med['+ tensor stats'] / med['off']:.3f}")


if __name__ == "__main__":
    main()
