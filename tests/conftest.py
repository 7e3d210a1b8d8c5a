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
