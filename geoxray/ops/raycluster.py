"""Connecting to Ray: a local cluster by default, the job's cluster inside a Ray job."""
from __future__ import annotations

import os
import tempfile

from geoxray.config import RayConfig

QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
             "HF_HUB_OFFLINE": "1"}


def init_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    kwargs: dict = dict(include_dashboard=cfg.include_dashboard, log_to_driver=False)
    if cfg.include_dashboard:
        kwargs["dashboard_host"] = cfg.dashboard_host
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        return
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit` / `geoxray submit`
        ray.init(**kwargs)
        return
    # A fresh local cluster. address="local" never joins a stale cluster left in /tmp/ray.
    temp_dir = cfg.temp_dir or tempfile.mkdtemp(prefix="geoxray-ray-")
    ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_memory,
             _temp_dir=temp_dir, **kwargs)
