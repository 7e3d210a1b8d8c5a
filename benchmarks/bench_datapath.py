"""Data-path throughput per task: geoxray's stage with a null engine vs the authors' per-item
path, both in one process on the same items.

    python benchmarks/bench_datapath.py [--preset paper] [--items-per-task 300] [--end-to-end]

Baseline, exactly what the authors' harness does per item (IntMeGroup/GeoX-Bench @89d40cf):
`tempfile.mkdtemp()` (Tasks/task_template.py line 128); each aerial of a cropped task opened
with PIL, cropped with their float box and `.save()`d to the temp folder in its own format
(JPEG quality 75 for .jpg: Tasks/orin_task_random.py lines 123-126, location_random_task.py,
location_8_gauss.py, and all four candidates in map_gauss_random.py lines 196-203), other
images `shutil.copy2`'d / `copyfile`'d (task_template.py line 159-160, map_gauss_random.py
line 207); then the model side reads every temp file back (ms-swift's load_image: bytes,
`Image.open`, convert RGB; decoded here by `np.asarray`), and the temp folder is removed
(task_template.py cleanup_temp_dirs). No model, no batching, no worker pool.

geoxray: `PredictStage` over the same items in batches of 64 with a null engine (decode
each image once, crop, build requests, parse, build prediction rows), once with
protocol=clean (numpy views) and once with protocol=paper (PIL boxes; each distinct
(tile, crop) re-saved as JPEG quality 75 once per worker, its bytes kept, the decoded pixels
of recent ones kept). The paper protocol's own JPEG cost is reported apart (seconds; encodes
and read-backs vs cropped images).

--end-to-end also runs the whole `geoxray eval` path (Ray Data, parts, tables, report) over
every item with protocol=paper: it starts Ray, so run it under the heavy-work lock.
Writes benchmarks/results/datapath.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import machine, save  # noqa: E402

from geoxray.bench.tasks import NO_CROP, TASKS, get_task  # noqa: E402
from geoxray.infer.config import ProtocolConfig  # noqa: E402
from geoxray.infer.engine import Reply  # noqa: E402

# Tasks/utils.py lines 10-21
AUTHORS_FACTORS = {
    "center": (1/6, 1/6, 1/6, 1/6), "left": (1/3, 1/6, 0, 1/6), "right": (0, 1/6, 1/3, 1/6),
    "top": (1/6, 1/3, 1/6, 0), "bottom": (1/6, 0, 1/6, 1/3), "top_left": (1/3, 1/3, 0, 0),
    "top_right": (0, 1/3, 1/3, 0), "bottom_left": (1/3, 0, 0, 1/3),
    "bottom_right": (0, 0, 1/3, 1/3)}
PAPER = ProtocolConfig(name="paper")
CLEAN = ProtocolConfig(name="clean", crop_box="exact", crop_resave=False, api_image="png")


class NullEngine:
    """Answers every request at once with an empty reply: the model costs nothing."""
    name = "null"

    def generate(self, requests):
        return [Reply(text="") for _ in requests]


def _authors_crop(path: Path, crop: str) -> Image.Image:
    """Tasks/utils.py lines 40-50: open by path, float box, PIL crop."""
    image = Image.open(path)
    width, height = image.size
    x1, y1, x2, y2 = AUTHORS_FACTORS[crop]
    return image.crop((width * abs(x1), height * abs(y1), width * (1 - abs(x2)),
                       height * (1 - abs(y2))))


def _swift_load(path: Path) -> np.ndarray:
    """ms-swift vision_utils.load_image (file bytes -> PIL -> RGB), decoded."""
    with open(path, "rb") as f:
        from io import BytesIO
        image = Image.open(BytesIO(f.read()))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def authors_path(items: list[dict], image_root: Path) -> float:
    """The authors' per-item work (module docstring). Returns items/s."""
    started = time.perf_counter()
    for item in items:
        task = get_task(item["task"])
        tmp_dir = Path(tempfile.mkdtemp())
        tmp_paths = []
        # cross-map loaders copy with copyfile (map_gauss.py, map_gauss_random.py), the
        # others with copy2 (task_template.py, orin_task_random.py, location_*.py)
        copy = shutil.copyfile if task.n_aerials > 1 else shutil.copy2
        for position, rel in enumerate(item["image_paths"]):
            original = image_root / rel
            role = "aerial" if position < task.n_aerials else "ground"
            tmp = tmp_dir / f"{original.stem}_{role}_tmp{original.suffix}"
            if role == "aerial" and item["crop"] != NO_CROP:
                _authors_crop(original, item["crop"]).save(tmp)
            else:
                copy(original, tmp)
            tmp_paths.append(tmp)
        for tmp in tmp_paths:  # the model's loader reads them back
            _swift_load(tmp)
        shutil.rmtree(tmp_dir)
    return len(items) / (time.perf_counter() - started)


