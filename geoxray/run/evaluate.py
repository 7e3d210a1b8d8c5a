"""One model on one benchmark: items -> Ray Data -> engine -> predictions -> tables, report.

    folder  = output_dir (run/folder.py), stamped, locked for the run (run/store.py)
    pending = the selected items (run/selection.py) not answered yet, and those whose engine
              call failed before (unless run.retry_failed=false)
    Ray Data: read pending -> map_batches(PredictStage) -> driver commits one part per batch
              (answers to predictions/, failures to failures/); an engine that fails every
              item of run.stop_after_failed_batches batches in a row stops the run
    tables  = exactly the selected keys, failed items counted apart (never as wrong)
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geoxray.config import Config, ConfigError
from geoxray.run import folder, store
from geoxray.run import selection as selection_rule
from geoxray.run.benchmark import Benchmark, prepare_benchmark
from geoxray.ops.raycluster import init_ray

# Re-exported: earlier callers import them from here (the rules live in folder/selection).
default_output_dir, model_fingerprint, decode_fingerprint = (
    folder.default_output_dir, selection_rule.model_fingerprint,
    selection_rule.decode_fingerprint)


class EngineDown(store.RunError):
    """The engine failed every item of several batches in a row: the run stops early."""

    def __init__(self, written: int, message: str):
        super().__init__(message)
        self.written = written  # rows committed before the stop


@dataclass
class Selection:
    pending_path: Path | None
    selected: int = 0
    available: int = 0  # items the run could select without a cap
    pending: int = 0
    per_task: dict[str, int] = field(default_factory=dict)
    gold_marginals: dict[str, dict[str, float]] = field(default_factory=dict)
    limited: str | None = None  # "limited: N of M items" for a capped run
    keys: set[str] = field(default_factory=set)  # every selected key (what the tables score)
    retried: int = 0  # pending items that had failed before
    quarantined: list[str] = field(default_factory=list)


def select_pending(cfg: Config, bench: Benchmark, out_dir: Path) -> Selection:
    """Choose the run's items (run/selection.py), key them, keep those not answered yet
    (and, unless run.retry_failed=false, those whose engine call failed), and write them to
    pending files that Ray Data reads (the driver holds one chunk)."""
    chosen = selection_rule.choose_items(bench.items_path, cfg)
    if not chosen.selected:
        raise ConfigError(f"the selection is empty: no items of split(s) {cfg.data.splits}"
                          f"{' and tasks ' + str(cfg.run.tasks) if cfg.run.tasks else ''} in "
                          f"{bench.items_path} (config keys 'data.splits', 'run.tasks')")
    on_disk = store.scan(out_dir)  # quarantines unreadable parts (we hold the lock)
    skip = on_disk.answered | (set() if cfg.run.retry_failed else on_disk.failed)
    keys = selection_rule.KeyMaker.for_config(cfg)
    pending_dir = out_dir / ".pending"
    shutil.rmtree(pending_dir, ignore_errors=True)
    pending_dir.mkdir(parents=True)
    selection = Selection(pending_dir, selected=chosen.selected, available=chosen.available,
                          per_task=dict(chosen.per_task), limited=chosen.limit_note(),
                          quarantined=on_disk.quarantined)
    selection.gold_marginals = {t: {o: n / sum(c.values()) for o, n in c.items()}
                                for t, c in chosen.gold.items()}
    # One pending file = one Ray Data block = one committed part: a few engine batches, so a
    # kill loses little, and long runs of one image set (items are sorted by image set).
    rows_per_file = 4 * cfg.run.batch_size
    chunk: list[dict] = []
    files_written = 0

    def flush() -> None:
        nonlocal files_written
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk),
                           pending_dir / f"{files_written:06d}.parquet")
            files_written += 1
            selection.pending += len(chunk)
            chunk.clear()

    for item in selection_rule.iter_selected(bench.items_path, chosen):
        for row in _with_variants(item, cfg):
            row["key"] = keys.key(row["item_id"], row["task"],
                                  row.get("variant_prompt") if row.get("variant_prompt")
                                  == "stated" else None)
            selection.keys.add(row["key"])
            if row["key"] not in skip:
                selection.retried += row["key"] in on_disk.failed
                chunk.append(row)
                if len(chunk) >= rows_per_file:
                    flush()
    flush()
    if not selection.pending:
        shutil.rmtree(pending_dir)
        selection.pending_path = None
    return selection


def _with_variants(row: dict, cfg: Config) -> list[dict]:
    """The item, and with `run.consistency` its geometric variants (bench/variants.py), each
    its own item with the gold moved by the geometry. The identity keeps the item's key."""
    if not cfg.run.consistency:
        return [row]
    from geoxray.bench import variants

    return [variants.variant_row(row, v, state_rotation=cfg.run.state_rotation)
            for v in variants.variants(row["task"])]


