"""The synthetic GeoX-Bench: a seeded procedural world rendered into the authors' index format.

`generate(out_dir, preset, seed)` writes

    out_dir/world.json                  preset, seed, every parameter, the conventions
                                        (written last: it marks a finished generation)
    out_dir/panoramas.json              each location's panorama, lat/lon and heading offset
    out_dir/index/<Folder>/<instance>.json        test split (Orin4_SameLocation,
    out_dir/index/train/<Folder>/<instance>.json  Location4_50_in_range, LocationSelection)
    out_dir/images/<instance>/aerial/<loc>.jpg            512x512 north-up tile
    out_dir/images/<instance>/ground/<loc>_<N|E|S|W>.jpg  90-degree view per heading
    out_dir/images/panoramas/<instance>/<loc>.jpg         equirectangular panorama

Index `file_path`s are relative to `out_dir/images`, so one reader loads real and synthetic
data. Labels are true by construction: a view is rendered at its location's point with the
record's heading, and its tile is centred on that point at the instance's Web-Mercator zoom.
Everything is a function of (preset, seed, overrides): the same call gives byte-identical
files, whatever the number of workers or the start method (each location draws from its
own seed), given the same numpy and OpenCV builds. A group's records and a location's pixels
do not depend on the other groups, so `full`'s test split is exactly `paper`'s. Cameras
stand in the right-hand lane of a road, 2.5 m up, at least 20 m from a crossing road.

Presets (each location gives 4 base records; each base record gives 39 QA items):
    tiny   2 instances x 4 locations, 256 px views (tests; seconds)
    paper  11 instances x 25 locations = 1,100 base records -> 42,900 items
    full   paper + a train split of 4,571 locations (18,284 base records) -> 755,976 items
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from geoxray.data import render
from geoxray.data.noise import stable_seed
from geoxray.data.synth_config import (EARTH_RADIUS_M, INSTANCE_BY_NAME, INSTANCES, PRESETS,
                                       InstanceSpec, SynthConfig, make_config, metres_per_pixel,
                                       train_per_instance)
from geoxray.data.synth_index import (FOLDERS, HEADINGS, ITEMS_PER_BASE_RECORD, Location,
                                      index_records, panorama_entry)
from geoxray.data.world import World, WorldStyle


def world_seed(cfg: SynthConfig, instance: str) -> int:
    """The seed of an instance's world (rebuild it with `World(seed, spec.style)`)."""
    return stable_seed("geoxray-synth", cfg.seed, instance)


@lru_cache(maxsize=16)
def _world(seed: int, style: WorldStyle) -> World:
    return World(seed, style)


