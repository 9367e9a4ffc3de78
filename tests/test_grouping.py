"""Training groups: members of compatible jobs train together, a group over the member budget is
split at job boundaries, and a replica job keeps one mean run, equal to its metrics.json."""

from __future__ import annotations

import pytest
from conftest import read_metrics, run_cli, scalar_tags

from initopt.checks import compose_job
from initopt.sweep.grouping import training_groups
from initopt.sweep.plan import Start, prepare_job

SMALL = ["model.hidden=[8]", "steps=30", "eval_every=10", "flush_every=10", "dtype=float64"]


def prepared(tmp_path, n_jobs: int, replicas: int):
    return [prepare_job(compose_job([*SMALL, f"replicas={replicas}", f"seed={10 * j}"]), tmp_path / f"job{j}")
            for j in range(n_jobs)]


def test_the_budget_splits_between_jobs_never_inside_one(tmp_path):
    jobs = prepared(tmp_path, 3, replicas=2)
    try:
        groups = training_groups(jobs, member_budget=3)
        assert [len(g.members) for g in groups] == [2, 2, 2]
        assert all(len(g.jobs) == 1 and g.members == g.jobs[0].plan.members for g in groups)
        assert not any(job.split for job in jobs)
        whole = training_groups(jobs, member_budget=4)
        assert [len(g.members) for g in whole] == [4, 2] and [len(g.jobs) for g in whole] == [2, 1]
    finally:
        for job in jobs:
            job.release()


def test_a_job_over_the_budget_alone_is_split_and_says_so(tmp_path, capsys):
    jobs = prepared(tmp_path, 1, replicas=5)
    try:
        groups = training_groups(jobs, member_budget=2)
        assert [len(g.members) for g in groups] == [2, 2, 1] and jobs[0].split
        assert "5 members, over hydra.launcher.member_budget=2: trained in 3 groups" in capsys.readouterr().err
        assert all(m.start is Start.FRESH for g in groups for m in g.members)
    finally:
        jobs[0].release()


@pytest.mark.parametrize("sweep", [
    ["replicas=3", "hydra.launcher.member_budget=2"],  # one job over the budget
    ["replicas=2", "optim.lr=0.05,0.1", "hydra.launcher.member_budget=3"],  # two jobs, 4 members
], ids=["job over the budget", "jobs over the budget"])
def test_a_replica_job_split_by_the_member_budget_has_one_mean_run_equal_to_its_metrics(tmp_path, sweep):
    proc = run_cli("-m", "+launcher=population", *sweep, *SMALL, "hydra.sweep.dir=s", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in (tmp_path / "s").iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "groups"]
    assert jobs
    for job in jobs:
        # one training event file (the sweep's end adds the heat map beside it, *.heatmap, same run)
        runs = [p for p in (job / "mean").glob("events.out.tfevents*") if not p.name.endswith(".heatmap")]
        assert len(runs) == 1, job
        accuracy = scalar_tags(job / "mean")["accuracy/test"]
        metrics = read_metrics(job)
        assert accuracy[-1].step == 30
        assert accuracy[-1].value == pytest.approx(metrics["final"]["test_accuracy"], rel=1e-6)


def test_a_runs_gradient_norms_are_read_at_the_steps_every_tensor_has():
    """The heat map's matrix: one row a step that every tensor's norm has, one column a tensor."""
    import numpy as np

    from initopt.groupruns import RunData
    from initopt.tbread import Series

    def series(steps, values):
        return Series(np.array(steps), np.zeros(len(steps)), np.array(values, float))

    same = RunData({"grad_norm/a": series([0, 1, 2], [1, 2, 3]), "grad_norm/b": series([0, 1, 2], [4, 5, 6])}, {})
    steps, norms = same.grad_norms(["a", "b"])
    assert steps.tolist() == [0, 1, 2] and norms.tolist() == [[1, 4], [2, 5], [3, 6]]
    ragged = RunData({"grad_norm/a": series([0, 1, 2], [1, 2, 3]), "grad_norm/b": series([1, 2, 5], [5, 6, 9])}, {})
    steps, norms = ragged.grad_norms(["a", "b"])
    assert steps.tolist() == [1, 2] and norms.tolist() == [[2, 5], [3, 6]]
    assert same.grad_norms(["a", "c"])[1].shape == (0, 2)  # a tensor without norms: none


def test_a_groups_means_are_each_tags_mean_min_and_max_over_the_members_with_a_finite_value():
    """A group run's tags: at each step, mean, min and max over the members with a finite value
    there (a member that diverged counts until it did; a step where none has one is left out).
    Tags whose members share their steps are computed together, bit for bit as one by one."""
    import numpy as np

    from initopt.groupruns import RunData, group_means, seed_stats
    from initopt.tbread import Series

    rng = np.random.default_rng(0)

    def series(steps, values=None):
        values = rng.normal(size=len(steps)) if values is None else np.array(values, float)
        return Series(np.array(steps), np.arange(len(steps)) + 100.0, values)

    members = 11  # more than 8: numpy sums a row pairwise, in the same order either way
    runs = [RunData({"loss/batch": series([1, 2, 3, 4]), "grad_norm/a": series([1, 2, 3, 4]),
                     "accuracy/test": series([0, 2, 4])}, {}) for _ in range(members)]
    runs[0].scalars["loss/batch"] = series([1, 2, 3, 4], [1.0, np.inf, np.nan, np.nan])  # diverged at step 2
    runs[1].scalars["grad_norm/a"] = series([1, 2, 3], [1.0, 2.0, 3.0])  # another layout: on its own
    runs[2].scalars["seed_band/x/mean"] = series([1])  # a band is no member's tag
    means = group_means(runs)
    assert list(means) == ["accuracy/test", "grad_norm/a", "loss/batch"]
    for tag, stats in means.items():
        alone = seed_stats([r.scalars[tag] for r in runs if tag in r.scalars])
        for field in ("steps", "walltimes", "mean", "low", "high"):
            assert np.array_equal(getattr(stats, field), getattr(alone, field)), (tag, field)
    loss = means["loss/batch"]
    finite = np.array([r.scalars["loss/batch"].values for r in runs[1:]])
    assert loss.mean[1] == pytest.approx(np.mean(finite[:, 1])) and loss.high[0] == max(1.0, finite[:, 0].max())
    assert means["grad_norm/a"].steps.tolist() == [1, 2, 3, 4]
