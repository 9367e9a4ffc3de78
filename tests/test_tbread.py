"""initopt's event-file reader gives what TensorBoard's own EventAccumulator gives."""

from __future__ import annotations

import time

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event

from initopt.tb import RunLogger, histogram_summary
from initopt.tbread import event_files, read_run_events

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


def test_a_processes_event_files_sort_in_the_order_it_made_them(tmp_path):
    """TensorBoard (and initopt's reader) read a run's files in name order: a run resumed in the
    same second by the same process (file 10 after file 9) must not sort before the first."""
    import itertools

    import initopt.tb as tb

    tb._file_counter = itertools.count(9)
    first, second = RunLogger(tmp_path, ["fc1.weight"]), RunLogger(tmp_path, ["fc1.weight"], resume_step=1)
    first.close()
    second.close()
    assert [p.name for p in event_files(tmp_path)] == [first.events.path.name, second.events.path.name]


def assert_same_run(got, expected) -> None:
    assert got.scalars.keys() == expected.scalars.keys()
    for tag, series in expected.scalars.items():
        for field in ("steps", "walltimes", "values"):
            same = np.array_equal(getattr(got.scalars[tag], field), getattr(series, field), equal_nan=True)
            assert same, (tag, field)
    assert list(got.histograms) == list(expected.histograms)
    for tag, events in expected.histograms.items():
        assert [(e.wall_time, e.step, e.tensor_proto) for e in got.histograms[tag]] == \
            [(e.wall_time, e.step, e.tensor_proto) for e in events]


def write_a_populations_runs(tmp_path, mirror: bool) -> list:
    """Three members' runs and their mean run, written as a sweep writes them (every kind of
    record: rows built for the population at once, a member diverged, window means, evaluations,
    norms and ratios, histograms, values past float32's range and NaN)."""
    from initopt.layerstats import Histograms, ParamStats
    from initopt.probes import PopulationRecords
    from initopt.sinks import PopulationLogs

    rng = np.random.default_rng(0)
    names, members = ["fc1.weight", "out.weight"], 3
    loggers = [RunLogger(tmp_path / f"m{k}", names, heatmap=False, mirror=mirror) for k in range(members)]
    mean = RunLogger(tmp_path / "mean", names, banded=True, heatmap=False, mirror=mirror)
    logs = PopulationLogs(loggers, [(mean, [0, 1, 2])], optim=[(0.1, 1.0), (0.1, 1.0), (0.3, 3.0)])
    for first in (1, 101):
        steps = np.arange(first, first + 100)
        rows = rng.random((100, members, len(names) + 1))
        rows[5, 1, 0], rows[7, 2, 1] = 1e39, np.nan  # past float32's range; not a number
        logs.write_steps(PopulationRecords(steps, 1e9 + steps * 1e-3, rows, rows.mean(0)), [None, 150, None])
        logs.write_eval(int(steps[-1]), rng.random((members, 4)), [None, 150 if first > 1 else None, None])
        hists = {kind: Histograms(steps[::50], rng.random((2, members, len(names), 7)), [6, 2])
                 for kind in ("weights", "gradients")}
        logs.write_param_stats(ParamStats(steps[::50], rng.random((2, members, 2)), steps[49::50],
                                          rng.random((2, members, 2)), hists))
    logs.write_activations(np.array([1, 50]), rng.random((2, members, 1, 2)), ["act1"])
    logs.close()
    return [tmp_path / f"m{k}" for k in range(members)] + [tmp_path / "mean"]


def test_a_sweeps_runs_mirrored_as_written_equal_their_reading(tmp_path):
    """What a sweep writes is not read back at its end: each event file's mirror answers for its
    run directory (once), with the series and histograms that reading the file gives."""
    import initopt.tbread as tbread

    dirs = write_a_populations_runs(tmp_path, mirror=True)
    files = [event_files(d)[0] for d in dirs]
    assert all(f in tbread._MIRRORS for f in files)
    mirrored = tbread.read_runs(dirs)
    assert not any(f in tbread._MIRRORS for f in files)  # taken
    for run_dir, got in zip(dirs, mirrored, strict=True):
        assert_same_run(got, read_run_events(run_dir))
    assert mirrored[1].scalars["loss/batch"].steps[-1] == 150  # the diverged member's rows end where it did


