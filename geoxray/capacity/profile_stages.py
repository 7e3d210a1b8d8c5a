"""Time per stage of the prediction path, measured in-process on real items.

`TimedStage` is the Ray Data stage (`geoxray.infer.stage.PredictStage`) with stopwatches
around its parts, so what is timed is the code a run executes:

    read     reading image files (cold, first time an image is met)
    decode   decoding them (the image cache's load minus the read; hashing included)
    crop     the crops (numpy views)
    request  building requests: prompt, images, uuids (build time minus the above)
    engine   the engine call for the batch (a Serve round trip for vLLM), per item
    parse    parsing replies and assembling prediction rows
    write    committing the batch's Parquet part

Items are timed batch by batch as a run would send them. Nothing here is used by a run.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa

from geoxray.bench.tasks import NO_CROP, get_task
from geoxray.infer.engine import Engine, Reply, Request
from geoxray.infer.images import ImageCache, crop_view
from geoxray.infer.stage import PredictStage
from geoxray.run import store

STAGES = ("read", "decode", "crop", "request", "engine", "parse", "write")


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] += dt


class _TimedImages(ImageCache):
    def __init__(self, root, capacity: int, timer: StageTimer):
        super().__init__(root, capacity)
        self.timer = timer

    def _load(self, rel_path: str):
        t0 = time.perf_counter()
        try:
            (self.root / rel_path).read_bytes()  # the cold read; the load below reads warm
        except OSError:
            pass
        t1 = time.perf_counter()
        result = super()._load(rel_path)
        self.timer.add("read", t1 - t0)
        self.timer.add("decode", time.perf_counter() - t1)
        return result


class _TimedEngine:
    def __init__(self, engine: Engine, timer: StageTimer):
        self.engine = engine
        self.name = getattr(engine, "name", "engine")
        self.timer = timer
        self.replies: list[Reply] = []

    def generate(self, requests: Sequence[Request]) -> list[Reply]:
        t0 = time.perf_counter()
        replies = self.engine.generate(requests)
        self.timer.add("engine", time.perf_counter() - t0)
        self.replies.extend(replies)
        return replies


class TimedStage(PredictStage):
    def __init__(self, engine_builder: Callable[[], Engine], image_root: str, model_name: str,
                 decode_mode: str, image_cache_size: int = 64):
        self.timer = StageTimer()
        super().__init__(engine_builder, image_root, model_name, decode_mode, image_cache_size)
        self.images = _TimedImages(image_root, image_cache_size, self.timer)
        self.engine = _TimedEngine(self.engine, self.timer)
        self.requests: list[Request] = []

    def build_request(self, row: dict) -> Request:
        before = self.timer.seconds["read"] + self.timer.seconds["decode"]
        t0 = time.perf_counter()
        request = super().build_request(row)
        built = time.perf_counter() - t0
        # Replay the crops (views of cached arrays) to time them apart from the build.
        t1 = time.perf_counter()
        self.replay_crops(row)
        crop = time.perf_counter() - t1
        io = self.timer.seconds["read"] + self.timer.seconds["decode"] - before
        self.timer.add("crop", crop)
        self.timer.add("request", max(0.0, built - io - crop))
        self.requests.append(request)
        return request

    def replay_crops(self, row: dict) -> list:
        """The crops a request of `row` carries, again: only the aerial images (the first
        `n_aerials` of the task) are cropped; the ground view goes whole."""
        n_aerials = get_task(row["task"]).n_aerials
        return [crop_view(self.images.get(rel_path)[0],
                          row["crop"] if position < n_aerials else NO_CROP)
                for position, rel_path in enumerate(row["image_paths"])]

    def __call__(self, batch: pa.Table) -> pa.Table:
        engine_before = self.timer.seconds["engine"]
        build_before = sum(self.timer.seconds[s] for s in ("read", "decode", "crop", "request"))
        t0 = time.perf_counter()
        out = super().__call__(batch)
        total = time.perf_counter() - t0
        build = sum(self.timer.seconds[s] for s in ("read", "decode", "crop", "request"))
        engine = self.timer.seconds["engine"] - engine_before
        self.timer.add("parse", max(0.0, total - engine - (build - build_before)))
        return out


@dataclass
class StageProfile:
    items: int
    batches: int
    stage_s_per_item: dict[str, float]
    wall_s: float
    requests: list[Request]
    replies: list[Reply]
    predictions: pa.Table


def time_stages(rows: list[dict], engine_builder: Callable[[], Engine], image_root: str,
                model_name: str, decode_mode: str, batch_size: int,
                image_cache_size: int = 64, warmup_rows: Sequence[dict] = ()) -> StageProfile:
    """Run `rows` (item rows with a `key`) through a TimedStage batch by batch, writing
    parts to a scratch folder; returns seconds per item for each stage. `warmup_rows` go
    through first, untimed: an engine's first requests pay one-time costs (vLLM: a grammar
    compiled per option set, first-call set-up) that a long run spreads over all its items."""
    stage = TimedStage(engine_builder, image_root, model_name, decode_mode, image_cache_size)
    if warmup_rows:
        stage(pa.Table.from_pylist(list(warmup_rows)))
        stage.timer.seconds.clear()
        stage.requests.clear()
        stage.engine.replies.clear()
    scratch = Path(tempfile.mkdtemp(prefix="geoxray-profile-"))
    outputs = []
    t0 = time.perf_counter()
    try:
        batches = 0
        for start in range(0, len(rows), batch_size):
            table = pa.Table.from_pylist(rows[start:start + batch_size])
            out = stage(table)
            t1 = time.perf_counter()
            store.write_part(scratch, out)
            stage.timer.add("write", time.perf_counter() - t1)
            outputs.append(out)
            batches += 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - t0
    n = max(1, len(rows))
    per_item = {s: stage.timer.seconds.get(s, 0.0) / n for s in STAGES}
    return StageProfile(len(rows), batches, per_item, wall, stage.requests,
                        stage.engine.replies,
                        pa.concat_tables(outputs) if outputs else pa.table({}))
