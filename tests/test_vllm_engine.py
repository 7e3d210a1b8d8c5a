"""The in-process vLLM engine on the tiny model, option scoring, model configs, the builder."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest_vllm import ROOT, load_model_config, make_requests
from geoxray.bench.tasks import TASK_BY_NAME, TASKS
from geoxray.infer.chat import chat_messages, option_text
from geoxray.infer.config import DecodeConfig
from geoxray.infer.option_scores import END, build_trie, normalise, option_logprobs

pytest_plugins = ("conftest_vllm",)


# --- option scoring (pure) ---------------------------------------------------------------
def test_trie_scores_shared_prefixes_exactly():
    # "top" = [7], "top left" = [7, 8], "left" = [8]; stop tokens 1 and 2
    trie = build_trie({"top": [7], "top_left": [7, 8], "left": [8]})
    assert trie.children[()] == (7, 8)
    assert set(trie.children[(7,)]) == {END, 8}
    assert trie.token_ids_to_score((7,), (1, 2)) == [1, 2, 8]
    lp = {(): {7: math.log(0.5), 8: math.log(0.2)},
          (7,): {1: math.log(0.1), 2: math.log(0.1), 8: math.log(0.6)},
          (7, 8): {1: math.log(0.9), 2: math.log(0.05)},
          (8,): {1: math.log(0.3), 2: math.log(0.0 + 1e-300)}}
    got = option_logprobs(trie, lp, (1, 2))
    expect = {"top": 0.5 * 0.2, "top_left": 0.5 * 0.6 * 0.95, "left": 0.2 * 0.3}
    for o, p in expect.items():
        assert math.isclose(math.exp(got[o]), p, rel_tol=1e-9)
    probs, mass = normalise(got)
    assert math.isclose(mass, sum(expect.values()), rel_tol=1e-9)
    assert math.isclose(probs["top_left"], expect["top_left"] / mass, rel_tol=1e-9)


def test_trie_rejects_options_that_tokenize_alike():
    with pytest.raises(ValueError):
        build_trie({"a": [1, 2], "b": [1, 2]})


# --- configs -------------------------------------------------------------------------------
def test_every_model_config_loads():
    names = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    assert {"tiny_qwen2vl", "gpt4o", "random", "constant", "prior", "qwen2_vl_7b"} <= set(names)
    for name in names:
        cfg = load_model_config(name)  # an unknown key raises
        assert cfg.engine in ("random", "constant", "prior", "vllm", "openai"), name
        if cfg.engine == "vllm":
            assert cfg.path and cfg.limit_mm_per_prompt >= 5, name
        if cfg.engine == "openai":
            assert cfg.base_url and cfg.api_key_env, name
        if cfg.engine in ("random", "constant", "prior"):
            assert cfg.name == cfg.engine


def test_engine_args_follow_the_model_config():
    from geoxray.infer.vllm_engine import engine_args, server_command
    cfg = load_model_config("internvl2_8b")
    args = engine_args(cfg)
    assert args["model"] == "OpenGVLab/InternVL2-8B" and args["trust_remote_code"] is True
    assert args["limit_mm_per_prompt"] == {"image": 5}
    assert args["mm_processor_kwargs"] == {"max_dynamic_patch": 6}  # from engine_kwargs
    assert args["gpu_memory_utilization"] == 0.9 and args["distributed_executor_backend"] == "uni"
    qwen = load_model_config("qwen2_5_vl_72b")
    args = engine_args(qwen)
    assert args["mm_processor_kwargs"] == {"min_pixels": 200704, "max_pixels": 602112}
    assert args["tensor_parallel_size"] == 4 and args["distributed_executor_backend"] == "mp"
    cmd = server_command(qwen, port=8123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--no-trust-remote-code" in cmd
    assert cmd[cmd.index("--limit-mm-per-prompt") + 1] == '{"image": 5}'


# --- the tiny model builder ----------------------------------------------------------------
def test_tiny_model_builders_racing_leave_one_folder(tmp_path, monkeypatch):
    """Builders racing (as separate processes do) publish one folder by atomic rename and
    leave no temp folders; later calls reuse it. The build itself is faked to be slow."""
    import contextlib
    import threading
    import time

    from geoxray.models import tiny as tiny_model
    calls = []

    def slow_build(spec, out):
        calls.append(out)
        (out / "model.safetensors").write_text(str(out))
        time.sleep(0.3)

    monkeypatch.setattr(tiny_model, "_build", slow_build)
    monkeypatch.setattr(tiny_model, "_BUILD_LOCK", contextlib.nullcontext())  # no in-process lock
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        tiny_model.ensure_tiny_qwen2vl(cache_dir=tmp_path, seed=3))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 3 and len(set(paths)) == 1  # all raced, one won
    built = paths[0]
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temp leftovers
    assert (built / tiny_model.DONE_MARKER).exists()
    assert (built / "model.safetensors").read_text() in map(str, calls)
    assert tiny_model.ensure_tiny_qwen2vl(cache_dir=tmp_path, seed=3) == built
    assert len(calls) == 3  # cached: no rebuild
    assert tiny_model.ensure_tiny_qwen2vl(cache_dir=tmp_path, seed=4) != built


def test_tiny_model_path_resolution():
    from geoxray.models.tiny import resolve_model_path
    assert resolve_model_path("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    with pytest.raises(ValueError, match="tiny:qwen2vl"):
        resolve_model_path("tiny:llama")


# --- the engine ----------------------------------------------------------------------------
def _hf_prompt(model_dir: Path, request):
    from PIL import Image
    from transformers import AutoProcessor
    proc = AutoProcessor.from_pretrained(model_dir)
    messages = chat_messages(request, lambda img, uuid: {"type": "image"})
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [Image.fromarray(im) for im in request.images]
    return proc, proc(text=[text], images=images, return_tensors="pt")


@pytest.mark.vllm
def test_paper_mode_answers_every_request_and_counts_tokens(vllm_engine, paper_decode):
    from geoxray.models.tiny import ensure_tiny_qwen2vl
    requests = make_requests(14, seed=1)
    replies = vllm_engine.generate(requests, paper_decode)
    assert len(replies) == len(requests)
    texts = set()
    for req, rep in zip(requests, replies):
        assert rep.error is None and isinstance(rep.text, str)
        assert 1 <= rep.generated_tokens <= paper_decode.max_tokens
        assert rep.latency_s > 0
        texts.add(rep.text)
    assert len(texts) > len(requests) // 2  # replies depend on the images and prompt
    # prompt tokens = the HF processor's expanded prompt (text + image placeholder tokens)
    model_dir = ensure_tiny_qwen2vl()
    for req, rep in list(zip(requests, replies))[:7]:
        _, inputs = _hf_prompt(model_dir, req)
        assert rep.prompt_tokens == inputs["input_ids"].shape[1], req.task


@pytest.mark.vllm
def test_choice_mode_gives_valid_options_and_probabilities(vllm_engine, choice_decode):
    requests = make_requests(14, seed=2)
    replies = vllm_engine.generate(requests, choice_decode)
    for req, rep in zip(requests, replies):
        assert rep.error is None, rep.error
        assert rep.text in [option_text(o) for o in req.options]
        assert set(rep.option_probs) == set(req.options)
        assert abs(sum(rep.option_probs.values()) - 1.0) < 1e-3
        assert all(0.0 <= p <= 1.0 for p in rep.option_probs.values())
        assert 0.0 < rep.extra["option_mass"] <= 1.0
        assert rep.prompt_tokens > 0 and rep.generated_tokens >= 1
        # one request per trie node; all but the first find the prompt in the prefix cache
        # (whole 128-token blocks on CPU)
        assert rep.extra["scoring_requests"] >= len(req.options) + 1
        assert rep.extra["scoring_cached_tokens"] >= (rep.extra["scoring_requests"] - 1) * 128


@pytest.mark.vllm
def test_greedy_decoding_is_deterministic(vllm_engine, paper_decode, choice_decode):
    requests = make_requests(7, seed=3)
    for decode in (paper_decode, choice_decode):
        first = vllm_engine.generate(requests, decode)
        again = vllm_engine.generate(list(reversed(requests)), decode)[::-1]  # other batch order
        assert [r.text for r in first] == [r.text for r in again]
        if decode.mode == "choice":
            for a, b in zip(first, again):
                for o in a.option_probs:
                    assert abs(a.option_probs[o] - b.option_probs[o]) < 1e-4


def hf_option_probs(model, model_dir: Path, req) -> tuple[dict[str, float], float]:
    """P(option) and the options' mass from a transformers forward pass of `model` (any
    Qwen2-VL module: plain, peft-wrapped or merged) on the request's exact prompt."""
    import torch
    proc, inputs = _hf_prompt(model_dir, req)
    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    logp = {}
    for option in req.options:
        ids = proc.tokenizer.encode(option_text(option), add_special_tokens=False) + [eos]
        full = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)
        types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(ids),
                           dtype=inputs["mm_token_type_ids"].dtype)], dim=1)
        with torch.no_grad():
            logits = model(input_ids=full, attention_mask=torch.ones_like(full),
                           mm_token_type_ids=types, pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"]).logits[0]
        lsm = torch.log_softmax(logits.float(), dim=-1)
        start = inputs["input_ids"].shape[1]
        logp[option] = sum(float(lsm[start - 1 + i, t]) for i, t in enumerate(ids))
    return normalise(logp)


@pytest.mark.vllm
def test_option_probabilities_match_a_transformers_forward_pass(vllm_engine, choice_decode):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from geoxray.models.tiny import ensure_tiny_qwen2vl
    model_dir = ensure_tiny_qwen2vl()
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    # pose (single-token options), intra-map (options sharing first tokens), cross-map (5 images)
    tasks = [TASK_BY_NAME[n] for n in ("pose_fixed", "intra_map", "crossmap_std", "loc_prior")]
    requests = make_requests(4, seed=4, tasks=tasks)
    replies = vllm_engine.generate(requests, choice_decode)
    for req, rep in zip(requests, replies):
        expect, mass = hf_option_probs(model, model_dir, req)
        for option in req.options:
            assert abs(rep.option_probs[option] - expect[option]) < 1e-3, (req.task, option)
        assert math.isclose(rep.extra["option_mass"], mass, rel_tol=1e-2), req.task


@pytest.mark.vllm
def test_bad_items_get_errors_and_the_rest_are_answered(vllm_engine, paper_decode):
    good = make_requests(3, seed=5)
    alone = vllm_engine.generate(good, paper_decode)
    wrong_count = make_requests(1, seed=6)[0]
    wrong_count.images = wrong_count.images[:1]
    wrong_count.image_uuids = wrong_count.image_uuids[:1]
    not_uint8 = make_requests(1, seed=7)[0]
    not_uint8.images = [im.astype(np.float32) for im in not_uint8.images]
    too_long = make_requests(1, seed=8)[0]
    too_long.user = too_long.user + " word" * 3000  # beyond max_model_len: vLLM rejects it
    batch = [good[0], wrong_count, good[1], not_uint8, too_long, good[2]]
    replies = vllm_engine.generate(batch, paper_decode)
    for i in (1, 3, 4):
        assert replies[i].text is None and replies[i].error, i
        assert replies[i].extra.get("retryable") is False
    assert "images" in replies[1].error and "uint8" in replies[3].error
    assert [replies[i].text for i in (0, 2, 5)] == [r.text for r in alone]


@pytest.mark.vllm
def test_timeout_marks_items_and_the_engine_goes_on(vllm_engine, paper_decode):
    requests = make_requests(3, seed=9)
    slow = vllm_engine._call(vllm_engine.core.generate(requests, paper_decode, timeout_s=1e-4))
    assert all(r.error and r.error.startswith("timeout") and r.extra["retryable"] for r in slow)
    replies = vllm_engine.generate(requests, paper_decode)
    assert all(r.error is None for r in replies)


@pytest.mark.vllm
def test_every_task_prompt_fits(vllm_engine):
    decode = DecodeConfig(mode="choice", max_tokens=8)
    replies = vllm_engine.generate(make_requests(len(TASKS), seed=10), decode)
    assert all(r.error is None for r in replies)
    assert max(r.prompt_tokens for r in replies) < 2048
