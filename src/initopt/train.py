"""Entry point: ``python -m initopt.train [-m] group=option key=value ...``.

compose (Hydra) -> validate -> build data, model, init, optimizer -> fit -> metrics.json.
Outputs go to the job's Hydra output directory: TensorBoard events, ``metrics.json``,
``final.pt`` (the trained weights), ``checkpoint.pt`` while a run is unfinished, and
Hydra's ``.hydra/`` record of the composed config.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from initopt import hparams, resume
from initopt.checks import check_runnable, resolve_device, user_error_line
from initopt.config import validate
from initopt.data import Dataset, load_dataset
from initopt.init import initialize
from initopt.loop import FitResult, LoopSettings, fit, new_state, record_initial_activations
from initopt.models import MLP, build_model, count_parameters
from initopt.optim import build_optimizer
from initopt.replicas import (
    METRIC_KEYS,
    ReplicaLogs,
    StackedModel,
    fit_replicas,
    new_replica_state,
    replica_strategy,
)
from initopt.tb import RunLogger

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Interrupted(SystemExit):
    """Raised after a checkpoint on SIGINT / SIGTERM: stops the whole process, sweep included."""


def choices(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The run's identity in ``metrics.json``: group options and the main knobs."""
    hydra_choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    picked = {g: str(hydra_choices.get(g, cfg[g].name)) for g in ("model", "init", "optim", "data")}
    return {
        **picked,
        "seed": cfg.seed,
        "lr": cfg.optim.lr,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "momentum_form": cfg.optim.get("form", ""),
    }


def _sessions(cfg: DictConfig, run_name: str) -> dict[str, hparams.Session]:
    """The job's HParams entries (:func:`initopt.hparams.sessions`) with Hydra's group choices."""
    hydra_choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return hparams.sessions(cfg, hydra_choices, run_name)


def _own_experiment(cfg: DictConfig, run_name: str) -> list[hparams.Column] | None:
    """Outside a ``-m`` sweep a job writes its own HParams experiment (a sweep's comes from its callback)."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return None
    return hparams.columns(s.hparams for s in _sessions(cfg, run_name).values())


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(path: Path, payload: dict) -> None:
    """Write ``metrics.json`` atomically (temp file + rename): a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    os.replace(tmp, path)


def _progress_bar(cfg: DictConfig, run_name: str, done: int):
    from tqdm.auto import tqdm

    enabled = bool(cfg.progress) and sys.stderr.isatty()
    return tqdm(total=cfg.steps, initial=done, desc=run_name or "train", disable=not enabled, leave=False)


def _set_determinism(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def run(cfg: DictConfig, output_dir: Path, run_name: str = "", resume_hint: str = "") -> FitResult | dict:
    """One training run (or K replicas of it), all of its outputs under ``output_dir``.

    Returns the finished run's stored metrics instead when ``output_dir`` already holds one.
    """
    validate(cfg)
    if cfg.resume:
        done = resume.check_can_continue(cfg, output_dir)
        if done is not None:
            print(f"[{run_name or 'run'}] already finished ({done['status']}); kept as it is: {output_dir}")
            return done
    _set_determinism(cfg)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, device, DTYPES[cfg.dtype])
    check_runnable(cfg, n_train=len(data.x_train))
    if cfg.replicas > 1:
        return _run_replicas(cfg, data, output_dir, run_name, resume_hint)
    return _run_single(cfg, data, output_dir, run_name, resume_hint, experiment=_own_experiment(cfg, run_name))


