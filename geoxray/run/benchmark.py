"""`data` config -> a benchmark on disk: items.parquet and the image root its paths resolve in.

Synthetic worlds are generated on first use into the cache; the authors' index is shipped;
anything else is an items.parquet you built. Mistakes fail here, before Ray starts."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from geoxray.bench.index import (BuildProblems, build_items, index_bytes, packaged_index_root,
                                 write_items)
from geoxray.config import Config, ConfigError, cache_dir

# From this much index JSON on (~130-180k items at ~55-80 bytes of JSON per item), items are
# built by the streaming Ray Data job (geoxray/data/build_ray.py): the in-memory build's
# one process grows ~1.2 KB per item (~1 GB heap at 755,976), the Ray job's driver heap stays
# ~190 MB and each worker's ~200 MB, however many items. On ONE small machine that buys
# nothing (all of Ray's processes together: ~2.0 GB vs ~1.0 GB PSS, 0.86x the speed); it bounds
# the driver (a job's driver on a small head node) and spreads the work over a cluster's
# nodes. Below the threshold Ray's fixed cost is most of the build (42,900 items: 13.5 s vs
# 1.6 s). Figures: benchmarks/results/build_scale.json.
RAY_BUILD_MIN_INDEX_BYTES = 10_000_000


@dataclass
class Benchmark:
    name: str
    items_path: Path
    image_root: Path | None
    problems: dict[str, int]


def benchmark_root(cfg: Config) -> Path | None:
    """The folder a data config's benchmark is built in (None for a prebuilt items file):
    data.root, else the cache (a synthetic world's folder names its preset and seed)."""
    if cfg.data.kind == "items":
        return None
    if cfg.data.root:
        return Path(cfg.data.root)
    if cfg.data.kind == "synthetic":
        return cache_dir(cfg) / "bench" / f"synth-{cfg.data.preset}-seed{cfg.data.seed}"
    return cache_dir(cfg) / "bench" / cfg.data.name


def items_path(cfg: Config) -> Path | None:
    """Where a data config's items.parquet is, or will be once built (nothing is built)."""
    if cfg.data.kind == "items":
        return Path(cfg.data.items) if cfg.data.items else None
    root = benchmark_root(cfg)
    return root / "items.parquet" if root is not None else None


def items_builder(index_root: Path) -> str:
    """"ray" (streaming, bounded memory) for a large index, else "local" (in memory)."""
    return "ray" if index_bytes(index_root) >= RAY_BUILD_MIN_INDEX_BYTES else "local"


def _build_from_index(cfg: Config, index_root: Path, image_root: Path | None, out: Path,
                      name: str) -> Benchmark:
    problems = BuildProblems()
    items_path = out / "items.parquet"
    builder = items_builder(index_root)
    if builder == "ray":
        from geoxray.data.build_ray import build_items_ray
        from geoxray.ops.raycluster import init_ray
        init_ray(cfg.ray)  # a no-op when Ray is up already (a Ray job, a test session)
        n_items = build_items_ray(index_root, image_root, items_path, problems,
                                  progress=cfg.run.progress)
    else:
        table = build_items(index_root, image_root, problems)
        write_items(table, items_path)
        n_items = table.num_rows
    report = {"items": n_items, "builder": builder, "skipped_records": problems.counts,
              "examples": problems.examples}
    (out / "build_report.json").write_text(json.dumps(report, indent=2))
    return Benchmark(name, items_path, image_root, problems.counts)


def prepare_benchmark(cfg: Config, require_images: bool = True, rebuild: bool = False) -> Benchmark:
    data = cfg.data
    if data.kind == "synthetic":
        root = benchmark_root(cfg)
        done = root / "BUILD_OK"
        if rebuild and root.exists():
            shutil.rmtree(root)
        if not done.exists():
            from geoxray.data.synth import generate
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            generate(tmp, preset=data.preset, seed=data.seed, progress=cfg.run.progress)
            _build_from_index(cfg, tmp / "index", tmp / "images", tmp, data.name)
            (tmp / "BUILD_OK").write_text("ok\n")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        problems = json.loads((root / "build_report.json").read_text())["skipped_records"]
        return Benchmark(data.name, root / "items.parquet", root / "images", problems)

    if data.kind in ("geoxbench", "index"):
        index_root = Path(data.index_root) if data.index_root else packaged_index_root()
        if data.kind == "index" and not data.index_root:
            raise ConfigError("config key 'data.index_root': required for data.kind=index")
        image_root = _image_root(data.image_root, require_images)
        out = benchmark_root(cfg)
        out.mkdir(parents=True, exist_ok=True)
        return _build_from_index(cfg, index_root, image_root, out, data.name)

    if data.kind == "items":
        items = Path(str(data.items))
        if not items.is_file():
            raise ConfigError(f"config key 'data.items': no file {items}")
        return Benchmark(data.name, items, _image_root(data.image_root, require_images), {})

    if data.kind == "sources":
        from geoxray.data.build import build_from_sources
        out = benchmark_root(cfg)
        if not data.sources:
            raise ConfigError("config key 'data.sources': name at least one source dataset")
        try:
            report = build_from_sources(data.sources, out, **data.build)
        except ValueError as exc:
            raise ConfigError(f"config key 'data.build' / 'data.sources': {exc}") from None
        skipped = {k: v for k, v in report.item_problems.items()}
        return Benchmark(data.name, Path(str(report.items_path)), Path(report.image_root), skipped)
    raise ConfigError(f"config key 'data.kind': {data.kind!r}")


def _image_root(value: str | None, required: bool) -> Path | None:
    if not value:
        if required:
            raise ConfigError("config key 'data.image_root': not set; point it at the folder "
                              "the index file paths resolve in (or set GEOXBENCH_IMAGES)")
        return None
    root = Path(value)
    if not root.is_dir():
        raise ConfigError(f"config key 'data.image_root': {root} is not a directory")
    return root
