"""Training throughput of `geoxray tune` on this machine: samples/s and tokens/s of the LoRA
loop on one Ray Train CPU worker (tiny Qwen2-VL, the tiny world with a train split), and the
Ray Data example stage's rate (decode + crop + request + processor) for comparison.

    flock /tmp/geoxray-heavy.lock python benchmarks/bench_tune.py [--items 96] [--epochs 2]

Writes benchmarks/results/tune.json. Figures come from the run's own manifest (per-step
timings inside the worker), so Ray's start-up is not in them; wall_s is the whole command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=96, help="train items per task")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-locations", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 cores: one thread per process
    from geoxray.bench.index import BuildProblems, build_items, write_items
    from geoxray.data.synth import generate
    from geoxray.tune.examples import SFTExamples
    from geoxray.tune.run import load, tune
    from geoxray.tune.select import select_training_items

    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    world = tmp / "world"
    generate(world, preset="tiny_tune", train_locations=args.train_locations, progress=False)
    write_items(build_items(world / "index", world / "images", BuildProblems()),
                world / "items.parquet")
    overrides = ["data=items", f"data.items={world / 'items.parquet'}",
                 f"data.image_root={world / 'images'}", "data.name=bench", "run.progress=false",
                 "tune=tiny", "tune.name=bench", f"tune.output_root={tmp / 'runs'}",
                 f"tune.max_items_per_task={args.items}", f"tune.epochs={args.epochs}"]
    cfg, tc, preset = load(overrides)
    # the example stage alone, in this process (what Ray Data runs per actor)
    from geoxray.infer.vllm_engine import model_folder
    sel = select_training_items(world / "items.parquet", tc.tasks, tc.val_fraction, tc.seed,
                                None, args.items)
    stage = SFTExamples(model_folder(cfg.model), str(world / "images"))
    rows = sel.train.to_pylist()
    t0 = time.perf_counter()
    n_tokens = sum(len(stage.example(r)["input_ids"]) for r in rows)
    example_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = tune(cfg, tc, preset)
    wall = time.perf_counter() - t0
    m = json.loads((out / "tune_manifest.json").read_text())
    result = {
        "benchmark": "tune", "machine": machine(),
        "command": "python benchmarks/bench_tune.py " + " ".join(sys.argv[1:]),
        "model": cfg.model.name, "tasks": tc.tasks, "lora": {"r": tc.r, "alpha": tc.alpha},
        "batch": {"per_step": tc.batch_size * tc.grad_accum, "micro": tc.batch_size},
        "train_items": m["data"]["train_items"], "steps": m["training"]["steps"],
        "training_samples_per_s": m["training"]["samples_per_s"],
        "training_tokens_per_s": m["training"]["tokens_per_s"],
        "example_stage_items_per_s": round(len(rows) / example_s, 2),
        "example_stage_tokens_per_item": round(n_tokens / len(rows), 1),
        "final_train_loss": m["history"][-1]["loss"], "validation": m["validation"],
        "tune_wall_s": round(wall, 2),
    }
    save(result, Path(args.out))


if __name__ == "__main__":
    main()
