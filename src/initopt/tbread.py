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
  metadata names the ``histograms`` plugin;
* records that are rows of scalars (an event of float ``simple_value`` summaries and nothing else,
  byte for byte the protobuf library's layout: what initopt writes every step) are read in bulk
  with numpy (:func:`scalar_rows`), every other record through the protobuf library: the study's
  runs read ~3x faster (a 1,500-step run ~15 ms, not ~45-55).

What a sweep wrote in this process is not read back: its event files' mirrors
(:class:`RunAccumulator`, kept as they were written) answer for them (:func:`read_runs`).

The contract: ``tests/test_tbread.py`` compares it with ``EventAccumulator`` on a resumed run, and
a mirror with the reading of its file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

HEADER = struct.Struct("<QI")
FOOTER = struct.Struct("<I")


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


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """``(start, stop)`` of the data of each whole, checksum-correct record of a TFRecord file's
    bytes, up to the first that is not."""
    spans, at, end = [], 0, len(data)
    header, footer, crc32c = HEADER.unpack_from, FOOTER.unpack_from, google_crc32c.value
    while at + HEADER.size <= end:
        start = at + HEADER.size
        stop = start + header(data, at)[0]
        if stop + FOOTER.size > end or crc32c(data[start:stop]) != _unmask(footer(data, stop)[0]):
            break
        spans.append((start, stop))
        at = stop + FOOTER.size
    return spans


def event_files(run_dir: Path) -> list[Path]:
    return sorted((p for p in Path(run_dir).iterdir() if "tfevents" in p.name and p.is_file()),
                  key=lambda p: p.name)


# ------------------------------------------------------------------- rows of scalars, in bulk
def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def row_summary(tags: list[str]) -> tuple[bytes, np.ndarray]:
    """An ``Event``'s summary field (``0x2a <len> <Summary>``) holding one float32 ``simple_value``
    per tag, each value ``0x0a <len> 0x0a <len> <tag> 0x15 <f32>``, the floats zero; and the offset
    of each float's 4 bytes in it. The layout of a row of scalars as the protobuf library writes it
    (:class:`initopt.tb.ScalarRows` writes by it, :func:`scalar_rows` reads by it)."""
    values = [b"\x0a" + varint(len(t.encode())) + t.encode() + b"\x15" + bytes(4) for t in tags]
    summary = b"".join(b"\x0a" + varint(len(v)) + v for v in values)
    field = b"\x2a" + varint(len(summary)) + summary
    ends = np.cumsum([1 + len(varint(len(v))) + len(v) for v in values])
    return field, len(field) - len(summary) + ends - 4


@dataclass
class Rows:
    """Records of one event file that are rows of the same scalars (``0x09 <wall_time f64> 0x10
    <step varint>`` then :func:`row_summary` of ``tags``): their record numbers, and their numbers."""

    tags: list[str]
    index: np.ndarray
    steps: np.ndarray
    walltimes: np.ndarray
    values: np.ndarray  # (n, len(tags)): the float32s stored, in float64


MAX_LAYOUTS = 16  # layouts looked for among the records of one length (the rest: read one by one)
MIN_ROWS = 16  # fewer records of one length are read one by one (numpy's calls cost more than they save)


def scalar_rows(data: bytes, spans: list[tuple[int, int]]) -> list[Rows]:
    """The records of one file's bytes that are rows of scalars, found and read with numpy (a run
    logs a row of ~10 scalars a step: the study's runs hold ~10^7 values, ~3 us each through the
    protobuf library).

    A record is taken for a row only when every byte of it is its layout's (tags, field numbers and
    lengths) but for its wall time, step and floats: what the protobuf library reads from it is then
    exactly those numbers. Candidates are grouped by step varint length and record length (a group,
    or a file, of fewer than :data:`MIN_ROWS` records is left to protobuf); in each group the first
    record not yet placed is parsed to learn its tags, and every record of the group matching that
    layout is read at once."""
    if len(spans) < MIN_ROWS:
        return []
    buf = np.frombuffer(data, np.uint8)
    starts = np.array([a for a, _ in spans], np.int64)
    lengths = np.array([b - a for a, b in spans], np.int64)
    room = lengths >= 16
    head = np.zeros((len(spans), 15), np.uint8)
    head[room] = buf[starts[room, None] + np.arange(15)]
    ends = head[:, 10:14] < 0x80  # the step varint (bytes 10..13) ends at its first byte below 0x80
    vlen = np.where(ends.any(axis=1), ends.argmax(axis=1) + 1, 0)
    candidate = room & (head[:, 0] == 0x09) & (head[:, 9] == 0x10) & (vlen > 0)
    candidate[candidate] = head[candidate, 10 + vlen[candidate]] == 0x2A
    index = np.flatnonzero(candidate)
    shapes = (vlen[index] << 32) + lengths[index]  # (step varint length, record length)
    out = []
    for shape in np.unique(shapes).tolist():
        members = index[shapes == shape]
        if len(members) < MIN_ROWS:
            continue
        k = shape >> 32
        out += _rows_of_group(data, buf, starts[members], members, k, int(lengths[members[0]]) - 10 - k)
    return out


def _rows_of_group(data: bytes, buf: np.ndarray, starts: np.ndarray, index: np.ndarray, k: int,
                   size: int) -> list[Rows]:
    # the records' bytes after the step, a row each (joined slices: a fancy index is ~5x slower)
    fields = np.frombuffer(b"".join([data[a:a + size] for a in (starts + 10 + k).tolist()]), np.uint8)
    fields = fields.reshape(len(index), size)
    open_ = np.ones(len(index), bool)
    out = []
    for _ in range(MAX_LAYOUTS):
        if not open_.any():
            break
        first = int(np.flatnonzero(open_)[0])
        open_[first] = False
        tags = _row_tags(data[starts[first]:starts[first] + 10 + k + size])
        if tags is None:
            continue
        field, offsets = row_summary(tags)
        if len(field) != size:
            continue
        value_cols = (offsets[:, None] + np.arange(4)).ravel()
        fixed = np.ones(size, bool)
        fixed[value_cols] = False
        match = np.all(fields[:, fixed] == np.frombuffer(field, np.uint8)[fixed], axis=1)
        if not match[first]:
            continue
        match &= open_ | (np.arange(len(index)) == first)
        open_ &= ~match
        at = starts[match]
        walls = buf[at[:, None] + np.arange(1, 9)].copy().view("<f8").ravel()
        varints = buf[at[:, None] + 10 + np.arange(k)].astype(np.int64)
        steps = sum((varints[:, i] & 0x7F) << (7 * i) for i in range(k))
        floats = fields[match][:, value_cols].copy().view("<f4").reshape(len(at), len(tags))
        out.append(Rows(tags, index[match], steps, walls.astype(float), floats.astype(float)))
    return out


def _row_tags(body: bytes) -> list[str] | None:
    """The tags of an event that holds nothing but a summary of float scalars, else None."""
    event = Event.FromString(body)
    if event.WhichOneof("what") != "summary" or event.HasField("source_metadata"):
        return None
    tags = []
    for value in event.summary.value:
        if value.WhichOneof("value") != "simple_value" or value.HasField("metadata") or value.node_name:
            return None
        tags.append(value.tag)
    return tags or None


# ------------------------------------------------------------------------------ a run
class RunAccumulator:
    """A run's scalar series and histograms gathered record by record: as :func:`read_run_events`
    gathers them from its files, and as an event file written in this process mirrors what it
    writes (:class:`initopt.tb.EventFile`); one bookkeeping for both, so that they are the same.
    Each value is numbered by its record's place in the run (the series keep the files' order)."""

    def __init__(self) -> None:
        # rows of scalars: (record numbers, tags, steps, wall times, values (n, tags), float32 or float64)
        self.blocks: list[tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        self.slow: dict[str, list[tuple[int, int, float, float]]] = {}  # tag -> (record, step, wall, value)
        self.histograms: dict[str, list[TensorEvent]] = {}
        self.plugin: dict[str, str] = {}  # a tag's plugin, from its first summary (a row's: none)
        self.restarts: list[tuple[int, int]] = []  # (record number, step) of each SessionLog.START
        self.nbytes = 0  # of the rows' arrays

    def rows(self, index: np.ndarray, tags: list[str], steps: np.ndarray, walltimes: np.ndarray,
             values: np.ndarray) -> None:
        """Records ``index`` (in order) are rows of ``tags``: ``values[i]`` at ``steps[i]``, ``walltimes[i]``."""
        for tag in tags:
            self.plugin.setdefault(tag, "")
        self.blocks.append((index, list(tags), steps, walltimes, values))
        self.nbytes += index.nbytes + steps.nbytes + walltimes.nbytes + values.nbytes

    def event(self, index: int, event: Event, owned: bool = True) -> None:
        """Record ``index``, any event: its simple values, its histograms, a resume's START.
        ``owned``: the event is this accumulator's to keep (read from a file), else its histogram
        tensors are copied (a writer's protos)."""
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            self.restarts.append((index, event.step))
        step, wall = event.step, event.wall_time
        for value in event.summary.value:
            tag = value.tag
            if tag not in self.plugin:
                self.plugin[tag] = value.metadata.plugin_data.plugin_name
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                self.slow.setdefault(tag, []).append((index, step, wall, value.simple_value))
            elif kind == "tensor" and self.plugin[tag] == "histograms":
                tensor = value.tensor
                if not owned:
                    tensor = type(tensor)()
                    tensor.CopyFrom(value.tensor)
                self.histograms.setdefault(tag, []).append(TensorEvent(wall, step, tensor))

    def result(self) -> RunEvents:
        """Every series in record order, less what a resumed run superseded (:func:`_series`)."""
        pieces: dict[str, list[tuple[np.ndarray, ...]]] = {}
        for index, tags, steps, walls, values in self.blocks:
            for j, tag in enumerate(tags):
                pieces.setdefault(tag, []).append((index, steps, walls, values[:, j].astype(float)))
        for tag, found in self.slow.items():
            index, steps, walls, values = zip(*found)
            pieces.setdefault(tag, []).append((np.array(index), np.array(steps), np.array(walls, float),
                                               np.array(values, float)))
        return RunEvents({tag: _series(parts, self.restarts) for tag, parts in pieces.items()}, self.histograms)


def read_run_events(run_dir: Path) -> RunEvents:
    """Every scalar series and histogram of ``run_dir`` (see the module doc): rows of scalars read
    in bulk (:func:`scalar_rows`), every other record through the protobuf library."""
    run = RunAccumulator()
    base = 0
    for path in event_files(run_dir):
        data = path.read_bytes()
        spans = record_spans(data)
        rows = scalar_rows(data, spans)
        layout = np.full(len(spans), -1, np.int64)
        for r, block in enumerate(rows):
            layout[block.index] = r
        met = [False] * len(rows)
        for i, r in enumerate(layout.tolist()):
            if r < 0:
                a, b = spans[i]
                run.event(base + i, Event.FromString(data[a:b]))
            elif not met[r]:  # a block's tags meet the run at its first record
                met[r] = True
                block = rows[r]
                run.rows(base + block.index, block.tags, block.steps, block.walltimes, block.values)
        base += len(spans)
    return run.result()


def _series(parts: list[tuple[np.ndarray, ...]], restarts: list[tuple[int, int]]) -> Series:
    """One tag's values in record order, less those a resumed run superseded (recorded before a
    ``SessionLog.START`` at a step at or after its step)."""
    if len(parts) == 1 and not restarts:  # one source, in record order already
        _, steps, walls, values = parts[0]
        return Series(steps.astype(np.int64), walls, values)
    index, steps, walls, values = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(index, kind="stable")
    index, steps, walls, values = index[order], steps[order].astype(np.int64), walls[order], values[order]
    keep = np.ones(len(index), bool)
    for at, step in restarts:
        keep &= ~((index < at) & (steps >= step))
    return Series(steps[keep], walls[keep], values[keep])


# ------------------------------------------------------------------- runs written in this process
# A sweep's event files are mirrored as they are written (initopt.tb.EventFile(mirror=True)), so
# that the group runs at the sweep's end need not read back what this process wrote: the study's
# 600 runs took 6.0 s to read (7.1 s in two worker processes, where the series cross a pipe). A
# mirror answers for a run directory whose only event file it is, unchanged since it was closed
# (size and modification time); anything else is read from the files. Mirrors hold at most
# MIRROR_BYTES of rows (the study's: ~80 MB); an event file past that is read back.
MIRROR_BYTES = 512 << 20
_MIRRORS: dict[Path, tuple[int, int, RunAccumulator]] = {}  # event file -> its size, mtime_ns, mirror
_held = [0]  # bytes of rows in mirrors, open or kept


def reserve(nbytes: int) -> bool:
    """Room for ``nbytes`` more of mirrored rows (then taken), or False."""
    if _held[0] + nbytes > MIRROR_BYTES:
        return False
    _held[0] += nbytes
    return True


def release(nbytes: int) -> None:
    _held[0] -= nbytes


def keep_mirror(path: Path, mirror: RunAccumulator) -> None:
    """A closed event file's mirror, kept until a reader takes it (:func:`read_runs`)."""
    stat = Path(path).stat()
    _MIRRORS[Path(path)] = (stat.st_size, stat.st_mtime_ns, mirror)


def drop_mirrors(under: Path) -> None:
    """Forget the mirrors of every event file under ``under`` (a sweep whose runs were read)."""
    for path in [p for p in _MIRRORS if p.is_relative_to(under)]:
        release(_MIRRORS.pop(path)[2].nbytes)


def _mirrored(run_dir: Path) -> RunEvents | None:
    """The run's series from its event file's mirror, or None. The run's mirrors are taken either
    way: a second reading reads the files."""
    files = event_files(run_dir)
    held = [_MIRRORS.pop(f, None) for f in files]
    for h in held:
        if h is not None:
            release(h[2].nbytes)
    if len(files) != 1 or held[0] is None:
        return None
    size, mtime, mirror = held[0]
    stat = files[0].stat()
    return mirror.result() if (stat.st_size, stat.st_mtime_ns) == (size, mtime) else None


def read_runs(run_dirs: list[Path]) -> list[RunEvents]:
    """Each directory's :func:`read_run_events`, in order; from its mirror where this process wrote
    it (see above). Read in this process: on two cores worker processes were slower (above)."""
    return [_mirrored(Path(d)) or read_run_events(Path(d)) for d in run_dirs]
