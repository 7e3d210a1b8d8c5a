"""The model path: Serve vs the same vLLM engine in-process, and what image grouping and
image uuids buy (vLLM's multimodal processor cache and prefix cache).

    python benchmarks/bench_serve.py [--model tiny_qwen2vl] [--items 240] [--repeats 3]

Requests are real benchmark items: the tiny synthetic world's images, decoded and cropped by
the Ray Data stage's own request builder (`PredictStage.build_request`), with the authors'
prompts. Every figure is items/s over the same items, best of `--repeats` runs, each run with
fresh image uuids (and, without uuids, freshly perturbed pixels), so no run profits from
the cache an earlier run filled. Variants, in-process, `paper` decoding with short replies
(image processing and prefill dominate, which is what the caches save):

  grouped + uuids     geoxray's way: items sorted by image set, uuid = file hash + crop
  grouped, no uuids   vLLM hashes every image's pixels to find it in its caches
  shuffled + uuids    the same items in random order (cache hits depend on eviction)
  no reuse            a new uuid for every image of every item: each image is processed
                      anew, as in a harness that sends each item on its own

Beside it, the same model served by a Serve app (`start_model_app`) and called through
`ServeEngine` as evaluations do: grouped + uuids in `paper` and `choice` modes, against the
in-process figures of the same modes. Ray and both engines are up throughout, and the runs of
all setups are interleaved, in a new order each round.
Writes benchmarks/results/serve.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                   "RAY_USAGE_STATS_ENABLED": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING"}.items():
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402

from geoxray.config import load_config  # noqa: E402
from geoxray.infer.config import DecodeConfig  # noqa: E402
from geoxray.infer.engine import Request  # noqa: E402
from results_io import machine, save  # noqa: E402  (benchmarks/, the script's folder)

ROOT = Path(__file__).resolve().parents[1]


def benchmark_requests(world: Path, n_items: int) -> list[Request]:
    """The first `n_items` test items of a tiny synthetic world (sorted by image set, as
    items.parquet is), as the pipeline's stage builds them."""
    from geoxray.bench.index import build_items
    from geoxray.data.synth import generate
    from geoxray.infer.stage import PredictStage
    if not (world / "index").is_dir():
        generate(world, preset="tiny", seed=0, progress=False)
    rows = build_items(world / "index", world / "images").to_pylist()
    rows = [r for r in rows if r["split"] == "test"][:n_items]
    stage = PredictStage(lambda: None, str(world / "images"), "bench", "paper",
                         image_cache_size=256)
    return [stage.build_request(dict(row, key=row["item_id"])) for row in rows]


def variant(requests: list[Request], kind: str, run: int) -> list[Request]:
    """The requests as one variant sends them in run number `run` (fresh cache keys)."""
    if kind == "shuffled":
        requests = random.Random(run).sample(requests, len(requests))
    out = []
    perturbed: dict[str, np.ndarray] = {}
    for i, r in enumerate(requests):
        if kind == "no_uuids":  # vLLM hashes pixels: change one per image to start cold
            images = []
            for uuid, image in zip(r.image_uuids, r.images):
                if uuid not in perturbed:
                    copy = np.array(image)
                    copy[0, 0, 0] ^= (run % 255) + 1
                    perturbed[uuid] = copy
                images.append(perturbed[uuid])
            out.append(dataclasses.replace(r, images=images, image_uuids=[None] * len(images)))
        elif kind == "no_reuse":
            out.append(dataclasses.replace(
                r, image_uuids=[f"{u}#run{run}#item{i}" for u in r.image_uuids]))
        else:
            out.append(dataclasses.replace(r, image_uuids=[f"{u}#run{run}" for u in r.image_uuids]))
    return out


