"""Checkpoints of members: save atomically, load onto any device, restore into any population.

A checkpoint holds member states (:meth:`initopt.engine.Training.member_state`), each complete
on its own: parameters, the full optimizer state of its family, its step, ``diverged_step``
(None while it trains), wall time, evaluation history and sampler (generator, order,
position); beside them torch's CPU RNG state, the fingerprints of the members' configs and (optional, so a
mismatch can name the keys that differ) the configs themselves. So
a member checkpointed in one population resumes alone, in a population of another size or
composition, or under another launcher. It is written to a temp file and renamed (a reader
never sees half a file) and loads with ``torch.load(weights_only=True)``.

Format 3 (this one): a list of member states. Format 2 held the population's slices (the
optimizer state of the population's kind: no momentum buffer unless some member used momentum,
one Adam step count shared by all) and ``-1`` for "not diverged"; it is refused in one line.

Loading always maps to the CPU first: generator and RNG states must stay CPU ``ByteTensor``s;
parameters and optimizer tensors are then copied into the run's device tensors.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from initopt.config import ConfigError, load_error_cause

FORMAT = 3


def save(path: Path, fingerprints: list[str], training, members: list[int],
         configs: list[dict] | None = None) -> None:
    """The given members' states (one file per run directory: usually one member). ``configs``
    (plain data, what each fingerprint hashes) let a mismatch name the keys that differ."""
    payload = {
        "format": FORMAT,
        "fingerprints": fingerprints,
        "configs": configs or [],
        "members": [training.member_state(k) for k in members],
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
    tensors that belong on the run's device); a one-line :class:`ConfigError` if it is corrupt,
    of an older format or another run's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, content that weights_only refuses
        raise ConfigError("checkpoint", str(path),
                          f"unreadable ({load_error_cause(err)}); delete it to start over") from err
    version = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(version, int) and version < FORMAT:
        raise ConfigError("checkpoint", str(path), f"written by an older initopt (format {version}, this one "
                          f"reads {FORMAT}); delete it to start over")
    if version != FORMAT:
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


def start_step(payload: dict) -> int:
    """The step a checkpoint's members resume after."""
    return int(payload["members"][0]["step"])


def restore(payload: dict, training, members: list[int]) -> None:
    """A checkpoint's members into slots ``members`` of the population (any population of the
    same shapes and optimizer family); generator and RNG states stay on the CPU."""
    for k, member in zip(members, payload["members"], strict=True):
        training.load_member_state(k, member)
    torch.set_rng_state(payload["torch_rng"].cpu())
