"""LLMGeo (Wang et al., CVPR-W 2024): street views already cut at fixed headings.

Layout read (paths relative to `root`; the authors' index spells the instances "LMMGeo"):
    metadata.csv                 header row, then one row per location with columns
                                 id, lat, lon and optionally capture_time ("YYYY-MM"),
                                 zoom (the aerial image's Web-Mercator zoom), original_id
    <deg>/<id>.png               a 90-degree view facing compass azimuth <deg> (0, 90, 180,
                                 270; 45-degree steps when present)
    ProcessedTiles/<id>.png      north-up aerial image centred on the camera
Rows without a zoom use `default_zoom`; each zoom is its own instance (`LMMGeo_zoom<z>`).
"""
from __future__ import annotations

import csv
from pathlib import Path

from geoxray.data.sources.record import (ReadResult, SourceRecord, Tile, parse_float,
                                         parse_month, valid_latlon)
from geoxray.data.tiles import metres_per_pixel

SOURCE = "LLMGeo"
HEADINGS = (0, 45, 90, 135, 180, 225, 270, 315)


def read(root: str | Path, tiles_dir: str = "ProcessedTiles", default_zoom: int | None = 20,
         tile_scale: float = 1.0, instance_prefix: str = "LMMGeo_zoom",
         extent_m: float | None = None, limit: int | None = None) -> ReadResult:
    root = Path(root)
    result = ReadResult()
    meta = root / "metadata.csv"
    if not meta.is_file():
        result.reject(SOURCE, "metadata.csv", "missing_metadata")
        return result
    with meta.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for n, row in enumerate(rows, start=2):
        where = f"metadata.csv:{n}"
        pair_id = str(row.get("id") or "").strip()
        lat, lon = parse_float(row.get("lat")), parse_float(row.get("lon"))
        if not pair_id:
            result.reject(SOURCE, where, "unparseable_name")
            continue
        if lat is None or lon is None or not valid_latlon(lat, lon):
            result.reject(SOURCE, where, "bad_coordinates")
            continue
        zoom_text = parse_float(row.get("zoom")) if row.get("zoom") else None
        zoom = int(zoom_text) if zoom_text is not None else default_zoom
        ext = ".jpg" if (root / "0" / f"{pair_id}.jpg").is_file() else ".png"
        views = tuple((float(d), str(root / str(d) / f"{pair_id}{ext}")) for d in HEADINGS
                      if (root / str(d) / f"{pair_id}{ext}").is_file())
        if sum(1 for az, _ in views if az % 90 == 0) < 4:  # the four cardinal views are required
            result.reject(SOURCE, where, "missing_image")
            continue
        tile_path = root / tiles_dir / f"{pair_id}{ext}"
        if not tile_path.is_file():
            result.reject(SOURCE, where, "missing_tile")
            continue
        month = parse_month(row.get("capture_time"))
        tile = Tile(instance=f"{instance_prefix}{zoom}", out_path=f"{tiles_dir}/{pair_id}{ext}",
                    path=str(tile_path), zoom=zoom, extent_m=extent_m, center_latlon=(lat, lon),
                    mpp=float(metres_per_pixel(lat, zoom)) / tile_scale if zoom else None)
        result.records.append(SourceRecord(
            source=SOURCE, pair_id=pair_id, lat=lat, lon=lon, capture_time=month,
            heading_convention="views", ground_out=f"{{deg}}/{pair_id}{ext}", tiles=(tile,),
            views=views, original_id=str(row.get("original_id") or pair_id)))
        if limit is not None and len(result.records) >= limit:
            break
    return result
