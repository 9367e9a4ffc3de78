"""A population's evaluation: in slices of members (initopt.engine.loop.evaluation_slices), in
place, against the whole population at once, and against the evaluation before slices (whole,
each nonlinearity's output a new tensor).

    python scripts/bench_eval.py [--repeats 7] [--members 20,200,400]

For each population size K, the study's toy model (2-64-64-1 ReLU on moons: 750 training and 250
held-out points) and the deep narrow one (ten hidden layers of 50, tanh): ``evaluate`` (both sets,
every member) with the slices the framework takes, with one slice of all members, and as before
(one forward of all members, out of place), alternated ``--repeats`` times. Printed: the median
milliseconds of each and their ratios to the sliced one (> 1: the slices are faster). The machine
is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.engine import loop
from initopt.engine.population import member_accuracies, member_losses

CPU = torch.device("cpu")
MODELS = {
    "toy 2-64-64-1 relu": ["model.hidden=[64,64]", "model.activation=relu"],
    "deep 10x50 tanh": ["model=deep", "model.activation=tanh"],
}
SLICED = loop.EVAL_SLICE_BYTES


def seconds(population, data, slice_bytes: int) -> float:
    loop.EVAL_SLICE_BYTES = slice_bytes
    start = time.perf_counter()
    loop.evaluate(population, data)
    return time.perf_counter() - start


@torch.no_grad()
def seconds_before(population, data) -> float:
    """The evaluation as it was: one forward of all members, each nonlinearity out of place."""
    start = time.perf_counter()
    cols = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        logits = population.forward(population.params, x)
        ys = y.expand(population.k, *y.shape)
        cols += [member_losses(logits, ys, data.num_classes), member_accuracies(logits, ys, data.num_classes)]
    torch.stack(cols, dim=1).numpy()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--members", default="20,200,400")
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}; slices of at most {SLICED >> 20} MiB of a layer's outputs")
    print(f"{'model':<20} {'K':>4} {'slices':>6} {'sliced ms':>10} {'whole ms':>9} {'before ms':>10} "
          f"{'whole/sliced':>13} {'before/sliced':>14}")
    for label, overrides in MODELS.items():
        cfg = compose_job(["data=moons", *overrides])
        data = load_dataset(cfg.data, CPU, torch.float32)
        for k in (int(m) for m in args.members.split(",")):
            population = engine.build(cfg, data, engine.members_of(cfg, list(range(k)))).population
            loop.EVAL_SLICE_BYTES = SLICED
            slices = len(loop.evaluation_slices(population, len(data.x_train)))
            times: dict[str, list[float]] = {"sliced": [], "whole": [], "before": []}
            seconds(population, data, SLICED)  # warm-up
            for _ in range(args.repeats):
                times["sliced"].append(seconds(population, data, SLICED))
                times["whole"].append(seconds(population, data, 1 << 62))
                times["before"].append(seconds_before(population, data))
            sliced, whole, before = (statistics.median(times[v]) for v in ("sliced", "whole", "before"))
            print(f"{label:<20} {k:>4} {slices:>6} {sliced * 1e3:10.1f} {whole * 1e3:9.1f} {before * 1e3:10.1f} "
                  f"{whole / sliced:13.2f} {before / sliced:14.2f}")
    loop.EVAL_SLICE_BYTES = SLICED


if __name__ == "__main__":
    main()
