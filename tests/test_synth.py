"""The synthetic GeoX-Bench world: index records, determinism, and geometry checked against
hand-written camera formulas (not the renderer's own code)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from geoxray.data import render
from geoxray.data.synth import (INSTANCE_BY_NAME, generate, make_config, plan_locations,
                                train_per_instance, world_seed)
from geoxray.data.synth_index import ITEMS_PER_BASE_RECORD
from geoxray.data.world import Marker, World

FOLDERS = ("Orin4_SameLocation", "Location4_50_in_range", "LocationSelection")
AUTHORS_INDEX = Path(__file__).resolve().parents[1] / "geoxray/bench/geoxbench/index"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate(out, "tiny", seed=0, workers=2, progress=False)
    return out, summary


def _load(out: Path, folder: str, instance: str, split: str = "test") -> list[dict]:
    base = out / "index" / ("train" if split == "train" else "")
    return json.loads((base / folder / f"{instance}.json").read_text())


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# -- index records --------------------------------------------------------------------------
def test_tiny_counts_per_folder_and_instance(tiny):
    out, summary = tiny
    instances = ["CVUSA_zoom18", "VIGOR_Chicago"]
    assert summary.instances == instances
    for folder in FOLDERS:
        for inst in instances:
            recs = _load(out, folder, inst)
            assert len(recs) == 16  # 4 locations x 4 headings
            assert Counter(r["GroundImage"]["orientation"] for r in recs) == \
                {"N": 4, "E": 4, "S": 4, "W": 4}
        assert summary.records[f"test/{folder}"] == 32
    assert summary.items == {"test": 32 * 39, "train": 0}
    assert summary.images == 8 * 6 and not (out / "index" / "train").exists()
    # Every file the index names exists under images/.
    for folder in FOLDERS:
        for inst in instances:
            for r in _load(out, folder, inst):
                paths = [r["GroundImage"]["file_path"]]
                paths += [r["AerialImage"]["file_path"]] if "AerialImage" in r else \
                    [c["AerialImage"]["file_path"] for c in r["AerialCandidates"]]
                assert all((out / "images" / p).is_file() for p in paths)


def test_records_have_the_authors_fields(tiny):
    out, _ = tiny
    for folder in FOLDERS:
        for inst in ("CVUSA_zoom18", "VIGOR_Chicago"):
            theirs = json.loads((AUTHORS_INDEX / folder / f"{inst}.json").read_text())[0]
            ours = _load(out, folder, inst)[0]
            assert set(ours) == set(theirs)
            assert set(ours["GroundImage"]) == set(theirs["GroundImage"])
            aerial = (lambda r: r["AerialImage"]) if "AerialImage" in theirs else \
                (lambda r: r["AerialCandidates"][0]["AerialImage"])
            assert set(aerial(ours)) <= set(aerial(theirs))
            lat, lon = map(float, ours["GroundImage"]["real_location"].split(","))
            spec = INSTANCE_BY_NAME[inst]
            assert abs(lat - spec.origin[0]) < 1.0 and abs(lon - spec.origin[1]) < 1.0


def test_in_range_balanced_and_negatives_are_other_locations(tiny):
    out, _ = tiny
    for inst in ("CVUSA_zoom18", "VIGOR_Chicago"):
        own = {r["image_id"]: r["AerialImage"]["file_path"]
               for r in _load(out, "Orin4_SameLocation", inst)}
        all_tiles = set(own.values())
        recs = _load(out, "Location4_50_in_range", inst)
        flags = [r["GroundImage"]["in_range"] for r in recs]
        assert flags.count(True) == flags.count(False) == 8
        for r in recs:
            tile = r["AerialImage"]["file_path"]
            if r["GroundImage"]["in_range"]:
                assert tile == own[r["image_id"]]
            else:
                assert tile != own[r["image_id"]] and tile in all_tiles


def test_location_selection_has_one_original_and_three_other_locations(tiny):
    out, _ = tiny
    positions = Counter()
    for inst in ("CVUSA_zoom18", "VIGOR_Chicago"):
        own = {r["image_id"]: r["AerialImage"]["file_path"]
               for r in _load(out, "Orin4_SameLocation", inst)}
        for r in _load(out, "LocationSelection", inst):
            cands = r["AerialCandidates"]
            paths = [c["AerialImage"]["file_path"] for c in cands]
            originals = [i for i, c in enumerate(cands) if c["is_original"] is True]
            assert len(cands) == 4 and len(set(paths)) == 4 and len(originals) == 1
            assert paths[originals[0]] == own[r["image_id"]]
            assert set(paths) <= set(own.values())  # distractors: same instance, other places
            positions[originals[0]] += 1
    assert len(positions) >= 3  # the order really is shuffled


def test_index_reader_builds_all_items(tiny):
    from geoxray.bench.index import BuildProblems, build_items
    out, summary = tiny
    problems = BuildProblems()
    table = build_items(out / "index", out / "images", problems)
    assert problems.total == 0
    assert table.num_rows == summary.items["test"] == 1248
    assert "" not in table.column("image_hashes").combine_chunks().flatten().to_pylist()


def test_world_and_panorama_metadata(tiny):
    out, _ = tiny
    world = json.loads((out / "world.json").read_text())
    assert world["preset"] == "tiny" and world["seed"] == 0
    assert world["parameters"]["view_size"] == 256
    panos = json.loads((out / "panoramas.json").read_text())["panoramas"]
    assert len(panos) == 8
    # Web Mercator: 156543.034 m/px at zoom 0 on the equator, halving per zoom, times cos(lat).
    for p in panos:
        zoom = INSTANCE_BY_NAME[p["instance"]].zoom
        want = 156543.03392804097 / 2 ** zoom * math.cos(math.radians(p["lat"]))
        assert p["metres_per_pixel"] == pytest.approx(want, rel=1e-9)
    for p in panos:
        img = cv2.imread(str(out / "images" / p["file_path"]))
        assert img.shape[:2] == (p["height"], p["width"]) and p["width"] == 2 * p["height"]
        assert 0 < p["heading_offset_deg"] < 360
        assert p["center_azimuth_deg"] == pytest.approx((p["heading_offset_deg"] + 180) % 360)


def test_same_seed_gives_identical_bytes_with_spawned_workers(tiny, tmp_path):
    """Fresh interpreters (other hash seeds), another worker count and one instance alone
    give byte-identical files for that instance: nothing depends on process, order or
    the other instances."""
    out, _ = tiny
    again = tmp_path / "again"
    generate(again, "tiny", seed=0, workers=2, progress=False, start_method="spawn",
             instances=["VIGOR_Chicago"])
    files = sorted(p.relative_to(again) for p in again.rglob("*")
                   if p.is_file() and p.parent != again)
    assert len(files) == 3 + 4 * 6  # 3 index files, 4 locations x 6 images
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_workers_spawn_unless_asked_to_fork():
    # A parent that ran OpenCV (threads invisible to `threading`) deadlocked forked workers.
    from geoxray.data.synth import _start_method
    assert _start_method(None) == "spawn"
    assert _start_method("fork") == "fork"


def test_other_seed_gives_other_world(tmp_path):
    a = plan_locations(make_config("tiny", seed=0))
    b = plan_locations(make_config("tiny", seed=1))
    assert [(p.x, p.y) for p in a] != [(p.x, p.y) for p in b]


def test_overrides_train_split_and_inline_workers(tmp_path):
    out = tmp_path / "small"
    s = generate(out, "tiny", seed=3, workers=1, progress=False, instances=1, locations=4,
                 train_locations=5, view_size=64, tile_size=128, panorama_width=128)
    assert s.locations == {"test": 4, "train": 5}
    assert s.records["train/LocationSelection"] == 20
    assert s.items == {"test": 16 * 39, "train": 20 * 39}
    train = _load(out, "Location4_50_in_range", "CVUSA_zoom18", "train")
    assert [r["GroundImage"]["in_range"] for r in train].count(True) == 10
    test_tiles = {r["AerialImage"]["file_path"] for r in _load(out, "Orin4_SameLocation", "CVUSA_zoom18")}
    for r in _load(out, "LocationSelection", "CVUSA_zoom18", "train"):
        assert not {c["AerialImage"]["file_path"] for c in r["AerialCandidates"]} & test_tiles
    assert cv2.imread(str(out / "images/CVUSA_zoom18/aerial/00004.jpg")).shape == (128, 128, 3)
    with pytest.raises(FileExistsError):
        generate(out, "tiny", workers=1, progress=False)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="view_sise"):
        make_config("tiny", view_sise=3)
    with pytest.raises(ValueError, match="Atlantis"):
        make_config("tiny", instances=["Atlantis"])
    with pytest.raises(ValueError, match="locations=3"):
        make_config("tiny", locations=3)
    with pytest.raises(ValueError, match="train_locations"):
        make_config("tiny", train_locations=3)


@pytest.fixture(scope="module")
def full_plan():
    return plan_locations(make_config("full"))


def test_paper_and_full_presets_have_the_papers_counts(full_plan):
    paper = make_config("paper")
    assert len(paper.instances) == 11 and paper.locations == 25 and paper.train_locations == 0
    assert 11 * 25 * 4 * ITEMS_PER_BASE_RECORD == 42_900
    full = make_config("full")
    per = train_per_instance(full)
    assert sum(per) == 4571 and max(per) - min(per) <= 1
    assert (11 * 25 + 4571) * 4 * ITEMS_PER_BASE_RECORD == 755_976
    locs = full_plan
    assert len(locs) == 11 * 25 + 4571
    test = {(p.instance, p.real_location) for p in locs if p.split == "test"}
    train = {(p.instance, p.real_location) for p in locs if p.split == "train"}
    assert len(test) == 275 and len(train) == 4571 and not test & train


def test_paper_test_split_is_fulls_test_split(full_plan):
    from geoxray.data.synth_index import index_records
    paper = plan_locations(make_config("paper"))
    full = [p for p in full_plan if p.split == "test"]
    assert paper == full
    assert index_records(0, paper) == index_records(0, full)


def test_world_colour_does_not_depend_on_the_batch():
    """Shared per-line / per-block lookups must give what per-sample hashing gives: points
    1,000 km apart (hashed per sample) equal the same points coloured in local batches."""
    world = World(4)
    rng = np.random.default_rng(0)
    centres = rng.uniform(-5e5, 5e5, (6, 2))
    local = rng.uniform(-60, 60, (6, 500, 2)) + centres[:, None, :]
    together = world.colour(local[..., 0].T.ravel(), local[..., 1].T.ravel(), 0.1)
    apart = np.stack([world.colour(local[i, :, 0], local[i, :, 1], 0.1) for i in range(6)], 1)
    assert np.array_equal(together, apart.reshape(-1, 3))
    assert len(np.unique(together.round(3), axis=0)) > 50  # a textured world, not one colour


# -- geometry: hand-written pinhole and equirectangular formulas -----------------------------
def _marker_centroid(world_seed_: int, markers: list[Marker], draw) -> tuple[float, float]:
    """Where the markers land in an image: the centroid of what changes when they are added,
    weighted by the change (so partly covered edge pixels count by coverage). Pixel centres
    at +0.5."""
    plain = draw(World(world_seed_)).astype(np.float64)
    marked = draw(World(world_seed_, markers=markers)).astype(np.float64)
    diff = np.abs(marked - plain).sum(axis=2)
    assert diff.sum() > 0, "marker not visible"
    rows, cols = np.indices(diff.shape)
    return ((cols + 0.5) * diff).sum() / diff.sum(), ((rows + 0.5) * diff).sum() / diff.sum()


def _pinhole(dx, dy, height, heading_deg, pitch_deg, fov_deg, w, h):
    """Image position of the ground point (dx east, dy north) from the camera: rotate the
    world offset into camera axes by yaw then pitch, then project."""
    yaw, pitch = math.radians(heading_deg), math.radians(pitch_deg)
    fwd_h = dx * math.sin(yaw) + dy * math.cos(yaw)       # horizontal forward distance
    right = dx * math.cos(yaw) - dy * math.sin(yaw)
    up = -height
    depth = fwd_h * math.cos(pitch) + up * math.sin(pitch)   # pitch up tilts forward axis up
    cam_up = -fwd_h * math.sin(pitch) + up * math.cos(pitch)
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    return w / 2 + f * right / depth, h / 2 - f * cam_up / depth


@pytest.mark.parametrize("heading,pitch,dx,dy", [
    (0.0, 0.0, 1.5, 9.0),      # north, a little right
    (90.0, 0.0, 8.0, -2.0),    # east: a point to the south is on the right
    (213.0, 0.0, -6.0, -7.0),
    (300.0, -20.0, -5.0, 2.5),  # looking down
])
def test_view_projects_ground_points_like_a_pinhole(heading, pitch, dx, dy):
    cx, cy, cam_h, size = 120.0, -40.0, 2.5, (240, 180)
    draw = lambda w: render.render_view(w, cx, cy, heading, pitch_deg=pitch, size=size,
                                        camera_height=cam_h, haze_m=None, supersample=4)
    got = _marker_centroid(11, [Marker(cx + dx, cy + dy, 0.12, (1.0, 0.0, 1.0))], draw)
    want = _pinhole(dx, dy, cam_h, heading, pitch, 90.0, *size)
    assert got == pytest.approx(want, abs=0.35)


def test_tile_is_north_up_with_the_documented_scale():
    cx, cy, mpp, size = 50.0, 75.0, 0.2, 256
    for dx, dy in ((10.0, 0.0), (0.0, 12.0), (-7.0, -9.5)):
        draw = lambda w: render.render_tile(w, cx, cy, mpp, size, supersample=2)
        got = _marker_centroid(5, [Marker(cx + dx, cy + dy, 0.5, (0.0, 1.0, 1.0))], draw)
        assert got == pytest.approx((size / 2 + dx / mpp, size / 2 - dy / mpp), abs=0.1)


@pytest.mark.parametrize("azimuth,distance", [(0.0, 6.0), (95.0, 4.0), (250.0, 9.0)])
def test_panorama_column_is_azimuth_from_the_heading_offset(azimuth, distance):
    cx, cy, cam_h, width, offset = -30.0, 20.0, 2.5, 1024, 137.25
    a = math.radians(azimuth)
    marker = Marker(cx + distance * math.sin(a), cy + distance * math.cos(a), 0.25, (1.0, 0.0, 1.0))
    draw = lambda w: render.render_panorama(w, cx, cy, heading_offset_deg=offset, width=width,
                                            camera_height=cam_h, haze_m=None, supersample=2)
    u, v = _marker_centroid(9, [marker], draw)
    want_u = ((azimuth - offset) % 360.0) / 360.0 * width
    want_v = (90.0 + math.degrees(math.atan2(cam_h, distance))) / 180.0 * (width / 2)
    # A half-pixel slip (column centre vs left edge at the offset) must show: 0.15 px.
    assert u == pytest.approx(want_u, abs=0.15) and v == pytest.approx(want_v, abs=0.3)
    assert render.panorama_column(azimuth, width, offset) + 0.5 == pytest.approx(want_u)


def _ground_homography(tile_size, mpp, heading, cam_h, w, h):
    """3x3 map from tile pixels to view pixels through the ground plane (pitch 0), built from
    the pinhole formula: the view sees ground offset (dx, dy) at
    (w/2 + f right/fwd, h/2 + f cam_h/fwd), both affine in the tile pixel over fwd.
    OpenCV's pixel centres are at integers, ours at +0.5: shift in and out."""
    f = (w / 2) / math.tan(math.radians(45.0))
    s, c = math.sin(math.radians(heading)), math.cos(math.radians(heading))
    # dx = (X - S/2) mpp, dy = -(Y - S/2) mpp  (tile pixel coordinates X, Y)
    A = np.array([[mpp, 0, -tile_size / 2 * mpp], [0, -mpp, tile_size / 2 * mpp], [0, 0, 1]])
    right = np.array([c, -s, 0.0]) @ A
    fwd = np.array([s, c, 0.0]) @ A
    M = np.stack([w / 2 * fwd + f * right, h / 2 * fwd + f * cam_h * np.array([0, 0, 1.0]), fwd])
    shift = lambda d: np.array([[1, 0, d], [0, 1, d], [0, 0, 1.0]])
    return shift(-0.5) @ M @ shift(0.5)


