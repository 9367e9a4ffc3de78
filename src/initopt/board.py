"""``python -m initopt.board SWEEP_DIR``: TensorBoard on a sweep, and the URLs of its views.

Starts ``tensorboard --logdir SWEEP_DIR`` with every scalar point kept
(``--samples_per_plugin scalars=100000,images=100,histograms=100``) and prints, for the views the
README describes, a URL that opens with runs ticked:

* the group runs (``<sweep>/groups/<group>``, mean over seeds, :mod:`initopt.groupruns`) coloured
  by init, the homework's cards pinned on top (Time Series);
* the same groups in the older tabs (Scalars, Custom Scalars, Histograms, Distributions,
  Images, Text), through their own run filter;
* one optimizer's groups, one init's groups; the single seed runs of one group; HParams.

Why filters: TensorBoard's older tabs tick no run at all when more than 40 runs match their
run filter (``maxNamesToEnableByDefault = 40`` in its ``tf-multi-checkbox``), so a 60-job sweep
opens them empty; each URL here selects at most 40 runs (:data:`MAX_TICKED`). Time Series and
HParams tick every run whatever the number. ``--groups-only`` points the logdir at
``<sweep>/groups`` instead (only the group runs exist there). ``--dry-run`` prints the command
and the URLs without starting anything. A sweep without ``groups/`` (one a failing job stopped
before Hydra's end callback) gets its group runs written first.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from initopt.rundir import GROUPS_DIR  # not initopt.groupruns: it imports torch, a refusal needs none

MAX_TICKED = 40  # TensorBoard's older tabs tick no run when more runs than this match the filter
SAMPLES = "scalars=100000,images=100,histograms=100,distributions=100"
COLOUR_BY = "init"
# The homework's cards, pinned on top of Time Series (loss, gradient norm per layer, accuracy).
PINNED = ("loss/train", "loss/test", "grad_summary/mean_norm_smooth", "accuracy/test")
LEGACY_TABS = ("scalars", "custom_scalars", "histograms", "distributions", "images", "text")


@dataclass(frozen=True)
class View:
    """One URL: what it shows, and how many runs its filter selects."""

    title: str
    url: str
    runs: int


def item_values(names: list[str], key: str) -> list[str]:
    """The values ``key`` takes in run names like ``init=he,optim=sgd`` (in first-seen order)."""
    pattern = re.compile(rf"(?:^|,){re.escape(key)}=([^,/]+)")
    return list(dict.fromkeys(m.group(1) for n in names for m in [pattern.search(n)] if m))


def group_names(sweep_dir: Path) -> list[str]:
    groups = sweep_dir / GROUPS_DIR
    return sorted(p.name for p in groups.iterdir() if p.is_dir()) if groups.is_dir() else []


def seed_runs(sweep_dir: Path) -> list[str]:
    """The seed runs' names as TensorBoard lists them (paths relative to the sweep)."""
    from initopt.groupruns import sweep_members

    return [m.dir.relative_to(sweep_dir).as_posix() for m in sweep_members(sweep_dir)]


def _url(base: str, run_filter: str = "", colour_key: str = "", tab: str = "timeseries", pinned: bool = True,
         legacy_filter: str = "") -> str:
    """Time Series reads ``runFilter``, ``runColorGroup``, ``pinnedCards`` and ``smoothing`` from
    the query; the older tabs read their own run filter and smoothing from the fragment."""
    query = ["smoothing=0"]  # raw means: the group runs are already averaged over seeds
    if run_filter:
        query.append("runFilter=" + quote(run_filter, safe=""))
    if colour_key:
        query.append("runColorGroup=" + quote(f"regex:{colour_key}=(\\w+)", safe=":"))
    if pinned and tab == "timeseries":
        cards = [{"plugin": "scalars", "tag": t} for t in PINNED]
        query.append("pinnedCards=" + quote(json.dumps(cards, separators=(",", ":")), safe=""))
    fragment = tab + ("&regexInput=" + quote(legacy_filter, safe="") if legacy_filter else "")
    if tab in ("scalars", "custom_scalars"):
        fragment += "&_smoothingWeight=0"
    return f"{base}/{'?' + '&'.join(query) if query else ''}#{fragment}"


