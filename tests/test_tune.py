"""Instruction tuning: the data selection rule, training examples built by evaluation's own
request code, adapter checks at start, and (heavy, under the shared lock) a real tuning run
on Ray Train whose adapter is scored through Ray Data -> Serve -> vLLM on unseen locations."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoxray.bench.schema import ITEM_SCHEMA
from geoxray.config import ConfigError, load_config
from geoxray.infer.adapter import AdapterError, adapter_hash, check_adapter
from geoxray.tune.select import TuneDataError, select_training_items

pytest_plugins = ("conftest_vllm",)


# --- data selection ------------------------------------------------------------------------
def _items(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """items.parquet of (split, location, task) rows (the other columns filled in)."""
    table = pa.Table.from_pylist([
        dict(item_id=f"i{n}", task=task, instance="X", split=split, base_id="b", record=n,
             location=loc, crop="none", image_paths=["a.jpg", "g.jpg"], image_hashes=["", ""],
             image_set=loc, answer="N") for n, (split, loc, task) in enumerate(rows)],
        schema=ITEM_SCHEMA)
    pq.write_table(table, path)
    return path


def test_selection_is_train_only_disjoint_and_holds_out_whole_locations(tmp_path):
    rows = [("test", f"T{i}", t) for i in range(3) for t in ("pose_fixed", "loc_prior")]
    rows += [("train", f"L{i}", t) for i in range(20) for t in ("pose_fixed", "pose_random",
                                                                "loc_prior")]
    path = _items(tmp_path / "items.parquet", rows)
    sel = select_training_items(path, tasks=["pose_fixed", "pose_random"], val_fraction=0.2,
                                seed=1)
    assert set(sel.train["split"].to_pylist()) == {"train"}
    assert set(sel.train["task"].to_pylist()) == {"pose_fixed", "pose_random"}
    train_locs, val_locs = set(sel.train["location"].to_pylist()), set(sel.val["location"].to_pylist())
    assert len(val_locs) == 4 and len(train_locs) == 16 and not (train_locs & val_locs)
    assert sel.train.num_rows == 32 and sel.val.num_rows == 8
    assert sel.test_locations == 3 and sel.summary()["overlap_with_test"] == 0
    again = select_training_items(path, tasks=["pose_fixed", "pose_random"], val_fraction=0.2,
                                  seed=1)
    assert set(again.val["location"].to_pylist()) == val_locs  # seeded
    capped = select_training_items(path, val_fraction=0.0, max_locations=5)
    assert len(set(capped.train["location"].to_pylist())) == 5 and capped.val.num_rows == 0


def test_paper_preset_selects_the_papers_size(tmp_path):
    """31,392 QA from 654 locations (48 a location) out of a larger train split, validation
    locations on top and disjoint, every task present at each location."""
    from geoxray.bench.tasks import TASK_BY_NAME
    from geoxray.config import conf_dir
    from geoxray.tune.config import load_tune_config

    tc = load_tune_config("paper", [], conf_dir())
    tasks = list(TASK_BY_NAME)
    rows = [("train", f"L{loc}", tasks[k % len(tasks)]) for loc in range(720) for k in range(63)]
    rows += [("test", f"T{loc}", "pose_fixed") for loc in range(5)]
    sel = select_training_items(_items(tmp_path / "p.parquet", rows), tc.tasks, tc.val_fraction,
                                tc.seed, tc.max_locations, tc.max_items_per_task,
                                tc.max_items_per_location)
    assert sel.train.num_rows == 31_392 and len(sel.train_locations) == 654
    assert len(set(sel.train["location"].to_pylist())) == 654
    assert len(sel.val_locations) == 33 and not set(sel.val_locations) & set(sel.train_locations)
    per_loc = pa.TableGroupBy(sel.train, ["location", "task"]).aggregate([]).to_pylist()
    assert len(per_loc) == 654 * 7  # 48 a location spread over all 7 tasks (6 or 7 each)


def test_selection_refuses_overlap_empty_and_unknown_tasks(tmp_path):
    overlap = _items(tmp_path / "o.parquet", [("test", "A", "pose_fixed"), ("train", "A", "loc_prior"),
                                              ("train", "B", "pose_fixed")])
    with pytest.raises(TuneDataError, match="train/test overlap: 1 train location"):
        select_training_items(overlap)
    test_only = _items(tmp_path / "t.parquet", [("test", "A", "pose_fixed")])
    with pytest.raises(TuneDataError, match="empty training selection"):
        select_training_items(test_only)
    other = _items(tmp_path / "p.parquet", [("test", "A", "pose_fixed"), ("train", "B", "loc_prior")])
    with pytest.raises(TuneDataError, match="empty training selection"):
        select_training_items(other, tasks=["pose_fixed"])
    with pytest.raises(TuneDataError, match="unknown task"):
        select_training_items(other, tasks=["pose"])


# --- adapters ------------------------------------------------------------------------------
def _save_adapter(base_dir: Path, out: Path, r: int = 8, trained: bool = True, seed: int = 0) -> Path:
    """A peft LoRA adapter of `base_dir` (lora_B random when `trained`, else peft's zeros)."""
    from geoxray.models.random_adapter import save_random_adapter
    return save_random_adapter(base_dir, out, r=r, seed=seed, trained=trained)


@pytest.fixture(scope="module")
def tiny_dir():
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    return ensure_tiny_qwen2vl()


def test_adapter_checks_fail_at_start_with_the_reason(tmp_path, tiny_dir):
    from geoxray.models.tiny import TinyQwen2VLSpec, ensure_tiny_qwen2vl

    good = _save_adapter(tiny_dir, tmp_path / "good")
    info = check_adapter(good, tiny_dir)
    assert info.rank == 8 and info.modules == 14 and info.hash == adapter_hash(good)
    with pytest.raises(AdapterError, match="no adapter folder"):
        check_adapter(tmp_path / "nowhere", tiny_dir)
    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    (partial / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="partial adapter folder"):
        check_adapter(partial, tiny_dir)
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="cannot read"):
        check_adapter(truncated, tiny_dir)
    # another base: the tiny model with a wider language model
    other_base = ensure_tiny_qwen2vl(spec=TinyQwen2VLSpec(hidden_size=96, num_heads=3,
                                                          intermediate_size=192))
    with pytest.raises(AdapterError, match="does not fit the base model"):
        check_adapter(_save_adapter(other_base, tmp_path / "other"), tiny_dir)
    with pytest.raises(AdapterError, match="above the engine's limit max_lora_rank=8"):
        check_adapter(_save_adapter(tiny_dir, tmp_path / "r16", r=16), tiny_dir, max_lora_rank=8)
    with pytest.raises(AdapterError, match="changes nothing"):
        check_adapter(_save_adapter(tiny_dir, tmp_path / "noop", trained=False), tiny_dir)


