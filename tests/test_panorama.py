"""Panorama -> perspective views: against an independent numpy reference (rotation matrices
from scipy, explicit spherical coordinates, hand-written bilinear sampling with wrap-around),
against the synthetic world's direct pinhole renders, and on the documented conventions."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geoxray.data.panorama import (CARDINALS, OCTANTS, azimuth_column, cardinal_views,
                                   column_azimuth, direction_name, perspective_view,
                                   rotate_to_north, view_maps)


# --- the independent reference -----------------------------------------------------------------
def reference_view(pano: np.ndarray, yaw: float, pitch: float, fov: float, out_h: int, out_w: int,
                   center_azimuth: float = 0.0) -> np.ndarray:
    """Written from the definition, sharing nothing with the module: a camera looking north
    in (east, north, up), pitched about the east axis, then turned clockwise by yaw; each
    ray's compass azimuth and elevation index the equirectangular image (centre column =
    `center_azimuth`, full sphere), sampled bilinearly with columns wrapping around."""
    h, w = pano.shape[:2]
    f = out_w / 2 / math.tan(math.radians(fov) / 2)
    jj, ii = np.meshgrid(np.arange(out_w) + 0.5, np.arange(out_h) + 0.5)
    cam = np.stack([jj - out_w / 2, np.full_like(jj, f), -(ii - out_h / 2)], axis=-1)  # E, N, U
    rot = Rotation.from_euler("z", -yaw, degrees=True) * Rotation.from_euler("x", pitch, degrees=True)
    d = rot.apply(cam.reshape(-1, 3))
    az = np.degrees(np.arctan2(d[:, 0], d[:, 1]))
    el = np.degrees(np.arcsin(d[:, 2] / np.linalg.norm(d, axis=1)))
    u = (((az - center_azimuth) / 360.0 + 0.5) % 1.0) * w - 0.5
    v = np.clip((90.0 - el) / 180.0 * h - 0.5, 0, h - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    a, b = u0 % w, (u0 + 1) % w
    c, e = v0, np.minimum(v0 + 1, h - 1)
    p = pano.astype(np.float64)
    out = ((1 - fv) * ((1 - fu) * p[c, a] + fu * p[c, b]) + fv * ((1 - fu) * p[e, a] + fu * p[e, b]))
    return out.reshape(out_h, out_w, -1)


def smooth_pano(h: int = 256, w: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    # Tile horizontally before resizing so the seam is as smooth as the rest.
    wide = cv2.resize(np.concatenate([small] * 3, axis=1), (3 * w, h), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(wide[:, w:2 * w])


@pytest.mark.parametrize("yaw, pitch, fov, size, center", [
    (0.0, 0.0, 90.0, (64, 64), 0.0),
    (180.0, 0.0, 90.0, (48, 80), 0.0),       # looks across the seam
    (37.5, 12.0, 70.0, (64, 64), 0.0),
    (300.0, -25.0, 120.0, (40, 60), 0.0),
    (90.0, 0.0, 90.0, (64, 64), 167.0),      # a panorama whose centre looks at 167 degrees
    (200.0, 5.0, 60.0, (32, 96), 333.3),
])
def test_view_matches_independent_reference(yaw, pitch, fov, size, center):
    pano = smooth_pano()
    got = perspective_view(pano, yaw, pitch, fov, size, center_azimuth_deg=center).astype(np.float64)
    want = reference_view(pano, yaw, pitch, fov, size[0], size[1], center)
    err = np.abs(got - want)
    # Only the final rounding to uint8 (and OpenCV's 1/32-pixel weights) may differ; a view
    # one degree off is ~7 grey levels away on this image.
    assert err.mean() < 0.3 and err.max() <= 1.0, (err.mean(), err.max())


def test_north_marker_lands_in_the_north_view():
    h, w = 128, 256
    for heading in (0.0, 90.0, 167.0, 301.5):
        pano = np.full((h, w, 3), 60, np.uint8)
        # Paint north red and east green, at the columns this heading puts them.
        for az, colour in ((0.0, (255, 0, 0)), (90.0, (0, 255, 0))):
            u = int(round(float(azimuth_column(az, w, heading))))
            pano[:, max(0, u - 3):u + 4] = colour
        views = cardinal_views(pano, heading, fov_deg=60.0, size=32)
        assert views["N"][16, 16].tolist() == [255, 0, 0], heading
        assert views["E"][16, 16].tolist() == [0, 255, 0], heading
        assert views["S"][16, 16].tolist() == [60, 60, 60] == views["W"][16, 16].tolist()


def test_column_convention():
    w = 360
    # North-aligned: centre of the image (between columns 179 and 180) looks north; left edge south.
    assert column_azimuth(179.5, w) == pytest.approx(0.0)
    assert column_azimuth(-0.5, w) == pytest.approx(180.0)
    assert column_azimuth(89.5, w) == pytest.approx(270.0)  # W at W/4
    assert column_azimuth(269.5, w) == pytest.approx(90.0)  # E at 3W/4
    az = np.linspace(0, 359, 50)
    assert np.allclose(column_azimuth(azimuth_column(az, w, 42.0), w, 42.0), az)


@pytest.mark.parametrize("heading", [90.0, 33.0, 271.7])
def test_rotate_to_north_then_cut_equals_cut_with_heading(heading):
    pano = smooth_pano(seed=3)
    north = rotate_to_north(pano, heading)
    for name in CARDINALS:
        direct = perspective_view(pano, CARDINALS[name], 0, 90, 64, center_azimuth_deg=heading)
        via_north = perspective_view(north, CARDINALS[name], 0, 90, 64, center_azimuth_deg=0.0)
        err = np.abs(direct.astype(int) - via_north.astype(int))
        # Two interpolations against one: small differences only.
        assert err.mean() < 1.0, (name, err.mean())


def test_rotate_to_north_whole_pixels_is_an_exact_roll():
    pano = smooth_pano(seed=4)
    w = pano.shape[1]
    north = rotate_to_north(pano, 90.0)  # 90 degrees = w/4 columns
    assert np.array_equal(north, np.roll(pano, w // 4, axis=1))
    # The column that looked north (centre minus a quarter turn) is now at the centre.
    assert np.array_equal(north[:, w // 2], pano[:, w // 2 - w // 4])


def test_cropped_band_panorama_blacks_out_uncovered_rows():
    # CVUSA-like 1232x224 band (square pixels: 65.5 degrees of elevation around the horizon).
    band = np.full((56, 308, 3), 200, np.uint8)
    view = perspective_view(band, 0.0, 0.0, 90.0, 64)
    assert view[32, 32].tolist() == [200, 200, 200]
    assert view[0, 32].tolist() == [0, 0, 0] and view[63, 32].tolist() == [0, 0, 0]
    # Elevation of row r at pitch 0 and column 32: atan((32 - r - 0.5) / 32); the band ends at
    # +-32.7 degrees, so rows within 20 of the centre are covered.
    assert (view[12:52, 32] == 200).all()


def test_maps_are_cached_and_read_only():
    a = view_maps(128, 256, 10.0, 0.0, 90.0, 32, 32)
    b = view_maps(128, 256, 10.0, 0.0, 90.0, 32, 32)
    assert a[0] is b[0] and not a[0].flags.writeable


def test_direction_names():
    assert [direction_name(v) for v in OCTANTS.values()] == list(OCTANTS)
    assert direction_name(-90) == "W"
    with pytest.raises(ValueError):
        direction_name(10)


def test_view_cut_from_synthetic_panorama_matches_its_pinhole_render():
    render = pytest.importorskip("geoxray.data.render")
    world_mod = pytest.importorskip("geoxray.data.world")
    world = world_mod.World(7)
    x, y = 35.0, -20.0
    offset = 23.0  # the synthetic panorama's column 0 LEFT EDGE looks at this azimuth
    pano = render.render_panorama(world, x, y, heading_offset_deg=offset, width=1024, supersample=2)
    center = offset + 180.0  # ... so its centre column looks half a turn further
    size = 96
    errors = {}
    for heading in (0.0, 90.0, 200.0):
        want = render.render_view(world, x, y, heading, size=size, supersample=2).astype(float)
        inner = (slice(8, size - 8), slice(8, size - 8))
        errors[heading] = [np.abs(perspective_view(pano, heading + d, 0.0, 90.0, size,
                                                   center_azimuth_deg=center)[inner]
                                  - want[inner]).mean() for d in (0.0, 2.0, -2.0, 90.0)]
    for heading, (right, plus2, minus2, quarter) in errors.items():
        assert right < 2.5, errors  # resampling from a 2.8 px/degree panorama
        # The heading convention matches to within a degree, not just a quarter turn.
        assert plus2 > right and minus2 > right and quarter > 5 * right, errors


def test_views_cut_from_generated_panoramas_match_the_rendered_views(tmp_path):
    """The synthetic benchmark's panoramas.json (centre azimuth per panorama, the same
    convention as ours) against its own rendered N/E/S/W views."""
    import json

    synth = pytest.importorskip("geoxray.data.synth")
    # Inline (workers=1): a forked worker pool can hang once OpenCV's threads have run here.
    synth.generate(tmp_path, preset="tiny", workers=1, progress=False, instances=1, locations=4)
    root = tmp_path / "images"
    entries = json.loads((tmp_path / "panoramas.json").read_text())["panoramas"]
    assert entries
    for entry in entries:
        pano = cv2.imread(str(root / entry["file_path"]))
        errors = {0.0: [], 3.0: [], -3.0: [], 90.0: []}
        for name, az in CARDINALS.items():
            want = cv2.imread(str(root / entry["views"][name])).astype(float)
            n = want.shape[0]
            inner = (slice(16, n - 16), slice(16, n - 16))
            for d in errors:
                got = perspective_view(pano, az + d, 0.0, entry["fov_deg"], n,
                                       center_azimuth_deg=entry["center_azimuth_deg"])
                errors[d].append(np.abs(got[inner] - want[inner]).mean())
        right, plus3, minus3, quarter = (float(np.mean(v)) for v in errors.values())
        # The panorama (1.4 px/degree) is coarser than the views (2.8 px/degree): blur only.
        assert right < 6.0, (entry["file_path"], errors)
        assert right < plus3 and right < minus3 and quarter > 3 * right, (entry["file_path"], errors)
