"""Entry point: ``python -m initopt.train [-m] group=option key=value ...``.

The recipe, top to bottom::

    compose (Hydra) -> check -> prepare the job's run directory -> build the population
    -> train (initopt.engine) -> write the run directory (TensorBoard, final.pt, metrics.json)

A run is a population of K >= 1 members (``replicas=K`` seeds of one config); the population
launcher (``+launcher=population``) trains the members of many jobs of a sweep together, through
the same steps (:mod:`initopt.sweep`).
"""

from __future__ import annotations

import sys

from initopt.signals import exit_interrupted

INTERRUPTED = ("initopt.train: interrupted outside training (nothing to checkpoint): no lock is left and nothing "
               "is half-written; rerun the same command to go on (finished jobs are kept)")

try:  # Ctrl-C while importing is one line and exit 130, not an import traceback (torch: in main, below)
    import os
    import re
    import shlex
    import shutil
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from initopt import hydra_compat
    from initopt.checks import user_error_line
    from initopt.config import ConfigError
    from initopt.gcfreeze import collector_paused, exit_without_teardown, freeze_survivors
    from initopt.rundir import DirectoryInUse, release_held_locks
    from initopt.signals import interrupt_deferred
    from initopt.sweep import summary
except KeyboardInterrupt:
    exit_interrupted(INTERRUPTED)


def run(cfg: DictConfig, output_dir: Path, run_name: str = "", resume_hint: str = "",
        group_choices: dict | None = None, standalone: bool = True) -> dict:
    """One job (K replicas of one config), all of its outputs under ``output_dir``; its metrics.

    A finished job in ``output_dir`` is kept and its stored metrics returned.
    """
    # torch and the engine are imported here, after the start-up checks (:func:`check_command_line`):
    # a refused command line answers without their seconds of import
    from initopt.sweep import outputs, runner
    from initopt.sweep.plan import prepare_job

    # refusals (a lock held, another run in the directory) touch nothing
    job = prepare_job(cfg, Path(output_dir), run_name, resume_hint, group_choices, standalone)
    try:
        if job.plan.finished is None:
            train_jobs([job])
        return outputs.finish_job(job)
    except runner.Interrupted:
        raise
    except Exception as err:
        err = outputs.as_user_error(job, err)
        outputs.record_failure(job.plan.output_dir, err)
        raise err from None
    finally:
        job.release()


def train_jobs(prepared: list, member_budget: int = 0) -> None:
    """Every member still to train (of prepared :class:`initopt.sweep.plan.Job` s), in training
    groups; a stop request checkpoints and exits."""
    from initopt.signals import StopSignals
    from initopt.sweep import outputs, runner
    from initopt.sweep.grouping import training_groups

    runner.prepare_cuda_determinism(prepared)
    for job in prepared:
        if job.plan.members:
            runner.plan_training(job)
    with StopSignals() as stop:
        for group in training_groups(prepared, member_budget):
            trained = runner.train_group(group, stop)
            if trained.result.interrupted:
                raise runner.interrupted(trained, stop)
            outputs.finish_members(trained)