def test_adapters_saved_by_other_tools_are_read_too(tmp_path, tiny_dir):
    """ms-swift and LLaMA-Factory save through peft, but with the module names of the
    transformers version they ran (older Qwen2-VL ports: `model.layers.N`, no
    `language_model`), sometimes with the adapter's name in the key, and as .bin."""
    import torch
    from safetensors.torch import load_file, save_file

    src = _save_adapter(tiny_dir, tmp_path / "peft")
    state = load_file(src / "adapter_model.safetensors")
    expected = check_adapter(src, tiny_dir).modules
    for name, rename, fmt in [
            ("older", lambda k: k.replace("model.language_model.layers", "model.layers"), "st"),
            ("named", lambda k: k.replace(".weight", ".default.weight"), "st"),
            ("bin", lambda k: k, "bin")]:
        out = tmp_path / name
        out.mkdir()
        shutil.copy2(src / "adapter_config.json", out / "adapter_config.json")
        renamed = {rename(k): v.clone() for k, v in state.items()}
        assert set(renamed) != set(state) or fmt == "bin"
        if fmt == "st":
            save_file(renamed, str(out / "adapter_model.safetensors"))
        else:
            torch.save(renamed, out / "adapter_model.bin")
        info = check_adapter(out, tiny_dir)
        assert (info.modules, info.rank) == (expected, 8), name


def test_model_adapter_in_the_config_names_results_and_fails_early(tmp_path, tiny_dir):
    good = _save_adapter(tiny_dir, tmp_path / "mine")
    cfg = load_config([f"model.adapter={good}"])
    assert cfg.model.name == "tiny_qwen2vl+mine"
    from geoxray.infer.adapter import adapter_ref
    from geoxray.infer.vllm_engine import engine_args, lora_request
    args = engine_args(cfg.model)
    assert args["enable_lora"] is True and args["max_lora_rank"] == 8
    assert lora_request(adapter_ref(cfg.model)).lora_path == str(good.resolve())
    from geoxray.infer.serve import app_name_for
    from geoxray.run.evaluate import model_fingerprint
    fp, app = model_fingerprint(cfg.model), app_name_for(cfg.model)
    lora_id = adapter_ref(cfg.model).lora_id
    # retrained in place: new keys, and a new LoRA id, so the running replica (the same
    # base's) loads the new weights instead of answering from its cached copy
    _save_adapter(tiny_dir, good, seed=1)
    assert model_fingerprint(cfg.model) != fp and adapter_ref(cfg.model).lora_id != lora_id
    assert app_name_for(cfg.model) == app
    with pytest.raises(ConfigError, match="model.adapter.*no adapter folder"):
        load_config([f"model.adapter={tmp_path / 'missing'}"])
    assert load_config(["model.adapter=none"]).model.name == "tiny_qwen2vl"  # a sweep's base
    with pytest.raises(ConfigError, match="does not load adapters"):
        load_config(["model=random", f"model.adapter={good}"])


