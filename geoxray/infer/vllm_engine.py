"""vLLM's async engine behind the Engine interface.

`AsyncVLLMEngine` lives on one event loop (a Serve replica's, or the background loop of
`VLLMEngine`) and answers many requests at once: every item of a batch is submitted
concurrently (bounded by `max_in_flight`) and vLLM batches them continuously.

Prompts go through vLLM's own renderer (its chat template handling and per-model image
placeholders), with each image as a PIL part carrying the request's image uuid, so vLLM's
multimodal processor/encoder caches and the prefix cache hit across the questions that share
an image set.

Decode modes:
- paper: greedy (or seeded) free text up to `max_tokens`: the authors' protocol. A
  `repetition_penalty` of None takes the model's generation_config.json value, as ms-swift
  fills an unset one (1.05 for the Qwen2-VL / Qwen2.5-VL instruct checkpoints).
- choice: two scores of the same prompt. `Reply.text` is the reply generated under vLLM's
  structured outputs (guided choice over the options as shown, "top left"), the constrained
  choice. `Reply.option_probs` are exact option probabilities from `option_scores` (trie of
  the options' tokens, scored with `logprob_token_ids`, raw log-probs, no constraint): the
  constrained first-token log-probs alone would be renormalised over the allowed tokens and
  lose options sharing a first token ("top" / "top left"). The root node is scored first so
  the other requests of the item find the prompt in the prefix cache.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Any, Sequence

import numpy as np

from geoxray.infer.adapter import AdapterRef, adapter_ref, engine_lora_rank
from geoxray.infer.chat import chat_messages, option_text
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.engine import Reply, Request
from geoxray.infer.option_scores import Prefix, build_trie, normalise, option_logprobs
from geoxray.models.tiny import resolve_model_path

log = logging.getLogger(__name__)


def model_folder(model: ModelConfig) -> str:
    """The folder or id vLLM loads for `model`: a tiny model or a random-weights model built
    here (cached), else model.path as given."""
    if model.random_weights:
        from geoxray.models.random_weights import ensure_random_model
        mm_kwargs = (model.engine_kwargs or {}).get("mm_processor_kwargs") or {}
        return str(ensure_random_model(model.path, model.min_pixels, model.max_pixels,
                                       max_tiles=mm_kwargs.get("max_dynamic_patch")))
    return resolve_model_path(model.path, model.seed)


def engine_args(model: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> vLLM engine arguments (engine_kwargs win; their mm_processor_kwargs merge)."""
    if not model.path:
        raise ValueError(f"model {model.name!r}: config key 'model.path' is required for vllm")
    extra = dict(model.engine_kwargs or {})
    mm_kwargs = dict(extra.pop("mm_processor_kwargs", None) or {})
    if model.min_pixels is not None:
        mm_kwargs["min_pixels"] = model.min_pixels
    if model.max_pixels is not None:
        mm_kwargs["max_pixels"] = model.max_pixels
    path = model_folder(model)
    if model.random_weights:  # the real shapes, weights drawn by vLLM's dummy loader
        extra.setdefault("load_format", "dummy")
        # InternVL's remote-code processor option, built into the random model's processor
        mm_kwargs.pop("max_dynamic_patch", None)
    args: dict[str, Any] = dict(
        model=path, dtype=model.dtype,
        max_model_len=model.max_model_len, limit_mm_per_prompt={"image": model.limit_mm_per_prompt},
        mm_processor_kwargs=mm_kwargs or None, trust_remote_code=model.trust_remote_code,
        tensor_parallel_size=model.tensor_parallel_size, max_num_seqs=model.max_num_seqs,
        enable_prefix_caching=model.enable_prefix_caching, enforce_eager=model.enforce_eager,
        seed=model.seed, disable_log_stats=True,
    )
    # TP 1: the worker runs inside the engine-core process (one process less to start);
    # TP > 1: worker processes inside this replica, which holds all the GPUs it needs
    args.setdefault("distributed_executor_backend",
                    "uni" if model.tensor_parallel_size == 1 else "mp")
    lora_rank = engine_lora_rank(model)
    if lora_rank:  # LoRA on this base, the adapter chosen per request (infer/adapter.py)
        args.update(enable_lora=True, max_lora_rank=lora_rank)
    args.update(extra)
    return args


def lora_request(adapter: AdapterRef | None):
    """An adapter as vLLM's per-request LoRARequest (None: the base model)."""
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest
    return LoRARequest(lora_name=f"{adapter.name}-{adapter.hash}", lora_int_id=adapter.lora_id,
                       lora_path=adapter.path)


