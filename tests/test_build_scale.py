"""The streaming Ray Data build of items.parquet equals the in-memory build, byte for byte."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq

from geoxray.data.build_ray import build_items_ray
from geoxray.bench.index import (BuildProblems, build_items, packaged_index_root, read_items,
                                 write_items)


def _in_memory(tmp_path, index_root, image_root=None):
    problems = BuildProblems()
    path = write_items(build_items(index_root, image_root, problems), tmp_path / "local.parquet")
    return path, problems


def test_ray_build_equals_in_memory_build_on_the_authors_index(ray_cluster, tmp_path):
    problems = BuildProblems()
    n = build_items_ray(packaged_index_root(), None, tmp_path / "ray.parquet", problems)
    local, _ = _in_memory(tmp_path, packaged_index_root())
    assert n == 42_900 and problems.total == 0
    assert (tmp_path / "ray.parquet").read_bytes() == local.read_bytes()
    # what the evaluator relies on: each image set's items are one contiguous run
    runs = []
    for batch in pq.ParquetFile(tmp_path / "ray.parquet").iter_batches(columns=["image_set"]):
        for s in batch.column(0).to_pylist():
            if not runs or runs[-1] != s:
                runs.append(s)
    assert len(runs) == len(set(runs))


def test_ray_build_hashes_images_like_the_in_memory_build(ray_cluster, tiny_bench, tmp_path):
    root = tiny_bench.items_path.parent
    n = build_items_ray(root / "index", root / "images", tmp_path / "ray.parquet")
    local, _ = _in_memory(tmp_path, root / "index", root / "images")
    assert n == 1248
    assert (tmp_path / "ray.parquet").read_bytes() == local.read_bytes()
    hashes = read_items(tmp_path / "ray.parquet").column("image_hashes").to_pylist()
    assert all(h and "" not in h for h in hashes)


def test_ray_build_is_deterministic_whatever_the_parallelism(ray_cluster, tiny_bench, tmp_path,
                                                             monkeypatch):
    from geoxray.data import build_ray

    index = tiny_bench.items_path.parent / "index"
    assert len(build_ray.plan_tasks(build_ray.list_index_files(index), 8)) == 1
    build_items_ray(index, None, tmp_path / "a.parquet")
    # one task per index file, tiny chunks, many small blocks: more sort partitions
    monkeypatch.setattr(build_ray, "MIN_TASK_BYTES", 1)
    assert len(build_ray.plan_tasks(build_ray.list_index_files(index), 100)) == 6
    build_items_ray(index, None, tmp_path / "b.parquet", rows_per_chunk=37, n_tasks=100,
                    block_bytes=64 * 1024)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_items(tmp_path / "a.parquet").num_rows == 1248


def test_malformed_records_are_counted_and_skipped(ray_cluster, tmp_path):
    # VIGOR_Chicago's three files (100 records each) and CVGloable's LocationSelection file
    src, root = packaged_index_root(), tmp_path / "index"
    for rel in ("Orin4_SameLocation/VIGOR_Chicago.json", "Location4_50_in_range/VIGOR_Chicago.json",
                "LocationSelection/VIGOR_Chicago.json", "LocationSelection/CVGloable.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, root / rel)
    target = root / "Orin4_SameLocation" / "VIGOR_Chicago.json"
    records = json.loads(target.read_text())
    del records[0]["GroundImage"]
    records[1]["GroundImage"]["real_location"] = "not a coordinate"
    records[2]["AerialImage"] = None
    target.write_text(json.dumps(records))
    (root / "LocationSelection" / "CVGloable.json").write_text("{ not json")
    problems = BuildProblems()
    n = build_items_ray(root, None, tmp_path / "ray.parquet", problems)
    local, local_problems = _in_memory(tmp_path, root)
    # 100 x (1 + 9 + 9) + 100 x (1 + 9) x 2 items, less 3 bad records x (1 + 9 + 9) items of
    # tasks 1, 2, 5; the unreadable file gives none
    assert n == 100 * 19 + 2 * 100 * 10 - 3 * 19
    assert sum(v for k, v in problems.counts.items() if k.startswith("malformed")) == 3 * 3
    assert sum(v for k, v in problems.counts.items() if k.startswith("unreadable")) == 1
    assert problems.counts == local_problems.counts
    assert problems.examples == local_problems.examples
    assert (tmp_path / "ray.parquet").read_bytes() == local.read_bytes()


def test_an_index_with_no_readable_file_gives_an_empty_benchmark(ray_cluster, tmp_path):
    (tmp_path / "index" / "Orin4_SameLocation").mkdir(parents=True)
    (tmp_path / "index" / "Orin4_SameLocation" / "X.json").write_text('{"not": "a list"}')
    problems = BuildProblems()
    assert build_items_ray(tmp_path / "index", None, tmp_path / "ray.parquet", problems) == 0
    local, _ = _in_memory(tmp_path, tmp_path / "index")
    assert problems.total == 1
    assert (tmp_path / "ray.parquet").read_bytes() == local.read_bytes()


def test_prepare_benchmark_streams_a_large_index_through_ray(ray_cluster, tiny_bench, tmp_path,
                                                             monkeypatch):
    from geoxray.config import load_config
    from geoxray.run import benchmark

    world = tiny_bench.items_path.parent
    monkeypatch.setattr(benchmark, "RAY_BUILD_MIN_INDEX_BYTES", 1)  # "large" = any index
    cfg = load_config(["data=index", f"data.index_root={world / 'index'}",
                       f"data.image_root={world / 'images'}", f"data.root={tmp_path / 'bench'}",
                       "run.progress=false"])
    bench = benchmark.prepare_benchmark(cfg)
    report = json.loads((tmp_path / "bench" / "build_report.json").read_text())
    assert report["builder"] == "ray" and report["items"] == 1248
    assert bench.items_path.read_bytes() == tiny_bench.items_path.read_bytes()


def test_small_indexes_stay_in_memory(tmp_path):
    from geoxray.run.benchmark import items_builder

    assert items_builder(packaged_index_root()) == "local"


def test_full_preset_config():
    from geoxray.config import load_config

    cfg = load_config(["data=synth_full"])
    assert (cfg.data.name, cfg.data.kind, cfg.data.preset) == ("synth_full", "synthetic", "full")


def test_ray_build_fails_when_a_node_cannot_see_the_images(ray_cluster, tiny_bench, tmp_path):
    """A worker that cannot see the image root (no shared filesystem) fails the build rather
    than writing a benchmark with empty image hashes that would be cached as complete."""
    import pytest
    root = tiny_bench.items_path.parent
    with pytest.raises(Exception, match="filesystem every node shares"):
        build_items_ray(root / "index", tmp_path / "not-here", tmp_path / "ray.parquet")
    assert not (tmp_path / "ray.parquet").exists()
