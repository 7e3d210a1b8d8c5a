"""A Ray Serve application per model, hosting vLLM's async engine, and `ServeEngine`, the
client the Ray Data stage uses to send it batches.

Why our own deployment and not `ray.serve.llm` (LLMServer / build_llm_deployment): those
speak OpenAI request models, so every image would be base64-encoded into a data URL per
request (~40 questions share each image set) instead of travelling as a numpy array through
Ray's object store, and the OpenAI layer does not expose what exact option scoring needs
(token-level prompts, `logprob_token_ids`). Our replica receives a whole batch of `Request`s
in one handle call and answers them concurrently on one AsyncLLM, so vLLM batches them
continuously, and images keep their content-hash uuids for vLLM's caches. vLLM's own
OpenAI-compatible server still serves API clients (see `openai_engine.py`).

Long-lived: an app is named by the model config's hash, so a later eval of the same model
(another task, another decode mode) reuses the running replicas instead of reloading.
Adapters: the app's identity is the base model plus the LoRA rank it has room for, never the
adapter itself; each call names its adapter (`AdapterRef`, or None for the base), so one
loaded base answers for every adapter of a sweep (vLLM loads each once, by content hash).
Serve runs without an HTTP proxy (handles only), so nothing listens on the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from geoxray.infer.adapter import AdapterRef
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.engine import Reply, Request

log = logging.getLogger(__name__)

# Client-side settings: they do not change what a replica is, so not its identity.
_CLIENT_ONLY = {"base_url", "api_key_env", "concurrency", "openai_choice", "request_timeout_s",
                "retries", "api_image",  # an API engine's setting: no replica reads it
                "protocols",  # already resolved into the fields above by apply_protocol
                "adapter", "lora_max_rank"}  # per call; the replica's LoRA room is lora_rank


def as_model_config(cfg: Any) -> ModelConfig:
    if isinstance(cfg, ModelConfig):
        return cfg
    from omegaconf import OmegaConf
    raw = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return ModelConfig(**raw)


def as_decode_config(cfg: Any) -> DecodeConfig:
    if cfg is None or isinstance(cfg, DecodeConfig):
        return cfg or DecodeConfig()
    from omegaconf import OmegaConf
    raw = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return DecodeConfig(**raw)


def app_name_for(model: ModelConfig) -> str:
    """`geoxray-<name>-<hash of every replica-side setting>`."""
    from geoxray.infer.adapter import base_name, engine_lora_rank

    replica_side = {k: v for k, v in dataclasses.asdict(model).items() if k not in _CLIENT_ONLY}
    replica_side["name"] = base_name(model)  # base and its adapters: one app
    lora_rank = engine_lora_rank(model)
    if lora_rank:  # only when set: apps without LoRA keep their names
        replica_side["lora_rank"] = lora_rank
    digest = hashlib.sha256(json.dumps(replica_side, sort_keys=True, default=str).encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", replica_side["name"]).strip("-") or "model"
    return f"geoxray-{slug}-{digest.hexdigest()[:10]}"


class VLLMReplica:
    """One Serve replica: one AsyncLLM answering batches of Requests."""

    async def __init__(self, model: ModelConfig, decode: DecodeConfig):
        # async: the engine must be built on the loop that will call it
        from geoxray.infer.vllm_engine import AsyncVLLMEngine
        self.decode = decode
        self.engine = AsyncVLLMEngine(model)

    async def generate(self, requests: list[Request], decode: DecodeConfig | None = None,
                       timeout_s: float | None = None,
                       adapter: AdapterRef | None = None) -> list[Reply]:
        return await self.engine.generate(requests, decode or self.decode, timeout_s, adapter)

    async def info(self) -> dict[str, Any]:
        import os

        import ray
        return {"pid": os.getpid(), "engine_start_s": self.engine.start_s,
                "actor_id": ray.get_runtime_context().get_actor_id()}

    async def check_health(self) -> None:
        await self.engine.check_health()  # a dead engine fails it; Serve replaces the replica


def replica_gpus(model: ModelConfig) -> float:
    """GPUs one replica holds: none on CPU, else model.gpus_per_replica, at least the
    tensor parallel size (vLLM's TP workers live in the replica)."""
    if model.gpus_per_replica <= 0:
        return 0.0
    return max(float(model.gpus_per_replica), float(model.tensor_parallel_size))


def build_app(model: ModelConfig, decode: DecodeConfig | None = None):
    from ray import serve

    deployment = serve.deployment(
        VLLMReplica, name="vllm", num_replicas=model.num_replicas,
        ray_actor_options={"num_cpus": model.cpus_per_replica,
                           "num_gpus": replica_gpus(model)},
        max_ongoing_requests=max(8, model.max_in_flight),
        health_check_period_s=10.0, health_check_timeout_s=60.0,
        graceful_shutdown_timeout_s=20.0)
    return deployment.bind(model, decode or DecodeConfig())


def start_model_app(model_cfg: Any, decode_cfg: Any = None, wait_s: float = 1800.0) -> str:
    """Start (or find running) the Serve app of this model; returns its name."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    model = as_model_config(model_cfg)
    name = app_name_for(model)
    serve.start(proxy_location="Disabled")  # no-op when Serve is already up
    deadline = time.monotonic() + wait_s
    while True:
        app = serve.status().applications.get(name)
        state = app.status if app else None
        if state == ApplicationStatus.RUNNING:
            log.info("reusing Serve app %s", name)
            return name
        if state in (ApplicationStatus.DEPLOYING, ApplicationStatus.DELETING) \
                and time.monotonic() < deadline:
            time.sleep(2.0)  # another driver is starting it (or it is going away)
            continue
        break
    from geoxray import console

    t0 = time.perf_counter()
    with console.elapsed(f"starting engine {model.name} ({model.engine})"):
        serve.run(build_app(model, as_decode_config(decode_cfg)), name=name, route_prefix=None)
    log.info("started Serve app %s in %.1fs", name, time.perf_counter() - t0)
    return name


def stop_model_app(model_cfg: Any) -> bool:
    """Delete this model's Serve app (its replicas and their GPUs); False when none runs."""
    from ray import serve

    name = app_name_for(as_model_config(model_cfg))
    if name not in serve.status().applications:  # also when Serve itself is not running
        return False
    serve.delete(name)
    log.info("stopped Serve app %s", name)
    return True


def _retryable(reply: Reply) -> bool:
    return reply.error is not None and bool(reply.extra.get("retryable"))


class ServeEngine:
    """Engine client of a running model app; cheap to build and picklable (the handle is
    made on first use), so Ray Data actors construct it themselves.

    A batch is split into calls of at most `per_call` items, at most
    ceil(max_in_flight / per_call) calls in flight. Each item has `timeout_s` inside the
    replica; a call that fails (replica died, call timed out) is retried with exponential
    backoff, and so are items the replica marked retryable (timeouts, engine errors), up to
    `retries` times; then they get Reply.error and the rest of the batch goes on.
    Every call names `adapter` (None: the base model's own answers).
    """

    def __init__(self, app_name: str, decode_cfg: Any = None, timeout_s: float = 600.0,
                 retries: int = 2, max_in_flight: int = 64, per_call: int = 16,
                 queue_timeout_s: float = 600.0, backoff_s: float = 1.0,
                 adapter: AdapterRef | None = None):
        self.name = app_name if adapter is None else f"{app_name}+{adapter.name}"
        self.app_name = app_name
        self.adapter = adapter
        self.decode = as_decode_config(decode_cfg)
        self.timeout_s = timeout_s
        self.retries = retries
        self.per_call = max(1, per_call)
        self.max_calls = max(1, math.ceil(max_in_flight / self.per_call))
        self.queue_timeout_s = queue_timeout_s  # waiting for a replica (e.g. a restart)
        self.backoff_s = backoff_s
        self._handle = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_handle=None, _pool=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        if not requests:
            return []
        chunks = [list(requests[i:i + self.per_call])
                  for i in range(0, len(requests), self.per_call)]
        pool = self._executor()
        replies: list[Reply] = []
        for chunk_replies in pool.map(self._call_with_retries, chunks):
            replies.extend(chunk_replies)
        return replies

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- plumbing -----------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_calls, thread_name_prefix="serve-call")
            return self._pool

    def _get_handle(self):
        with self._lock:
            if self._handle is None:
                from ray import serve
                self._handle = serve.get_app_handle(self.app_name)
            return self._handle

    def _call_with_retries(self, chunk: list[Request]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(chunk)
        pending = list(range(len(chunk)))
        last_error = "not attempted"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            response = None
            try:
                response = self._get_handle().generate.remote(
                    [chunk[i] for i in pending], self.decode, self.timeout_s, self.adapter)
                out = response.result(timeout_s=self.timeout_s + self.queue_timeout_s)
                if len(out) != len(pending):
                    raise RuntimeError(f"replica answered {len(out)} of {len(pending)} items")
            except Exception as exc:  # the call failed: every pending item is retried
                last_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log.warning("call to %s failed (attempt %d/%d): %s", self.app_name,
                            attempt + 1, self.retries + 1, last_error)
                if response is not None:
                    response.cancel()
                continue
            for i, reply in zip(pending, out):
                replies[i] = reply
            pending = [i for i in pending if _retryable(replies[i])]
            if not pending:
                break
            last_error = replies[pending[0]].error or last_error
        for i in pending:
            if replies[i] is None:
                replies[i] = Reply(error=f"engine call failed after {self.retries + 1} "
                                         f"attempts: {last_error}")
            replies[i].extra["attempts"] = self.retries + 1
        return [r for r in replies if r is not None]