def _seeded_model(cfg: DictConfig, data: Dataset, seed: int) -> torch.nn.Module:
    """The model a run with ``seed`` starts from: seed torch, build, initialize."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.n_features, data.n_outputs).to(data.x_train.device, data.x_train.dtype)
    initialize(model, cfg.init)
    return model


def _settings(cfg: DictConfig) -> LoopSettings:
    return LoopSettings(cfg.steps, cfg.batch_size, cfg.seed, cfg.log_every, cfg.eval_every,
                        cfg.flush_every, cfg.checkpoint_every, cfg.act_every, cfg.param_every, cfg.hist_every)


def _interrupted(run_name: str, step: int, checkpoint: Path, hint: str, exit_code: int):
    print(f"[{run_name or 'run'}] interrupted at step {step}; checkpoint saved to {checkpoint}. "
          f"Resume with:\n  {hint}", file=sys.stderr)
    return Interrupted(exit_code)


def _run_single(cfg: DictConfig, data: Dataset, output_dir: Path, run_name: str, resume_hint: str,
                session: hparams.Session | None = None, experiment: list[hparams.Column] | None = None) -> FitResult:
    fingerprint = resume.config_fingerprint(cfg)
    model = _seeded_model(cfg, data, cfg.seed)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    param_names = [n for n, _ in model.named_parameters()]
    settings = _settings(cfg)
    state = new_state(data, settings)
    checkpoint = output_dir / resume.CHECKPOINT
    resume.resume_if_checkpointed(cfg, checkpoint, fingerprint, model, optimizer, state, data.x_train.device,
                                  run_name)

    logger = RunLogger(output_dir, param_names, resume_step=state.step + 1 if state.step else None)
    logger.write_run_info(session or _sessions(cfg, run_name)["run"], OmegaConf.to_yaml(cfg), experiment)
    save = lambda st: resume.save_checkpoint(checkpoint, fingerprint, model, optimizer, st)  # noqa: E731
    with resume.StopSignals() as signals, _progress_bar(cfg, run_name, state.step) as bar:
        result = fit(model, optimizer, data, settings, logger, bar, state, signals.requested, save)
    if result.status == "interrupted":
        logger.close()
        raise _interrupted(run_name, result.steps_done, checkpoint, resume_hint, signals.exit_code)

    picked = choices(cfg)
    if result.diverged_step is not None:
        logger.write_divergence(result.diverged_step)
    logger.finish(result.steps_done)
    torch.save(model.state_dict(), output_dir / "final.pt")
    write_metrics(output_dir / resume.METRICS, {
        "status": result.status,
        "diverged_step": result.diverged_step,
        "steps": cfg.steps,
        "steps_done": result.steps_done,
        "wall_time_s": result.wall_time_s,
        "steps_per_s": result.steps_per_s,
        "final": result.final,
        "choices": picked,
        "run_name": run_name,
        "device": str(data.x_train.device),
        "n_parameters": count_parameters(model),
        "parameters": param_names,
        "fingerprint": fingerprint,
        "history": [{"step": s, **m} for s, m in result.history],
    })
    checkpoint.unlink(missing_ok=True)
    status = result.status if result.diverged_step is None else f"diverged at step {result.diverged_step}"
    acc = result.final["test_accuracy"]
    print(f"[{run_name or 'run'}] {status}: test accuracy {acc:.4f} "
          f"({result.steps_per_s:.0f} steps/s) -> {output_dir}")
    return result


MEAN_RUN = "mean"  # a replica job's mean run (TensorBoard), beside replicas/seed=<s>/


def _replica_dir(output_dir: Path, seed: int) -> Path:
    return output_dir / "replicas" / f"seed={seed}"


def _run_replicas(cfg: DictConfig, data: Dataset, output_dir: Path, run_name: str, resume_hint: str) -> dict:
    """K seeds in one process: stacked and vectorized, or one after another for big networks."""
    seeds = [cfg.seed + r for r in range(cfg.replicas)]
    probe = build_model(cfg.model, data.n_features, data.n_outputs)
    strategy = replica_strategy(cfg.replicas_mode, count_parameters(probe), cfg.batch_size,
                                isinstance(probe, MLP))
    kinds, experiment = _sessions(cfg, run_name), _own_experiment(cfg, run_name)
    if strategy != "sequential":
        records, wall = _fit_stacked(cfg, data, seeds, output_dir, run_name, resume_hint, strategy, kinds,
                                     experiment)
    else:
        if cfg.replicas_mode == "auto":
            print(f"[{run_name or 'run'}] {cfg.replicas} replicas one after another: this network is "
                  "arithmetic-bound, vectorizing would not pay (replicas_mode=stacked forces it)")
        records, wall = [], 0.0
        for seed in seeds:
            one = OmegaConf.merge(cfg, {"seed": seed, "replicas": 1})
            result = _run_single(one, data, _replica_dir(output_dir, seed), f"{run_name},seed={seed}", resume_hint,
                                 kinds["seeds"], experiment if seed == seeds[0] else None)
            wall += result.wall_time_s
            records.append(_replica_record(seed, output_dir, result.status, result.diverged_step,
                                           result.final, result.history))
    return _write_replica_metrics(cfg, data, output_dir, run_name, seeds, records, wall, strategy)


def _replica_record(seed, output_dir, status, diverged_step, final, history) -> dict:
    return {"seed": seed, "status": status, "diverged_step": diverged_step, "final": final,
            "history": [{"step": s, **m} for s, m in history],
            "event_dir": str(_replica_dir(output_dir, seed).relative_to(output_dir))}


def _fit_stacked(cfg, data, seeds, output_dir, run_name, resume_hint, strategy, kinds,
                 experiment) -> tuple[list[dict], float]:
    settings = _settings(cfg)
    models = [_seeded_model(cfg, data, s) for s in seeds]
    param_names = [n for n, _ in models[0].named_parameters()]
    fingerprint = resume.config_fingerprint(cfg)
    stacked = StackedModel(models, batched_mlp=strategy == "stacked")
    optimizer = build_optimizer(stacked.parameters(), cfg.optim)
    state = new_replica_state(data, settings, seeds)
    checkpoint = output_dir / resume.CHECKPOINT
    resume.resume_if_checkpointed(cfg, checkpoint, fingerprint, stacked, optimizer, state, data.x_train.device,
                                  run_name)
    purge = state.step + 1 if state.step else None
    loggers = [RunLogger(_replica_dir(output_dir, s), param_names, purge) for s in seeds]
    config_yaml = OmegaConf.to_yaml(cfg)
    for logger in loggers:
        logger.write_run_info(kinds["seeds"], config_yaml)
    if purge is None:
        for model, logger in zip(models, loggers):  # the variance argument's numbers, at init
            record_initial_activations(model, data, settings, logger)
    logs = ReplicaLogs(loggers, RunLogger(output_dir / MEAN_RUN, param_names, purge, banded=True))
    logs.aggregate.write_run_info(kinds["mean"], config_yaml, experiment)
    save = lambda st: resume.save_checkpoint(checkpoint, fingerprint, stacked, optimizer, st)  # noqa: E731
    with resume.StopSignals() as signals, _progress_bar(cfg, run_name, state.step) as bar:
        result = fit_replicas(stacked, optimizer, data, settings, state, logs, bar, signals.requested, save)
    if result.interrupted:
        logs.flush()
        raise _interrupted(run_name, result.steps_done, checkpoint, resume_hint, signals.exit_code)
    records = []
    for r, seed in enumerate(seeds):
        status = "ok" if result.diverged[r] is None else "diverged"
        if result.diverged[r] is not None:
            loggers[r].write_divergence(result.diverged[r])
        loggers[r].finish(result.steps_done)
        torch.save(stacked.replica_state_dict(r), _replica_dir(output_dir, seed) / "final.pt")
        records.append(_replica_record(seed, output_dir, status, result.diverged[r], result.final(r),
                                       result.histories[r]))
    if all(d is not None for d in result.diverged):
        logs.aggregate.write_divergence(max(result.diverged))
    logs.aggregate.finish(result.steps_done)
    checkpoint.unlink(missing_ok=True)
    return records, result.wall_time_s


def _write_replica_metrics(cfg, data, output_dir, run_name, seeds, records, wall, mode) -> dict:
    finals = [r["final"] for r in records if r["status"] == "ok"]
    mean = {k: float(np.mean([f[k] for f in finals])) if finals else math.nan for k in METRIC_KEYS}
    std = {k: float(np.std([f[k] for f in finals], ddof=1)) if len(finals) > 1 else math.nan
           for k in METRIC_KEYS}
    payload = {
        "status": "ok" if all(r["status"] == "ok" for r in records) else "diverged",
        "replicas_mode": mode,
        "seeds": seeds,
        "steps": cfg.steps,
        "steps_done": cfg.steps,
        "wall_time_s": wall,
        "steps_per_s": cfg.steps / wall if wall else math.nan,
        "replica_steps_per_s": len(seeds) * cfg.steps / wall if wall else math.nan,
        "final": mean,
        "final_std": std,
        "choices": choices(cfg),
        "run_name": run_name,
        "device": str(data.x_train.device),
        "fingerprint": resume.config_fingerprint(cfg),
        "replicas": records,
    }
    write_metrics(output_dir / resume.METRICS, payload)
    print(f"[{run_name or 'run'}] {len(seeds)} replicas ({mode}): test accuracy "
          f"{mean['test_accuracy']:.4f} ± {std['test_accuracy']:.4f} "
          f"({payload['replica_steps_per_s']:.0f} replica-steps/s) -> {output_dir}")
    return payload


def _record_failure(output_dir: Path, err: BaseException) -> None:
    """A failing job leaves its own record (never over a finished run's); the sweep goes on."""
    if resume.finished_run(output_dir) is None:
        write_metrics(output_dir / resume.METRICS, {
            "status": "failed",
            "error": user_error_line(err),
            "traceback": traceback.format_exc(),
        })


@hydra.main(version_base="1.3", config_path="pkg://initopt.conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    hint = resume.resume_command(output_dir, multirun, hc.sweep.dir if multirun else None)
    try:
        result = run(cfg, output_dir, hc.job.override_dirname, hint)
    except Exception as err:
        _record_failure(output_dir, err)
        raise
    final = result.final if isinstance(result, FitResult) else result.get("final", {})
    return final.get("test_accuracy")


def main() -> None:
    """Check the command line as Hydra will read it, then hand over to Hydra."""
    from initopt.checks import precheck_command_line

    try:
        precheck_command_line(sys.argv[1:])
    except Exception as err:  # one line naming key, value and what is allowed; no traceback wall
        print(f"initopt.train: error: {user_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
