"""The whole pipeline on a real local Ray with baseline engines: counts, chance levels,
bias extremes, resume after a kill, bad input counted and not fatal."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest

from conftest import eval_config
from geoxray.bench.tasks import TASKS
from geoxray.run import store
from geoxray.run.evaluate import evaluate


@pytest.fixture(scope="module")
def random_run(ray_cluster, tiny_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("random")
    evaluate(eval_config(out, tiny_bench, "model=random"))
    return out


def test_every_item_gets_exactly_one_prediction(random_run, tiny_bench):
    items = pq.read_table(tiny_bench.items_path).to_pandas()
    preds = store.read_predictions(random_run).to_pandas()
    assert len(preds) == len(items) > 0
    assert sorted(preds["item_id"]) == sorted(items["item_id"])
    assert preds["key"].is_unique
    manifest = json.loads((random_run / "manifest.json").read_text())
    assert manifest["counts"]["predictions"] == len(items)
    assert manifest["counts"]["invalid"] == 0
    for name in ("accuracy.csv", "bias.csv"):
        assert (random_run / "tables" / name).is_file()
    assert (random_run / "report.md").is_file()


def test_random_baseline_is_at_chance(random_run):
    preds = store.read_predictions(random_run).to_pandas()
    for task in TASKS:
        rows = preds[preds.task == task.name]
        correct = int((rows.pred == rows.answer).sum())
        # seeded, so deterministic; a wrong engine (e.g. always the gold) fails this
        assert binomtest(correct, len(rows), 1 / task.K).pvalue > 0.001, task.name
        shares = Counter(rows.pred)
        assert set(shares) <= set(task.options)


def test_rerun_writes_nothing_new(random_run, tiny_bench):
    before = store.parts(random_run)
    evaluate(eval_config(random_run, tiny_bench, "model=random"))
    assert store.parts(random_run) == before
    manifest = json.loads((random_run / "manifest.json").read_text())
    assert manifest["counts"]["written_this_run"] == 0


def test_constant_baseline_has_no_entropy(ray_cluster, tiny_bench, tmp_path):
    evaluate(eval_config(tmp_path, tiny_bench, "model=constant"))
    bias = pd.read_csv(tmp_path / "tables" / "bias.csv")
    counts = bias[bias.source == "counts"] if "source" in bias else bias
    assert len(counts) == len(TASKS)
    assert (counts.p_mode == 1.0).all()
    assert counts.h_norm.abs().max() < 1e-12
    for task in TASKS:
        row = counts[counts.task == task.name].iloc[0]
        assert str(row.mode_option).lower() == task.options[0].lower()


def test_choice_mode_gives_option_probabilities(ray_cluster, tiny_bench, tmp_path):
    evaluate(eval_config(tmp_path, tiny_bench, "model=prior", "decode=choice",
                         "run.max_items_per_task=40"))
    preds = store.read_predictions(tmp_path).to_pandas()
    per_task = Counter(pq.read_table(tiny_bench.items_path, columns=["task"]).column("task").to_pylist())
    assert len(preds) == sum(min(40, per_task[t.name]) for t in TASKS)
    assert set(preds.task) == {t.name for t in TASKS}
    assert preds.invalid_reason.isna().all()
    for probs in preds.option_probs:
        assert abs(sum(dict(probs).values()) - 1) < 1e-9


def test_stage_workers_close_their_engines(ray_cluster, tiny_bench, tmp_path):
    from functools import partial

    from geoxray.infer.baselines import BaselineEngine

    marks = tmp_path / "closed"
    marks.mkdir()

    class ClosingEngine(BaselineEngine):  # defined here: Ray ships the class by value
        def close(self) -> None:
            (marks / f"{os.getpid()}-{id(self)}").touch()

    out = tmp_path / "run"
    evaluate(eval_config(out, tiny_bench, "model=random", "run.max_items_per_task=4"),
             engine_builder=partial(ClosingEngine, "random"))
    assert len(store.read_predictions(out)) == 4 * len(TASKS)
    deadline = time.time() + 60  # Ray Data releases its actors after the dataset is done
    while time.time() < deadline and not any(marks.iterdir()):
        time.sleep(0.2)
    assert any(marks.iterdir()), "no stage worker closed its engine"


def _run_cli(out: Path, bench, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "geoxray.cli", "eval", "model=random", "data=items",
            f"data.items={bench.items_path}", f"data.image_root={bench.image_root}",
            f"output_dir={out}", "run.progress=false", "run.batch_size=8", "run.bootstrap=50",
            "ray.num_cpus=2", *extra]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ.copy())


def test_killed_and_resumed_run_equals_uninterrupted(random_run, tiny_bench, tmp_path):
    out = tmp_path / "killed"
    slow = "+model.engine_kwargs.latency_s=0.01"  # ~6 s of engine time: a window to kill in
    proc = _run_cli(out, tiny_bench, slow)
    deadline = time.time() + 240
    while time.time() < deadline and len(store.parts(out)) < 3 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    partial = store.read_predictions(out).to_pandas()
    assert 0 < len(partial) < pq.read_metadata(tiny_bench.items_path).num_rows
    proc = _run_cli(out, tiny_bench, slow)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    resumed = store.read_predictions(out).to_pandas()
    straight = store.read_predictions(random_run).to_pandas()
    columns = ["item_id", "task", "answer", "reply", "pred", "invalid_reason"]
    assert resumed["key"].is_unique and resumed["item_id"].is_unique
    a = resumed[columns].sort_values("item_id").reset_index(drop=True)
    b = straight[columns].sort_values("item_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_corrupt_and_missing_images_are_counted_not_fatal(ray_cluster, tiny_bench, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_bench.image_root, images)
    items = pq.read_table(tiny_bench.items_path).to_pandas()
    row = items.iloc[0]
    corrupt = images / row.image_paths[-1]  # a ground view: every item of its set is hit
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    missing_path = next(p for paths in items.image_paths for p in paths
                        if p not in set(row.image_paths))
    (images / missing_path).unlink()
    cfg = eval_config(tmp_path / "out", tiny_bench, "model=random")
    cfg.data.image_root = str(images)
    evaluate(cfg)
    preds = store.read_predictions(tmp_path / "out").to_pandas()
    assert len(preds) == len(items)
    expect_corrupt = items.image_paths.apply(lambda ps: row.image_paths[-1] in ps).sum()
    expect_missing = items.image_paths.apply(lambda ps: missing_path in ps).sum()
    reasons = preds.invalid_reason.value_counts()
    assert reasons.get("corrupt_image", 0) == expect_corrupt > 0
    assert reasons.get("missing_image", 0) == expect_missing > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["invalid_by_reason"]["corrupt_image"] == expect_corrupt
    acc = pd.read_csv(tmp_path / "out" / "tables" / "accuracy.csv")
    assert acc[acc.instance == "all"].invalid.sum() == expect_corrupt + expect_missing


@pytest.mark.parametrize("overrides, key", [
    (["run.batch_size=0"], "run.batch_size"),
    (["run.batch_size=many"], "run.batch_size"),
    (["run.tasks=[pose_fixed,pose_sideways]"], "run.tasks"),
    (["model.engine=gpt9"], "model.engine"),
    (["data=items", "data.items=/nonexistent/items.parquet", "data.image_root=/tmp"], "data.items"),
    (["data=geoxbench", "data.image_root=null"], "data.image_root"),
    (["data=geoxbench", "data.image_root=/nonexistent/images"], "data.image_root"),
    (["model.tensor_parallel_sizes=2"], "model.tensor_parallel_sizes"),
])
def test_config_mistakes_fail_at_start_naming_the_key(tmp_path, capsys, overrides, key):
    from geoxray.cli import main

    assert main(["eval", f"output_dir={tmp_path}", *overrides]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "predictions").exists()
