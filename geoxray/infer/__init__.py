"""Engines: which backend answers, chosen by `model.engine` (see `registry.py`)."""
from __future__ import annotations

from geoxray.infer.engine import Engine, Reply, Request
from geoxray.infer.registry import (ENGINE_KINDS, EngineKind, close_engine, engine_kind,
                                    gpus_per_replica, start_engine, stop_engine)

# The name the run and the profiler have always called: start an engine, get its builder.
engine_builder = start_engine

__all__ = ["Engine", "Reply", "Request", "ENGINE_KINDS", "EngineKind", "engine_builder",
           "engine_kind", "gpus_per_replica", "start_engine", "stop_engine", "close_engine"]
