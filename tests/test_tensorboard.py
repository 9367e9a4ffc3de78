"""What TensorBoard shows, read back with TensorBoard's own readers and plugin backends.

A small real ``-m`` sweep (init x optim x replicas) and a seed sweep (init x seed) are read
through ``EventAccumulator``, the HParams plugin's metadata parser and its session-group backend,
and the Custom Scalars plugin's layout merge; the group runs are checked against the mean of
their members' event files, the board command's URLs against the runs TensorBoard lists; the
pieces (histograms, update ratio, heat map, run names) are also checked on their own.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from conftest import run_cli

INITS, OPTIMS = ("zero", "he"), ("sgd", "momentum")
PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
CURVES = ("loss/train", "loss/test", "accuracy/train", "accuracy/test", "grad_summary/mean_norm_smooth")
WEIGHTS = [p for p in PARAMS if p.endswith(".weight")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    proc = run_cli("-m", f"init={','.join(INITS)}", f"optim={','.join(OPTIMS)}", "replicas=1,2",
                   "steps=20", "eval_every=10", "flush_every=10", "param_every=5", "hist_every=10",
                   "model.hidden=[8,8]", "hydra.sweep.dir=grid", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "grid"


def accumulator(run_dir):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def plugin_context(logdir):
    """TensorBoard's own data provider over ``logdir``, as ``tensorboard --logdir`` builds it."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    return base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider,
                                 plugin_name_to_instance={})


def hparams_view(logdir):
    """(experiment, session groups) exactly as the HParams plugin serves them."""
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    backend = backend_context.Context(plugin_context(logdir))
    experiment = get_experiment.Handler(context.RequestContext(), backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=1000, aggregation_type=api_pb2.AGGREGATION_AVG,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE])
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups
    return experiment, groups


