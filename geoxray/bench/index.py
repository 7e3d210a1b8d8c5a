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
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.bench.schema import ITEM_SCHEMA
from geoxray.bench.tasks import INDEX_FOLDERS, TASKS, TaskSpec

SPLITS = ("test", "train")
# items.parquet is sorted by these columns; (split, image_set) first keeps the items that
# share decoded images together, item_id last makes the order total (so deterministic).
ITEM_ORDER = ("split", "image_set", "task", "crop", "item_id")
ROW_GROUP_ROWS = 8192
MAX_EXAMPLES = 20   # problem examples kept for the build report


def packaged_index_root() -> Path:
    """The authors' test-set index files shipped with geoxray (MIT, see NOTICE.md there)."""
    return Path(str(resources.files("geoxray.bench") / "geoxbench" / "index"))


# One encoder for every hash: json.dumps with options builds a new encoder per call (~30% of
# a hash's cost; a 755,976-item build makes ~890k). Same settings, same text, same hashes.
_HASH_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(*parts: object, n: int = 32) -> str:
    blob = _HASH_JSON.encode(parts)
    return hashlib.blake2b(blob.encode(), digest_size=n // 2).hexdigest()


def content_hash(data: bytes) -> str:
    """The content hash of an image file's bytes (items' image_hashes; the run checks it)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: Path) -> str:
    return content_hash(path.read_bytes())


def path_problem(rel_path: object) -> str | None:
    """Why an index's image path may not be used, or None. Paths are confined to the image
    root: never absolute, never `..`, never empty (an index may come from anyone; what it
    names is read and may be uploaded to an API model)."""
    if not isinstance(rel_path, str) or not rel_path.strip():
        return f"image path {rel_path!r} is not a non-empty string"
    pure = PurePosixPath(rel_path)
    if "\x00" in rel_path or pure.is_absolute() or ".." in pure.parts or rel_path.startswith("~"):
        return f"image path {rel_path!r} is outside image_root"
    return None


def _image_path(value: object) -> str:
    problem = path_problem(value)
    if problem:
        raise ValueError(problem)
    return str(value)


@dataclass(frozen=True)
class IndexFileRef:
    """An index file before it is read: where it is and what it holds. `position` is its
    place in `list_index_files` order (problems are reported in that order)."""
    folder: str
    instance: str
    split: str
    path: Path
    position: int = 0


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
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def merge(self, other: "BuildProblems") -> None:
        """Add another part's problems after this one's (examples keep that order)."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        self.examples.extend(other.examples[: MAX_EXAMPLES - len(self.examples)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def index_bytes(index_root: Path) -> int:
    """Total size of the index files a build reads: a cheap proxy for its item count (the
    authors' files hold ~80 bytes of JSON per item)."""
    return sum(Path(ref.path).stat().st_size for ref in list_index_files(index_root))


def list_index_files(index_root: Path) -> list[IndexFileRef]:
    """Every index file of the folders the tasks use, test split first, sorted by name (no
    file is opened: a driver can list a huge index and hand the files to workers)."""
    index_root = Path(index_root)
    refs = []
    for split in SPLITS:
        base = index_root if split == "test" else index_root / split
        for folder in INDEX_FOLDERS:
            for path in sorted((base / folder).glob("*.json")):
                refs.append(IndexFileRef(folder, _instance_name(path.stem), split, path, len(refs)))
    return refs


def load_index_file(ref: IndexFileRef, problems: BuildProblems | None = None) -> IndexFile | None:
    """Parse one index file; an unreadable one is a counted problem and gives None."""
    try:
        records = json.loads(Path(ref.path).read_text())
        if not isinstance(records, list):
            raise ValueError("top level is not a list")
    except (OSError, ValueError) as exc:
        if problems is not None:
            problems.add(f"unreadable_index_file: {exc.__class__.__name__}",
                         str(Path(ref.path).name))
        return None
    return IndexFile(ref.folder, ref.instance, ref.split, Path(ref.path), records)


def read_index(index_root: Path, problems: BuildProblems | None = None) -> Iterator[IndexFile]:
    """Every readable index file of the folders the tasks use, in `list_index_files` order."""
    for ref in list_index_files(index_root):
        index_file = load_index_file(ref, problems)
        if index_file is not None:
            yield index_file


def _instance_name(stem: str) -> str:
    # The authors spell OmniCity's file "OmniCity_View1" in one folder and "_view1" in others.
    return stem[:-5] + stem[-5:].lower() if stem.lower().startswith("omnicity_view") else stem


def _aerial_paths(task: TaskSpec, record: dict) -> list[str]:
    if task.n_aerials == 1:
        return [_image_path(record["AerialImage"]["file_path"])]
    candidates = record["AerialCandidates"]
    if not isinstance(candidates, list) or len(candidates) != task.n_aerials:
        raise ValueError(f"expected {task.n_aerials} aerial candidates, found "
                         f"{len(candidates) if isinstance(candidates, list) else candidates!r}")
    return [_image_path(c["AerialImage"]["file_path"]) for c in candidates]


def record_items(task: TaskSpec, index_file: IndexFile, ordinal: int, record: dict,
                 hash_of: Callable[[str], str]) -> list[dict]:
    """The items of one record for one task (one per crop). Raises on a malformed record."""
    ground = record["GroundImage"]
    paths = _aerial_paths(task, record) + [_image_path(ground["file_path"])]
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


def image_hasher(image_root: Path | None) -> Callable[[str], str]:
    """rel path -> content hash of `image_root/rel`, cached per path ("" without a root or
    for a missing file: the run marks that item, not the build)."""
    cache: dict[str, str] = {}

    def hash_of(rel: str) -> str:
        if image_root is None:
            return ""
        if rel not in cache:
            path = Path(image_root) / rel
            try:  # a FIFO is not a file (reading it would block); an unreadable file has no hash
                cache[rel] = file_hash(path) if path.is_file() else ""
            except OSError:
                cache[rel] = ""
        return cache[rel]
    return hash_of


def file_item_rows(index_file: IndexFile, hash_of: Callable[[str], str],
                   problems: BuildProblems) -> Iterator[dict]:
    """The item rows of one index file: every record, for every task that reads its folder.
    A malformed record is counted (once per task) and skipped."""
    tasks = [t for t in TASKS if t.index_folder == index_file.folder]
    for ordinal, record in enumerate(index_file.records):
        for task in tasks:
            try:
                yield from record_items(task, index_file, ordinal, record, hash_of)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problems.add(f"malformed_record: {exc.__class__.__name__}: {exc}"[:120],
                             f"{index_file.path.name}#{ordinal} ({task.name})")


def item_order(row: dict) -> tuple:
    """The order of items.parquet: items sharing an image set are contiguous."""
    return tuple(row[k] for k in ITEM_ORDER)


def build_items(index_root: Path | None = None, image_root: Path | None = None,
                problems: BuildProblems | None = None) -> pa.Table:
    """All items of an index root as an Arrow table sorted by image set (so a stream of
    items visits each image set once), built in memory (fine up to a few 100k items; see
    `geoxray.data.build_ray` for the streaming build). With an image root, image content
    hashes are filled in; a missing image file leaves its hash ""."""
    index_root = Path(index_root) if index_root else packaged_index_root()
    problems = problems if problems is not None else BuildProblems()
    hash_of = image_hasher(image_root)
    rows: list[dict] = []
    for index_file in read_index(index_root, problems):
        rows.extend(file_item_rows(index_file, hash_of, problems))
    rows.sort(key=item_order)
    return pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


def items_writer(path: Path) -> pq.ParquetWriter:
    """The one Parquet writer configuration of items.parquet (both builders use it, so the
    same rows give the same bytes). Write it in `ROW_GROUP_ROWS` slices."""
    return pq.ParquetWriter(path, ITEM_SCHEMA, compression="zstd", write_statistics=False,
                            store_schema=True)


def write_items(table: pa.Table, path: Path) -> Path:
    """Write items.parquet deterministically (same rows -> same bytes), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    with items_writer(tmp) as writer:
        writer.write_table(table.cast(ITEM_SCHEMA), row_group_size=ROW_GROUP_ROWS)
    tmp.replace(path)
    return path


def read_items(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns, schema=ITEM_SCHEMA if columns is None else None)
