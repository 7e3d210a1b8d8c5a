"""OmniCity (Li et al., CVPR 2023): New York panoramas with three satellite views.

Layout read (paths relative to `root`):
    street-level/image-panorama/image-panorama-<split>/<lat>,<lon>_<YYYY-MM>_<panoid>_d<heading>_z2.jpg
    satellite-level/image-satellite/satellite-image-view<k>/view<k>-<split>/<same stem>.jpg
for split in train/test and k in 1..3. Each satellite view k of a panorama becomes instance
`OmniCity_view<k>`. Panorama names follow Google Street View (the `d<heading>` is the compass
azimuth of the centre column). The satellite images are centred on the camera; their ground
resolution is not published with the files (`view_mpp` may supply it per view; unknown
resolution only disables the checks that need it).
"""
from __future__ import annotations

from pathlib import Path

from geoxray.data.sources.record import ReadResult, SourceRecord, Tile, gsv_panoramas, parse_month

SOURCE = "OmniCity"
PANO_DIR = "street-level/image-panorama"
SAT_DIR = "satellite-level/image-satellite"


def read(root: str | Path, views: tuple[int, ...] | list[int] = (1, 2, 3),
         splits: tuple[str, ...] | list[str] = ("train", "test"),
         view_mpp: dict[int, float] | None = None, heading_offset: float = 0.0,
         extent_m: float | None = None, limit: int | None = None) -> ReadResult:
    root = Path(root)
    result = ReadResult()
    found_any = False
    for split in splits:
        pano_dir = root / PANO_DIR / f"image-panorama-{split}"
        if not pano_dir.is_dir():
            continue
        found_any = True
        for pano, meta, lat, lon in gsv_panoramas(pano_dir, result, SOURCE):
            stem, month = meta["stem"], parse_month(meta["date"])
            tiles = []
            for k in views:
                rel = f"{SAT_DIR}/satellite-image-view{k}/view{k}-{split}/{pano.name}"
                if (root / rel).is_file():
                    tiles.append(Tile(instance=f"OmniCity_view{k}", out_path=rel,
                                      path=str(root / rel),
                                      mpp=(view_mpp or {}).get(k), center_latlon=(lat, lon),
                                      extent_m=extent_m))
            if not tiles:
                result.reject(SOURCE, pano.name, "missing_tile")
                continue
            result.records.append(SourceRecord(
                source=SOURCE, pair_id=meta["panoid"], lat=lat, lon=lon, capture_time=month,
                heading_convention="filename_heading",
                ground_out=f"{PANO_DIR}/image-panorama-{split}/{stem}{{dir}}.jpg",
                tiles=tuple(tiles), panorama=str(pano),
                center_azimuth=(float(meta["heading"]) + heading_offset) % 360.0,
                original_id=meta["panoid"], split_hint=split))
            if limit is not None and len(result.records) >= limit:
                return result
    if not found_any:
        result.reject(SOURCE, PANO_DIR, "missing_metadata")
    return result
