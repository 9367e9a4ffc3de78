"""Speed ratios of initopt, each measured in one run with its variants interleaved.

    python scripts/bench.py [--quick] [--out bench.json] [--device cuda]

1. framework loop (logging on) / minimal hand-written torch loop: toy and big MLP
2. logging every step / no step logging (toy)
3. K replicas in one process / K sequential runs: K = 1, 8, 32 (toy), 1, 8 (big)
4. the homework grid (4 inits x 3 optimizers x 5 seeds) wall time: plain multirun (initopt's config
   loader, as every initopt command; and Hydra's own, INITOPT_HYDRA_LOADER=hydra), multirun with
   replicas=5, the population launcher, and the joblib launcher with 2 workers of one thread each
5. the big MLP's achieved FLOP/s (6 x weights x batch per step) / measured fp32 matmul peak
6. the population launcher's own time per job: (N-job sweep - 1-job sweep) / (N - 1), 2 steps a
   job (N = 600, the study's grid; 60 with --quick), and where each sweep's time goes, phase by
   phase (the launcher writes them where INITOPT_PHASE_TIMES says)
   ... and the floor under 4.'s and 6.'s ratios: a 1-job 2-step population sweep's wall time / the
   plain multirun's (a sweep through any launcher takes at least that start-up and exit)
8. the homework grid (60 jobs, 1500 steps) on 2 local shards (``+launcher=population_local``) /
   the in-process population launcher

toy = 2-64-64-1 ReLU on moons, batch 64; big = 784-512-256-256-128-10 ReLU on Fashion-MNIST
(random data of that shape when the files are absent), batch 256; EMA momentum throughout.
Each ratio is the median over repeats of variants run back to back (A B A B ...).
Timings are never asserted in tests; this script is where they live.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import BatchSampler, Dataset, load_dataset
from initopt.engine.loop import Schedule
from initopt.engine.population import member_accuracies, member_losses
from initopt.models import count_parameters
from initopt.optim import build_optimizer
from initopt.sinks import PopulationLogs
from initopt.tb import RunLogger

TOY = ["model.hidden=[64,64]", "data=moons", "batch_size=64", "optim=momentum"]
BIG = ["model.hidden=[512,256,256,128]", "data=fashion_mnist", "batch_size=256", "optim=momentum"]
CPU = torch.device("cpu")


def config(base: list[str], steps: int, **extra):
    overrides = [*base, f"steps={steps}", f"eval_every={steps}", "flush_every=100", "act_every=0"]
    return compose_job(overrides + [f"{k}={v}" for k, v in extra.items()])


def load(base: list[str]) -> tuple[Dataset, str]:
    cfg = config(base, 10)
    try:
        return load_dataset(cfg.data, CPU, torch.float32), cfg.data.name
    except Exception:  # no Fashion-MNIST files: random data of the same shape measures the same loop
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(60000, 784, generator=g), torch.randint(0, 10, (60000,), generator=g)
        return Dataset(x, y, x[:10000], y[:10000], 10), "random 784-dim (Fashion-MNIST absent)"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- loops
def seeded(cfg, data, seed: int) -> torch.nn.Module:
    return engine.seeded_model(cfg.model, cfg.init, seed, data.n_features, data.n_outputs, data.x_train.dtype)


def population_run(cfg, data, seeds: list[int], logdir: Path | None, log_every: int | None = None,
                   aggregate: bool = False) -> None:
    """The framework: the engine over a population of len(seeds) members, each logging to TensorBoard."""
    if log_every is not None:
        cfg = compose_like(cfg, log_every=log_every)
    training = engine.build(cfg, data, engine.members_of(cfg, seeds))
    logs = None
    if logdir is not None:
        names = training.population.names
        loggers = [RunLogger(logdir / f"r{s}", names) for s in seeds]
        agg = [(RunLogger(logdir / "agg", names, banded=True), list(range(len(seeds))))] if aggregate else []
        logs = PopulationLogs(loggers, agg)
    training.fit(logs)
    if logs is not None:
        logs.close()


def framework_run(cfg, data, logdir: Path | None, log_every: int = 1) -> None:
    population_run(cfg, data, [cfg.seed], logdir, log_every)


def minimal_run(cfg, data, evaluations: bool = True) -> None:
    """What one would write by hand: same model, data, optimizer and batch order; no logging.
    ``evaluations``: the whole sets evaluated where the framework evaluates them (at
    initialization, the early steps 1, 2, 5, ... below ``eval_every``, every ``eval_every`` and
    the end), so that row 1 compares the same work."""
    model = seeded(cfg, data, cfg.seed)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    sampler = BatchSampler(len(data.x_train), cfg.batch_size, [cfg.seed], CPU)
    schedule = Schedule(cfg.steps, cfg.batch_size, eval_every=cfg.eval_every)
    if evaluations:
        evaluate(model, data)
    for step in range(1, cfg.steps + 1):
        idx = sampler.next_indices()[0]
        loss = member_losses(model(data.x_train[idx]).unsqueeze(0), data.y_train[idx].unsqueeze(0),
                             data.num_classes).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if evaluations and schedule.evaluates_at(step):
            evaluate(model, data)


def evaluate(model, data) -> None:
    """Loss and accuracy on the whole training and held-out sets (one host read)."""
    with torch.no_grad():
        for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
            logits, ys = model(x).unsqueeze(0), y.unsqueeze(0)
            torch.stack([member_losses(logits, ys, data.num_classes), member_accuracies(logits, ys)]).tolist()


def replicas_run(cfg, data, k: int, logdir: Path) -> None:
    population_run(cfg, data, list(range(k)), logdir, aggregate=True)


def sequential_run(cfg, data, k: int, logdir: Path) -> None:
    for s in range(k):
        framework_run(compose_like(cfg, seed=s), data, logdir / f"s{s}")


def compose_like(cfg, **changes):
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, changes)


# ---------------------------------------------------------------------------- compare
def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turn ``repeats`` times (after one warm-up each)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(seconds: float = 1.5) -> float:
    """fp32 FLOP/s of a 2048^3 matrix product on this machine (the best of repeats: a peak)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    samples, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        samples.append(timed(lambda: torch.mm(a, b)))
    return 2 * 2048**3 / min(samples)


