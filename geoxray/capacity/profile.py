"""`geoxray profile`: what one model costs on this machine, as `profiles/<model>-<device>.json`.

For each decode mode (paper and choice unless `decode=` is given):

1. engine start-up: building the engine the way a run does (for vLLM: starting the model's
   Serve app and a client; a running app of the same model is reused, so profile on a fresh
   cluster to time a cold start);
2. time per stage on about `--stage-items` items per task (rounded up to whole batches of
   `run.batch_size`), each task's share as in the selection, taken from the END of each
   task's items, after one untimed item per task has warmed the engine up, batch by batch
   through the run's own stage code (`profile_stages.TimedStage`): seconds
   per item in read, decode, crop, request, engine, parse, write; tokens per item and
   image tokens per item from the replies;
3. three real `evaluate` runs into a scratch folder, each resuming the last (so no item is
   answered twice, and no cache serves a repeat): `--items`/4, /2, then `--items` per task
   from the START of each task. What a run costs beyond its items (Ray Data start-up,
   selection, manifest) is its prediction time minus its items x the per-item time: the
   least of the warm (later) runs is `fixed_s` (other work on the machine only adds time),
   the first run's extra is `cold_start_s` (paid once per process). Scoring (tables, plots,
   report) is timed apart, on the mode's predictions tiled to 1,000 and 10,000 rows: a line
   base + per item through the two.

A point of `n` items then takes  fixed_s + n x per_item_s + score.base + n x score.per_item,
which is what `geoxray plan` uses. Schema (every mode has the same fields):

    {"geoxray_profile": 1, "created", "model", "engine", "path", "params_b",
     "device": {"slug", "kind": "cpu|gpu", "name", "count", "memory_gb"},
     "model_config": {"tensor_parallel_size", "gpus_per_replica", "num_replicas",
                      "cpus_per_replica", "dtype", "min_pixels", "max_pixels", "max_num_seqs"},
     "run": {"batch_size", "concurrency"}, "data": "<benchmark>", "engine_startup_s",
     "modes": {"<mode>": {
        "per_item_s", "items_per_s", "items_per_s_per_replica",
        "stage_s_per_item": {"read", "decode", "crop", "request", "engine", "parse", "write"},
        "prompt_tokens_per_item", "generated_tokens_per_item", "tokens_per_s_per_replica",
        "prompt_tokens_per_s_per_replica", "generated_tokens_per_s_per_replica",
        "images_per_item", "text_tokens_per_item", "image_tokens_per_item",
        "image_tokens_per_image", "invalid_share", "stage_items",
        "fixed_s", "cold_start_s", "score_s": {"base", "per_item"},
        "runs": [{"items_per_task", "written", "wall_s", "predict_s", "score_s"}]}}}

per_item_s is the steady-state cost of one item through one stage worker (engine call
included) at the profile's batch size; items/s per replica divides by the model's replicas.
Engines that run inside the stage workers (baselines, API clients) scale with
run.concurrency; vLLM replicas are fed by one worker's batch of requests in flight.
Token and image-token fields are null for engines that do not count tokens (baselines).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any


from geoxray.capacity.plan_model import params_billion
from geoxray.capacity.profile_file import DEFAULT_DIR, PROFILE_FORMAT, slug, write_profile
from geoxray.config import Config, ConfigError, load_config
from geoxray.infer.registry import close_engine, engine_kind, gpus_per_replica
from geoxray.models.random_weights import real_name


# --- where we are ------------------------------------------------------------------------------
def device_info(cfg: Config, override: str | None = None) -> dict[str, Any]:
    """The device the model's engine runs on: the cluster's GPU type for a GPU model (Ray's
    `accelerator_type:*` resource, else torch's device name), else the CPU."""
    info: dict[str, Any] = {"kind": "cpu", "name": _cpu_name(), "count": os.cpu_count(),
                            "memory_gb": None}
    if gpus_per_replica(cfg.model) > 0:
        info.update(kind="gpu", name="gpu", count=None)
        try:
            import ray
            resources = ray.cluster_resources() if ray.is_initialized() else {}
            types = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
            info["count"] = int(resources.get("GPU", 0)) or None
            if types:
                info["name"] = types[0]
        except Exception:  # device detection is a label, never a reason to fail
            pass
        try:
            import torch
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                info["name"] = props.name if info["name"] == "gpu" else info["name"]
                info["memory_gb"] = round(props.total_memory / 2**30, 1)
        except Exception:
            pass
    info["slug"] = slug(override) if override else (
        "cpu" if info["kind"] == "cpu" else _gpu_slug(info["name"]))
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _gpu_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100"; unknown names slugged whole."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name.upper())
    return m.group(1).lower() if m else slug(name)