def _view_vs_tile_error(view, tile, mpp, heading, cam_h):
    h, w = view.shape[:2]
    M = _ground_homography(tile.shape[0], mpp, heading, cam_h, w, h)
    warped = cv2.warpPerspective(tile, M, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    inside = cv2.warpPerspective(np.ones(tile.shape[:2], np.uint8), M, (w, h),
                                 flags=cv2.INTER_NEAREST) > 0
    rows = np.arange(h)[:, None] + 0.5
    mask = inside & (rows > h / 2 + 4)  # ground rows within the tile, off the horizon
    assert mask.sum() > 0.1 * w * h
    return np.abs(view.astype(float) - warped.astype(float))[mask].mean()


def test_view_is_a_homography_of_the_tile_for_its_heading_only():
    world = World(21)
    cx, cy = world.snap_to_road(400.0, -250.0)
    mpp = 0.04
    tile = render.render_tile(world, cx, cy, mpp, 512, supersample=2)
    for heading in (0.0, 90.0, 200.0):
        view = render.render_view(world, cx, cy, heading, size=256, haze_m=None, supersample=2)
        errors = {k: _view_vs_tile_error(view, tile, mpp, heading + k, 2.5)
                  for k in (0, 1, 90, 180, 270)}
        # Same pixels up to resampling; one degree off is already clearly worse.
        assert errors[0] < 2.0 and errors[1] > 2 * errors[0], errors
        assert min(errors[90], errors[180], errors[270]) > 10 * errors[0], errors


def _cut_view(pano: np.ndarray, offset: float, heading: float, size: int) -> np.ndarray:
    """A pitch-0, 90-degree view cut from an equirectangular panorama with cv2.remap, using
    only the documented convention (u = W (az - offset)/360, v = H (90 - el)/180)."""
    H, W = pano.shape[:2]
    f = size / 2
    cols, rows = np.meshgrid(np.arange(size) + 0.5 - size / 2, np.arange(size) + 0.5 - size / 2)
    az = heading + np.degrees(np.arctan2(cols, f))
    el = -np.degrees(np.arctan2(rows, np.hypot(cols, f)))
    u = ((az - offset) % 360.0) / 360.0 * W - 0.5
    v = (90.0 - el) / 180.0 * H - 0.5
    return cv2.remap(pano, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_WRAP)


def test_view_cut_from_panorama_matches_the_direct_render():
    world = World(33)
    cx, cy = world.snap_to_road(-900.0, 300.0)
    offset = 251.5
    pano = render.render_panorama(world, cx, cy, heading_offset_deg=offset, width=2048)
    for heading in (0.0, 90.0, 180.0, 270.0):
        direct = render.render_view(world, cx, cy, heading, size=256, supersample=2).astype(float)
        err = {k: np.abs(_cut_view(pano, offset, heading + k, 256) - direct).mean()
               for k in (0, 2, 90)}
        assert err[0] < 2.5 and err[2] > 2 * err[0] and err[90] > 5 * err[0], (heading, err)


def test_dataset_views_tiles_and_panoramas_agree(tiny):
    """On the generated files: the N view is the yaw-0 render; each view matches its own tile
    through the ground homography best at its own heading; the panorama cut at a heading
    matches that heading's view."""
    out, _ = tiny
    cfg = make_config("tiny")
    for p in json.loads((out / "panoramas.json").read_text())["panoramas"][::3]:
        world = World(world_seed(cfg, p["instance"]), INSTANCE_BY_NAME[p["instance"]].style)
        x, y = p["world_xy_m"]
        views = {o: _read_rgb(out / "images" / path) for o, path in p["views"].items()}
        yaw0 = render.render_view(world, x, y, 0.0, size=256, supersample=2)
        assert np.abs(views["N"].astype(float) - yaw0).mean() < 2.0
        assert np.abs(views["E"].astype(float) - yaw0).mean() > 10.0
        tile = _read_rgb(out / "images" / p["aerial"])
        pano = _read_rgb(out / "images" / p["file_path"])
        for o, heading in (("N", 0.0), ("E", 90.0), ("S", 180.0), ("W", 270.0)):
            errors = [_view_vs_tile_error(views[o], tile, p["metres_per_pixel"], heading + k, 2.5)
                      for k in (0, 90, 180, 270)]
            assert errors[0] == min(errors), (p["location_id"], o, errors)
            cuts = [np.abs(_cut_view(pano, p["heading_offset_deg"], heading + k, 256)
                           - views[o].astype(float)).mean() for k in (0, 90, 180, 270)]
            assert cuts[0] == min(cuts) and cuts[0] < 12.0, (p["location_id"], o, cuts)
