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
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from initopt import resume
from initopt.checks import check_runnable, resolve_device, user_error_line
from initopt.config import validate
from initopt.data import load_dataset
from initopt.init import initialize
from initopt.loop import FitResult, LoopSettings, fit, new_state
from initopt.models import build_model, count_parameters
from initopt.optim import build_optimizer
from initopt.tb import RunLogger

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Interrupted(SystemExit):
    """Raised after a checkpoint on SIGINT / SIGTERM: stops the whole process, sweep included."""


def choices(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The run's identity for HParams and reports: group options and the main knobs."""
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


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
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
    """One training run, all of its outputs under ``output_dir``.

    Returns the finished run's stored metrics instead when ``output_dir`` already holds one.
    """
    validate(cfg)
    fingerprint = resume.config_fingerprint(cfg)
    if cfg.resume:
        resume.check_can_continue(cfg, output_dir)
        done = resume.finished_run(output_dir)
        if done is not None:
            print(f"[{run_name or 'run'}] already finished ({done['status']}); kept as it is: {output_dir}")
            return done
    _set_determinism(cfg)
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.data, device, dtype)
    check_runnable(cfg, n_train=len(data.x_train))

    model = build_model(cfg.model, data.n_features, data.n_outputs).to(device, dtype)
    initialize(model, cfg.init)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    param_names = [n for n, _ in model.named_parameters()]
    settings = LoopSettings(cfg.steps, cfg.batch_size, cfg.seed, cfg.log_every, cfg.eval_every,
                            cfg.flush_every, cfg.checkpoint_every, cfg.act_every)
    state = new_state(data, settings)
    checkpoint = output_dir / resume.CHECKPOINT
    if cfg.resume and checkpoint.exists():
        resume.restore(resume.load_checkpoint(checkpoint, fingerprint, device), model, optimizer, state)
        print(f"[{run_name or 'run'}] resuming at step {state.step} from {checkpoint}")

    logger = RunLogger(output_dir, param_names, resume_step=state.step + 1 if state.step else None)
    save = lambda st: resume.save_checkpoint(checkpoint, fingerprint, model, optimizer, st)  # noqa: E731
    with resume.StopSignals() as signals, _progress_bar(cfg, run_name, state.step) as bar:
        result = fit(model, optimizer, data, settings, logger, bar, state, signals.requested, save)
    if result.status == "interrupted":
        logger.close()
        print(f"[{run_name or 'run'}] interrupted at step {result.steps_done}; checkpoint saved to "
              f"{checkpoint}. Resume with:\n  {resume_hint}", file=sys.stderr)
        raise Interrupted(signals.exit_code)

    picked = choices(cfg)
    if result.diverged_step is not None:
        logger.write_divergence(result.diverged_step)
    logger.write_hparams(picked, result.final, result.steps_done)
    logger.close()
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
        "device": str(device),
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
