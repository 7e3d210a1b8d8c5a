"""Typed configs of a model and of a decoding mode (what conf/model/*.yaml and
conf/decode/*.yaml hold). OmegaConf checks every key against these at start."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    name: str = "random"  # the model's name in results and tables
    engine: str = "random"  # random | constant | prior | vllm | openai
    path: Optional[str] = None  # HF id or local dir; "tiny:qwen2vl" builds the test model
    # a LoRA adapter folder (peft layout) on top of `path`: part of the model's identity, so
    # its answers never mix with the base model's (infer/adapter.py checks it at start)
    adapter: Optional[str] = None
    # serve LoRA adapters up to this rank from the same replica (None: only model.adapter's).
    # A sweep sets it on a base model and each of its adapters, so one loaded base answers
    # for all of them; it changes no answer, so it is not part of any key
    lora_max_rank: Optional[int] = None
    seed: int = 0
    # vLLM (engine: vllm)
    # the architecture of `path` with random weights, built offline (no download): a real
    # model's compute for profiling and planning (geoxray/models/random_weights.py)
    random_weights: bool = False
    dtype: str = "auto"
    max_model_len: int = 4096
    limit_mm_per_prompt: int = 5  # cross-map items carry 5 images
    min_pixels: Optional[int] = None  # image pixel budget handed to the HF processor
    max_pixels: Optional[int] = None
    trust_remote_code: bool = False  # off unless a model config turns it on
    tensor_parallel_size: int = 1
    gpus_per_replica: float = 0.0  # 0 on CPU
    cpus_per_replica: float = 1.0
    num_replicas: int = 1
    max_num_seqs: int = 64
    max_in_flight: int = 64  # requests in flight per replica
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to vLLM as is
    # OpenAI-compatible API (engine: openai)
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None  # name of the env variable holding the key
    concurrency: int = 8
    # how choice mode constrains an API model: structured_outputs (vLLM servers' guided
    # choice), json_schema (OpenAI response_format with an enum of the options), none
    openai_choice: str = "structured_outputs"
    # client side of any remote engine
    request_timeout_s: float = 600.0
    retries: int = 2
    # what the model is sent, set by the protocol (infer/protocol.py): an API's image
    # encoding ("png" lossless, or "jpeg:<quality>"), and where the images go in the user
    # message ("in_place": at the prompt's <image> marks; "text_first": text, then images)
    api_image: str = "png"
    message_layout: str = "in_place"
    # per protocol name, the settings this model runs with under it (model or decode
    # fields), e.g. protocols.paper = the authors' pixel budget and generation settings
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DecodeConfig:
    mode: str = "paper"  # paper: free text + authors' regexes; choice: constrained options
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    # 1.0 = none; null = the model's generation_config.json value (what ms-swift and
    # transformers' generate fill in when a request leaves it unset)
    repetition_penalty: Optional[float] = 1.0


@dataclass
class ProtocolConfig:
    """How items reach the model (conf/protocol/*.yaml; docs/protocol.md)."""
    name: str = "paper"  # paper: as the authors' harness ran; clean: lossless, uniform
    crop_box: str = "pil"  # pil: the authors' float edges rounded by PIL | exact: crop_box()
    # re-save each crop in its source file's format with PIL's defaults and read it back
    # (the authors' cropper writes a temp file: JPEG quality 75, 4:2:0 for a .jpg tile)
    crop_resave: bool = True
    api_image: str = "jpeg:100"  # the openai engine's image encoding: png | jpeg:<quality>
    model_settings: bool = True  # apply the model's protocols.<name> settings
