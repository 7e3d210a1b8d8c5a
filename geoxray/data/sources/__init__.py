"""Readers of the five source datasets GeoX-Bench was made from, one module each, all
producing `SourceRecord`s (see `record.py`; layouts in docs/sources.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from geoxray.data.sources import cvglobal, cvusa, llmgeo, omnicity, vigor
from geoxray.data.sources.record import (HEADING_CONVENTIONS, ReadResult, Reject,
                                         SourceRecord, Tile)

READERS: dict[str, Callable[..., ReadResult]] = {
    "CVUSA": cvusa.read,
    "VIGOR": vigor.read,
    "CVGlobal": cvglobal.read,
    "OmniCity": omnicity.read,
    "LLMGeo": llmgeo.read,
}


def reader(kind: str) -> Callable[..., ReadResult]:
    """The reader of a dataset, by name (case-insensitive)."""
    by_lower = {k.lower(): v for k, v in READERS.items()}
    try:
        return by_lower[kind.lower()]
    except KeyError:
        raise KeyError(f"unknown source kind {kind!r}; known: {sorted(READERS)}") from None


def read_source(kind: str, root: str | Path, **options) -> ReadResult:
    """Read one dataset copy into records (sorted by pair id) and rejects."""
    result = reader(kind)(root, **options)
    result.records.sort(key=lambda r: (r.pair_id, r.lat, r.lon))
    return result


__all__ = ["READERS", "HEADING_CONVENTIONS", "ReadResult", "Reject", "SourceRecord", "Tile",
           "reader", "read_source"]
