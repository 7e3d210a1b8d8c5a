"""Exact renderers of a `World`: north-up aerial tiles, pinhole ground views, equirectangular
panoramas. Every output pixel is coloured from the exact ray through its centre (or through
the centres of its `supersample` x `supersample` sub-pixels, averaged), so the geometry holds
to the pixel by construction; nothing is interpolated from an intermediate raster.

Frames and conventions (all angles in degrees):
- World: x east, y north, z up, metres; the ground is z = 0. Azimuth / heading is clockwise
  from north (0 = N, 90 = E). Elevation is positive above the horizon.
- Pixels: column c, row r (r grows downwards); a pixel's centre is at continuous image
  coordinates (c + 0.5, r + 0.5); the image spans [0, W) x [0, H).
- Tile (`render_tile`), size S, `mpp` metres per pixel, centred on (cx, cy): the point
  (X, Y) lies at continuous image coordinates (S/2 + (X - cx)/mpp, S/2 - (Y - cy)/mpp).
  Top = north, right = east; the centre point is the corner shared by the 4 middle pixels.
- View (`render_view`): pinhole at (cx, cy, camera_height), heading h, pitch p (positive up),
  no roll, horizontal field of view `fov`, square pixels, principal point (W/2, H/2), focal
  length f = (W/2) / tan(fov/2) pixels. With forward F = (sin h cos p, cos h cos p, sin p),
  right R = (cos h, -sin h, 0) and up U = R x F, the pixel at (u, v) sees along
  f F + (u - W/2) R - (v - H/2) U. At pitch 0 the horizon is the line v = H/2.
- Panorama (`render_panorama`), W = 2H: continuous column coordinate u looks at azimuth
  heading_offset + 360 u / W (so the LEFT EDGE of column 0 looks at `heading_offset_deg`, the
  centre of column c at heading_offset + 360 (c + 0.5) / W, azimuth growing to the right),
  and continuous row coordinate v at elevation 90 - 180 v / H (top edge = zenith, horizon at
  v = H/2, bottom edge = nadir). `panorama_azimuth` and `panorama_column` spell it out.
- Sky and haze depend only on the ray's direction and ground distance, so a view cut from a
  panorama and a view rendered directly agree wherever both are sampled finely enough.
"""
from __future__ import annotations

import math

import numpy as np

from geoxray.data.world import World

DEFAULT_CAMERA_HEIGHT_M = 2.5
DEFAULT_HAZE_M = 350.0          # distance at which 1 - 1/e of the ground colour is haze
_MAX_GROUND_FACTOR = 12.0       # rays reaching beyond 12 haze lengths are pure haze
_SUN_ELEVATION_DEG = 40.0
PANORAMA_CONVENTION = (
    "equirectangular, W = 2H; azimuth clockwise from north; continuous column u (pixel "
    "centres at c + 0.5) looks at azimuth heading_offset_deg + 360 u / W, so the left edge of "
    "column 0 looks at heading_offset_deg and the image centre at heading_offset_deg + 180 "
    "(center_azimuth_deg); continuous row v looks at elevation 90 - 180 v / H (top = zenith, "
    "horizon at v = H/2); camera at camera_height_m above flat ground")
_HORIZON = np.array([.80, .85, .90], np.float32)
_ZENITH = np.array([.25, .45, .80], np.float32)
_SUN = np.array([1.0, .95, .80], np.float32)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, (int, np.integer)) else size
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(w), int(h)


def _supersample(ss: int) -> int:
    if int(ss) != ss or ss < 1:
        raise ValueError(f"supersample must be a positive integer, got {ss!r}")
    return int(ss)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.minimum(np.maximum(rgb, 0.0), 1.0) * 255.0 + 0.5).astype(np.uint8)


def _downsample(rgb: np.ndarray, ss: int) -> np.ndarray:
    if ss == 1:
        return rgb
    h, w = rgb.shape[0] // ss, rgb.shape[1] // ss
    return rgb.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))


def _sun_direction(sun_azimuth_deg: float) -> np.ndarray:
    az, el = math.radians(sun_azimuth_deg), math.radians(_SUN_ELEVATION_DEG)
    return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)],
                    np.float32)


