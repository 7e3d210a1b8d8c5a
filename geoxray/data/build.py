"""Source datasets -> a GeoX-Bench-style benchmark: images, the authors' index format, items.

    records (sources/) --QC--> rendered images (north-aligned views, 512x512 aerials)
        --> split by location --> index JSON per (split, folder, instance)
        --> items.parquet (geoxray.bench.index) --> optional SFT JSONL (sft.py)

Output layout under `out_dir`:
    images/...                      views and aerials, at the authors' relative paths
    index/<Folder>/<instance>.json  test split (Orin4_SameLocation, Location4_50_in_range,
                                    LocationSelection; Orin8 when 8 headings are built)
    index/train/<Folder>/<instance>.json   train split
    items.parquet, build_report.json, sft/ (optional)

Deterministic: records are processed in sorted order, every random choice draws from a
generator seeded by (seed, what it is for), and files are written with fixed settings, so the
same inputs give byte-identical index JSON and items.parquet.
"""
from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from geoxray.data.panorama import CARDINALS, OCTANTS, cardinal_views
from geoxray.data.qc import (QCConfig, QCReport, camera_inside, check_capture_gap,
                             check_coordinates, drop_duplicate_locations, is_blank, load_image)
from geoxray.data.sources import read_source
from geoxray.data.sources.record import SourceRecord, Tile
from geoxray.data.sources.to_index import (Rendered, RenderedTile, assign_splits,
                                           index_records)
from geoxray.data.tiles import folder_fetch, metres_per_pixel, mosaic_around, resample_square

FOLDERS = ("Orin4_SameLocation", "Location4_50_in_range", "LocationSelection")


@dataclass
class BuildConfig:
    headings: int = 4  # 4 (N/E/S/W) or 8 (adds an Orin8 folder with 45-degree steps)
    view_size: int = 512
    view_fov: float = 90.0
    tile_size: int = 512
    recenter_tiles: bool = True  # re-centre ready-cut aerials on the camera
    min_recentered_fraction: float = 0.25  # ... keeping at least this share of the side
    test_fraction: float = 0.5  # share of each source's locations in the test split
    test_locations: int | None = None  # cap on test locations per source
    band_m: tuple[float, float] = (100.0, 5000.0)  # distance band of negatives/distractors
    candidates: int = 4  # aerial candidates of LocationSelection (one is the original)
    seed: int = 0
    jpeg_quality: int = 95
    workers: int = 2  # threads rendering records (OpenCV releases the GIL)
    write_items: bool = True
    sft: bool = False  # also export the train split as chat JSONL
    qc: QCConfig = field(default_factory=QCConfig)


@dataclass
class BuildReport:
    out_dir: str
    index_root: str
    image_root: str
    items_path: str | None = None
    sft_path: str | None = None
    records_read: dict[str, int] = field(default_factory=dict)
    records_kept: dict[str, int] = field(default_factory=dict)
    locations: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> split -> n
    index_files: dict[str, int] = field(default_factory=dict)  # relative path -> records
    items: dict[str, int] = field(default_factory=dict)  # split -> items
    item_problems: dict[str, int] = field(default_factory=dict)
    qc: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _write_image(path: Path, bgr: np.ndarray, jpeg_quality: int) -> None:
    # Images stay in OpenCV's BGR order from decode to encode: the build only resamples them.
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") \
        else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"could not write {path}")


# --- rendering one record ---------------------------------------------------------------------
def _directions(headings: int) -> dict[str, float]:
    return dict(OCTANTS) if headings == 8 else dict(CARDINALS)


def _render_views(r: SourceRecord, image_root: Path, cfg: BuildConfig,
                  qc: QCReport) -> dict[str, str] | None:
    wanted = _directions(cfg.headings)
    out: dict[str, str] = {}
    if r.panorama is not None:
        pano = load_image(r.panorama, cfg.qc, qc, f"{r.source}:{r.pair_id} panorama", rgb=False)
        if pano is None:
            return None
        views = cardinal_views(pano, r.center_azimuth or 0.0, cfg.view_fov, cfg.view_size,
                               wanted, vfov_deg=r.vfov_deg)
        for name, view in views.items():
            rel = r.ground_out.format(dir=name, deg=int(wanted[name]))
            _write_image(image_root / rel, view, cfg.jpeg_quality)
            out[name] = rel
        return out
    by_azimuth = {round(az % 360.0, 3): path for az, path in r.views}
    for name, az in wanted.items():
        src = by_azimuth.get(round(az, 3))
        if src is None:
            if name in CARDINALS:
                qc.add("missing_image", f"{r.source}:{r.pair_id} view {name}")
                return None
            continue  # diagonal views are optional
        if load_image(src, cfg.qc, qc, f"{r.source}:{r.pair_id} view {name}", rgb=False) is None:
            return None
        rel = r.ground_out.format(dir=name, deg=int(az))
        (image_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, image_root / rel)  # ready-cut views are kept byte for byte
        out[name] = rel
    return out


