"""What a synthetic GeoX-Bench is made of: the instances it imitates (zoom, place, look), the
presets (tiny, paper, full) and the checked configuration of one generation."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from geoxray.data import render
from geoxray.data.world import WorldStyle

EARTH_RADIUS_M = 6378137.0


@dataclass(frozen=True)
class InstanceSpec:
    """One source instance of GeoX-Bench, imitated: its zoom, where on Earth, and its look."""
    name: str
    zoom: int                    # Web-Mercator zoom: sets the tile's metres per pixel
    origin: tuple[float, float]  # (lat, lon) of world (0, 0)
    style: WorldStyle
    index_zoom_level: int | None  # what the index says (the authors write null for some)
    extra_fields: bool = False   # CVUSA records carry "real distance" / "pixel distance"


def _style(**kw) -> WorldStyle:
    return WorldStyle(**kw)


INSTANCES: tuple[InstanceSpec, ...] = (
    InstanceSpec("CVGloable", 18, (-27.4698, 153.0251),
                 _style(grid_angle_deg=12.0, urban_share=0.5, road_spacing_m=120.0), 18),
    InstanceSpec("CVUSA_zoom18", 18, (43.2472, -122.2364),
                 _style(urban_share=0.2, road_spacing_m=170.0, landmark_share=0.35), 18, True),
    InstanceSpec("CVUSA_zoom19", 19, (39.7392, -104.9903),
                 _style(urban_share=0.35, road_spacing_m=140.0), 19, True),
    InstanceSpec("CVUSA_zoom20", 20, (35.1495, -90.0490),
                 _style(grid_angle_deg=-8.0, urban_share=0.45, road_spacing_m=120.0), 20, True),
    InstanceSpec("LMMGeo_zoom20", 20, (47.0169, 18.5736),
                 _style(grid_angle_deg=23.0, road_spacing_m=90.0, avenue_share=0.15), 20),
    InstanceSpec("LMMGeo_zoom21", 21, (47.4979, 19.0402),
                 _style(grid_angle_deg=-31.0, road_spacing_m=85.0, urban_share=0.7), 21),
    InstanceSpec("LMMGeo_zoom22", 22, (46.2530, 20.1414),
                 _style(grid_angle_deg=5.0, road_spacing_m=95.0, urban_share=0.6), 22),
    InstanceSpec("OmniCity_view1", 19, (40.6961, -73.9896),
                 _style(grid_angle_deg=29.0, urban_share=0.85, road_spacing_m=80.0), None),
    InstanceSpec("OmniCity_view2", 19, (40.7580, -73.9855),
                 _style(grid_angle_deg=29.0, urban_share=0.9, road_spacing_m=75.0), None),
    InstanceSpec("OmniCity_view3", 19, (40.6782, -73.9442),
                 _style(grid_angle_deg=-2.0, urban_share=0.8, road_spacing_m=85.0), None),
    InstanceSpec("VIGOR_Chicago", 20, (41.8781, -87.6298),
                 _style(urban_share=0.8, road_spacing_m=100.0, avenue_share=0.3), None),
)
INSTANCE_BY_NAME = {spec.name: spec for spec in INSTANCES}


@dataclass(frozen=True)
class SynthConfig:
    """Everything a generation depends on (written to world.json)."""
    preset: str = "tiny"
    seed: int = 0
    instances: tuple[str, ...] = ("CVUSA_zoom18", "VIGOR_Chicago")
    locations: int = 4             # test locations per instance
    train_locations: int = 0       # train locations in all, spread evenly over the instances
    view_size: int = 256           # ground views are view_size x view_size
    tile_size: int = 512
    panorama_width: int = 512      # panoramas are width x width/2
    fov_deg: float = 90.0
    camera_height_m: float = render.DEFAULT_CAMERA_HEIGHT_M
    haze_m: float = render.DEFAULT_HAZE_M
    tile_supersample: int = 1
    view_supersample: int = 2
    panorama_supersample: int = 1
    jpeg_quality: int = 90
    location_spacing_m: float = 1500.0  # locations sit on a lattice this far apart


_ALL = tuple(spec.name for spec in INSTANCES)
PRESETS: dict[str, dict] = {
    "tiny": dict(instances=("CVUSA_zoom18", "VIGOR_Chicago"), locations=4, train_locations=0,
                 view_size=256, panorama_width=512, view_supersample=2),
    # tiny's test split (identical items) plus train locations: `geoxray tune`'s default world
    "tiny_tune": dict(instances=("CVUSA_zoom18", "VIGOR_Chicago"), locations=4,
                      train_locations=64, view_size=256, panorama_width=512, view_supersample=2),
    "paper": dict(instances=_ALL, locations=25, train_locations=0, view_size=512,
                  panorama_width=1024, view_supersample=1),
    "full": dict(instances=_ALL, locations=25, train_locations=4571, view_size=512,
                 panorama_width=1024, view_supersample=1),
}


def make_config(preset: str = "tiny", seed: int = 0, **overrides) -> SynthConfig:
    """A preset with overrides. `instances` may be a count (the first n of `INSTANCES`, tiny's
    two first) or names. A misspelt override or instance name fails here, naming it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets are {list(PRESETS)}")
    known = {f.name for f in fields(SynthConfig)} - {"preset", "seed"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown synth override(s) {bad}; allowed: {sorted(known)}")
    values = {**PRESETS[preset], **overrides}
    inst = values["instances"]
    if isinstance(inst, int):
        order = list(PRESETS[preset]["instances"]) + [n for n in _ALL if n not in PRESETS[preset]["instances"]]
        if not 1 <= inst <= len(order):
            raise ValueError(f"instances={inst}: must be 1..{len(order)}")
        inst = order[:inst]
    inst = tuple(str(n) for n in inst)
    unknown = [n for n in inst if n not in INSTANCE_BY_NAME]
    if unknown or len(set(inst)) != len(inst):
        raise ValueError(f"instances {list(inst)}: unknown or repeated {unknown}; known: {list(_ALL)}")
    values["instances"] = inst
    cfg = SynthConfig(preset=preset, seed=int(seed), **values)
    if cfg.locations < 4:
        raise ValueError(f"locations={cfg.locations}: need >= 4 per instance (3 distractors)")
    per = train_per_instance(cfg)
    if any(0 < n < 4 for n in per):
        raise ValueError(f"train_locations={cfg.train_locations} gives {min(per)} per instance "
                         f"over {len(inst)} instances; need 0 or >= 4 each")
    if cfg.panorama_width % 2:
        raise ValueError(f"panorama_width={cfg.panorama_width} must be even")
    return cfg


def train_per_instance(cfg: SynthConfig) -> list[int]:
    """Train locations of each instance: an even spread, the first ones taking the remainder."""
    n = len(cfg.instances)
    base, extra = divmod(cfg.train_locations, n)
    return [base + (i < extra) for i in range(n)]


def metres_per_pixel(lat: float, zoom: int, tile_px: int = 256) -> float:
    """Web-Mercator ground resolution of zoom `zoom` at latitude `lat`."""
    return 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(lat)) / (tile_px * 2 ** zoom)
