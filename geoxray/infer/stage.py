"""The Ray Data stage: a batch of item rows -> a batch of prediction rows.

Within one worker: load each image once (LRU, items come sorted by image set), crop with
numpy views, build requests (prompt + images + content-hash uuids), call the engine once for
the whole batch, parse. Decoding and the engine call share a worker on purpose: decoded
arrays never cross the object store per item; only the engine's own transport copies them.
"""
from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa

from geoxray.bench.parse import parse_reply
from geoxray.bench.prompts import get_prompt
from geoxray.bench.schema import PREDICTION_SCHEMA
from geoxray.bench.tasks import get_task
from geoxray.infer.engine import Engine, Reply, Request
from geoxray.infer.config import ProtocolConfig
from geoxray.infer.images import ImageCache, ImageError
from geoxray.infer.protocol import ProtocolCrops
from geoxray.infer.registry import close_engine


class PredictStage:
    """Callable class for `Dataset.map_batches` (one instance per actor)."""

    def __init__(self, engine_builder: Callable[[], Engine], image_root: str, model_name: str,
                 decode_mode: str, image_cache_size: int = 64,
                 protocol: ProtocolConfig | None = None):
        self.engine = engine_builder()
        self.images = ImageCache(image_root, capacity=image_cache_size)
        self.model_name = model_name
        self.decode_mode = decode_mode
        self.crops = ProtocolCrops(protocol)  # the protocol's crop boxes and crop bytes

    def close(self) -> None:
        """Release the engine's own resources (client threads). Ray Data deletes the stage
        when its actor exits, which calls this."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            close_engine(engine)

    def __del__(self) -> None:
        self.close()

    def build_request(self, row: dict) -> Request:
        task = get_task(row["task"])
        prompt = get_prompt(task.name)
        images, uuids = [], []
        for position, rel_path in enumerate(row["image_paths"]):
            array, digest = self.images.get(rel_path)
            is_aerial = position < task.n_aerials
            crop = row["crop"] if is_aerial else "none"
            image, image_uuid = self.crops(array, digest, crop, rel_path)
            images.append(image)
            uuids.append(image_uuid)
        return Request(key=row["key"], item_id=row["item_id"], task=task.name,
                       system=prompt.system, user=prompt.user, images=images,
                       image_uuids=uuids, options=task.options, answer_field=task.answer_field)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        replies: list[Reply | None] = [None] * len(rows)
        requests, positions = [], []
        for i, row in enumerate(rows):
            try:
                requests.append(self.build_request(row))
                positions.append(i)
            except ImageError as exc:
                replies[i] = Reply(error=exc.detail, extra={"reason": exc.reason})
        if requests:
            started = time.perf_counter()
            try:
                answered = self.engine.generate(requests)
                if len(answered) != len(requests):
                    raise RuntimeError(f"engine answered {len(answered)} of {len(requests)}")
            except Exception as exc:  # a broken engine marks the batch, the run goes on
                detail = f"{exc.__class__.__name__}: {exc}"[:500]
                answered = [Reply(error=detail, extra={"reason": "engine_error"})
                            for _ in requests]  # one each: the loop below sets latency_s
            per_item = (time.perf_counter() - started) / len(requests)
            for i, reply in zip(positions, answered):
                if not reply.latency_s:
                    reply.latency_s = per_item
                replies[i] = reply
        return pa.Table.from_pylist([self._prediction(r, rep) for r, rep in zip(rows, replies)],
                                    schema=PREDICTION_SCHEMA)

    def _prediction(self, row: dict, reply: Reply) -> dict:
        task = get_task(row["task"])
        if reply.error is not None:
            pred, reason = None, reply.extra.get("reason") or _error_reason(reply.error)
        else:
            pred, reason = parse_reply(task, reply.text, self.decode_mode)
        return dict(key=row["key"], item_id=row["item_id"], model=self.model_name,
                    decode=self.decode_mode, task=row["task"], instance=row["instance"],
                    location=row["location"], crop=row["crop"], answer=row["answer"],
                    reply=reply.text, pred=pred, invalid_reason=reason, error=reply.error,
                    option_probs=reply.option_probs, prompt_tokens=reply.prompt_tokens,
                    generated_tokens=reply.generated_tokens, latency_s=reply.latency_s)


def _error_reason(detail: str) -> str:
    return "timeout" if "timeout" in detail.lower() else "engine_error"
