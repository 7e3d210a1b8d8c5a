"""`geoxray submit|status|logs|stop` against a REAL two-node Ray cluster on this machine
(loopback only, its own temp dir and auth token; ended by pid, never `ray stop`), plus the
rules that keep secrets out of a job."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geoxray.run import store
from geoxray.ops.localcluster import (_ephemeral_range, _PortPicker, cluster_processes,
                                      start_local_cluster)
from geoxray.ops.submit import (EXCLUDES, SubmitError, entrypoint, job_env, runtime_env)

ITEMS_PER_TASK = 3


# --- no cluster needed ---------------------------------------------------------------------------
def test_secrets_never_enter_a_job():
    with pytest.raises(SubmitError, match="credential"):
        entrypoint("eval", ["model=gpt4o", "+model.api_key=abc"])
    with pytest.raises(SubmitError, match="credential"):
        entrypoint("eval", ["model.base_url=sk-" + "a" * 30])
    with pytest.raises(SubmitError, match="credential"):
        job_env(["OPENAI_API_KEY"], local={"OPENAI_API_KEY": "x"})
    with pytest.raises(SubmitError, match="credential"):
        job_env(["HF_TOKEN=hf_" + "b" * 30])
    with pytest.raises(SubmitError, match="not an allowed"):
        job_env(["LD_PRELOAD=/x.so"])
    with pytest.raises(SubmitError, match="cannot submit"):
        entrypoint("rm", ["-rf"])
    # the name of the variable holding a key is fine; so are allow-listed variables
    assert "model.api_key_env=OPENAI_API_KEY" in entrypoint(
        "eval", ["model=gpt4o", "model.api_key_env=OPENAI_API_KEY"])
    env = job_env(["GEOXBENCH_IMAGES=/shared/geoxbench", "GEOXRAY_CACHE"],
                  local={"GEOXRAY_CACHE": "/c", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "s"})
    assert env == {"GEOXBENCH_IMAGES": "/shared/geoxbench", "GEOXRAY_CACHE": "/c",
                   "HF_HUB_OFFLINE": "1"}
    renv = runtime_env(env)
    assert Path(renv["working_dir"], "geoxray", "cli.py").is_file()
    assert {".git", ".venv", "runs/", "**/__pycache__"} <= set(renv["excludes"]) == set(EXCLUDES)


def test_cluster_ports_never_collide():
    # Ray refuses to start a node whose single ports fall inside its worker-port block (a CI
    # run failed on exactly that): blocks sit below the OS's ephemeral range and apart.
    ports = _PortPicker()
    singles = [ports.single() for _ in range(30)]
    blocks = [ports.block() for _ in range(3)]
    assert len(set(singles)) == len(singles)
    covered = [p for low, high in blocks for p in range(low, high + 1)]
    assert len(set(covered)) == len(covered) == 3 * 200
    assert not set(singles) & set(covered)
    assert min(covered) >= 20000  # clear of Ray's default worker ports
    if _ephemeral_range()[0] - 20000 >= 20 * 200:
        assert max(covered) < _ephemeral_range()[0]


def test_entrypoint_quotes_overrides():
    entry = entrypoint("sweep", ["sweep=smoke", "sweep.output_dir=/shared/a b"])
    assert entry == "python -m geoxray.sweep.run sweep=smoke 'sweep.output_dir=/shared/a b'"


def test_cluster_manifests_hold_together():
    import yaml
    from ray.autoscaler._private.util import validate_config

    root = Path(__file__).resolve().parents[1] / "cluster"
    ray_up = yaml.safe_load((root / "ray-up" / "aws-gpu.yaml").read_text())
    validate_config(ray_up)  # Ray's own schema for `ray up` configs
    head = ray_up["available_node_types"][ray_up["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert any("p5" in t["node_config"]["InstanceType"] or "g6e" in t["node_config"]["InstanceType"]
               for n, t in ray_up["available_node_types"].items() if n != ray_up["head_node_type"])
    assert all("--dashboard-host=127.0.0.1" in c for c in ray_up["head_start_ray_commands"]
               if "--head" in c)
    cluster = yaml.safe_load((root / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((root / "kuberay" / "rayjob-paper.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert job["spec"]["submissionMode"] == "SidecarMode"
    assert "sweep=paper" in job["spec"]["entrypoint"]
    assert "sweep.output_dir=/shared/" in job["spec"]["entrypoint"]
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
        assert head["serviceType"] == "ClusterIP"
        assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"][
            "limits"]
        gpus = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                    ["nvidia.com/gpu"]) for g in spec["workerGroupSpecs"]]
        assert gpus == [1, 4]
        for group in [head, *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            container = pod["containers"][0]
            assert {"secretRef": {"name": "geoxray-secrets", "optional": True}} in \
                container["envFrom"]
            assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
            assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "geoxray-shared"
    for path in root.rglob("*"):  # no literal secret anywhere under cluster/
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"sk-[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{20,}", text), path


# --- a real two-node cluster -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(geoxray_cache):
    started = start_local_cluster(nodes=2, cpus_per_node=2)
    try:
        yield started
    finally:
        started.stop()
    assert cluster_processes(started.temp_dir) == []


def _cli(cluster, module_main: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
    env.update(cluster.client_env())
    code = f"import sys; from geoxray.ops.submit import {module_main}; sys.exit({module_main}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cluster_has_two_live_nodes_on_loopback(cluster):
    assert cluster.dashboard_url.startswith("http://127.0.0.1:")
    token = Path(cluster.token_path).read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard_url}/nodes?view=summary",
                                      headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        nodes = json.loads(resp.read())["data"]["summary"]
    alive = [n for n in nodes if n["raylet"]["state"] == "ALIVE"]
    assert len(alive) == 2
    assert {n["raylet"]["nodeManagerAddress"] for n in alive} <= {"127.0.0.2", "127.0.0.1"}
    # without the token the cluster refuses
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=10)


def test_submit_an_eval_and_check_its_results(cluster, tiny_bench, tmp_path):
    out = tmp_path / "eval"
    done = _cli(cluster, "main", "--address", cluster.dashboard_url, "--env", "GEOXRAY_CACHE",
                "--wait", "--timeout", "360", "--", "eval", "model=random", "data=synth_tiny",
                f"run.max_items_per_task={ITEMS_PER_TASK}", "run.progress=false",
                "run.bootstrap=100", f"output_dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split()[0]
    assert job_id.startswith("geoxray-eval-") and "SUCCEEDED" in done.stdout

    status = _cli(cluster, "status_main", job_id, "--address", cluster.dashboard_url)
    assert status.returncode == 0 and "status:     SUCCEEDED" in status.stdout
    assert "python -m geoxray.cli eval model=random" in status.stdout
    listing = _cli(cluster, "status_main", "--address", cluster.dashboard_url)
    assert job_id in listing.stdout
    logs = _cli(cluster, "logs_main", job_id, "--address", cluster.dashboard_url)
    assert logs.returncode == 0
    assert f"{7 * ITEMS_PER_TASK} predictions" in logs.stdout  # the eval's own summary line

    preds = store.read_predictions(out).to_pandas()
    assert len(preds) == 7 * ITEMS_PER_TASK and preds["key"].is_unique
    items = pq.read_table(tiny_bench.items_path, columns=["item_id"]).column("item_id")
    assert set(preds["item_id"]) <= set(items.to_pylist())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["predictions"] == 7 * ITEMS_PER_TASK
    assert (out / "tables" / "accuracy.csv").is_file() and (out / "report.md").is_file()


def test_stop_a_running_job(cluster, tmp_path):
    done = _cli(cluster, "main", "--address", cluster.dashboard_url, "--env", "GEOXRAY_CACHE",
                "--", "eval", "model=random", "data=synth_tiny", "+model.engine_kwargs.latency_s=5",
                "run.progress=false", f"output_dir={tmp_path / 'slow'}")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[0]
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(cluster.dashboard_url, headers={
        "Authorization": "Bearer " + Path(cluster.token_path).read_text().strip()})
    deadline = time.time() + 120
    while client.get_job_status(job_id).value == "PENDING" and time.time() < deadline:
        time.sleep(1)
    stopped = _cli(cluster, "stop_main", job_id, "--address", cluster.dashboard_url)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    while client.get_job_status(job_id).value not in ("STOPPED", "FAILED", "SUCCEEDED") \
            and time.time() < deadline:
        time.sleep(1)
    assert client.get_job_status(job_id).value == "STOPPED"