def geoxray_stage(items: list[dict], image_root: Path, protocol: ProtocolConfig,
                  batch_size: int = 64) -> dict:
    """PredictStage with a null engine over `items`, one process. Items/s and JPEG cost."""
    from geoxray.infer.stage import PredictStage

    stage = PredictStage(NullEngine, str(image_root), "null", "paper", protocol=protocol)
    encode_s = 0.0
    crops = stage.crops
    encode = crops.__call__

    def timed(*args):  # the protocol's JPEG work (encode and read back), timed apart
        nonlocal encode_s
        before, t0 = crops.encoded + crops.decoded, time.perf_counter()
        out = encode(*args)
        if crops.encoded + crops.decoded != before:
            encode_s += time.perf_counter() - t0
        return out

    stage.crops = timed
    started = time.perf_counter()
    for i in range(0, len(items), batch_size):
        stage(pa.Table.from_pylist(items[i:i + batch_size]))
    wall = time.perf_counter() - started
    cropped = sum(get_task(it["task"]).n_aerials for it in items if it["crop"] != NO_CROP)
    return {"items_per_s": round(len(items) / wall, 1), "decodes": stage.images.decoded,
            "jpeg_encodes": crops.encoded, "jpeg_read_backs": crops.decoded,
            "cropped_images": cropped,
            "jpeg_s": round(encode_s, 3),
            "jpeg_ms_per_item": round(1000 * encode_s / len(items), 3)}


def end_to_end(preset: str, concurrency: int) -> dict:
    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark
    from geoxray.run.evaluate import evaluate

    cfg = load_config([f"data=synth_{preset}", "run.progress=false", "protocol=paper",
                       f"run.concurrency={concurrency}", "run.bootstrap=100"])
    bench = prepare_benchmark(cfg)
    n = pq.ParquetFile(bench.items_path).metadata.num_rows
    with tempfile.TemporaryDirectory() as out:
        cfg.data.kind, cfg.data.items = "items", str(bench.items_path)
        cfg.data.image_root, cfg.output_dir = str(bench.image_root), out
        t0 = time.perf_counter()
        evaluate(cfg, engine_builder=NullEngine)
        wall = time.perf_counter() - t0
    return {"items": n, "items_per_s": round(n / wall, 1), "wall_s": round(wall, 2),
            "concurrency": concurrency, "protocol": "paper",
            "includes": "Ray start, select, stream, write parts, tables, report"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--items-per-task", type=int, default=300)
    ap.add_argument("--end-to-end", action="store_true")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "datapath.json"))
    args = ap.parse_args()

    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark

    cfg = load_config([f"data=synth_{args.preset}", "run.progress=false"])
    bench = prepare_benchmark(cfg)
    root = Path(bench.image_root)
    by_task: dict[str, list[dict]] = defaultdict(list)
    crops_in_task: dict[str, int] = defaultdict(int)  # cropped images over the whole task
    distinct_in_task: dict[str, set] = defaultdict(set)  # their distinct (image, crop) pairs
    for row in pq.read_table(bench.items_path).to_pylist():  # sorted by image set
        task = get_task(row["task"])
        if row["crop"] != NO_CROP:
            for digest in row["image_hashes"][:task.n_aerials]:
                crops_in_task[task.name] += 1
                distinct_in_task[task.name].add((digest, row["crop"]))
        if len(by_task[row["task"]]) < args.items_per_task:
            row["key"] = row["item_id"]
            by_task[row["task"]].append(row)

    # warm-up, untimed: plugin registries, codecs, first allocations
    warm = [by_task[t.name][0] for t in TASKS]
    authors_path(warm, root)
    geoxray_stage(warm, root, CLEAN)
    geoxray_stage(warm, root, PAPER)
    per_task = {}
    for task in TASKS:
        items = by_task[task.name]
        baseline = authors_path(items, root)
        clean = geoxray_stage(items, root, CLEAN)
        paper = geoxray_stage(items, root, PAPER)
        per_task[task.name] = {
            "items": len(items), "images_per_item": len(items[0]["image_paths"]),
            "authors_per_item_items_per_s": round(baseline, 1),
            "geoxray_clean": clean, "geoxray_paper": paper,
            "ratio_clean": round(clean["items_per_s"] / baseline, 2),
            "ratio_paper": round(paper["items_per_s"] / baseline, 2),
            # over the whole task: what one encode per distinct (image, crop) saves
            "whole_task_cropped_images": crops_in_task[task.name],
            "whole_task_distinct_crops": len(distinct_in_task[task.name])}
        print(f"{task.name:16s} authors {baseline:7.1f}/s  clean {clean['items_per_s']:7.1f}/s"
              f"  paper {paper['items_per_s']:7.1f}/s  (x{per_task[task.name]['ratio_paper']},"
              f" {paper['jpeg_encodes']} JPEG encodes for {paper['cropped_images']} crops)",
              flush=True)
    result = {
        "benchmark": "datapath", "preset": args.preset,
        "method": "one process each, same items (the first N per task, sorted by image set); "
                  "null engine; ratio = geoxray items/s / authors' per-item items/s",
        "per_task": per_task,
        "machine": machine(),
        "command": "python benchmarks/bench_datapath.py " + " ".join(sys.argv[1:]),
    }
    if args.end_to_end:
        result["end_to_end"] = end_to_end(args.preset, args.concurrency)
    save(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
