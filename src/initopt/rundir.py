"""The run directory, one owner: its file names, ``metrics.json`` (versioned), the config
fingerprint, the keys that do not change a run, the lock, and what a directory holds.

A run directory (a job's Hydra output directory, or ``replicas/seed=S`` inside one) holds::

    events.out.tfevents.*   the TensorBoard run (a replica job's mean run: mean/events.out.tfevents.*)
    metrics.json            how the run ended (schema below); written last, atomically
    final.pt                the trained weights (a plain model's state_dict)
    checkpoint.pt           only while the run is unfinished
    .initopt.lock           only while a process trains in it (its PID and host)
    .hydra/                 Hydra's record of the composed config and the overrides

``metrics.json`` (``schema`` 2): ``status`` (ok | diverged | failed), ``diverged_step``,
``steps``, ``steps_done``, ``wall_time_s``, ``steps_per_s``, ``final`` (train/test loss and
accuracy), ``choices``, ``hparams``, ``run_name``, ``device``, ``n_parameters``, ``parameters``,
``fingerprint``, ``population`` (how many members trained together, and which), ``history``
(one entry per evaluation); a replica job's adds ``final_std``, ``seeds`` and ``replicas``;
a failed job's has ``error`` and ``traceback``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig

from initopt.config import ConfigError
from initopt.values import plain_copy

METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
LOCK = ".initopt.lock"
MEAN_RUN = "mean"  # a replica job's mean run (TensorBoard), beside replicas/seed=<s>/
GROUPS_DIR = "groups"  # a sweep's group runs, <sweep>/groups/<group> (initopt.groupruns)
EVENTS_GLOB = "events.out.tfevents*"
SCHEMA = 2
FINISHED = ("ok", "diverged")

# The one list of keys that say how a run is carried out, not what it computes: left out of the
# config fingerprint (a resumed run may differ in them), of Hydra's job directory names (through
# the ``initopt_non_run_keys`` resolver in conf/train.yaml) and of the report's choices.
NON_RUN_KEYS = ("device", "replicas_mode", "progress", "threads", "resume", "overwrite", "checkpoint_every",
                "compile", "data.root", "data.download", "launcher", "experiment")


def dirname_exclude_keys() -> list[str]:
    """``NON_RUN_KEYS`` as Hydra's ``override_dirname.exclude_keys`` (with the ``+key`` spellings)."""
    return [*NON_RUN_KEYS, *(f"+{k}" for k in NON_RUN_KEYS)]


def run_config(cfg: DictConfig) -> dict:
    """The composed config as plain data, less :data:`NON_RUN_KEYS`: what a run computes (a new
    copy of the config's values, :meth:`initopt.compose.JobConfigs.values`)."""
    from initopt.compose import JOBS  # at call time: compose is above this module

    plain = plain_copy(JOBS.values(cfg))
    for key in NON_RUN_KEYS:
        node, _, leaf = key.rpartition(".")
        parent = plain.get(node, {}) if node else plain
        if isinstance(parent, dict):
            parent.pop(leaf, None)
    return plain


def fingerprint(cfg: DictConfig) -> str:
    """SHA-1 of the composed config, less :data:`NON_RUN_KEYS` (:func:`run_config`); a sweep job's
    once (:meth:`initopt.compose.JobConfigs.derived`: its plan, its members and its metrics ask)."""
    from initopt.compose import JOBS  # at call time: compose is above this module

    return JOBS.derived(cfg, "fingerprint", _sha1_of_run_config)