class Runs:
    """Numbered runs, so every run of every variant has cache keys no other run used."""

    def __init__(self) -> None:
        self.count = 0

    def seconds(self, generate, requests: list[Request], kind: str) -> float:
        self.count += 1
        sent = variant(requests, kind, self.count)
        started = time.perf_counter()
        replies = generate(sent)
        took = time.perf_counter() - started
        errors = [r.error for r in replies if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} engine errors, e.g. {errors[0]}")
        return took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny_qwen2vl")
    ap.add_argument("--items", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--world", type=Path, help="a tiny synthetic world (made if missing)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()

    model = load_config([f"model={args.model}"]).model  # the project's loader: checked
    if model.path.startswith("tiny:"):
        from geoxray.models.tiny import ensure_tiny_qwen2vl
        ensure_tiny_qwen2vl()
    paper = DecodeConfig(mode="paper", max_tokens=args.max_tokens)
    choice = DecodeConfig(mode="choice", max_tokens=args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="gx-bench-serve-") as tmp:
        world = args.world or Path(tmp) / "world"
        requests = benchmark_requests(world, args.items)
    n_sets = len({tuple(r.image_uuids[:-1]) for r in requests})
    print(f"{len(requests)} items over {n_sets} aerial image sets")
    result: dict = {"benchmark": "serve", "model": args.model, "items": len(requests),
                    "aerial_image_sets": n_sets, "max_tokens": args.max_tokens,
                    "repeats": args.repeats}

    import ray
    from ray import serve

    from geoxray.infer.serve import ServeEngine, start_model_app
    from geoxray.infer.vllm_engine import VLLMEngine

    # Ray and the Serve app are up for every measurement, the in-process ones too (same
    # background load), and the setups' runs are interleaved in a new order each round (same
    # drift), so the ratios compare the paths, not the moments they ran.
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
             log_to_driver=False)
    engine = None
    try:
        started = time.perf_counter()
        app = start_model_app(model, paper)
        result["serve_app_start_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        start_model_app(model, paper)
        result["serve_app_reuse_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        engine = VLLMEngine(model, paper)
        result["in_process_engine_start_s"] = round(time.perf_counter() - started, 1)
        served = {mode: ServeEngine(app, decode, timeout_s=model.request_timeout_s,
                                    max_in_flight=model.max_in_flight)
                  for mode, decode in (("paper", paper), ("choice", choice))}
        setups = {f"in_process/paper/{kind}": (partial(engine.generate, decode=paper), kind)
                  for kind in ("grouped", "no_uuids", "shuffled", "no_reuse")}
        setups["in_process/choice/grouped"] = (partial(engine.generate, decode=choice),
                                               "grouped")
        setups["serve/paper/grouped"] = (served["paper"].generate, "grouped")
        setups["serve/choice/grouped"] = (served["choice"].generate, "grouped")
        for generate, _ in setups.values():  # warm-up (grammar compile, kernels, handles)
            generate(variant(requests[:8], "grouped", 0))
        runs, times = Runs(), {name: [] for name in setups}
        for round_ in range(args.repeats):
            for name in random.Random(round_).sample(list(setups), len(setups)):
                generate, kind = setups[name]
                times[name].append(runs.seconds(generate, requests, kind))
                print(f"round {round_ + 1}: {name:<28} "
                      f"{len(requests) / times[name][-1]:7.1f} items/s")
        for client in served.values():
            client.close()
    finally:
        if engine is not None:
            engine.shutdown()
        serve.shutdown()
        ray.shutdown()

    def figure(name: str) -> dict:  # best of the rounds
        return {"items_per_s": round(len(requests) / min(times[name]), 2),
                "runs_s": [round(t, 2) for t in times[name]]}

    cache = {kind: figure(f"in_process/paper/{kind}")
             for kind in ("grouped", "no_uuids", "shuffled", "no_reuse")}
    base = cache["grouped"]["items_per_s"]
    result["cache_effect"] = {
        "mode": "paper", "variants": cache,
        "grouped_uuids_over_no_reuse": round(base / cache["no_reuse"]["items_per_s"], 2),
        "grouped_uuids_over_grouped_no_uuids": round(base / cache["no_uuids"]["items_per_s"], 2),
        "grouped_uuids_over_shuffled_uuids": round(base / cache["shuffled"]["items_per_s"], 2)}
    result["serve_vs_in_process"] = {}
    for mode in ("paper", "choice"):
        local, remote = figure(f"in_process/{mode}/grouped"), figure(f"serve/{mode}/grouped")
        result["serve_vs_in_process"][mode] = {
            "in_process": local, "serve": remote,
            "serve_over_in_process": round(remote["items_per_s"] / local["items_per_s"], 2)}

    result["machine"] = machine()
    # the command as run, with --world's folder (a machine path) left out
    result["command"] = (f"python benchmarks/bench_serve.py --model {args.model} --items "
                         f"{args.items} --repeats {args.repeats} --max-tokens {args.max_tokens}"
                         + (" --world DIR" if args.world else ""))
    print(json.dumps({k: result[k] for k in ("cache_effect", "serve_vs_in_process")},
                     indent=1))
    save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
