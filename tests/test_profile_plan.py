"""Capacity planning against a hand-computed example, estimates for unprofiled models, and a
real profile of a baseline with a model-like cost per item (the documented JSON fields)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from geoxray.config import load_config
from geoxray.capacity.plan import gpus_for_deadline, make_plan, write_plan
from geoxray.capacity.plan_model import model_cost
from geoxray.capacity.profile import profile_model
from geoxray.capacity.profile_file import profile_path, write_profile
from geoxray.sweep.spec import load_sweep

# Two profiled models on an H100 (hand-written profiles, values chosen for hand arithmetic).
A = dict(name="qwen2_vl_2b", params=2, tp=1, startup=100.0, paper=0.5, choice=0.25)
B = dict(name="qwen2.5_vl_72b", params=72, tp=4, startup=300.0, paper=2.0, choice=1.0)
FIXED, SCORE_BASE, SCORE_PER_ITEM, CAP = 10.0, 2.0, 0.01, 10


def _write_profile(folder: Path, m: dict) -> None:
    mode = lambda s: {"per_item_s": s, "fixed_s": FIXED, "cold_start_s": 0.0,  # noqa: E731
                      "score_s": {"base": SCORE_BASE, "per_item": SCORE_PER_ITEM}}
    profile = {"geoxray_profile": 1, "model": m["name"], "engine": "vllm",
               "params_b": m["params"], "device": {"slug": "h100", "kind": "gpu"},
               "model_config": {"tensor_parallel_size": m["tp"], "num_replicas": 1},
               "run": {"batch_size": 64, "concurrency": 2}, "engine_startup_s": m["startup"],
               "modes": {"paper": mode(m["paper"]), "choice": mode(m["choice"])}}
    profile_path(m["name"], "h100", folder).write_text(json.dumps(profile))


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    _write_profile(folder, A)
    _write_profile(folder, B)
    return folder


def _spec(*models: str):
    return load_sweep(None, [f"model={','.join(models)}", "decode=paper,choice",
                             "data=synth_tiny", f"run.max_items_per_task={CAP}"])


def _hand(m: dict, replicas: int = 1) -> float:
    """Wall seconds of one model: start-up, two points of 70 items (7 tasks x CAP)."""
    n = 7 * CAP
    work = n * m["paper"] + n * m["choice"]
    overhead = 2 * (FIXED + SCORE_BASE + SCORE_PER_ITEM * n)
    return m["startup"] + overhead + work / replicas


def test_plan_arithmetic_matches_a_hand_computed_example(profiles, tmp_path):
    spec = _spec("qwen2_vl_2b", "qwen2_5_vl_72b")
    wall_a, wall_b = _hand(A), _hand(B)  # 177.9 s and 535.4 s
    assert (wall_a, wall_b) == pytest.approx((177.9, 535.4))

    # 4 GPUs: B takes all four (TP 4); A (1 GPU) waits for it.
    plan = make_plan(spec, gpus=4, device="h100", profiles=profiles)
    by = {p.model: p for p in plan.models}
    a, b = by["qwen2_vl_2b"], by["qwen2.5_vl_72b"]
    assert (a.tp, a.replicas, b.tp, b.replicas) == (1, 1, 4, 1)
    assert (a.items, b.items, a.points) == (140, 140, 2)
    assert b.start_s == 0 and b.end_s == pytest.approx(wall_b)
    assert a.start_s == pytest.approx(wall_b) and a.end_s == pytest.approx(wall_b + wall_a)
    assert plan.wall_s == pytest.approx(wall_a + wall_b)
    assert plan.gpu_hours == pytest.approx((4 * wall_b + 1 * wall_a) / 3600)
    assert a.source == b.source == "profile"

    # 8 GPUs: two replicas of B (8 GPUs, 430.4 s) then A would take 608.3 s; one replica of B
    # beside A takes 535.4 s, so the plan keeps B at one replica and runs both at once.
    plan8 = make_plan(spec, gpus=8, device="h100", profiles=profiles)
    by8 = {p.model: p for p in plan8.models}
    assert by8["qwen2.5_vl_72b"].replicas == 1 and by8["qwen2_vl_2b"].start_s == 0
    assert plan8.wall_s == pytest.approx(wall_b)
    assert plan8.reserved_gpu_hours == pytest.approx(8 * wall_b / 3600)

    # A 10-minute deadline: 4 GPUs take 713.3 s, 5 GPUs run both models at once.
    deadline = gpus_for_deadline(spec, hours=600 / 3600, device="h100", profiles=profiles)
    assert deadline.gpus == 5 and deadline.wall_s == pytest.approx(wall_b)

    paths = write_plan(plan, tmp_path / "plan")
    assert paths["png"].stat().st_size > 5000
    table = paths["csv"].read_text().splitlines()
    assert table[0].startswith("model,source,points,items,tp,replicas,gpus")
    assert "0.644" in paths["md"].read_text()  # GPU-hours, (4 x 535.4 + 177.9) / 3600


def test_unprofiled_models_are_estimated_and_say_so(profiles, tmp_path):
    cfg = load_config(["model=qwen2_vl_7b"])
    cost = model_cost(cfg.model, "h100", profiles)
    # nearest profiled size (2B, not 72B), scaled by parameters: 7 / 2
    assert cost.source.startswith("estimate") and "qwen2_vl_2b" in cost.source
    assert cost.per_item_s["paper"] == pytest.approx(A["paper"] * 3.5)
    assert cost.tp == 1
    # nothing profiled on this device: device peak figures, still labelled an estimate
    bare = model_cost(cfg.model, "h100", tmp_path)
    assert bare.source.startswith("estimate: params 7B")
    prefill = 2 * 7e9 * 1500 / (989e12 * 0.35)
    assert bare.per_item_s["paper"] == pytest.approx(prefill + 80 * 2 * 7e9 / 3.35e12 / 64)
    # weights that do not fit the configured TP: TP doubles, the replica gets faster
    big = load_config(["model=qwen2_5_vl_72b"]).model
    small_gpus = model_cost(big, "h100", profiles, gpu_memory_gb=40)
    assert small_gpus.tp == 8 and "TP raised" in small_gpus.note
    assert small_gpus.per_item_s["paper"] == pytest.approx(B["paper"] / (2 * 0.8))
    # an API model needs no GPU and is not planned
    api = model_cost(load_config(["model=gpt4o"]).model, "h100", profiles)
    assert api.source == "api" and not api.per_item_s
    plan = make_plan(_spec("qwen2_vl_7b", "gpt4o"), 2, "h100", tmp_path)
    table = {p.model: p for p in plan.models}
    assert table["gpt4o"].planned is False and table["qwen2_vl_7b"].planned
    assert "estimate" in table["qwen2_vl_7b"].source


PROFILE_FIELDS = {"geoxray_profile", "created", "model", "random_weights", "engine", "path",
                  "params_b", "device",
                  "model_config", "run", "data", "engine_startup_s", "modes"}
MODE_FIELDS = {"per_item_s", "items_per_s", "items_per_s_per_replica", "stage_s_per_item",
               "prompt_tokens_per_item", "generated_tokens_per_item",
               "tokens_per_s_per_replica", "prompt_tokens_per_s_per_replica",
               "generated_tokens_per_s_per_replica", "images_per_item",
               "text_tokens_per_item", "image_tokens_per_item", "image_tokens_per_image",
               "invalid_share", "stage_items", "fixed_s", "cold_start_s", "score_s", "runs"}
STAGES = {"read", "decode", "crop", "request", "engine", "parse", "write"}


def test_profile_json_has_the_documented_fields(ray_cluster, tiny_bench, geoxray_cache,
                                                tmp_path):
    latency = 0.01
    cfg = load_config(["model=random", "model.name=slow_random", "decode=paper",
                       f"+model.engine_kwargs.latency_s={latency}", "data=synth_tiny",
                       f"cache_dir={geoxray_cache}", "run.progress=false", "run.bootstrap=50",
                       "run.concurrency=1", "run.batch_size=8"])
    profile = profile_model([cfg], items=4, stage_items=1)
    path = write_profile(profile, tmp_path)
    assert path.name == "slow_random-cpu.json"
    saved = json.loads(path.read_text())
    assert set(saved) == PROFILE_FIELDS
    assert saved["device"]["slug"] == "cpu" and saved["device"]["kind"] == "cpu"
    mode = saved["modes"]["paper"]
    assert set(mode) == MODE_FIELDS and set(mode["stage_s_per_item"]) == STAGES
    # the engine stage is the model's cost per item; the data path adds a little to it
    assert mode["stage_s_per_item"]["engine"] == pytest.approx(latency, rel=0.5)
    assert mode["per_item_s"] >= mode["stage_s_per_item"]["engine"]
    assert mode["items_per_s"] == pytest.approx(1 / mode["per_item_s"], rel=1e-3)
    # one item per task (7), rounded up to a whole batch of 8
    assert mode["stage_items"] == 8 and mode["images_per_item"] >= 1
    assert [(r["items_per_task"], r["written"]) for r in mode["runs"]] == [(1, 7), (2, 7),
                                                                            (4, 14)]
    residuals = [r["predict_s"] - r["written"] * mode["per_item_s"] for r in mode["runs"]]
    assert mode["fixed_s"] == pytest.approx(max(0.0, min(residuals[1:])), abs=2e-3)
    assert mode["fixed_s"] >= 0 and mode["invalid_share"] == 0
    assert mode["prompt_tokens_per_item"] is None  # baselines count no tokens
    assert saved["params_b"] is None and not math.isnan(saved["engine_startup_s"])
