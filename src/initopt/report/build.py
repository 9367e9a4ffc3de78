"""Build a sweep's report: read it (``load``), then write the tables, figures and page (``build``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from initopt.report import activations, figures, heatmaps, optimizers
from initopt.report.collect import Group, Run, group_runs, runs_of, varying_keys
from initopt.report.jobs import Inventory, inventory
from initopt.report.settings import Settings, fixed_settings
from initopt.report.stats import SD_LABEL
from initopt.report.style import BAND_LABEL, Styles, plt, save
from initopt.report.tables import markdown_table, summarize, write_csv
from initopt.signals import interrupt_deferred

LR_KEYS = ("optim.lr", "lr")
CAPTIONS = {
    "training_curves.png": "Mini-batch loss and the mean gradient norms against iteration on a log axis (the "
                           "first steps keep a point each); training and held-out accuracy at each evaluation "
                           "(markers). The last panel averages the weight tensors only: zero init's weight "
                           "gradients are exactly 0 there.",
    "weight_gradients.png": "The gradient norm of each weight tensor against iteration (log-log); exact zeros "
                            "are drawn at \"exactly 0\".",
    "grad_norm_heatmaps.png": "Parameter tensor (input at the top) x iteration, log colour of the gradient norm "
                              "(mean over seeds); exact zeros in their own colour, outside the colour scale.",
    "activations.png": "The std of each hidden layer's output against depth, at initialization (one line per "
                       "init) and at the last recorded step.",
    "lr_sensitivity.png": "Final held-out accuracy against the learning rate.",
}


def _optimizer_section(configs: list[dict], groups: list[Group]) -> list[str]:
    """The optimizers' settings table (torch.optim equivalent, steady-state step) and the finding."""
    table = optimizers.settings_table(configs)
    if not table:
        return []
    text = optimizers.finding(groups)
    return ["## Optimizers", "", "The steady-state step is what a constant gradient g is eventually moved by, "
            "`w <- w - step * g` (`initopt.optim.steady_state_step`); compare optimizers by it, not by lr.", "",
            *table, "", *[p + "\n" for p in text]]


class NothingUsable(Exception):
    """No job of the sweep has finished with readable files."""


@dataclass
class Sweep:
    """What the report shows: the jobs found, the usable runs grouped, the fixed settings."""

    path: Path
    jobs: Inventory
    runs: list[Run]
    keys: list[str]
    groups: list[Group]
    settings: Settings
    styles: Styles


def _usable_runs(found: Inventory) -> list[Run]:
    """The runs of the finished jobs; a job whose event files do not read becomes unreadable."""
    runs = []
    for job in found.of("finished"):
        try:
            runs += runs_of(job)
        except Exception as err:  # missing or corrupt event files, whatever the reader raises
            job.state, job.reason = "unreadable", f"events: {type(err).__name__}: {str(err)[:120]}"
    return runs


def _seed_order(seed: str):
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def load(sweep_dir: Path) -> Sweep:
    """Read the sweep; raise ``NothingUsable`` when no job finished (ok or diverged) readably."""
    found = inventory(sweep_dir)
    runs = _usable_runs(found)
    if not any(r.status in ("ok", "diverged") for r in runs):
        raise NothingUsable(f"SWEEP_DIR={str(sweep_dir)!r} holds no finished job to report "
                            f"({found.sentence() if found.jobs else 'no job directory in it'})")
    keys = varying_keys([j for j in found.jobs if j.overrides])  # running jobs too: labels stay put
    groups = group_runs(runs, keys)
    settings = fixed_settings([j.config for j in found.jobs], sorted({r.seed for r in runs}, key=_seed_order))
    return Sweep(Path(sweep_dir), found, runs, keys, groups, settings, Styles(groups))


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A new hidden folder inside ``out`` to write into; when the body ends, its files move up into
    ``out``, replacing those of the same name: ``out`` holds a whole report, the earlier one or the
    new one, never a mix. On an error or Ctrl-C in the body the folder is removed, and so are the
    folders made for ``out`` if nothing else is in them (another report may be writing there).
    Ctrl-C while the files move is held back and then dropped: the report is whole by then and the
    command ends as it would have a moment later. Inside, not beside: ``out``'s parent may be
    read-only."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # innermost first
    stage, done = None, False
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
        yield stage
        with suppress(KeyboardInterrupt), interrupt_deferred():  # Ctrl-C as the files move: see above
            for written in sorted(stage.iterdir()):
                os.replace(written, out / written.name)
        done = True
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Each folder, innermost first, while it exists and is empty (``os.rmdir`` refuses otherwise)."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # never made (its mkdir was interrupted)
            continue
        except OSError:  # not empty: it and the folders above it stay
            return


def build(sweep_dir: Path, out: Path, target: float) -> tuple[Path, str]:
    """Write the report into ``out`` (through :func:`staged`); returns its page and the sentence
    saying which jobs it covers."""
    sweep = load(sweep_dir)
    with staged(out) as stage:
        progress = write_report(sweep, stage, target)
    return out / "report.md", progress


def write_report(sweep: Sweep, out: Path, target: float) -> str:
    """The tables, figures and page of ``sweep`` into the folder ``out``; the jobs' sentence."""
    sweep_dir, groups, styles, title = sweep.path, sweep.groups, sweep.styles, sweep.settings.short
    rows = [summarize(g, target) for g in groups]
    table = markdown_table(rows, target)
    (out / "summary.md").write_text(table + "\n")
    write_csv(rows, out / "summary.csv")

    pictures = [("Training curves", "training_curves.png", figures.training_curves(groups, styles, title)),
                ("Gradient norm of each weight tensor", "weight_gradients.png",
                 figures.weight_gradients(groups, styles, title)),
                ("Gradient norm per parameter tensor", "grad_norm_heatmaps.png",
                 heatmaps.gradient_heatmaps(groups, title)),
                ("Activations by depth", "activations.png", activations.activations_by_depth(groups, styles, title))]
    lr_key = next((k for k in LR_KEYS if k in sweep.keys), None)
    if lr_key is not None:
        pictures.append(("Learning-rate sensitivity", "lr_sensitivity.png",
                         figures.lr_sensitivity(groups, lr_key, title)))
    progress = sweep.jobs.sentence()
    page = [f"# Report: {sweep_dir}", "", f"**Jobs:** {progress}.", "",
            f"{len(sweep.runs)} runs in {len(groups)} groups, varying: {', '.join(sweep.keys) or 'nothing'}. "
            f"Every row and curve is the mean over its seeds; ± in the tables is one {SD_LABEL}, "
            f"the figures' {BAND_LABEL}.", "",
            "**Fixed settings** (from the jobs' `.hydra/config.yaml`):", "", *sweep.settings.lines, "",
            *_optimizer_section([j.config for j in sweep.jobs.jobs if j.config], groups),
            "## Summary", "", table, ""]
    try:
        for heading, name, fig in pictures:
            if fig is not None:
                save(fig, out / name)
                page += [f"## {heading}", "", CAPTIONS[name], "", f"![{heading}]({name})",
                         f"([SVG]({Path(name).with_suffix('.svg')}))", ""]
    finally:  # an error or Ctrl-C part-way: the figures not saved yet are closed all the same
        for _, _, fig in pictures:
            if fig is not None:
                plt().close(fig)
    (out / "report.md").write_text("\n".join(page))
    return progress