def test_a_mirror_does_not_answer_for_a_changed_or_grown_run(tmp_path, monkeypatch):
    """A run whose file changed since it was written, or that has another event file, is read
    from its files; so is a run whose mirror went past the budget."""
    import initopt.tbread as tbread

    dirs = write_a_populations_runs(tmp_path, mirror=True)
    with open(event_files(dirs[0])[0], "ab") as f:  # a torn record appended
        f.write(b"\x40\x00")
    RunLogger(dirs[1], ["fc1.weight"], resume_step=150).close()  # a second file
    taken = []
    monkeypatch.setattr(tbread, "read_run_events", lambda d: taken.append(d) or read_run_events(d))
    tbread.read_runs(dirs)
    assert taken == dirs[:2]

    monkeypatch.setattr(tbread, "MIRROR_BYTES", 1_000)  # less than a flush of rows
    over = write_a_populations_runs(tmp_path / "over", mirror=True)
    assert not any(event_files(d)[0] in tbread._MIRRORS for d in over)
    assert tbread._held[0] == 0  # the dropped mirrors gave their room back


def test_rows_of_scalars_read_in_bulk_equal_tensorboards_reading(tmp_path, monkeypatch):
    """Rows of scalars are read with numpy (:func:`initopt.tbread.scalar_rows`) when every byte but
    their wall time, step and floats is their layout's: tag lists of equal length, steps of 1-3
    varint bytes and step 0, zeros (which protobuf leaves out of an event it writes), inf and nan,
    and events written one by one all read as TensorBoard reads them, in the files' order."""
    from tensorboard.compat.proto.event_pb2 import Event

    from initopt import tbread

    logger = RunLogger(tmp_path, ["0.weight", "2.weight"])
    steps = np.array([0, 1, 2, 127, 128, 300, 16383, 16384, 20000])
    table = np.column_stack([steps * 0.5, np.where(steps % 2 == 0, 0.0, steps * 1e-3)])
    table[3, 0], table[4, 1] = np.inf, np.nan
    logger.write_rows(["grad_norm/0.weight", "grad_norm/2.weight"], steps, table)
    logger.write_rows(["grad_norm/2.weight", "grad_norm/0.weight"], steps[:4] + 5, table[:4])  # same length
    for step in (1, 200, 20001):  # events of one tag list, built by the protobuf library
        logger.write_scalars(step, ["loss/batch", "loss/test"], [0.0, step / 3])
    logger.events.write(Event(wall_time=time.time(), step=7, summary=histogram_summary(
        "weights/0.weight", np.array([0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 1.0]), 4)))
    logger.close()

    one_by_one = read_run_events(tmp_path)  # groups this small are left to protobuf ...
    monkeypatch.setattr(tbread, "MIN_ROWS", 1)  # ... here read in bulk whatever their size
    data = logger.events.path.read_bytes()
    spans = tbread.record_spans(data)
    in_bulk = sum(len(r.index) for r in tbread.scalar_rows(data, spans))
    assert in_bulk >= len(steps) + 4 + 1  # the rows (step 0 and zero floats aside) and the events

    mine, theirs = read_run_events(tmp_path), accumulator(tmp_path)
    assert sorted(mine.scalars) == sorted(theirs.Tags()["scalars"])
    for tag, series in mine.scalars.items():
        events = theirs.Scalars(tag)
        assert series.steps.tolist() == [e.step for e in events], tag
        assert np.array_equal(series.values, [e.value for e in events], equal_nan=True), tag
        assert series.walltimes.tolist() == [e.wall_time for e in events], tag
        assert np.array_equal(series.values, one_by_one.scalars[tag].values, equal_nan=True), tag
    assert [e.step for e in mine.histograms["weights/0.weight"]] == [7]
