"""initopt's event-file reader gives what TensorBoard's own EventAccumulator gives."""

from __future__ import annotations

import time

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event

from initopt.tb import RunLogger, histogram_summary
from initopt.tbread import read_run_events

TAGS = ["loss/batch", "grad_norm/fc1.weight"]


def write_steps(logger: RunLogger, steps: range, offset: float) -> None:
    steps = np.array(list(steps))
    logger.write_rows(TAGS, steps, np.column_stack([steps * 0.5 + offset, steps * 0.25 + offset]))
    for step in steps[::3].tolist():
        row = np.array([0.0, float(step), 0.0, 0.0, 1.0, 2.0, 1.0])  # min, max, two moments, counts
        logger.events.write(Event(wall_time=time.time(), step=step,
                                  summary=histogram_summary("weights/fc1.weight", row, 4)))


def accumulator(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_resumed_run_with_a_torn_last_record_reads_as_tensorboard_reads_it(tmp_path):
    first = RunLogger(tmp_path, ["fc1.weight"])
    write_steps(first, range(1, 11), offset=0.0)
    first.close()
    with open(first.events.path, "ab") as f:  # a killed writer's half record
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    resumed = RunLogger(tmp_path, ["fc1.weight"], resume_step=6)  # steps 6.. again, other values
    write_steps(resumed, range(6, 13), offset=100.0)
    resumed.close()

    mine, theirs = read_run_events(tmp_path), accumulator(tmp_path)
    assert sorted(mine.scalars) == sorted(theirs.Tags()["scalars"])
    for tag, series in mine.scalars.items():
        events = theirs.Scalars(tag)
        assert series.steps.tolist() == [e.step for e in events]
        assert series.values.tolist() == [e.value for e in events]
        assert series.walltimes.tolist() == [e.wall_time for e in events]
    assert mine.scalars["loss/batch"].steps.tolist() == list(range(1, 13))
    assert mine.scalars["loss/batch"].values[5] == 100.0 + 3.0  # step 6 from the resumed run
    assert sorted(mine.histograms) == sorted(theirs.PluginTagToContent("histograms"))
    for tag, events in mine.histograms.items():
        assert [(e.step, e.tensor_proto) for e in events] == [(e.step, e.tensor_proto) for e in theirs.Tensors(tag)]


def test_runs_read_in_worker_processes_equal_runs_read_here(tmp_path, monkeypatch):
    """A large sweep's runs are read on every core (``read_runs``): the same series and histograms,
    in the same order, as reading each here."""
    import initopt.tbread as tbread

    dirs = []
    for k in range(3):
        logger = RunLogger(tmp_path / f"run{k}", ["fc1.weight"])
        write_steps(logger, range(1, 40), offset=float(k))
        logger.close()
        dirs.append(tmp_path / f"run{k}")
    monkeypatch.setattr(tbread, "PARALLEL_BYTES", 0)  # workers whatever the size
    monkeypatch.setattr(tbread, "_cores", lambda: 2)  # and on a one-core machine too
    in_workers = tbread.read_runs(dirs)
    for run_dir, got in zip(dirs, in_workers, strict=True):
        here = read_run_events(run_dir)
        assert got.scalars.keys() == here.scalars.keys()
        for tag, series in here.scalars.items():
            for field in ("steps", "walltimes", "values"):
                assert np.array_equal(getattr(got.scalars[tag], field), getattr(series, field))
        assert [(e.step, e.tensor_proto) for e in got.histograms["weights/fc1.weight"]] == \
            [(e.step, e.tensor_proto) for e in here.histograms["weights/fc1.weight"]]
