"""TensorBoard sink: scalars, histograms, an image, text, a Custom Scalars layout, HParams.

Tags a run writes (the run is its directory under the logdir):

=================================  ==========================================================
``grad_norm/<param>``              L2 norm of each parameter tensor's gradient, every logged step
``grad_summary/mean_norm``         mean over tensors of those norms (the homework's curve)
``grad_summary/global_norm``       sqrt of the sum of their squares
``loss/batch``                     the step's mini-batch loss
``grad_norm_smooth/<param>``       mean of ``grad_norm/<param>`` over the window since the
                                   previous flush, at the window's last step (flushes: every
                                   ``flush_every`` steps and at each evaluation, so also at
                                   steps 1, 2, 5, 10, 20, 50); ``grad_summary/mean_norm_smooth``
``loss/train`` ``loss/test``       whole-set loss and accuracy at step 0 (initialization), at
``accuracy/train`` ``/test``       steps 1, 2, 5, 10, 20, 50 (below ``eval_every``), every
                                   ``eval_every`` steps and at the end
``optim/torch_lr``                 the learning rate of the equivalent torch.optim call (lr * beta
                                   for EMA momentum)
``optim/steady_step``              the steady-state step size (lr for SGD and EMA momentum,
                                   lr / beta for heavy ball, Adam's lr; :func:`initopt.hparams.steady_step`)
``weight_norm/<param>``            ||w_s||, at step 0 and every ``param_every`` steps
``update_ratio/<param>``           ||w_s - w_{s-1}|| / ||w_s|| every ``param_every`` steps
``activation_std|mean/<layer>``    hidden layers' outputs, at step 0 and every ``act_every`` steps
``weights/<param>`` (histogram)    at step 0 and every ``hist_every`` steps (tensors matching
                                   ``hist_tensors``)
``gradients/<param>`` (histogram)  at step 1 (the gradient at initialization), every ``hist_every``
``heatmap/grad_norm`` (image)      tensor x step (log-spaced columns), log colour on the sweep's
                                   scale, exact zeros in their own colour (:mod:`initopt.heatmap`)
``config``, ``status`` (text)      the composed config; how a diverged run stopped
``seed_band/<tag>/mean|min|max``   mean runs only (a replica job's ``mean``, a sweep's group
                                   runs): mean and range over seeds
=================================  ==========================================================

plus a Custom Scalars layout (:func:`layout`) and the HParams session (:mod:`initopt.hparams`).
The summaries are TensorBoard's own protos; only the file framing is done here
(:class:`EventFile`).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import socket
import struct
import time
from pathlib import Path

import google_crc32c
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_DOUBLE, DT_STRING
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard.summary import custom_scalars

from initopt import tbread
from initopt.hparams import METRICS, Column, Session
from initopt.layerstats import HIST_FIELDS, Histograms, ParamStats
from initopt.probes import StepRecords
from initopt.tbread import row_summary, varint

EVAL_TAGS = ("loss/train", "loss/test", "accuracy/train", "accuracy/test")
HEATMAP_TAG = "heatmap/grad_norm"
OPTIM_TAGS = ("optim/torch_lr", "optim/steady_step")
EXPERIMENT_FILE = "events.out.tfevents.0.hparams-experiment"  # sorts before every run's own files
_file_counter = itertools.count()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
    """One TFRecord: ``uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)``."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc32c(header)) + data + struct.pack("<I", _masked_crc32c(data))


