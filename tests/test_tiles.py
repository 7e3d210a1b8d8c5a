"""Web-Mercator math and tile stitching, checked against independent formulas and against
direct sampling of the raster the tiles were cut from."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from geoxray.data.tiles import (crop_extent, folder_fetch, global_px_to_latlon, haversine_m,
                                latlon_to_global_px, metres_per_pixel, mosaic_around,
                                resample_square, stitch_box, tiles_touched)


def osm_tile(lat: float, lon: float, z: int) -> tuple[float, float]:
    """The OpenStreetMap wiki's formula (sec/tan form), in fractional tile units."""
    n = 2 ** z
    lat_r = math.radians(lat)
    return n * (lon + 180.0) / 360.0, n * (1.0 - math.log(math.tan(lat_r) + 1 / math.cos(lat_r)) / math.pi) / 2.0


@pytest.mark.parametrize("lat, lon, z", [(51.5074, -0.1278, 10), (-33.8688, 151.2093, 17),
                                         (43.24722, -122.23635, 19), (0.0, 0.0, 3)])
def test_global_pixels_match_osm_formula(lat, lon, z):
    x, y = latlon_to_global_px(lat, lon, z)
    tx, ty = osm_tile(lat, lon, z)
    assert float(x) == pytest.approx(tx * 256, abs=1e-6)
    assert float(y) == pytest.approx(ty * 256, abs=1e-6)
    back = global_px_to_latlon(x, y, z)
    assert float(back[0]) == pytest.approx(lat, abs=1e-9) and float(back[1]) == pytest.approx(lon, abs=1e-9)


