"""The one record type every source reader produces, and small parsing helpers.

A `SourceRecord` is one street-level capture at one location with its aerial imagery: either a
panorama (with the compass azimuth its centre column looks at; see `geoxray.data.panorama`
for the conventions) or ready-cut views by azimuth, and one or more aerial tiles, each of which
becomes one benchmark instance (CVUSA zoom 18/19/20, OmniCity view 1/2/3, ...). Readers only
read metadata and file names; images are decoded (and checked) by the build.

Output paths (`ground_out`, `Tile.out_path`) follow the authors' index conventions of each
dataset, relative to the built benchmark's image root, so a built benchmark looks like the
published one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

HEADING_CONVENTIONS = (
    "north_aligned",  # panorama centre column looks north (CVUSA, VIGOR)
    "filename_heading",  # centre column looks at the file name's d<heading> (CVGlobal, OmniCity)
    "metadata_heading",  # centre column's azimuth read from a metadata file
    "views",  # no panorama: views already cut at known azimuths (LLMGeo)
)


@dataclass(frozen=True)
class Tile:
    """One aerial image source for a record, and where its processed 512x512 goes."""
    instance: str  # benchmark instance this tile feeds, e.g. "CVUSA_zoom18"
    out_path: str  # relative output path, e.g. "18/0037557.jpg"
    path: str | None = None  # a ready-cut north-up aerial image ...
    mpp: float | None = None  # ... its ground metres per pixel (None: unknown)
    # camera minus image centre in that image's pixels (x right, y down); None: at the centre
    camera_offset_px: tuple[float, float] | None = None
    center_latlon: tuple[float, float] | None = None  # ground point at the image centre
    xyz_root: str | None = None  # or a z/x/y tile folder to stitch at `zoom`
    zoom: int | None = None
    extent_m: float | None = None  # ground side of the output; None: the source's default
    capture_time: str | None = None  # "YYYY-MM" of the aerial imagery, when known


@dataclass(frozen=True)
class SourceRecord:
    source: str  # dataset name: CVUSA, VIGOR, CVGlobal, OmniCity, LLMGeo
    pair_id: str  # the dataset's own id of this capture (unique within the source)
    lat: float
    lon: float
    capture_time: str | None  # "YYYY-MM" of the street-level capture, when known
    heading_convention: str  # one of HEADING_CONVENTIONS
    ground_out: str  # output path pattern of a view: "{dir}" (N, NE, ...) and/or "{deg}"
    tiles: tuple[Tile, ...]
    panorama: str | None = None  # equirectangular panorama file ...
    center_azimuth: float | None = None  # ... compass azimuth of its centre column
    vfov_deg: float | None = None  # vertical span of a cropped panorama (None: square pixels)
    views: tuple[tuple[float, str], ...] = ()  # or (azimuth, file) of ready-cut views
    view_fov: float = 90.0
    original_id: str | None = None  # id written as the index's original_id
    split_hint: str | None = None  # the dataset's own split ("train"/"test"), if any
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Reject:
    """Something a reader could not turn into a record (counted in the build report)."""
    source: str
    where: str  # file or line
    reason: str  # a QC rule name, e.g. "bad_coordinates", "missing_image", "unparseable_name"


@dataclass
class ReadResult:
    records: list[SourceRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reject(self, source: str, where: str, reason: str) -> None:
        self.rejects.append(Reject(source, str(where), reason))


def valid_latlon(lat: float, lon: float) -> bool:
    """Finite, inside the Web-Mercator square and the longitude range, not (0, 0) (the
    null-island placeholder of a missing fix)."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return False
    if not (-85.0511 <= lat <= 85.0511 and -180.0 <= lon <= 180.0):
        return False
    return not (lat == 0.0 and lon == 0.0)


def parse_float(text: str) -> float | None:
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value


_DATE = re.compile(r"^(\d{4})-(\d{2})(?:-\d{2})?$")


def parse_month(text: str | None) -> str | None:
    """'YYYY-MM' (also from 'YYYY-MM-DD'), or None when absent or malformed."""
    if not text:
        return None
    m = _DATE.match(str(text).strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        return None
    return f"{m.group(1)}-{m.group(2)}"


def month_index(text: str | None) -> int | None:
    """Months since year 0 of a 'YYYY-MM' string (for capture-time gaps)."""
    month = parse_month(text)
    if month is None:
        return None
    year, mon = month.split("-")
    return int(year) * 12 + int(mon) - 1


# Google Street View style names shared by CVGlobal and OmniCity:
#   <lat>,<lon>_<YYYY-MM>_<panoid>_d<heading>_z<zoom>[<suffix>].<ext>
# The panoid may itself contain "_" and "-", so it is matched greedily up to the last _d.
GSV_NAME = re.compile(
    r"^(?P<lat>-?\d+(?:\.\d+)?),(?P<lon>-?\d+(?:\.\d+)?)_(?P<date>\d{4}-\d{2})_(?P<panoid>.+)"
    r"_d(?P<heading>\d+(?:\.\d+)?)_z(?P<zoom>\d+)(?P<suffix>[A-Z]{0,2})\.(?P<ext>jpe?g|png)$")


def parse_gsv_name(name: str) -> dict | None:
    m = GSV_NAME.match(name)
    if not m:
        return None
    d = m.groupdict()
    d["stem"] = name[: m.start("suffix")]
    return d


def gsv_panoramas(pano_dir, result: "ReadResult", source: str):
    """Yield (path, name fields, lat, lon) of each Google-Street-View-named panorama in a
    folder (CVGlobal, OmniCity), rejecting unparseable names and bad coordinates in `result`."""
    for pano in sorted(pano_dir.iterdir()):
        if not pano.is_file():
            continue
        meta = parse_gsv_name(pano.name)
        if meta is None or meta["suffix"]:
            result.reject(source, pano.name, "unparseable_name")
            continue
        lat, lon = float(meta["lat"]), float(meta["lon"])
        if not valid_latlon(lat, lon):
            result.reject(source, pano.name, "bad_coordinates")
            continue
        yield pano, meta, lat, lon
