"""The OpenAI-compatible engine against a REAL server on 127.0.0.1: vLLM's own OpenAI API
server hosting the tiny model (started once per session, see conftest_vllm)."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from conftest_vllm import make_requests
from geoxray.infer.chat import option_text
from geoxray.infer.config import ModelConfig
from geoxray.infer.openai_engine import OpenAIEngine

pytest_plugins = ("conftest_vllm",)

SECRET = "sk-test-do-not-leak-1234567890"


def _api_cfg(base_url: str, tiny_cfg: ModelConfig, **kw) -> ModelConfig:
    return ModelConfig(name="tiny_qwen2vl_api", engine="openai", path=tiny_cfg.path,
                       base_url=base_url, concurrency=4, request_timeout_s=120, retries=2, **kw)


def test_missing_key_fails_at_start_naming_the_variable(monkeypatch):
    monkeypatch.delenv("GEOXRAY_TEST_KEY", raising=False)
    cfg = ModelConfig(name="x", engine="openai", base_url="http://127.0.0.1:9/v1",
                      api_key_env="GEOXRAY_TEST_KEY")
    with pytest.raises(ValueError, match="GEOXRAY_TEST_KEY"):
        OpenAIEngine(cfg)


def test_key_is_never_in_repr_or_pickle(monkeypatch):
    monkeypatch.setenv("GEOXRAY_TEST_KEY", SECRET)
    cfg = ModelConfig(name="x", engine="openai", base_url="http://127.0.0.1:9/v1",
                      api_key_env="GEOXRAY_TEST_KEY")
    engine = OpenAIEngine(cfg)
    engine._get_client()  # the client holds the key
    assert SECRET not in repr(engine) and SECRET not in str(engine.__dict__.keys())
    blob = pickle.dumps(engine)
    assert SECRET.encode() not in blob
    assert pickle.loads(blob).name == "x"


def test_unreachable_server_gives_errors_after_retries(paper_decode):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ModelConfig(name="x", engine="openai", base_url=f"http://127.0.0.1:{port}/v1",
                      path="m", retries=1, request_timeout_s=5)
    replies = OpenAIEngine(cfg, paper_decode).generate(make_requests(2, seed=20))
    assert all(r.text is None and "after 2 attempts" in r.error for r in replies)


@pytest.mark.vllm
def test_api_server_gives_the_in_process_greedy_answers(openai_server, tiny_cfg, vllm_engine,
                                                        paper_decode, monkeypatch):
    monkeypatch.setenv("GEOXRAY_TEST_KEY", SECRET)  # the local server ignores it
    requests = make_requests(14, seed=21)
    engine = OpenAIEngine(_api_cfg(openai_server, tiny_cfg, api_key_env="GEOXRAY_TEST_KEY"),
                          paper_decode)
    api = engine.generate(requests)
    local = vllm_engine.generate(requests, paper_decode)
    assert all(r.error is None for r in api), [r.error for r in api if r.error]
    assert [r.text for r in api] == [r.text for r in local]
    assert [r.prompt_tokens for r in api] == [r.prompt_tokens for r in local]
    assert [r.generated_tokens for r in api] == [r.generated_tokens for r in local]


@pytest.mark.vllm
def test_api_server_choice_mode_matches_constrained_answers(openai_server, tiny_cfg,
                                                            vllm_engine, choice_decode):
    requests = make_requests(14, seed=22)
    engine = OpenAIEngine(_api_cfg(openai_server, tiny_cfg), choice_decode)
    api = engine.generate(requests)
    local = vllm_engine.generate(requests, choice_decode)
    assert all(r.error is None for r in api), [r.error for r in api if r.error]
    assert [r.text for r in api] == [r.text for r in local]
    for req, rep in zip(requests, api):
        assert rep.text in [option_text(o) for o in req.options]
        if rep.option_probs is not None:  # first-token probabilities, where they exist
            assert abs(sum(rep.option_probs.values()) - 1) < 1e-3
    # single-token options (N/E/S/W, 0-3) always get first-token probabilities
    assert any(r.option_probs is not None for r in api)


@pytest.mark.vllm
def test_api_item_errors_do_not_stop_the_batch(openai_server, tiny_cfg, paper_decode):
    requests = make_requests(3, seed=23)
    requests[1] = dataclasses.replace(requests[1], images=requests[1].images[:1],
                                      image_uuids=requests[1].image_uuids[:1])
    too_long = dataclasses.replace(requests[2], user=requests[2].user + " word" * 3000)
    replies = OpenAIEngine(_api_cfg(openai_server, tiny_cfg), paper_decode).generate(
        [requests[0], requests[1], too_long])
    assert replies[0].error is None and replies[0].text
    assert replies[1].error and "images" in replies[1].error
    assert replies[2].error and "400" in replies[2].error  # the server refused it, no retry
