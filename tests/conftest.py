"""Session fixtures: one real local Ray cluster for the whole test session."""
from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports ray or vllm: offline, no telemetry, small KV cache on CPU.
for _k, _v in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (started once). Logical CPUs exceed the 2 physical cores so a
    Serve replica and Ray Data tasks can be scheduled side by side."""
    import ray

    tmp = tempfile.mkdtemp(prefix="geoxray-ray-", dir="/tmp")
    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=tmp,
             object_store_memory=1_500_000_000, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def geoxray_cache(tmp_path_factory):
    """One cache for the session: the synthetic world is generated once."""
    path = tmp_path_factory.mktemp("geoxray-cache")
    os.environ["GEOXRAY_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_bench(geoxray_cache):
    """The `tiny` synthetic benchmark (items.parquet + images), built once per session."""
    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark

    cfg = load_config(["data=synth_tiny", f"cache_dir={geoxray_cache}", "run.progress=false"])
    return prepare_benchmark(cfg)


def eval_config(tmp_path, bench, *overrides):
    """A config for `evaluate` on a prepared benchmark (items + images), quiet."""
    from geoxray.config import load_config

    return load_config(["data=items", f"data.items={bench.items_path}",
                        f"data.image_root={bench.image_root}", "data.name=tiny",
                        f"output_dir={tmp_path}", "run.progress=false", "run.bootstrap=200",
                        *overrides])