def hydra_quoted(value: str) -> str:
    """``value`` as a single-quoted string of Hydra's override grammar, read back as exactly ``value``.

    Inside quotes Hydra takes any character (``=``, ``,``, spaces, non-ASCII); a quote and the
    backslashes just before it are escaped (each backslash doubled, the quote as ``\\'``), as
    are backslashes at the very end; ``${`` becomes ``\\${`` (backslashes before it doubled) so
    OmegaConf does not read it as an interpolation."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)  # OmegaConf's escape
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def python_command() -> str:
    """How to call this interpreter again: ``python`` when that name on PATH is this very
    interpreter (an activated venv), else its full path."""
    name = Path(sys.executable).name
    found = shutil.which(name)
    return name if found and os.path.abspath(found) == os.path.abspath(sys.executable) else sys.executable


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell: :func:`shlex.quote`, except that a word holding single
    quotes (a quoted Hydra value) and nothing a shell expands inside double quotes
    (``$ ` \\ " !``) is wrapped in double quotes, which reads better and is the same word."""
    if "'" in word and not set(word) & set('"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


def resume_command(output_dir: Path, multirun: bool, sweep_dir: str | None) -> str:
    """The command that continues this run (or the whole sweep) where it stopped, to paste into a
    shell: the user's own arguments as they reached Python, the directory as a quoted Hydra
    value (run directories hold ``=`` and ``,``), every word quoted for the shell."""
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    key, where = ("hydra.sweep.dir", sweep_dir) if multirun else ("hydra.run.dir", output_dir)
    words = [python_command(), "-m", "initopt.train", *args, f"{key}={hydra_quoted(str(where))}"]
    return " ".join(shell_word(w) for w in words)


@hydra.main(version_base="1.3", config_path="pkg://initopt.conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    hint = resume_command(output_dir, multirun, hc.sweep.dir if multirun else None)
    try:
        metrics = run(cfg, output_dir, hc.job.override_dirname, hint, dict(hc.runtime.choices), not multirun)
    except DirectoryInUse as err:  # another process works here (a second sweep into one directory)
        print(f"initopt.train: error: {user_error_line(err)}", file=sys.stderr)
        sys.exit(summary.EXIT_USAGE)
    except ConfigError as err:
        if multirun:  # the sweep goes on; the job's metrics.json has the error
            return job_failed(hc.job.override_dirname, output_dir, err)
        print(f"initopt.train: error: {err}", file=sys.stderr)
        sys.exit(summary.EXIT_USAGE)
    except Exception as err:
        if multirun:
            return job_failed(hc.job.override_dirname, output_dir, err)
        raise
    if multirun:
        summary.record(output_dir, metrics)
    return metrics.get("final", {}).get("test_accuracy")


def job_failed(label: str, output_dir: Path, err: Exception) -> None:
    """A sweep's job failed (its metrics.json says why): one line, and the sweep goes on."""
    from initopt.sweep import outputs

    outputs.record_failure(output_dir, err)  # a refusal before training has no record yet
    print(f"[{label or output_dir}] failed: {user_error_line(err)}", file=sys.stderr)
    summary.record(output_dir, err)


def check_command_line(argv: list[str]) -> bool:
    """Refuse bad input before Hydra starts: one line naming key, value and what is allowed, exit 2.
    Whether the command runs jobs (:func:`initopt.checks.precheck_command_line`); if it does, Hydra
    is given initopt's config loader (:func:`initopt.hydra_compat.share_hydras_compositions`)."""
    from initopt.checks import precheck_command_line

    try:
        runs_jobs = precheck_command_line(argv)
        if runs_jobs:
            hydra_compat.share_hydras_compositions()  # Hydra reuses the checks' compositions
        return runs_jobs
    except Exception as err:  # no traceback wall
        print(f"initopt.train: error: {user_error_line(err)}", file=sys.stderr)
        sys.exit(summary.EXIT_USAGE)


def main() -> None:
    """Check the command line as Hydra will read it, then hand over to Hydra; a sweep ends in its
    summary line (exit 3 when some job failed, see :mod:`initopt.sweep.summary`).

    Ctrl-C before the training loop takes it over (the checks, Hydra composing and preparing the
    jobs, between jobs) or after (writing the outputs) has no checkpoint to write: every lock this
    process holds is released, one line, exit 130."""
    try:
        if check_command_line(sys.argv[1:]):  # it runs jobs: torch is needed
            with collector_paused(), interrupt_deferred():  # Ctrl-C acted on once torch is loaded
                import initopt.tb  # noqa: F401 - torch and the TensorBoard writer, imported anyway
            freeze_survivors()
        hydra_main()
    except KeyboardInterrupt:
        release_held_locks()
        exit_interrupted(INTERRUPTED)
    code = summary.finish()  # a sweep's summary line; 3 when some job failed
    if code:
        sys.exit(code)


def cli() -> None:
    """``python -m initopt.train`` and ``initopt-train``: :func:`main`, then the process ends
    without Python's teardown of torch (:func:`initopt.gcfreeze.exit_without_teardown`)."""
    exit_without_teardown(main)


if __name__ == "__main__":
    cli()
