"""One model on one benchmark: items -> Ray Data -> engine -> predictions -> tables, report.

    pending = items of the selected tasks whose prediction key is not on disk yet
    Ray Data: read pending -> map_batches(PredictStage) -> driver writes one part per batch
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.bench.index import short_hash
from geoxray.bench.prompts import get_prompt
from geoxray.config import Config
from geoxray.infer.config import DecodeConfig, ModelConfig
from geoxray.run import store
from geoxray.run.benchmark import Benchmark, prepare_benchmark
from geoxray.ops.raycluster import init_ray

# Model settings that can change an answer (replica counts, timeouts etc. cannot).
_MODEL_IDENTITY = ("name", "engine", "path", "seed", "dtype", "min_pixels", "max_pixels",
                   "max_model_len", "engine_kwargs", "adapter")


def model_fingerprint(model: ModelConfig) -> str:
    identity = {k: getattr(model, k, None) for k in _MODEL_IDENTITY}
    if model.random_weights:  # only when set: earlier runs keep their keys
        identity["random_weights"] = True
    if model.adapter:  # the adapter's content, not only its path
        from geoxray.tune.adapter import adapter_hash
        identity["adapter_hash"] = adapter_hash(model.adapter)
    return short_hash(identity, n=16)


def decode_fingerprint(decode: DecodeConfig) -> str:
    return short_hash(asdict(decode), n=16)


def default_output_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.model.name}-{cfg.data.name}-{cfg.decode.mode}"


@dataclass
class Selection:
    pending_path: Path | None
    selected: int = 0
    pending: int = 0
    per_task: dict[str, int] = field(default_factory=dict)
    gold_marginals: dict[str, dict[str, float]] = field(default_factory=dict)


def select_pending(cfg: Config, bench: Benchmark, out_dir: Path) -> Selection:
    """Stream items.parquet once: choose the run's items, key them, keep those not done yet,
    and write them to pending files that Ray Data reads (the driver holds one chunk)."""
    done = store.done_keys(out_dir)
    model_fp, decode_fp = model_fingerprint(cfg.model), decode_fingerprint(cfg.decode)
    tasks = set(cfg.run.tasks) if cfg.run.tasks else None
    splits = set(cfg.data.splits)
    cap = cfg.run.max_items_per_task
    per_task: Counter = Counter()
    gold: dict[str, Counter] = defaultdict(Counter)
    pending_dir = out_dir / ".pending"
    shutil.rmtree(pending_dir, ignore_errors=True)
    pending_dir.mkdir(parents=True)
    selection = Selection(pending_dir)
    reader = pq.ParquetFile(bench.items_path)
    # One pending file = one Ray Data block = one committed part: a few engine batches, so a
    # kill loses little, and long runs of one image set (items are sorted by image set).
    rows_per_file = 4 * cfg.run.batch_size
    chunk: list[dict] = []
    files_written = 0

    def flush() -> None:
        nonlocal files_written
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk), pending_dir / f"{files_written:06d}.parquet")
            files_written += 1
            selection.pending += len(chunk)
            chunk.clear()

    for batch in reader.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            task = row["task"]
            if (tasks and task not in tasks) or row["split"] not in splits:
                continue
            if cap is not None and per_task[task] >= cap:
                continue
            per_task[task] += 1
            gold[task][row["answer"]] += 1
            row["key"] = short_hash(row["item_id"], get_prompt(task).fingerprint, model_fp,
                                    decode_fp)
            if row["key"] not in done:
                chunk.append(row)
                if len(chunk) >= rows_per_file:
                    flush()
    flush()
    if not selection.pending:
        shutil.rmtree(pending_dir)
        selection.pending_path = None
    selection.selected = sum(per_task.values())
    selection.per_task = dict(per_task)
    selection.gold_marginals = {t: {o: n / sum(c.values()) for o, n in c.items()}
                                for t, c in gold.items()}
    return selection


def run_predictions(cfg: Config, bench: Benchmark, selection: Selection, out_dir: Path,
                    engine_builder=None) -> int:
    """Stream pending items through the engine; commit one part per batch. Returns rows written."""
    if selection.pending_path is None:
        return 0
    import ray

    from geoxray.infer import engine_builder as make_builder
    from geoxray.infer.stage import PredictStage

    builder = engine_builder or make_builder(cfg.model, cfg.decode, selection.gold_marginals)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts committed items instead
    ctx.print_on_execution_start = False
    if cfg.run.progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    # A block per pending file, read inside the tasks (read_parquet would coalesce small files
    # into one block, and the run would commit nothing until the end).
    files = sorted(str(p) for p in selection.pending_path.glob("*.parquet"))
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    # Light CPU asks: on a 2-core node a Serve replica holds one CPU, and a read task asking
    # for a whole one would wait forever behind it.
    ds = ds.map_batches(_read_pending_file, batch_format="pyarrow", batch_size=1, num_cpus=0.1)
    ds = ds.map_batches(
        PredictStage, batch_format="pyarrow", batch_size=cfg.run.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.run.concurrency),
        num_cpus=0.25 if cfg.model.engine in ("vllm", "openai") else 0.5,
        fn_constructor_kwargs=dict(engine_builder=builder, image_root=str(bench.image_root),
                                   model_name=cfg.model.name, decode_mode=cfg.decode.mode,
                                   image_cache_size=cfg.run.image_cache_size))
    written = 0
    progress = _progress(cfg, selection.pending, f"{cfg.model.name} on {bench.name}")
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows:
            store.write_part(out_dir, batch)
            written += batch.num_rows
            progress.update(batch.num_rows)
    progress.close()
    return written


def _read_pending_file(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in batch.column("path").to_pylist()])


def _progress(cfg: Config, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="item", disable=not cfg.run.progress,
                dynamic_ncols=True)


def evaluate(cfg: Config, engine_builder=None) -> Path:
    """Run (or resume) one evaluation; returns the output directory."""
    from geoxray.run.manifest import write_manifest
    from geoxray.score.report import write_report

    started = time.time()
    bench = prepare_benchmark(cfg)  # config and data mistakes fail here, before Ray
    out_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    selection = select_pending(cfg, bench, out_dir)
    init_ray(cfg.ray)
    written = run_predictions(cfg, bench, selection, out_dir, engine_builder)
    if selection.pending_path is not None:
        shutil.rmtree(selection.pending_path, ignore_errors=True)
    preds = store.read_predictions(out_dir).to_pandas()
    manifest = write_manifest(out_dir, cfg, bench, selection, written, preds,
                              wall_s=time.time() - started)
    write_report(out_dir, preds=preds, manifest=manifest, n_boot=cfg.run.bootstrap)
    return out_dir
