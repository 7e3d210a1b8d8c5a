"""Data-path throughput: geoxray's pipeline with a null engine vs the authors' per-item path.

    python benchmarks/bench_datapath.py [--preset paper] [--baseline-items 1500]

geoxray: Ray Data streams items sorted by image set; each worker decodes an image once and
crops with numpy views; the engine answers instantly (null), so this measures everything but
the model. Baseline, in the same run: what the authors' harness does per item — open each
image, crop, re-encode it to a temp file, read it back and base64 it for the request.
Writes benchmarks/results/datapath.json.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from geoxray.bench.tasks import crop_box, get_task
from geoxray.infer.engine import Reply


class NullEngine:
    """Answers every request at once with an empty reply: the model costs nothing."""
    name = "null"

    def generate(self, requests):
        return [Reply(text="") for _ in requests]


def authors_path(items: list[dict], image_root: Path) -> float:
    """Per item: open, crop, re-encode to a temp file, read back, base64. Returns items/s."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, item in enumerate(items):
            task = get_task(item["task"])
            payload = []
            for position, rel in enumerate(item["image_paths"]):
                image = Image.open(image_root / rel).convert("RGB")
                if position < task.n_aerials and item["crop"] != "none":
                    image = image.crop(crop_box(item["crop"], *image.size))
                path = Path(tmp) / f"{n}_{position}.jpg"
                image.save(path, quality=95)
                payload.append(base64.b64encode(path.read_bytes()))
    return len(items) / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--baseline-items", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "datapath.json"))
    args = ap.parse_args()

    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark
    from geoxray.run.evaluate import evaluate

    cfg = load_config([f"data=synth_{args.preset}", "run.progress=false",
                       f"run.concurrency={args.concurrency}", "run.bootstrap=100"])
    t0 = time.perf_counter()
    bench = prepare_benchmark(cfg)
    prepare_s = time.perf_counter() - t0
    items = pq.read_table(bench.items_path).to_pylist()
    n_images = len({p for item in items for p in item["image_paths"]})

    with tempfile.TemporaryDirectory() as out:
        cfg.data.kind, cfg.data.items = "items", str(bench.items_path)
        cfg.data.image_root, cfg.output_dir = str(bench.image_root), out
        t0 = time.perf_counter()
        evaluate(cfg, engine_builder=NullEngine)
        geoxray_s = time.perf_counter() - t0
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    geoxray_rate = len(items) / geoxray_s

    step = max(1, len(items) // args.baseline_items)
    sample = items[::step][: args.baseline_items]  # spread over tasks and image sets
    baseline_rate = authors_path(sample, Path(bench.image_root))
    result = {
        "benchmark": "datapath", "preset": args.preset, "items": len(items),
        "distinct_images": n_images,
        "geoxray": {"items_per_s": round(geoxray_rate, 1), "wall_s": round(geoxray_s, 2),
                    "includes": "Ray start, select, stream, write parts, tables, report",
                    "concurrency": args.concurrency,
                    "predictions": manifest["counts"]["predictions"]},
        "authors_per_item": {"items_per_s": round(baseline_rate, 1), "items": len(sample)},
        "ratio": round(geoxray_rate / baseline_rate, 2),
        "benchmark_prepare_s": round(prepare_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.machine()},
        "command": "python benchmarks/bench_datapath.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"geoxray {geoxray_rate:.0f} items/s vs per-item re-encode {baseline_rate:.0f} items/s:"
          f" {result['ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
