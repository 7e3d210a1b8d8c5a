"""Equirectangular panoramas -> north-aligned perspective views.

Conventions (used by every source reader and by the build):
- Azimuth is a compass bearing in degrees: 0 = north, 90 = east, clockwise seen from above.
- A panorama is W x H equirectangular; its columns run left to right with increasing azimuth
  (turning clockwise, as a viewer standing inside it turns right). The pixel centre of column
  u sits at `center_azimuth + ((u + 0.5) / W - 0.5) * 360`: the middle of the image (u = W/2,
  the boundary between columns W/2-1 and W/2) looks at `center_azimuth`, the left edge at
  `center_azimuth - 180`. For a north-aligned panorama (`center_azimuth = 0`) the columns read
  S (left edge), W (W/4), N (W/2), E (3W/4). This is the CVUSA/VIGOR layout; Google Street View
  panoramas put the car's heading (the `d<heading>` in CVGlobal/OmniCity file names) there.
- Rows run from the top of the covered elevation band to the bottom. A full sphere (H = W/2)
  covers +90..-90 degrees; a cropped band (e.g. CVUSA's 1232x224) keeps square pixels by
  default (vertical span H/W*360 degrees) centred on the horizon, or is described with
  `vfov_deg` / `horizon` (the row fraction at elevation 0).
- A view is a pinhole camera at (yaw = azimuth of its optical axis, pitch = elevation, up
  positive) with horizontal field of view `fov_deg`; square pixels, image y pointing down.

Sampling maps depend only on the panorama shape, pitch, fov and output size: a change of yaw
is a rigid rotation about the vertical axis, i.e. a constant shift of the panorama column, so
one cached base map serves every yaw (the shift costs one add per output pixel).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import cv2
import numpy as np

CARDINALS: dict[str, float] = {"N": 0.0, "E": 90.0, "S": 180.0, "W": 270.0}
OCTANTS: dict[str, float] = {"N": 0.0, "NE": 45.0, "E": 90.0, "SE": 135.0, "S": 180.0,
                             "SW": 225.0, "W": 270.0, "NW": 315.0}


def direction_name(azimuth_deg: float) -> str:
    """The 8-way compass name of an azimuth that is a multiple of 45 degrees."""
    az = float(azimuth_deg) % 360.0
    for name, value in OCTANTS.items():
        if abs(az - value) < 1e-6:
            return name
    raise ValueError(f"azimuth {azimuth_deg} is not a multiple of 45 degrees")


def _band(height: int, width: int, vfov_deg: float | None, horizon: float) -> tuple[float, float]:
    """(elevation of the top edge, degrees per row) of a panorama's covered band."""
    span = float(vfov_deg) if vfov_deg is not None else height / width * 360.0
    return horizon * span, span / height


