"""Baseline engines behind the same interface as vLLM: they answer in the paper's JSON format
(so replies go through the authors' parsers) and, in `choice` mode, with option probabilities.
Each answer is seeded by (seed, item_id), so results do not depend on batching or order."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from geoxray.bench.tasks import get_task
from geoxray.infer.engine import Reply, Request

KINDS = ("random", "constant", "prior")


def _item_rng(seed: int, item_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


@dataclass
class BaselineEngine:
    """kind: `random` (uniform over options), `constant` (always the first option) or
    `prior` (samples the gold marginal of the task, given as option -> share).
    `latency_s` simulates a model's cost per item (profiling, planning and kill tests)."""
    kind: str
    mode: str = "paper"
    seed: int = 0
    gold_marginals: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model.engine: unknown baseline {self.kind!r}")
        self.name = self.kind

    def _distribution(self, request: Request) -> np.ndarray:
        k = len(request.options)
        if self.kind == "constant":
            return np.eye(k)[0]
        if self.kind == "prior":
            shares = self.gold_marginals.get(request.task, {})
            p = np.array([shares.get(o, 0.0) for o in request.options], dtype=float)
            if p.sum() > 0:
                return p / p.sum()
        return np.full(k, 1.0 / k)

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        if self.latency_s:
            time.sleep(self.latency_s * len(requests))
        replies = []
        for request in requests:
            p = self._distribution(request)
            option = request.options[_item_rng(self.seed, request.item_id).choice(len(p), p=p)]
            task = get_task(request.task)
            if self.mode == "choice":
                text = option.replace("_", " ")
                probs = {o: float(v) for o, v in zip(request.options, p)}
            else:
                text, probs = task.answer_json(option), None
            replies.append(Reply(text=text, option_probs=probs))
        return replies