def sky_colour(dirs: np.ndarray, sun_azimuth_deg: float) -> np.ndarray:
    """Sky RGB (N, 3) float32 for ray directions (N, 3), any length: a horizon-to-zenith
    gradient and a glow around the world's sun (a heading cue the panorama shares). Rays
    below the horizon get the horizon's colour (that is the haze colour)."""
    d = np.asarray(dirs, np.float32)
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    inv = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz)
    sun = _sun_direction(sun_azimuth_deg)
    # Glow ~ exp(-angle^2 / 0.35^2) with angle^2 ~ 2 (1 - cos angle); the sun's disc ~0.7 deg.
    cos_sun = (dx * sun[0] + dy * sun[1] + dz * sun[2]) * inv
    glow = np.exp((cos_sun - 1.0) * np.float32(2.0 / 0.35 ** 2))
    glow *= np.float32(0.35)
    glow += cos_sun > np.float32(math.cos(0.012))
    t = np.sqrt(np.maximum(dz * inv, 0.0))
    rgb = np.empty((d.shape[0], 3), np.float32)
    for c in range(3):  # channel by channel: contiguous 1-D work instead of (N, 3) strides
        rgb[:, c] = np.minimum(_HORIZON[c] + (_ZENITH[c] - _HORIZON[c]) * t + _SUN[c] * glow, 1.0)
    return rgb


def shade_rays(world: World, x: float, y: float, camera_height: float, dirs: np.ndarray,
               pixel_angle: np.ndarray | float, haze_m: float | None) -> np.ndarray:
    """RGB (N, 3) float32 seen along rays `dirs` (N, 3, any length) from
    (x, y, camera_height). `pixel_angle` is the angular size (radians) of each sample: with
    the distance and the grazing angle it sets the ground footprint (detail finer than that
    fades). With `haze_m`, ground colour fades into the horizon colour as 1 - exp(-d/haze_m)
    of the ground distance d, and ground past 12 haze lengths is pure horizon colour."""
    if camera_height <= 0:
        raise ValueError(f"camera_height must be positive, got {camera_height}")
    dirs = np.asarray(dirs, np.float32)
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    horiz = np.sqrt(dx * dx + dy * dy)
    limit = _MAX_GROUND_FACTOR * haze_m if haze_m else 5_000.0
    # Ground distance h * horiz / -dz < limit  <=>  -dz > h * horiz / limit.
    i = np.nonzero(-dz > horiz * np.float32(camera_height / limit))[0]
    rgb = sky_colour(dirs, world.sun_azimuth_deg)  # also the horizon colour of far ground
    if i.size == 0:
        return rgb
    gx, gy, gz = dx[i], dy[i], dz[i]
    t = np.float32(camera_height) / -gz       # ray parameter where z reaches 0
    norm2 = gx * gx + gy * gy + gz * gz
    angle = np.broadcast_to(np.asarray(pixel_angle, np.float32), dz.shape)[i]
    # footprint = slant distance * angle / sin(grazing), sin(grazing) = -dz / |d|
    footprint = np.minimum(t * norm2 * angle / -gz, 1_000.0)
    # float64 for the world position (tens of km out); float32 offsets are exact enough.
    colour = world.colour(x + (t * gx).astype(np.float64), y + (t * gy).astype(np.float64),
                          footprint)
    if haze_m:
        haze = 1.0 - np.exp(t * horiz[i] * np.float32(-1.0 / haze_m))
        colour += (rgb[i] - colour) * haze[:, None]  # rgb[i] is that azimuth's horizon colour
    rgb[i] = colour
    return rgb


