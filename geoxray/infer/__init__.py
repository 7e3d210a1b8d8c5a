"""Engines: which backend answers, chosen by `model.engine`."""
from __future__ import annotations

from functools import partial
from typing import Callable

from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.engine import Engine, Reply, Request

BASELINES = ("random", "constant", "prior")


def engine_builder(model: ModelConfig, decode: DecodeConfig,
                   gold_marginals: dict[str, dict[str, float]] | None = None
                   ) -> Callable[[], Engine]:
    """Runs on the driver (it may start a Serve app); returns a picklable zero-argument
    callable that builds the engine inside each Ray Data worker."""
    if model.engine in BASELINES:
        from geoxray.infer.baselines import BaselineEngine
        return partial(BaselineEngine, model.engine, decode.mode, model.seed, gold_marginals or {},
                       latency_s=float(model.engine_kwargs.get("latency_s", 0.0)))
    if model.engine == "vllm":
        from geoxray.infer.serve import ServeEngine, start_model_app
        app_name = start_model_app(model, decode)
        return partial(ServeEngine, app_name, decode, timeout_s=model.request_timeout_s,
                       retries=model.retries, max_in_flight=model.max_in_flight)
    if model.engine == "openai":
        from geoxray.infer.openai_engine import OpenAIEngine
        return partial(OpenAIEngine, model, decode)
    raise ValueError(f"config key 'model.engine': unknown engine {model.engine!r}")


__all__ = ["Engine", "Reply", "Request", "engine_builder", "BASELINES"]