def grid_wall(args: list[str], tmp: Path, env_extra: dict | None = None) -> float:
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "initopt.train", "-m", *args, f"hydra.sweep.dir={tmp}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


PHASES = ("set-up", "compose", "prepare", "train", "write")
HYDRAS_OWN = "plain multirun, Hydra's own loader (60 jobs)"  # INITOPT_HYDRA_LOADER=hydra


def launcher_phases(args: list[str], sweep_dir: Path) -> dict[str, float]:
    """One population sweep's wall time split into phases: start-up (process start to the launch:
    imports, checks, Hydra's composition, the HParams callback), the launcher's own phases, and
    the exit (the launch's end to the process's)."""
    times = sweep_dir.with_suffix(".phases.json")
    start = time.time()
    wall = grid_wall(["+launcher=population", *args], sweep_dir, {"INITOPT_PHASE_TIMES": str(times)})
    recorded = json.loads(times.read_text())
    phases = {"start-up": recorded["launch_started"] - start, **recorded["seconds"]}
    phases["exit"] = wall - sum(phases.values())
    return {"wall": wall, "jobs": recorded["jobs"], **phases}


PER_JOB_GRID = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "model.hidden=[64,64]", "steps=2",
                "eval_every=100", "act_every=0"]


def launcher_per_job_sweeps(jobs: int, tmp: Path) -> dict[str, dict[str, float]]:
    """6. A 1-job and a ``jobs``-job population sweep at 2 steps (60: the homework grid; 600: the
    study's grid), each with its phases (:func:`launcher_phases`)."""
    many = [*PER_JOB_GRID, "seed=0,1,2,3,4"] if jobs == 60 else \
        [*PER_JOB_GRID, "optim.lr=0.003,0.01,0.03,0.1,0.3", "seed=0,1,2,3,4,5,6,7,8,9"]
    one = ["init=he", "optim=sgd", *PER_JOB_GRID[2:]]
    return {"1 job, 2 steps": launcher_phases(one, tmp / "p1"),
            f"{jobs} jobs, 2 steps": launcher_phases(many, tmp / "p2")}


