"""Painting the procedural ground: the colour of a batch of ground points of a `World`.

Every function here works on one batch of points (a few tens of thousands) and paints layer
over layer: block land use, landmarks, grid roads and their markings, diagonal and curved
roads, roundabouts, texture noise, then test markers. Thin features (lane lines, stall lines,
ridges) are drawn with coverage `width / footprint` when the sample is wider than they are,
so they fade to their average instead of flickering.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from geoxray.data.noise import Keys, fade, hash01

if TYPE_CHECKING:
    from geoxray.data.world import World

U_SALT, V_SALT = 0x5A17, 0xB0D3  # the two grid axes draw their lines from different hashes

# Palettes (RGB in [0, 1]).
_ROOFS = np.array([[.55, .55, .56], [.70, .36, .26], [.36, .28, .24], [.86, .85, .82],
                   [.32, .50, .52], [.42, .46, .55], [.62, .58, .47], [.25, .26, .28]], np.float32)
_CROPS = np.array([[.38, .55, .22], [.66, .62, .30], [.50, .40, .26], [.30, .46, .20],
                   [.74, .70, .42]], np.float32)
_CARS = np.array([[.80, .10, .10], [.90, .90, .92], [.08, .08, .10], [.15, .30, .70],
                  [.60, .62, .66], [.85, .70, .10]], np.float32)
LANDMARK_RGB = np.array([[.90, .10, .10], [1.0, .55, .05], [.98, .90, .10], [.10, .80, .20],
                         [.05, .80, .85], [.10, .25, .95], [.90, .15, .75], [.55, .15, .85]],
                        np.float32)
LANDMARK_SHAPES = ("disc", "ring", "square", "triangle", "cross", "arrow")
_ASPHALT = np.array([.30, .30, .32], np.float32)
_SIDEWALK = np.array([.66, .65, .62], np.float32)
_GRASS = np.array([.33, .50, .24], np.float32)
_WATER = np.array([.13, .30, .48], np.float32)
_PAVED = np.array([.48, .48, .47], np.float32)
_WHITE = np.array([.93, .93, .90], np.float32)
_YELLOW = np.array([.92, .78, .15], np.float32)
_TREE = np.array([.14, .32, .12], np.float32)
_SIDEWALK_M = 2.5


class Axis:
    """Where points fall between the jittered grid lines of one grid axis (u or v)."""

    def __init__(self, t: np.ndarray, world: "World", salt: int):
        s = world.style.road_spacing_m
        # Line k sits within a quarter spacing of k*s, so with r the nearest nominal line,
        # the line left of t is r (if t is right of it) or r - 1.
        r = np.rint(t / s).astype(np.int64)
        lo = (int(r.min()) if r.size else 0) - 1
        hi = (int(r.max()) if r.size else 0) + 2
        if hi - lo <= 4 * r.size + 1024:  # the usual case: a LUT of the lines in view
            ks = np.arange(lo, hi)
            pos_lut = world.line_position(ks, salt).astype(np.float32)
            hw_lut = world.line_half_width(ks, salt).astype(np.float32)
            pos_at, hw_at = (lambda k: pos_lut[k - lo]), (lambda k: hw_lut[k - lo])
        else:  # samples spread over a huge area: evaluate per sample
            pos_at = lambda k: world.line_position(k, salt).astype(np.float32)
            hw_at = lambda k: world.line_half_width(k, salt).astype(np.float32)
        left = r - (t < pos_at(r))  # the line left of t
        lpos, rpos = pos_at(left), pos_at(left + 1)
        lhw, rhw = hw_at(left), hw_at(left + 1)
        self.block = left
        self.inner = t - lpos - lhw            # metres into the block interior
        self.width = rpos - rhw - lpos - lhw   # the block interior's width
        to_right = (rpos - t) < (t - lpos)     # arithmetic selects: np.where is slow here
        self.line = self.block + to_right      # nearest line
        self.line_pos = lpos + (rpos - lpos) * to_right
        self.offset = t - self.line_pos        # signed distance to it
        self.hw = lhw + (rhw - lhw) * to_right
        self.on_road = np.abs(self.offset) < self.hw


def _blend(rgb: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """rgb <- rgb * (1 - alpha) + colour * alpha, in place; alpha (N,), colour (3,) or (N, 3)."""
    a = alpha[:, None].astype(np.float32)
    rgb *= 1 - a
    rgb += a * colour


def _line_alpha(dist: np.ndarray, width: float, fp: np.ndarray) -> np.ndarray:
    """Coverage of a line `width` wide at distance `dist` for samples `fp` wide."""
    reach = np.maximum(width, fp) * 0.5
    return np.where(np.abs(dist) < reach, np.minimum(1.0, width / np.maximum(fp, 1e-6)), 0.0)


def _dashes(along: np.ndarray, period: float, duty: float, fp: np.ndarray) -> np.ndarray:
    on = (along / period) % 1.0 < duty
    return np.where(fp < 0.5 * period, on, duty)


def _paint_built(rgb, m, a, b, wa, wb, blocks: Keys, fp, world):
    """Buildings on lots, with sidewalks along the block edge and yards between buildings."""
    side = (a < _SIDEWALK_M) | (b < _SIDEWALK_M) | (a > wa - _SIDEWALK_M) | (b > wb - _SIDEWALK_M)
    rgb[m & side] = _SIDEWALK
    i = np.nonzero(m & ~side)[0]
    if i.size == 0:
        return
    a, b = a[i] - _SIDEWALK_M, b[i] - _SIDEWALK_M
    wa, wb, f = wa[i] - 2 * _SIDEWALK_M, wb[i] - 2 * _SIDEWALK_M, fp[i]
    lot = 12.0 + 16.0 * blocks.hash(world.salt("lot"), i)
    margin = 1.0 + 2.5 * blocks.hash(world.salt("margin"), i)
    li, lj = np.floor(a / lot), np.floor(b / lot)
    la, lb = a - li * lot, b - lj * lot
    house = ((la > margin) & (la < lot - margin) & (lb > margin) & (lb < lot - margin)
             & (a < wa - margin) & (b < wb - margin))
    paved_yard = blocks.hash(world.salt("yard"), i) < 0.5
    out = np.where(paved_yard[:, None], _PAVED, _GRASS).astype(np.float32)
    # One key per lot: the block's flat key and the lot's row and column.
    lot_key = blocks.ka[i] * 7919 + blocks.kb[i] * 104729
    h = Keys(lot_key + li.astype(np.int64) * 31, lj.astype(np.int64)).hash(world.salt("roof"))
    roof = _ROOFS[(h * len(_ROOFS)).astype(np.int64)] * (0.85 + 0.3 * ((h * 97) % 1.0))[:, None]
    # Gable roofs: a ridge along u or v, the half facing +u / +v lit, the other in shade.
    gable = (h * 13) % 1.0 < 0.6
    across = np.where((h * 31) % 1.0 < 0.5, lb, la)
    roof *= np.where(gable & (across < 0.5 * lot), 0.8, 1.0).astype(np.float32)[:, None]
    ridge = _line_alpha(across - 0.5 * lot, 0.3, f) * gable
    hvac = ~gable & (np.abs(la - 0.35 * lot) < 1.2) & (np.abs(lb - 0.6 * lot) < 0.9)
    roof[hvac] = [.75, .75, .74]
    out[house] = roof[house]
    _blend(out, ridge * house, np.float32(0.3) * roof)
    rgb[i] = out


def _paint_park(rgb, i, u, v, world):
    cell = 9.0
    cu, cv = np.floor(u[i] / cell), np.floor(v[i] / cell)
    h = Keys(cu.astype(np.int64), cv.astype(np.int64)).hash(world.salt("tree"))
    r = 1.5 + 2.5 * ((h * 7) % 1.0)
    cx = cu * cell + r + (cell - 2 * r) * ((h * 17) % 1.0)
    cy = cv * cell + r + (cell - 2 * r) * ((h * 29) % 1.0)
    d = np.hypot(u[i] - cx, v[i] - cy)
    tree = (h < 0.55) & (d < r)
    out = np.broadcast_to(_GRASS, (i.size, 3)).copy()
    out[tree] = _TREE * (1.15 - 0.4 * (d[tree] / r[tree]))[:, None]
    rgb[i] = out


def _paint_field(rgb, i, a, b, blocks: Keys, fp, world):
    h = blocks.hash(world.salt("crop"), i)
    along_u = (h * 11) % 1.0 < 0.5
    period = 2.0 + 2.0 * ((h * 23) % 1.0)
    across = np.where(along_u, b[i], a[i])
    stripe = np.where((across / period) % 1.0 < 0.5, 0.1, -0.1) * fade(fp[i] / period, 1.0)
    rgb[i] = _CROPS[(h * len(_CROPS)).astype(np.int64)] * (1.0 + stripe)[:, None]


def _paint_parking(rgb, i, a, b, blocks: Keys, fp, world):
    a, b, f = a[i], b[i], fp[i]
    stall_w, stall_l = 2.7, 5.5
    si, sj = np.floor(a / stall_w), np.floor(b / stall_l)
    out = np.broadcast_to(_PAVED, (i.size, 3)).copy()
    la, lb = a - si * stall_w, b - sj * stall_l
    key = blocks.ka[i] * 7919 + blocks.kb[i] * 104729 + si.astype(np.int64) * 31
    h = Keys(key, sj.astype(np.int64)).hash(world.salt("car"))
    car = (h < 0.5) & (la > 0.4) & (la < stall_w - 0.4) & (lb > 0.5) & (lb < stall_l - 0.5)
    out[car] = _CARS[(((h * 41) % 1.0) * len(_CARS)).astype(np.int64)][car]
    _blend(out, _line_alpha(la - 0.05, 0.12, f) * ~car, _WHITE)
    rgb[i] = out


def _landmark_mask(pa: np.ndarray, pb: np.ndarray, r: np.ndarray, shape: np.ndarray) -> np.ndarray:
    rho = np.hypot(pa, pb)
    ab, bb = np.abs(pa), np.abs(pb)
    masks = [
        rho < r,                                                   # disc
        (rho < r) & (rho > 0.6 * r),                               # ring
        np.maximum(ab, bb) < 0.8 * r,                              # square
        (pb > -0.5 * r) & (math.sqrt(3) * ab + pb < r),            # triangle
        ((ab < r / 3) & (bb < r)) | ((bb < r / 3) & (ab < r)),      # cross
        ((pb > 0) & (pb < r) & (ab < (r - pb) * 0.6))              # arrow: head
        | ((pb <= 0) & (pb > -r) & (ab < 0.2 * r)),                 # and shaft
    ]
    out = np.zeros(pa.shape, bool)
    for k, mk in enumerate(masks):
        out |= (shape == k) & mk
    return out


def _paint_landmarks(rgb, m, a, b, wa, wb, blocks: Keys, world):
    """One bright shape in some blocks, at a hashed place, size, angle and colour."""
    h = blocks.hash(world.salt("landmark"))
    i = np.nonzero(m & (h < world.style.landmark_share))[0]
    if i.size == 0:
        return
    h, a, b, wa, wb = h[i], a[i], b[i], wa[i], wb[i]
    g = blocks.hash(world.salt("landmark-geometry"), i)
    r = np.minimum(6.0 + 12.0 * g, 0.4 * np.minimum(wa, wb))
    ca = r + (wa - 2 * r) * ((g * 7) % 1.0)
    cb = r + (wb - 2 * r) * ((g * 13) % 1.0)
    ang = 2 * np.pi * ((g * 19) % 1.0)
    da, db = a - ca, b - cb
    cos, sin = np.cos(ang), np.sin(ang)
    pa, pb = da * cos + db * sin, -da * sin + db * cos
    shape = ((h * 37) % 1.0 * len(LANDMARK_SHAPES)).astype(np.int64)
    inside = _landmark_mask(pa, pb, r, shape) & (r > 2.0)
    colour = LANDMARK_RGB[((h * 53) % 1.0 * len(LANDMARK_RGB)).astype(np.int64)]
    rgb[i[inside]] = colour[inside]


def _paint_road_axis(rgb, ax: Axis, along: np.ndarray, cross: Axis, fp, world) -> None:
    """Markings of the grid roads of one axis (running along `along`), outside intersections:
    double yellow and lane dashes on avenues, a dashed centre on streets, zebra crossings.
    Only samples near a marking are painted (most of a road is bare asphalt)."""
    i = np.nonzero(ax.on_road & ~cross.on_road)[0]
    if i.size == 0:
        return
    off, hw, f = ax.offset[i], ax.hw[i], fp[i]
    aoff = np.abs(off)
    avenue = hw > world.style.street_half_width_m + 0.1
    to_line = np.where(avenue, np.minimum(np.abs(aoff - 0.2), np.abs(aoff - 0.5 * hw)), aoff)
    gap = np.abs(cross.offset[i]) - cross.hw[i]  # distance from the crossing road's edge
    zebra = (gap > 0.8) & (gap < 4.0) & (aoff < hw - 0.3)
    keep = (to_line < 0.5 * np.maximum(f, 0.12)) | zebra
    i, off, aoff, hw, f, avenue, zebra = (v[keep] for v in (i, off, aoff, hw, f, avenue, zebra))
    if i.size == 0:
        return
    s = along[i]
    sub = rgb[i]
    _blend(sub, np.where(avenue, _line_alpha(aoff - 0.2, 0.12, f), 0.0), _YELLOW)
    lane = _line_alpha(aoff - 0.5 * hw, 0.12, f) * _dashes(s, 9.0, 0.4, f)
    centre = _line_alpha(off, 0.12, f) * _dashes(s, 6.0, 0.5, f)
    alpha = np.where(avenue, lane, centre)
    alpha = np.where(zebra, np.maximum(alpha, _dashes(off, 1.0, 0.5, f)), alpha)
    _blend(sub, alpha, _WHITE)
    rgb[i] = sub


def _paint_overlay_roads(rgb, x, y, fp, world) -> None:
    """A family of straight diagonal roads and one of sinusoidal roads, over everything."""
    st = world.style
    for name, angle, spacing, amp in (("diagonal", st.diagonal_angle_deg, st.diagonal_spacing_m, 0.0),
                                      ("curve", st.curve_angle_deg, st.curve_spacing_m, 45.0)):
        t = math.radians(angle)
        p, q = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        wave = 2 * math.pi / 420.0
        if amp:
            q = q - amp * np.sin(wave * p)
        k = np.round(q / spacing).astype(np.int64)
        d = q - k * spacing
        near = np.abs(d) < 5.0 * (1.0 + amp * wave)  # cheap pre-test before the slope term
        if not near.any():
            continue
        i = np.nonzero(near)[0]
        d = d[i] / np.sqrt(1.0 + (amp * wave * np.cos(wave * p[i])) ** 2) if amp else d[i]
        road = (np.abs(d) < 5.0) & (hash01(world.salt(name), k[i]) < 0.6)
        i, d = i[road], d[road]
        sub = np.broadcast_to(_ASPHALT, (i.size, 3)).copy()
        _blend(sub, _line_alpha(d, 0.12, fp[i]) * _dashes(p[i], 6.0, 0.5, fp[i]), _WHITE)
        rgb[i] = sub


def _paint_roundabouts(rgb, au: Axis, av: Axis, u, v, world) -> None:
    near = (np.abs(u - au.line_pos) < 20.0) & (np.abs(v - av.line_pos) < 20.0)
    i = np.nonzero(near)[0]
    if i.size == 0:
        return
    h = hash01(world.salt("roundabout"), au.line[i], av.line[i])
    radius = 11.0 + 5.0 * ((h * 7) % 1.0)
    d = np.hypot(u[i] - au.line_pos[i], v[i] - av.line_pos[i])
    m = (h < world.style.roundabout_share) & (d < radius + 3.0)
    i, d, radius, h = i[m], d[m], radius[m], h[m]
    out = np.broadcast_to(_ASPHALT, (i.size, 3)).copy()
    out[d < radius - 5.0] = _GRASS
    monument = d < 2.5
    out[monument] = LANDMARK_RGB[((h * 53) % 1.0 * len(LANDMARK_RGB)).astype(np.int64)][monument]
    rgb[i] = out


def paint_ground(world: "World", x: np.ndarray, y: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """RGB (N, 3) float32 in [0, 1] of ground points (x, y) sampled `fp` metres wide."""
    st = world.style
    # float32 from here on: twice as fast as float64, and 4 mm resolution 60 km out.
    x, y, fp = x.astype(np.float32), y.astype(np.float32), fp.astype(np.float32)
    u, v = world.to_grid(x, y)
    au, av = Axis(u, world, U_SALT), Axis(v, world, V_SALT)
    blocks = Keys(au.block, av.block)
    a, b, wa, wb = au.inner, av.inner, au.width, av.width
    rgb = np.empty((x.size, 3), np.float32)

    # Land use per block; districts (5x5 blocks) shift how built up the blocks are.
    use = blocks.hash(world.salt("use"))
    kind = blocks.hash(world.salt("kind"))
    district = Keys(au.block // 5, av.block // 5).hash(world.salt("district"))
    urban = np.clip(st.urban_share + 0.6 * (district - 0.5), 0.0, 1.0)
    water = use < st.water_share
    built = ~water & (use < st.water_share + urban * (1.0 - st.water_share))
    rest = ~water & ~built
    rgb[water] = _WATER
    if built.any():
        _paint_built(rgb, built, a, b, wa, wb, blocks, fp, world)
    if (i := np.nonzero(rest & (kind < 0.35))[0]).size:
        _paint_park(rgb, i, u, v, world)
    if (i := np.nonzero(rest & (kind >= 0.35) & (kind < 0.75))[0]).size:
        _paint_field(rgb, i, a, b, blocks, fp, world)
    if (i := np.nonzero(rest & (kind >= 0.75))[0]).size:
        _paint_parking(rgb, i, a, b, blocks, fp, world)
    _paint_landmarks(rgb, ~water, a, b, wa, wb, blocks, world)
    rgb *= (0.9 + 0.2 * blocks.hash(world.salt("light")))[:, None]  # blocks differ in tone

    rgb[au.on_road | av.on_road] = _ASPHALT
    _paint_road_axis(rgb, au, v, av, fp, world)
    _paint_road_axis(rgb, av, u, au, fp, world)
    _paint_overlay_roads(rgb, x, y, fp, world)
    _paint_roundabouts(rgb, au, av, u, v, world)

    # Texture: grain that fades with distance.
    gx, gy = np.floor(x * (1 / 0.3)).astype(np.int64), np.floor(y * (1 / 0.3)).astype(np.int64)
    grain = (world.grain[(gx & 255) * 256 + (gy & 255)] - 0.5) * (0.12 * fade(fp, 0.6))
    rgb *= (1.0 + grain)[:, None]

    for mk in world.markers:
        rgb[(x - mk.x) ** 2 + (y - mk.y) ** 2 < mk.radius ** 2] = mk.rgb
    np.maximum(rgb, 0.0, out=rgb)
    return np.minimum(rgb, 1.0, out=rgb)
