"""Checkpoints, interrupts and resuming a run in its own output directory.

A run resumes by running it again into the same directory (``hydra.run.dir=DIR``, or the
same ``-m`` sweep with ``hydra.sweep.dir=DIR``):

* ``metrics.json`` says the run finished (ok or diverged): nothing is redone or overwritten;
* ``checkpoint.pt`` exists: the run continues from it, bitwise as if never stopped (CPU);
* otherwise it starts fresh.

A checkpoint holds the model, the optimizer, the loop state (step, batch sampler, eval
history, wall time), torch's RNG states and a fingerprint of the config; it is written
atomically (temp file + rename) and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from initopt.config import ConfigError, first_line

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
FINISHED = ("ok", "diverged")
CHECKPOINT_FORMAT = 1
# Keys that do not change what a run computes: a resumed run may differ in them.
IGNORED_KEYS = ("progress", "checkpoint_every", "resume", "threads", "replicas_mode")


def config_fingerprint(cfg: DictConfig) -> str:
    """SHA-1 of the composed config, less the keys that don't change the computation."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in IGNORED_KEYS:
        plain.pop(key, None)
    return hashlib.sha1(json.dumps(plain, sort_keys=True).encode()).hexdigest()


def finished_run(output_dir: Path) -> dict | None:
    """The finished run's ``metrics.json`` in ``output_dir``, if there is one."""
    path = output_dir / METRICS
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if metrics.get("status") in FINISHED else None


def check_can_continue(cfg: DictConfig, output_dir: Path) -> dict | None:
    """Refuse a directory that holds another config's run or an unreadable checkpoint;
    return the finished run's metrics when the directory holds this config's finished run."""
    fingerprint = config_fingerprint(cfg)
    done = finished_run(output_dir)
    if done is not None and done.get("fingerprint") not in (None, fingerprint):
        raise ConfigError("hydra.run.dir", str(output_dir),
                          "holds a finished run of another config; choose a new directory")
    if (output_dir / CHECKPOINT).exists() and done is None:
        load_checkpoint(output_dir / CHECKPOINT, fingerprint, torch.device("cpu"))
    return done


def save_checkpoint(path: Path, fingerprint: str, model, optimizer, loop_state) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loop": loop_state.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: str, device: torch.device) -> dict:
    """The checkpoint's contents; a one-line :class:`ConfigError` if it is corrupt or another run's."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, not a torch file, unpicklable content
        raise ConfigError("checkpoint", str(path),
                          f"unreadable ({first_line(err, 120)}); delete it to start over") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("checkpoint", str(path), "not an initopt checkpoint; delete it to start over")
    if payload["fingerprint"] != fingerprint:
        raise ConfigError("checkpoint", str(path), "was written by a run with another config; "
                          "resume with the same overrides or choose a new directory")
    return payload


def resume_if_checkpointed(cfg: DictConfig, checkpoint: Path, fingerprint: str, model, optimizer,
                           loop_state, device: torch.device, run_name: str) -> None:
    """Continue from ``checkpoint`` when it exists and resuming is on (model, optimizer, loop state)."""
    if cfg.resume and checkpoint.exists():
        restore(load_checkpoint(checkpoint, fingerprint, device), model, optimizer, loop_state)
        print(f"[{run_name or 'run'}] resuming at step {loop_state.step} from {checkpoint}")


def restore(payload: dict, model, optimizer, loop_state) -> None:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    loop_state.load_state_dict(payload["loop"])
    torch.set_rng_state(payload["torch_rng"].cpu())
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])


def resume_command(output_dir: Path, multirun: bool, sweep_dir: str | None) -> str:
    """The command that continues this run (or the whole sweep) where it stopped."""
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    target = f"hydra.sweep.dir={sweep_dir}" if multirun else f"hydra.run.dir={output_dir}"
    return shlex.join([Path(sys.executable).name, "-m", "initopt.train", *args, target])


class StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`received`; the loop stops at the next step.

    Signal handlers can only be set from the main thread; elsewhere (some launchers'
    workers) this does nothing and the default behaviour stays.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)
