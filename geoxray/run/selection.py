"""Which items a run scores, and the key each prediction is stored under: the one place
both rules live (eval, sweep, profile and plan all ask here).

Selection: the configured splits and tasks, each item once (a repeated item_id is one item),
and under `run.max_items_per_task=N` a seeded sample of N per task, stratified by instance
and gold answer (items.parquet is sorted by image set, so "the first N" would be a few image
sets with one gold: a skewed, unscorable sample).

Keys: a prediction's key hashes (item, prompt, model identity, decode settings[, protocol]).
Anything that can change an answer is in it; nothing that cannot (replicas, timeouts,
endpoints, keys) is, so fixing an endpoint keeps every answer already stored.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.bench.index import short_hash
from geoxray.bench.prompts import get_prompt
from geoxray.infer.config import DecodeConfig, ModelConfig

# Model settings that can change an answer (replica counts, timeouts etc. cannot).
MODEL_IDENTITY = ("name", "engine", "path", "seed", "dtype", "min_pixels", "max_pixels",
                  "max_model_len", "engine_kwargs", "adapter")
# Columns the selection rule reads (a cheap first pass over items.parquet).
SELECTION_COLUMNS = ["item_id", "task", "split", "instance", "answer"]


# --- keys ------------------------------------------------------------------------------------
def model_identity(model: ModelConfig) -> dict[str, Any]:
    identity = {k: getattr(model, k, None) for k in MODEL_IDENTITY}
    if model.random_weights:  # only when set: earlier runs keep their keys
        identity["random_weights"] = True
    if model.adapter:  # the adapter's content, not only its path (retraining into a folder)
        from geoxray.infer.adapter import adapter_hash
        identity["adapter_hash"] = adapter_hash(model.adapter)
    for extra, default in (("api_image", "png"), ("message_layout", "in_place")):
        if getattr(model, extra) != default:  # only when set: earlier runs keep their keys
            identity[extra] = getattr(model, extra)
    return identity


def model_fingerprint(model: ModelConfig) -> str:
    return short_hash(model_identity(model), n=16)


def decode_fingerprint(decode: DecodeConfig) -> str:
    settings = asdict(decode)
    if settings.get("repetition_penalty") == 1.0:  # the default: earlier runs keep their keys
        del settings["repetition_penalty"]
    return short_hash(settings, n=16)


def protocol_identity(cfg) -> Any:
    """What the protocol adds to a key beyond the model and decode settings it already set
    (infer/protocol.py `key_parts`: the crop pixels). None for exact lossless crops
    (protocol=clean), so runs made before protocols existed keep their keys."""
    from geoxray.infer.protocol import key_parts

    protocol = getattr(cfg, "protocol", None)
    parts = key_parts(protocol) if protocol is not None else ()
    return parts[0] if parts else None


@dataclass(frozen=True)
class KeyMaker:
    """The parts of a prediction key that are the same for every item of a run."""
    model_fp: str
    decode_fp: str
    protocol: Any = None  # one more component when set; absent keeps old keys equal

    @classmethod
    def for_config(cls, cfg) -> "KeyMaker":
        return cls(model_fingerprint(cfg.model), decode_fingerprint(cfg.decode),
                   protocol_identity(cfg))

    def key(self, item_id: str, task: str, prompt_note: str | None = None) -> str:
        parts: list[Any] = [item_id, get_prompt(task).fingerprint, self.model_fp,
                            self.decode_fp]
        if self.protocol is not None:
            parts.append(self.protocol)
        if prompt_note is not None:  # a consistency variant whose prompt says the rotation
            parts.append(prompt_note)
        return short_hash(*parts)


# --- selection -------------------------------------------------------------------------------
@dataclass
class Chosen:
    """The outcome of the selection rule over one benchmark."""
    item_ids: set[str]  # every selected item
    per_task: dict[str, int]  # selected items per task
    available: int  # items the run could select without a cap (splits, tasks, deduplicated)
    limited: bool  # a cap removed items
    gold: dict[str, Counter] = field(default_factory=dict)  # task -> gold answer counts

    @property
    def selected(self) -> int:
        return len(self.item_ids)

    def limit_note(self) -> str | None:
        """"limited: N of M items" for every output of a capped run; None when not capped."""
        return f"limited: {self.selected} of {self.available} items" if self.limited else None


def _rank(seed: int, item_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _quotas(sizes: dict[Any, int], cap: int) -> dict[Any, int]:
    """Largest-remainder split of `cap` over strata in proportion to their sizes."""
    total = sum(sizes.values())
    exact = {s: cap * n / total for s, n in sizes.items()}
    quota = {s: int(v) for s, v in exact.items()}
    rest = cap - sum(quota.values())
    for s in sorted(sizes, key=lambda s: (-(exact[s] - quota[s]), -sizes[s], str(s)))[:rest]:
        quota[s] += 1
    return quota


def choose(table: pa.Table, tasks: list[str] | None, splits: list[str],
           cap: int | None, seed: int = 0) -> Chosen:
    """Apply the selection rule to a table with SELECTION_COLUMNS (task/split at least)."""
    columns = {c: table.column(c).to_pylist() for c in SELECTION_COLUMNS
               if c in table.column_names}
    n = table.num_rows
    ids = columns.get("item_id") or [str(i) for i in range(n)]
    instances = columns.get("instance") or [""] * n
    answers = columns.get("answer") or [""] * n
    task_set, split_set = (set(tasks) if tasks else None), set(splits)
    seen: set[str] = set()
    strata: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for item_id, task, split, instance, answer in zip(ids, columns["task"], columns["split"],
                                                      instances, answers):
        if split not in split_set or (task_set and task not in task_set) or item_id in seen:
            continue
        seen.add(item_id)
        strata[task][(instance or "", answer or "")].append(item_id)
    chosen: set[str] = set()
    per_task: dict[str, int] = {}
    gold: dict[str, Counter] = {}
    limited = False
    for task, groups in strata.items():
        sizes = {s: len(members) for s, members in groups.items()}
        total = sum(sizes.values())
        if cap is not None and total > cap:
            limited = True
            quota = _quotas(sizes, cap)
            picked = {s: sorted(m, key=lambda i: _rank(seed, i))[:quota[s]]
                      for s, m in groups.items()}
        else:
            picked = groups
        gold[task] = Counter()
        for (_, answer), members in picked.items():
            gold[task][answer] += len(members)
        per_task[task] = sum(len(m) for m in picked.values())
        for members in picked.values():
            chosen.update(members)
    return Chosen(chosen, per_task, len(seen), limited, gold)


def choose_items(items_path: Path, cfg, *, apply_cap: bool = True) -> Chosen:
    """The selection of a run of `cfg` over an items.parquet."""
    schema = pq.read_schema(items_path)
    table = pq.read_table(items_path, columns=[c for c in SELECTION_COLUMNS if c in schema.names])
    return choose(table, cfg.run.tasks, cfg.data.splits,
                  cfg.run.max_items_per_task if apply_cap else None, cfg.run.sample_seed)


def iter_selected(items_path: Path, chosen: Chosen) -> Iterator[dict]:
    """Full item rows of a selection, in items.parquet order (sorted by image set), each once;
    the driver holds one record batch at a time."""
    emitted: set[str] = set()
    for batch in pq.ParquetFile(items_path).iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            item_id = row["item_id"]
            if item_id in chosen.item_ids and item_id not in emitted:
                emitted.add(item_id)
                yield row
