"""Web-Mercator satellite tiles: coordinates, ground resolution, stitching and cropping.

Global pixel coordinates at zoom z: the world is a (T * 2**z)-pixel square (T = 256, the tile
size), x growing east from longitude -180, y growing south from latitude +85.0511. Tile
(z, x, y) covers global pixels [x*T, (x+1)*T) x [y*T, (y+1)*T). Pixel centres sit at +0.5: the
continuous coordinate of a point is what `latlon_to_global_px` returns, and the image pixel
whose centre is nearest is floor(coordinate).

All functions take numpy arrays as well as scalars. An aerial image produced here is north-up,
square, `out_size` pixels, covering `extent_m` metres of ground on a side, centred on the
requested point (the camera).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

EARTH_RADIUS_M = 6378137.0  # WGS84 semi-major axis, the radius of the Web-Mercator sphere
TILE_SIZE = 256
MAX_LATITUDE = 85.05112877980659  # atan(sinh(pi)): the Web-Mercator square's edge

TileFetch = Callable[[int, int, int], "np.ndarray | None"]  # (z, x, y) -> HxWx3 RGB or None


def latlon_to_global_px(lat, lon, zoom: int, tile_size: int = TILE_SIZE):
    """(x, y) continuous global pixel coordinates of a point at `zoom`."""
    world = tile_size * 2.0 ** zoom
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    x = (np.asarray(lon, dtype=np.float64) + 180.0) / 360.0 * world
    s = np.sin(np.radians(lat))
    y = (0.5 - np.log((1.0 + s) / (1.0 - s)) / (4.0 * np.pi)) * world
    return x, y


def global_px_to_latlon(x, y, zoom: int, tile_size: int = TILE_SIZE):
    """Inverse of `latlon_to_global_px`: (lat, lon) in degrees."""
    world = tile_size * 2.0 ** zoom
    lon = np.asarray(x, dtype=np.float64) / world * 360.0 - 180.0
    n = np.pi * (1.0 - 2.0 * np.asarray(y, dtype=np.float64) / world)
    lat = np.degrees(np.arctan(np.sinh(n)))
    return lat, lon


def metres_per_pixel(lat, zoom: float, tile_size: int = TILE_SIZE):
    """Ground resolution at a latitude: the equator's 2*pi*R / (T * 2**z), times cos(lat)."""
    return (2.0 * np.pi * EARTH_RADIUS_M * np.cos(np.radians(np.asarray(lat, dtype=np.float64)))
            / (tile_size * 2.0 ** zoom))


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres (sphere of the Web-Mercator radius)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def offset_m(lat0, lon0, lat1, lon1) -> tuple[float, float]:
    """(east, north) metres from point 0 to point 1 (local tangent plane, short distances)."""
    north = math.radians(lat1 - lat0) * EARTH_RADIUS_M
    east = math.radians(lon1 - lon0) * EARTH_RADIUS_M * math.cos(math.radians((lat0 + lat1) / 2))
    return east, north