def run_predictions(cfg: Config, bench: Benchmark, selection: Selection, out_dir: Path,
                    engine_builder=None) -> int:
    """Stream pending items through the engine; commit one part per batch. Returns rows written."""
    if selection.pending_path is None:
        return 0
    import ray

    from geoxray.infer import engine_builder as make_builder
    from geoxray.infer import engine_kind
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
        num_cpus=engine_kind(cfg.model.engine).worker_cpus,
        fn_constructor_kwargs=dict(engine_builder=builder, image_root=str(bench.image_root),
                                   model_name=cfg.model.name, decode_mode=cfg.decode.mode,
                                   image_cache_size=cfg.run.image_cache_size,
                                   protocol=cfg.protocol,
                                   max_image_pixels=cfg.run.max_image_pixels,
                                   image_read_timeout_s=cfg.run.image_read_timeout_s))
    written = 0
    streak = streak_items = 0  # batches in a row in which the engine failed every item
    progress = _progress(cfg, selection.pending, f"{cfg.model.name} on {bench.name}")
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not batch.num_rows:
                continue
            answered, failed = store.write_part(out_dir, batch)
            written += batch.num_rows
            progress.update(batch.num_rows)
            streak, streak_items = ((streak + 1, streak_items + failed) if failed and not answered
                                    else (0, 0))
            if streak >= cfg.run.stop_after_failed_batches > 0:
                errors = [e for e in batch.column("error").to_pylist() if e]
                raise EngineDown(written,
                    f"stopped: the engine failed every item of the last {streak} batches "
                    f"({streak_items} items; e.g. {errors[0] if errors else 'no detail'!r}). "
                    f"Answers so far are kept; "
                    f"failed items are stored apart, never scored, and the next run into "
                    f"{out_dir} retries them: fix the endpoint or key and rerun (no new "
                    f"folder needed)")
    finally:
        progress.close()
    return written


def _read_pending_file(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in batch.column("path").to_pylist()])


def _progress(cfg: Config, total: int, desc: str):
    from geoxray import console
    return console.progress_bar(total, f"{desc} ({cfg.decode.mode})", enabled=cfg.run.progress)


def evaluate(cfg: Config, engine_builder=None, dry_run: bool = False) -> Path:
    """Run (or resume) one evaluation; returns the output directory. With `dry_run`, check
    the config, the benchmark and the folder, print where the run would write, and stop."""
    started = time.time()
    bench = prepare_benchmark(cfg)  # config and data mistakes fail here, before Ray
    stamp = folder.run_stamp(cfg, bench.items_path)
    out_dir = folder.resolve(cfg, stamp)
    print(f"geoxray eval: {cfg.model.name} on {bench.name} ({cfg.decode.mode}) -> {out_dir}/"
          + (" [dry run: nothing written]" if dry_run else ""), flush=True)
    if dry_run:
        return out_dir
    from geoxray import console
    out_dir.mkdir(parents=True, exist_ok=True)
    console.redirect_chatter(out_dir)  # Ray's and vLLM's lines -> out_dir/logs/ (CLI only)
    with store.writer_lock(out_dir):
        differences = folder.mismatch(out_dir, stamp)  # a writer may have stamped it since
        if differences:
            raise store.RunFolderError(f"{out_dir} was stamped by another run meanwhile: "
                                       f"{'; '.join(differences)}")
        store.write_stamp(out_dir, stamp)
        selection = select_pending(cfg, bench, out_dir)
        for note in [selection.limited] + selection.quarantined:
            if note:
                print(f"geoxray eval: {note}", flush=True)
        store.write_selection(out_dir, sorted(selection.keys))
        stopped: EngineDown | None = None
        written = 0
        try:
            init_ray(cfg.ray)
            written = run_predictions(cfg, bench, selection, out_dir, engine_builder)
        except EngineDown as exc:
            stopped, written = exc, exc.written
        finally:
            if selection.pending_path is not None:
                shutil.rmtree(selection.pending_path, ignore_errors=True)
        finish(out_dir, cfg, bench, selection, written, time.time() - started,
               stopped=str(stopped) if stopped else None)
    if stopped is not None:
        raise stopped
    return out_dir


def finish(out_dir: Path, cfg: Config, bench: Benchmark, selection: Selection, written: int,
           wall_s: float, stopped: str | None = None) -> dict:
    """Manifest, tables and report of the run's selected items (failed ones counted apart)."""
    from geoxray.run.manifest import write_manifest

    preds = store.scoring_frame(out_dir, keys=selection.keys)
    manifest = write_manifest(out_dir, cfg, bench, selection, written, preds, wall_s=wall_s,
                              stopped=stopped)
    rebuild_report(out_dir, preds=preds, manifest=manifest, n_boot=cfg.run.bootstrap)
    return manifest


def rebuild_report(out_dir: Path, preds=None, manifest: dict | None = None,
                   n_boot: int | None = None) -> Path:
    """Tables, plots and report of a run folder (`geoxray report DIR`): its recorded selection
    scored from its predictions (read by run/store.py), the manifest's notes on top."""
    from geoxray.score.report import read_manifest, write_report

    problems: list[str] = []
    if preds is None:
        preds = store.scoring_frame(out_dir, problems)
    if manifest is None:
        manifest = read_manifest(out_dir, problems)
    run = (manifest or {}).get("run", {}) if isinstance(manifest, dict) else {}
    notes = [n for n in (run.get("limited"), run.get("stopped")) if n] + problems
    kwargs = {} if n_boot is None else {"n_boot": n_boot}
    return write_report(out_dir, preds=preds, manifest=manifest, notes=notes, **kwargs)