def launcher_ms_per_job(sweeps: dict[str, dict[str, float]]) -> float:
    """(N-job sweep - 1-job sweep) / (N - 1), in ms."""
    a, b = sweeps.values()
    return (b["wall"] - a["wall"]) / (b["jobs"] - a["jobs"]) * 1e3


def print_phases(sweeps: dict[str, dict[str, float]]) -> None:
    names = ["start-up", *PHASES, "exit", "wall"]
    print(f"{'launcher phases (s)':<34}" + "".join(f"{n:>9}" for n in names))
    for label, phases in sweeps.items():
        print(f"{label:<34}" + "".join(f"{phases.get(n, 0.0):9.2f}" for n in names))


def shard_grid(quick: bool, tmp: Path) -> tuple[list[tuple[str, float, str]], dict[str, float]]:
    """8. The homework grid, 4 inits x 3 optimizers x 5 seeds at 1500 steps (100 with --quick):
    the sharded launcher on 2 local shards (submitit processes) against the in-process population
    launcher, run alternately (twice each; once with --quick), medians."""
    grid = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "seed=0,1,2,3,4", "model.hidden=[64,64]",
            f"steps={100 if quick else 1500}", "eval_every=500", "act_every=0"]
    variants = {"in-process population launcher": ["+launcher=population"],
                "2 local shards": ["+launcher=population_local", "hydra.launcher.shards=2"]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(1 if quick else 2):
        for name, launcher in variants.items():
            times[name].append(grid_wall([*launcher, *grid], tmp / f"shard{r}{len(times[name])}{name[:2]}"))
    walls = {f"grid {grid[4]}, {name} (60 jobs)": statistics.median(t) for name, t in times.items()}
    ratio = statistics.median(times["2 local shards"]) / statistics.median(times["in-process population launcher"])
    return [("8. homework grid: 2 local shards / in-process population launcher", ratio, "<= 0.625 (1.6x)")], walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (under two minutes)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON results")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU measures of scripts/bench_cuda.py instead")
    args = parser.parse_args()
    if args.device == "cuda":
        import bench_cuda  # beside this script

        bench_cuda.main(args.out, args.quick)
        return
    q = args.quick
    toy_steps, big_steps, repeats = (200, 20, 3) if q else (2000, 100, 5)
    print(f"measuring ({'quick' if q else 'full'}); this takes {'under 2' if q else 'about 7'} minutes",
          file=sys.stderr)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                     "quick": q}
    toy_data, _ = load(TOY)
    big_data, big_name = load(BIG)
    # 5,000 training and 1,000 held-out images: the per-step cost is the same, and the final
    # evaluation (on every training example) no longer outweighs the steps being compared
    big_data = Dataset(big_data.x_train[:5000], big_data.y_train[:5000], big_data.x_test[:1000],
                       big_data.y_test[:1000], big_data.num_classes)
    results["big_data"] = big_name
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = iter(range(10**6))
        for label, base, data, steps in (("toy", TOY, toy_data, toy_steps), ("big", BIG, big_data, big_steps)):
            cfg = config(base, steps)
            med = interleaved({"framework": lambda c=cfg, d=data: framework_run(c, d, tmp / f"f{next(n)}"),
                               "minimal": lambda c=cfg, d=data: minimal_run(c, d)}, repeats)
            results[f"step_us_{label}"] = {k: v / steps * 1e6 for k, v in med.items()}
            rows.append((f"1. framework loop / minimal loop ({label})", med["framework"] / med["minimal"], "<= 1.10"))

        cfg = config(TOY, toy_steps)
        med = interleaved({"every": lambda: framework_run(cfg, toy_data, tmp / f"l{next(n)}", 1),
                           "off": lambda: framework_run(cfg, toy_data, tmp / f"o{next(n)}", 0)}, repeats)
        rows.append(("2. logging every step / no logging (toy)", med["every"] / med["off"], "<= 1.15"))

        for label, base, data, steps, ks in (("toy", TOY, toy_data, toy_steps, (1, 8, 32)),
                                             ("big", BIG, big_data, big_steps, (1, 8))):
            cfg = config(base, steps)
            for k in ks:
                med = interleaved({
                    "replicas": lambda c=cfg, d=data, k=k: replicas_run(c, d, k, tmp / f"r{next(n)}"),
                    "sequential": lambda c=cfg, d=data, k=k: sequential_run(c, d, k, tmp / f"s{next(n)}")},
                    1 if label == "big" or (q and k == 32) else repeats)
                target = ">= 10x faster" if (label, k) == ("toy", 32) else ""
                rows.append((f"3. {k} replicas / {k} sequential runs ({label})",
                             med["replicas"] / med["sequential"], target))

        grid = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "model.hidden=[64,64]",
                f"steps={50 if q else 500}", "eval_every=100", "act_every=0"]
        seeds = "seed=0,1,2,3,4"
        walls = {
            "plain multirun (60 jobs)": grid_wall([*grid, seeds], tmp / "g1"),
            "multirun with replicas=5 (12 jobs)": grid_wall([*grid, "replicas=5"], tmp / "g2"),
            "population launcher (60 jobs)": grid_wall(["+launcher=population", *grid, seeds], tmp / "g4"),
        }
        try:
            import hydra_plugins.hydra_joblib_launcher  # noqa: F401

            walls["joblib, 2 workers x 1 thread (60 jobs)"] = grid_wall(["+launcher=joblib", *grid, seeds], tmp / "g3")
        except ImportError:
            walls["joblib"] = float("nan")
        # plain multirun composes its jobs with initopt's loader too (files read once, leading merges
        # shared); Hydra's own loader (INITOPT_HYDRA_LOADER=hydra) is plain multirun as Hydra alone runs it
        walls[HYDRAS_OWN] = grid_wall([*grid, seeds], tmp / "g5", {"INITOPT_HYDRA_LOADER": "hydra"})
        results["grid_wall_s"] = walls
        plain = walls["plain multirun (60 jobs)"]
        for name, wall in walls.items():
            if not name.startswith("plain multirun"):
                target = {"replicas": ">= 5x faster", "population": ">= 8x faster"}
                rows.append((f"4. homework grid: {name} / plain multirun", wall / plain,
                             next((t for k, t in target.items() if k in name), "")))
        rows.append(("4. homework grid: population launcher / plain multirun, Hydra's own loader",
                     walls["population launcher (60 jobs)"] / walls[HYDRAS_OWN], ">= 8x faster"))

        sweep = ["optim.lr=1e-3,3e-3,1e-2,3e-2,0.1,0.3", "init=xavier,he", "seed=0,1,2", "optim=momentum",
                 "model.hidden=[64,64]", f"steps={50 if q else 500}", "eval_every=100", "act_every=0"]
        lr_walls = {"plain": grid_wall(sweep, tmp / "lr1"),
                    "plain, Hydra's own loader": grid_wall(sweep, tmp / "lr3", {"INITOPT_HYDRA_LOADER": "hydra"}),
                    "population": grid_wall(["+launcher=population", *sweep], tmp / "lr2")}
        results["lr_sweep_wall_s"] = lr_walls
        for base in ("plain", "plain, Hydra's own loader"):
            rows.append((f"6. lr sweep 6 lr x 2 init x 3 seeds: population launcher / {base} multirun",
                         lr_walls["population"] / lr_walls[base], ">= 8x faster"))
        walls.update({f"lr sweep, {k} (36 jobs)": v for k, v in lr_walls.items()})

        # 6. the launcher's own time per job: the study's grid (600 jobs; 60 quick) at 2 steps, less one job
        sweeps = launcher_per_job_sweeps(60 if q else 600, tmp)
        results["launcher_phases_s"] = sweeps
        per_job_ms = launcher_ms_per_job(sweeps)
        results["launcher_ms_per_job"] = per_job_ms
        rows.append((f"6. launcher's own time per job, ms ({60 if q else 600}-job - 1-job sweep) / 15 ms",
                     per_job_ms / 15, "<= 1"))
        # The floor under the 8x targets above: a launcher that starts a process pays at least what a
        # 1-job sweep of 2 steps costs (Python, torch, Hydra, the checks, the exit), whatever it trains.
        one_job = sweeps["1 job, 2 steps"]["wall"]
        for label, base in (("4. homework grid", plain), ("6. lr sweep", lr_walls["plain"])):
            rows.append((f"{label}: floor of population / plain: a 1-job 2-step population sweep / plain",
                         one_job / base, "< 0.125 for 8x to be reachable"))
        shard_rows, shard_walls = shard_grid(q, tmp)
        rows += shard_rows
        walls.update(shard_walls)

        if not q:  # the headline: the full study, 600 runs of 1500 steps
            study = ["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "optim.lr=0.003,0.01,0.03,0.1,0.3",
                     "seed=0,1,2,3,4,5,6,7,8,9", "model.hidden=[64,64]", "steps=1500", "eval_every=500",
                     "act_every=0"]
            slice_wall = grid_wall(["init=zero,he", "optim=sgd,adam", "optim.lr=0.01,0.1", "seed=0,1,2",
                                    *study[4:]], tmp / "st1")
            walls["study slice, plain multirun (24 jobs)"] = slice_wall
            walls["study, population launcher (600 jobs)"] = grid_wall(["+launcher=population", *study], tmp / "st2")
            rows.append(("7. study 600 runs x 1500 steps: population launcher wall (s) / 60 s",
                         walls["study, population launcher (600 jobs)"] / 60, "<= 1"))
            rows.append(("7. study: plain multirun extrapolated from 24 jobs / population launcher",
                         slice_wall * 25 / walls["study, population launcher (600 jobs)"], ""))

    cfg = config(BIG, big_steps)
    weights = count_parameters(seeded(cfg, big_data, 0))

    step_s = interleaved({"big": lambda: minimal_run(cfg, big_data, evaluations=False)}, repeats)["big"] / big_steps
    achieved = 6 * weights * cfg.batch_size / step_s
    peak = matmul_peak()
    results["big_mlp_flops"] = {"achieved": achieved, "matmul_peak": peak, "weights": weights}
    rows.append(("5. big MLP FLOP/s / fp32 matmul peak", achieved / peak, ">= 0.50"))

    results["ratios"] = [{"measure": m, "ratio": r, "target": t} for m, r, t in rows]
    print(f"machine: {results['machine']}; big data: {big_name}; {'quick' if q else 'full'} run")
    width = max(len(m) for m, _, _ in rows)
    print(f"{'measure':<{width}}  {'ratio':>8}  target")
    for m, r, t in rows:
        print(f"{m:<{width}}  {r:8.3f}  {t}")
    for name, wall in walls.items():
        print(f"   grid wall time, {name}: {wall:.1f} s")
    print(f"   big MLP: {achieved / 1e9:.1f} GFLOP/s achieved, matmul peak {peak / 1e9:.1f} GFLOP/s")
    print_phases(sweeps)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