def server_command(model: ModelConfig, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """`vllm serve`'s OpenAI-compatible server with the same engine settings as ours."""
    import sys
    args = engine_args(model)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host,
           "--port", str(port), "--served-model-name", model.path or model.name]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or key == "disable_log_stats":
            continue
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value)]
        else:
            cmd += [flag, str(value)]
    return cmd


def repetition_penalty(decode: DecodeConfig, model_config) -> float:
    """The decode's value, or (None) the checkpoint's generation_config.json one as vLLM reads
    it (`generation_config="auto"`, what ms-swift fills in for an unset value); 1.0 when the
    checkpoint sets none. `model_config`: vLLM's ModelConfig of the loaded model."""
    if decode.repetition_penalty is not None:
        return float(decode.repetition_penalty)
    return float(model_config.get_diff_sampling_param().get("repetition_penalty", 1.0))


def _pil_part(image: np.ndarray, image_uuid: str) -> dict[str, Any]:
    from PIL import Image
    return {"type": "image_pil", "image_pil": Image.fromarray(np.ascontiguousarray(image)),
            "uuid": image_uuid}


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying? Bad input (ours or vLLM's validation) fails the same way again."""
    from vllm.exceptions import VLLMClientError
    return not isinstance(exc, (ValueError, TypeError, KeyError, VLLMClientError))


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class AsyncVLLMEngine:
    """One vLLM AsyncLLM; construct it inside the event loop that will call it."""

    def __init__(self, model: ModelConfig):
        from vllm import AsyncEngineArgs
        from vllm.renderers.params import ChatParams
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model = model
        self.name = model.name
        t0 = time.perf_counter()
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(model)))
        self.start_s = time.perf_counter() - t0
        self.renderer = self.llm.renderer
        self.tokenizer = self.renderer.get_tokenizer()
        # as vLLM's LLM.chat renders: generation prompt on, and the chat template (not the
        # tokenizer) emits BOS/EOS
        from vllm.utils.mistral import is_mistral_tokenizer
        self.chat_params = ChatParams(chat_template_kwargs=dict(
            add_generation_prompt=True, continue_final_message=False, tools=None,
            tokenize=is_mistral_tokenizer(self.tokenizer)))
        self.tok_params = self.renderer.default_chat_tok_params.with_kwargs(
            add_special_tokens=False)
        self.stop_ids = self._stop_ids()
        self._gate: asyncio.Semaphore | None = None
        self._tries: dict[tuple[str, ...], Any] = {}
        log.info("vLLM engine %s ready in %.1fs", model.name, self.start_s)

    def _stop_ids(self) -> tuple[int, ...]:
        ids = {self.renderer.get_eos_token_id()}
        gen = self.llm.input_processor.generation_config_fields or {}
        more = gen.get("eos_token_id")
        ids.update([more] if isinstance(more, int) else (more or []))
        return tuple(sorted(i for i in ids if i is not None))

    # --- public -------------------------------------------------------------------------
    async def generate(self, requests: Sequence[Request], decode: DecodeConfig,
                       timeout_s: float | None = None,
                       adapter: AdapterRef | None = None) -> list[Reply]:
        """Every request answered (by `adapter` on this base, or the base itself when None);
        a failure or timeout is that item's Reply.error."""
        lora = lora_request(adapter)
        return list(await asyncio.gather(*(self.answer(r, decode, timeout_s, lora)
                                           for r in requests)))

    async def answer(self, request: Request, decode: DecodeConfig,
                     timeout_s: float | None = None, lora=None) -> Reply:
        if self._gate is None:
            self._gate = asyncio.Semaphore(max(1, self.model.max_in_flight))
        t0 = time.perf_counter()
        try:
            async with self._gate:
                coro = self._choice(request, decode, lora) if decode.mode == "choice" \
                    else self._paper(request, decode, lora)
                reply = await asyncio.wait_for(coro, timeout_s) if timeout_s else await coro
        except asyncio.TimeoutError:
            reply = Reply(error=f"timeout: no reply within {timeout_s}s",
                          extra={"retryable": True})
        except Exception as exc:  # one bad item never stops the batch
            if self.llm.errored:
                raise  # a dead engine is the replica's problem, not the item's
            reply = Reply(error=_error(exc), extra={"retryable": _is_transient(exc)})
        reply.latency_s = time.perf_counter() - t0
        return reply

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()

    # --- decode modes -------------------------------------------------------------------
    async def _paper(self, request: Request, decode: DecodeConfig, lora=None) -> Reply:
        from vllm import SamplingParams

        prompt = await self._render(request)
        params = SamplingParams(temperature=decode.temperature, max_tokens=decode.max_tokens,
                                seed=decode.seed,
                                repetition_penalty=repetition_penalty(decode,
                                                                      self.llm.model_config))
        out = await self._run(prompt, params, lora=lora)
        gen = out.outputs[0]
        return Reply(text=gen.text, prompt_tokens=len(out.prompt_token_ids or ()),
                     generated_tokens=len(gen.token_ids),
                     extra={"finish_reason": gen.finish_reason,
                            "cached_tokens": out.num_cached_tokens or 0})

    async def _choice(self, request: Request, decode: DecodeConfig, lora=None) -> Reply:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not request.options:
            raise ValueError("choice mode needs the task's options")
        prompt = await self._render(request)
        trie = self._trie(tuple(request.options))

        async def score(node: Prefix) -> tuple[Prefix, dict[int, float], int]:
            ids = trie.token_ids_to_score(node, self.stop_ids)
            params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=ids,
                                    detokenize=False)
            out = await self._run(prompt, params, suffix=node, lora=lora)
            step = out.outputs[0].logprobs[0]
            return node, {t: step[t].logprob for t in ids}, out.num_cached_tokens or 0

        shown = [option_text(o) for o in request.options]
        constrained = SamplingParams(
            temperature=decode.temperature, seed=decode.seed, max_tokens=decode.max_tokens,
            structured_outputs=StructuredOutputsParams(choice=shown))
        root = await score(())  # first, so the rest hit the prefix cache
        rest = [score(node) for node in trie.children if node != ()]
        gen_out, *scored = await asyncio.gather(self._run(prompt, constrained, lora=lora),
                                                *rest)
        node_logprobs = {node: lp for node, lp, _ in [root, *scored]}
        reused = sum(cached for _, _, cached in scored)  # prompt tokens found in the cache
        probs, mass = normalise(option_logprobs(trie, node_logprobs, self.stop_ids))
        gen = gen_out.outputs[0]
        return Reply(
            text=gen.text, option_probs=probs, prompt_tokens=len(gen_out.prompt_token_ids or ()),
            generated_tokens=len(gen.token_ids),
            extra={"finish_reason": gen.finish_reason, "option_mass": mass,
                   "scoring_requests": len(trie.children), "scoring_cached_tokens": reused,
                   "cached_tokens": gen_out.num_cached_tokens or 0})

    # --- plumbing -----------------------------------------------------------------------
    def _trie(self, options: tuple[str, ...]):
        if options not in self._tries:
            tokens = {o: self.tokenizer.encode(option_text(o), add_special_tokens=False)
                      for o in options}
            self._tries[options] = build_trie(tokens)
        return self._tries[options]

    async def _render(self, request: Request) -> dict[str, Any]:
        """The request as a token prompt (chat template applied, image placeholders not yet
        expanded) with its images and their uuids."""
        messages = chat_messages(request, _pil_part, self.model.message_layout)
        _, prompt = await self.renderer.render_messages_async(messages, self.chat_params)
        (tokens,) = await self.renderer.tokenize_prompts_async([prompt], self.tok_params)
        return tokens

    async def _run(self, prompt: dict[str, Any], params, suffix: Prefix = (), lora=None):
        """One engine request; `suffix` token ids are appended to the prompt; `lora` (a
        LoRARequest) picks the adapter."""
        p = {k: v for k, v in prompt.items() if k != "prompt"}
        p["prompt_token_ids"] = list(prompt["prompt_token_ids"]) + list(suffix)
        (engine_input,) = await self.renderer.render_cmpl_async([p], self.tok_params)
        final = None
        async for out in self.llm.generate(engine_input, params, uuid.uuid4().hex,
                                           lora_request=lora):
            final = out
        if final is None:
            raise RuntimeError("vLLM returned no output")
        return final


class VLLMEngine:
    """The in-process, synchronous Engine: an AsyncVLLMEngine on a background event loop."""

    def __init__(self, model: ModelConfig, decode: DecodeConfig | None = None,
                 timeout_s: float | None = None):
        self.name = model.name
        self.decode = decode or DecodeConfig()
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"vllm-{model.name}")
        self._thread.start()
        self.core: AsyncVLLMEngine = self._call(self._create(model))
        self.adapter = adapter_ref(model)

    @staticmethod
    async def _create(model: ModelConfig) -> AsyncVLLMEngine:
        return AsyncVLLMEngine(model)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, requests: Sequence[Request], decode: DecodeConfig | None = None
                 ) -> list[Reply]:
        return self._call(self.core.generate(requests, decode or self.decode, self.timeout_s,
                                             self.adapter))

    def shutdown(self) -> None:
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        self.core.shutdown()
        self.core.llm = None  # collected now, not by __del__ at interpreter exit