# --- training examples ---------------------------------------------------------------------
def test_examples_use_the_eval_request_and_learn_only_the_answer(tiny_bench, tiny_dir):
    from geoxray.bench.tasks import get_task
    from geoxray.infer.stage import RequestBuilder
    from geoxray.tune.examples import IGNORE, SFTExamples, collate

    items = pq.read_table(tiny_bench.items_path).to_pylist()
    rows = [next(r for r in items if r["task"] == t) for t in ("pose_random", "crossmap_std")]
    ex = SFTExamples(str(tiny_dir), str(tiny_bench.image_root))
    tok = ex.processor.tokenizer
    for row in rows:
        e = ex.example(row)
        target = e["labels"][e["labels"] != IGNORE]
        assert tok.decode(target) == get_task(row["task"]).answer_json(row["answer"]) + "<|im_end|>"
        # the labelled tokens are the last ones, right after the assistant turn opens
        k = len(target)
        assert (e["labels"][:-k] == IGNORE).all() and (e["input_ids"][-k:] == target).all()
        assert tok.decode(e["input_ids"][:-k]).endswith("<|im_start|>assistant\n")
        # the images are the evaluation stage's (same crop), not a second image path
        req = RequestBuilder(str(tiny_bench.image_root)).build_request({**row, "key": "k"})
        mine = ex.builder.build_request({**row, "key": "k"})
        assert all(np.array_equal(a, b) for a, b in zip(req.images, mine.images))
        n_img = sum(int(np.prod(g)) // 4 for g in e["image_grid_thw"])
        assert (e["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum() == n_img
        assert len(req.images) == len(e["image_grid_thw"])
    batch = collate([ex.example(r) for r in rows], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == \
        int(batch["image_grid_thw"].prod(dim=1).sum())


# --- the real thing: Ray Train -> adapter -> Ray Data -> Serve -> vLLM (shared lock) ---------
@pytest.fixture(scope="module")
def tune_world(tmp_path_factory):
    """The tiny world with 16 train locations (its test split is synth_tiny's, item for item)."""
    from geoxray.bench.index import BuildProblems, build_items, write_items
    from geoxray.data.synth import generate

    root = tmp_path_factory.mktemp("tune-world")
    generate(root, preset="tiny_tune", train_locations=16, progress=False, overwrite=True)
    write_items(build_items(root / "index", root / "images", BuildProblems()), root / "items.parquet")
    return root


@pytest.fixture(scope="module")
def tuned(ray_cluster, tune_world, tmp_path_factory):
    from geoxray.tune.run import load, tune

    out_root = tmp_path_factory.mktemp("tune-runs")
    cfg, tc, preset = load(["data=items", f"data.items={tune_world / 'items.parquet'}",
                            f"data.image_root={tune_world / 'images'}", "data.name=tt",
                            "run.progress=false", "tune=tiny", "tune.name=t",
                            f"tune.output_root={out_root}", "tune.epochs=3",
                            "tune.crash_after_steps=3", "tune.save_every_steps=2"])
    return tune(cfg, tc, preset)


@pytest.mark.vllm
def test_tuning_resumes_after_a_worker_death_and_writes_an_adapter(tuned, tune_world, tiny_bench):
    m = json.loads((tuned / "tune_manifest.json").read_text())
    assert (tuned / "crashed_once").exists()  # the worker really died after step 3
    starts = m["training"]["attempt_starts"]
    assert len(starts) == 2 and starts[1] in (2,), starts  # resumed from the step-2 checkpoint
    steps = [h["step"] for h in m["history"]]
    assert steps == list(range(1, m["training"]["steps"] + 1))  # no step lost or repeated
    assert m["history"][-1]["loss"] < m["history"][0]["loss"] / 2
    assert (tuned / "loss_curve.png").stat().st_size > 1000
    assert m["adapter"]["hash"] == adapter_hash(tuned)
    # trained on unseen places: no train location is a test location of the scored benchmark
    test_locs = set(pq.read_table(tiny_bench.items_path, columns=["location"])["location"].to_pylist())
    items = pq.read_table(tune_world / "items.parquet").to_pandas()
    assert not test_locs & set(items[items.split == "train"]["location"])
    assert m["data"]["overlap_with_test"] == 0 and m["data"]["val_locations"] >= 1


@pytest.mark.vllm
def test_adapter_through_serve_answers_in_format_and_agrees_with_peft(tuned, tiny_bench,
                                                                      tmp_path_factory):
    import torch
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    from conftest import eval_config
    from geoxray.infer.adapter import adapter_ref
    from geoxray.infer.config import DecodeConfig
    from geoxray.infer.serve import ServeEngine, start_model_app
    from geoxray.infer.stage import RequestBuilder
    from geoxray.run import store
    from geoxray.run.evaluate import evaluate

    common = ["run.tasks=[pose_fixed]", "decode.max_tokens=24"]
    base_dir = tmp_path_factory.mktemp("base-run")
    tuned_dir = tmp_path_factory.mktemp("tuned-run")
    evaluate(eval_config(base_dir, tiny_bench, *common))
    cfg = eval_config(tuned_dir, tiny_bench, f"model.adapter={tuned}", *common)
    evaluate(cfg)
    base = store.read_predictions(base_dir).to_pandas()
    mine = store.read_predictions(tuned_dir).to_pandas()
    assert len(base) == len(mine) == 32
    assert set(mine["model"]) == {"tiny_qwen2vl+t"}
    assert base["invalid_reason"].notna().mean() >= 0.9       # the random base: ~no valid reply
    assert mine["invalid_reason"].isna().mean() >= 0.95       # tuned: the protocol's JSON
    manifest = json.loads((tuned_dir / "manifest.json").read_text())
    assert manifest["adapter"]["hash"] == adapter_hash(tuned)
    assert not set(base["key"]) & set(mine["key"])
    # before/after, paired by item (geoxray compare is another branch's: computed here with
    # scipy): accuracy difference, a paired bootstrap CI by location, McNemar's exact test
    from scipy.stats import binomtest
    pair = base.merge(mine, on="item_id", suffixes=("_b", "_t"))
    hit_b = (pair["pred_b"] == pair["answer_b"]).to_numpy()
    hit_t = (pair["pred_t"] == pair["answer_t"]).to_numpy()
    n10, n01 = int((hit_t & ~hit_b).sum()), int((hit_b & ~hit_t).sum())
    p_mcnemar = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    locs = pair["location_b"].to_numpy()
    uniq = np.unique(locs)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(1000):
        pick = np.concatenate([np.flatnonzero(locs == loc) for loc in rng.choice(uniq, len(uniq))])
        diffs.append(hit_t[pick].mean() - hit_b[pick].mean())
    low, high = np.quantile(diffs, [0.025, 0.975])
    diff = hit_t.mean() - hit_b.mean()
    # learning, not format alone: the tuned adapter reads the heading from the ground view
    # (the sun's glow; the north-up map carries none) on locations it never saw, its
    # accuracy's exact binomial 95% CI above chance (0.25 for 4 directions), and better
    # than the base with a paired CI by location and McNemar's test
    above = binomtest(int(hit_t.sum()), len(hit_t), 0.25)
    assert above.proportion_ci(0.95).low > 0.25, (hit_t.mean(), above)
    assert low > 0 and p_mcnemar < 0.05
    print(f"\npose_fixed: base {hit_b.mean():.3f} tuned {hit_t.mean():.3f} diff {diff:+.3f} "
          f"[{low:+.3f}, {high:+.3f}] McNemar p={p_mcnemar:.3g} (n10={n10}, n01={n01}); "
          f"valid base {base['invalid_reason'].isna().mean():.3f} "
          f"tuned {mine['invalid_reason'].isna().mean():.3f}")

    # option probabilities: vLLM + LoRA (the same Serve app) vs transformers + peft
    choice = DecodeConfig(mode="choice", max_tokens=16)
    engine = ServeEngine(start_model_app(cfg.model, choice), choice,
                         adapter=adapter_ref(cfg.model))
    stage = RequestBuilder(str(tiny_bench.image_root))
    rows = pq.read_table(tiny_bench.items_path).to_pylist()
    rows = [r for r in rows if r["task"] in ("pose_random", "intra_map")][:: 97][:3]
    requests = [stage.build_request({**r, "key": r["item_id"]}) for r in rows]
    replies = engine.generate(requests)
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    from test_vllm_engine import hf_option_probs
    base_model = Qwen2VLForConditionalGeneration.from_pretrained(ensure_tiny_qwen2vl(),
                                                                 dtype=torch.float32).eval()
    unmerged = PeftModel.from_pretrained(base_model, str(tuned)).eval()
    models = {"unmerged": unmerged}
    merged = PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(
        ensure_tiny_qwen2vl(), dtype=torch.float32), str(tuned)).merge_and_unload().eval()
    models["merged"] = merged
    for req, rep in zip(requests, replies):
        assert rep.error is None, rep.error
        for label, model in models.items():
            expect, _ = hf_option_probs(model, ensure_tiny_qwen2vl(), req)
            for option in req.options:
                assert abs(rep.option_probs[option] - expect[option]) < 1e-3, (label, req.task, option)
