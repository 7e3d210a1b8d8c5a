"""CVGlobal (Ye et al., ECCV 2024): Google Street View panoramas worldwide, not north-aligned.

Layout read (paths relative to `root`; the authors' index spells the instance "CVGloable"):
    streetview2048/<lat>,<lon>_<YYYY-MM>_<panoid>_d<heading>_z3.jpg   2048x1024 panoramas
    satellite/<same stem>.jpg                                        north-up aerial image
                                                                     centred on the camera
The `d<heading>` of the file name is the compass azimuth of the panorama's centre column (the
car's heading; Google's convention), so views are cut at azimuths 0/90/180/270 relative to
north by folding that heading into the sampling maps. `heading_offset` adds a constant for a
copy that stores another reference column. The aerial images are Web-Mercator zoom
`tile_zoom` (18) at `tile_scale` image pixels per Web-Mercator pixel.
"""
from __future__ import annotations

from pathlib import Path

from geoxray.data.sources.record import ReadResult, SourceRecord, Tile, gsv_panoramas, parse_month
from geoxray.data.tiles import metres_per_pixel

SOURCE = "CVGlobal"


def read(root: str | Path, streetview_dir: str = "streetview2048", satellite_dir: str = "satellite",
         tile_zoom: int = 18, tile_scale: float = 1.0, heading_offset: float = 0.0,
         instance: str = "CVGloable", extent_m: float | None = None,
         limit: int | None = None) -> ReadResult:
    root = Path(root)
    result = ReadResult()
    pano_dir = root / streetview_dir
    if not pano_dir.is_dir():
        result.reject(SOURCE, streetview_dir, "missing_metadata")
        return result
    for pano, meta, lat, lon in gsv_panoramas(pano_dir, result, SOURCE):
        stem = meta["stem"]
        sat = root / satellite_dir / pano.name
        if not sat.is_file():
            result.reject(SOURCE, f"{satellite_dir}/{pano.name}", "missing_image")
            continue
        month = parse_month(meta["date"])
        tile = Tile(instance=instance, out_path=f"satellite/{stem}.jpg", path=str(sat),
                    zoom=tile_zoom, mpp=float(metres_per_pixel(lat, tile_zoom)) / tile_scale,
                    center_latlon=(lat, lon), extent_m=extent_m, capture_time=month)
        result.records.append(SourceRecord(
            source=SOURCE, pair_id=meta["panoid"], lat=lat, lon=lon, capture_time=month,
            heading_convention="filename_heading",
            ground_out=f"streetview2048/{stem}{{dir}}.jpg", tiles=(tile,), panorama=str(pano),
            center_azimuth=(float(meta["heading"]) + heading_offset) % 360.0,
            original_id=meta["panoid"], extra={"latlon_text": f"{meta['lat']},{meta['lon']}"}))
        if limit is not None and len(result.records) >= limit:
            break
    return result
