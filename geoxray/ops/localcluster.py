"""A real multi-node Ray cluster on this machine (head + worker nodes, each its own raylet),
for trying the cluster path (`geoxray submit`) without a cloud, and for tests.

Everything talks over loopback only: the nodes on 127.0.0.2, the dashboard (the Jobs API) on
127.0.0.1, and Ray's token authentication is on with a token made for this cluster (in its
temp dir, mode 0600): clients use `cluster.client_env()` (RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH). Each cluster lives in its own temp dir, and `stop` ends exactly the processes whose
command line names that dir: never `ray stop`, which ends every Ray process on the machine
(including a test session's own cluster or a colleague's).

    python -m geoxray.ops.localcluster start --nodes 2 --cpus 1   # prints address and dir
    python -m geoxray.ops.localcluster stop /tmp/geoxray-cluster-XXXX
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# The nodes' address: another loopback address (127.0.0.0/8 is all loopback). Ray rewrites
# 127.0.0.1 and "localhost" given as a node or head address to the machine's outward IP
# (ray._private.services.resolve_ip_for_localhost); 127.0.0.2 it keeps as is.
NODE_IP = "127.0.0.2"


@dataclass
class LocalCluster:
    temp_dir: str
    gcs_address: str  # 127.0.0.2:PORT, for `ray start --address` / ray.init
    dashboard_url: str  # http://127.0.0.1:PORT, for the Jobs API
    nodes: int
    token_path: str  # this cluster's auth token (a secret: never printed, never forwarded)

    def client_env(self) -> dict[str, str]:
        """Environment for a client process (`geoxray submit`, `ray job`) of this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def stop(self, remove: bool = True) -> int:
        """End the cluster's processes; with `remove`, delete its temp dir (logs too)."""
        stopped = stop_local_cluster(self.temp_dir)
        if remove:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return stopped


class _PortPicker:
    """Ports for one cluster's start, none used twice: Ray refuses to start a node when one of
    its ports falls inside its worker-port block, so the single ports (which the OS hands out
    from its ephemeral range) and the worker blocks are kept apart and remembered."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def single(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = s.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise RuntimeError("no free port")

    def block(self, width: int = 200) -> tuple[int, int]:
        """A block of free ports for a node's workers, below the OS's ephemeral range (so a
        port the OS hands out later, to Ray or anyone, cannot land inside it) and above
        Ray's default worker ports 10002-19999 (used by any plain `ray.init()` cluster)."""
        bottom, top = 20000, _ephemeral_range()[0]
        if top - bottom < 20 * width:  # an unusually wide ephemeral range: take what is free
            top = 65000
        slots = (top - bottom) // width
        for _ in range(200):
            base = bottom + (int.from_bytes(os.urandom(2), "little") % slots) * width
            ports = range(base, base + width)
            if any(p in self.taken for p in ports):
                continue
            try:
                for port in (base, base + width // 2, base + width - 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                        s.bind((LOOPBACK, port))
            except OSError:
                continue
            self.taken.update(ports)
            return base, base + width - 1
        raise RuntimeError("no free port range for Ray workers")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def _node_ports(ports: _PortPicker) -> list[str]:
    low, high = ports.block()
    return [f"--node-manager-port={ports.single()}", f"--object-manager-port={ports.single()}",
            f"--dashboard-agent-listen-port={ports.single()}",
            f"--dashboard-agent-grpc-port={ports.single()}",
            f"--runtime-env-agent-port={ports.single()}",
            f"--metrics-export-port={ports.single()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}"]


def start_local_cluster(nodes: int = 2, cpus_per_node: int = 1, temp_dir: str | None = None,
                        object_store_memory: int = 300_000_000, env: dict | None = None,
                        timeout_s: float = 180.0) -> LocalCluster:
    """Start a head (with the dashboard) and nodes-1 workers; wait until all are alive."""
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="geoxray-cluster-", dir="/tmp")
    token_path = Path(temp_dir) / "auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    run_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {}),
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    for inherited in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        run_env.pop(inherited, None)  # this cluster's own, never a caller's (e.g. a test's)
    # The job driver runs `python` from the nodes' PATH: make it this interpreter.
    run_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{run_env.get('PATH', '')}"
    ports = _PortPicker()
    gcs_port, dash_port = ports.single(), ports.single()
    common = [f"--num-cpus={cpus_per_node}", f"--object-store-memory={object_store_memory}",
              f"--node-ip-address={NODE_IP}", "--disable-usage-stats"]
    head = [_ray_bin(), "start", "--head", f"--port={gcs_port}", f"--temp-dir={temp_dir}",
            "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={dash_port}", f"--ray-client-server-port={ports.single()}",
            *common, *_node_ports(ports)]
    cluster = LocalCluster(temp_dir, f"{NODE_IP}:{gcs_port}", f"http://{LOOPBACK}:{dash_port}",
                           nodes, str(token_path))
    try:
        _run(head, run_env)
        for i in range(1, nodes):
            # Each node its own temp dir: nodes sharing one would unpack each job's
            # working_dir into the same folder, under a running driver's feet.
            node_dir = Path(temp_dir) / f"n{i}"
            node_dir.mkdir(exist_ok=True)
            _run([_ray_bin(), "start", f"--address={cluster.gcs_address}",
                  f"--temp-dir={node_dir}", *common, *_node_ports(ports)], run_env)
        _wait_alive(cluster, nodes, timeout_s)
    except Exception:
        stop_local_cluster(temp_dir)
        raise
    (Path(temp_dir) / "geoxray-cluster.json").write_text(json.dumps(asdict(cluster)))
    return cluster


