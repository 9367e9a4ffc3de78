"""GPU speed, for ``python scripts/bench.py --device cuda`` (needs a CUDA device; prints ratios).

1. single run, toy 2-64-64-1 (batch 64) and big 784-512-256-256-128-10 (batch 256): us/step of
   the framework (compile=auto: the step compiled, CUDA graphs), of the same framework eager
   (compile=off), of a hand-written torch loop, and of that hand step captured whole in one CUDA
   graph (the floor); ratios framework / floor (targets <= 2 toy, <= 1.5 big)
2. stacked replicas K = 1, 32, 256, 1024 (toy): member-steps per second
3. the homework grid 4 x 3 x 5 seeds, 1500 steps, and the lr sweep, through the population
   launcher: wall time and training wall time (target <= 5 s of training for the grid)
4. big MLP achieved FLOP/s (6 x weights x batch / step) / measured fp32 matmul peak

Every timing synchronises the device (``torch.cuda.synchronize``) before reading the clock.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from initopt import engine
from initopt.checks import compose_job
from initopt.data import Dataset
from initopt.engine.population import member_losses
from initopt.optim import build_optimizer

CUDA = torch.device("cuda")
TOY = ["model.hidden=[64,64]", "data=moons", "batch_size=64", "optim=momentum"]
BIG = ["model.hidden=[512,256,256,128]", "batch_size=256", "optim=momentum"]


def synced(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def random_data(n_in: int, n_classes: int, n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    y = y.float() if n_classes == 2 else y
    return Dataset(x, y, x[: n // 5], y[: n // 5], n_classes).to(CUDA, torch.float32)


def framework_us(cfg, data: Dataset, compile_mode: str, k: int = 1) -> float:
    cfg = compose_like(cfg, compile=compile_mode)
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(k))))
    training.fit()  # warm-up: compilation and capture happen here
    training = engine.build(cfg, data, engine.members_of(cfg, list(range(k))))
    return synced(training.fit) / cfg.steps * 1e6


def hand_model(cfg, data: Dataset):
    model = engine.seeded_model(cfg.model, cfg.init, 0, data.n_features, data.n_outputs, torch.float32).to(CUDA)
    return model, build_optimizer(model.parameters(), cfg.optim)


def hand_loss(model, x, y, data):
    return member_losses(model(x).unsqueeze(0), y.unsqueeze(0), data.num_classes).sum()


def hand_us(cfg, data: Dataset) -> float:
    model, opt = hand_model(cfg, data)
    idx = torch.randint(0, len(data.x_train), (cfg.steps, cfg.batch_size), device=CUDA)

    def loop():
        for i in range(cfg.steps):
            loss = hand_loss(model, data.x_train[idx[i]], data.y_train[idx[i]], data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    loop()
    return synced(loop) / cfg.steps * 1e6


def captured_us(cfg, data: Dataset) -> float:
    """The floor: the hand step (forward, backward, optimizer) captured whole as one CUDA graph."""
    model, opt = hand_model(cfg, data)
    idx = torch.randint(0, len(data.x_train), (cfg.steps, cfg.batch_size), device=CUDA)
    sx, sy = data.x_train[idx[0]].clone(), data.y_train[idx[0]].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            hand_loss(model, sx, sy, data).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        hand_loss(model, sx, sy, data).backward()
        opt.step()

    def loop():
        for i in range(cfg.steps):
            torch.index_select(data.x_train, 0, idx[i], out=sx)
            torch.index_select(data.y_train, 0, idx[i], out=sy)
            graph.replay()

    loop()
    return synced(loop) / cfg.steps * 1e6


def compose_like(cfg, **changes):
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, changes)


def matmul_peak() -> float:
    a, b = torch.randn(8192, 8192, device=CUDA), torch.randn(8192, 8192, device=CUDA)
    torch.mm(a, b)
    return 2 * 8192**3 / min(synced(lambda: torch.mm(a, b)) for _ in range(10))


def launcher_walls(args: list[str], tmp: Path) -> dict[str, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "initopt.train", "-m", "+launcher=population", "device=cuda", *args,
                    f"hydra.sweep.dir={tmp}"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    trained = {}
    for metrics in tmp.glob("*/metrics.json"):
        m = json.loads(metrics.read_text())
        trained[json.dumps(m.get("population", {}).get("id", m["run_name"]))] = m["wall_time_s"]
    return {"wall_s": wall, "training_s": sum(trained.values())}


def main(out: str, quick: bool) -> None:
    if not torch.cuda.is_available():
        sys.exit("bench.py: error: --device cuda needs a CUDA device; none is visible here")
    rows, results = [], {"device": torch.cuda.get_device_name()}
    steps = 200 if quick else 2000
    for label, base, data in (("toy", TOY, random_data(2, 2, 1000)), ("big", BIG, random_data(784, 10, 60000))):
        cfg = compose_job([*base, f"steps={steps}", f"eval_every={steps}", "act_every=0", "device=cuda"])
        us = {name: statistics.median(fn() for _ in range(3)) for name, fn in {
            "framework": lambda c=cfg, d=data: framework_us(c, d, "auto"),
            "framework eager": lambda c=cfg, d=data: framework_us(c, d, "off"),
            "hand loop": lambda c=cfg, d=data: hand_us(c, d),
            "captured floor": lambda c=cfg, d=data: captured_us(c, d)}.items()}
        results[f"step_us_{label}"] = us
        target = "<= 2" if label == "toy" else "<= 1.5"
        rows += [(f"1. framework / captured floor ({label})", us["framework"] / us["captured floor"], target),
                 (f"1. framework eager / hand loop ({label})", us["framework eager"] / us["hand loop"], "")]
        if label == "big":
            weights = sum(p.numel() for p in hand_model(cfg, data)[0].parameters())
            achieved = 6 * weights * cfg.batch_size / (us["framework"] * 1e-6)
            peak = matmul_peak()
            results["big_flops"] = {"achieved": achieved, "peak": peak}
            rows.append(("4. big MLP FLOP/s / fp32 matmul peak", achieved / peak, ""))
    toy = compose_job([*TOY, f"steps={steps}", f"eval_every={steps}", "act_every=0", "device=cuda"])
    data = random_data(2, 2, 1000)
    for k in (1, 32, 256, 1024):
        us = framework_us(toy, data, "auto", k)
        results[f"replicas_{k}_member_steps_per_s"] = k / (us * 1e-6)
        rows.append((f"2. {k} stacked replicas: member-steps per second", k / (us * 1e-6), ""))
    with tempfile.TemporaryDirectory() as tmp:
        grid = launcher_walls(["init=zero,normal,xavier,he", "optim=sgd,momentum,adam", "seed=0,1,2,3,4",
                               f"steps={300 if quick else 1500}", "act_every=0"], Path(tmp) / "grid")
        lr = launcher_walls(["optim.lr=1e-3,3e-3,1e-2,3e-2,0.1,0.3", "init=xavier,he", "seed=0,1,2",
                             f"steps={300 if quick else 1500}", "act_every=0"], Path(tmp) / "lr")
    results["grid"], results["lr_sweep"] = grid, lr
    rows += [("3. homework grid via population launcher: training wall (s)", grid["training_s"], "<= 5"),
             ("3. homework grid via population launcher: total wall (s)", grid["wall_s"], ""),
             ("3. lr sweep via population launcher: total wall (s)", lr["wall_s"], "")]
    width = max(len(r[0]) for r in rows)
    print(f"device: {results['device']}")
    for measure, value, target in rows:
        print(f"{measure:<{width}}  {value:12.3f}  {target}")
    results["rows"] = [{"measure": m, "value": v, "target": t} for m, v, t in rows]
    Path(out).write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
