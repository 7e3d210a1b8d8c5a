"""CVUSA (Workman et al. 2015; the 44,416-pair subset of Zhai et al. 2017).

Layout read (paths relative to `root`):
    streetview/panos/<id>.jpg        north-aligned panoramas (centre column = north); the
                                     published ones are a 1232x224 band around the horizon
    bingmap/<zoom>/<id>.jpg          ready-cut north-up aerial images, one folder per zoom
    split/all.csv | splits/all.csv   one row per id, no header: street_lat, street_lon,
                                     sat_lat, sat_lon, heading; row n (1-based) is id n
                                     (`id_offset` shifts that)
    splits/train-19zl.csv, splits/val-19zl.csv   optional: "bingmap/19/<id>.jpg,
                                     streetview/panos/<id>.jpg,..." lines; read only to give
                                     each id its split hint and to restrict to listed ids
Ids are 7-digit zero-padded file stems ("0037557").

Aerial images: with `xyz_root` (a z/x/y tile folder) each location's tile is stitched at each
of `zooms`, centred on the camera; otherwise `bingmap/<zoom>/<id>.jpg` is used as is: centred
on (sat_lat, sat_lon), `tile_scale` pixels per Web-Mercator pixel of that zoom (CVUSA's 750 px
zoom-19 images are 1.0), so the camera sits a few pixels off centre (the authors' CVUSA
records say `centered: false` and carry that offset).
"""
from __future__ import annotations

import csv
from pathlib import Path

from geoxray.data.sources.record import (ReadResult, SourceRecord, Tile, parse_float,
                                         valid_latlon)
from geoxray.data.tiles import latlon_to_global_px, metres_per_pixel

SOURCE = "CVUSA"


def _metadata_file(root: Path) -> Path | None:
    for rel in ("split/all.csv", "splits/all.csv"):
        if (root / rel).is_file():
            return root / rel
    return None


def _split_hints(root: Path) -> dict[str, str]:
    hints: dict[str, str] = {}
    for name, split in (("train-19zl.csv", "train"), ("val-19zl.csv", "test")):
        path = root / "splits" / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            first = line.split(",")[0].strip()
            if first:
                hints[Path(first).stem] = split
    return hints


def read(root: str | Path, zooms: tuple[int, ...] | list[int] = (18, 19, 20),
         xyz_root: str | None = None, tile_scale: float = 1.0, id_offset: int = 0,
         extent_m: float | None = None, instance_prefix: str = "CVUSA_zoom",
         limit: int | None = None) -> ReadResult:
    root = Path(root)
    result = ReadResult()
    meta = _metadata_file(root)
    if meta is None:
        result.reject(SOURCE, str(root), "missing_metadata")
        return result
    hints = _split_hints(root)
    with meta.open(newline="") as fh:
        rows = list(csv.reader(fh))
    for n, row in enumerate(rows, start=1):
        pair_id = f"{n + id_offset:07d}"
        if hints and pair_id not in hints:
            continue
        where = f"{meta.name}:{n}"
        values = [parse_float(v) for v in row[:5]] if len(row) >= 4 else []
        if len(values) < 4 or any(v is None for v in values[:4]):
            result.reject(SOURCE, where, "bad_coordinates")
            continue
        lat, lon, sat_lat, sat_lon = values[:4]
        if not valid_latlon(lat, lon) or not valid_latlon(sat_lat, sat_lon):
            result.reject(SOURCE, where, "bad_coordinates")
            continue
        pano = root / "streetview" / "panos" / f"{pair_id}.jpg"
        if not pano.is_file():
            result.reject(SOURCE, str(pano.relative_to(root)), "missing_image")
            continue
        tiles = []
        for zoom in zooms:
            instance = f"{instance_prefix}{zoom}"
            out = f"{zoom}/{pair_id}.jpg"
            if xyz_root is not None:
                tiles.append(Tile(instance, out, xyz_root=str(xyz_root), zoom=int(zoom),
                                  extent_m=extent_m))
                continue
            path = root / "bingmap" / str(zoom) / f"{pair_id}.jpg"
            if not path.is_file():
                continue
            # Camera minus image centre, in this image's pixels.
            cx, cy = latlon_to_global_px(lat, lon, zoom)
            sx, sy = latlon_to_global_px(sat_lat, sat_lon, zoom)
            offset = (float(cx - sx) * tile_scale, float(cy - sy) * tile_scale)
            tiles.append(Tile(instance, out, path=str(path), zoom=int(zoom),
                              mpp=float(metres_per_pixel(sat_lat, zoom)) / tile_scale,
                              camera_offset_px=offset, center_latlon=(sat_lat, sat_lon),
                              extent_m=extent_m))
        if not tiles:
            result.reject(SOURCE, pair_id, "missing_tile")
            continue
        result.records.append(SourceRecord(
            source=SOURCE, pair_id=pair_id, lat=lat, lon=lon, capture_time=None,
            heading_convention="north_aligned", ground_out=f"views/{pair_id}{{dir}}.jpg",
            tiles=tuple(tiles), panorama=str(pano), center_azimuth=0.0,
            original_id=str(n + id_offset), split_hint=hints.get(pair_id),
            extra={"vehicle_heading": values[4] if len(values) > 4 else None}))
        if limit is not None and len(result.records) >= limit:
            break
    return result
