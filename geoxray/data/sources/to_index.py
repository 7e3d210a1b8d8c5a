"""Rendered source records -> the authors' index format (split, negatives, distractors).

For every instance and split:
  Orin4_SameLocation      one record per location and cardinal heading, its own aerial
  Orin8                   the same with 45-degree steps (only when 8 headings are built)
  Location4_50_in_range   the cardinal records again; exactly half (a seeded choice) get the
                          aerial of another location of the same instance and split drawn from
                          the distance band, with `in_range: false`
  LocationSelection       the cardinal records with `candidates` aerials: the original plus
                          distractors drawn from the band, the original's position balanced
                          over 0..candidates-1 and shuffled
A distractor is never closer than the band's lower edge nor than 3/4 of its own tile's ground
side (more than the half-diagonal, so the camera is really outside it). When the band holds too
few locations the nearest ones beyond it fill in (counted as `distractor_outside_band`); with
too few locations at all the record is left out of that folder (`no_distractor`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoxray.data.panorama import CARDINALS, OCTANTS
from geoxray.data.sources.record import SourceRecord, Tile
from geoxray.data.tiles import haversine_m


@dataclass
class RenderedTile:
    tile: Tile
    centered: bool
    extent_m: float | None  # ground side of the output image, when the resolution is known
    offset_m: tuple[float, float] | None = None  # tile centre minus camera (east, north)
    offset_px: tuple[float, float] | None = None  # the same in output pixels (x right, y down)


@dataclass
class Rendered:
    record: SourceRecord
    views: dict[str, str]  # direction name -> output path
    tiles: list[RenderedTile]
    fov: float = 90.0  # horizontal field of view of the views


def seeded_rng(*parts: Any) -> np.random.Generator:
    """A generator that depends only on `parts` (stable across runs and platforms)."""
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def location_key(r: SourceRecord) -> str:
    return f"{r.lat:.6f},{r.lon:.6f}"


def assign_splits(rendered: list[Rendered], test_fraction: float, test_locations: int | None,
                  seed: int) -> tuple[dict[tuple[str, str], str], dict[str, dict[str, int]]]:
    """Split each source's locations (not records, not instances) into test and train, so no
    location is in both even when it feeds several instances. Returns ((source, location key)
    -> split, per-source counts)."""
    keys: dict[str, set[str]] = {}
    for item in rendered:
        keys.setdefault(item.record.source, set()).add(location_key(item.record))
    split_of: dict[tuple[str, str], str] = {}
    counts: dict[str, dict[str, int]] = {}
    for source in sorted(keys):
        ordered = sorted(keys[source])
        order = seeded_rng(seed, "split", source).permutation(len(ordered))
        n_test = int(round(test_fraction * len(ordered)))
        if test_locations is not None:
            n_test = min(n_test, int(test_locations))
        for rank, i in enumerate(order):
            split_of[(source, ordered[i])] = "test" if rank < n_test else "train"
        counts[source] = {"test": n_test, "train": len(ordered) - n_test}
    return split_of, counts


def _aerial(rt: RenderedTile) -> dict:
    a = {"file_path": rt.tile.out_path, "zoom_level": rt.tile.zoom, "centered": rt.centered}
    if not rt.centered and rt.tile.center_latlon is not None:
        a["real_location"] = "%.6f,%.6f" % rt.tile.center_latlon
    return a


def _record(item: Rendered, rt: RenderedTile, name: str) -> dict:
    r = item.record
    rec: dict[str, Any] = {"image_id": f"{r.pair_id}_{int(OCTANTS[name])}",
                           "original_id": r.original_id or r.pair_id,
                           "source": r.split_hint or r.source}
    if not rt.centered and rt.offset_m is not None:
        rec["real distance"] = [round(v, 6) for v in rt.offset_m]
        rec["pixel distance"] = [round(v, 6) for v in rt.offset_px]
    fov = item.fov
    fov_value = int(fov) if float(fov).is_integer() else float(fov)  # the authors write 90
    rec["GroundImage"] = {"file_path": item.views[name], "fov": fov_value,
                          "capture_time": r.capture_time,
                          "real_location": f"{r.lat:.8f},{r.lon:.8f}",
                          "orientation": name, "degree": OCTANTS[name]}
    rec["AerialImage"] = _aerial(rt)
    return rec


class _Band:
    """Distractor choice for one (split, instance) group."""

    def __init__(self, group: list[tuple[Rendered, RenderedTile]], band_m: tuple[float, float]):
        self.group = group
        self.lat = np.array([g[0].record.lat for g in group])
        self.lon = np.array([g[0].record.lon for g in group])
        side = np.array([g[1].extent_m or 0.0 for g in group])
        self.lower = np.maximum(float(band_m[0]), 0.75 * side)
        self.upper = float(band_m[1])
        self._last: tuple[int, np.ndarray] | None = None  # a location's 4-8 records ask in a row

    def distances(self, i: int) -> np.ndarray:
        if self._last is None or self._last[0] != i:
            self._last = (i, haversine_m(self.lat[i], self.lon[i], self.lat, self.lon))
        return self._last[1]

    def pick(self, i: int, k: int, rng: np.random.Generator) -> tuple[list[int], bool] | None:
        """k distinct other locations for location i, and whether any lies beyond the band."""
        d = self.distances(i)
        far_enough = d >= self.lower
        far_enough[i] = False
        in_band = np.flatnonzero(far_enough & (d <= self.upper))
        if len(in_band) >= k:
            return [int(j) for j in rng.choice(in_band, size=k, replace=False)], False
        beyond = np.flatnonzero(far_enough & (d > self.upper))
        beyond = beyond[np.argsort(d[beyond], kind="stable")][: k - len(in_band)]
        if len(in_band) + len(beyond) < k:
            return None
        chosen = [int(j) for j in in_band] + [int(j) for j in beyond]
        return [chosen[j] for j in rng.permutation(len(chosen))], True


def index_records(rendered: list[Rendered], split_of: dict[tuple[str, str], str], *,
                  headings: int, band_m: tuple[float, float], candidates: int,
                  seed: int, qc) -> dict[tuple[str, str, str], list[dict]]:
    """(split, folder, instance) -> index records."""
    groups: dict[tuple[str, str], list[tuple[Rendered, RenderedTile]]] = {}
    for item in rendered:
        split = split_of[(item.record.source, location_key(item.record))]
        for rt in item.tiles:
            groups.setdefault((split, rt.tile.instance), []).append((item, rt))
    files: dict[tuple[str, str, str], list[dict]] = {}
    for (split, instance), group in sorted(groups.items(), key=lambda kv: kv[0]):
        group.sort(key=lambda g: (g[0].record.pair_id, location_key(g[0].record)))
        band = _Band(group, band_m)
        base = [(i, name) for i, _ in enumerate(group) for name in CARDINALS]
        files[(split, "Orin4_SameLocation", instance)] = [
            _record(group[i][0], group[i][1], name) for i, name in base]
        if headings == 8:
            files[(split, "Orin8", instance)] = [
                _record(item, rt, name) for item, rt in group
                for name in OCTANTS if name in item.views]

        def note(rule: str, i: int, name: str) -> None:
            qc.add(rule, f"{instance}/{split}: {group[i][0].record.pair_id} {name}")

        negatives = set(seeded_rng(seed, "negatives", split, instance)
                        .permutation(len(base))[: len(base) // 2].tolist())
        located = []
        for k, (i, name) in enumerate(base):
            rec = _record(group[i][0], group[i][1], name)
            rec["GroundImage"]["in_range"] = k not in negatives
            if k in negatives:
                rng = seeded_rng(seed, "negative", split, instance, rec["image_id"])
                picked = band.pick(i, 1, rng)
                if picked is None:
                    note("no_distractor", i, name)
                    continue
                if picked[1]:
                    note("distractor_outside_band", i, name)
                rec["AerialImage"] = _aerial(group[picked[0][0]][1])
            located.append(rec)
        files[(split, "Location4_50_in_range", instance)] = located

        positions = seeded_rng(seed, "positions", split, instance).permutation(
            [k % candidates for k in range(len(base))]).tolist()
        selection = []
        for k, (i, name) in enumerate(base):
            rec = _record(group[i][0], group[i][1], name)
            picked = band.pick(i, candidates - 1,
                               seeded_rng(seed, "distractors", split, instance, rec["image_id"]))
            if picked is None:
                note("no_distractor", i, name)
                continue
            if picked[1]:
                note("distractor_outside_band", i, name)
            cands = [{"AerialImage": _aerial(group[j][1]), "is_original": False} for j in picked[0]]
            cands.insert(positions[k], {"AerialImage": rec.pop("AerialImage"), "is_original": True})
            rec["AerialCandidates"] = cands
            selection.append(rec)
        files[(split, "LocationSelection", instance)] = selection
    return {key: recs for key, recs in files.items() if recs}
