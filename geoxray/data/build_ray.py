"""The authors' index -> items.parquet as a Ray Data job with bounded memory.

`build_items` (index.py) holds every row in the driver and sorts a Python list: right for the
42,900 test items, ~1 GB of dicts for the 755,976 of a full build. Here

    index files (listed, not opened, by the driver), grouped into tasks by (split, instance)
      -> one Ray task per group: parse each file, expand its records with `file_item_rows`
         (the same per-record logic as `build_items`), hash images (cached per path within
         the task: an instance's three folders name the same images)
      -> Ray Data sort by ITEM_ORDER (range-partitioned; spills to disk past the object store)
      -> the driver streams the sorted rows into items.parquet, one row group at a time.

The sort key is total (it ends with item_id), so the file is byte-identical to
`write_items(build_items(...))` whatever the parallelism or the number of blocks. The driver
holds one sorted block (<= BLOCK_BYTES) and a row group; a worker holds one index file's
records and one block of rows. Each file's
skipped-record report rides in the data as one row with an empty split (it sorts first), so a
retried task replaces its report instead of adding to it, and the reports merge in file
order: the build report matches the in-memory build's too.
Index files and images must be readable from every node (a shared filesystem).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import ray

from geoxray.bench.index import (ITEM_ORDER, ROW_GROUP_ROWS, BuildProblems, IndexFileRef,
                                 file_item_rows, image_hasher, items_writer, list_index_files,
                                 load_index_file, write_items)
from geoxray.bench.schema import ITEM_SCHEMA

# Rows a task turns from dicts into an Arrow table at once (bounds its Python objects).
ROWS_PER_CHUNK = 8192
# Index JSON per task at least (~30-40k items): fewer, larger tasks and sort partitions cost
# less than many small ones, and a task's image-hash cache covers more files.
MIN_TASK_BYTES = 2_000_000
# Sort with plain tasks on the default worker pool. Ray's default (SHUFFLE_V2) starts two more
# pools of workers (map, reduce) for each job: on a busy 2-core machine their start-up was most
# of the build (tiny world: ~30 s vs ~5 s).
SHUFFLE = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
# Largest block of rows (Ray's default is 128 MiB). This sort makes one partition per input
# block, so small blocks keep every sort task, and the driver's one block in hand, small.
BLOCK_BYTES = 16 * 2**20
REPORT_SPLIT = ""  # no item has it; sorts before "test" and "train"
# A worker that cannot see what the driver listed fails the build (rather than building a
# partial benchmark that would be cached as complete).
_NOT_SHARED = ("{what} {path} is missing on this Ray node: the Ray build needs the index and "
               "images on a filesystem every node shares")


def plan_tasks(refs: list[IndexFileRef], n_tasks: int) -> list[list[IndexFileRef]]:
    """Index files -> groups of about equal bytes (one Ray task each, at least MIN_TASK_BYTES),
    cut from the files in (split, instance) order, so an instance's files (they name the same
    images, hashed once per task) mostly share a task."""
    refs = sorted(refs, key=lambda r: (r.split, r.instance, r.position))
    total = sum(Path(r.path).stat().st_size for r in refs)
    target = max(MIN_TASK_BYTES, total / max(1, n_tasks))
    groups: list[list[IndexFileRef]] = []
    size = 0.0
    for ref in refs:
        if not groups or size >= target:
            groups.append([])
            size = 0.0
        groups[-1].append(ref)
        size += Path(ref.path).stat().st_size
    return groups


def _report_row(position: int, problems: BuildProblems) -> dict:
    report = json.dumps({"counts": problems.counts, "examples": problems.examples})
    return dict(item_id="", task="", instance="", split=REPORT_SPLIT, base_id="", record=0,
                location="", crop="", image_paths=[], image_hashes=[],
                image_set=f"{position:09d}", answer=report)


def _expand_files(batch: pa.Table, image_root: str | None,
                  rows_per_chunk: int) -> Iterator[pa.Table]:
    """Ray Data UDF: a group of index files (one row, JSON refs) -> their item rows, and one
    report row per file."""
    if image_root and not Path(image_root).is_dir():
        raise FileNotFoundError(_NOT_SHARED.format(what="image root", path=image_root))
    hash_of = image_hasher(Path(image_root) if image_root else None)  # one cache per task
    for files in batch.column("files").to_pylist():
        for ref in json.loads(files):
            ref = IndexFileRef(ref["folder"], ref["instance"], ref["split"], Path(ref["path"]),
                               ref["position"])
            if not ref.path.exists():  # the driver listed it: this node cannot see it
                raise FileNotFoundError(_NOT_SHARED.format(what="index file", path=ref.path))
            problems = BuildProblems()
            index_file = load_index_file(ref, problems)
            rows: list[dict] = []
            if index_file is not None:
                for row in file_item_rows(index_file, hash_of, problems):
                    rows.append(row)
                    if len(rows) >= rows_per_chunk:
                        yield pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)
                        rows = []
            rows.append(_report_row(ref.position, problems))
            yield pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)


class _RowGroups:
    """Sorted batches of any size in, items.parquet row groups of exactly ROW_GROUP_ROWS out
    (as `write_items` cuts them: same bytes)."""

    def __init__(self, writer) -> None:
        self.writer, self.parts, self.rows, self.written = writer, [], 0, 0

    def add(self, table: pa.Table) -> None:
        self.parts.append(table)
        self.rows += table.num_rows
        while self.rows >= ROW_GROUP_ROWS:
            self._write(ROW_GROUP_ROWS)

    def close(self) -> None:
        if self.rows:
            self._write(self.rows)
        elif not self.written:  # as write_items writes an empty table
            self.writer.write_table(ITEM_SCHEMA.empty_table(), row_group_size=ROW_GROUP_ROWS)

    def _write(self, n: int) -> None:
        table = pa.concat_tables(self.parts)
        self.writer.write_table(table.slice(0, n).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(n)
        self.parts, self.rows, self.written = [rest], rest.num_rows, self.written + n


def build_items_ray(index_root: Path, image_root: Path | None, out_path: Path,
                    problems: BuildProblems | None = None, progress: bool = False,
                    rows_per_chunk: int = ROWS_PER_CHUNK, n_tasks: int | None = None,
                    block_bytes: int = BLOCK_BYTES) -> int:
    """Build items.parquet at `out_path` (atomically) on the connected Ray cluster; returns
    the number of items. Same file, bytes and problem report as
    `write_items(build_items(index_root, image_root, problems), out_path)`. `n_tasks`:
    how many groups to split the index into (default: 2 per CPU of the cluster)."""
    problems = problems if problems is not None else BuildProblems()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    refs = list_index_files(index_root)
    if not refs:
        write_items(ITEM_SCHEMA.empty_table(), out_path)
        return 0
    n_tasks = n_tasks or 2 * int(ray.cluster_resources().get("CPU", 1))
    groups = plan_tasks(refs, n_tasks)
    ctx = ray.data.DataContext.get_current()
    knobs = ("enable_progress_bars", "print_on_execution_start", "shuffle_strategy",
             "target_max_block_size")
    saved = {k: getattr(ctx, k) for k in knobs}
    ctx.enable_progress_bars = ctx.print_on_execution_start = progress
    ctx.shuffle_strategy, ctx.target_max_block_size = SHUFFLE, block_bytes
    tmp = out_path.with_suffix(".parquet.tmp")
    reports: list[tuple[str, str]] = []
    try:
        files = ray.data.from_items(
            [{"files": json.dumps([dict(position=r.position, folder=r.folder,
                                        instance=r.instance, split=r.split,
                                        path=str(Path(r.path).resolve())) for r in group])}
             for group in groups], override_num_blocks=len(groups))
        items = files.map_batches(
            _expand_files, batch_size=1, batch_format="pyarrow",
            fn_kwargs=dict(image_root=str(Path(image_root).resolve()) if image_root else None,
                           rows_per_chunk=rows_per_chunk))
        with items_writer(tmp) as writer:
            row_groups = _RowGroups(writer)
            for batch in items.sort(list(ITEM_ORDER)).iter_batches(
                    batch_size=None, batch_format="pyarrow"):
                batch = batch.cast(ITEM_SCHEMA)
                if batch.num_rows and batch["split"][0].as_py() == REPORT_SPLIT:
                    is_report = pc.equal(batch["split"], REPORT_SPLIT)
                    kept = batch.filter(is_report)
                    reports += zip(kept["image_set"].to_pylist(), kept["answer"].to_pylist())
                    batch = batch.filter(pc.invert(is_report))
                row_groups.add(batch)
            row_groups.close()
        tmp.replace(out_path)
    finally:
        for knob, value in saved.items():
            setattr(ctx, knob, value)
        tmp.unlink(missing_ok=True)
    for _, report in sorted(reports):  # file order, as the in-memory build meets them
        report = json.loads(report)
        problems.merge(BuildProblems(report["counts"], report["examples"]))
    return row_groups.written
