"""Checkpoints of a population: save atomically, load onto any device.

A checkpoint holds the stacked parameters, the optimizer state, the loop state (step, batch
samplers, evaluation histories, diverged members, wall time), torch's CPU RNG state and the
fingerprints of the members' configs. It is written to a temp file and renamed (a reader never
sees half a file) and loads with ``torch.load(weights_only=True)``.

Loading always maps to the CPU first: generator and RNG states must stay CPU ``ByteTensor``s;
parameters and optimizer tensors are then copied into the run's device tensors.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from initopt.config import ConfigError, load_error_cause

FORMAT = 2


def save(path: Path, fingerprints: list[str], population, optimizer, loop_state, members: list[int],
         configs: list[dict] | None = None) -> None:
    """The given members' slices of the population (one file per run directory): a member's
    checkpoint resumes it in any population, or alone. ``configs`` (plain data, what each
    fingerprint hashes) let a mismatch name the keys that differ."""
    payload = {
        "format": FORMAT,
        "fingerprints": fingerprints,
        "configs": configs or [],
        "population": population.state_dict(members),
        "optimizer": optimizer.state_dict(members),
        "loop": loop_state.state_dict(members),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C: no partial file left; the previous checkpoint stays
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path, fingerprints: list[str], configs: list[dict] | None = None) -> dict:
    """The checkpoint's contents, on the CPU whatever device wrote it (:func:`restore` moves the
    tensors that belong on the run's device); a one-line :class:`ConfigError` if it is corrupt
    or another run's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, content that weights_only refuses
        raise ConfigError("checkpoint", str(path),
                          f"unreadable ({load_error_cause(err)}); delete it to start over") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError("checkpoint", str(path), "not an initopt checkpoint of this version; "
                          "delete it to start over")
    if payload.get("fingerprints") != fingerprints:
        differ = differences(payload.get("configs") or [], configs or [])
        raise ConfigError("checkpoint", str(path), f"was written by a run with another config{differ}; "
                          "resume with the same overrides or choose a new directory")
    return payload


def differences(saved: list[dict], current: list[dict], shown: int = 3) -> str:
    """`` (steps: 30 there, 40 here)``: the dotted keys whose values differ between the configs
    a checkpoint was written with and the run's; empty when the checkpoint did not store them."""
    if not saved or len(saved) != len(current):
        return ""
    there, here = flatten(saved[0]), flatten(current[0])
    keys = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
    parts = [f"{k}: {there.get(k, 'unset')} there, {here.get(k, 'unset')} here" for k in keys[:shown]]
    more = f", {len(keys) - shown} more" if len(keys) > shown else ""
    return f" ({'; '.join(parts)}{more})" if parts else ""


def flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def restore(payload: dict, population, optimizer, loop_state, members: list[int]) -> None:
    """A checkpoint's members into slots ``members`` of the population's device tensors; generator
    and RNG states stay on the CPU."""
    population.load_state_dict(payload["population"], members)
    optimizer.load_state_dict(payload["optimizer"], members)
    loop_state.load_state_dict(payload["loop"], members)
    torch.set_rng_state(payload["torch_rng"].cpu())
