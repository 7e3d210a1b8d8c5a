"""One loaded base model answers for many LoRA adapters: a sweep over `model.adapter=none,A,B`
plans one replica group, starts one Serve app (one vLLM engine) for the base and both
adapters, and each point's option probabilities are those of its own adapter, checked against
a transformers + peft forward pass."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geoxray.sweep.run import plan_points, run_sweep
from geoxray.sweep.spec import load_sweep

pytest_plugins = ("conftest_vllm",)

ITEMS = 6  # per task; pose_fixed and intra_map (single-token and multi-token options)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from geoxray.models.random_adapter import save_random_adapter
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    base = ensure_tiny_qwen2vl()
    root = tmp_path_factory.mktemp("adapters")
    return {"A": save_random_adapter(base, root / "A", r=8, seed=1),
            "B": save_random_adapter(base, root / "B", r=4, seed=2)}


def _overrides(adapters, out: Path, cache) -> list[str]:
    return ["model=tiny_qwen2vl", f"model.adapter=none,{adapters['A']},{adapters['B']}",
            "decode=choice", "data=synth_tiny", "run.tasks=[pose_fixed,intra_map]",
            f"run.max_items_per_task={ITEMS}", "decode.max_tokens=16", "run.progress=false",
            "run.bootstrap=100", f"cache_dir={cache}", f"output_dir={out}"]


def test_a_base_and_its_adapters_plan_one_replica(adapters, tmp_path, geoxray_cache):
    from geoxray.config import load_config
    from geoxray.infer.serve import app_name_for

    spec = load_sweep(None, _overrides(adapters, tmp_path, geoxray_cache))
    assert [m.name for m in spec.models] == ["tiny_qwen2vl", "tiny_qwen2vl+A", "tiny_qwen2vl+B"]
    assert not spec.extra_axes  # the adapters are model variants, not an extra axis
    (group,) = plan_points(spec, tmp_path)
    models = [p.cfg.model for p in group.points]
    assert [m.name for m in models] == ["tiny_qwen2vl", "tiny_qwen2vl+A", "tiny_qwen2vl+B"]
    assert [m.adapter for m in models] == [None, str(adapters["A"]), str(adapters["B"])]
    # room for the largest adapter (rank 8) on every point: one app name for all three
    assert {m.lora_max_rank for m in models} == {8}
    assert len({app_name_for(m) for m in models}) == 1
    # the base alone (no adapters around) is another replica: no LoRA room, no LoRA cost
    alone = load_config(["model=tiny_qwen2vl"]).model
    assert app_name_for(alone) != app_name_for(models[0])
    # the LoRA room is not part of any answer's key: the base keeps its keys
    from geoxray.run.selection import model_fingerprint
    assert model_fingerprint(alone) == model_fingerprint(models[0])


@pytest.mark.vllm
def test_one_engine_serves_the_base_and_every_adapter(ray_cluster, tiny_bench, adapters,
                                                      tmp_path, geoxray_cache):
    import torch
    from peft import PeftModel
    from ray import serve
    from test_vllm_engine import hf_option_probs
    from transformers import Qwen2VLForConditionalGeneration

    from geoxray.infer.stage import RequestBuilder
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    from geoxray.run import store
    from geoxray.run.evaluate import evaluate

    replicas: dict[str, tuple] = {}  # point -> (apps running, replica actor, engine start s)

    def evaluate_and_look(cfg):
        out = evaluate(cfg)
        apps = tuple(sorted(a for a in serve.status().applications if "tiny" in a))
        info = serve.get_app_handle(apps[0]).info.remote().result()
        replicas[Path(out).name] = (apps, info["actor_id"], info["engine_start_s"])
        return out

    spec = load_sweep(None, _overrides(adapters, tmp_path / "sweep", geoxray_cache))
    result = run_sweep(spec, evaluate=evaluate_and_look)
    points = ["tiny_qwen2vl-synth_tiny-choice", "tiny_qwen2vl+A-synth_tiny-choice",
              "tiny_qwen2vl+B-synth_tiny-choice"]
    assert result.statuses == {p: "done" for p in points}
    # one app, one replica actor, one engine start for all three points
    assert len({replicas[p] for p in points}) == 1, replicas
    (apps, _, _), = {replicas[p] for p in points}
    assert len(apps) == 1
    assert not [a for a in serve.status().applications if a == apps[0]]  # stopped after

    preds = {p: store.read_predictions(result.sweep_dir / p).to_pandas().set_index("item_id")
             for p in points}
    for p in points:
        assert len(preds[p]) == 2 * ITEMS and preds[p]["error"].isna().all()
    assert set(preds[points[1]]["model"]) == {"tiny_qwen2vl+A"}
    # the adapters change the answers' probabilities (each is its own model)...
    base, a, b = (preds[p]["option_probs"].map(dict) for p in points)
    assert any(abs(a[i][o] - base[i][o]) > 1e-3 for i in base.index for o in base[i])
    assert any(abs(a[i][o] - b[i][o]) > 1e-3 for i in base.index for o in base[i])

    # ...and each point's are its own adapter's: transformers + peft on the same requests
    cfg = plan_points(spec, tmp_path / "plan")[0].points[0].cfg
    rows = {r["item_id"]: r for r in pq.read_table(tiny_bench.items_path).to_pylist()}
    builder = RequestBuilder(str(tiny_bench.image_root), protocol=cfg.protocol)
    folder = ensure_tiny_qwen2vl()

    def base_model():
        return Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)

    models = {points[0]: base_model().eval(),
              points[1]: PeftModel.from_pretrained(base_model(), str(adapters["A"])).eval(),
              points[2]: PeftModel.from_pretrained(base_model(), str(adapters["B"])).eval()}
    picked = preds[points[0]].reset_index().groupby("task")["item_id"].first()  # one a task
    for item_id in picked:
        request = builder.build_request({**rows[item_id], "key": item_id})
        for p, model in models.items():
            expect, _ = hf_option_probs(model, folder, request)
            got = preds[p].loc[item_id, "option_probs"]
            for option in request.options:
                assert abs(dict(got)[option] - expect[option]) < 1e-3, (p, item_id, option)


# --- tuned:<preset>: tuned on first use, cached by what decides the weights -----------------
def test_tuned_adapters_are_trained_once_and_found_again(tmp_path, monkeypatch):
    import geoxray.tune.run as tune_run
    from geoxray.config import ConfigError, load_config
    from geoxray.tune.cached import display_name, resolve_tuned

    calls = []

    def fake_tune(cfg, tc, preset):  # the training itself is tests/test_tune.py's; here: caching
        calls.append((cfg.model.name, tc.lr, preset))
        out = Path(tc.output_root) / tc.name
        out.mkdir(parents=True)
        for f in (*tune_run.ADAPTER_FILES, "tune_manifest.json"):
            (out / f).write_text("x")
        return out

    monkeypatch.setattr(tune_run, "tune", fake_tune)
    cache = f"cache_dir={tmp_path}"
    first = resolve_tuned(["model=tiny_qwen2vl", cache, "model.adapter=none,tuned:tiny"])
    folder = Path(first[-1].split(",")[1])
    assert first[:2] == ["model=tiny_qwen2vl", cache] and first[-1].startswith("model.adapter=none,")
    assert folder.name == display_name("tuned:tiny") == "tuned-tiny" and folder.is_relative_to(tmp_path)
    assert resolve_tuned(["model=tiny_qwen2vl", cache, "model.adapter=tuned:tiny"]) == \
        ["model=tiny_qwen2vl", cache, f"model.adapter={folder}"]
    assert len(calls) == 1  # found, not tuned again
    # what decides the weights keys the cache: another base model trains anew
    other = resolve_tuned(["model=tiny_qwen2vl", "model.seed=1", cache, "model.adapter=tuned:tiny"])
    assert len(calls) == 2 and Path(other[-1].split("=", 1)[1]).parent != folder.parent
    assert resolve_tuned(["model.adapter=/x/y", "run.tasks=[a,b]"]) == ["model.adapter=/x/y",
                                                                       "run.tasks=[a,b]"]
    with pytest.raises(ConfigError, match="model.adapter.*tuned:nope.*no preset"):
        resolve_tuned([cache, "model.adapter=tuned:nope"])
    with pytest.raises(ConfigError, match="model.adapter.*tuned and cached by"):
        load_config(["model.adapter=tuned:tiny"])  # e.g. `geoxray config`: not tuned there


def test_the_demo_sweep_pairs_the_base_with_its_tuned_adapter(tmp_path, monkeypatch):
    import geoxray.tune.cached as cached

    made = {}

    def fake_tuned(value, overrides):
        made[value] = overrides
        return Path("/adapters/key/tuned-tiny")

    monkeypatch.setattr(cached, "tuned_adapter", fake_tuned)
    spec = load_sweep("demo", [f"output_dir={tmp_path}"])
    assert [m.name for m in spec.models] == ["tiny_qwen2vl", "tiny_qwen2vl+tuned-tiny"]
    assert spec.models[1].overrides == ("model.adapter=/adapters/key/tuned-tiny",)
    assert "model=tiny_qwen2vl" in made["tuned:tiny"]
    assert [p.name for p in spec.points()] == [
        f"tiny_qwen2vl{a}-synth_tiny-paper" for a in ("", "+tuned-tiny")]


def test_random_adapters_of_weightless_models_have_peft_names(tmp_path):
    """A full-size model with random weights has no weights on disk: its adapter is written
    from config.json's shapes. Checked on the tiny model: the same keys and shapes peft
    writes, and peft loads it onto the real model with nothing missing."""
    import shutil

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Qwen2VLForConditionalGeneration

    from geoxray.infer.adapter import check_adapter
    from geoxray.models.random_adapter import save_random_adapter
    from geoxray.models.tiny import ensure_tiny_qwen2vl

    real = ensure_tiny_qwen2vl()
    weightless = tmp_path / "weightless"
    shutil.copytree(real, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    by_peft = load_file(save_random_adapter(real, tmp_path / "peft") / "adapter_model.safetensors")
    out = save_random_adapter(weightless, tmp_path / "shapes", seed=3)
    by_shapes = load_file(out / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in by_shapes.items()} == \
        {k: tuple(v.shape) for k, v in by_peft.items()}
    assert check_adapter(out, real).modules == len(by_peft) // 2
    base = Qwen2VLForConditionalGeneration.from_pretrained(real, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(out))
    b = dict(loaded.named_parameters())
    key = next(k for k in by_shapes if k.endswith("lora_B.weight"))
    peft_key = key.replace("lora_B.weight", "lora_B.default.weight")
    assert torch.equal(b[peft_key].data, by_shapes[key].float())  # loaded, not left at zero