def test_known_tile_and_resolution():
    x, y = latlon_to_global_px(51.5074, -0.1278, 10)
    assert (int(x // 256), int(y // 256)) == (511, 340)  # London's z10 tile
    assert float(metres_per_pixel(0.0, 0)) == pytest.approx(156543.03392, rel=1e-9)
    assert float(metres_per_pixel(60.0, 19)) == pytest.approx(156543.03392 / 2 ** 19 / 2, rel=1e-9)
    assert float(haversine_m(0, 0, 1, 0)) == pytest.approx(2 * math.pi * 6378137 / 360, rel=1e-9)
    # Vectorised.
    d = haversine_m(np.zeros(3), np.zeros(3), np.array([0, 1, 2]), np.zeros(3))
    assert d.shape == (3,) and d[0] == 0 and d[2] == pytest.approx(2 * d[1])


class Raster:
    """A smooth global-pixel raster around a point, cut into 256-px z/x/y tiles."""

    def __init__(self, lat: float, lon: float, z: int, tiles: int = 4, seed: int = 0):
        cx, cy = latlon_to_global_px(lat, lon, z)
        self.z, self.tx0, self.ty0 = z, int(cx // 256) - tiles // 2, int(cy // 256) - tiles // 2
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, (tiles * 16, tiles * 16, 3), dtype=np.uint8)
        self.img = cv2.resize(small, (tiles * 256, tiles * 256), interpolation=cv2.INTER_CUBIC)
        self.n = tiles

    def write(self, root, skip: set = frozenset()):
        for j in range(self.n):
            for i in range(self.n):
                if (i, j) in skip:
                    continue
                p = root / str(self.z) / str(self.tx0 + i) / f"{self.ty0 + j}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(p), cv2.cvtColor(self.img[j * 256:(j + 1) * 256, i * 256:(i + 1) * 256],
                                                 cv2.COLOR_RGB2BGR))

    def fetch(self, z, x, y):
        i, j = x - self.tx0, y - self.ty0
        if z != self.z or not (0 <= i < self.n and 0 <= j < self.n):
            return None
        return self.img[j * 256:(j + 1) * 256, i * 256:(i + 1) * 256]

    def sample(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        """Bilinear sample at continuous global pixel coordinates (pixel centres at +0.5)."""
        r, c = gy - self.ty0 * 256 - 0.5, gx - self.tx0 * 256 - 0.5
        return np.stack([map_coordinates(self.img[..., k].astype(float), [r, c], order=1)
                         for k in range(3)], axis=-1)


def test_native_resolution_mosaic_equals_direct_sampling(tmp_path):
    lat, lon, z = 43.247219, -122.236351, 19
    raster = Raster(lat, lon, z)
    raster.write(tmp_path)
    out = 128
    img, missing = mosaic_around(folder_fetch(tmp_path), lat, lon, z, extent_m=None, out_size=out)
    assert missing == 0 and img.shape == (out, out, 3)
    cx, cy = (float(v) for v in latlon_to_global_px(lat, lon, z))
    jj, ii = np.meshgrid(np.arange(out) + 0.5, np.arange(out) + 0.5)
    want = raster.sample(cx - out / 2 + jj, cy - out / 2 + ii)
    err = np.abs(img.astype(float) - want)
    assert err.mean() < 0.3 and err.max() <= 1.0, (err.mean(), err.max())


def test_downscaled_mosaic_is_the_area_average(tmp_path):
    lat, lon, z = -33.8688, 151.2093, 17
    raster = Raster(lat, lon, z, seed=1)
    cx, cy = (float(v) for v in latlon_to_global_px(lat, lon, z))
    # Move the centre onto a pixel corner so a 2x shrink averages whole 2x2 blocks.
    lat, lon = (float(v) for v in global_px_to_latlon(round(cx), round(cy), z))
    cx, cy = round(cx), round(cy)
    out = 64
    extent = 2 * out * float(metres_per_pixel(lat, z))
    img, missing = mosaic_around(raster.fetch, lat, lon, z, extent_m=extent, out_size=out)
    x0, y0 = cx - out - raster.tx0 * 256, cy - out - raster.ty0 * 256
    block = raster.img[y0:y0 + 2 * out, x0:x0 + 2 * out].astype(float)
    want = block.reshape(out, 2, out, 2, 3).mean(axis=(1, 3))
    assert missing == 0
    assert np.abs(img.astype(float) - want).max() <= 1.0


def test_camera_marker_lands_at_the_centre(tmp_path):
    lat, lon, z = 41.864914, -87.678380, 20
    raster = Raster(lat, lon, z, tiles=6, seed=2)
    raster.img[:] = 100
    cx, cy = (float(v) for v in latlon_to_global_px(lat, lon, z))
    r, c = int(cy) - raster.ty0 * 256, int(cx) - raster.tx0 * 256
    raster.img[r - 8:r + 9, c - 8:c + 9] = (255, 0, 0)
    img, missing = mosaic_around(raster.fetch, lat, lon, z, extent_m=60.0, out_size=64)
    # 60 m at ~0.083 m/px is ~720 px shrunk to 64: the 17-px marker covers ~1.5 output pixels
    # around the centre (the corner between pixels 31 and 32).
    red = img[..., 0].astype(float) - img[..., 1].astype(float)
    ys, xs = np.nonzero(red > 20)
    weights = red[ys, xs]
    assert missing == 0
    assert abs(np.average(xs, weights=weights) + 0.5 - 32) < 0.2
    assert abs(np.average(ys, weights=weights) + 0.5 - 32) < 0.2


def test_missing_tiles_are_counted_and_black(tmp_path):
    lat, lon, z = 44.0219, -71.439493, 19
    raster = Raster(lat, lon, z, seed=3)
    raster.write(tmp_path, skip={(0, 0), (1, 1), (2, 2)})
    cx, cy = (float(v) for v in latlon_to_global_px(lat, lon, z))
    mosaic, ox, oy, missing = stitch_box(folder_fetch(tmp_path), z, cx - 300, cy - 300, cx + 300, cy + 300)
    touched = tiles_touched(lat, lon, z, 598.0)
    assert mosaic.shape[0] * mosaic.shape[1] == touched * 256 * 256
    skipped_inside = sum(1 for i, j in [(0, 0), (1, 1), (2, 2)]
                         if ox // 256 <= raster.tx0 + i < ox // 256 + mosaic.shape[1] // 256
                         and oy // 256 <= raster.ty0 + j < oy // 256 + mosaic.shape[0] // 256)
    outside = sum(1 for i in range(mosaic.shape[1] // 256) for j in range(mosaic.shape[0] // 256)
                  if not (0 <= ox // 256 + i - raster.tx0 < 4 and 0 <= oy // 256 + j - raster.ty0 < 4))
    assert missing == skipped_inside + outside and missing > 0
    _, missing2 = mosaic_around(folder_fetch(tmp_path / "none"), lat, lon, z)
    assert missing2 == tiles_touched(lat, lon, z, 512.0)


def test_longitude_wraps_at_the_antimeridian():
    z = 3
    seen = []

    def fetch(zz, x, y):
        seen.append(x)
        return np.full((256, 256, 3), 100 + x, np.uint8)

    img, missing = mosaic_around(fetch, 10.0, 179.99, z, out_size=64)
    assert missing == 0 and set(seen) <= set(range(8)) and 0 in seen and 7 in seen


def test_crop_extent_recentres_on_the_camera():
    img = np.zeros((200, 200, 3), np.uint8)
    img[120:125, 60:65] = (0, 255, 0)  # camera around (62.5, 122.5)
    out = crop_extent(img, mpp=0.5, extent_m=20.0, camera_px=(62.5, 122.5), out_size=40)
    assert out.shape == (40, 40, 3)
    assert out[19:21, 19:21, 1].min() == 255
    largest = crop_extent(img, mpp=0.5, extent_m=None, camera_px=(62.5, 122.5), out_size=125)
    assert largest[61:64, 61:64, 1].min() == 255  # side 2 * 62.5 px kept at full resolution


def test_resample_square_identity_and_validation():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    assert np.array_equal(resample_square(img, 25.0, 25.0, 50.0, 50), img)
    with pytest.raises(ValueError):
        resample_square(img, 25.0, 25.0, 0.0, 50)