class EventFile:
    """Appends ``Event`` protos to a TensorBoard event file in TFRecord framing.

    Written here rather than through ``SummaryWriter`` because TensorBoard's writer
    computes CRC-32C in pure Python, ~45 us a record on a background thread that
    holds the GIL: more than a tenth of a small MLP's step when every step is logged.
    ``google-crc32c`` does it in C (~0.2 us). The file reads back with TensorBoard's
    own readers like any other.

    ``mirror``: keep what a reader would read of this file as it is written
    (:class:`initopt.tbread.RunAccumulator`; a sweep's runs, which its group runs then need not read
    back). Rows written already framed must then say what they hold (``rows`` of
    :meth:`write_framed`); a mirror past the budget (:func:`initopt.tbread.reserve`) is dropped.
    """

    def __init__(self, logdir: Path, suffix: str = "", mirror: bool = False):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_file_counter):08d}{suffix}")  # padded: name order = creation order
        self.path = logdir / name
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self.mirror = tbread.RunAccumulator() if mirror else None
        self._records = 0
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: Event) -> None:
        """Append one ``Event``."""
        self._file.write(_frame(event.SerializeToString()))
        if self.mirror is not None:
            self.mirror.event(self._records, event, owned=False)
        self._records += 1

    def write_framed(self, records: bytes, rows: list[tuple] | None = None) -> None:
        """Append records already in TFRecord framing (:class:`ScalarRows`): with a mirror, ``rows``
        says what they are, in order: ``(tags, steps, wall times, values (n, tags))`` blocks, one
        record a row (the values as written: float32)."""
        self._file.write(records)
        if self.mirror is None:
            return
        if rows is None:
            return self._drop_mirror()
        for tags, steps, walls, values in rows:
            n = len(steps)
            if not n:
                continue
            with np.errstate(over="ignore"):  # beyond float32's range: inf, as written
                values = np.asarray(values, np.float64).reshape(n, len(tags)).astype(np.float32)
            block = (np.arange(self._records, self._records + n), np.asarray(steps, np.int64),
                     np.asarray(walls, np.float64), values)
            if not tbread.reserve(sum(a.nbytes for a in block)):
                return self._drop_mirror()
            self.mirror.rows(block[0], tags, *block[1:])
            self._records += n

    def _drop_mirror(self) -> None:
        tbread.release(self.mirror.nbytes)
        self.mirror = None

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.mirror is not None:
            tbread.keep_mirror(self.path, self.mirror)
            self.mirror = None


# ------------------------------------------------------------------------ the layout
def layout(param_names: list[str], banded: bool = False) -> dict:
    """The Custom Scalars layout: the homework's charts first (whole-set loss, mean gradient
    norm, gradient norm per layer), then a chart per parameter kind (weights, biases; a line
    per layer), ``loss/batch`` apart from the whole-set losses, and with ``banded`` (a mean run:
    a replica job's ``mean``, a sweep's group run) one Margin chart per banded tag: the mean
    over seeds with its min-max band.

    The plugin merges every run's layout and asks each selected run for every chart; a Margin
    chart warns "Missing Tags" for a run that has some but not all of its three tags. So each
    Margin chart has one series, and its three tags (``seed_band/<tag>/mean|min|max``) exist
    only in mean runs: the other runs have none of them and no warning appears.
    """
    charts = {
        "homework: loss and gradient norms": {
            "loss on the whole training and held-out sets": ["Multiline", [r"loss/(train|test)$"]],
            "mean gradient norm over tensors, window mean": ["Multiline", [r"grad_summary/mean_norm_smooth$"]],
            "gradient norm, weights, window mean (a line per layer)": ["Multiline", [r"grad_norm_smooth/.*\.weight$"]],
            "accuracy on the whole training and held-out sets": ["Multiline", [r"accuracy/(train|test)$"]],
        },
        "gradients, every step": {
            "gradient norm, weights (a line per layer)": ["Multiline", [r"grad_norm/.*\.weight$"]],
            "gradient norm, biases (a line per layer)": ["Multiline", [r"grad_norm/.*\.bias$"]],
            "mean and global gradient norm": ["Multiline", [r"grad_summary/(mean|global)_norm$"]],
            "gradient norm, biases, window mean": ["Multiline", [r"grad_norm_smooth/.*\.bias$"]],
            "mini-batch loss": ["Multiline", [r"loss/batch$"]],
        },
        "weights and updates": {
            "update / weight ratio ||w_s - w_s-1|| / ||w_s||, weights": ["Multiline", [r"update_ratio/.*\.weight$"]],
            "update / weight ratio, biases": ["Multiline", [r"update_ratio/.*\.bias$"]],
            "weight norm ||w||, weights": ["Multiline", [r"weight_norm/.*\.weight$"]],
            "weight norm, biases": ["Multiline", [r"weight_norm/.*\.bias$"]],
            "torch.optim learning rate and steady-state step": ["Multiline", [r"optim/.*"]],
        },
        "activations": {
            "activation std per layer": ["Multiline", [r"activation_std/.*"]],
            "activation mean per layer": ["Multiline", [r"activation_mean/.*"]],
        },
    }
    if not banded:
        return charts
    margins = {f"{tag}: mean over seeds, band min to max":
               ["Margin", [band_tag(tag, stat) for stat in ("mean", "min", "max")]]
               for tag in banded_tags(param_names)}
    return {**charts, "mean over seeds and band (mean runs only)": margins}