def job(sweep, init, optim, replicas):
    return sweep / f"init={init},optim={optim},replicas={replicas}"


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory):
    """A plain multirun over seeds: two groups (zero, he) of three jobs each."""
    tmp = tmp_path_factory.mktemp("seeds")
    proc = run_cli("-m", "init=zero,he", "seed=0,1,2", "optim=sgd", "steps=12", "eval_every=10",
                   "flush_every=10", "model.hidden=[8,8]", "hydra.sweep.dir=grid", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "grid"


def scalar_series(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in a run, read with TensorBoard's reader."""
    from tensorboard.util import tensor_util

    acc = accumulator(run_dir)
    return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
            for tag in acc.PluginTagToContent("scalars")}


def assert_group_is_the_mean(group_dir, member_dirs):
    group = scalar_series(group_dir)
    members = [scalar_series(d) for d in member_dirs]
    tags = set().union(*members)
    assert tags <= set(group), tags - set(group)
    for tag in tags:
        steps = set().union(*(m[tag] for m in members))
        assert set(group[tag]) == steps, tag
        for step in steps:
            values = [m[tag][step] for m in members]
            assert group[tag][step] == pytest.approx(np.float32(np.mean(values)), rel=1e-6, abs=1e-12), (tag, step)
            if tag == "loss/batch":
                band = [group[f"seed_band/{tag}/{s}"][step] for s in ("min", "mean", "max")]
                assert band == pytest.approx([min(values), np.float32(np.mean(values)), max(values)], rel=1e-6)


# --------------------------------------------------------------------------- the sweep
def test_run_names_carry_only_the_swept_keys(sweep):
    names = {p.name for p in sweep.iterdir() if p.is_dir()}
    jobs = {f"init={i},optim={o},replicas={k}" for i in INITS for o in OPTIMS for k in (1, 2)}
    assert names == jobs | {"groups"}
    assert {p.name for p in (sweep / "groups").iterdir() if p.is_dir()} == jobs  # no seed swept: a group a job
    two = job(sweep, "he", "sgd", 2)
    assert {p.name for p in (two / "replicas").iterdir()} == {"seed=0", "seed=1"}
    assert any((two / "mean").glob("events.out.tfevents*"))


def test_one_experiment_with_the_swept_domains_in_the_sweep_directory(sweep):
    from tensorboard.plugins.hparams import api_pb2, metadata

    acc = accumulator(sweep)
    experiment = metadata.parse_experiment_plugin_data(acc.PluginTagToContent("hparams")["_hparams_/experiment"])
    infos = {h.name: h for h in experiment.hparam_infos}

    def domain(name):
        return [v.string_value or v.number_value for v in infos[name].domain_discrete.values]

    assert domain("init") == ["he", "zero"] and domain("optim") == ["momentum", "sgd"]
    assert domain("replicas") == ["2 seeds", "mean of 2"]
    assert domain("optim.torch_lr") == pytest.approx([0.01, 0.1])  # EMA momentum: SGD(lr * beta, 1 - beta)
    assert domain("optim.torch_momentum") == pytest.approx([0.0, 0.9])
    assert domain("optim.steady_step") == pytest.approx([0.1]) and not infos["optim.steady_step"].differs
    assert domain("seed") == [0.0] and infos["seed"].type == api_pb2.DATA_TYPE_FLOAT64  # pooled rows: seeds
    assert domain("seeds") == ["0", "0..1"] and domain("seeds_averaged") == [1.0, 2.0]
    assert {n for n, h in infos.items() if h.differs} == {"init", "optim", "optim.torch_lr", "optim.torch_momentum",
                                                          "replicas", "seeds", "seeds_averaged"}
    assert domain("model.hidden") == ["8,8"] and domain("steps") == [20.0] and not infos["steps"].differs
    assert domain("batch_size") == [64.0] and infos["batch_size"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [m.name.tag for m in experiment.metric_infos] == list(CURVES)
    assert experiment.metric_infos[-1].display_name == "mean gradient norm (last window)"
    for run in sweep.rglob("events.out.tfevents*"):  # the sweep directory has it, and groups/ the same copy
        if run.parent in (sweep, sweep / "groups"):
            assert metadata.parse_experiment_plugin_data(accumulator(run.parent).PluginTagToContent("hparams")[
                "_hparams_/experiment"]) == experiment
        else:
            assert "_hparams_/experiment" not in accumulator(run.parent).Tags()["tensors"]


def test_the_hparams_plugin_groups_seeds_and_gives_the_mean_run_its_own_row(sweep):
    experiment, groups = hparams_view(sweep)
    shown = [h.name for h in experiment.hparam_infos][:5]  # the plugin shows the first five
    assert shown[:2] == ["init", "optim"]
    rows = {g.name: g for g in groups}
    assert len(rows) == 4 + 4 * 2 + 8  # 4 single runs; per replica job a seeds row and a mean row; 8 groups
    seeds = rows["init=he,optim=sgd,replicas=2 (seeds)"]
    assert sorted(s.name for s in seeds.sessions) == ["init=he,optim=sgd,replicas=2/replicas/seed=0",
                                                       "init=he,optim=sgd,replicas=2/replicas/seed=1"]
    mean = rows["init=he,optim=sgd,replicas=2/mean"]
    assert mean.hparams["replicas"].string_value == "mean of 2" and mean.hparams["seeds"].string_value == "0..1"
    single = rows["init=zero,optim=momentum,replicas=1"]
    assert single.hparams["seed"].number_value == 0 and single.hparams["optim.beta"].number_value == 0.1
    assert single.hparams["steps"].number_value == 20 and single.hparams["optim.steady_step"].number_value == 0.1
    group = rows["groups/init=he,optim=sgd,replicas=2"]
    assert group.hparams["seeds_averaged"].number_value == 2 and group.hparams["seeds"].string_value == "0..1"
    assert "seed" not in group.hparams and len(group.sessions) == 1
    assert "optim.beta" not in rows["init=zero,optim=sgd,replicas=1"].hparams  # only where it applies
    for row in rows.values():  # every curve is a metric with a value: "Show Metrics" draws it
        assert {m.name.tag for m in row.metric_values} == set(CURVES)
        assert all(s.status == 1 for s in row.sessions)  # STATUS_SUCCESS


def test_evaluations_at_step_0_and_early_log_spaced_steps_histograms_and_heat_map(sweep):
    from tensorboard.util import tensor_util

    acc = accumulator(job(sweep, "he", "momentum", 1))
    tags = acc.Tags()["tensors"]
    for tag in CURVES[:4]:
        assert [e.step for e in acc.Tensors(tag)] == [0, 1, 2, 5, 10, 20], tag
    assert [e.step for e in acc.Tensors("grad_norm_smooth/fc1.weight")] == [1, 2, 5, 10, 20]
    assert [e.step for e in acc.Tensors("grad_summary/mean_norm_smooth")] == [1, 2, 5, 10, 20]
    assert set(acc.PluginTagToContent("histograms")) == {f"{k}/{p}" for k in ("weights", "gradients")
                                                         for p in WEIGHTS}  # hist_tensors: weights only
    assert [e.step for e in acc.Tensors("weights/fc1.weight")] == [0, 10, 20]
    assert [e.step for e in acc.Tensors("gradients/fc1.weight")] == [1, 10, 20]
    buckets = tensor_util.make_ndarray(acc.Tensors("weights/fc1.weight")[0].tensor_proto)
    assert buckets[:, 2].sum() == 2 * 8  # every weight of fc1 counted once
    assert list(acc.PluginTagToContent("images")) == ["heatmap/grad_norm"]
    assert [e.step for e in acc.Tensors("update_ratio/fc1.weight")] == [5, 10, 15, 20]
    assert [e.step for e in acc.Tensors("weight_norm/fc1.weight")] == [0, 5, 10, 15, 20]
    torch_lr, steady = (tensor_util.make_ndarray(acc.Tensors(t)[-1].tensor_proto) for t in
                        ("optim/torch_lr", "optim/steady_step"))
    assert (torch_lr, steady) == (pytest.approx(0.01), pytest.approx(0.1))  # EMA momentum, lr 0.1, beta 0.1
    assert "config" in tags and "custom_scalars__config__" in tags
    config = tensor_util.make_ndarray(acc.Tensors("config")[0].tensor_proto).item().decode()
    assert "init:\n  name: he" in config
    assert not any(t.startswith(("final/", "seed_band/")) for t in tags)


def test_zero_init_histograms_and_heat_map_show_exact_zeros(sweep):
    from tensorboard.util import tensor_util

    acc = accumulator(job(sweep, "zero", "sgd", 1))
    for step_event in acc.Tensors("gradients/fc1.weight"):
        buckets = tensor_util.make_ndarray(step_event.tensor_proto)
        assert buckets.tolist() == [[0.0, 0.0, 16.0]]  # one bucket at exactly 0


def test_custom_scalar_charts_never_show_missing_tags(sweep):
    """The Margin card warns for a run holding some, not all, of a chart's tags (its
    ``tagsNotFound.length`` neither 0 nor 3); check that rule against every run."""
    from tensorboard import context
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

    ctx = plugin_context(sweep)
    merged = json.loads(CustomScalarsPlugin(ctx).layout_impl(context.RequestContext(), ""))
    run_tags = {run: set(tags) for run, tags in ctx.data_provider.list_scalars(
        context.RequestContext(), experiment_id="", plugin_name="scalars").items()}
    charts = {c["title"]: c for cat in merged["category"] for c in cat["chart"]}
    margins = [c for c in charts.values() if "margin" in c]
    assert len(margins) == len(PARAMS) + 3 + 4  # every tensor's norm, mean/global norm, batch loss, evaluations
    assert merged["category"][0]["title"].startswith("homework")  # the homework's charts first
    for chart in margins:
        (series,) = chart["margin"]["series"]
        wanted = {series["value"], series["lower"], series["upper"]}
        for run, tags in run_tags.items():
            assert len(wanted - tags) in (0, 3), (chart["title"], run)
    mean_runs = [r for r, tags in run_tags.items() if "seed_band/loss/batch/mean" in tags]
    assert sorted(mean_runs) == sorted([f"{job(sweep, i, o, 2).name}/mean" for i in INITS for o in OPTIMS]
                                       + [f"groups/{job(sweep, i, o, k).name}" for i in INITS for o in OPTIMS
                                          for k in (1, 2)])
    weights = charts["gradient norm, weights (a line per layer)"]["multiline"]["tag"]
    assert weights == [r"grad_norm/.*\.weight$"]
    assert charts["mini-batch loss"]["multiline"]["tag"] == [r"loss/batch$"]


# ----------------------------------------------------------------------- the group runs
def test_a_seed_sweep_has_one_group_run_per_init_equal_to_the_mean_of_its_jobs(seed_sweep):
    assert sorted(p.name for p in (seed_sweep / "groups").iterdir() if p.is_dir()) == ["init=he", "init=zero"]
    for init in ("zero", "he"):
        jobs = [seed_sweep / f"init={init},seed={s}" for s in range(3)]
        assert_group_is_the_mean(seed_sweep / "groups" / f"init={init}", jobs)


def test_a_replica_jobs_group_run_is_the_mean_of_its_seeds(sweep):
    two = job(sweep, "he", "momentum", 2)
    assert_group_is_the_mean(sweep / "groups" / two.name, [two / "replicas/seed=0", two / "replicas/seed=1"])
    one = job(sweep, "zero", "sgd", 1)
    assert scalar_series(sweep / "groups" / one.name)["loss/train"] == pytest.approx(scalar_series(one)["loss/train"])


def test_rerunning_the_sweep_rewrites_the_group_runs_not_duplicates_them(seed_sweep, tmp_path):
    import shutil

    from initopt.groupruns import write_groups

    copy = tmp_path / "grid"
    shutil.copytree(seed_sweep, copy)
    before = scalar_series(copy / "groups/init=he")
    proc = run_cli("-m", "init=zero,he", "seed=0,1,2", "optim=sgd", "steps=12", "eval_every=10",
                   "flush_every=10", "model.hidden=[8,8]", f"hydra.sweep.dir={copy}", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count("already finished") == 6, proc.stderr[-2000:]
    write_groups(copy)  # and once more, directly
    assert len(list((copy / "groups/init=he").glob("events.out.tfevents*"))) == 1
    assert len(list((copy / "init=he,seed=0").glob("events.out.tfevents*.heatmap"))) == 1
    assert scalar_series(copy / "groups/init=he") == before


def test_every_heat_map_is_an_image_summary_on_the_sweeps_colour_scale(sweep):
    from tensorboard.backend.event_processing import plugin_event_accumulator

    runs = [job(sweep, i, o, 1) for i in INITS for o in OPTIMS] + [sweep / "groups" / job(sweep, "he", "sgd", 2).name,
                                                                   job(sweep, "he", "sgd", 2) / "replicas/seed=1"]
    scales = set()
    for run in runs:
        acc = plugin_event_accumulator.EventAccumulator(str(run), size_guidance={"tensors": 0})
        acc.Reload()
        assert list(acc.PluginTagToContent("images")) == ["heatmap/grad_norm"]  # the image plugin's metadata
        description = acc.SummaryMetadata("heatmap/grad_norm").summary_description
        assert "log axis" in description and "fc1.weight" in description
        scales.add(description.split("Colour: ")[1].split(", the bar")[0])
        (event,) = acc.Tensors("heatmap/grad_norm")
        assert event.step == 20
    assert len(scales) == 1, scales  # one colour scale for the whole sweep


# ----------------------------------------------------------------------- the board command
def test_the_board_command_prints_views_that_tick_the_group_runs(sweep):
    from urllib.parse import parse_qs, unquote, urlsplit

    from tensorboard import context

    proc = run_cli(str(sweep), "--dry-run", "--port", "6123", cwd=sweep.parent, module="initopt.board")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "--samples_per_plugin" in lines[0] and f"--logdir {sweep}" in lines[0]
    urls = [line.strip() for line in lines if line.strip().startswith("http://localhost:6123/")]
    ctx = plugin_context(sweep)
    scalar_runs = list(ctx.data_provider.list_scalars(context.RequestContext(), experiment_id="",
                                                      plugin_name="scalars"))
    groups = {f"groups/{p.name}" for p in (sweep / "groups").iterdir() if p.is_dir()}

    def ticked(url):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        legacy = dict(p.split("=", 1) for p in parts.fragment.split("&")[1:])
        pattern = unquote(legacy["regexInput"]) if "regexInput" in legacy else query.get("runFilter", [""])[0]
        return {r for r in scalar_runs if re.search(pattern, r)}, parts.fragment.split("&")[0], query

    views = [ticked(u) for u in urls]
    tabs = {tab for _, tab, _ in views}
    assert {"timeseries", "scalars", "custom_scalars", "images", "text", "histograms", "hparams"} <= tabs
    first_runs, _, first_query = views[0]
    assert first_runs == groups and first_query["runColorGroup"] == ["regex:init=(\\w+)"]
    assert json.loads(first_query["pinnedCards"][0])[0] == {"plugin": "scalars", "tag": "loss/train"}
    for runs, tab, _ in views:
        if tab != "hparams":
            assert 0 < len(runs) <= 40, (tab, runs)
    assert {r for runs, tab, _ in views if tab == "scalars" for r in runs} == groups
    one_optim = [runs for runs, _, q in views if "optim%3Dsgd" in str(q) or "optim=sgd" in str(q)]
    assert one_optim and all(r.startswith("groups/") and "optim=sgd" in r for r in one_optim[0])
    seeds = views[-2][0]  # the seed runs of one group: a replica job's two seeds here
    assert seeds and not any(r.startswith("groups/") for r in seeds)


def test_groups_only_points_tensorboard_at_the_group_runs_and_its_views_tick_them(sweep, capsys):
    from urllib.parse import parse_qs, unquote, urlsplit

    from tensorboard import context

    from initopt.board import main

    assert main([str(sweep), "--dry-run", "--groups-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"--logdir {sweep / 'groups'} " in lines[0]
    ctx = plugin_context(sweep / "groups")
    runs = set(ctx.data_provider.list_scalars(context.RequestContext(), experiment_id="", plugin_name="scalars"))
    assert runs == {p.name for p in (sweep / "groups").iterdir() if p.is_dir()}
    for url in (line.strip() for line in lines if line.strip().startswith("http://")):
        parts = urlsplit(url)
        legacy = dict(p.split("=", 1) for p in parts.fragment.split("&")[1:])
        pattern = unquote(legacy.get("regexInput", "")) or parse_qs(parts.query).get("runFilter", [""])[0]
        assert {r for r in runs if re.search(pattern, r)}, url  # no view opens empty


def test_the_board_command_refuses_a_missing_directory(tmp_path):
    proc = run_cli(str(tmp_path / "nope"), "--dry-run", cwd=tmp_path, module="initopt.board")
    assert proc.returncode == 2 and "sweep_dir=" in proc.stderr and "no such directory" in proc.stderr


# ------------------------------------------------------------------------- the pieces
def test_a_single_run_writes_its_own_experiment(tmp_path):
    from tensorboard.plugins.hparams import metadata

    proc = run_cli("init=normal", "steps=5", "eval_every=5", "model.hidden=[4]", "hydra.run.dir=one", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    content = accumulator(tmp_path / "one").PluginTagToContent("hparams")
    experiment = metadata.parse_experiment_plugin_data(content["_hparams_/experiment"])
    start = metadata.parse_session_start_info_plugin_data(content["_hparams_/session_start_info"])
    assert {h.name for h in experiment.hparam_infos} == set(start.hparams)
    assert start.hparams["init.std"].number_value == 0.01 and not any(h.differs for h in experiment.hparam_infos)


def test_histograms_count_every_element_of_every_tensor_into_equal_buckets():
    from initopt.layerstats import Histogrammer

    torch.manual_seed(0)
    tensors = [torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64),
               torch.zeros(3, 5, dtype=torch.float64)]
    rows = Histogrammer([50, 8, 5], members=3, bins=7, device="cpu")(tensors)
    assert rows.shape == (3, 3, 4 + 7)
    for member in range(3):
        for p, t in enumerate(tensors):
            values = t[member].flatten().numpy()
            if np.ptp(values):
                expected = np.histogram(values, bins=7, range=(values.min(), values.max()))[0].tolist()
            else:  # max = min: all in the first bucket
                expected = [len(values)] + [0] * 6
            assert rows[member, p, 4:].numpy().tolist() == expected
            assert rows[member, p, :4].numpy() == pytest.approx([values.min(), values.max(), values.sum(),
                                                                 (values**2).sum()])


def test_update_ratio_is_the_applied_step_over_the_weight_norm():
    from initopt.layerstats import ParamStatsRecorder

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 5, 4))  # two members stacked
    opt = torch.optim.SGD([w], lr=0.3)
    rec = ParamStatsRecorder([w], members=2, param_every=1, hist_every=0)
    rec.at_init()
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    rec.before_step(1)
    opt.step()
    rec.after_step(1, [w.grad])
    stats = rec.drain()
    for m in range(2):
        expected = (0.3 * w.grad[m]).norm() / w[m].detach().norm()
        assert stats.update_ratio[0, m, 0] == pytest.approx(expected.item(), rel=1e-6)
        assert stats.weight_norm[:, m, 0] == pytest.approx([before[m].norm().item(), w[m].detach().norm().item()])
    assert stats.norm_steps.tolist() == [0, 1] and stats.ratio_steps.tolist() == [1]


def test_steady_state_step_is_true_for_every_optimizer_form(compose):
    from initopt.hparams import steady_step, torch_equivalent

    def optim(*overrides):
        return compose(list(overrides)).optim

    assert steady_step(optim("optim=sgd", "optim.lr=0.1")) == pytest.approx(0.1)
    ema = optim("optim=momentum", "optim.lr=0.1", "optim.beta=0.1")
    assert torch_equivalent(ema) == pytest.approx((0.01, 0.9)) and steady_step(ema) == pytest.approx(0.1)
    heavy = optim("optim=momentum", "optim.form=heavy_ball", "optim.lr=0.1", "optim.beta=0.1")
    assert torch_equivalent(heavy) == pytest.approx((0.1, 0.9)) and steady_step(heavy) == pytest.approx(1.0)
    assert steady_step(optim("optim=adam")) == pytest.approx(1e-3)
    # the definition: under a constant gradient, torch's update settles to steady_step * g
    for cfg in (ema, heavy):
        w = torch.zeros(1, requires_grad=True)
        lr, momentum = torch_equivalent(cfg)
        sgd = torch.optim.SGD([w], lr=lr, momentum=momentum)
        for _ in range(400):
            before = w.detach().clone()
            w.grad = torch.ones(1)
            sgd.step()
        assert float(before - w.detach()) == pytest.approx(steady_step(cfg), rel=1e-4)


def test_heat_map_columns_are_log_spaced_so_step_1_is_wide():
    from initopt.heatmap import log_columns

    steps = np.arange(1, 1001)
    norms = steps[:, None].astype(float)
    edges, grid = log_columns(steps, norms, 400)
    assert edges[0] == 1 and edges[-1] == pytest.approx(1001)
    assert (grid[:, 0] == 1).sum() == pytest.approx(400 * np.log(2) / np.log(1001), abs=1)  # ~40 px for step 1
    assert grid[-1, 0] > 990 and np.all(np.diff(grid[:, 0]) >= 0)


def test_heat_map_colours_exact_zeros_apart_from_the_log_scale():
    import matplotlib.image

    from initopt.heatmap import ZERO_COLOUR, grad_norm_heatmap_png

    steps = np.arange(1, 41)
    norms = np.column_stack([np.zeros(40), np.geomspace(1e-3, 1, 40)])
    png, width, height = grad_norm_heatmap_png(steps, norms, ["fc1.weight", "out.bias"], scale=(1e-4, 10.0))
    pixels = matplotlib.image.imread(io.BytesIO(png))
    assert pixels.shape[:2] == (height, width)
    zero = np.all(np.isclose(pixels[..., :3], ZERO_COLOUR[:3], atol=0.02), axis=-1)
    assert zero.sum() >= 400 * 16  # the zero row is drawn in its own colour, every column of it


def test_fixed_keys_leave_the_run_names_and_swept_ones_stay():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from initopt.callbacks import fixed_keys

    def fixed(*overrides):
        return fixed_keys(OverridesParser.create().parse_overrides(list(overrides)))

    assert fixed("init=zero,he", "steps=1500", "+experiment=x", "model.hidden=[8,8]") == [
        "experiment", "model.hidden", "steps"]
    assert fixed("seed=0,1,2", "init=zero,he", "seed=0") == ["seed"]  # the sweeper keeps the last one
    assert fixed("seed=0", "seed=0,1,2") == []


# ------------------------------------------------------------- step rows, a window at once
ROW_TAGS = [f"grad_norm/{p}" for p in PARAMS] + ["grad_summary/mean_norm", "grad_summary/global_norm", "loss/batch"]


def window_of_rows(members: int = 3):
    """Steps across varint lengths (1 to 2 and 2 to 3 bytes), values across float32's range."""
    rng = np.random.default_rng(0)
    steps = np.array([1, 2, 127, 128, 129, 16383, 16384, 2**33])
    walltimes = 1.7e9 + rng.random(len(steps))
    tables = rng.standard_normal((members, len(steps), len(ROW_TAGS))) * 10.0 ** rng.integers(-30, 30, (
        members, len(steps), len(ROW_TAGS)))
    tables[0, 1, 2], tables[1, 2, 3], tables[2, 3, 4], tables[0, 4, 5] = np.nan, 1e300, -0.0, 0.0
    return steps, walltimes, tables


def test_a_window_of_rows_is_byte_for_byte_what_protobuf_serializes():
    """The fast path (a numpy template, CRC-32C by linearity) writes exactly the TFRecords of
    ``Event(step, wall_time, summary)`` serialized by the protobuf library, each member its
    own rows up to its count (a diverged member's are cut)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from initopt import tb

    steps, walltimes, tables = window_of_rows()
    counts = [len(steps), 3, 0]
    frames = tb.ScalarRows(None, ROW_TAGS).frames(steps, walltimes, tables, counts)
    for table, count, framed in zip(tables, counts, frames):
        expected = b"".join(tb._frame(Event(step=int(s), wall_time=float(w), summary=Summary(value=[
            Summary.Value(tag=t, simple_value=float(v)) for t, v in zip(ROW_TAGS, row)])).SerializeToString())
            for s, w, row in zip(steps[:count], walltimes[:count], table[:count]))
        assert framed == expected


def test_a_window_of_rows_reads_back_as_tensorboards_own_writer_writes_it(tmp_path):
    """The same rows through TensorBoard's ``EventFileWriter`` and through :class:`ScalarRows`
    read back equal with ``EventAccumulator``: tags, steps, wall times and values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from initopt import tb

    steps, walltimes, tables = window_of_rows()
    theirs = EventFileWriter(str(tmp_path / "theirs"))
    for s, w, row in zip(steps, walltimes, tables[0]):
        theirs.add_event(Event(step=int(s), wall_time=float(w), summary=Summary(value=[
            Summary.Value(tag=t, simple_value=float(v)) for t, v in zip(ROW_TAGS, row)])))
    theirs.close()
    ours = tb.EventFile(tmp_path / "ours")
    tb.ScalarRows(ours, ROW_TAGS).write(steps, walltimes, tables[0])
    ours.close()
    read = {}
    for name in ("theirs", "ours"):
        acc = EventAccumulator(str(tmp_path / name), size_guidance={"scalars": 0})
        acc.Reload()
        read[name] = {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert sorted(read["ours"]) == sorted(ROW_TAGS)
    assert len(read["ours"]["loss/batch"]) == len(steps)
    np.testing.assert_equal(read["ours"], read["theirs"])


def test_the_heat_maps_colour_map_is_matplotlibs_magma_whether_looked_up_or_kept(tmp_path, monkeypatch):
    from matplotlib import colormaps

    from initopt import heatmap

    expected = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    monkeypatch.setenv("INITOPT_CACHE", str(tmp_path))
    for _ in range(2):  # looked up and kept, then read from the cache folder
        heatmap._magma.cache_clear()
        assert np.array_equal(heatmap._magma(), expected)
        assert np.array_equal(np.load(tmp_path / "magma.npy"), expected)
    (tmp_path / "magma.npy").write_bytes(b"torn")
    heatmap._magma.cache_clear()
    assert np.array_equal(heatmap._magma(), expected)
    heatmap._magma.cache_clear()


def test_a_populations_weight_norms_and_update_ratios_reach_each_members_run(tmp_path):
    """The population's norm and ratio events are built at once for every member: member k's run
    reads back its own column of the ``(steps, members, tensors)`` arrays, at their steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from initopt.layerstats import ParamStats
    from initopt.sinks import PopulationLogs
    from initopt.tb import RunLogger

    rng = np.random.default_rng(1)
    members, names = 3, ["fc1.weight", "fc1.bias", "out.weight"]
    stats = ParamStats(np.array([0, 5, 10]), rng.random((3, members, 3)), np.array([5, 10]),
                       rng.random((2, members, 3)) * 1e-3)
    logs = PopulationLogs([RunLogger(tmp_path / f"m{k}", names, heatmap=False) for k in range(members)])
    logs.write_param_stats(stats)
    logs.write_param_stats(ParamStats(np.array([15]), rng.random((1, members, 3)), np.array([], np.int64),
                                      np.zeros((0, members, 3))))  # a flush with no ratio row
    logs.close()
    for k in range(members):
        acc = EventAccumulator(str(tmp_path / f"m{k}"), size_guidance={"scalars": 0})
        acc.Reload()
        for p, name in enumerate(names):
            norms = [(e.step, e.value) for e in acc.Scalars(f"weight_norm/{name}")]
            assert [s for s, _ in norms] == [0, 5, 10, 15]
            assert [v for _, v in norms[:3]] == pytest.approx(stats.weight_norm[:, k, p].tolist(), rel=1e-6)
            ratios = [(e.step, e.value) for e in acc.Scalars(f"update_ratio/{name}")]
            assert ratios == [(5, pytest.approx(stats.update_ratio[0, k, p], rel=1e-6)),
                              (10, pytest.approx(stats.update_ratio[1, k, p], rel=1e-6))]