def _render_tile(r: SourceRecord, t: Tile, image_root: Path, cfg: BuildConfig, qc: QCReport,
                 fetchers: dict) -> RenderedTile | None:
    where = f"{r.source}:{r.pair_id} {t.instance}"
    size = cfg.tile_size
    if t.xyz_root is not None:
        fetch = fetchers.setdefault(t.xyz_root, folder_fetch(t.xyz_root))
        img, missing = mosaic_around(fetch, r.lat, r.lon, int(t.zoom), t.extent_m, size)
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # fetchers return RGB
        if missing > cfg.qc.max_missing_xyz_tiles:
            qc.add("missing_tile", f"{where} ({missing} z/x/y tiles)")
            return None
        if is_blank(img, cfg.qc.blank_std):
            qc.add("blank_image", where)
            return None
        mpp = float(metres_per_pixel(r.lat, int(t.zoom)))
        extent = t.extent_m if t.extent_m is not None else size * mpp
        rendered = RenderedTile(t, True, extent)
    else:
        img = load_image(t.path, cfg.qc, qc, where, rgb=False)
        if img is None:
            return None
        h, w = img.shape[:2]
        dx, dy = t.camera_offset_px or (0.0, 0.0)
        camera = (w / 2.0 + dx, h / 2.0 + dy)
        if not camera_inside(camera, img.shape):
            qc.add("camera_outside_tile", where)
            return None
        if cfg.recenter_tiles:  # a square around the camera: fixed ground side, or the largest
            fixed = t.extent_m is not None and t.mpp is not None
            side = t.extent_m / t.mpp if fixed else \
                2.0 * min(camera[0], camera[1], w - camera[0], h - camera[1])
            if side < cfg.min_recentered_fraction * min(w, h):
                qc.add("camera_near_edge", where)
                return None
            img = resample_square(img, camera[0], camera[1], side, size)
            rendered = RenderedTile(t, True, side * t.mpp if t.mpp else None)
        else:  # the tile as it is (its central square), camera offset recorded
            side = float(min(w, h))
            img = resample_square(img, w / 2.0, h / 2.0, side, size)
            scale = size / side
            centered = abs(dx) < 0.5 and abs(dy) < 0.5
            off_m = (-dx * t.mpp, dy * t.mpp) if t.mpp else None
            rendered = RenderedTile(t, centered, side * t.mpp if t.mpp else None,
                                    None if centered else off_m,
                                    None if centered else (-dx * scale, -dy * scale))
    _write_image(image_root / t.out_path, img, cfg.jpeg_quality)
    return rendered


def render_record(r: SourceRecord, image_root: Path, cfg: BuildConfig,
                  fetchers: dict) -> tuple[Rendered | None, QCReport]:
    """Cut the views and make the aerials of one record. A failed ground image skips the
    record; a failed aerial drops only that instance. Never raises on bad data."""
    qc = QCReport()
    try:
        views = _render_views(r, image_root, cfg, qc)
        if views is None:
            return None, qc
        tiles = [rt for t in r.tiles if (rt := _render_tile(r, t, image_root, cfg, qc, fetchers))]
    except (cv2.error, ValueError, OSError) as exc:
        qc.add("unreadable_image", f"{r.source}:{r.pair_id} ({exc.__class__.__name__})")
        return None, qc
    fov = r.view_fov if r.panorama is None else cfg.view_fov
    return (Rendered(r, views, tiles, fov) if tiles else None), qc


# --- the build --------------------------------------------------------------------------------
def _plain(cfg: Any) -> Any:
    try:  # Hydra/OmegaConf configs -> plain containers
        from omegaconf import OmegaConf
        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return cfg


