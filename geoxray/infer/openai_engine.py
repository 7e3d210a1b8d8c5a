"""Any OpenAI-compatible chat endpoint (GPT-4o, vLLM's own server, ...) behind the Engine
interface.

The conversation is the one the vLLM engine builds (`chat.chat_messages`), with each image as
a data URL in prompt order: lossless PNG (`model.api_image: png`, protocol=clean), so a vLLM
server hosting the same weights gives the same greedy answers as the in-process engine, or
JPEG (`jpeg:100` under protocol=paper: the authors' model/CloseAI.py re-encodes every image
as JPEG quality 100). Up to `ModelConfig.concurrency` requests are in
flight; connection errors, timeouts, 429 and 5xx are retried with exponential backoff, other
4xx answers are that item's Reply.error. The API key is read from the environment variable
named by `api_key_env` and is never logged, printed or pickled.

Choice mode (`ModelConfig.openai_choice`): "structured_outputs" sends vLLM's guided choice
(`structured_outputs.choice`), "json_schema" OpenAI's response_format with an enum of the
options (the answer is unwrapped from the JSON), "none" leaves the reply free. Option
probabilities come from the first token's top log-probs when every option is one distinct
token there (renormalised over the options; `extra["option_probs_kind"] = "first_token"`),
else they are None: an API cannot score arbitrary continuations as the vLLM engine does.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from geoxray.infer.chat import chat_messages, option_text
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.infer.engine import Reply, Request
from geoxray.redact import redact

log = logging.getLogger(__name__)
CHOICE_MODES = ("structured_outputs", "json_schema", "none")


def image_data_url(image: np.ndarray, encoding: str = "png") -> str:
    """An RGB array as a data URL: "png", or "jpeg:<quality>" (PIL's other defaults)."""
    from PIL import Image

    from geoxray.infer.protocol import api_image_quality
    quality = api_image_quality(encoding)
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if quality is None:
        pil.save(buf, format="PNG")
    else:
        pil.save(buf, format="JPEG", quality=quality)
    mime = "image/png" if quality is None else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _api_key(model: ModelConfig) -> str:
    if not model.api_key_env:
        return "EMPTY"  # local servers need no key; the client insists on a value
    key = os.environ.get(model.api_key_env)
    if not key:
        raise ValueError(f"config key 'model.api_key_env': environment variable "
                         f"{model.api_key_env} is not set")
    return key


class OpenAIEngine:
    def __init__(self, model: ModelConfig, decode: DecodeConfig | None = None):
        if not model.base_url:
            raise ValueError(f"model {model.name!r}: config key 'model.base_url' is required")
        if model.openai_choice not in CHOICE_MODES:
            raise ValueError(f"config key 'model.openai_choice': {model.openai_choice!r} "
                             f"is not one of {CHOICE_MODES}")
        _api_key(model)  # fail at start, naming the variable, if the key is missing
        self.name = model.name
        self.model = model
        self.decode = decode or DecodeConfig()
        self._client = None
        self._pool: ThreadPoolExecutor | None = None
        self._urls: OrderedDict[str, str] = OrderedDict()  # image uuid -> data URL

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine(name={self.name!r}, base_url={self.model.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "decode": self.decode, "_client": None,
                "_pool": None, "_urls": OrderedDict()}

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, self.model.concurrency),
                                            thread_name_prefix="openai")
        return list(self._pool.map(self._answer, requests))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # --- one request --------------------------------------------------------------------
    def _answer(self, request: Request) -> Reply:
        t0 = time.perf_counter()
        try:
            body = self._body(request)
        except Exception as exc:
            return Reply(error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - t0)
        reply = self._send_with_retries(body, request)
        reply.error = redact(reply.error)  # an API error body may echo the key
        reply.latency_s = time.perf_counter() - t0
        return reply

    def _body(self, request: Request) -> dict[str, Any]:
        d = self.decode
        body: dict[str, Any] = {
            "model": self.model.path or self.model.name,
            "messages": chat_messages(request, self._image_part, self.model.message_layout),
            "temperature": d.temperature, "max_tokens": d.max_tokens, "seed": d.seed,
        }
        if d.mode == "choice":
            shown = [option_text(o) for o in request.options]
            body.update(logprobs=True, top_logprobs=min(20, max(5, len(shown))))
            if self.model.openai_choice == "structured_outputs":
                body["extra_body"] = {"structured_outputs": {"choice": shown}}
            elif self.model.openai_choice == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "answer", "strict": True, "schema": {
                        "type": "object", "additionalProperties": False, "required": ["answer"],
                        "properties": {"answer": {"type": "string", "enum": shown}}}}}
        return body

    def _image_part(self, image: np.ndarray, image_uuid: str) -> dict[str, Any]:
        url = self._urls.get(image_uuid)
        if url is None:  # the ~40 questions of an image set encode it once
            url = image_data_url(image, self.model.api_image)
            self._urls[image_uuid] = url
            while len(self._urls) > 64:
                self._urls.popitem(last=False)
        return {"type": "image_url", "image_url": {"url": url}}

    def _get_client(self):
        if self._client is None:
            from openai import OpenAI
            self._client = OpenAI(base_url=self.model.base_url, api_key=_api_key(self.model),
                                  timeout=self.model.request_timeout_s, max_retries=0)
        return self._client

    def _send_with_retries(self, body: dict[str, Any], request: Request) -> Reply:
        import openai

        transient = (openai.APIConnectionError, openai.RateLimitError,
                     openai.InternalServerError)
        error = "not attempted"
        for attempt in range(self.model.retries + 1):
            if attempt:
                time.sleep(min(30.0, 1.0 * 2 ** (attempt - 1)))
            try:
                response = self._get_client().chat.completions.create(**body)
                return self._reply(response, request)
            except transient as exc:
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("request %s failed (attempt %d/%d): %s", request.key, attempt + 1,
                            self.model.retries + 1, redact(error))
            except openai.APIStatusError as exc:  # 4xx: this request is wrong, do not retry
                return Reply(error=f"{type(exc).__name__} {exc.status_code}: {str(exc)[:300]}")
            except Exception as exc:
                return Reply(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        return Reply(error=f"failed after {self.model.retries + 1} attempts: {error}",
                     extra={"attempts": self.model.retries + 1})

    def _reply(self, response, request: Request) -> Reply:
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        reply = Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      generated_tokens=getattr(usage, "completion_tokens", 0) or 0,
                      extra={"finish_reason": choice.finish_reason})
        if self.decode.mode == "choice":
            if self.model.openai_choice == "json_schema":
                try:
                    reply.text = str(json.loads(text)["answer"])
                except (ValueError, KeyError, TypeError):
                    pass  # keep the raw text; the parser reports it invalid
            reply.option_probs = _first_token_probs(choice, request.options)
            if reply.option_probs is not None:
                reply.extra["option_probs_kind"] = "first_token"
        return reply


def _first_token_probs(choice, options: Sequence[str]) -> dict[str, float] | None:
    """P(option) from the first generated token's top log-probs, when each option is one
    distinct token among them; None otherwise."""
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    if not content:
        return None
    first = {}
    for alt in content[0].top_logprobs or []:
        first.setdefault(alt.token, alt.logprob)
    found = {o: first.get(option_text(o)) for o in options}
    if any(v is None or v == -math.inf for v in found.values()):
        return None
    top = max(found.values())
    weights = {o: math.exp(v - top) for o, v in found.items()}
    total = sum(weights.values())
    return {o: w / total for o, w in weights.items()}