# --- samples -----------------------------------------------------------------------------------
def selected_rows(items_path: Path, cfg: Config) -> list[dict]:
    """The items a run of `cfg` selects (splits, tasks; no cap: profiling draws its own
    sample), in items.parquet order, keyed by id."""
    from geoxray.run.selection import choose_items, iter_selected

    chosen = choose_items(items_path, cfg, apply_cap=False)
    return [{**row, "key": row["item_id"]} for row in iter_selected(items_path, chosen)]


def tail_rows(selected: list[dict], cfg: Config, per_task: int) -> list[dict]:
    """Items from the end of each selected task, as many of each task as its share of the
    selection: an item's cost depends on its task (choice mode scores K + 1 prefixes;
    cross-map items carry 5 images), so the sample has the run's mix of tasks. From the
    ends: distinct from the first items a capped run takes, so the stage timing sees no warm
    cache. About `per_task` items per task, in whole batches of `run.batch_size` (an engine
    that batches, like vLLM, is only as fast as a run when a full batch is in flight), at
    least one of every task."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in selected:
        by_task[row["task"]].append(row)
    available = len(selected)
    batch = cfg.run.batch_size
    wanted = min(available, max(1, -(-per_task * len(by_task) // batch)) * batch)
    take = {t: min(len(r), max(1, round(wanted * len(r) / available)))
            for t, r in by_task.items()}
    for task in sorted(by_task, key=lambda t: -len(by_task[t])):  # rounding: fix the total
        while sum(take.values()) > wanted and take[task] > 1:
            take[task] -= 1
        while sum(take.values()) < wanted and take[task] < len(by_task[task]):
            take[task] += 1
    rows = [row for task, task_rows in by_task.items() for row in task_rows[-take[task]:]]
    rows.sort(key=lambda r: (r["image_set"], r["task"], r["crop"]))  # a run's order
    return rows


def warmup_rows(selected: list[dict], timed: list[dict]) -> list[dict]:
    """One item of every selected task, from the middle of the items (neither the timed tail
    nor the first items a capped run takes), to warm the engine up before timing."""
    keys = {row["key"] for row in timed}
    rows = [row for row in selected if row["key"] not in keys]
    first: dict[str, dict] = {}
    for row in rows[len(rows) // 2:] + rows[:len(rows) // 2]:
        first.setdefault(row["task"], row)
    return list(first.values())


def text_token_counts(cfg: Config, requests) -> list[int] | None:
    """Tokens of each request's prompt without its images (chat template applied), from the
    model's own tokenizer; None where there is no tokenizer (baselines, API models)."""
    tokenizer_folder = engine_kind(cfg.model.engine).tokenizer_folder
    if tokenizer_folder is None or not requests:
        return None
    try:
        from transformers import AutoTokenizer

        from geoxray.infer.chat import IMAGE_MARK

        # the folder the engine loads: for random weights, the one built here (its tokenizer)
        tok = AutoTokenizer.from_pretrained(tokenizer_folder(cfg.model),
                                            trust_remote_code=cfg.model.trust_remote_code)
        counts = []
        for r in requests:
            messages = ([{"role": "system", "content": r.system}] if r.system else []) + [
                {"role": "user", "content": r.user.replace(IMAGE_MARK, "")}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # a BatchEncoding (transformers >= 5)
                ids = ids["input_ids"]
            if ids and isinstance(ids[0], list):
                ids = ids[0]
            counts.append(len(ids))
        return counts
    except Exception:  # a tokenizer that cannot load leaves the field null, not the profile
        return None


# --- measuring -----------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _eval_runs(cfg: Config, items: int, scratch: Path) -> list[dict]:
    from geoxray.run.evaluate import evaluate

    runs = []
    out_dir = scratch / cfg.decode.mode
    for per_task in sorted({max(1, items // 4), max(1, items // 2), items}):
        run_cfg = replace(cfg, output_dir=str(out_dir),
                          run=replace(cfg.run, max_items_per_task=per_task, progress=False))
        t0 = time.perf_counter()
        evaluate(run_cfg)
        wall = time.perf_counter() - t0
        manifest = json.loads((out_dir / "manifest.json").read_text())
        predict = float(manifest["timing"]["wall_s"])
        runs.append({"items_per_task": per_task,
                     "written": int(manifest["counts"]["written_this_run"]),
                     "total": int(manifest["counts"]["predictions"]),
                     "wall_s": round(wall, 3), "predict_s": round(predict, 3),
                     "score_s": round(max(0.0, wall - predict), 3)})
    return runs


SCORE_SIZES = (1_000, 10_000)  # predictions scored to time scoring (tables, plots, report)


def _score_cost(cfg: Config, out_dir: Path) -> dict[str, float]:
    """Scoring time = base + per_item x predictions, timed on this mode's predictions tiled
    to SCORE_SIZES rows (new keys and items, the same locations): the short runs hold too
    few predictions to show how scoring grows."""
    import pandas as pd

    from geoxray.run import store
    from geoxray.score.report import write_report

    preds = store.read_predictions(out_dir).to_pandas()
    if preds.empty:
        return {"base": 0.0, "per_item": 0.0}
    timings = []
    for n in SCORE_SIZES:
        copies = []
        for i in range(-(-n // len(preds))):
            part = preds.copy()
            part["key"] = part["key"] + f"~{i}"
            part["item_id"] = part["item_id"] + f"~{i}"
            copies.append(part)
        frame = pd.concat(copies, ignore_index=True).iloc[:n]
        with tempfile.TemporaryDirectory(prefix="geoxray-score-") as tmp:
            t0 = time.perf_counter()
            write_report(tmp, preds=frame, n_boot=cfg.run.bootstrap)
            timings.append(time.perf_counter() - t0)
    (n1, n2), (t1, t2) = SCORE_SIZES, timings
    per_item = max(0.0, (t2 - t1) / (n2 - n1))
    return {"base": round(max(0.0, t1 - per_item * n1), 4), "per_item": round(per_item, 8)}


def profile_mode(cfg: Config, bench, items: int, stage_items: int, scratch: Path
                 ) -> tuple[dict[str, Any], float]:
    """One decode mode; returns (mode profile, engine start-up seconds)."""
    from geoxray.infer import engine_builder as make_builder
    from geoxray.capacity.profile_stages import time_stages

    selected = selected_rows(bench.items_path, cfg)
    rows = tail_rows(selected, cfg, stage_items)
    gold: dict[str, dict[str, float]] = defaultdict(dict)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        counts[r["task"]][r["answer"]] += 1
    for task, c in counts.items():
        gold[task] = {o: n / sum(c.values()) for o, n in c.items()}
    t0 = time.perf_counter()
    builder = make_builder(cfg.model, cfg.decode, dict(gold))
    engine = builder()
    startup = time.perf_counter() - t0
    try:
        stages = time_stages(rows, lambda: engine, str(bench.image_root), cfg.model.name,
                             cfg.decode.mode, cfg.run.batch_size, cfg.run.image_cache_size,
                             warmup_rows=warmup_rows(selected, rows))
    finally:
        close_engine(engine)
    per_item = sum(v for k, v in stages.stage_s_per_item.items() if k != "write")
    replies = stages.replies
    prompt = _mean(r.prompt_tokens or None for r in replies)
    generated = _mean(r.generated_tokens or None for r in replies)
    text = text_token_counts(cfg, stages.requests)
    images = _mean(len(r.images) for r in stages.requests)
    image_tokens = None
    if text is not None and prompt is not None:
        image_tokens = _mean(r.prompt_tokens - t for r, t in zip(replies, text)
                             if r.prompt_tokens)
    engine_s = stages.stage_s_per_item["engine"]
    replicas = max(1, cfg.model.num_replicas)
    runs = _eval_runs(cfg, items, scratch)
    # Beyond its items, a run costs its overhead; the first run of a process pays more
    # (Ray Data's worker processes start): that extra is the cold start, once per sweep.
    # The warm runs' least residual is the overhead (other load only adds to it).
    residual = [max(0.0, r["predict_s"] - r["written"] * per_item) for r in runs]
    fixed = min(residual[1:] or residual)
    preds = stages.predictions
    invalid = (sum(v is not None for v in preds.column("invalid_reason").to_pylist())
               / preds.num_rows) if preds.num_rows else None
    mode = {
        "per_item_s": round(per_item, 6),
        "items_per_s": round(1 / per_item, 3) if per_item else None,
        "items_per_s_per_replica": round(1 / per_item / replicas, 3) if per_item else None,
        "stage_s_per_item": {k: round(v, 6) for k, v in stages.stage_s_per_item.items()},
        "prompt_tokens_per_item": prompt, "generated_tokens_per_item": generated,
        "tokens_per_s_per_replica": _ratio((prompt or 0) + (generated or 0) or None,
                                           engine_s * replicas),
        "prompt_tokens_per_s_per_replica": _ratio(prompt, engine_s * replicas),
        "generated_tokens_per_s_per_replica": _ratio(generated, engine_s * replicas),
        "images_per_item": images, "text_tokens_per_item": _mean(text or []),
        "image_tokens_per_item": image_tokens,
        "image_tokens_per_image": _ratio(image_tokens, images),
        "invalid_share": invalid, "stage_items": stages.items,
        "fixed_s": round(fixed, 3),
        "cold_start_s": round(max(0.0, residual[0] - fixed), 3),
        "score_s": _score_cost(cfg, scratch / cfg.decode.mode), "runs": runs,
    }
    return mode, startup


def profile_model(configs: list[Config], items: int = 16, stage_items: int = 4,
                  device: str | None = None) -> dict[str, Any]:
    """Profile one model in each of `configs` (same model, one decode mode each)."""
    from geoxray.run.benchmark import prepare_benchmark
    from geoxray.ops.raycluster import init_ray

    first = configs[0]
    if any(c.model.name != first.model.name for c in configs):
        raise ConfigError("profile: every config must be the same model")
    bench = prepare_benchmark(first)
    init_ray(first.ray)
    scratch = Path(tempfile.mkdtemp(prefix="geoxray-profile-runs-"))
    modes, startups = {}, []
    try:
        for cfg in configs:
            modes[cfg.decode.mode], startup = profile_mode(cfg, bench, items, stage_items,
                                                           scratch)
            startups.append(startup)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    m = first.model
    return {
        "geoxray_profile": PROFILE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # a random-weights model is profiled for the real one (same compute): its name
        "model": real_name(m.name), "random_weights": m.random_weights,
        "engine": m.engine, "path": m.path, "params_b": params_billion(m),
        "device": device_info(first, device),
        "model_config": {"tensor_parallel_size": m.tensor_parallel_size,
                         "gpus_per_replica": m.gpus_per_replica, "num_replicas": m.num_replicas,
                         "cpus_per_replica": m.cpus_per_replica, "dtype": m.dtype,
                         "min_pixels": m.min_pixels, "max_pixels": m.max_pixels,
                         "max_num_seqs": m.max_num_seqs},
        "run": {"batch_size": first.run.batch_size, "concurrency": first.run.concurrency},
        "data": first.data.name,
        # The first mode started the engine; later modes reuse it (vLLM: the same app).
        "engine_startup_s": round(startups[0], 3),
        "modes": modes,
    }


# --- command line ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """geoxray profile model=NAME [decode=paper] [--items N] [--stage-items N] [--out DIR]"""
    parser = argparse.ArgumentParser(
        prog="geoxray profile", description="Measure a model's throughput, tokens, stage "
        "times and start-up on this machine; write profiles/<model>-<device>.json.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny_qwen2vl")
    parser.add_argument("--items", type=int, default=16,
                        help="items per task of the longer timed run (the shorter has 1/4)")
    parser.add_argument("--stage-items", type=int, default=4,
                        help="items per task timed stage by stage")
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="folder for the profile JSON")
    parser.add_argument("--device", help="device label in the file name (default: detected)")
    args = parser.parse_args(argv)
    decode = [o.split("=", 1)[1] for o in args.overrides if o.startswith("decode=")]
    rest = [o for o in args.overrides if not o.startswith("decode=")]
    modes = decode[0].split(",") if decode else ["paper", "choice"]
    try:
        if any(o.lstrip("+").startswith("output_dir=") for o in rest):
            raise ConfigError("config key 'output_dir': profile runs its evals in a scratch "
                              "folder and writes only the profile JSON; use --out DIR")
        configs = [load_config([*rest, f"decode={mode}"]) for mode in modes]
        profile = profile_model(configs, args.items, args.stage_items, args.device)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    path = write_profile(profile, args.out)
    print(f"{profile['model']} on {profile['device']['name']} ({profile['device']['slug']}): "
          f"engine start-up {profile['engine_startup_s']:.1f} s")
    for mode, p in profile["modes"].items():
        stages = ", ".join(f"{k} {v * 1000:.1f}" for k, v in p["stage_s_per_item"].items())
        tokens = (f", {p['tokens_per_s_per_replica']:.0f} tokens/s"
                  if p["tokens_per_s_per_replica"] else "")
        print(f"  {mode}: {p['items_per_s_per_replica']} items/s per replica{tokens}; "
              f"per item ms: {stages}; run overhead {p['fixed_s']:.1f} s")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
