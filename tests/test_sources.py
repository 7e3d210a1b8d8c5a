"""Source readers on miniature copies of each dataset's published layout.

The `make_*` builders here are also used by test_build_sources.py: each writes a handful of
small images (smooth random fields, different per location) in the dataset's folder layout and
returns the source config entry that reads it.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from geoxray.data.sources import READERS, read_source
from geoxray.data.sources.record import parse_gsv_name, parse_month, valid_latlon
from geoxray.data.tiles import latlon_to_global_px, metres_per_pixel

N = 6  # locations per miniature dataset
STEP_DEG = 0.004  # ~445 m between neighbouring locations: inside the default distractor band


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB field (not blank, compresses well)."""
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def grid_locations(lat0: float, lon0: float, n: int = N) -> list[tuple[float, float]]:
    return [(round(lat0 + STEP_DEG * (i % 3), 6), round(lon0 + STEP_DEG * (i // 3), 6))
            for i in range(n)]


def make_cvusa(root: Path, n: int = N, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for i, (lat, lon) in enumerate(grid_locations(43.24, -122.23, n), start=1):
        pid = f"{i:07d}"
        # The published panoramas are a 1232x224 horizon band; keep that aspect, smaller.
        write(root / "streetview" / "panos" / f"{pid}.jpg", smooth_image(rng, 56, 308))
        write(root / "bingmap" / "19" / f"{pid}.jpg", smooth_image(rng, 96, 96))
        # The aerial is centred a little south-west of the camera (as in CVUSA).
        rows.append([lat, lon, lat - 0.000004, lon - 0.000003, 90.0])
    (root / "split").mkdir(parents=True, exist_ok=True)
    with (root / "split" / "all.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {"kind": "CVUSA", "root": str(root), "zooms": [19]}


def make_vigor(root: Path, n: int = N, seed: int = 2, city: str = "Chicago") -> dict:
    rng = np.random.default_rng(seed)
    lines = []
    for i, (lat, lon) in enumerate(grid_locations(41.86, -87.67, n)):
        pano = f"pano{i:02d}_x-Y,{lat:.6f},{lon:.6f},.jpg"
        sats = [f"satellite_{lat + k * 1e-4:.6f}_{lon:.6f}.png" for k in range(4)]
        write(root / city / "panorama" / pano, smooth_image(rng, 64, 128))
        for s in sats:
            if not (root / city / "satellite" / s).exists():
                write(root / city / "satellite" / s, smooth_image(rng, 160, 160))
        dy, dx = 10.0 + i, -6.0 + i  # camera south of / east of the positive tile's centre
        lines.append(" ".join([pano, sats[0], str(dy), str(dx)]
                              + [f"{s} 0.0 0.0" for s in sats[1:]]))
    (root / "splits" / city).mkdir(parents=True, exist_ok=True)
    (root / "splits" / city / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
    return {"kind": "VIGOR", "root": str(root), "cities": [city]}


def gsv_name(lat: float, lon: float, date: str, panoid: str, heading: int, zoom: int) -> str:
    return f"{lat:.8f},{lon:.8f}_{date}_{panoid}_d{heading}_z{zoom}.jpg"


def make_cvglobal(root: Path, n: int = N, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    for i, (lat, lon) in enumerate(grid_locations(-27.38, 153.0, n)):
        name = gsv_name(lat, lon, "2022-12", f"5t1V_ei9-JeH{i}", 167 + 20 * i, 3)
        write(root / "streetview2048" / name, smooth_image(rng, 64, 128))
        write(root / "satellite" / name, smooth_image(rng, 96, 96))
    return {"kind": "CVGlobal", "root": str(root)}


def make_omnicity(root: Path, n: int = N, seed: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    for i, (lat, lon) in enumerate(grid_locations(40.69, -73.98, n)):
        split = "train" if i % 2 == 0 else "test"
        name = gsv_name(lat, lon, "2020-11", f"XoOd_WP{i}", 84 + 30 * i, 2)
        write(root / f"street-level/image-panorama/image-panorama-{split}" / name,
              smooth_image(rng, 64, 128))
        for k in (1, 2, 3):
            write(root / f"satellite-level/image-satellite/satellite-image-view{k}/view{k}-{split}"
                  / name, smooth_image(rng, 96, 96))
    return {"kind": "OmniCity", "root": str(root), "view_mpp": {1: 0.3, 2: 0.3, 3: 0.3}}


def make_llmgeo(root: Path, n: int = N, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for i, (lat, lon) in enumerate(grid_locations(58.41, 26.03, n)):
        pid = str(400 + i)
        for deg in (0, 90, 180, 270):
            write(root / str(deg) / f"{pid}.png", smooth_image(rng, 64, 64))
        write(root / "ProcessedTiles" / f"{pid}.png", smooth_image(rng, 96, 96))
        rows.append({"id": pid, "lat": lat, "lon": lon, "capture_time": "2024-08",
                     "zoom": 21 if i >= n - 2 else 20, "original_id": str(2600 + i)})
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"kind": "LLMGeo", "root": str(root)}


MAKERS = {"CVUSA": make_cvusa, "VIGOR": make_vigor, "CVGlobal": make_cvglobal,
          "OmniCity": make_omnicity, "LLMGeo": make_llmgeo}


def make_all(base: Path, n: int = N) -> list[dict]:
    return [make(base / kind, n) for kind, make in MAKERS.items()]


# --- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_reader_reads_every_location(tmp_path, kind):
    entry = MAKERS[kind](tmp_path / kind)
    options = {k: v for k, v in entry.items() if k not in ("kind", "root")}
    result = read_source(kind, entry["root"], **options)
    assert result.rejects == []
    assert len(result.records) == N
    for r in result.records:
        assert r.source == kind and valid_latlon(r.lat, r.lon)
        assert r.tiles and all(Path(t.path).is_file() for t in r.tiles)
        assert r.panorama is None or Path(r.panorama).is_file()
        assert "{dir}" in r.ground_out or "{deg}" in r.ground_out
    assert [r.pair_id for r in result.records] == sorted(r.pair_id for r in result.records)


def test_cvusa_tile_offset_matches_metres(tmp_path):
    entry = make_cvusa(tmp_path)
    r = read_source("CVUSA", entry["root"], zooms=[19]).records[0]
    t = r.tiles[0]
    assert r.heading_convention == "north_aligned" and r.center_azimuth == 0.0
    assert r.ground_out == f"views/{r.pair_id}{{dir}}.jpg" and t.out_path == f"19/{r.pair_id}.jpg"
    # Independent: the tile centre is 0.000004 deg south and 0.000003 deg west of the camera,
    # so the camera is north-east of it by that many metres over the ground resolution.
    mpp = 2 * math.pi * 6378137.0 * math.cos(math.radians(t.center_latlon[0])) / (256 * 2 ** 19)
    east = math.radians(0.000003) * 6378137.0 * math.cos(math.radians(r.lat))
    north = math.radians(0.000004) * 6378137.0
    assert t.camera_offset_px[0] == pytest.approx(east / mpp, rel=0.01)
    assert t.camera_offset_px[1] == pytest.approx(-north / mpp, rel=0.01)
    assert t.mpp == pytest.approx(mpp, rel=1e-9)


def test_vigor_offsets_and_city_resolution(tmp_path):
    entry = make_vigor(tmp_path)
    records = read_source("VIGOR", entry["root"]).records
    r = next(x for x in records if x.pair_id == "pano02_x-Y")
    t = r.tiles[0]
    # Line 3 of the label file has dy = 12 (south), dx = -4 (east): camera right of and below
    # the centre.
    assert t.camera_offset_px == (4.0, 12.0)
    assert t.mpp == pytest.approx(0.111262) and t.instance == "VIGOR_Chicago"
    assert r.ground_out == f"image/pano02_x-Y,{r.lat:.6f},{r.lon:.6f},{{dir}}.jpg"
    assert t.out_path == f"map/pano02_x-Y,{r.lat:.6f},{r.lon:.6f},.png"


def test_cvglobal_heading_from_file_name(tmp_path):
    entry = make_cvglobal(tmp_path)
    records = read_source("CVGlobal", entry["root"]).records
    by_id = {r.pair_id: r for r in records}
    r = by_id["5t1V_ei9-JeH2"]  # panoid with "_" and "-" survives the greedy match
    assert r.center_azimuth == 167 + 40 and r.heading_convention == "filename_heading"
    assert r.capture_time == "2022-12" and r.tiles[0].zoom == 18
    assert r.tiles[0].mpp == pytest.approx(float(metres_per_pixel(r.lat, 18)))
    assert r.tiles[0].instance == "CVGloable"
    assert r.ground_out.startswith("streetview2048/") and r.ground_out.endswith("_z3{dir}.jpg")


def test_omnicity_views_and_splits(tmp_path):
    entry = make_omnicity(tmp_path)
    records = read_source("OmniCity", entry["root"], view_mpp={1: 0.3}).records
    assert {t.instance for r in records for t in r.tiles} == {f"OmniCity_view{k}" for k in (1, 2, 3)}
    assert {r.split_hint for r in records} == {"train", "test"}
    r = records[0]
    assert r.tiles[0].out_path.startswith("satellite-level/image-satellite/satellite-image-view1/")
    assert r.tiles[0].mpp == 0.3 and r.tiles[1].mpp is None


def test_llmgeo_views_and_zoom_instances(tmp_path):
    entry = make_llmgeo(tmp_path)
    records = read_source("LLMGeo", entry["root"]).records
    assert {r.tiles[0].instance for r in records} == {"LMMGeo_zoom20", "LMMGeo_zoom21"}
    r = records[0]
    assert r.heading_convention == "views" and r.panorama is None
    assert [az for az, _ in r.views] == [0.0, 90.0, 180.0, 270.0]
    assert r.ground_out == f"{{deg}}/{r.pair_id}.png" and r.original_id == "2600"


def test_bad_rows_are_rejected_not_fatal(tmp_path):
    entry = make_llmgeo(tmp_path)
    meta = Path(entry["root"]) / "metadata.csv"
    meta.write_text(meta.read_text() + "999,95.0,10.0,2024-01,20,1\n500,,,2024-01,20,1\n"
                    "401b,58.4,26.0,2024-01,20,1\n")
    result = read_source("LLMGeo", entry["root"])
    assert len(result.records) == N
    assert sorted(r.reason for r in result.rejects) == ["bad_coordinates", "bad_coordinates",
                                                        "missing_image"]
    cvusa = make_cvusa(tmp_path / "cvusa")
    (Path(cvusa["root"]) / "streetview/panos/0000002.jpg").unlink()
    with (Path(cvusa["root"]) / "split/all.csv").open("a") as fh:
        fh.write("0.0,0.0,0.0,0.0,0\n")
    result = read_source("CVUSA", cvusa["root"], zooms=[19])
    assert len(result.records) == N - 1
    assert sorted(r.reason for r in result.rejects) == ["bad_coordinates", "missing_image"]


def test_unparseable_names_and_missing_layout(tmp_path):
    entry = make_cvglobal(tmp_path)
    write(Path(entry["root"]) / "streetview2048" / "not-a-gsv-name.jpg", np.zeros((8, 16, 3), np.uint8))
    result = read_source("CVGlobal", entry["root"])
    assert len(result.records) == N and [r.reason for r in result.rejects] == ["unparseable_name"]
    for kind in READERS:
        empty = read_source(kind, tmp_path / "nothing-here")
        assert empty.records == [] and [r.reason for r in empty.rejects] in (["missing_metadata"], [])


def test_gsv_name_and_month_parsing():
    d = parse_gsv_name("40.696135,-73.989554_2020-11_XoOdWP3115_MHheBq1lIxQ_d84_z2N.jpg")
    assert d["panoid"] == "XoOdWP3115_MHheBq1lIxQ" and d["heading"] == "84" and d["suffix"] == "N"
    assert d["stem"] == "40.696135,-73.989554_2020-11_XoOdWP3115_MHheBq1lIxQ_d84_z2"
    assert parse_gsv_name("foo.jpg") is None
    assert parse_month("2024-08-17") == "2024-08" and parse_month("2024-13") is None
    assert not valid_latlon(0.0, 0.0) and not valid_latlon(float("nan"), 1.0)
    assert not valid_latlon(89.0, 10.0) and valid_latlon(-33.9, 151.2)


def test_global_pixels_of_the_miniature_grid_are_distinct():
    # The grid step must put neighbours in different z19 pixels (else duplicates would merge).
    xs = {tuple(np.floor(latlon_to_global_px(lat, lon, 19))) for lat, lon in grid_locations(43.0, -122.0)}
    assert len(xs) == N
