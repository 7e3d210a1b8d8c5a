"""Quality control of source records: every rule skips the bad record (or tile) and counts it;
nothing here raises on bad data.

Rules (names used as counters in the build report):
  bad_coordinates      latitude/longitude not finite, out of range or (0, 0)
  missing_metadata     a dataset's metadata/label file is absent (whole source or city)
  unparseable_name     a file name or metadata row the reader cannot parse
  missing_image        an image file the record names does not exist
  unreadable_image     an image file that does not decode
  blank_image          an image that is (almost) one flat colour
  missing_tile         no aerial image for the record, or stitched z/x/y tiles missing
  duplicate_location   another record of the same source lies within `dup_distance_m`
  capture_time_gap     street and aerial capture months further apart than the threshold
  camera_outside_tile  the camera does not lie inside its aerial image's extent
  camera_near_edge     re-centring the aerial on the camera would keep too little of it
  no_distractor        too few other locations to draw negatives/distractors from (the
                       record is left out of the folders that need them)
  distractor_outside_band  (informational) a negative/distractor came from beyond the band
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from geoxray.data.sources.record import SourceRecord, month_index, valid_latlon
from geoxray.data.tiles import EARTH_RADIUS_M

RULES = ("bad_coordinates", "missing_metadata", "unparseable_name", "missing_image",
         "unreadable_image", "blank_image", "missing_tile", "duplicate_location",
         "capture_time_gap", "camera_outside_tile", "camera_near_edge", "no_distractor",
         "distractor_outside_band")


@dataclass
class QCConfig:
    blank_std: float = 2.0  # an image whose pixel standard deviation is below this is blank
    min_side_px: int = 16  # smaller images count as unreadable
    dup_distance_m: float = 1.0  # two captures closer than this are one location
    max_capture_gap_months: int | None = 120  # None: no capture-time rule
    max_missing_xyz_tiles: int = 0  # stitched mosaics may miss at most this many z/x/y tiles


@dataclass
class QCReport:
    counts: dict[str, int] = field(default_factory=lambda: {r: 0 for r in RULES})
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 10

    def add(self, rule: str, where: str) -> None:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        shown = self.examples.setdefault(rule, [])
        if len(shown) < self.max_examples:
            shown.append(str(where))

    def merge(self, other: "QCReport") -> None:
        for rule, n in other.counts.items():
            self.counts[rule] = self.counts.get(rule, 0) + n
        for rule, shown in other.examples.items():
            mine = self.examples.setdefault(rule, [])
            mine.extend(shown[: max(0, self.max_examples - len(mine))])

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())),
                "examples": dict(sorted(self.examples.items()))}


def check_coordinates(records: list[SourceRecord], report: QCReport) -> list[SourceRecord]:
    kept = []
    for r in records:
        if valid_latlon(r.lat, r.lon):
            kept.append(r)
        else:
            report.add("bad_coordinates", f"{r.source}:{r.pair_id}")
    return kept


def drop_duplicate_locations(records: list[SourceRecord], dup_distance_m: float,
                             report: QCReport) -> list[SourceRecord]:
    """Keep the first record (in the given order) of every cluster of captures of one source
    closer than `dup_distance_m`. Grid buckets make this linear in the number of records."""
    if dup_distance_m <= 0:
        return list(records)
    cell_deg = dup_distance_m / (math.pi * EARTH_RADIUS_M / 180.0)
    buckets: dict[tuple[str, int, int], list[SourceRecord]] = {}
    kept = []
    for r in records:
        # Longitude cells shrink with cos(lat); a cell of cell_deg/cos covers dup_distance_m.
        lon_cell = cell_deg / max(math.cos(math.radians(r.lat)), 1e-6)
        key = (r.source, int(math.floor(r.lat / cell_deg)), int(math.floor(r.lon / lon_cell)))
        near = [o for di in (-1, 0, 1) for dj in (-1, 0, 1)
                for o in buckets.get((key[0], key[1] + di, key[2] + dj), ())]
        if any(_distance_m(r.lat, r.lon, o.lat, o.lon) < dup_distance_m for o in near):
            report.add("duplicate_location", f"{r.source}:{r.pair_id}")
            continue
        buckets.setdefault(key, []).append(r)
        kept.append(r)
    return kept


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def capture_gap_months(record: SourceRecord) -> int | None:
    """Largest gap between the street capture and any of its aerial images, when known."""
    street = month_index(record.capture_time)
    gaps = [abs(street - m) for m in (month_index(t.capture_time) for t in record.tiles)
            if street is not None and m is not None]
    return max(gaps) if gaps else None


def check_capture_gap(records: list[SourceRecord], max_months: int | None,
                      report: QCReport) -> list[SourceRecord]:
    if max_months is None:
        return list(records)
    kept = []
    for r in records:
        gap = capture_gap_months(r)
        if gap is not None and gap > max_months:
            report.add("capture_time_gap", f"{r.source}:{r.pair_id} ({gap} months)")
        else:
            kept.append(r)
    return kept


def load_image(path: str | Path, config: QCConfig, report: QCReport, where: str,
               rgb: bool = True) -> np.ndarray | None:
    """Decode an image (RGB, or OpenCV's BGR with rgb=False), or count why not
    (missing/unreadable/blank) and return None."""
    path = Path(path)
    if not path.is_file():
        report.add("missing_image", where)
        return None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or min(img.shape[:2]) < config.min_side_px:
        report.add("unreadable_image", where)
        return None
    if is_blank(img, config.blank_std):
        report.add("blank_image", where)
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img


def is_blank(img: np.ndarray, blank_std: float) -> bool:
    """Flat colour (all black, white, or one grey), judged on a strided sample of about
    128 x 128 pixels (a flat image is flat on any sample; this costs microseconds)."""
    step = max(1, max(img.shape[:2]) // 128)
    img = img[::step, ::step]
    channels = img.shape[-1] if img.ndim == 3 else 1
    return float(img.reshape(-1, channels).std(axis=0).max()) < blank_std


def camera_inside(camera_px: tuple[float, float], shape: tuple[int, ...]) -> bool:
    """Is a continuous pixel position (x, y) inside an image of this shape?"""
    x, y = camera_px
    return 0.0 <= x < shape[1] and 0.0 <= y < shape[0]