def _step_table(rec: StepRecords) -> np.ndarray:
    """``(n, P + 3)``: the values of :func:`step_tags` at each recorded step."""
    return np.column_stack([rec.grad_norms, rec.mean_grad_norm, rec.global_grad_norm, rec.loss])


BAND_PREFIX = "seed_band/"


def band_tag(tag: str, stat: str) -> str:
    """``seed_band/<tag>/<stat>``: a mean run's mean, min or max over seeds of ``tag``."""
    return f"{BAND_PREFIX}{tag}/{stat}"


def step_tags(param_names: list[str]) -> list[str]:
    """The per-step scalars, in the order of a :class:`StepRecords` row."""
    return [f"grad_norm/{n}" for n in param_names] + ["grad_summary/mean_norm", "grad_summary/global_norm",
                                                       "loss/batch"]


def banded_tags(param_names: list[str]) -> list[str]:
    """Tags that get a band in a replica job's mean run: every step scalar and every evaluation."""
    return step_tags(param_names) + list(EVAL_TAGS)


# --------------------------------------------------------------------------- summaries
def _scalars(tags, values) -> Summary:
    return Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in zip(tags, values)])


def histogram_buckets(row: np.ndarray, numel: int) -> np.ndarray:
    """``(k, 3)`` buckets ``[left, right, count]`` (the histogram plugin's format) from an
    :class:`initopt.layerstats.Histogrammer` row; a single bucket when min = max (zero init)."""
    lo, hi, counts = row[0], row[1], row[HIST_FIELDS:]
    if not hi > lo:
        return np.array([[lo, hi, float(numel)]])
    edges = lo + (hi - lo) * np.arange(len(counts) + 1) / len(counts)
    return np.column_stack([edges[:-1], edges[1:], counts])


def _float64_tensor(array: np.ndarray) -> TensorProto:
    """What ``tensor_util.make_tensor_proto`` makes of a float64 array, without its per-call cost."""
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=n) for n in array.shape])
    return TensorProto(dtype=DT_DOUBLE, tensor_shape=shape, tensor_content=np.ascontiguousarray(array, "<f8").tobytes())


def histogram_summary(tag: str, row: np.ndarray, numel: int) -> Summary:
    """A histogram-plugin summary of one tensor (:func:`histogram_buckets`)."""
    meta = histogram_metadata.create_summary_metadata(display_name=tag, description="")
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=_float64_tensor(histogram_buckets(row, numel)))])


def image_summary(tag: str, png: bytes, width: int, height: int, description: str = "") -> Summary:
    """An image-plugin summary (the plugin's metadata, so its description is kept and readers
    know the plugin): the tensor TensorBoard's ``image`` summary writes, ``[width, height, png]``."""
    metadata = image_metadata.create_summary_metadata(display_name=tag, description=description)
    tensor = TensorProto(dtype=DT_STRING, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=3)]),
                         string_val=[str(width).encode(), str(height).encode(), png])
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def heatmap_image(steps: np.ndarray, norms: np.ndarray, names: list[str],
                  scale: tuple[float, float] | None = None) -> Summary:
    """The ``heatmap/grad_norm`` image of ``norms`` (steps x tensors) on the colour scale
    ``scale`` (default: the norms' own range), its axes in the description."""
    from initopt.heatmap import grad_norm_heatmap_png, heatmap_description, norm_range

    scale = scale or norm_range(norms)
    png, width, height = grad_norm_heatmap_png(steps, norms, names, scale)
    return image_summary(HEATMAP_TAG, png, width, height, heatmap_description(steps, norms, names, scale))


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=hparams_metadata.create_summary_metadata(data),
                                        tensor=hparams_metadata.NULL_TENSOR)])