# --- reading tiles ------------------------------------------------------------------------
def folder_fetch(root: str | Path, exts: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> TileFetch:
    """A tile fetcher over a `root/z/x/y.<ext>` folder (slippy-map layout). A missing or
    unreadable tile returns None."""
    root = Path(root)

    def fetch(z: int, x: int, y: int):
        for ext in exts:
            path = root / str(z) / str(x) / f"{y}{ext}"
            if path.is_file():
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return None

    return fetch


def stitch_box(fetch: TileFetch, zoom: int, x0: float, y0: float, x1: float, y1: float,
               tile_size: int = TILE_SIZE) -> tuple[np.ndarray, int, int, int]:
    """Paste every tile touching the global-pixel box [x0, x1) x [y0, y1) into one mosaic.
    Returns (mosaic, origin_x, origin_y, missing): the mosaic's top-left global pixel and how
    many tiles were missing (left black). Longitude wraps; rows beyond the poles are black."""
    n = 2 ** zoom
    tx0, tx1 = int(math.floor(x0 / tile_size)), int(math.floor((x1 - 1e-9) / tile_size))
    ty0, ty1 = int(math.floor(y0 / tile_size)), int(math.floor((y1 - 1e-9) / tile_size))
    mosaic = np.zeros(((ty1 - ty0 + 1) * tile_size, (tx1 - tx0 + 1) * tile_size, 3), np.uint8)
    missing = 0
    for ty in range(ty0, ty1 + 1):
        for tx in range(tx0, tx1 + 1):
            tile = fetch(zoom, tx % n, ty) if 0 <= ty < n else None
            if tile is None:
                missing += 1
                continue
            if tile.shape[:2] != (tile_size, tile_size):
                tile = cv2.resize(tile, (tile_size, tile_size), interpolation=cv2.INTER_AREA)
            oy, ox = (ty - ty0) * tile_size, (tx - tx0) * tile_size
            mosaic[oy:oy + tile_size, ox:ox + tile_size] = tile[..., :3]
    return mosaic, tx0 * tile_size, ty0 * tile_size, missing


def resample_square(img: np.ndarray, cx: float, cy: float, side_px: float,
                    out_size: int = 512) -> np.ndarray:
    """The axis-aligned square of `side_px` pixels centred on continuous pixel coordinate
    (cx, cy) of `img` (pixel centres at +0.5), resampled to out_size x out_size. Sub-pixel
    exact: one affine warp at about the source resolution, then an area filter when shrinking
    (so a downscale does not alias). Outside the image is black."""
    if side_px <= 0:
        raise ValueError("side_px must be positive")
    native = max(1, int(math.ceil(side_px - 1e-6)))
    work = native if native > out_size else out_size
    scale = side_px / work  # source pixels per work pixel
    # work pixel centre (i + 0.5) -> source continuous coord (cx - side/2 + (i + 0.5) * scale),
    # and remap-style source index = continuous coord - 0.5.
    tx = cx - side_px / 2.0 + 0.5 * scale - 0.5
    ty = cy - side_px / 2.0 + 0.5 * scale - 0.5
    m = np.float64([[scale, 0.0, tx], [0.0, scale, ty]])
    out = cv2.warpAffine(img, m, (work, work), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if work != out_size:
        out = cv2.resize(out, (out_size, out_size), interpolation=cv2.INTER_AREA)
    return out


def mosaic_around(fetch: TileFetch, lat: float, lon: float, zoom: int,
                  extent_m: float | None = None, out_size: int = 512, tile_size: int = TILE_SIZE) -> tuple[np.ndarray, int]:
    """A north-up out_size x out_size aerial image centred on (lat, lon), covering `extent_m`
    metres on a side (default: out_size pixels at the zoom's native resolution), stitched from
    z/x/y tiles at `zoom`. Returns (image, number of missing tiles)."""
    mpp = float(metres_per_pixel(lat, zoom, tile_size))
    side_px = (extent_m / mpp) if extent_m is not None else float(out_size)
    cx, cy = latlon_to_global_px(lat, lon, zoom, tile_size)
    cx, cy = float(cx), float(cy)
    half = side_px / 2.0 + 1.0  # one pixel of margin for the bilinear footprint
    mosaic, ox, oy, missing = stitch_box(fetch, zoom, cx - half, cy - half, cx + half, cy + half,
                                         tile_size)
    return resample_square(mosaic, cx - ox, cy - oy, side_px, out_size), missing


def crop_extent(img: np.ndarray, mpp: float, extent_m: float | None = None,
                camera_px: tuple[float, float] | None = None, out_size: int = 512) -> np.ndarray:
    """A ready-cut aerial image (north-up, `mpp` metres per pixel) re-centred on the camera
    (continuous pixel coords; default the image centre), cropped to `extent_m` metres (default:
    the largest square around the camera that stays inside the image) and resampled."""
    h, w = img.shape[:2]
    cx, cy = camera_px if camera_px is not None else (w / 2.0, h / 2.0)
    if extent_m is None:
        side_px = 2.0 * min(cx, cy, w - cx, h - cy)
    else:
        side_px = extent_m / mpp
    return resample_square(img, cx, cy, side_px, out_size)


def tiles_touched(lat: float, lon: float, zoom: int, side_px: float,
                  tile_size: int = TILE_SIZE) -> int:
    """How many z/x/y tiles a mosaic of `side_px` pixels around (lat, lon) reads."""
    cx, cy = latlon_to_global_px(lat, lon, zoom, tile_size)
    half = side_px / 2.0 + 1.0
    nx = math.floor((cx + half - 1e-9) / tile_size) - math.floor((cx - half) / tile_size) + 1
    ny = math.floor((cy + half - 1e-9) / tile_size) - math.floor((cy - half) / tile_size) + 1
    return int(nx * ny)