def source_entries(sources_cfg: Any) -> list[tuple[str, str, dict]]:
    """(kind, root, reader options) of each configured source: a list of mappings with
    `kind` and `root`, or a mapping name -> options (kind defaults to the name)."""
    cfg = _plain(sources_cfg)
    items = list(cfg.items()) if isinstance(cfg, Mapping) else [(None, e) for e in cfg]
    entries = []
    for name, entry in items:
        entry = dict(_plain(entry))
        kind = entry.pop("kind", name)
        root = entry.pop("root", None)
        if not kind or not root:
            raise ValueError(f"source {name or entry}: needs `kind` and `root`")
        entries.append((str(kind), str(root), entry))
    return entries


def build_from_sources(sources_cfg: Any, out_dir: str | Path, config: BuildConfig | None = None,
                       **overrides: Any) -> BuildReport:
    """Build a benchmark from source datasets (see the module docstring). `overrides` set
    fields of `config` (e.g. headings=8, seed=1)."""
    start = time.perf_counter()
    cfg = config or BuildConfig()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown build option {key!r}")
        if key == "qc" and isinstance(value, Mapping):
            value = QCConfig(**value)
        setattr(cfg, key, value)
    out_dir = Path(out_dir)
    image_root, index_root = out_dir / "images", out_dir / "index"
    report = BuildReport(str(out_dir), str(index_root), str(image_root))
    qc = QCReport()

    records: list[SourceRecord] = []
    for kind, root, options in source_entries(sources_cfg):
        result = read_source(kind, root, **options)
        for rej in result.rejects:
            qc.add(rej.reason, f"{rej.source}:{rej.where}")
        report.records_read[kind] = report.records_read.get(kind, 0) + len(result.records)
        records += result.records
    # Once over all entries: two copies of one dataset must not bring a location twice.
    records = check_coordinates(records, qc)
    records = drop_duplicate_locations(records, cfg.qc.dup_distance_m, qc)
    records = check_capture_gap(records, cfg.qc.max_capture_gap_months, qc)

    fetchers: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        outcomes = list(pool.map(lambda r: render_record(r, image_root, cfg, fetchers), records))
    rendered = []
    for result, local_qc in outcomes:  # merged in record order: the report is deterministic
        qc.merge(local_qc)
        if result is not None:
            rendered.append(result)
            source = result.record.source
            report.records_kept[source] = report.records_kept.get(source, 0) + 1

    split_of, report.locations = assign_splits(rendered, cfg.test_fraction, cfg.test_locations,
                                               cfg.seed)
    files = index_records(rendered, split_of, headings=cfg.headings, band_m=tuple(cfg.band_m),
                          candidates=cfg.candidates, seed=cfg.seed, qc=qc)
    if index_root.exists():
        shutil.rmtree(index_root)  # no stale instance files from an earlier build
    for (split, folder, instance), recs in sorted(files.items()):
        base = index_root if split == "test" else index_root / split
        path = base / folder / f"{instance}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recs, indent=1, ensure_ascii=False) + "\n")
        report.index_files[str(path.relative_to(out_dir))] = len(recs)

    if cfg.write_items:
        _write_items(out_dir, index_root, image_root, cfg, report)
    report.qc = qc.to_dict()
    report.seconds = round(time.perf_counter() - start, 3)
    (out_dir / "build_report.json").write_text(report.to_json() + "\n")
    return report


def _write_items(out_dir: Path, index_root: Path, image_root: Path, cfg: BuildConfig,
                 report: BuildReport) -> None:
    try:
        from geoxray.bench.index import BuildProblems, build_items, write_items
    except ImportError as exc:  # the reader lives in geoxray.bench; the index files still stand
        report.notes.append(f"items.parquet not written: {exc}")
        return
    problems = BuildProblems()
    table = build_items(index_root, image_root, problems)
    report.items_path = str(write_items(table, out_dir / "items.parquet"))
    splits = table.column("split").to_pylist()
    report.items = {s: splits.count(s) for s in sorted(set(splits))}
    report.item_problems = dict(sorted(problems.counts.items()))
    if cfg.sft:
        from geoxray.data.sft import export_sft
        report.sft_path = str(export_sft(table, image_root, out_dir / "sft"))
