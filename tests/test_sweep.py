"""Sweeps: Hydra multirun expansion, GPU-aware scheduling, a real sweep over baselines on the
tiny synthetic benchmark (every point, a leaderboard equal to the points' own tables, a
failing model recorded while the others finish) and a rerun that redoes nothing."""
from __future__ import annotations

import json
import re
import threading
import time

import pandas as pd
import pytest

from geoxray.config import Config, ConfigError, conf_dir
from geoxray.infer.config import ModelConfig
from geoxray.run import store
from geoxray.sweep.run import (ModelGroup, PlannedPoint, run_sweep, schedule)
from geoxray.sweep.spec import SweepPoint, Variant, load_sweep
from geoxray.score.tables import task_label

ITEMS_PER_TASK = 4


# --- expansion --------------------------------------------------------------------------------
def test_multirun_syntax_expands_axes_and_extra_keys():
    spec = load_sweep(None, ["model=random,constant", "decode=paper,choice", "data=synth_tiny",
                             "run.batch_size=8,16", "run.max_items_per_task=3"])
    points = spec.points()
    assert len(points) == 2 * 2 * 1 * 2
    assert [p.model.name for p in points[:4]] == ["random"] * 4  # grouped by model
    assert {p.name for p in points} >= {"random-synth_tiny-paper-run.batch_size=8",
                                        "constant-synth_tiny-choice-run.batch_size=16"}
    assert spec.overrides == ["run.max_items_per_task=3"]
    p = points[0]
    assert p.overrides(spec.overrides) == ["model=random", "data=synth_tiny", "decode=paper",
                                           "run.max_items_per_task=3", "run.batch_size=8"]
    glob = load_sweep(None, ["model=random", "decode=glob(*)", "data=synth_tiny"])
    assert [v.name for v in glob.decode] == ["choice", "paper"]


def test_sweep_mistakes_fail_at_start_naming_the_key():
    with pytest.raises(ConfigError, match="sweep.model"):
        load_sweep(None, ["model=random,no_such_model", "decode=paper", "data=synth_tiny"])
    with pytest.raises(ConfigError, match="sweep.bogus"):
        load_sweep("smoke", ["sweep.bogus=1"])
    with pytest.raises(ConfigError, match="override"):
        load_sweep(None, ["model=random,", "decode=paper"])
    # an axis not given takes the default config's option, as `geoxray eval` would
    bare = load_sweep(None, ["model=random,constant"])
    assert [p.name for p in bare.points()] == ["random-synth_tiny-paper",
                                               "constant-synth_tiny-paper"]


def test_paper_sweep_lists_every_paper_model_config():
    spec = load_sweep("paper")
    listed = {v.base for v in spec.models}
    paper = {p.stem for p in (conf_dir() / "model").glob("*.yaml")
             if re.search(r"\(paper\)", p.read_text().split("\n", 1)[0])}
    assert paper and paper <= listed, f"missing from conf/sweep/paper.yaml: {paper - listed}"
    assert {v.name for v in spec.decode} == {"paper", "choice"}
    assert [v.name for v in spec.data] == ["geoxbench"]
    smoke = load_sweep("smoke")
    assert {"tiny_qwen2vl", "random"} <= {v.name for v in smoke.models}


# --- scheduling ----------------------------------------------------------------------------------
def _group(name: str, gpus: float) -> ModelGroup:
    model = ModelConfig(name=name, engine="vllm" if gpus else "random", path="x",
                        gpus_per_replica=gpus, num_replicas=1)
    point = SweepPoint(Variant(name, name), Variant("paper", "paper"), Variant("d", "d"))
    return ModelGroup(Variant(name, name), [PlannedPoint(point, Config(model=model), "fp")])


def test_scheduler_runs_models_side_by_side_as_far_as_gpus_allow():
    groups = [_group("a", 1), _group("b", 1), _group("c", 2), _group("cpu1", 0),
              _group("cpu2", 0)]
    lock = threading.Lock()
    in_use = {"gpu": 0.0, "cpu": 0}
    peak = {"gpu": 0.0, "cpu": 0}
    spans: dict[str, tuple[float, float]] = {}

    def run(group):
        kind = "gpu" if group.gpus else "cpu"
        with lock:
            in_use[kind] += group.gpus or 1
            peak[kind] = max(peak[kind], in_use[kind])
        start = time.monotonic()
        time.sleep(0.3)
        with lock:
            in_use[kind] -= group.gpus or 1
        spans[group.model.name] = (start, time.monotonic())
        return {group.points[0].name: "done"}

    statuses = schedule(groups, total_gpus=2, max_cpu_models=1, run=run)
    assert len(statuses) == 5
    assert peak["gpu"] == 2 and peak["cpu"] == 1
    overlap = lambda x, y: spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]  # noqa
    assert overlap("a", "b")  # two 1-GPU models together
    assert not overlap("c", "a") and not overlap("c", "b")  # the 2-GPU model alone
    assert not overlap("cpu1", "cpu2")  # CPU models one at a time
    assert overlap("cpu1", "a") or overlap("cpu1", "c")  # beside the GPU models


def test_a_model_larger_than_the_cluster_still_runs_alone():
    groups = [_group("big", 8), _group("small", 1)]
    order = []
    schedule(groups, total_gpus=2, max_cpu_models=1,
             run=lambda g: order.append(g.model.name) or {g.points[0].name: "done"})
    assert sorted(order) == ["big", "small"]


