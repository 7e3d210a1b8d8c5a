"""A run folder on disk: the only reader and writer of its predictions.

    DIR/run.json                  the stamp: what defines the folder's answers (model, decode,
                                  protocol, benchmark hash); a rerun with other ones is refused
    DIR/.lock                     held (fcntl) by the one process writing to DIR
    DIR/predictions/part-*.parquet  answers (and item marks: bad image, ...), one row per key
    DIR/failures/part-*.parquet   engine errors and timeouts: attempts, not answers; retried
    DIR/quarantine/               parts that could not be read, moved aside (items redone)
    DIR/selection.parquet         the keys the last run selected: what its tables score

Parts are written to a temp name, fsynced and renamed into place, so a killed run leaves only
whole parts; a rerun skips every answered key and only one process writes at a time, so no
key is ever answered twice. Only top-level `part-*.parquet` files are read."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geoxray.bench.schema import PREDICTION_SCHEMA, SCORE_COLUMNS

PREDICTIONS = "predictions"
FAILURES = "failures"
QUARANTINE = "quarantine"
STAMP = "run.json"
SELECTION = "selection.parquet"
LOCK = ".lock"
# Reasons that mean "the engine did not answer": kept apart from answers and retried.
FAILED_REASONS = ("engine_error", "timeout")


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class RunFolderError(RunError):
    """A run folder cannot be used as asked (busy, or stamped with other settings)."""


# --- parts -----------------------------------------------------------------------------------
def parts(out_dir: Path, folder: str = PREDICTIONS) -> list[Path]:
    """Committed parts: top-level `part-*.parquet` only (no subfolders, no temp files)."""
    return sorted((Path(out_dir) / folder).glob("part-*.parquet"))


def _write(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as sink:
        pq.write_table(table.cast(PREDICTION_SCHEMA), sink, compression="zstd")
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, folder / name)  # atomic: the part is all there or not at all
    return folder / name


def failed_mask(table: pa.Table) -> pa.Array:
    reasons = table.column("invalid_reason")
    return pc.fill_null(pc.is_in(reasons, value_set=pa.array(FAILED_REASONS)), False)


def write_part(out_dir: Path, table: pa.Table) -> tuple[int, int]:
    """Commit one batch: answers to predictions/, engine failures to failures/.
    Returns (answered, failed) rows."""
    failed = failed_mask(table)
    answers, failures = table.filter(pc.invert(failed)), table.filter(failed)
    if answers.num_rows:
        _write(Path(out_dir) / PREDICTIONS, answers)
    if failures.num_rows:
        _write(Path(out_dir) / FAILURES, failures)
    return answers.num_rows, failures.num_rows


# --- scanning (the writer's view) --------------------------------------------------------------
@dataclass
class Scan:
    answered: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # failed and not answered since
    quarantined: list[str] = field(default_factory=list)


def quarantine(out_dir: Path, part: Path, exc: BaseException) -> str:
    target = Path(out_dir) / QUARANTINE
    target.mkdir(exist_ok=True)
    os.replace(part, target / f"{part.parent.name}-{part.name}")
    note = (f"unreadable part {part.parent.name}/{part.name} moved to {QUARANTINE}/ "
            f"({type(exc).__name__}: {str(exc)[:200]}); its items will be redone")
    warnings.warn(note)
    return note


def scan(out_dir: Path, move_unreadable: bool = True) -> Scan:
    """Answered and failed keys on disk. A part that cannot be read is quarantined (only by
    the writer, who holds the lock), so its items are selected again."""
    found = Scan()
    for folder in (PREDICTIONS, FAILURES):
        for part in parts(out_dir, folder):
            try:
                keys = pq.read_table(part, columns=["key"]).column("key").to_pylist()
            except Exception as exc:
                if move_unreadable:
                    found.quarantined.append(quarantine(out_dir, part, exc))
                continue
            (found.failed if folder == FAILURES else found.answered).update(keys)
    found.failed -= found.answered
    return found


# --- reading (everyone's view) ----------------------------------------------------------------
def _read_parts(found: list[Path], columns, problems: list[str] | None) -> list[pa.Table]:
    tables = []
    for part in found:
        try:
            tables.append(pq.read_table(part, columns=columns, schema=PREDICTION_SCHEMA))
        except Exception as exc:  # a torn part must not stop a report; the writer moves it
            if problems is not None:
                problems.append(f"unreadable prediction part {part.name}: "
                                f"{type(exc).__name__}: {str(exc)[:200]}")
    return tables


def _first_per_key(table: pa.Table) -> pa.Table:
    """One row per key, the first seen (a folder written by one process at a time has no
    repeats; older folders could)."""
    seen: set[str] = set()
    keep = [not (k in seen or seen.add(k)) for k in table.column("key").to_pylist()]
    return table if all(keep) else table.filter(pa.array(keep))


def read_predictions(out_dir: Path, columns: list[str] | tuple[str, ...] | None = None,
                     problems: list[str] | None = None) -> pa.Table:
    """Every answer in the folder, one row per key (raw: not filtered to the selection)."""
    columns = None if columns is None else list(dict.fromkeys(["key", *columns]))
    tables = _read_parts(parts(out_dir), columns, problems)
    schema = PREDICTION_SCHEMA if columns is None else pa.schema(
        [PREDICTION_SCHEMA.field(c) for c in columns])
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    before = table.num_rows
    table = _first_per_key(table)
    if problems is not None and table.num_rows < before:
        problems.append(f"{before - table.num_rows} prediction rows repeat a key; one kept")
    return table


def scoring_frame(out_dir: Path, problems: list[str] | None = None,
                  columns: tuple[str, ...] | None = SCORE_COLUMNS,
                  keys: set[str] | None = None) -> pd.DataFrame:
    """What a report scores: the answers of the run's selected keys (the recorded selection
    unless `keys` is given), plus one row per selected key that only failed, with
    `failed` = True (counted apart, never scored as wrong)."""
    keys = read_selection(out_dir) if keys is None else keys
    answers = read_predictions(out_dir, columns, problems)
    fail_tables = _read_parts(parts(out_dir, FAILURES), answers.column_names, problems)
    failed_rows = (pa.concat_tables(fail_tables) if fail_tables
                   else answers.schema.empty_table())
    answered = set(answers.column("key").to_pylist())
    failed_rows = _first_per_key(failed_rows.filter(pc.invert(pc.is_in(
        failed_rows.column("key"), value_set=pa.array(sorted(answered), pa.string())))))
    frame = pd.concat([answers.to_pandas().assign(failed=False),
                       failed_rows.to_pandas().assign(failed=True)], ignore_index=True)
    if keys is not None:
        stray = ~frame["key"].isin(keys)
        if stray.any() and problems is not None:
            problems.append(f"{int(stray.sum())} rows in the folder are outside the run's "
                            f"selection; not scored")
        frame = frame[~stray].reset_index(drop=True)
    return frame


# --- the run's selection ----------------------------------------------------------------------
def write_selection(out_dir: Path, keys: list[str]) -> None:
    path = Path(out_dir) / SELECTION
    tmp = path.with_name(f".{SELECTION}.tmp")
    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), tmp)
    os.replace(tmp, path)


def read_selection(out_dir: Path) -> set[str] | None:
    path = Path(out_dir) / SELECTION
    if not path.is_file():
        return None  # a folder from before selections were recorded: everything counts
    return set(pq.read_table(path).column("key").to_pylist())


# --- stamp ------------------------------------------------------------------------------------
def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / STAMP
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_stamp(out_dir: Path, stamp: dict[str, Any]) -> None:
    path = Path(out_dir) / STAMP
    tmp = path.with_name(f".{STAMP}.tmp")
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def stamp_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: folder value -> this run's value' for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += stamp_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


# --- the writer's lock ------------------------------------------------------------------------
@contextmanager
def writer_lock(out_dir: Path) -> Iterator[None]:
    """Hold DIR/.lock for the whole run; a second writer fails at once, naming the holder.
    The kernel drops the lock when the process dies, even by SIGKILL."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(out_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunFolderError(f"{out_dir} is being written by another geoxray run (pid "
                                 f"{holder}); wait for it or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
