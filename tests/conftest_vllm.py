"""Session fixtures of the vLLM tests (load with `pytest_plugins = ("conftest_vllm",)`):
the tiny model built once, ONE in-process vLLM engine, ONE Serve app and ONE vLLM
OpenAI-compatible server subprocess for the whole session, plus request builders that use
the benchmark's real prompts and small random images."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="geoxray-vllm-cache-"))
# the tiny model is built under /tmp (content-addressed, so later sessions reuse it). The
# `geoxray_cache` fixture later points GEOXRAY_CACHE at the session's cache; processes started
# after that build the model there once more (seconds): same spec, same folder name, same model.
os.environ.setdefault("GEOXRAY_CACHE", os.path.join(tempfile.gettempdir(), "geoxray-test-cache"))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from geoxray.bench.tasks import TASKS  # noqa: E402
from geoxray.infer.config import DecodeConfig, ModelConfig  # noqa: E402
from geoxray.infer.engine import Request  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEST_MAX_TOKENS = 16


def load_model_config(name: str) -> ModelConfig:
    """conf/model/<name>.yaml checked against ModelConfig (an unknown key fails)."""
    from omegaconf import OmegaConf
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                             OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)


def make_requests(n: int, seed: int = 0, tasks=TASKS, sizes=(112, 128)) -> list[Request]:
    """n requests cycling through the tasks, with the authors' prompts and random images."""
    prompts = json.loads((resources.files("geoxray.bench") / "geoxbench" / "prompts.json")
                         .read_text())
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        prompt = prompts[task.name]
        k = prompt["user"].count("<image>")
        images = [rng.integers(0, 256, (sizes[j % len(sizes)],) * 2 + (3,), dtype=np.uint8)
                  for j in range(k)]
        out.append(Request(
            key=f"s{seed}-{i}", item_id=f"item{i}", task=task.name, system=prompt["system"],
            user=prompt["user"], images=images,
            image_uuids=[f"test-s{seed}-{i}-{j}" for j in range(k)], options=task.options,
            answer_field=task.answer_field))
    return out


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    ensure_tiny_qwen2vl()  # built once here, found by every engine below
    return load_model_config("tiny_qwen2vl")


@pytest.fixture(scope="session")
def paper_decode() -> DecodeConfig:
    return DecodeConfig(mode="paper", max_tokens=TEST_MAX_TOKENS)


@pytest.fixture(scope="session")
def choice_decode() -> DecodeConfig:
    return DecodeConfig(mode="choice", max_tokens=TEST_MAX_TOKENS)


@pytest.fixture(scope="session")
def vllm_engine(tiny_cfg, paper_decode):
    """ONE in-process vLLM engine (AsyncLLM on a background loop) for the session."""
    from geoxray.infer.vllm_engine import VLLMEngine
    engine = VLLMEngine(tiny_cfg, paper_decode)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def serve_app(ray_cluster, tiny_cfg, paper_decode):
    """ONE Serve app (one replica) hosting the tiny model for the session."""
    from ray import serve

    from geoxray.infer.serve import start_model_app
    name = start_model_app(tiny_cfg, paper_decode)
    yield name
    serve.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def openai_server(tiny_cfg, tmp_path_factory):
    """vLLM's own OpenAI-compatible server hosting the tiny model on 127.0.0.1."""
    from geoxray.infer.vllm_engine import server_command
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(server_command(tiny_cfg, "127.0.0.1", port), stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # a loaded 2-core machine can take minutes
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not up:\n{log_path.read_text()[-3000:]}")
            time.sleep(1.0)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