# --- stopping a model's app ------------------------------------------------------------------------
def test_a_models_serve_app_stops_when_its_points_are_done(ray_cluster, tmp_path):
    from pathlib import Path

    from ray import serve

    from geoxray.infer.serve import app_name_for, stop_model_app
    from geoxray.sweep.run import run_group
    from geoxray.sweep.state import SweepState

    group = _group("served", 1)  # a vLLM model: its engine runs as a Serve app
    cfg = group.points[0].cfg
    cfg.output_dir = str(tmp_path / "point")
    name = app_name_for(cfg.model)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class StandIn:  # an app under the model's name, without loading a model
        def __call__(self) -> str:
            return "ok"

    def evaluate(point_cfg):  # a point's run: the model's app is up while it runs
        serve.start(proxy_location="Disabled")
        serve.run(StandIn.bind(), name=name, route_prefix=None)
        Path(point_cfg.output_dir).mkdir(parents=True, exist_ok=True)
        return point_cfg.output_dir

    statuses = run_group(group, SweepState(tmp_path, "stop"), evaluate)
    assert statuses == {group.points[0].name: "done"}
    assert name not in serve.status().applications
    assert stop_model_app(cfg.model) is False  # nothing left to stop


# --- a real sweep ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory, geoxray_cache):
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "baselines.yaml"
    path.write_text(f"""
name: baselines
models:
  - random
  - constant
  - name: broken
    base: random
    overrides: [model.engine=vllm, model.path=/nonexistent/model-weights]
decode: [paper, choice]
data: [synth_tiny]
overrides:
  - run.max_items_per_task={ITEMS_PER_TASK}
  - run.progress=false
  - run.bootstrap=100
  - cache_dir={geoxray_cache}
output_dir: {folder / 'out'}
""")
    return path


@pytest.fixture(scope="module")
def first_run(ray_cluster, tiny_bench, sweep_file):
    spec = load_sweep(str(sweep_file))
    return spec, run_sweep(spec)


def test_every_point_runs_and_a_failing_model_is_recorded(first_run):
    spec, result = first_run
    good = [f"{m}-synth_tiny-{d}" for m in ("random", "constant") for d in ("paper", "choice")]
    bad = ["broken-synth_tiny-paper", "broken-synth_tiny-choice"]
    assert {k: v for k, v in result.statuses.items()} == {**{p: "done" for p in good},
                                                          **{p: "failed" for p in bad}}
    state = json.loads((result.sweep_dir / "sweep.json").read_text())["points"]
    for point in good:
        preds = store.read_predictions(result.sweep_dir / point).to_pandas()
        assert len(preds) == 7 * ITEMS_PER_TASK
        assert state[point]["status"] == "done"
        assert state[point]["predictions"] == 7 * ITEMS_PER_TASK
        assert set(preds["decode"]) == {point.rsplit("-", 1)[1]}
    for point in bad:
        assert state[point]["status"] == "failed"
        assert "model.path" in state[point]["error"] and "/nonexistent" in state[point]["error"]
        assert not (result.sweep_dir / point / "predictions").exists()


def test_leaderboard_equals_the_points_own_tables(first_run):
    spec, result = first_run
    board = result.sweep_dir / "leaderboard"
    acc = pd.read_csv(board / "tables" / "leaderboard_accuracy.csv").set_index("task")
    p_mode = pd.read_csv(board / "tables" / "leaderboard_p_mode.csv").set_index("task")
    assert set(acc.columns) == {f"{m} [{d}]" for m in ("random", "constant")
                                for d in ("paper", "choice")}
    for model in ("random", "constant"):
        for decode in ("paper", "choice"):
            point = result.sweep_dir / f"{model}-synth_tiny-{decode}"
            own = pd.read_csv(point / "tables" / "accuracy.csv")
            own = own[own.instance == "all"]
            preds = store.read_predictions(point).to_pandas()
            for row in own.itertuples():
                column = f"{model} [{decode}]"
                assert acc.loc[task_label(row.task), column] == pytest.approx(row.accuracy)
                # and both equal the share of correct answers in the point's predictions
                rows = preds[preds.task == row.task]
                assert row.accuracy == pytest.approx((rows.pred == rows.answer).mean())
            bias = pd.read_csv(point / "tables" / "bias.csv")
            for row in bias[bias.source == "counts"].itertuples():
                assert p_mode.loc[task_label(row.task), f"{model} [{decode}]"] == \
                    pytest.approx(row.p_mode)
    assert (p_mode.filter(like="constant") == 1.0).all().all()
    for name in ("accuracy.png", "option_shares.png", "fixed_vs_random.png"):
        assert (board / "plots" / name).stat().st_size > 1000
    index = (board / "index.html").read_text()
    assert 'href="report.html"' in index and "tables/leaderboard_accuracy.md" in index
    assert "../random-synth_tiny-paper/report.html" in index
    assert "broken-synth_tiny-paper" in index and "failed" in index
    assert (board / "tables" / "leaderboard_accuracy.md").read_text().startswith("| task |")


def test_rerun_redoes_nothing(first_run):
    spec, result = first_run
    done = [p for p, s in result.statuses.items() if s == "done"]
    before = {p: (sorted(store.parts(result.sweep_dir / p)),
                  (result.sweep_dir / p / "manifest.json").stat().st_mtime_ns) for p in done}
    calls = []

    def counting_evaluate(cfg):
        calls.append(cfg.output_dir)
        raise AssertionError("a finished point was run again")

    again = run_sweep(spec, evaluate=counting_evaluate)
    assert calls == []  # the broken model fails its check before any evaluate
    assert {p: again.statuses[p] for p in done} == {p: "skipped" for p in done}
    after = {p: (sorted(store.parts(result.sweep_dir / p)),
                 (result.sweep_dir / p / "manifest.json").stat().st_mtime_ns) for p in done}
    assert after == before
