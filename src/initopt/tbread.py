"""A run directory's scalars and histograms read back from its event files, as TensorBoard reads them.

The group runs of a sweep (:mod:`initopt.groupruns`) read every run back: the study's 600 runs of
1,500 logged steps are ~10^7 scalars. TensorBoard's ``EventAccumulator`` reads ~10^5 scalars a
second (its TFRecord reader checks CRC-32C in pure Python, and every value goes through a locked
reservoir), minutes for such a sweep. This reader gives the same series in the same order:

* the files whose name contains ``tfevents``, in name order (TensorBoard's directory watcher);
* each TFRecord framed as ``uint64 length | uint32 crc | data | uint32 crc``, the data's
  CRC-32C checked in C (``google-crc32c``); a truncated or corrupt record ends that file (a killed
  writer's last record), as TensorBoard's reader stops there;
* a ``SessionLog.START`` at step s (a resumed run) drops every scalar recorded before it at a
  step >= s (``EventAccumulator``'s ``purge_orphaned_data`` for event files of version 2, which
  purges its scalar reservoirs; histogram-plugin tensors are kept, as it keeps them);
* scalars are the ``simple_value`` summaries; histograms the tensors of tags whose summary
  metadata names the ``histograms`` plugin.

A sweep's runs are read in worker processes, one per core, when there is enough to read
(:func:`read_runs`): the study's 600 runs are ~8.5 million values, each a few Python operations.

The contract: ``tests/test_tbread.py`` compares it with ``EventAccumulator`` on a resumed run.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

HEADER = struct.Struct("<QI")
FOOTER = struct.Struct("<I")
# Below this many bytes of event files, reading in this process beats starting worker processes
# (~1 s: a fresh interpreter each); the study's runs are ~100 KB each.
PARALLEL_BYTES = 16 << 20


@dataclass
class TensorEvent:
    """One histogram record (the fields of TensorBoard's ``TensorEvent`` that are used)."""

    wall_time: float
    step: int
    tensor_proto: object


@dataclass
class Series:
    """One scalar tag of one run: steps, wall times, values."""

    steps: np.ndarray
    walltimes: np.ndarray
    values: np.ndarray


@dataclass
class RunEvents:
    scalars: dict[str, Series] = field(default_factory=dict)
    histograms: dict[str, list[TensorEvent]] = field(default_factory=dict)


def _unmask(crc: int) -> int:
    """The inverse of TFRecord's mask (rotate right by 15 bits, plus 0xa282ead8)."""
    rot = (crc - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot << 15) | (rot >> 17)) & 0xFFFFFFFF


def records(path: Path) -> list[bytes]:
    """The whole, checksum-correct records of one TFRecord file, up to the first that is not."""
    data = Path(path).read_bytes()
    out, at, end = [], 0, len(data)
    while at + HEADER.size <= end:
        length, _ = HEADER.unpack_from(data, at)
        start, stop = at + HEADER.size, at + HEADER.size + length
        if stop + FOOTER.size > end:
            break
        body = data[start:stop]
        if google_crc32c.value(body) != _unmask(FOOTER.unpack_from(data, stop)[0]):
            break
        out.append(body)
        at = stop + FOOTER.size
    return out


def event_files(run_dir: Path) -> list[Path]:
    return sorted((p for p in Path(run_dir).iterdir() if "tfevents" in p.name and p.is_file()),
                  key=lambda p: p.name)


def read_run_events(run_dir: Path) -> RunEvents:
    """Every scalar series and histogram of ``run_dir`` (see the module doc)."""
    scalars: dict[str, list[tuple[int, float, float]]] = {}
    histograms: dict[str, list[TensorEvent]] = {}
    plugin: dict[str, str] = {}
    for path in event_files(run_dir):
        for body in records(path):
            event = Event.FromString(body)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                _purge(scalars, event.step)
            step, wall = event.step, event.wall_time
            for value in event.summary.value:  # ~14,000 values a 1,500-step run: kept lean
                tag = value.tag
                if tag not in plugin:  # the first summary of a tag carries its plugin's metadata
                    plugin[tag] = value.metadata.plugin_data.plugin_name
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    rows = scalars.get(tag)
                    if rows is None:
                        rows = scalars[tag] = []
                    rows.append((step, wall, value.simple_value))
                elif kind == "tensor" and plugin[tag] == "histograms":
                    histograms.setdefault(tag, []).append(TensorEvent(wall, step, value.tensor))
    return RunEvents({tag: _series(rows) for tag, rows in scalars.items()}, histograms)


def _purge(scalars: dict, step: int) -> None:
    for tag, rows in scalars.items():
        scalars[tag] = [r for r in rows if r[0] < step]


def _series(rows: list[tuple[int, float, float]]) -> Series:
    steps, walls, values = zip(*rows) if rows else ((), (), ())
    return Series(np.array(steps, np.int64), np.array(walls, float), np.array(values, float))


def read_runs(run_dirs: list[Path]) -> list[RunEvents]:
    """:func:`read_run_events` of each directory, in order. With more than :data:`PARALLEL_BYTES` of
    event files, spread over worker processes, one per core; each a fresh interpreter (a fork
    server; spawned where there is none), never a fork of this process, which may hold torch's threads."""
    dirs = [Path(d) for d in run_dirs]
    workers = min(len(dirs), _cores())
    if workers < 2 or _event_bytes(dirs) < PARALLEL_BYTES:
        return [read_run_events(d) for d in dirs]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(read_run_events, dirs, chunksize=max(1, len(dirs) // (8 * workers))))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _event_bytes(dirs: list[Path]) -> int:
    return sum(p.stat().st_size for d in dirs for p in event_files(d))
