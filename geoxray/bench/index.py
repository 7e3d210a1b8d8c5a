"""The authors' index format -> item rows.

An index root holds `<Folder>/<instance>.json` (the test split, as the authors publish it) and
optionally `train/<Folder>/<instance>.json`. Each task of `TASKS` expands every record of its
folder into one item per crop. A record that cannot be read becomes a counted problem, never
an exception: the build report says how many and why.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.bench.schema import ITEM_SCHEMA
from geoxray.bench.tasks import INDEX_FOLDERS, TASKS, TaskSpec

SPLITS = ("test", "train")


def packaged_index_root() -> Path:
    """The authors' test-set index files shipped with geoxray (MIT, see NOTICE.md there)."""
    return Path(str(resources.files("geoxray.bench") / "geoxbench" / "index"))


def short_hash(*parts: object, n: int = 32) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=n // 2).hexdigest()


def file_hash(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@dataclass
class IndexFile:
    folder: str
    instance: str
    split: str
    path: Path
    records: list


@dataclass
class BuildProblems:
    """Records skipped while building items, by reason (the build report shows these)."""
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_index(index_root: Path, problems: BuildProblems | None = None) -> Iterator[IndexFile]:
    """Every index file of the folders the tasks use, test split first, sorted by name."""
    index_root = Path(index_root)
    for split in SPLITS:
        base = index_root if split == "test" else index_root / split
        for folder in INDEX_FOLDERS:
            for path in sorted((base / folder).glob("*.json")):
                try:
                    records = json.loads(path.read_text())
                    if not isinstance(records, list):
                        raise ValueError("top level is not a list")
                except (OSError, ValueError) as exc:
                    if problems is not None:
                        problems.add(f"unreadable_index_file: {exc.__class__.__name__}", str(path.name))
                    continue
                yield IndexFile(folder, _instance_name(path.stem), split, path, records)


def _instance_name(stem: str) -> str:
    # The authors spell OmniCity's file "OmniCity_View1" in one folder and "_view1" in others.
    return stem[:-5] + stem[-5:].lower() if stem.lower().startswith("omnicity_view") else stem


def _aerial_paths(task: TaskSpec, record: dict) -> list[str]:
    if task.n_aerials == 1:
        return [str(record["AerialImage"]["file_path"])]
    candidates = record["AerialCandidates"]
    if len(candidates) != task.n_aerials:
        raise ValueError(f"expected {task.n_aerials} aerial candidates, found {len(candidates)}")
    return [str(c["AerialImage"]["file_path"]) for c in candidates]


def record_items(task: TaskSpec, index_file: IndexFile, ordinal: int, record: dict,
                 hash_of: "callable[[str], str]") -> list[dict]:
    """The items of one record for one task (one per crop). Raises on a malformed record."""
    ground = record["GroundImage"]
    paths = _aerial_paths(task, record) + [str(ground["file_path"])]
    lat, lon = (float(v) for v in str(ground["real_location"]).split(","))
    location = f"{index_file.instance}:{lat:.6f},{lon:.6f}"
    hashes = [hash_of(p) for p in paths]
    image_set = short_hash(*sorted(set(paths)))
    rows = []
    for crop in task.crops:
        answer = task.gold(record, crop)
        if answer not in task.options:
            raise ValueError(f"gold answer {answer!r} is not an option of {task.name}")
        base_id = str(record["image_id"])
        item_id = short_hash(task.name, index_file.instance, index_file.split, base_id, ordinal,
                             crop, paths, hashes, answer)
        rows.append(dict(item_id=item_id, task=task.name, instance=index_file.instance,
                         split=index_file.split, base_id=base_id, record=ordinal,
                         location=location, crop=crop, image_paths=paths, image_hashes=hashes,
                         image_set=image_set, answer=answer))
    return rows


def build_items(index_root: Path | None = None, image_root: Path | None = None,
                problems: BuildProblems | None = None) -> pa.Table:
    """All items of an index root as an Arrow table sorted by image set (so a stream of
    items visits each image set once). With an image root, image content hashes are filled
    in; a missing image file leaves its hash "" (the run marks that item, not the build)."""
    index_root = Path(index_root) if index_root else packaged_index_root()
    problems = problems if problems is not None else BuildProblems()
    cache: dict[str, str] = {}

    def hash_of(rel: str) -> str:
        if image_root is None:
            return ""
        if rel not in cache:
            path = Path(image_root) / rel
            cache[rel] = file_hash(path) if path.is_file() else ""
        return cache[rel]

    files = list(read_index(index_root, problems))
    rows: list[dict] = []
    for task in TASKS:
        for index_file in (f for f in files if f.folder == task.index_folder):
            for ordinal, record in enumerate(index_file.records):
                try:
                    rows.extend(record_items(task, index_file, ordinal, record, hash_of))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    problems.add(f"malformed_record: {exc.__class__.__name__}: {exc}"[:120],
                                 f"{index_file.path.name}#{ordinal} ({task.name})")
    rows.sort(key=lambda r: (r["split"], r["image_set"], r["task"], r["crop"], r["item_id"]))
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


def write_items(table: pa.Table, path: Path) -> Path:
    """Write items.parquet deterministically (same rows -> same bytes), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=8192,
                   write_statistics=False, store_schema=True)
    tmp.replace(path)
    return path


def read_items(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns, schema=ITEM_SCHEMA if columns is None else None)
