"""Which items a tuning run learns from: the paper's rule, checked.

Train-split items only, from locations disjoint from EVERY test location of the benchmark
(any task: a location seen in training must never be scored), optionally a task subset, a
cap on train locations and on QA per location; a seeded share of further train locations is
held out as the validation set (checkpoint selection), whole locations at a time so
validation measures unseen places.

The paper's size: 31,392 QA from 654 locations is 48 QA a location, so
`max_locations=654, max_items_per_location=48` (conf/tune/paper.yaml) reproduces it on any
benchmark with enough train locations (`data=synth_full`: 4,571), validation locations apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geoxray.bench.index import short_hash
from geoxray.bench.tasks import TASK_BY_NAME


class TuneDataError(ValueError):
    """A training selection that must not run (empty, overlapping the test split)."""


@dataclass
class TrainSelection:
    train: pa.Table                  # item rows to learn from
    val: pa.Table                    # item rows of the held-out validation locations
    tasks: list[str]
    train_locations: list[str]
    val_locations: list[str]
    test_locations: int              # distinct test locations of the benchmark (checked apart)
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> task -> n

    def summary(self) -> dict:
        """What the manifest records about the data."""
        return {"tasks": self.tasks, "train_items": self.train.num_rows,
                "val_items": self.val.num_rows, "train_locations": len(self.train_locations),
                "val_locations": len(self.val_locations),
                "test_locations": self.test_locations, "overlap_with_test": 0,
                "per_task": self.per_task,
                "train_locations_hash": short_hash(sorted(self.train_locations), n=16),
                "val_locations_hash": short_hash(sorted(self.val_locations), n=16)}


def select_training_items(items_path: str | Path, tasks: list[str] | None = None,
                          val_fraction: float = 0.1, seed: int = 0,
                          max_locations: int | None = None,
                          max_items_per_task: int | None = None,
                          max_items_per_location: int | None = None) -> TrainSelection:
    """The train/validation selection of a benchmark's items.parquet (see the module doc).
    Raises TuneDataError on an empty selection or on train/test location overlap."""
    tasks = list(tasks) if tasks else list(TASK_BY_NAME)
    unknown = [t for t in tasks if t not in TASK_BY_NAME]
    if unknown:
        raise TuneDataError(f"config key 'tune.tasks': unknown task(s) {unknown}; "
                            f"tasks are {list(TASK_BY_NAME)}")
    items = pq.read_table(items_path)
    test_locs = set(pc.unique(items.filter(pc.equal(items["split"], "test"))["location"])
                    .to_pylist())
    train = items.filter(pc.and_(pc.equal(items["split"], "train"),
                                 pc.is_in(items["task"], pa.array(tasks))))
    if train.num_rows == 0:
        have = sorted(set(items["split"].to_pylist()))
        raise TuneDataError(f"empty training selection: no train-split items of tasks {tasks} "
                            f"in {items_path} (splits present: {have}); use a benchmark with "
                            f"a train split, e.g. data=synth_tiny_tune or data=synth_full")
    locations = sorted(set(train["location"].to_pylist()))
    overlap = sorted(set(locations) & test_locs)
    if overlap:
        raise TuneDataError(f"train/test overlap: {len(overlap)} train location(s) are also "
                            f"test locations (e.g. {overlap[:3]}); training on them would "
                            f"score the model on places it has seen")
    rng = np.random.default_rng(seed)
    order = [locations[i] for i in rng.permutation(len(locations))]
    # validation locations come on top of the `max_locations` trained on (a share of them)
    n_train = len(order) if max_locations is None else max_locations
    n_val = math.ceil(val_fraction * min(n_train, len(order))) \
        if val_fraction > 0 and len(order) > 1 else 0
    n_val = min(n_val, len(order) - 1)
    val_locs, train_locs = order[:n_val], order[n_val:n_val + n_train]

    def rows_of(locs: list[str]) -> pa.Table:
        at = train.filter(pc.is_in(train["location"], pa.array(locs or [""])))
        return _cap(_per_location(at, max_items_per_location, rng), max_items_per_task)

    train_rows, val_rows = rows_of(train_locs), rows_of(val_locs)
    if train_rows.num_rows == 0:
        raise TuneDataError("empty training selection after holding out validation locations")
    # items.parquet is sorted by image set: the ~10 items of one ground view (pose_fixed and
    # the pose_random crops, one answer) sit together, and the loop's local shuffle buffer
    # (a few batches wide) would fill each batch with one view and one answer. A seeded
    # global permutation mixes them (the epoch's buffer shuffle then varies the order).
    train_rows = train_rows.take(pa.array(rng.permutation(train_rows.num_rows), pa.int64()))
    per_task = {name: {d["values"]: d["counts"] for d in
                       sorted(pc.value_counts(t["task"]).to_pylist(), key=lambda d: d["values"])}
                for name, t in (("train", train_rows), ("val", val_rows))}
    return TrainSelection(train_rows, val_rows, tasks, train_locs, val_locs, len(test_locs),
                          per_task)


def _per_location(table: pa.Table, per_location: int | None, rng) -> pa.Table:
    """A seeded sample of `per_location` items of each location, spread over its tasks
    (round-robin over the tasks, random within each), in the table's order."""
    if per_location is None:
        return table
    by_location: dict[str, dict[str, list[int]]] = {}
    for i, (loc, task) in enumerate(zip(table["location"].to_pylist(), table["task"].to_pylist())):
        by_location.setdefault(loc, {}).setdefault(task, []).append(i)
    keep: list[int] = []
    for loc in sorted(by_location):
        queues = [list(rng.permutation(rows)) for _, rows in sorted(by_location[loc].items())]
        picked: list[int] = []
        while len(picked) < per_location and any(queues):
            for q in queues:
                if q and len(picked) < per_location:
                    picked.append(int(q.pop()))
        keep.extend(picked)
    return table.take(pa.array(sorted(keep), pa.int64()))


def _cap(table: pa.Table, per_task: int | None) -> pa.Table:
    """The first `per_task` items of each task (items are sorted by image set)."""
    if per_task is None:
        return table
    keep, seen = [], {}
    for i, task in enumerate(table["task"].to_pylist()):
        seen[task] = seen.get(task, 0) + 1
        if seen[task] <= per_task:
            keep.append(i)
    return table.take(pa.array(keep, pa.int64()))
