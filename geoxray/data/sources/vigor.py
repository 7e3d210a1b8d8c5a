"""VIGOR (Zhu et al., CVPR 2021): four US cities, panoramas and 640x640 aerial tiles.

Layout read (paths relative to `root`):
    <City>/panorama/<panoid>,<lat>,<lon>,.jpg    2048x1024 equirectangular, north-aligned
                                                 (centre column = north)
    <City>/satellite/satellite_<lat>_<lon>.png   640x640 north-up tiles
    splits/<City>/pano_label_balanced.txt        one line per panorama:
        <pano> <sat1> <dy1> <dx1> <sat2> <dy2> <dx2> <sat3> ... <sat4> <dy4> <dx4>
      sat1 is the positive tile (the panorama lies in its central quarter); (dy, dx) are tile
      pixels with dy > 0 = panorama south of the tile centre and dx > 0 = panorama west of it.
      `splits__corrected/<City>/pano_label_balanced__corrected.txt` (SliceMatch's corrected
      labels) is preferred when present.
    splits/<City>/same_area_balanced_{train,test}.txt   optional: split hints
Ground resolution is per city (metres per pixel of a 640 px tile, from the VIGOR code).
"""
from __future__ import annotations

from pathlib import Path

from geoxray.data.sources.record import (ReadResult, SourceRecord, Tile, parse_float,
                                         valid_latlon)

SOURCE = "VIGOR"
CITY_MPP: dict[str, float] = {"NewYork": 0.113248, "Seattle": 0.100817,
                              "SanFrancisco": 0.118141, "Chicago": 0.111262}


def _label_file(root: Path, city: str) -> Path | None:
    for rel in (f"splits__corrected/{city}/pano_label_balanced__corrected.txt",
                f"splits/{city}/pano_label_balanced.txt"):
        if (root / rel).is_file():
            return root / rel
    return None


def _split_hints(root: Path, city: str) -> dict[str, str]:
    hints: dict[str, str] = {}
    for split in ("train", "test"):
        for base in ("splits__corrected", "splits"):
            for name in (f"same_area_balanced_{split}__corrected.txt",
                         f"same_area_balanced_{split}.txt"):
                path = root / base / city / name
                if path.is_file():
                    for line in path.read_text().splitlines():
                        if line.strip():
                            hints.setdefault(line.split()[0], split)
    return hints


def _parse_pano_name(name: str) -> tuple[str, float, float] | None:
    parts = name.rsplit(".", 1)[0].split(",")
    if len(parts) < 3:
        return None
    lat, lon = parse_float(parts[1]), parse_float(parts[2])
    if lat is None or lon is None:
        return None
    return parts[0], lat, lon


def read(root: str | Path, cities: list[str] | tuple[str, ...] | None = None,
         city_mpp: dict[str, float] | None = None, extent_m: float | None = None,
         limit: int | None = None) -> ReadResult:
    root = Path(root)
    result = ReadResult()
    mpp_of = {**CITY_MPP, **(city_mpp or {})}
    if cities is None:
        cities = sorted(p.name for p in root.iterdir() if (p / "panorama").is_dir()) \
            if root.is_dir() else []
    for city in cities:
        labels = _label_file(root, city)
        if labels is None:
            result.reject(SOURCE, city, "missing_metadata")
            continue
        hints = _split_hints(root, city)
        for n, line in enumerate(labels.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{city}/{labels.name}:{n}"
            parsed = _parse_pano_name(fields[0])
            if parsed is None or len(fields) < 4:
                result.reject(SOURCE, where, "unparseable_name")
                continue
            panoid, lat, lon = parsed
            dy, dx = parse_float(fields[2]), parse_float(fields[3])
            if not valid_latlon(lat, lon) or dy is None or dx is None:
                result.reject(SOURCE, where, "bad_coordinates")
                continue
            pano = root / city / "panorama" / fields[0]
            sat = root / city / "satellite" / fields[1]
            if not pano.is_file() or not sat.is_file():
                result.reject(SOURCE, where, "missing_image")
                continue
            stem = f"{panoid},{fields[0].split(',')[1]},{fields[0].split(',')[2]},"
            sat_parts = sat.stem.split("_")
            center = None
            if len(sat_parts) >= 3:
                slat, slon = parse_float(sat_parts[-2]), parse_float(sat_parts[-1])
                center = (slat, slon) if slat is not None and slon is not None else None
            tile = Tile(instance=f"VIGOR_{city}", out_path=f"map/{stem}.png", path=str(sat),
                        mpp=mpp_of.get(city), camera_offset_px=(-dx, dy),
                        center_latlon=center, extent_m=extent_m)
            result.records.append(SourceRecord(
                source=SOURCE, pair_id=panoid, lat=lat, lon=lon, capture_time=None,
                heading_convention="north_aligned", ground_out=f"image/{stem}{{dir}}.jpg",
                tiles=(tile,), panorama=str(pano), center_azimuth=0.0, original_id=panoid,
                split_hint=hints.get(fields[0]), extra={"city": city}))
            if limit is not None and len(result.records) >= limit:
                return result
    return result
