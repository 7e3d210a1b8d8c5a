"""The Ray Data stage: a batch of item rows -> a batch of prediction rows.

Within one worker: load each image once (LRU, items come sorted by image set), crop with
numpy views, build requests (prompt + images + content-hash uuids), call the engine once for
the whole batch, parse. Decoding and the engine call share a worker on purpose: decoded
arrays never cross the object store per item; only the engine's own transport copies them.
"""
from __future__ import annotations

import re
import time
from typing import Callable

import pyarrow as pa

from geoxray.bench import variants
from geoxray.bench.parse import parse_reply
from geoxray.bench.prompts import get_prompt
from geoxray.bench.schema import PREDICTION_SCHEMA
from geoxray.bench.tasks import TASK_BY_NAME, get_task
from geoxray.infer.engine import Engine, Reply, Request
from geoxray.infer.config import ProtocolConfig
from geoxray.infer.images import DEFAULT_MAX_PIXELS, DEFAULT_READ_TIMEOUT_S, ImageCache, ImageError
from geoxray.infer.protocol import ProtocolCrops
from geoxray.infer.registry import close_engine
from geoxray.redact import redact

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class ItemError(Exception):
    """An item row the stage cannot turn into a request; `reason` is its invalid_reason:
    unknown_task | no_images | wrong_image_count | unknown_crop | malformed_item"""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RequestBuilder:
    """Item row -> engine `Request`: decoded images (each once per worker), the protocol's
    crops, the task's prompt, uuids for vLLM's caches. Evaluation and tuning share it."""

    def __init__(self, image_root: str, image_cache_size: int = 64,
                 protocol: ProtocolConfig | None = None,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 image_read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S):
        self.images = ImageCache(image_root, capacity=image_cache_size,
                                 max_pixels=max_image_pixels, read_timeout_s=image_read_timeout_s)
        self.crops = ProtocolCrops(protocol)  # the protocol's crop boxes and crop bytes

    def build_request(self, row: dict) -> Request:
        """The engine request of one item row, or ItemError / ImageError naming what is wrong."""
        task = TASK_BY_NAME.get(row.get("task"))  # type: ignore[arg-type]
        if task is None:
            raise ItemError("unknown_task", repr(row.get("task"))[:100])
        paths = row.get("image_paths")
        if not paths:
            raise ItemError("no_images", f"image_paths is {paths!r}")
        if len(paths) != task.n_aerials + 1:
            raise ItemError("wrong_image_count", f"{len(paths)} images; {task.name} shows "
                                                 f"{task.n_aerials} aerial + 1 ground")
        if row.get("crop") not in task.crops:
            raise ItemError("unknown_crop", f"{row.get('crop')!r} is not a crop of {task.name}")
        hashes = row.get("image_hashes") or []
        hashes = hashes if len(hashes) == len(paths) else [""] * len(paths)
        prompt = get_prompt(task.name)
        images, uuids = [], []
        for position, (rel_path, expected) in enumerate(zip(paths, hashes)):
            array, digest = self.images.get(rel_path, expected)
            is_aerial = position < task.n_aerials
            crop = row["crop"] if is_aerial else "none"
            x0, y0, x1, y1 = self.crops.box(crop, array.shape[1], array.shape[0])
            if x1 <= x0 or y1 <= y0:
                raise ImageError("image_too_small", f"{rel_path}: {array.shape[1]}x"
                                                    f"{array.shape[0]} has no {crop} crop")
            image, image_uuid = self.crops(array, digest, crop, rel_path)
            images.append(image)
            uuids.append(image_uuid)
        user = prompt.user
        variant = row.get("variant")
        if variant and variant != variants.IDENTITY:  # a consistency run's transformed item
            images, sources, suffixes = variants.variant_images(task.name, images, variant)
            uuids = [uuids[s] + x for s, x in zip(sources, suffixes)]
            if row.get("variant_prompt") == "stated":
                user += "\n" + variants.rotation_note(variant)
        return Request(key=row["key"], item_id=row["item_id"], task=task.name,
                       system=prompt.system, user=user, images=images,
                       image_uuids=uuids, options=task.options, answer_field=task.answer_field)



class PredictStage(RequestBuilder):
    """Callable class for `Dataset.map_batches` (one instance per actor): requests, one
    engine call per batch, parsed predictions."""

    def __init__(self, engine_builder: Callable[[], Engine], image_root: str, model_name: str,
                 decode_mode: str, image_cache_size: int = 64,
                 protocol: ProtocolConfig | None = None,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 image_read_timeout_s: float | None = DEFAULT_READ_TIMEOUT_S):
        super().__init__(image_root, image_cache_size, protocol, max_image_pixels,
                         image_read_timeout_s)
        self.engine = engine_builder()
        self.model_name = model_name
        self.decode_mode = decode_mode

    def close(self) -> None:
        """Release the engine's own resources (client threads). Ray Data deletes the stage
        when its actor exits, which calls this."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            close_engine(engine)

    def __del__(self) -> None:
        self.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        replies: list[Reply | None] = [None] * len(rows)
        requests, positions = [], []
        for i, row in enumerate(rows):
            try:
                requests.append(self.build_request(row))
                positions.append(i)
            except (ItemError, ImageError) as exc:
                replies[i] = Reply(error=exc.detail, extra={"reason": exc.reason})
            except Exception as exc:  # a row nobody foresaw: marked, never a crash of the run
                replies[i] = Reply(error=f"{exc.__class__.__name__}: {exc}"[:300],
                                   extra={"reason": "malformed_item"})
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
        # Stored text is valid UTF-8 (a lone surrogate in a reply made Parquet refuse the
        # whole part) and error texts carry no credentials (an API may echo the request).
        text = _clean_text(reply.text)
        error = redact(_clean_text(reply.error))
        if error is not None:
            pred, reason = None, reply.extra.get("reason") or _error_reason(error)
        else:
            pred, reason = parse_reply(get_task(row["task"]), text, self.decode_mode)
        return dict(key=row["key"], item_id=row.get("item_id"), model=self.model_name,
                    decode=self.decode_mode, task=row.get("task"), instance=row.get("instance"),
                    location=row.get("location"), crop=row.get("crop"), answer=row.get("answer"),
                    reply=text, pred=pred, invalid_reason=reason, error=error,
                    option_probs=reply.option_probs, prompt_tokens=reply.prompt_tokens,
                    generated_tokens=reply.generated_tokens, latency_s=reply.latency_s,
                    variant=row.get("variant"), base_item_id=row.get("base_item_id"))


def _clean_text(text: str | None) -> str | None:
    """Lone surrogates (not encodable as UTF-8) become U+FFFD."""
    if text is None or not isinstance(text, str):
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def _error_reason(detail: str) -> str:
    return "timeout" if "timeout" in detail.lower() else "engine_error"
