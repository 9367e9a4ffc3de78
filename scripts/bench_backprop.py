"""The eager step's backward: written out (initopt.engine.backprop) against torch.autograd.

    python scripts/bench_backprop.py [--steps 200] [--repeats 5] [--members 1,20,200]

For each population size K, the toy model of the study (2-64-64-1 ReLU on moons, batch 64,
EMA momentum) and the deep narrow one (ten hidden layers of 50, tanh): ``TrainStep.eager``
alone (batches drawn beforehand, gradient norms recorded every step as ``log_every=1`` does),
``--steps`` steps with the hand backward, then as many with autograd's, alternated ``--repeats``
times on fresh populations. Printed: the median milliseconds a step and a member-step of each,
and autograd / hand (> 1: the hand backward is faster). The machine is shared: read the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import load_dataset
from initopt.engine.step import TrainStep
from initopt.probes import StepRecorder

CPU = torch.device("cpu")
MODELS = {
    "toy 2-64-64-1 relu": ["model.hidden=[64,64]", "model.activation=relu"],
    "deep 10x50 tanh": ["model=deep", "model.activation=tanh"],
}


def step_seconds(overrides: list[str], members: int, steps: int, hand: bool) -> float:
    """Seconds a step of ``TrainStep.eager`` (recording every step), on a fresh population."""
    cfg = compose_job(["data=moons", "batch_size=64", "optim=momentum", *overrides])
    data = load_dataset(cfg.data, CPU, torch.float32)
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(members))))
    recorder = StepRecorder(members, len(training.population.names), steps, CPU)
    step = TrainStep(training.population, training.optimizer, data.num_classes, recorder, None)
    if not hand:
        step.backprop = None
    batches = [step.gather(data.x_train, data.y_train, training.state.sampler.next_indices())
               for _ in range(steps)]
    batches = [(x.clone(), y.clone()) for x, y in batches]
    for x, y in batches[:5]:  # warm-up
        step.eager(x, y, False, False)
    start = time.perf_counter()
    for x, y in batches:
        step.eager(x, y, True, False)
        recorder.mark(0, 0.0)
        if recorder.full:
            recorder.drain()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", default="1,20,200")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} "
          f"alternated runs of {args.steps} steps")
    print(f"{'model':<22}{'K':>5}{'hand ms/step':>14}{'autograd':>10}{'us/member-step':>16}{'autograd/hand':>15}")
    for model, overrides in MODELS.items():
        for k in (int(m) for m in args.members.split(",")):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for hand in (True, False):
                    times[hand].append(step_seconds(overrides, k, args.steps, hand))
            hand, auto = statistics.median(times[True]), statistics.median(times[False])
            per_member = f"{hand / k * 1e6:>9.1f} / {auto / k * 1e6:<6.1f}"
            print(f"{model:<22}{k:>5}{hand * 1e3:>14.2f}{auto * 1e3:>10.2f}{per_member}{auto / hand:>10.2f}")


if __name__ == "__main__":
    main()
