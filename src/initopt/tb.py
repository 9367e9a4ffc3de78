"""TensorBoard sink: step scalars, evaluation scalars, a custom-scalars layout, one HParams entry.

Tags written (the run is the job's Hydra output directory):

* ``grad_norm/<param>``        L2 norm of each parameter tensor's gradient (``fc1.weight``, ...)
* ``grad_summary/mean_norm``   mean over parameter tensors of those norms
* ``grad_summary/global_norm`` sqrt of the sum of their squares
* ``loss/batch``               mini-batch training loss of the step
* ``loss/train``, ``loss/test``, ``accuracy/train``, ``accuracy/test`` at each evaluation
* ``final/*``                  the run's final metrics (also the HParams metrics)
* ``activation_std/<layer>``, ``activation_mean/<layer>``  hidden layers' outputs (at step 0 on
  up to 1024 training examples, then on the step's batch every ``act_every`` steps)
* ``status/diverged_at_step``  only when a non-finite loss or gradient stopped the run

The summaries themselves come from TensorBoard's and torch's own builders
(``Summary`` protos, ``custom_scalars``, ``hparams``); only the file framing is done
here, see :class:`EventFile`.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

import google_crc32c
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.summary import custom_scalars
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from initopt.probes import StepRecords

LAYOUT = {
    "gradients": {
        "gradient norm per parameter tensor": ["Multiline", [r"grad_norm/.*"]],
        "mean and global gradient norm": ["Multiline", [r"grad_summary/.*"]],
    },
    "training": {
        "loss": ["Multiline", [r"loss/.*"]],
        "accuracy": ["Multiline", [r"accuracy/.*"]],
    },
    "activations": {
        "activation std per layer": ["Multiline", [r"activation_std/.*"]],
        "activation mean per layer": ["Multiline", [r"activation_mean/.*"]],
    },
}

_file_counter = itertools.count()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8 (mod 2^32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """Appends ``Event`` protos to a TensorBoard event file in TFRecord framing:
    ``uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)``.

    Written here rather than through ``SummaryWriter`` because TensorBoard's writer
    computes CRC-32C in pure Python, ~45 us a record on a background thread that
    holds the GIL: more than a tenth of a small MLP's step when every step is logged.
    ``google-crc32c`` does it in C (~0.2 us). The file reads back with TensorBoard's
    own readers like any other.
    """

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{os.getpid()}.{next(_file_counter)}")
        self.path = logdir / name
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header + struct.pack("<I", _masked_crc32c(header))
            + data + struct.pack("<I", _masked_crc32c(data))
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunLogger:
    """Writes one run's TensorBoard events into ``logdir`` (never ``./runs``)."""

    def __init__(self, logdir: Path, param_names: list[str], resume_step: int | None = None,
                 banded: tuple[str, ...] = ()):
        self.events = EventFile(Path(logdir))
        self.step_tags = [f"grad_norm/{n}" for n in param_names] + [
            "grad_summary/mean_norm",
            "grad_summary/global_norm",
            "loss/batch",
        ]
        if resume_step is None:
            self._write_summary(custom_scalars(self._layout(banded)), step=0)
        else:  # TensorBoard drops any earlier event at or after a START at this step
            self.events.write(Event(wall_time=time.time(), step=resume_step,
                                    session_log=SessionLog(status=SessionLog.START)))

    @staticmethod
    def _layout(banded: tuple[str, ...]) -> dict:
        """The standard layout; with ``banded`` tags, a Margin chart each: mean with its min-max band."""
        if not banded:
            return LAYOUT
        margins = {f"{tag} (mean, band: min to max over replicas)":
                   ["Margin", [tag, f"band_min/{tag}", f"band_max/{tag}"]] for tag in banded}
        return {"replicas: mean and band": margins, **LAYOUT}

    def _write_summary(self, summary: Summary, step: int, walltime: float | None = None) -> None:
        self.events.write(Event(wall_time=walltime or time.time(), step=int(step), summary=summary))

    def _write_scalars(self, step: int, tags, values, walltime: float | None = None) -> None:
        summary = Summary(
            value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in zip(tags, values)]
        )
        self._write_summary(summary, step, walltime)

    def write_steps(self, rec: StepRecords) -> None:
        """One event per recorded step carrying all of that step's scalars."""
        table = np.column_stack(
            [rec.grad_norms, rec.mean_grad_norm, rec.global_grad_norm, rec.loss]
        )
        for step, walltime, row in zip(rec.steps.tolist(), rec.walltimes.tolist(), table.tolist()):
            self._write_scalars(step, self.step_tags, row, walltime)

    def write_activations(self, steps, std, mean, layer_names: list[str]) -> None:
        """``activation_std/<layer>`` and ``activation_mean/<layer>`` at each recorded step."""
        tags = [f"activation_std/{n}" for n in layer_names] + [f"activation_mean/{n}" for n in layer_names]
        for step, row in zip(steps.tolist(), np.column_stack([std, mean]).tolist()):
            self._write_scalars(step, tags, row)

    def write_band(self, low: StepRecords, high: StepRecords, banded: tuple[str, ...]) -> None:
        """``band_min/<tag>`` and ``band_max/<tag>`` for the step tags in ``banded``."""
        keep = [i for i, t in enumerate(self.step_tags) if t in banded]
        tags = [f"band_min/{self.step_tags[i]}" for i in keep] + [f"band_max/{self.step_tags[i]}" for i in keep]
        table = np.column_stack([
            np.column_stack([r.grad_norms, r.mean_grad_norm, r.global_grad_norm, r.loss])[:, keep]
            for r in (low, high)])
        for step, walltime, row in zip(low.steps.tolist(), low.walltimes.tolist(), table.tolist()):
            self._write_scalars(step, tags, row, walltime)

    def write_eval(self, step: int, metrics: dict[str, float], low: dict | None = None,
                   high: dict | None = None) -> None:
        """``train_loss`` -> ``loss/train`` and so on (with ``band_min/``, ``band_max/`` when given)."""
        tags = ["{1}/{0}".format(*k.split("_", 1)) for k in metrics]
        values = list(metrics.values())
        if low is not None and high is not None:
            tags += [f"band_min/{t}" for t in tags] + [f"band_max/{t}" for t in tags]
            values += list(low.values()) + list(high.values())
        self._write_scalars(step, tags, values)

    def write_hparams(self, hparams: dict, final: dict[str, float], step: int) -> None:
        """One HParams entry for this run: its choices and its final metrics (``final/*``)."""
        metric_tags = {f"final/{k}": v for k, v in final.items()}
        for summary in hparams_summaries(hparams, metric_tags):
            self._write_summary(summary, step=0)
        self._write_scalars(step, list(metric_tags), metric_tags.values())

    def write_divergence(self, step: int) -> None:
        """``status/diverged_at_step``: one point at the first non-finite step."""
        self._write_scalars(step, ["status/diverged_at_step"], [step])

    def flush(self) -> None:
        self.events.flush()

    def close(self) -> None:
        self.events.close()