def _run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _wait_alive(cluster: LocalCluster, nodes: int, timeout_s: float) -> None:
    """Until the Jobs API answers and lists `nodes` alive nodes."""
    import urllib.request

    deadline = time.time() + timeout_s
    last = ""
    auth = {"Authorization": "Bearer " + Path(cluster.token_path).read_text().strip()}
    while time.time() < deadline:
        try:
            request = urllib.request.Request(f"{cluster.dashboard_url}/nodes?view=summary",
                                             headers=auth)
            with urllib.request.urlopen(request, timeout=5) as resp:
                body = json.loads(resp.read())
            summary = body.get("data", {}).get("summary", [])
            alive = [n for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]
            if len(alive) >= nodes:
                _wait_jobs_api(cluster, deadline, auth)
                return
            last = f"{len(alive)} of {nodes} nodes alive"
        except Exception as exc:  # the dashboard takes a few seconds to come up
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise TimeoutError(f"local Ray cluster not ready after {timeout_s:.0f}s: {last}")


def _wait_jobs_api(cluster: LocalCluster, deadline: float, auth: dict) -> None:
    from ray.job_submission import JobSubmissionClient

    while True:
        try:
            JobSubmissionClient(cluster.dashboard_url, headers=auth).list_jobs()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1.0)


def cluster_processes(temp_dir: str) -> list:
    """The processes of the cluster living in `temp_dir`, with all their descendants."""
    import psutil

    mark = str(Path(temp_dir))
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(mark in part for part in proc.info["cmdline"] or []):
                roots.append(proc)
        except (psutil.Error, TypeError):
            continue
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_local_cluster(temp_dir: str, grace_s: float = 10.0) -> int:
    """End this cluster's processes (by pid: SIGTERM, then SIGKILL after `grace_s`)."""
    import psutil

    procs = cluster_processes(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoxray.ops.localcluster")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--temp-dir")
    p = sub.add_parser("stop")
    p.add_argument("temp_dir")
    args = parser.parse_args(argv)
    if args.cmd == "start":
        cluster = start_local_cluster(args.nodes, args.cpus, args.temp_dir)
        print(json.dumps(asdict(cluster), indent=2))
        print("clients: " + " ".join(f"{k}={v}" for k, v in cluster.client_env().items()),
              file=sys.stderr)
        print(f"submit: geoxray submit --address {cluster.dashboard_url} -- eval ...",
              file=sys.stderr)
        print(f"stop:   python -m geoxray.ops.localcluster stop {cluster.temp_dir}",
              file=sys.stderr)
        return 0
    print(f"stopped {stop_local_cluster(args.temp_dir)} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
