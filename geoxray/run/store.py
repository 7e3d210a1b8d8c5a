"""Results on disk: append-only Parquet parts, each committed atomically.

A part is written to a temp name and renamed into place, so a killed run leaves only whole
parts; a rerun skips every key already present, so no row is ever written twice."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.bench.schema import PREDICTION_SCHEMA

PREDICTIONS = "predictions"


def parts(out_dir: Path) -> list[Path]:
    return sorted((Path(out_dir) / PREDICTIONS).glob("part-*.parquet"))


def done_keys(out_dir: Path) -> set[str]:
    keys: set[str] = set()
    for part in parts(out_dir):
        keys.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
    return keys


def write_part(out_dir: Path, table: pa.Table) -> Path:
    folder = Path(out_dir) / PREDICTIONS
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as sink:
        pq.write_table(table.cast(PREDICTION_SCHEMA), sink, compression="zstd")
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, folder / name)  # atomic: the part is all there or not at all
    return folder / name


def read_predictions(out_dir: Path) -> pa.Table:
    """Every committed prediction, one row per key (first part wins if ever duplicated)."""
    found = parts(out_dir)
    if not found:
        return PREDICTION_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=PREDICTION_SCHEMA) for p in found])
    keys = table.column("key").to_pylist()
    seen: set[str] = set()
    keep = [not (k in seen or seen.add(k)) for k in keys]
    return table.filter(pa.array(keep)) if not all(keep) else table
