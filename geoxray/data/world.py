"""A seeded procedural ground plane: what the synthetic GeoX-Bench world looks like from above.

The world is a pure function `World.colour(x, y, footprint)` over an unbounded flat plane
(x east, y north, metres; z = 0 is the ground). Nothing is rasterised in advance, so every
renderer (north-up tile, perspective view, panorama) samples the same ground at exactly the
point its pixel's ray hits: the geometry is exact by construction. `footprint` is the ground
size of the sample (metres): detail finer than it fades to its mean colour, which keeps far
ground in a view from aliasing into noise.

Layout (all of it a deterministic function of the seed, with no state):
- a road grid, rotated by `grid_angle_deg`, whose lines are jittered and have hashed widths
  (avenues with double yellow centre lines and lane dashes, streets with a dashed centre),
  zebra crossings beside intersections and roundabouts at some intersections;
- a family of straight diagonal roads and a family of sinusoidal (curved) roads on top;
- blocks between grid roads, each of one land use: buildings on lots (varied roof colours,
  gable ridges lit from one side), parks with trees, fields with crop rows, car parks with
  stalls and cars, or water;
- landmarks: bright saturated shapes (disc, ring, square, triangle, cross, arrow) at a hashed
  place in some blocks, so that a view is matchable to its tile and headings differ;
- optional explicit `Marker` discs drawn over everything (tests use them as targets).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoxray.data.noise import hash01, stable_seed
from geoxray.data.world_paint import U_SALT, V_SALT, Axis, paint_ground

_CHUNK = 1 << 16  # points per vectorised pass: the temporaries stay in cache


@dataclass(frozen=True)
class WorldStyle:
    """The look of one world (one benchmark instance gets one style)."""
    grid_angle_deg: float = 0.0      # rotation of the road grid (0: roads run N-S and E-W)
    road_spacing_m: float = 110.0    # mean distance between parallel grid roads
    street_half_width_m: float = 4.0
    avenue_half_width_m: float = 7.5
    avenue_share: float = 0.25       # share of grid lines that are avenues
    urban_share: float = 0.55        # share of blocks that are built up
    water_share: float = 0.06
    landmark_share: float = 0.45     # share of blocks with a landmark shape
    roundabout_share: float = 0.2    # share of intersections with a roundabout
    diagonal_angle_deg: float = 37.0
    diagonal_spacing_m: float = 700.0
    curve_angle_deg: float = -20.0
    curve_spacing_m: float = 900.0


@dataclass(frozen=True)
class Marker:
    """A flat disc painted over everything (test targets). rgb in [0, 1]."""
    x: float
    y: float
    radius: float
    rgb: tuple[float, float, float]


class World:
    """The procedural ground of one seed. Cheap to construct; safe to share across processes
    (it holds only numbers)."""

    def __init__(self, seed: int, style: WorldStyle | None = None,
                 markers: tuple[Marker, ...] | list[Marker] = ()):
        self.seed = int(seed) & 0xFFFFFFFF
        self.style = style or WorldStyle()
        self.markers = tuple(markers)
        self._salts: dict[str, int] = {}
        a = math.radians(self.style.grid_angle_deg)
        self._cos, self._sin = math.cos(a), math.sin(a)
        # The sun's azimuth is part of the world: the renderers put its glow in the sky.
        self.sun_azimuth_deg = float(hash01(stable_seed(self.seed, "sun")) * 360.0)
        # A periodic 256x256 table of grain (0.3 m cells, so it repeats every 77 m): a gather
        # per sample instead of a hash.
        ga, gb = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
        self.grain = hash01(self.salt("grain"), ga, gb).ravel()

    def salt(self, name: str) -> int:
        """The seed of one named feature of this world (memoised: called per chunk)."""
        if name not in self._salts:
            self._salts[name] = stable_seed(self.seed, name)
        return self._salts[name]

    # -- grid geometry ---------------------------------------------------------------------
    def to_grid(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World (x east, y north) -> grid frame (u along the grid's east axis, v north)."""
        return x * self._cos - y * self._sin, x * self._sin + y * self._cos

    def from_grid(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return u * self._cos + v * self._sin, -u * self._sin + v * self._cos

    def line_position(self, k: np.ndarray, salt: int) -> np.ndarray:
        """Centre of grid line k: jittered by under a quarter spacing, so lines keep order."""
        s = self.style.road_spacing_m
        return k * s + (hash01(self.salt("line") ^ salt, k) - 0.5) * 0.49 * s

    def line_half_width(self, k: np.ndarray, salt: int) -> np.ndarray:
        avenue = hash01(self.salt("avenue") ^ salt, k) < self.style.avenue_share
        return np.where(avenue, self.style.avenue_half_width_m, self.style.street_half_width_m)

    def snap_to_road(self, x: float, y: float) -> tuple[float, float]:
        """Where a street-view car near (x, y) would stand: in the right-hand (east) lane of
        the nearest grid road running along v (north-south when the grid is not rotated), at
        least 20 m from any crossing road so that views look down a road between blocks."""
        xs, ys = self.snap_many_to_road(np.array([x]), np.array([y]))
        return float(xs[0]), float(ys[0])

    def snap_many_to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`snap_to_road` for arrays of points."""
        u, v = self.to_grid(np.asarray(x, np.float64), np.asarray(y, np.float64))
        au = Axis(u.astype(np.float32), self, U_SALT)
        u = self.line_position(au.line, U_SALT) + 0.35 * au.hw.astype(np.float64)
        av = Axis(v.astype(np.float32), self, V_SALT)
        margin = av.hw.astype(np.float64) + 20.0
        near = np.abs(av.offset) < margin  # too close to a crossing road: move along the road
        crossing = self.line_position(av.line, V_SALT)
        v = np.where(near, crossing + margin * np.where(av.offset >= 0, 1.0, -1.0), v)
        return self.from_grid(np.asarray(u, np.float64), np.asarray(v, np.float64))

    # -- colour ----------------------------------------------------------------------------
    def colour(self, x: np.ndarray, y: np.ndarray,
               footprint: np.ndarray | float = 0.0) -> np.ndarray:
        """RGB in [0, 1] (float32, shape (N, 3)) of the ground at points (x, y)."""
        x = np.asarray(x, np.float64).ravel()
        y = np.asarray(y, np.float64).ravel()
        fp = np.broadcast_to(np.asarray(footprint, np.float64), x.shape).ravel()
        out = np.empty((x.size, 3), np.float32)
        for i in range(0, x.size, _CHUNK):
            sl = slice(i, i + _CHUNK)
            out[sl] = paint_ground(self, x[sl], y[sl], fp[sl])
        return out