def view_rays(size: int | tuple[int, int], heading_deg: float, pitch_deg: float = 0.0,
              fov_deg: float = 90.0, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rays (H*ss, W*ss, 3) through the sub-pixel centres of a pinhole view, and the angular
    size (radians) of each sub-pixel. See the module docstring for the camera model."""
    w, h = _size(size)
    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    ss = _supersample(supersample)
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    yaw, pitch = math.radians(heading_deg), math.radians(pitch_deg)
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
    up = np.cross(right, fwd)
    us = (np.arange(w * ss) + 0.5) / ss - w / 2
    vs = (np.arange(h * ss) + 0.5) / ss - h / 2
    rays = (f * fwd + us[None, :, None] * right - vs[:, None, None] * up).astype(np.float32)
    # A pixel of the image plane at distance |d| (in pixels) subtends about f / |d|^2 rad.
    angle = (f / ss) / np.einsum("ijk,ijk->ij", rays, rays)
    return rays, angle


def render_view(world: World, x: float, y: float, heading_deg: float, *,
                pitch_deg: float = 0.0, fov_deg: float = 90.0,
                size: int | tuple[int, int] = 256,
                camera_height: float = DEFAULT_CAMERA_HEIGHT_M,
                haze_m: float | None = DEFAULT_HAZE_M, supersample: int = 2) -> np.ndarray:
    """A ground-level pinhole view (RGB uint8, H x W x 3) from (x, y) looking at `heading_deg`
    (0 = N, 90 = E); `size` is W or (W, H)."""
    w, h = _size(size)
    rays, angle = view_rays((w, h), heading_deg, pitch_deg, fov_deg, supersample)
    rgb = shade_rays(world, x, y, camera_height, rays.reshape(-1, 3), angle.ravel(), haze_m)
    return _to_uint8(_downsample(rgb.reshape(h * supersample, w * supersample, 3), supersample))


def panorama_azimuth(column: np.ndarray | float, width: int,
                     heading_offset_deg: float) -> np.ndarray | float:
    """Azimuth (deg, clockwise from N, in [0, 360)) seen by the CENTRE of panorama column
    `column` (may be fractional: continuous coordinate minus 0.5)."""
    return (heading_offset_deg + 360.0 * (np.asarray(column) + 0.5) / width) % 360.0


def panorama_column(azimuth_deg: np.ndarray | float, width: int,
                    heading_offset_deg: float) -> np.ndarray | float:
    """Inverse of `panorama_azimuth`: the (fractional) column whose centre sees `azimuth_deg`,
    in [-0.5, width - 0.5)."""
    u = ((np.asarray(azimuth_deg) - heading_offset_deg) % 360.0) / 360.0 * width
    return u - 0.5


def panorama_rays(width: int, heading_offset_deg: float,
                  supersample: int = 1) -> tuple[np.ndarray, float]:
    """Rays (H*ss, W*ss, 3) of an equirectangular panorama (H = W/2) and the angular size of a
    sub-pixel (radians)."""
    if width < 2 or width % 2:
        raise ValueError(f"panorama width must be even and >= 2, got {width}")
    ss = _supersample(supersample)
    height = width // 2
    az = np.radians(heading_offset_deg + 360.0 * (np.arange(width * ss) + 0.5) / (width * ss))
    el = np.radians(90.0 - 180.0 * (np.arange(height * ss) + 0.5) / (height * ss))
    cos_el = np.cos(el)[:, None]
    rays = np.stack(np.broadcast_arrays(np.sin(az)[None, :] * cos_el,
                                        np.cos(az)[None, :] * cos_el,
                                        np.sin(el)[:, None]), axis=2).astype(np.float32)
    return rays, 2 * math.pi / (width * ss)


def render_panorama(world: World, x: float, y: float, *, heading_offset_deg: float,
                    width: int = 1024, camera_height: float = DEFAULT_CAMERA_HEIGHT_M,
                    haze_m: float | None = DEFAULT_HAZE_M, supersample: int = 1) -> np.ndarray:
    """An equirectangular panorama (RGB uint8, width/2 x width x 3) from (x, y); column 0's
    left edge looks at azimuth `heading_offset_deg` (see the module docstring)."""
    rays, angle = panorama_rays(width, heading_offset_deg, supersample)
    rgb = shade_rays(world, x, y, camera_height, rays.reshape(-1, 3), angle, haze_m)
    h = width // 2
    return _to_uint8(_downsample(rgb.reshape(h * supersample, width * supersample, 3), supersample))


def tile_coordinates(size: int, mpp: float, supersample: int = 1) -> np.ndarray:
    """Offsets (metres) from the tile centre of the (sub-)pixel centres along one axis."""
    return ((np.arange(size * supersample) + 0.5) / supersample - size / 2) * mpp


def render_tile(world: World, x: float, y: float, mpp: float, size: int = 512,
                supersample: int = 2) -> np.ndarray:
    """A north-up aerial tile (RGB uint8, size x size x 3) centred on (x, y), `mpp` m/pixel."""
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    supersample = _supersample(supersample)
    off = tile_coordinates(size, mpp, supersample)
    gx, gy = np.meshgrid(x + off, y - off)  # row 0 is the northern edge
    rgb = world.colour(gx, gy, mpp / supersample).reshape(size * supersample, size * supersample, 3)
    return _to_uint8(_downsample(rgb, supersample))
