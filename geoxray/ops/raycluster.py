"""Connecting to Ray: a local cluster by default, the job's cluster inside a Ray job.

A local cluster listens on loopback only (docs/security.md). Ray 2.60's `ray.init` turns
`_node_ip_address="127.0.0.1"` back into the machine's routable address unless Ray believes
it may not form a cluster (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by
`services.get_node_ip_address` at call time and by every Ray process at import); with a
loopback node IP, GCS, raylet, object manager, workers, the dashboard agent, the runtime-env
agent and the metrics exporters all bind 127.0.0.1. tests/test_security.py checks it."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

from geoxray.config import RayConfig

QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
             "HF_HUB_OFFLINE": "1"}
LOOPBACK = "127.0.0.1"
# Ray's own switch for "this node never joins others": node IP = loopback in every process.
# vLLM in a replica takes its host IP from VLLM_HOST_IP (else the routable address) for any
# TCP rendezvous it opens; the replicas inherit this through the raylet's environment.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": LOOPBACK}


@contextmanager
def local_only():
    """While Ray starts: its processes (which copy this environment when spawned) and this
    driver take loopback as the node IP. Undone afterwards, so a later `ray start` of a
    multi-node cluster from this process (ops/localcluster.py) is not refused."""
    from ray._private import ray_constants  # read when ray.init resolves the node IP

    saved_env = {k: os.environ.get(k) for k in LOCAL_ONLY_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOCAL_ONLY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    with local_only():
        ray.init(address="local", num_cpus=cfg.num_cpus,
                 object_store_memory=cfg.object_store_memory, _temp_dir=temp_dir,
                 _node_ip_address=LOOPBACK, **kwargs)
