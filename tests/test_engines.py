"""The engine registry (what each engine needs, how it starts and stops), an engine's close()
at the end of a stage, one Reply per failed item, honest model identity, the profiler's
crop replay and the manifest's argv redaction. No Ray here."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoxray.config import ENGINES, ConfigError, conf_dir, load_config
from geoxray.infer.baselines import BaselineEngine
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.registry import (ENGINE_KINDS, close_engine, engine_kind, gpus_per_replica,
                                    start_engine)
from geoxray.infer.stage import PredictStage
from geoxray.run.evaluate import model_fingerprint
from geoxray.run.manifest import REDACTED, redact_argv


# --- the registry ----------------------------------------------------------------------------
def test_every_model_config_names_a_registered_engine():
    assert ENGINES == tuple(ENGINE_KINDS)
    engines = {load_config([f"model={p.stem}"]).model.engine
               for p in (conf_dir() / "model").glob("*.yaml")}
    assert engines <= set(ENGINE_KINDS)
    assert {"random", "vllm", "openai"} <= engines
    with pytest.raises(ValueError, match="model.engine.*'nope'"):
        engine_kind("nope")


@pytest.mark.parametrize("engine, gpus, tp, expected", [
    ("random", 1.0, 1, 0.0),  # a baseline holds no GPU whatever the config says
    ("openai", 1.0, 1, 0.0),  # nor does an API client
    ("vllm", 0.0, 4, 0.0),  # vLLM on CPU
    ("vllm", 1.0, 1, 1.0),
    ("vllm", 1.0, 4, 4.0),  # the replica holds its TP workers' GPUs
    ("vllm", 0.5, 1, 1.0),  # never fewer GPUs than TP workers (one here)
])
def test_gpus_per_replica(engine, gpus, tp, expected):
    from geoxray.sweep.run import gpu_need
    from geoxray.config import Config

    model = ModelConfig(engine=engine, path="x", gpus_per_replica=gpus, tensor_parallel_size=tp,
                        num_replicas=3)
    assert gpus_per_replica(model) == expected
    assert gpu_need(Config(model=model)) == 3 * expected  # the sweep's scheduler asks the same


def test_baselines_start_as_a_picklable_builder_of_their_engine():
    import pickle

    gold = {"t": {"N": 1.0}}
    model = ModelConfig(engine="prior", seed=7, engine_kwargs={"latency_s": 0.25})
    builder = pickle.loads(pickle.dumps(start_engine(model, DecodeConfig(mode="choice"), gold)))
    engine = builder()
    assert isinstance(engine, BaselineEngine)
    assert (engine.kind, engine.mode, engine.seed, engine.gold_marginals, engine.latency_s) == (
        "prior", "choice", 7, gold, 0.25)


def test_what_each_engine_declares():
    vllm, openai, random = (engine_kind(n) for n in ("vllm", "openai", "random"))
    assert vllm.serve_app and vllm.local_weights and vllm.tokenizer_folder is not None
    assert not openai.serve_app and openai.needs_path and openai.tokenizer_folder is None
    assert not random.needs_path and random.cost == "baseline" and openai.cost == "api"
    # the planner's baseline branch and the config's path check follow the declarations
    with pytest.raises(ConfigError, match="model.path"):
        load_config(["model=gpt4o", "model.path=null"])


def test_engine_checks_fail_before_anything_starts(monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.path"):
        engine_kind("vllm").check(ModelConfig(engine="vllm", path="/nonexistent/weights"))
    engine_kind("vllm").check(ModelConfig(engine="vllm", path="Qwen/Qwen2-VL-2B-Instruct"))
    monkeypatch.delenv("GEOXRAY_TEST_NO_KEY", raising=False)
    with pytest.raises(RuntimeError, match="GEOXRAY_TEST_NO_KEY"):
        engine_kind("openai").check(ModelConfig(engine="openai", path="m",
                                                api_key_env="GEOXRAY_TEST_NO_KEY"))


def test_an_adapter_no_engine_loads_fails_at_start():
    with pytest.raises(ValueError, match="model.adapter"):
        start_engine(ModelConfig(engine="random", adapter="lora/run1"), DecodeConfig())


# --- model identity ----------------------------------------------------------------------------
def test_model_identity_lists_the_adapter_and_keeps_earlier_keys():
    # keys computed by the code before ModelConfig had `adapter`: runs on disk keep them
    qwen = ModelConfig(name="qwen", engine="vllm", path="Qwen/Qwen2-VL-7B-Instruct",
                       dtype="bfloat16", max_pixels=1000000, engine_kwargs={"a": 1})
    assert model_fingerprint(qwen) == "54660fa3b9a2cde9"
    assert model_fingerprint(ModelConfig()) == "97d42a8bc956f8af"
    tuned = dataclasses.replace(qwen, adapter="lora/run1")
    assert model_fingerprint(tuned) != model_fingerprint(qwen)
    assert model_fingerprint(tuned) != model_fingerprint(dataclasses.replace(qwen, adapter="b"))
    # an engine that loads no adapters refuses one at start (it would answer as the base)
    with pytest.raises(ConfigError, match="model.adapter.*does not load adapters"):
        load_config(["model=random", "model.adapter=lora/x"])


# --- the stage ---------------------------------------------------------------------------------
class BrokenEngine:
    """An engine whose every call fails, and that counts its closes."""
    name = "broken"

    def __init__(self):
        self.closed = 0

    def generate(self, requests):
        raise RuntimeError("engine down")

    def close(self):
        self.closed += 1


class RecordingStage(PredictStage):
    """The real stage, keeping the Reply objects it turns into predictions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def _prediction(self, row, reply):
        self.seen.append(reply)
        return super()._prediction(row, reply)