def _set_value(target, value) -> None:
    if isinstance(value, float):
        target.number_value = value
    else:
        target.string_value = str(value)


def experiment_summary(cols: list[Column], metrics: dict[str, str] = METRICS, created: float | None = None) -> Summary:
    """The HParams experiment: a column per hyperparameter with its discrete domain and
    ``differs``; the metrics (tag -> display name) are scalar tags of the session runs themselves."""
    infos = []
    for col in cols:
        numeric = all(isinstance(v, float) for v in col.values)
        info = api_pb2.HParamInfo(name=col.name, differs=col.differs,
                                  type=api_pb2.DATA_TYPE_FLOAT64 if numeric else api_pb2.DATA_TYPE_STRING)
        for value in col.values:
            _set_value(info.domain_discrete.values.add(), value if numeric else str(value))
        infos.append(info)
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), display_name=shown)
                    for tag, shown in metrics.items()]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos,
                                    time_created_secs=time.time() if created is None else created)
    return _hparams_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start_summary(session: Session) -> Summary:
    info = plugin_data_pb2.SessionStartInfo(group_name=session.group, start_time_secs=time.time())
    for name, value in session.hparams.items():
        _set_value(info.hparams[name], value)
    return _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end_summary(ok: bool) -> Summary:
    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
                                          end_time_secs=time.time())
    return _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG,
                            plugin_data_pb2.HParamsPluginData(session_end_info=info))


def write_experiment(directory: Path, cols: list[Column], created: float | None = None) -> Path:
    """Write (or replace) the HParams experiment of the runs under ``directory`` (a sweep's)
    into its own event file there (atomically: a temporary file, then a rename); ``created``:
    its time stamp (default now)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EXPERIMENT_FILE
    tmp = path.with_name(path.name + ".tmp")
    events = [Event(wall_time=time.time(), file_version="brain.Event:2"),
              Event(wall_time=time.time(), step=0, summary=experiment_summary(cols, created=created))]
    tmp.write_bytes(b"".join(_frame(e.SerializeToString()) for e in events))
    os.replace(tmp, path)
    return path


def read_experiment(directory: Path) -> list[Column] | None:
    """The HParams experiment :func:`write_experiment` wrote in ``directory`` as columns (None
    when there is none), read with TensorBoard's event file loader and plugin-data parser."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    path = Path(directory) / EXPERIMENT_FILE
    if not path.exists():
        return None
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag == hparams_metadata.EXPERIMENT_TAG:
                content = value.metadata.plugin_data.content
                experiment = hparams_metadata.parse_experiment_plugin_data(content)
                return [Column(h.name, tuple(v.number_value if v.HasField("number_value") else v.string_value
                                             for v in h.domain_discrete.values), h.differs)
                        for h in experiment.hparam_infos]
    return None


# ------------------------------------------------------------------------------ a run
def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each positive int64's varint: 1 below 2^7, 2 below 2^14, ..."""
    return 1 + sum((values >= 1 << (7 * i)).astype(np.int64) for i in range(1, 10))


