"""torch CPU threads: one thread against torch's default, alone and beside a busy process.

    python scripts/bench_threads.py [--repeats 7] [--block-s 0.4] [--sizes toy,mid,big]

Models (ReLU MLPs, EMA momentum as torch.optim.SGD, one training step = forward, loss,
backward, update): toy = 2-64-64-1 on moons, batch 64; mid = 784-128-10, batch 64;
big = 784-512-256-256-128-10, batch 256 (random data of that shape); popK = K members of toy
stacked into one population (initopt's engine, its eager step: K independent batched matrix
products per layer, as a sweep's population trains). FLOP per step is 6 x parameters x batch
(x K) (forward 2, backward 4 per weight and example).

For each model and each load (alone; beside a second python process burning one core)
the two thread counts run interleaved (1, default, 1, default, ...), each block about
``--block-s`` seconds; the script prints the median time per step and the ratio
default / 1 (above 1: one thread is faster). Run it without OMP_NUM_THREADS set, or
torch's default is whatever that says. Not a test: timings are never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from omegaconf import OmegaConf

from initopt.data import load_dataset
from initopt.models import build_model, count_parameters
from initopt.optim import build_optimizer

SIZES = {  # name: (hidden, batch, n_features, n_outputs)
    "toy": ([64, 64], 64, 2, 1),
    "mid": ([128], 64, 784, 10),
    "big": ([512, 256, 256, 128], 256, 784, 10),
}
POPULATIONS = {"pop5": 5, "pop10": 10, "pop20": 20, "pop40": 40, "pop200": 200}  # members of toy, stacked
BURN = "while True: pass"


def make_step(hidden: list[int], batch: int, n_in: int, n_out: int):
    """A closure doing one training step of the model on a fixed batch."""
    torch.manual_seed(0)
    if n_in == 2:
        data = load_dataset(OmegaConf.create({
            "name": "moons", "n_samples": 1000, "noise": 0.2, "factor": 0.5, "test_fraction": 0.25,
            "seed": 0, "limit_train": 0, "preprocess": "none"}), torch.device("cpu"), torch.float32)
        x, y = data.x_train[:batch], data.y_train[:batch]
    else:
        x, y = torch.randn(batch, n_in), torch.randint(0, n_out, (batch,))
    model = build_model(OmegaConf.create({"hidden": hidden, "activation": "relu", "bias": True}), n_in, n_out)
    optimizer = build_optimizer(model.parameters(), OmegaConf.create(
        {"name": "momentum", "lr": 0.01, "beta": 0.1, "form": "ema", "weight_decay": 0.0}))
    if n_out == 1:
        loss_fn = lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y)  # noqa: E731
    else:
        loss_fn = lambda out: torch.nn.functional.cross_entropy(out, y)  # noqa: E731

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x)).backward()
        optimizer.step()

    return step, count_parameters(model)


def make_population_step(members: int):
    """A closure doing one eager step of ``members`` stacked toy models, each on its own batch."""
    from initopt import engine
    from initopt.checks import compose_job
    from initopt.engine.step import TrainStep

    cfg = compose_job(["model.hidden=[64,64]", "data=moons", "batch_size=64", "optim=momentum"])
    data = load_dataset(cfg.data, torch.device("cpu"), torch.float32)
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(members))))
    step = TrainStep(training.population, training.optimizer, data.num_classes, None, None)
    idx = torch.randint(0, data.x_train.shape[0], (members, cfg.batch_size))
    x, y = data.x_train[idx], data.y_train[idx]
    return lambda: step.eager(x, y, False, False), members * sum(p[0].numel() for p in training.population.tensors())


def time_per_step(step, threads: int, block_s: float) -> float:
    """Seconds per step over a block of about ``block_s`` seconds with ``threads`` threads."""
    torch.set_num_threads(threads)
    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < block_s:
        step()
        n += 1
    return elapsed / n


def measure(step, default: int, repeats: int, block_s: float) -> dict[int, float]:
    times: dict[int, list[float]] = {1: [], default: []}
    for _ in range(repeats):
        for threads in times:
            times[threads].append(time_per_step(step, threads, block_s))
    return {t: statistics.median(v) for t, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--block-s", type=float, default=0.4)
    parser.add_argument("--sizes", default="toy,mid,big,pop5,pop10,pop20,pop40,pop200")
    args = parser.parse_args()
    default = torch.get_num_threads()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, default threads {default}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}")
    if default == 1:
        print("torch's default is 1 thread here: nothing to compare")
        return
    print(f"{'model':6} {'MFLOP/step':>10} {'load':>6} {'1 thread':>12} {f'{default} threads':>12} "
          f"{'default/1':>10}")
    for name in args.sizes.split(","):
        if name in POPULATIONS:
            step, n_params = make_population_step(POPULATIONS[name])
            batch = 64
        else:
            hidden, batch, n_in, n_out = SIZES[name]
            step, n_params = make_step(hidden, batch, n_in, n_out)
        mflop = 6 * n_params * batch / 1e6
        for load in ("alone", "busy"):
            burner = subprocess.Popen([sys.executable, "-c", BURN]) if load == "busy" else None
            try:
                med = measure(step, default, args.repeats, args.block_s)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            print(f"{name:6} {mflop:10.2f} {load:>6} {med[1] * 1e6:10.0f}us {med[default] * 1e6:10.0f}us "
                  f"{med[default] / med[1]:10.2f}", flush=True)


if __name__ == "__main__":
    main()