def _sha1_of_run_config(cfg: DictConfig) -> str:
    return hashlib.sha1(json.dumps(run_config(cfg), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- metrics.json
def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_metrics(run_dir: Path, payload: dict) -> None:
    """``metrics.json`` with the schema version, atomically (temp file + rename)."""
    path = Path(run_dir) / METRICS
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_json_safe({"schema": SCHEMA, **payload}), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never a half-written file left behind (a full disk, Ctrl-C)
        raise


def write_final(run_dir: Path, state_dict: dict) -> None:
    """``final.pt`` (the trained weights), atomically: a temp file renamed over it, removed if the
    write fails (a full disk never leaves a truncated ``final.pt`` that looks like a finished run)."""
    path = Path(run_dir) / FINAL
    tmp = path.with_name(path.name + ".tmp")
    try:
        import torch

        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


DISK_FULL_MARGIN = 1 << 20  # bytes: a write that failed with less than this free was a full disk


def disk_full(err: BaseException | None, where: Path | None = None) -> OSError | BaseException | None:
    """The error (or the one it wraps: ``torch.save`` raises a ``RuntimeError`` around the
    ``OSError``, or only its message) that says the disk is full or the quota spent; else None.
    An error that says neither (``torch.save``'s zip writer can fail with only ``unexpected pos``)
    counts when the file system of ``where`` has less than :data:`DISK_FULL_MARGIN` free."""
    first, seen = err, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        if any(words in str(err) for words in DISK_FULL_WORDS):
            return err
        err = err.__cause__ or err.__context__
    if first is not None and where is not None and free_bytes(where) < DISK_FULL_MARGIN:
        return first
    return None


def free_bytes(where: Path) -> float:
    """Free bytes on the file system holding ``where`` (its nearest existing parent); inf if unknown."""
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return math.inf


def read_metrics(run_dir: Path) -> dict | None:
    """The run's ``metrics.json``, or None when it is missing or unreadable (half-written, foreign)."""
    try:
        metrics = json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def finished_metrics(run_dir: Path) -> dict | None:
    metrics = read_metrics(run_dir)
    return metrics if metrics is not None and metrics.get("status") in FINISHED else None


# --------------------------------------------------------------------------- can it be written
def creatable_problem(directory: Path) -> str | None:
    """Why no output can be written at ``directory`` (None when it can): its nearest existing
    ancestor must be a folder in which a probe file can be created (and is removed at once).
    ``os.access`` is not enough: it says yes to root on read-only mounts and on /proc."""
    path = Path(directory).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".initopt-probe-"):
            pass
    except OSError as err:
        return f"cannot create files in {existing} ({err.strerror or type(err).__name__})"
    return None


# ------------------------------------------------------------------------------- a job is its config
SAME_RUN_AS = "same_run_as"  # metrics.json of a job found finished under another directory name
_finished_by_fingerprint: dict[Path, dict[str, Path]] = {}


def finished_twin(sweep_dir: Path, fp: str, exclude: Path) -> Path | None:
    """A job directory of ``sweep_dir`` holding a finished run of the config with fingerprint ``fp``
    (trained under another directory name, e.g. before the sweep was widened), or None.

    The sweep's ``metrics.json`` files are read once per process (a sweep's jobs share the index).
    """
    sweep_dir = Path(sweep_dir).resolve()
    if sweep_dir not in _finished_by_fingerprint:
        index: dict[str, Path] = {}
        for path in sorted(sweep_dir.glob(f"*/{METRICS}")):
            done = finished_metrics(path.parent)
            if done is not None and done.get("fingerprint") and not done.get(SAME_RUN_AS):
                index.setdefault(done["fingerprint"], path.parent)
        _finished_by_fingerprint[sweep_dir] = index
    twin = _finished_by_fingerprint[sweep_dir].get(fp)
    return twin if twin is not None and twin != Path(exclude).resolve() and finished_metrics(twin) else None


# ------------------------------------------------------------------------------- what is there
def holds_a_run(run_dir: Path) -> bool:
    """Anything a run writes: events, metrics, weights or a checkpoint."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (METRICS, CHECKPOINT, FINAL)) or \
        any(run_dir.glob(EVENTS_GLOB)) or (run_dir / "replicas").is_dir() or (run_dir / MEAN_RUN).is_dir()


def classify(run_dir: Path, fp: str) -> str:
    """``finished`` (this config's), ``foreign`` (another config's finished run), ``resumable``
    (a checkpoint), ``stale`` (a run's files but no checkpoint: crashed or failed), or ``empty``."""
    run_dir = Path(run_dir)
    done = finished_metrics(run_dir)
    if done is not None:
        return "finished" if done.get("fingerprint") in (None, fp) else "foreign"
    if (run_dir / CHECKPOINT).exists():
        return "resumable"
    return "stale" if holds_a_run(run_dir) else "empty"


def clear_stale(run_dir: Path, keep_replicas: bool = False) -> None:
    """Start clean where a run crashed without a checkpoint: its events, metrics and weights go,
    so TensorBoard never shows two runs' points in one run (``.hydra/`` stays; a replica job's
    members, which decide for themselves, stay with ``keep_replicas``)."""
    run_dir = Path(run_dir)
    for path in [*run_dir.glob(EVENTS_GLOB), run_dir / METRICS, run_dir / FINAL, run_dir / (METRICS + ".tmp"),
                 run_dir / (FINAL + ".tmp"), run_dir / (CHECKPOINT + ".tmp")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(run_dir / MEAN_RUN, ignore_errors=True)
    if not keep_replicas:
        shutil.rmtree(run_dir / "replicas", ignore_errors=True)


def move_aside(run_dir: Path) -> Path:
    """``overwrite=true``: rename the old run to ``<dir>.replaced-<time>`` in one step (atomic on
    one file system) so nothing is half-deleted; returns where it went.

    Refused (:class:`ConfigError`, nothing moved) while a live process holds a lock anywhere
    under ``run_dir`` (a run, or one job of a sweep): moving it would pull the directory from
    under that process and land its last writes in the new run."""
    run_dir = Path(run_dir)
    held = live_locks(run_dir)
    if held:
        lock = held[0]
        pid, host = lock.holder()
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        raise ConfigError("overwrite", True, (
            f"{run_dir} is in use: {lock.path}{more} is held by process {pid} on {host or 'this host'}, "
            "which is running; "
            "wait for it to finish or stop it (Ctrl-C checkpoints it), then overwrite"))
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = target.with_name(f"{target.name}-{n}")
        n += 1
    os.rename(run_dir, target)
    return target


# ------------------------------------------------------------------------------------ the lock
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def live_locks(directory: Path) -> list[RunLock]:
    """The locks in ``directory`` and every folder under it held by a live process (or by a
    process on another host, which cannot be checked)."""
    return [lock for path in sorted(Path(directory).rglob(LOCK)) if (lock := RunLock(path.parent)).holder_alive()]


_HELD: set[RunLock] = set()  # the locks this process holds


def release_held_locks() -> None:
    """Every lock this process holds, released (Ctrl-C while a sweep's jobs are being prepared:
    a job's lock may be taken before the launcher knows of the job)."""
    for lock in list(_HELD):
        lock.release()


class DirectoryInUse(ConfigError):
    """Another live process holds the directory's lock (a sweep stops here: exit 2, nothing touched)."""


class RunLock:
    """One process trains in a directory at a time: ``.initopt.lock`` holds ``pid host``.

    Created with O_EXCL; a lock whose process is gone (same host, PID not alive) is stale and
    taken over, so a crash never leaves a directory locked for ever.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self.holder_alive():
                    raise DirectoryInUse("run directory", str(self.path.parent),
                                         f"in use by another process ({self._text()}); wait for it or "
                                         "choose another directory") from None
                self.path.unlink(missing_ok=True)
                continue
            self.held = True
            _HELD.add(self)
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise ConfigError("run directory", str(self.path.parent), "its lock could not be taken")

    def _text(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def holder(self) -> tuple[int, str] | None:
        """``(pid, host)`` of the process named in the lock file; None when there is no lock or it
        does not name one (empty: being written, or left half-written)."""
        pid, _, host = self._text().partition(" ")
        return (int(pid), host) if pid.isdigit() else None

    def holder_alive(self) -> bool:
        """The lock's process is running: on this host, its PID is alive (and not this process);
        on another host, assumed so (it cannot be checked). False without a readable holder."""
        holder = self.holder()
        if holder is None:
            return False
        pid, host = holder
        if host and host != socket.gethostname():
            return True  # another machine's process: cannot tell, do not take it
        return pid != os.getpid() and _alive(pid)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            _HELD.discard(self)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
