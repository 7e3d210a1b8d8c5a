"""Index records of the synthetic benchmark, in the authors' format (see
`geoxray/bench/geoxbench/index`): who pairs with whom is decided here, from the seed alone,
without touching a pixel.

Per instance and split, with L locations (4 headings each, 4L records per folder):
- Orin4_SameLocation: each view with its own tile.
- Location4_50_in_range: exactly 2L records keep their own tile (`in_range: true`); the other
  2L, chosen by a seeded permutation, pair the view with another location's tile of the same
  instance and split (`in_range: false`).
- LocationSelection: the own tile and 3 other locations' tiles, in seeded order, exactly one
  `is_original: true`. `GroundImage.in_range` is false on every record, as in the authors'
  files (the tasks read `is_original`).
Records come in location order, headings N, E, S, W; `image_id` is "<loc>_<degree>" (the
CVGlobal/LLMGeo style) and is the same for a view in all three folders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoxray.data.noise import stable_seed

FOLDERS = ("Orin4_SameLocation", "Location4_50_in_range", "LocationSelection")
HEADINGS: tuple[tuple[str, float], ...] = (("N", 0.0), ("E", 90.0), ("S", 180.0), ("W", 270.0))
# Items per base record downstream: tasks 1+2+5 (1+9+9), 3+4 (1+9), 6+7 (1+9).
ITEMS_PER_BASE_RECORD = 39
SOURCE = "synthetic"


@dataclass(frozen=True)
class Location:
    """One camera position of the synthetic benchmark and the images made there."""
    instance: str
    split: str            # "test" or "train"
    loc_id: str
    x: float              # world metres east
    y: float              # world metres north
    lat: float
    lon: float
    mpp: float            # tile metres per pixel
    heading_offset_deg: float  # azimuth of the left edge of the panorama's column 0
    capture_time: str
    zoom: int
    index_zoom_level: int | None
    extra_fields: bool
    tile_path: str
    view_paths: dict[str, str]
    panorama_path: str

    @property
    def real_location(self) -> str:
        return f"{self.lat:.8f},{self.lon:.8f}"


def _aerial(loc: Location) -> dict:
    return {"file_path": loc.tile_path, "zoom_level": loc.index_zoom_level, "centered": True}


def _record(loc: Location, orientation: str, degree: float, in_range: bool | None,
            aerial: dict | None = None, candidates: list | None = None, fov: float = 90) -> dict:
    rec: dict = {"image_id": f"{loc.loc_id}_{int(degree)}", "original_id": loc.loc_id,
                 "source": SOURCE}
    if loc.extra_fields:  # CVUSA records carry the camera's offset from the tile centre
        rec["real distance"] = [0.0, 0.0]
        rec["pixel distance"] = [0.0, 0.0]
    ground = {"file_path": loc.view_paths[orientation], "fov": fov,
              "capture_time": loc.capture_time, "real_location": loc.real_location,
              "orientation": orientation, "degree": degree}
    if in_range is not None:
        ground["in_range"] = in_range
    rec["GroundImage"] = ground
    if candidates is not None:
        rec["AerialCandidates"] = candidates
    else:
        rec["AerialImage"] = aerial if aerial is not None else _aerial(loc)
    return rec


def _group_records(seed: int, group: list[Location], fov: float) -> dict[str, list[dict]]:
    """The three folders' records of one (split, instance) group of locations."""
    first = group[0]
    n = len(group)
    if n < 4:
        raise ValueError(f"{first.instance}/{first.split}: {n} locations; need >= 4")
    rng = np.random.default_rng(stable_seed("index", seed, first.instance, first.split))
    views = [(i, o, d) for i in range(n) for o, d in HEADINGS]
    out_of_range = np.zeros(len(views), bool)
    out_of_range[rng.permutation(len(views))[: len(views) // 2]] = True

    same, in_range, selection = [], [], []
    for k, (i, orientation, degree) in enumerate(views):
        loc = group[i]
        others = [j for j in range(n) if j != i]
        same.append(_record(loc, orientation, degree, None, fov=fov))
        tile_of = others[rng.integers(len(others))] if out_of_range[k] else i
        in_range.append(_record(loc, orientation, degree, not out_of_range[k],
                                aerial=_aerial(group[tile_of]), fov=fov))
        picks = [i] + [others[j] for j in rng.choice(len(others), 3, replace=False)]
        order = rng.permutation(4)
        candidates = [{"AerialImage": _aerial(group[picks[p]]), "is_original": bool(p == 0)}
                      for p in order]
        selection.append(_record(loc, orientation, degree, False, candidates=candidates,
                                 fov=fov))
    return dict(zip(FOLDERS, (same, in_range, selection)))


def index_records(seed: int, locations: list[Location],
                  fov_deg: float = 90.0) -> dict[tuple[str, str, str], list[dict]]:
    """{(split, folder, instance): records} for every group of locations. A group's records
    depend only on the seed and that group, so `paper`'s test split is `full`'s."""
    fov = int(fov_deg) if float(fov_deg).is_integer() else float(fov_deg)
    groups: dict[tuple[str, str], list[Location]] = {}
    for loc in locations:
        groups.setdefault((loc.split, loc.instance), []).append(loc)
    out = {}
    for (split, instance), group in groups.items():
        for folder, recs in _group_records(seed, group, fov).items():
            out[(split, folder, instance)] = recs
    return out


def panorama_entry(loc: Location, cfg) -> dict:
    """One location of panoramas.json: where the panorama is, where it was taken and how it
    is turned, plus the views and tile it should reproduce."""
    return {"instance": loc.instance, "split": loc.split, "location_id": loc.loc_id,
            "file_path": loc.panorama_path, "lat": loc.lat, "lon": loc.lon,
            "real_location": loc.real_location,
            "heading_offset_deg": loc.heading_offset_deg,
            "center_azimuth_deg": (loc.heading_offset_deg + 180.0) % 360.0,
            "width": cfg.panorama_width, "height": cfg.panorama_width // 2,
            "camera_height_m": cfg.camera_height_m, "fov_deg": cfg.fov_deg,
            "views": dict(loc.view_paths), "aerial": loc.tile_path,
            "metres_per_pixel": loc.mpp, "world_xy_m": [loc.x, loc.y]}
