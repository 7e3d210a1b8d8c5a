"""The engine interface: what every model backend (baselines, vLLM in a Serve replica, an
OpenAI-compatible API) implements. Plain dataclasses at the boundary, so the Ray Data stage
does not care which backend answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass
class Request:
    key: str  # prediction key (content hash of item, prompt, images, model, decode)
    item_id: str
    task: str  # a name from geoxray.bench.tasks.TASKS
    system: str
    user: str  # the user prompt; each "<image>" marks where the next image goes
    images: list[np.ndarray]  # HxWx3 uint8 RGB, in prompt order (crops are numpy views)
    image_uuids: list[str]  # content hash of each image's file (+ ":" + crop): cache keys
    options: tuple[str, ...]  # the task's canonical options (for constrained decoding)
    answer_field: str  # JSON field the task's parser reads


@dataclass
class Reply:
    text: str | None = None  # raw reply; None when the engine failed for this item
    option_probs: dict[str, float] | None = None  # P(option) when the engine scores options
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None  # why there is no reply (engine error, timeout, bad image, ...)
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """Anything with `generate`. Engines must answer every request (failures as Reply.error)
    and must be deterministic for a given request when decoding greedily or seeded. An
    engine holding threads or connections also has `close()`, which the stage calls when
    its worker is done (`registry.close_engine`). New engines register in `registry.py`."""

    name: str

    def generate(self, requests: Sequence[Request]) -> list[Reply]: ...