def plan_locations(cfg: SynthConfig) -> list[Location]:
    """Every location of the benchmark (test first, then train, per instance): its world
    point, lat/lon, tile resolution, panorama heading offset and image paths."""
    out: list[Location] = []
    for spec, n_train in zip((INSTANCE_BY_NAME[n] for n in cfg.instances), train_per_instance(cfg)):
        world = _world(world_seed(cfg, spec.name), spec.style)
        lat0, lon0 = spec.origin
        n = cfg.locations + n_train
        rngs = [np.random.default_rng(stable_seed("location", cfg.seed, spec.name, j))
                for j in range(n)]
        # A lattice (16 per row) with jitter, then onto the nearest road: far enough apart
        # that no two tiles overlap, and location j is where it is whatever n is.
        jitter = np.array([rng.uniform(-0.2, 0.2, 2) for rng in rngs]).reshape(n, 2)
        j = np.arange(n)
        xs, ys = world.snap_many_to_road(
            ((j % 16) - 7.5 + jitter[:, 0]) * cfg.location_spacing_m,
            ((j // 16) - 1.5 + jitter[:, 1]) * cfg.location_spacing_m)
        for j, rng in enumerate(rngs):
            x, y = float(xs[j]), float(ys[j])
            lat = lat0 + math.degrees(y / EARTH_RADIUS_M)
            lon = lon0 + math.degrees(x / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
            loc_id = f"{j:05d}"
            out.append(Location(
                instance=spec.name, split="test" if j < cfg.locations else "train",
                loc_id=loc_id, x=x, y=y, lat=lat, lon=lon,
                mpp=metres_per_pixel(lat, spec.zoom),
                heading_offset_deg=round(float(rng.uniform(5.0, 355.0)), 3),
                capture_time=f"{rng.integers(2016, 2025)}-{rng.integers(1, 13):02d}",
                zoom=spec.zoom, index_zoom_level=spec.index_zoom_level,
                extra_fields=spec.extra_fields,
                tile_path=f"{spec.name}/aerial/{loc_id}.jpg",
                view_paths={o: f"{spec.name}/ground/{loc_id}_{o}.jpg" for o, _ in HEADINGS},
                panorama_path=f"panoramas/{spec.name}/{loc_id}.jpg"))
    return out


# -- rendering (in worker processes) -------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    location: Location
    world_seed: int
    style: WorldStyle
    cfg: SynthConfig
    images_dir: str


def _jpeg_params(quality: int) -> list[int]:
    # Every encoder knob explicit: the bytes must not depend on library defaults.
    return [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0,
            cv2.IMWRITE_JPEG_PROGRESSIVE, 0, cv2.IMWRITE_JPEG_RST_INTERVAL, 0,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 90) -> int:
    """Write an RGB image as JPEG atomically (never a half-written file); returns its size."""
    # BGR by slicing, not cv2.cvtColor: the encoder is the only OpenCV code a worker runs,
    # and it is single-threaded (safe in a forked child).
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, _jpeg_params(quality))
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return len(buf)


def render_location(job: _Job) -> tuple[int, int]:
    """Render and write one location's tile, four views and panorama: (files, bytes)."""
    loc, cfg, root = job.location, job.cfg, Path(job.images_dir)
    world = _world(job.world_seed, job.style)
    q = cfg.jpeg_quality
    written = write_jpeg(root / loc.tile_path, render.render_tile(
        world, loc.x, loc.y, loc.mpp, cfg.tile_size, cfg.tile_supersample), q)
    for orientation, degree in HEADINGS:
        written += write_jpeg(root / loc.view_paths[orientation], render.render_view(
            world, loc.x, loc.y, degree, fov_deg=cfg.fov_deg, size=cfg.view_size,
            camera_height=cfg.camera_height_m, haze_m=cfg.haze_m,
            supersample=cfg.view_supersample), q)
    written += write_jpeg(root / loc.panorama_path, render.render_panorama(
        world, loc.x, loc.y, heading_offset_deg=loc.heading_offset_deg,
        width=cfg.panorama_width, camera_height=cfg.camera_height_m, haze_m=cfg.haze_m,
        supersample=cfg.panorama_supersample), q)
    return 2 + len(HEADINGS), written


# -- the driver -----------------------------------------------------------------------------
@dataclass
class GenerateSummary:
    out_dir: str
    preset: str
    seed: int
    instances: list[str]
    locations: dict[str, int]        # split -> locations
    records: dict[str, int]          # "<split>/<Folder>" -> index records
    items: dict[str, int]            # split -> QA items downstream (39 per base record)
    images: int
    image_bytes: int
    seconds: float
    workers: int
    config: dict = field(default_factory=dict)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _start_method(requested: str | None) -> str:
    """spawn unless asked otherwise: a parent that has run OpenCV (its worker threads are
    invisible to threading.active_count()) or Ray must not fork — a forked child can deadlock
    on a lock some thread held. spawn needs the caller's script to be importable (guarded)."""
    return requested or "spawn"


class _Progress(tqdm):
    # No monitor thread: a thread left behind would make the next generate() spawn, not fork.
    monitor_interval = 0


def _render_all(cfg: SynthConfig, locations: list[Location], images: Path, workers: int,
                method: str, progress: bool) -> tuple[int, int]:
    """Render every location (in `workers` processes), one location per task: memory stays
    at one location's images per worker. Returns (files, bytes)."""
    jobs = [_Job(loc, world_seed(cfg, loc.instance), INSTANCE_BY_NAME[loc.instance].style, cfg,
                 str(images)) for loc in locations]
    n_images = n_bytes = 0
    with _Progress(total=len(jobs), unit="loc", desc="synth", disable=not progress) as bar:
        if workers == 1 or len(jobs) <= 1:
            for files, size in map(render_location, jobs):
                n_images, n_bytes = n_images + files, n_bytes + size
                bar.update(1)
            return n_images, n_bytes
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                   mp_context=get_context(method))
        try:
            for files, size in pool.map(render_location, jobs, chunksize=1):
                n_images, n_bytes = n_images + files, n_bytes + size
                bar.update(1)
        except BaseException:  # Ctrl-C or a failed location: drop the queued work, now
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return n_images, n_bytes


def generate(out_dir: str | Path, preset: str = "tiny", seed: int = 0,
             workers: int | None = None, progress: bool = True, overwrite: bool = False,
             start_method: str | None = None, **overrides) -> GenerateSummary:
    """Write a synthetic benchmark (see the module docstring) and return what was made.
    `workers`: processes rendering locations (default: all cores; <= 1 renders inline).
    `overrides`: fields of `SynthConfig`, e.g. instances=3, locations=5, view_size=384,
    train_locations=40. An existing non-empty `out_dir` is refused unless `overwrite`.
    `start_method`: multiprocessing start method (default: fork if the caller has no other
    threads, else spawn)."""
    started = time.perf_counter()
    cfg = make_config(preset, seed, **overrides)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to write over it")
    locations = plan_locations(cfg)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    n_images, n_bytes = _render_all(cfg, locations, out / "images", workers,
                                    _start_method(start_method), progress)

    # The index after the images (it needs no pixels, only who is where), world.json last:
    # a world.json means the generation finished.
    records: dict[str, int] = {}
    for (split, folder, instance), recs in index_records(cfg.seed, locations, cfg.fov_deg).items():
        base = out / "index" / ("train" if split == "train" else "")
        _write_json(base / folder / f"{instance}.json", recs)
        key = f"{split}/{folder}"
        records[key] = records.get(key, 0) + len(recs)
    _write_json(out / "panoramas.json", {
        "convention": render.PANORAMA_CONVENTION,
        "panoramas": [panorama_entry(loc, cfg) for loc in locations]})
    n_split = {s: sum(1 for loc in locations if loc.split == s) for s in ("test", "train")}
    summary = GenerateSummary(
        out_dir=str(out), preset=cfg.preset, seed=cfg.seed, instances=list(cfg.instances),
        locations=n_split, records=records,
        items={s: ITEMS_PER_BASE_RECORD * records.get(f"{s}/{FOLDERS[0]}", 0) for s in n_split},
        images=n_images, image_bytes=n_bytes, seconds=0.0, workers=workers,
        config=_jsonable(asdict(cfg)))
    _write_json(out / "world.json", {
        "generator": "geoxray.data.synth", "format": 1, "preset": cfg.preset, "seed": cfg.seed,
        "parameters": summary.config,
        "instances": {name: _instance_json(cfg, name) for name in cfg.instances},
        "conventions": {"world": "x east, y north, metres; ground z = 0; azimuth clockwise "
                                 "from north", "renderers": render.__doc__},
        "counts": {"locations": n_split, "records": records, "items": summary.items,
                   "images": n_images}})
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _instance_json(cfg: SynthConfig, name: str) -> dict:
    spec = INSTANCE_BY_NAME[name]
    return {"zoom": spec.zoom, "index_zoom_level": spec.index_zoom_level,
            "origin_lat_lon": list(spec.origin), "world_seed": world_seed(cfg, name),
            "metres_per_pixel_at_origin": metres_per_pixel(spec.origin[0], spec.zoom),
            "style": asdict(spec.style)}


__all__ = ["INSTANCES", "INSTANCE_BY_NAME", "PRESETS", "GenerateSummary", "InstanceSpec",
           "SynthConfig", "generate", "make_config", "metres_per_pixel", "plan_locations",
           "render_location", "train_per_instance", "world_seed"]