def _masked_crc32c_array(crcs: np.ndarray) -> np.ndarray:
    """:func:`_masked_crc32c`'s rotation and offset over an array of CRC-32C values."""
    crcs = crcs.astype(np.uint64)
    return ((((crcs >> 15) | (crcs << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


@functools.lru_cache(maxsize=64)
def _crc32c_tables(size: int, varying: tuple[int, ...]) -> np.ndarray:
    """``(len(varying), 256)`` tables for the CRC-32C of many records of ``size`` bytes that
    differ only at the byte positions ``varying``, by its linearity over GF(2): for equal
    lengths ``crc(a ^ b) = crc(a) ^ crc(b) ^ crc(0)``, so ``crc(row) = crc(t0) ^ XOR_j T_j[row[j]]``
    with ``t0`` the row with zeros at the varying positions and ``T_j[v] = crc(v at j) ^ crc(0)``
    (each table from 8 single-bit CRCs)."""
    zeros = bytes(size)
    zero_crc = google_crc32c.value(zeros)
    bit_crcs = np.empty((len(varying), 8), np.uint32)
    for i, j in enumerate(varying):
        for bit in range(8):
            bit_crcs[i, bit] = google_crc32c.value(zeros[:j] + bytes([1 << bit]) + zeros[j + 1:]) ^ zero_crc
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # (256, 8)
    return np.bitwise_xor.reduce(np.where(bits[None], bit_crcs[:, None, :], 0).astype(np.uint32), axis=2)


class ScalarRows:
    """Writes rows of the same scalar tags, one ``Event`` per row, a whole window at once.

    Every row's event has the same bytes but for its wall time, its step and its float32
    values: ``0x09 <wall_time f64> 0x10 <step varint> 0x2a <len> <Summary>``, where each
    ``Summary.Value`` is ``0x0a <len> 0x0a <len> <tag> 0x15 <simple_value f32>``. So a window is
    one numpy array of records (a template row, the numbers patched in by column) framed with
    one C call of CRC-32C per record: ~1-2 us a row where building a protobuf per row costs
    ~20-100 us, which at one row per member per step is as much as a small MLP's arithmetic.
    The template is checked once against the protobuf library's own serialization; rows the
    template does not cover (step <= 0 or wall time 0, which proto3 leaves out) go through it.
    """

    def __init__(self, events: EventFile, tags: list[str]):
        self.events, self.tags = events, list(tags)
        self._event = Event(summary=_scalars(tags, [0.0] * len(tags)))
        self._slots = list(self._event.summary.value)
        field, offsets = row_summary(tags)
        summary = self._event.summary.SerializeToString()  # the layout checked against protobuf's own
        self._fast = field == b"\x2a" + varint(len(summary)) + summary
        self._summary = np.frombuffer(field, np.uint8)
        self._value_cols = (offsets[:, None] + np.arange(4)).ravel()

    def write(self, steps: np.ndarray, walltimes: np.ndarray, table: np.ndarray) -> None:
        """Row i of ``table`` at ``steps[i]``, stamped ``walltimes[i]``."""
        if len(steps):
            self.events.write_framed(self.frames(steps, walltimes, np.asarray(table)[None])[0],
                                     [(self.tags, steps, walltimes, table)])

    def frames(self, steps: np.ndarray, walltimes: np.ndarray, tables: np.ndarray,
               counts: list[int] | None = None) -> list[bytes]:
        """The framed records of K runs' rows at the same steps, ``tables`` ``(K, n, T)``: run
        k's first ``counts[k]`` rows (default all) as one ``bytes`` each, built all at once."""
        steps, walltimes = np.asarray(steps, np.int64), np.asarray(walltimes, np.float64)
        tables = np.asarray(tables, np.float64)
        tables = tables.reshape(tables.shape[0] if tables.ndim == 3 else 1, len(steps), len(self._slots))
        counts = [len(steps)] * len(tables) if counts is None else counts
        if not len(steps):
            return [b""] * len(tables)
        if not self._fast or (steps <= 0).any() or (walltimes == 0).any():
            return [self._serialize_each(steps[:c], walltimes[:c], table[:c]) for table, c in zip(tables, counts)]
        lengths = _varint_lengths(steps)
        cuts = [0, *(np.flatnonzero(np.diff(lengths)) + 1).tolist(), len(steps)]
        groups = [(a, self._records(steps[a:b], walltimes[a:b], tables[:, a:b], int(lengths[a])))
                  for a, b in zip(cuts[:-1], cuts[1:])]
        return [b"".join(block[k, :max(0, c - a)].tobytes() for a, block in groups) for k, c in enumerate(counts)]

    def _records(self, steps: np.ndarray, walltimes: np.ndarray, tables: np.ndarray, varint: int) -> np.ndarray:
        """``(K, n, record bytes)``: the framed records of rows whose steps all take ``varint`` bytes."""
        runs, n, size = len(tables), len(steps), 1 + 8 + 1 + varint + len(self._summary)
        data = np.empty((runs, n, size), np.uint8)
        data[:, :, 0] = 0x09
        data[:, :, 1:9] = walltimes.astype("<f8").view(np.uint8).reshape(n, 8)
        data[:, :, 9] = 0x10
        for i in range(varint):
            data[:, :, 10 + i] = (steps >> (7 * i)) & 0x7F | (0x80 if i < varint - 1 else 0)
        data[:, :, 10 + varint:] = self._summary
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as protobuf stores it
            floats = tables.astype("<f4")
        data[:, :, 10 + varint + self._value_cols] = floats.view(np.uint8).reshape(runs, n, -1)
        varying = np.concatenate([np.arange(1, 9), 10 + np.arange(varint), 10 + varint + self._value_cols])
        template = data[0, 0].copy()
        template[varying] = 0
        tables_crc = _crc32c_tables(size, tuple(varying.tolist()))
        crcs = np.uint32(google_crc32c.value(template.tobytes())) ^ np.bitwise_xor.reduce(
            tables_crc[np.arange(len(varying)), data[:, :, varying]], axis=2)
        header = struct.pack("<Q", size)
        framed = np.empty((runs, n, 12 + size + 4), np.uint8)
        framed[:, :, :12] = np.frombuffer(header + struct.pack("<I", _masked_crc32c(header)), np.uint8)
        framed[:, :, 12:12 + size] = data
        framed[:, :, 12 + size:] = _masked_crc32c_array(crcs).view(np.uint8).reshape(runs, n, 4)
        return framed

    def _serialize_each(self, steps: np.ndarray, walltimes: np.ndarray, table: np.ndarray) -> bytes:
        """Through the protobuf library, one reused ``Event`` a row."""
        event, slots, out = self._event, self._slots, []
        for step, walltime, row in zip(steps.tolist(), walltimes.tolist(), table.tolist()):
            event.step, event.wall_time = step, walltime
            for slot, value in zip(slots, row):
                slot.simple_value = value
            out.append(_frame(event.SerializeToString()))
        return b"".join(out)


class RunLogger:
    """Writes one run's TensorBoard events into ``logdir`` (never ``./runs``).

    ``resume_step``: the run continues a checkpoint; TensorBoard then drops any earlier event
    at or after that step, and nothing written once at the start is written again.
    ``banded``: a mean run (bands over the seeds, :func:`layout`).
    ``heatmap``: write the gradient-norm heat map at the end, on the run's own colour scale (a
    single run); in a sweep the group-run callback writes every run's on the sweep's scale.
    ``hist_tensors``: a regex; histograms only of the tensors whose name it finds (None: all).
    ``mirror``: keep what a reader would read of the run in memory (a sweep's run: see :class:`EventFile`).
    """

    def __init__(self, logdir: Path, param_names: list[str], resume_step: int | None = None,
                 banded: bool = False, heatmap: bool = True, hist_tensors: str | None = None,
                 mirror: bool = False):
        self.events = EventFile(Path(logdir), mirror=mirror)
        self.param_names = list(param_names)
        self.heatmap = heatmap
        pattern = re.compile(hist_tensors) if hist_tensors is not None else None
        self._hist_keep = [pattern is None or bool(pattern.search(n)) for n in self.param_names]
        self.fresh = resume_step is None
        self.step_tags = step_tags(self.param_names)
        self.step_rows = ScalarRows(self.events, self.step_tags)
        self._band_rows = ScalarRows(self.events, [band_tag(t, s) for s in ("mean", "min", "max")
                                                   for t in self.step_tags]) if banded else None
        self._rows: dict[tuple[str, ...], ScalarRows] = {}
        self._norm_steps: list[np.ndarray] = []  # the heat map's columns, kept on the host
        self._norms: list[np.ndarray] = []
        self._ok = True
        if self.fresh:
            self._write(custom_scalars(layout(self.param_names, banded)), step=0)
        else:
            self.events.write(Event(wall_time=time.time(), step=resume_step,
                                    session_log=SessionLog(status=SessionLog.START)))

    def _write(self, summary: Summary, step: int, walltime: float | None = None) -> None:
        self.events.write(Event(wall_time=walltime or time.time(), step=int(step), summary=summary))

    def write_scalars(self, step: int, tags, values, walltime: float | None = None) -> None:
        """One event carrying several scalars at ``step``."""
        self._write(_scalars(tags, values), step, walltime)

    def write_rows(self, tags: list[str], steps: np.ndarray, table: np.ndarray) -> None:
        """Row i of ``table`` (values of ``tags``) at ``steps[i]``, through a reused event per tag list."""
        self._scalar_rows(tags).write(np.asarray(steps), np.full(len(steps), time.time()), np.asarray(table))

    def _scalar_rows(self, tags: list[str]) -> ScalarRows:
        """The rows writer of this tag list, made once."""
        rows = self._rows.get(tuple(tags))
        if rows is None:
            rows = self._rows[tuple(tags)] = ScalarRows(self.events, list(tags))
        return rows

    def write_run_info(self, session: Session, config_yaml: str, experiment: list[Column] | None = None) -> None:
        """At the start of a fresh run: its HParams values (session start), its composed config
        as text (``config``) and, for a job outside a sweep, the HParams ``experiment``."""
        if self.fresh:
            if experiment is not None:
                self._write(experiment_summary(experiment), step=0)
            self._write(session_start_summary(session), step=0)
            self._write(text_pb("config", f"```yaml\n{config_yaml}```"), step=0)

    def write_steps(self, rec: StepRecords, framed: tuple[bytes, np.ndarray] | None = None) -> None:
        """One event per recorded step carrying all of that step's scalars; then the window
        means (``grad_norm_smooth/*``, ``grad_summary/mean_norm_smooth``) at the window's last step.
        ``framed``: those step events already built, and the table of values they hold
        (:meth:`ScalarRows.frames` over a population)."""
        if framed is None:
            self.step_rows.write(rec.steps, rec.walltimes, _step_table(rec))
        else:
            records, table = framed
            self.events.write_framed(records, [(self.step_tags, rec.steps, rec.walltimes, table)])
        if len(rec.steps) and self.heatmap:
            self._norm_steps.append(rec.steps)
            self._norms.append(rec.grad_norms)
        if rec.window_mean is not None and len(rec.steps):
            tags = [f"grad_norm_smooth/{n}" for n in self.param_names] + ["grad_summary/mean_norm_smooth"]
            self.write_scalars(int(rec.steps[-1]), tags, [*rec.window_mean, rec.window_mean.mean()],
                               float(rec.walltimes[-1]))

    def write_band(self, mean: StepRecords, low: StepRecords, high: StepRecords) -> None:
        """``seed_band/<tag>/mean|min|max`` for every step scalar (a logger made ``banded``)."""
        self._band_rows.write(mean.steps, mean.walltimes, np.column_stack([_step_table(r) for r in (mean, low, high)]))

    def write_activations(self, steps, std, mean, layer_names: list[str]) -> None:
        """``activation_std/<layer>`` and ``activation_mean/<layer>`` at each recorded step."""
        tags = [f"activation_std/{n}" for n in layer_names] + [f"activation_mean/{n}" for n in layer_names]
        self.write_rows(tags, steps, np.column_stack([std, mean]))

    def write_eval(self, step: int, metrics: dict[str, float], low: dict | None = None,
                   high: dict | None = None) -> None:
        """``train_loss`` -> ``loss/train`` and so on; with ``low`` and ``high`` (over seeds) also
        ``seed_band/<tag>/mean|min|max``."""
        tags = ["{1}/{0}".format(*k.split("_", 1)) for k in metrics]
        values = list(metrics.values())
        if low is not None and high is not None:
            values += values + list(low.values()) + list(high.values())
            tags += [band_tag(t, s) for s in ("mean", "min", "max") for t in tags]
        self.write_scalars(step, tags, values)

    def write_optim(self, step: int, torch_lr: float, steady_step: float) -> None:
        """``optim/torch_lr`` and ``optim/steady_step`` (see :data:`OPTIM_TAGS`) at this step."""
        self.write_scalars(step, list(OPTIM_TAGS), [torch_lr, steady_step])

    def write_param_stats(self, stats: ParamStats, framed: bytes | None = None, walltime: float | None = None) -> None:
        """``weight_norm/*``, ``update_ratio/*`` and the ``weights/*`` and ``gradients/*``
        histograms of member 0 of ``stats`` (pass ``stats.member(r)`` for replica r).
        ``framed``: the norm and ratio events already built, stamped ``walltime``
        (:meth:`param_frames` over a population)."""
        if framed is None:
            walltime = time.time()
            framed = self.param_frames(stats, walltime)[0]
        rows = None  # what the records hold, for a mirror (unknown stamps: the mirror is dropped)
        if self.events.mirror is not None and walltime is not None:
            rows = [(r.tags, steps, np.full(len(steps), walltime), np.asarray(values)[:, 0])
                    for r, steps, values in self._param_rows(stats)]
        self.events.write_framed(framed, rows)
        for kind, hists in stats.histograms.items():
            self._write_histograms(kind, hists)

    def param_frames(self, stats: ParamStats, walltime: float) -> list[bytes]:
        """Each member's ``weight_norm/*`` and ``update_ratio/*`` events of ``stats``, framed, built
        for all members at once (:meth:`ScalarRows.frames`), stamped ``walltime``."""
        framed = [b""] * stats.weight_norm.shape[1]
        for rows, steps, values in self._param_rows(stats):
            members = rows.frames(steps, np.full(len(steps), walltime), np.asarray(values).transpose(1, 0, 2))
            framed = [a + b for a, b in zip(framed, members)]
        return framed

    def _param_rows(self, stats: ParamStats) -> list[tuple[ScalarRows, np.ndarray, np.ndarray]]:
        """The rows writer, steps and values ``(n, K, tensors)`` of the weight norms, then of the update ratios."""
        return [(self._scalar_rows([f"{prefix}/{n}" for n in self.param_names]), steps, values)
                for prefix, steps, values in (("weight_norm", stats.norm_steps, stats.weight_norm),
                                              ("update_ratio", stats.ratio_steps, stats.update_ratio))]

    def _write_histograms(self, kind: str, hists: Histograms) -> None:
        for step, rows in zip(hists.steps.tolist(), hists.rows[:, 0]):
            summary = Summary()
            for name, row, numel, keep in zip(self.param_names, rows, hists.numel, self._hist_keep):
                if keep:
                    summary.value.extend(histogram_summary(f"{kind}/{name}", row, numel).value)
            if summary.value:
                self._write(summary, step)

    def write_heatmap(self, step: int) -> None:
        """``heatmap/grad_norm``: every gradient norm this logger has written, as an image on its
        own colour scale (a run resumed from a checkpoint: the steps since the resume)."""
        if not self._norms:
            return
        self._write(heatmap_image(np.concatenate(self._norm_steps), np.concatenate(self._norms),
                                  self.param_names), step)

    def write_divergence(self, step: int) -> None:
        """A diverged run: the ``status`` text says where; its HParams status is failure."""
        self._ok = False
        self._write(text_pb("status", f"diverged at step {step}: the first non-finite loss or gradient"), step)

    def finish(self, step: int) -> None:
        """At the end of a run: the heat map (``heatmap``), the HParams session end (success
        unless the run diverged), then close."""
        if self.heatmap:
            self.write_heatmap(step)
        self._write(session_end_summary(self._ok), step)
        self.close()

    def flush(self) -> None:
        self.events.flush()

    def close(self) -> None:
        self.events.close()