@lru_cache(maxsize=64)
def _base_maps(pano_h: int, pano_w: int, pitch_deg: float, fov_deg: float, out_h: int,
               out_w: int, vfov_deg: float | None, horizon: float):
    """Float maps (x, y) into a panorama whose centre looks at azimuth 0, for a view at yaw 0,
    plus a mask of output pixels that fall outside the covered elevation band (None if all
    inside). x is not wrapped yet; rows are clamped into the image."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = (out_w / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    xs = (np.arange(out_w, dtype=np.float64) + 0.5 - out_w / 2.0) / focal
    ys = (np.arange(out_h, dtype=np.float64) + 0.5 - out_h / 2.0) / focal
    # Camera frame (right, up, forward) -> world (east, north, up) for yaw 0 and this pitch.
    p = np.radians(pitch_deg)
    forward = np.array([0.0, np.cos(p), np.sin(p)])
    right = np.array([1.0, 0.0, 0.0])
    up = np.cross(right, forward)
    rays = (forward[None, None, :] + xs[None, :, None] * right[None, None, :]
            - ys[:, None, None] * up[None, None, :])
    azimuth = np.degrees(np.arctan2(rays[..., 0], rays[..., 1]))          # -180..180
    elevation = np.degrees(np.arctan2(rays[..., 2], np.hypot(rays[..., 0], rays[..., 1])))
    map_x = (azimuth / 360.0 + 0.5) * pano_w - 0.5
    top, deg_per_row = _band(pano_h, pano_w, vfov_deg, horizon)
    rows = (top - elevation) / deg_per_row - 0.5
    outside = (rows < -0.5) | (rows > pano_h - 0.5)
    map_y = np.clip(rows, 0.0, pano_h - 1.0)
    mask = None if not outside.any() else ~outside
    map_x, map_y = map_x.astype(np.float32), map_y.astype(np.float32)
    for a in (map_x, map_y):
        a.setflags(write=False)  # shared through the cache
    return map_x, map_y, mask


@lru_cache(maxsize=16)
def view_maps(pano_h: int, pano_w: int, yaw_rel_deg: float, pitch_deg: float, fov_deg: float,
              out_h: int, out_w: int, vfov_deg: float | None = None, horizon: float = 0.5):
    """cv2.remap maps for a view whose yaw is `yaw_rel_deg` relative to the panorama's centre
    azimuth: (map_x, map_y, mask). The base maps are cached per (pano shape, pitch, fov, out
    size); a yaw only adds a constant column shift (one add over the view's pixels, ~0.1 ms
    at 512x512), and the last few yaws are cached too. map_x may leave [0, W) by up to half
    a turn: remap with BORDER_WRAP folds it back (cheaper than wrapping the map here)."""
    bx, my, mask = _base_maps(pano_h, pano_w, float(pitch_deg), float(fov_deg), out_h, out_w,
                              vfov_deg, float(horizon))
    shift = ((yaw_rel_deg + 180.0) % 360.0 - 180.0) / 360.0 * pano_w
    mx = cv2.add(bx, shift) if shift else bx
    mx.setflags(write=False)
    return mx, my, mask


def _yaw_key(yaw_rel_deg: float) -> float:
    # Round so that float noise in headings does not defeat the cache.
    return round(((yaw_rel_deg + 180.0) % 360.0) - 180.0, 6)


def perspective_view(pano: np.ndarray, yaw_deg: float, pitch_deg: float = 0.0,
                     fov_deg: float = 90.0, size: int | tuple[int, int] = 512,
                     center_azimuth_deg: float = 0.0, vfov_deg: float | None = None,
                     horizon: float = 0.5, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The pinhole view at compass azimuth `yaw_deg` of a panorama whose centre looks at
    `center_azimuth_deg`. `size` is an int (square) or (height, width)."""
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = pano.shape[:2]
    mx, my, mask = view_maps(h, w, _yaw_key(yaw_deg - center_azimuth_deg), float(pitch_deg),
                             float(fov_deg), out_h, out_w, vfov_deg, float(horizon))
    view = cv2.remap(pano, mx, my, interpolation, borderMode=cv2.BORDER_WRAP)
    if mask is not None:
        view[~mask] = 0
    return view


def cardinal_views(pano: np.ndarray, heading_deg: float = 0.0, fov_deg: float = 90.0,
                   size: int | tuple[int, int] = 512, directions: Iterable[str] = CARDINALS,
                   pitch_deg: float = 0.0, vfov_deg: float | None = None,
                   horizon: float = 0.5) -> dict[str, np.ndarray]:
    """Views facing N/E/S/W (or any names of `OCTANTS`) from a panorama whose centre looks at
    compass azimuth `heading_deg`. One interpolation per view: the heading is folded into
    the sampling maps rather than resampling the whole panorama first."""
    return {d: perspective_view(pano, OCTANTS[d], pitch_deg, fov_deg, size, heading_deg,
                                vfov_deg, horizon)
            for d in directions}


def rotate_to_north(pano: np.ndarray, heading_deg: float) -> np.ndarray:
    """The same panorama with north at its centre, given that its centre looks at compass
    azimuth `heading_deg`. A whole-pixel shift is an exact column roll; a fractional one is
    resampled linearly along rows (columns wrap around the seam)."""
    h, w = pano.shape[:2]
    shift = (float(heading_deg) % 360.0) / 360.0 * w  # out[:, u] = in[:, u - shift]
    whole = round(shift)
    if abs(shift - whole) < 1e-6:
        return np.roll(pano, whole % w, axis=1)
    m = np.float32([[1, 0, shift], [0, 1, 0]])
    return cv2.warpAffine(pano, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def column_azimuth(u: float | np.ndarray, width: int, center_azimuth_deg: float = 0.0):
    """Compass azimuth of the centre of panorama column u (see the module conventions)."""
    return (center_azimuth_deg + ((np.asarray(u) + 0.5) / width - 0.5) * 360.0) % 360.0


def azimuth_column(azimuth_deg: float | np.ndarray, width: int, center_azimuth_deg: float = 0.0):
    """Continuous column coordinate (pixel centres at integers) that looks at `azimuth_deg`."""
    rel = (np.asarray(azimuth_deg) - center_azimuth_deg + 180.0) % 360.0 - 180.0
    return (rel / 360.0 + 0.5) * width - 0.5
