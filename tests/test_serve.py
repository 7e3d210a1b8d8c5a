"""The Serve app hosting the tiny model: same answers as in-process, reuse, errors, retries,
and a killed replica replaced with no item lost."""
from __future__ import annotations

import pickle
import threading
import time

import pytest

from conftest_vllm import load_model_config, make_requests
from geoxray.infer.engine import Reply
from geoxray.infer.serve import ServeEngine, app_name_for, start_model_app

pytest_plugins = ("conftest_vllm",)


def _replica_info(app_name: str) -> dict:
    from ray import serve
    return serve.get_app_handle(app_name).info.remote().result(timeout_s=60)


def test_app_name_tracks_replica_settings_only():
    import dataclasses

    cfg = load_model_config("tiny_qwen2vl")
    name = app_name_for(cfg)
    assert name.startswith("geoxray-tiny_qwen2vl-")
    assert app_name_for(dataclasses.replace(cfg, retries=9, request_timeout_s=1)) == name
    assert app_name_for(dataclasses.replace(cfg, max_pixels=56 * 56)) != name
    assert app_name_for(dataclasses.replace(cfg, num_replicas=2)) != name


@pytest.mark.vllm
def test_running_app_is_reused(serve_app, tiny_cfg, choice_decode):
    before = _replica_info(serve_app)
    t0 = time.perf_counter()
    assert start_model_app(tiny_cfg, choice_decode) == serve_app  # decode is not identity
    assert time.perf_counter() - t0 < 10
    assert _replica_info(serve_app)["actor_id"] == before["actor_id"]  # no reload
    assert app_name_for(tiny_cfg) == serve_app


@pytest.mark.vllm
def test_serve_path_gives_the_in_process_answers(serve_app, vllm_engine, paper_decode,
                                                  choice_decode):
    requests = make_requests(21, seed=11)
    for decode in (paper_decode, choice_decode):
        engine = ServeEngine(serve_app, decode, timeout_s=120, per_call=8)
        served = engine.generate(requests)
        local = vllm_engine.generate(requests, decode)
        assert len(served) == len(requests)
        assert all(r.error is None for r in served)
        assert [r.text for r in served] == [r.text for r in local]
        assert [r.prompt_tokens for r in served] == [r.prompt_tokens for r in local]
        if decode.mode == "choice":
            for a, b in zip(served, local):
                assert max(abs(a.option_probs[o] - b.option_probs[o]) for o in a.option_probs) \
                    < 1e-4


@pytest.mark.vllm
def test_serve_engine_is_picklable_and_answers_after_unpickling(serve_app, paper_decode):
    engine = ServeEngine(serve_app, paper_decode, timeout_s=120)
    first = engine.generate(make_requests(2, seed=12))
    clone = pickle.loads(pickle.dumps(engine))
    assert [r.text for r in clone.generate(make_requests(2, seed=12))] == [r.text for r in first]


@pytest.mark.vllm
def test_bad_items_and_timeouts_become_reply_errors(serve_app, paper_decode):
    requests = make_requests(4, seed=13)
    requests[1].images = requests[1].images[:1]  # one image short for its prompt
    requests[1].image_uuids = requests[1].image_uuids[:1]
    replies = ServeEngine(serve_app, paper_decode, timeout_s=120).generate(requests)
    assert replies[1].error and replies[1].text is None
    assert replies[1].extra.get("attempts") is None  # bad input is not retried
    assert all(replies[i].error is None and replies[i].text for i in (0, 2, 3))

    impatient = ServeEngine(serve_app, paper_decode, timeout_s=1e-4, retries=1, backoff_s=0.01)
    timed_out = impatient.generate([requests[0], requests[2]])
    assert all(r.error and "timeout" in r.error and r.text is None for r in timed_out), timed_out
    assert timed_out[0].extra["attempts"] == 2


@pytest.mark.vllm
def test_unreachable_app_marks_every_item(ray_cluster, paper_decode):
    engine = ServeEngine("no-such-app", paper_decode, timeout_s=5, retries=1, backoff_s=0.01)
    replies = engine.generate(make_requests(3, seed=14))
    assert len(replies) == 3
    assert all(isinstance(r, Reply) and r.error and "after 2 attempts" in r.error
               for r in replies)


@pytest.mark.vllm
def test_killed_replica_is_replaced_and_no_item_is_lost(serve_app, vllm_engine, paper_decode):
    import ray

    requests = make_requests(24, seed=15)
    expected = [r.text for r in vllm_engine.generate(requests, paper_decode)]
    victim = _replica_info(serve_app)["actor_id"]
    engine = ServeEngine(serve_app, paper_decode, timeout_s=120, retries=3, per_call=4,
                         max_in_flight=8, queue_timeout_s=600, backoff_s=0.5)
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(engine.generate(requests)))
    worker.start()
    time.sleep(1.0)  # the first calls are in the replica
    ray.kill(_replica_actor(serve_app), no_restart=True)
    worker.join(timeout=900)
    assert not worker.is_alive()
    assert len(result) == len(requests)
    assert [r.error for r in result] == [None] * len(requests)
    assert [r.text for r in result] == expected
    assert _replica_info(serve_app)["actor_id"] != victim  # Serve started a new replica


def _replica_actor(app_name: str):
    """The app's replica actor (Serve names them SERVE_REPLICA::<app>#<deployment>#<id>)."""
    import ray
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app_name}#")]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
