"""The engines, by the name `model.engine` gives, and what each one needs.

Like `geoxray.data.sources`' readers, one entry per engine. Nothing outside this module asks
which engine a config names: it asks the engine's entry what it needs (a model path, GPUs,
a tokenizer, a Serve app), how it starts and how it stops. A new engine is one entry here.

Two lifetimes:
- the engine KIND starts on the driver (`start`: e.g. the model's Serve app) and returns a
  picklable zero-argument builder; `stop` frees what `start` started (the app, its GPUs);
- each engine INSTANCE is built by that builder inside a stage worker; `close_engine`
  releases what the instance holds (client threads) when the worker is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from geoxray.infer import baselines
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.engine import Engine

GoldMarginals = dict[str, dict[str, float]]  # task -> option -> share (the prior baseline)
Builder = Callable[[], Engine]


def _nothing(model: ModelConfig) -> None:
    return None


def _no_gpus(model: ModelConfig) -> float:
    return 0.0


@dataclass(frozen=True)
class EngineKind:
    name: str
    # on the driver: start what the engine needs, return the builder each worker calls
    start: Callable[[ModelConfig, DecodeConfig, GoldMarginals], Builder]
    needs_path: bool = False  # model.path names the weights or the API's model
    replica_gpus: Callable[[ModelConfig], float] = _no_gpus  # GPUs one replica holds
    serve_app: bool = False  # answers from Serve replicas; stage workers only send to them
    local_weights: bool = False  # loads weights on this cluster (random_weights can stand in)
    adapters: bool = False  # loads model.adapter on top of the weights
    # where the model's tokenizer loads from (counting text tokens); None: it has none
    tokenizer_folder: Callable[[ModelConfig], str] | None = None
    worker_cpus: float = 0.5  # CPU share a stage worker asks (less when it only waits)
    cost: str = "model"  # how capacity planning costs it: model | api | baseline
    check: Callable[[ModelConfig], None] = _nothing  # driver-side pre-flight; raises
    stop: Callable[[ModelConfig], None] = _nothing  # frees what `start` started


# --- baselines: computed inside the stage worker ------------------------------------------
def _start_baseline(kind: str, model: ModelConfig, decode: DecodeConfig,
                    gold: GoldMarginals) -> Builder:
    return partial(baselines.BaselineEngine, kind, decode.mode, model.seed, gold or {},
                   latency_s=float(model.engine_kwargs.get("latency_s", 0.0)))


# --- vLLM: a Serve app of replicas, started by the driver -----------------------------------
def _start_vllm(model: ModelConfig, decode: DecodeConfig, gold: GoldMarginals) -> Builder:
    from geoxray.infer.adapter import adapter_ref
    from geoxray.infer.serve import ServeEngine, start_model_app
    app_name = start_model_app(model, decode)  # the base's app, shared by its adapters
    return partial(ServeEngine, app_name, decode, timeout_s=model.request_timeout_s,
                   retries=model.retries, max_in_flight=model.max_in_flight,
                   adapter=adapter_ref(model))


def _stop_vllm(model: ModelConfig) -> None:
    from geoxray.infer.serve import stop_model_app
    stop_model_app(model)


def _vllm_replica_gpus(model: ModelConfig) -> float:
    from geoxray.infer.serve import replica_gpus
    return replica_gpus(model)


def _check_vllm(model: ModelConfig) -> None:
    path = model.path
    if path and path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model.path {path!r}: no such file or directory")


def _vllm_tokenizer_folder(model: ModelConfig) -> str:
    from geoxray.infer.vllm_engine import model_folder
    return model_folder(model)  # for random weights: the folder built here


# --- an OpenAI-compatible API: clients inside the stage workers -----------------------------
def _start_openai(model: ModelConfig, decode: DecodeConfig, gold: GoldMarginals) -> Builder:
    from geoxray.infer.openai_engine import OpenAIEngine
    return partial(OpenAIEngine, model, decode)


def _check_openai(model: ModelConfig) -> None:
    import os
    if model.api_key_env and not os.environ.get(model.api_key_env):
        raise RuntimeError(f"model.api_key_env: environment variable "
                           f"{model.api_key_env} is not set on the driver")


ENGINE_KINDS: dict[str, EngineKind] = {
    **{kind: EngineKind(kind, start=partial(_start_baseline, kind), cost="baseline")
       for kind in baselines.KINDS},
    "vllm": EngineKind("vllm", start=_start_vllm, needs_path=True,
                       replica_gpus=_vllm_replica_gpus,
                       serve_app=True, local_weights=True, adapters=True,
                       tokenizer_folder=_vllm_tokenizer_folder, worker_cpus=0.25,
                       check=_check_vllm, stop=_stop_vllm),
    "openai": EngineKind("openai", start=_start_openai, needs_path=True, worker_cpus=0.25,
                         cost="api", check=_check_openai),
}


def engine_kind(name: str) -> EngineKind:
    try:
        return ENGINE_KINDS[name]
    except KeyError:
        raise ValueError(f"config key 'model.engine': unknown engine {name!r}; "
                         f"known: {list(ENGINE_KINDS)}") from None


def gpus_per_replica(model: ModelConfig) -> float:
    """GPUs one replica of `model` holds (0: an engine without GPUs, or vLLM on CPU)."""
    return engine_kind(model.engine).replica_gpus(model)


def start_engine(model: ModelConfig, decode: DecodeConfig,
                 gold_marginals: GoldMarginals | None = None) -> Builder:
    """Runs on the driver (it may start a Serve app); returns a picklable zero-argument
    callable that builds the engine inside each Ray Data worker."""
    kind = engine_kind(model.engine)
    if model.adapter and not kind.adapters:  # answers keyed by an adapter it never loaded
        raise ValueError(f"config key 'model.adapter': engine {kind.name} does not load "
                         f"adapters; engines that do: "
                         f"{[k for k, v in ENGINE_KINDS.items() if v.adapters] or 'none yet'}")
    return kind.start(model, decode, gold_marginals or {})


def stop_engine(model: ModelConfig) -> None:
    """Free what `start_engine` started for `model` (a Serve app and its GPUs); a no-op for
    engines that start nothing."""
    engine_kind(model.engine).stop(model)


def close_engine(engine: object) -> None:
    """Release an engine instance's own resources (client threads), if it holds any."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()