def _rows(bench, n: int, task: str | None = None) -> list[dict]:
    rows = [r for r in pq.read_table(bench.items_path).to_pylist()
            if task is None or r["task"] == task][:n]
    return [{**r, "key": r["item_id"]} for r in rows]


def test_failed_items_get_one_reply_each_and_the_engine_is_closed(tiny_bench):
    engine = BrokenEngine()
    stage = RecordingStage(lambda: engine, str(tiny_bench.image_root), "broken", "paper")
    out = stage(pa.Table.from_pylist(_rows(tiny_bench, 5)))
    assert out.num_rows == 5
    assert set(out.column("invalid_reason").to_pylist()) == {"engine_error"}
    assert len({id(r) for r in stage.seen}) == 5  # one Reply per item, not one shared
    stage.seen[0].extra["attempts"] = 3  # what a retrying client does to one item
    assert "attempts" not in stage.seen[1].extra
    stage.close()
    stage.close()  # twice is harmless
    assert engine.closed == 1
    other = BrokenEngine()
    stage = PredictStage(lambda: other, str(tiny_bench.image_root), "broken", "paper")
    del stage  # Ray Data deletes the stage when its actor exits
    assert other.closed == 1
    close_engine(BaselineEngine("random"))  # an engine without close() is fine


def test_profiler_replays_the_crops_the_request_carries(tiny_bench):
    from geoxray.bench.tasks import TASKS
    from geoxray.capacity.profile_stages import TimedStage

    stage = TimedStage(lambda: BaselineEngine("random"), str(tiny_bench.image_root), "random",
                       "paper")
    cropped_with_ground = [t.name for t in TASKS if t.n_aerials >= 1]
    checked = 0
    for task in cropped_with_ground:
        for row in _rows(tiny_bench, 3, task):
            if row["crop"] == "none" or len(row["image_paths"]) <= get_n_aerials(row):
                continue
            request = stage.build_request(row)
            replayed = stage.replay_crops(row)
            assert [a.shape for a in replayed] == [a.shape for a in request.images]
            ground = replayed[get_n_aerials(row)]
            assert ground.shape == stage.images.get(row["image_paths"][-1])[0].shape  # whole
            checked += 1
    assert checked, "the tiny benchmark has cropped items with a ground view"


def get_n_aerials(row: dict) -> int:
    from geoxray.bench.tasks import get_task
    return get_task(row["task"]).n_aerials


# --- the manifest's argv --------------------------------------------------------------------
def test_argv_redacts_secrets_and_keeps_everything_else():
    kept = ["model=gpt4o", "run.max_items_per_task=5", "keyword=x", "decode.max_tokens=512",
            "model.api_key_env=OPENAI_API_KEY", "author=me", "--items", "3",
            "model.path=./tokenizer_dir"]
    assert redact_argv(kept) == kept
    assert redact_argv(["api_key=abc", "+model.engine_kwargs.hf_token=xyz", "--api-key",
                        "abc", "--token=abc", "password=p", "x=sk-live123", "ghp_abc123"]) == [
        f"api_key={REDACTED}", f"+model.engine_kwargs.hf_token={REDACTED}", "--api-key",
        REDACTED, f"--token={REDACTED}", f"password={REDACTED}", f"x={REDACTED}", REDACTED]