def views(sweep_dir: Path, base: str, groups_only: bool = False) -> list[View]:
    """The URLs the README describes, each selecting at most :data:`MAX_TICKED` runs."""
    groups = group_names(sweep_dir)
    prefix = "" if groups_only else f"{GROUPS_DIR}/"
    anchor = "^" + re.escape(prefix)
    group_filter = anchor if prefix else ""
    colour = COLOUR_BY if item_values(groups, COLOUR_BY) else ""
    out = [View("groups (mean over seeds, band min-max), coloured by init, homework cards pinned",
                _url(base, group_filter, colour), len(groups))]
    for tab in LEGACY_TABS:
        out.append(View(f"groups in the {tab.replace('_', ' ')} tab", _url(base, group_filter, colour, tab,
                                                                          legacy_filter=group_filter), len(groups)))
    for key in ("optim", "init"):
        for value in item_values(groups, key):
            pattern = f"{anchor}(.*,)?{re.escape(key)}={re.escape(value)}(,|$)"
            n = sum(1 for g in groups if re.search(pattern, prefix + g))
            out.append(View(f"one {key}: {key}={value} (groups)", _url(base, pattern, colour), n))
    if not groups_only and groups:
        from initopt.groupruns import group_name

        first = groups[0]
        runs = [r for r in seed_runs(sweep_dir) if group_name(r.split("/replicas/")[0]) == first]
        pattern = "^(" + "|".join(re.escape(r) for r in runs) + ")$"
        out.append(View(f"the seed runs of one group ({first}; any job: runFilter=^<job name>$)",
                        _url(base, pattern, colour), len(runs)))
    out.append(View("HParams: a row per run and per group", f"{base}/#hparams", len(groups)))
    return out


def command(sweep_dir: Path, port: int, host: str, groups_only: bool, extra: list[str]) -> list[str]:
    logdir = sweep_dir / GROUPS_DIR if groups_only else sweep_dir
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
            "--host", host, "--samples_per_plugin", SAMPLES, *extra]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m initopt.board", description=__doc__.split("\n\n")[0],
                                     epilog="Arguments after -- go to tensorboard.")
    parser.add_argument("sweep_dir", type=Path, help="a -m sweep's directory (multirun/<date_time>)")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--groups-only", action="store_true", help="logdir = <sweep>/groups: the group runs only")
    parser.add_argument("--dry-run", "--print-only", action="store_true", dest="dry_run",
                        help="print the command and the URLs; start nothing")
    args, extra = parser.parse_known_args(argv)
    args.extra = [a for a in extra if a != "--"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sweep_dir = args.sweep_dir.resolve()
    if not sweep_dir.is_dir():
        print(f"initopt.board: error: sweep_dir={args.sweep_dir} is not allowed: no such directory", file=sys.stderr)
        return 2
    if not (sweep_dir / GROUPS_DIR).is_dir():  # the sweep never reached its end callback (a job failed)
        from initopt.groupruns import write_groups

        groups = write_groups(sweep_dir)
        print(f"wrote {len(groups)} group runs into {sweep_dir / GROUPS_DIR}", file=sys.stderr)
    if args.groups_only and not (sweep_dir / GROUPS_DIR).is_dir():
        print(f"initopt.board: error: --groups-only needs {sweep_dir / GROUPS_DIR}: {sweep_dir} holds no "
              "finished seed run", file=sys.stderr)
        return 2
    cmd = command(sweep_dir, args.port, args.host, args.groups_only, args.extra)
    print(shlex.join(cmd))
    for view in views(sweep_dir, f"http://{args.host}:{args.port}", args.groups_only):
        print(f"\n{view.title} ({view.runs} runs):\n  {view.url}")
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
