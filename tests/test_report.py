"""The report reads a sweep's own outputs; its numbers are the jobs' numbers, its figures follow
one style (colour = init, line style = optimizer), and it reports what it could not read."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, run_cli

from initopt.report import activations, figures, heatmaps, optimizers
from initopt.report import build as build_module
from initopt.report.__main__ import main as report_main
from initopt.report.build import build, load
from initopt.report.collect import WEIGHT_MEAN, Group, Run, read_scalars
from initopt.report.stats import mean_sd, seed_stats
from initopt.report.style import (
    BAND_LABEL,
    INIT_COLOURS,
    OPTIM_STYLES,
    TENSORBOARD_PALETTE,
    ZERO_LABEL,
    Styles,
)
from initopt.report.tables import markdown_table, summarize, write_csv


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """init and lr given against the config order (he before zero, 0.2 before 0.05), two seeds;
    trained by the population launcher (the report reads its output)."""
    tmp = tmp_path_factory.mktemp("report")
    proc = run_cli("-m", "+launcher=population", "init=he,zero", "optim.lr=0.2,0.05", "seed=0,1", "optim=sgd",
                   "model.hidden=[8,8]", "steps=60", "eval_every=20", "act_every=10", "hydra.sweep.dir=sw", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(str(tmp / "sw"), "--out", str(tmp / "rep"), "--target-accuracy", "0.6",
                   module="initopt.report", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "sw", tmp / "rep"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The homework grid in miniature: init x optim, one seed, a few steps (one population)."""
    tmp = tmp_path_factory.mktemp("grid")
    proc = run_cli("-m", "+launcher=population", "init=he,zero,normal", "optim=adam,sgd,momentum",
                   "model.hidden=[8,8]", "steps=12", "eval_every=6", "act_every=4", "hydra.sweep.dir=sw", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load(tmp / "sw")


def test_the_report_writes_its_files(sweep):
    _, rep = sweep
    for name in ("summary.md", "summary.csv", "training_curves.png", "weight_gradients.png",
                 "grad_norm_heatmaps.png", "activations.png", "lr_sensitivity.png", "report.md"):
        assert (rep / name).stat().st_size > 100, name
    page = (rep / "report.md").read_text()
    assert "![Training curves](training_curves.png)" in page and "| run |" in page
    assert "**Jobs:** 8 of 8 jobs finished." in page


def test_each_runs_scalars_are_what_tensorboards_own_reader_reads(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sw, _ = sweep
    runs = sorted(p.parent for p in sw.glob("*/metrics.json"))
    assert len(runs) == 8
    for run in runs:
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        ours = read_scalars(run)
        assert sorted(ours) == sorted(acc.Tags()["scalars"])
        for tag, (steps, values) in ours.items():
            events = acc.Scalars(tag)
            np.testing.assert_array_equal(steps, [e.step for e in events])
            np.testing.assert_array_equal(values, [e.value for e in events])
            assert values.dtype == np.float64


def test_the_page_states_the_fixed_settings_from_the_jobs_configs(sweep):
    page = (sweep[1] / "report.md").read_text()
    assert "- model: mlp (hidden [8, 8], activation relu" in page
    assert "- data: moons (" in page
    assert "- optimizer: sgd (lr 0.05/0.2, weight_decay 0)" in page
    assert "- training: steps 60, batch size 64" in page and "seeds 0, 1 (n = 2)" in page
    assert "sample sd (ddof = 1) over n seeds" in page


def test_rows_follow_the_config_order_not_the_alphabet_or_the_command_line(sweep):
    rows = [r["run"] for r in csv.DictReader(open(sweep[1] / "summary.csv"))]
    assert rows == ["init=zero,optim.lr=0.05", "init=zero,optim.lr=0.2",
                    "init=he,optim.lr=0.05", "init=he,optim.lr=0.2"]
    table = (sweep[1] / "summary.md").read_text()
    assert table.index("init=zero,optim.lr=0.05") < table.index("init=he,optim.lr=0.05")


def test_grid_rows_are_zero_normal_xavier_he_then_sgd_momentum_adam(grid):
    assert [g.label for g in grid.groups] == [f"init={i},optim={o}" for i in ("zero", "normal", "he")
                                              for o in ("sgd", "momentum", "adam")]


def test_table_values_are_the_mean_and_sample_sd_over_seeds_of_the_jobs_metrics(sweep):
    sw, rep = sweep
    rows = {r["run"]: r for r in csv.DictReader(open(rep / "summary.csv"))}
    for label, row in rows.items():
        init, lr = (part.split("=")[1] for part in label.split(","))
        jobs = [_job(sw, init, lr, s) for s in (0, 1)]
        acc = [j["final"]["test_accuracy"] for j in jobs]
        assert float(row["test_accuracy_mean"]) == pytest.approx(np.mean(acc))
        assert float(row["test_accuracy_std"]) == pytest.approx(np.std(acc, ddof=1))
        loss = [j["final"]["train_loss"] for j in jobs]
        assert float(row["train_loss_mean"]) == pytest.approx(np.mean(loss))
        assert row["seeds"] == "2" and row["ok"] == "2"


def _job(sw, init, lr, seed):
    want = {f"init={init}", f"optim.lr={lr}", f"seed={seed}"}
    matches = [p for p in sw.iterdir() if p.is_dir() and want <= set(p.name.split(","))]
    assert len(matches) == 1, matches
    return read_metrics(matches[0])


def test_steps_to_target_is_the_first_eval_reaching_it(sweep):
    sw, rep = sweep
    rows = {r["run"]: r for r in csv.DictReader(open(rep / "summary.csv"))}
    hits = []
    for s in (0, 1):
        history = _job(sw, "he", "0.2", s)["history"]
        hits += [next(h["step"] for h in history if h["test_accuracy"] >= 0.6)] if any(
            h["test_accuracy"] >= 0.6 for h in history) else []
    row = rows["init=he,optim.lr=0.2"]
    assert int(row["reached_target"]) == len(hits)
    if hits:
        assert float(row["steps_to_target_mean"]) == pytest.approx(np.mean(hits))


def test_one_standard_deviation_definition_the_sample_sd():
    mean, sd = mean_sd([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(1.0)  # ddof = 1; ddof = 0 would give 0.816
    assert np.isnan(mean_sd([5.0])[1])


def test_curve_bands_are_the_sample_sd_over_seeds(sweep):
    loaded = load(sweep[0])
    group = loaded.groups[-1]
    stats = seed_stats(group, "accuracy/test")
    values = np.stack([r.scalars["accuracy/test"][1] for r in group.runs])
    assert stats.n == 2 and stats.sd == pytest.approx(values.std(axis=0, ddof=1))
    assert stats.mean == pytest.approx(values.mean(axis=0))


def test_an_evaluation_at_step_0_is_drawn_with_a_marker():
    steps, acc = np.array([0, 50, 100]), np.array([0.5, 0.7, 0.9])
    run = Run(Path("r"), {"init": "he"}, {"status": "ok"}, {"init": {"name": "he"}, "optim": {"name": "sgd"}},
              {"accuracy/test": (steps, acc), "loss/batch": (np.arange(1, 101), np.linspace(1, 0.1, 100))})
    group = Group("init=he", {"init": "he"}, [run])
    styles = Styles([group])
    fig = figures.training_curves([group], styles, "")
    line = fig.axes[2].get_lines()[0]
    assert list(line.get_xdata()) == [0, 50, 100] and line.get_marker() == styles.markers["he"]
    assert line.get_markevery() is None  # a marker at every evaluation


def test_accuracy_panels_share_the_log_step_axis_of_the_loss_with_step_0_shown():
    steps, acc = np.array([0, 1, 2, 5, 10, 100]), np.linspace(0.5, 0.9, 6)
    run = Run(Path("r"), {"init": "he"}, {"status": "ok"}, {"init": {"name": "he"}, "optim": {"name": "sgd"}},
              {"accuracy/test": (steps, acc), "accuracy/train": (steps, acc),
               "loss/batch": (np.arange(1, 101), np.linspace(1, 0.1, 100))})
    group = Group("init=he", {"init": "he"}, [run])
    fig = figures.training_curves([group], Styles([group]), "")
    loss, train_acc, test_acc = fig.axes[:3]
    assert {ax.get_xscale() for ax in (loss, train_acc, test_acc)} == {"symlog"}
    assert loss.get_xlim() == test_acc.get_xlim() and test_acc.get_xlim()[0] == 0  # step 0 at the left end


def test_lr_sensitivity_bars_span_the_lowest_to_the_highest_seed(sweep):
    sw, _ = sweep
    loaded = load(sw)
    fig = figures.lr_sensitivity(loaded.groups, "optim.lr", "")
    bars = fig.axes[0].containers[0]  # the first line: init=zero, lr 0.05 then 0.2
    segments = bars.lines[2][0].get_segments()
    for (x, lo), (_, hi) in ((s[0], s[1]) for s in segments):
        acc = [_job(sw, "zero", f"{x:g}", s)["final"]["test_accuracy"] for s in (0, 1)]
        assert (lo, hi) == pytest.approx((min(acc), max(acc)), abs=1e-12)


def test_colour_is_the_init_and_line_style_the_optimizer_in_every_figure(grid):
    fig = figures.training_curves(grid.groups, grid.styles, grid.settings.short)
    loss = fig.axes[0]
    assert loss.get_xscale() == "symlog"  # the first steps, where He's spike lives, get room
    for line, group in zip(loss.get_lines(), grid.groups):
        assert line.get_color() == INIT_COLOURS[group.init]
        assert line.get_linestyle() == OPTIM_STYLES[group.optim]
    acts = activations.activations_by_depth(grid.groups, grid.styles, "")
    at_init = [line.get_color() for line in acts.axes[0].get_lines()]
    assert at_init == [INIT_COLOURS[i] for i in ("zero", "normal", "he")]


def test_with_another_choice_varying_the_legend_has_an_entry_per_choice_not_per_line(sweep):
    """init x lr (2 x 2 groups): colour per init, line style per optimizer, marker and shade per lr;
    the study's 60 lines are 4 + 3 + 5 entries, not 60."""
    sw, _ = sweep
    read = load(sw)
    assert len(read.groups) == 4
    fig = figures.weight_gradients(read.groups, read.styles, "t")
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend())
    assert [t.get_text() for t in legend.get_texts()] == ["zero", "he", "sgd", "optim.lr=0.05", "optim.lr=0.2"]
    by_lr = {g.choice["optim.lr"]: read.styles.of(g).marker for g in read.groups}
    assert [h.get_marker() for h in legend.legend_handles[3:]] == [by_lr["0.05"], by_lr["0.2"]]
    assert by_lr["0.05"] != by_lr["0.2"]


def test_sparse_curves_have_markers_and_the_legend_has_its_own_panel(grid):
    fig = figures.training_curves(grid.groups, grid.styles, "")
    accuracy, legend_panel = fig.axes[2], fig.axes[5]
    assert [line.get_marker() for line in accuracy.get_lines()] == [grid.styles.markers[g.init] for g in grid.groups]
    assert legend_panel.get_legend() is not None and not legend_panel.get_lines()
    assert all(ax.get_legend() is None for ax in fig.axes[:5])
    assert {t.get_text() for t in legend_panel.get_legend().get_texts()} == {
        "zero", "normal", "he", "sgd", "momentum", "adam"}


def test_zero_init_weight_gradients_are_exactly_zero_and_drawn_so(grid):
    zero = next(g for g in grid.groups if g.init == "zero")
    normal = next(g for g in grid.groups if g.init == "normal")
    assert (zero.runs[0].series(WEIGHT_MEAN)[1] == 0).all()
    assert (normal.runs[0].series(WEIGHT_MEAN)[1] > 0).all()
    fig = figures.training_curves(grid.groups, grid.styles, "")
    weights_only = fig.axes[4]
    assert ZERO_LABEL in [t.get_text() for t in weights_only.get_yticklabels()]
    panels = figures.weight_gradients(grid.groups, grid.styles, "")
    assert [ax.get_title() for ax in panels.axes[:3]] == ["||grad fc1.weight||", "||grad fc2.weight||",
                                                          "||grad out.weight||"]


def test_heat_maps_mask_exact_zeros_out_of_the_colour_scale(grid):
    names = ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    zero = next(g for g in grid.groups if g.init == "zero")
    _, cells = heatmaps.grid_of(zero, names)
    assert (cells[:3] == 0).all() and (cells[3] > 0).all()  # only the output bias learns
    fig = heatmaps.gradient_heatmaps(grid.groups, "")
    meshes = [c for ax in fig.axes for c in ax.collections if c.norm is not None and c.get_array() is not None]
    vmin = min(m.norm.vmin for m in meshes if m.norm.vmin is not None and m.norm.vmin > 0)
    cells = [heatmaps.grid_of(g, names)[1] for g in grid.groups]
    positive = min(c[c > 0].min() for c in cells)
    assert vmin == pytest.approx(positive, rel=1e-9)  # not a 1e-12 floor
    assert any(t.get_text().startswith(ZERO_LABEL) for leg in fig.legends for t in leg.get_texts())
    rows = {ax.get_title(): ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_title()}
    assert rows["init=zero,optim=adam"] < rows["init=normal,optim=adam"] < rows["init=he,optim=adam"]


def test_activations_at_init_are_drawn_once_per_init(grid):
    fig = activations.activations_by_depth(grid.groups, grid.styles, "")
    at_init, at_end = fig.axes[0], fig.axes[1]
    assert len(at_init.get_lines()) == 3 and len(at_end.get_lines()) == 9
    assert at_init.get_title().startswith("at initialization (step 0)")
    assert at_end.get_title() == "at the last recorded step (step 12)"


def test_replica_jobs_show_their_last_recorded_activations_and_diverged_replicas_marked(tmp_path):
    # lr 1e30: both seeds' weights overflow float32 within the first steps (at lr 1e4 the loss saturates
    # at a finite value for one seed, which is not divergence: divergence is judged on the values)
    proc = run_cli("-m", "+launcher=population", "optim=sgd", "optim.lr=0.1,1e30", "replicas=2",
                   "model.hidden=[8,8]", "steps=10", "eval_every=5", "hydra.sweep.dir=sw", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = load(tmp_path / "sw")
    table = markdown_table([summarize(g, 0.9) for g in loaded.groups], 0.9)  # the report's summary.md
    diverged_line = next(line for line in table.splitlines() if "**diverged**" in line)
    assert "**diverged**: seed 0 at step" in diverged_line and "0/2 ok" in diverged_line
    assert [len(g.runs) for g in loaded.groups] == [2, 2]
    fig = activations.activations_by_depth(loaded.groups, loaded.styles, "")
    at_end = fig.axes[1]
    # the engine records every replica's activations during training too: the last step is real
    assert at_end.get_lines() and at_end.get_title() == "at the last recorded step (step 10)"


def test_one_seed_shows_the_value_without_a_spread(grid, tmp_path):
    rows = [summarize(g, 0.9) for g in grid.groups]
    lines = markdown_table(rows, 0.9).splitlines()[4:]
    assert len(lines) == 9 and all("±" not in line and "| 1 |" in line for line in lines)
    write_csv(rows, tmp_path / "s.csv")
    table = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert all(r["test_accuracy_std"] == "" and r["test_accuracy_mean"] for r in table)


def test_running_and_unreadable_jobs_are_skipped_and_listed(sweep, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(sweep[0], sw, ignore=shutil.ignore_patterns("report"))
    jobs = sorted(p for p in sw.iterdir() if p.is_dir() and p.name != "groups")  # groups/: the group runs
    (jobs[0] / "metrics.json").unlink()  # started, nothing written yet
    (jobs[1] / "checkpoint.pt").write_bytes(b"")  # stopped or still running
    (jobs[2] / ".initopt.lock").write_text(f"{os.getppid()} {socket.gethostname()}")  # a live process holds it
    text = (jobs[3] / "metrics.json").read_text()
    (jobs[3] / "metrics.json").write_text(text[: len(text) // 2])  # truncated
    shutil.rmtree(jobs[4])  # not started yet
    for events in jobs[5].glob("events.out.tfevents*"):
        events.write_bytes(b"garbage")  # finished, but its curves are gone
    assert report_main([str(sw)]) == 0
    names = [j.name for j in jobs]
    line = next(x for x in capsys.readouterr().err.splitlines() if "jobs finished" in x)
    assert line.startswith("initopt.report: 2 of 8 jobs finished; 3 running: ")
    assert f"{names[0]} (no metrics.json yet)" in line and f"{names[1]} (checkpoint.pt, not finished)" in line
    assert f"{names[2]} (.initopt.lock)" in line
    assert f"2 unreadable: {names[3]} (metrics.json: JSONDecodeError" in line
    assert f"{names[5]} (events: ValueError: no TensorBoard scalars" in line and line.endswith("; 1 not started")
    assert "2 of 8 jobs finished; 3 running" in (sw / "report/report.md").read_text()
    rows = list(csv.DictReader(open(sw / "report/summary.csv")))
    assert sum(int(r["seeds"]) for r in rows) == 2
    assert all(r["run"].startswith("init=") and ",optim.lr=" in r["run"] for r in rows)  # labels kept


def test_a_lock_whose_process_is_gone_is_stopped_not_running(sweep, tmp_path):
    sw = tmp_path / "sw"
    shutil.copytree(sweep[0], sw, ignore=shutil.ignore_patterns("report"))
    jobs = sorted(p for p in sw.iterdir() if p.is_dir() and p.name != "groups")  # groups/: the group runs
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # its PID is no longer alive
    host = socket.gethostname()
    for job, pid in ((jobs[0], gone.pid), (jobs[1], os.getppid())):  # killed mid-run / still running
        (job / "metrics.json").unlink()
        (job / ".initopt.lock").write_text(f"{pid} {host}")
    line = load(sw).jobs.sentence()  # the line the command prints after "initopt.report: "
    assert f"1 running: {jobs[1].name} (.initopt.lock)" in line
    assert f"1 stopped: {jobs[0].name} (no metrics.json yet; its process {gone.pid} on {host} is gone)" in line


def _exit_and_stderr(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        report_main(argv)
    return stop.value.code, capsys.readouterr().err


def test_nothing_usable_is_a_one_line_error(sweep, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(sweep[0], sw, ignore=shutil.ignore_patterns("report"))
    for job in (p for p in sw.iterdir() if p.is_dir() and p.name != "groups"):
        (job / ".initopt.lock").write_text("")
    code, err = _exit_and_stderr([str(sw)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds no finished job to report (0 of 8 jobs finished; 8 running" in err
    assert not (sw / "report").exists()


def test_ctrl_c_while_drawing_leaves_the_earlier_report_whole_one_line_exit_130(sweep, tmp_path, capsys,
                                                                               monkeypatch):
    sw, earlier = sweep
    out = tmp_path / "rep"
    shutil.copytree(earlier, out)
    (out / "summary.md").write_text("the earlier summary\n")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    real_save, saved = build_module.save, []

    def save_then_ctrl_c(fig, path):  # the second figure is interrupted
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        return real_save(fig, path)

    monkeypatch.setattr(build_module, "save", save_then_ctrl_c)
    code, err = _exit_and_stderr([str(sw), "--out", str(out)], capsys)
    assert code == 130 and err.count("\n") == 1 and "interrupted: nothing written" in err, err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # not one file of the new report
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # and nothing half-written beside it


def test_ctrl_c_before_a_first_report_leaves_no_folder(sweep, tmp_path, capsys, monkeypatch):
    def ctrl_c(fig, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "save", ctrl_c)
    code, _ = _exit_and_stderr([str(sweep[0]), "--out", str(tmp_path / "new" / "rep")], capsys)
    assert code == 130 and not (tmp_path / "new").exists()


def test_ctrl_c_while_the_files_move_in_is_dropped_and_the_new_report_is_whole(sweep, tmp_path, monkeypatch):
    """The moves are the report's last milliseconds: Ctrl-C then ends it as a moment later would."""
    sw, earlier = sweep
    out = tmp_path / "rep"
    shutil.copytree(earlier, out)
    (out / "summary.md").write_text("the earlier summary\n")
    real_replace, moved = os.replace, []

    def replace_then_ctrl_c(src, dst):
        real_replace(src, dst)
        moved.append(dst)
        if len(moved) == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(build_module.os, "replace", replace_then_ctrl_c)
    assert report_main([str(sw), "--out", str(out), "--target-accuracy", "0.6"]) == 0
    assert len(moved) > 1 and (out / "summary.md").read_bytes() == (earlier / "summary.md").read_bytes()
    assert (out / "report.md").read_bytes() == (earlier / "report.md").read_bytes()


def test_an_interrupted_report_leaves_another_reports_work_alone(tmp_path):
    """Two reports into one new --out: the one interrupted removes its own folder only."""
    out = tmp_path / "new" / "rep"
    with pytest.raises(KeyboardInterrupt), build_module.staged(out) as stage:
        theirs = out / ".partial-theirs"
        theirs.mkdir()
        (theirs / "summary.md").write_text("the other report's\n")
        raise KeyboardInterrupt
    assert not stage.exists() and (theirs / "summary.md").read_text() == "the other report's\n"


def test_ctrl_c_as_the_staging_folder_is_made_leaves_no_folder(sweep, tmp_path, capsys, monkeypatch):
    def ctrl_c(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module.tempfile, "mkdtemp", ctrl_c)
    code, _ = _exit_and_stderr([str(sweep[0]), "--out", str(tmp_path / "new" / "rep")], capsys)
    assert code == 130 and not (tmp_path / "new").exists()


def test_the_report_is_drawn_inside_out_not_beside_it(sweep, tmp_path, monkeypatch):
    """--out's parent may be read-only (a folder made for you): nothing is created beside --out."""
    real_save, beside = build_module.save, []

    def save_and_look(fig, path):
        beside.append(sorted(p.name for p in tmp_path.iterdir()))
        assert Path(path).parent.parent == tmp_path / "rep" and Path(path).parent.name.startswith(".")
        return real_save(fig, path)

    monkeypatch.setattr(build_module, "save", save_and_look)
    assert report_main([str(sweep[0]), "--out", str(tmp_path / "rep")]) == 0
    assert beside and all(names == ["rep"] for names in beside)
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]


def test_a_new_report_replaces_the_earlier_ones_files(sweep, tmp_path):
    sw, earlier = sweep
    out = tmp_path / "rep"
    shutil.copytree(earlier, out)
    (out / "summary.md").write_text("the earlier summary\n")
    assert report_main([str(sw), "--out", str(out), "--target-accuracy", "0.6"]) == 0  # as the fixture
    assert (out / "summary.md").read_bytes() == (earlier / "summary.md").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_an_empty_folder_or_a_bad_target_is_a_clear_error(tmp_path, capsys):
    code, err = _exit_and_stderr([str(tmp_path)], capsys)
    assert code == 2 and "holds no finished job to report (no job directory in it)" in err
    code, err = _exit_and_stderr([str(tmp_path), "--target-accuracy", "7"], capsys)
    assert code == 2 and "--target-accuracy=7.0 is not allowed: must be in (0, 1]" in err


# ------------------------------------------------------------------ issue 18: bands, order, palette, text
def _spiky_group(init: str = "he") -> Group:
    """Three seeds of a gradient norm, one of them spiking 100x at steps 20-60 (as He's do)."""
    steps = np.arange(1, 201)
    runs = []
    for seed, spike in enumerate((1.0, 1.0, 100.0)):
        values = np.full(200, 0.1) * (1 + 0.1 * seed)
        values[19:60] *= spike
        runs.append(Run(Path(f"r{seed}"), {"init": init, "seed": str(seed)}, {"status": "ok"},
                        {"init": {"name": init}, "optim": {"name": "sgd"}},
                        {"grad_summary/mean_norm": (steps, values), "loss/batch": (steps, values)}))
    return Group(f"init={init}", {"init": init}, runs)


def test_bands_stay_above_zero_on_log_axes_where_mean_minus_sd_would_not():
    group = _spiky_group()
    stats = seed_stats(group, "grad_summary/mean_norm", log=True)
    assert (stats.mean - stats.sd < 0).any()  # the old band would have dived to the axis floor here
    fig = figures.training_curves([group], Styles([group]), "")
    norm_panel = fig.axes[3]
    assert norm_panel.get_yscale() == "log"
    band = norm_panel.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() > 0 and band.min() == pytest.approx(0.1, rel=1e-9)  # the lowest seed, not mean - sd
    assert band.max() == pytest.approx(12.0, rel=1e-9)  # the highest seed (1.2 x 0.1 x 100)
    assert norm_panel.get_ylim()[0] < band.min()  # the band lies inside the axes
    assert "lowest to highest seed" in BAND_LABEL


def test_coinciding_lines_keep_their_own_markers_so_none_hides():
    zero, normal = _spiky_group("zero"), _spiky_group("normal")  # the same numbers: one line on the other
    styles = Styles([zero, normal])
    fig = figures.training_curves([zero, normal], styles, "")
    lines = fig.axes[0].get_lines()
    marks = [set(line.get_markevery()) for line in lines]
    assert marks[0] - marks[1] and marks[1] - marks[0]  # each has markers where the other has none
    assert [line.get_marker() for line in lines] == [styles.markers["zero"], styles.markers["normal"]]
    assert lines[0].get_markerfacecolor() == "none"  # hollow: the line beneath shows through


def test_init_colours_are_the_ones_tensorboard_gives_the_readmes_regex_grouping():
    # TensorBoard's regex grouping colours groups from its default palette in the order their runs
    # first reach it, the sweep's job order: the README's grid init=zero,normal,xavier,he (as seen in
    # docs/img/tb_timeseries.png, where he's runs are yellow).
    for k, init in enumerate(("zero", "normal", "xavier", "he")):
        assert INIT_COLOURS[init] == TENSORBOARD_PALETTE[k]


def test_every_figure_is_written_as_png_and_svg(sweep):
    _, rep = sweep
    pngs = sorted(rep.glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        svg = png.with_suffix(".svg")
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()[:2000], svg
    from matplotlib.image import imread

    assert imread(rep / "training_curves.png").shape[1] >= 2000  # 15 inches at 150 dpi


@pytest.fixture(scope="module")
def grid_page(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid_report")
    page, _ = build(grid.path, out, 0.9)
    return page.read_text()


def test_the_page_names_the_steady_state_step_and_the_torch_optim_equivalent(grid_page):
    assert "| optimizer | settings | torch.optim equivalent (lr, momentum) | steady-state step |" in grid_page
    assert "| momentum | lr 0.1, beta 0.1, form ema, weight_decay 0 | `SGD(lr=0.01, momentum=0.9)` | 0.1 (lr) |" \
        in grid_page
    assert "| sgd | lr 0.1, weight_decay 0 | `SGD(lr=0.1, momentum=0)` | 0.1 (lr) |" in grid_page
    assert "`Adam(lr=0.001, betas=(0.9, 0.999))`" in grid_page
    assert ("SGD's steady-state step is 0.1 and momentum's (ema, beta 0.1, lr 0.1) is 0.1: torch applies "
            "lr · beta = 0.01") in grid_page
    assert "**Adam.** Whole-set training loss" in grid_page


def test_the_momentum_sentence_quotes_the_measured_final_losses(grid, grid_page):
    for key, row in optimizers.by_optimizer(grid.groups).items():
        sgd = np.mean([r.metrics["final"]["train_loss"] for r in row["sgd"].finished])
        mom = np.mean([r.metrics["final"]["train_loss"] for r in row["momentum"].finished])
        assert f"init={key[0]}: SGD {sgd:.4g}, momentum {mom:.4g}" in grid_page


def _loss_group(optim: str, values) -> Group:
    steps = np.array([0, 1, 2, 5, 10, 20, 50, 100])
    run = Run(Path(optim), {"optim": optim}, {"status": "ok", "final": {"train_loss": values[-1]}},
              {"init": {"name": "he"}, "optim": {"name": optim}}, {"loss/train": (steps, np.array(values, float))})
    return Group(f"optim={optim}", {"optim": optim}, [run])


def test_where_adam_falls_below_both_others_is_read_from_the_data():
    sgd = _loss_group("sgd", [0.7, 0.6, 0.5, 0.40, 0.30, 0.25, 0.20, 0.18])
    mom = _loss_group("momentum", [0.7, 0.6, 0.5, 0.42, 0.31, 0.26, 0.21, 0.19])
    adam = _loss_group("adam", [0.7, 0.65, 0.45, 0.41, 0.25, 0.20, 0.15, 0.10])
    assert optimizers.first_step_below(adam, [sgd, mom]) == (2, 10)  # below at 2, above at 5, below from 10
    late = _loss_group("adam", [0.7, 0.65, 0.55, 0.45, 0.35, 0.24, 0.19, 0.17])
    assert optimizers.first_step_below(late, [sgd, mom]) == (20, 20)
    tie = _loss_group("adam", [0.7, 0.6, 0.5, 0.3999, 0.2999, 0.2499, 0.1999, 0.1799])  # within 0.1%
    assert optimizers.first_step_below(tie, [sgd, mom]) == (None, None)
    text = optimizers.adam_sentence(optimizers.by_optimizer([sgd, mom, adam]))
    assert "first below at step 2, for good from step 10" in text
