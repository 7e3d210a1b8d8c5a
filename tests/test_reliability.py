"""Reliability: a run killed with SIGKILL at random points converges to an uninterrupted
run's predictions and leaves no process behind; an engine that is down, then flaky, then up
loses no item and never scores a failure. Figures: docs/reliability.md.

Real parts throughout: `geoxray eval` subprocesses on their own local Ray cluster (killed as
a process group), the baseline engine with a simulated per-item latency, and the OpenAI
engine against a local HTTP server on 127.0.0.1 that refuses, then fails, then answers."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import eval_config
from geoxray.run import store

N_KILLS = 10
KILL_PER_TASK = 64  # 352 items of the tiny benchmark (three tasks have only 32)
FIGURES: dict = {}  # printed at the end of each test (docs/reliability.md quotes them)


# --- SIGKILL at random points -----------------------------------------------------------------
def _eval_cmd(bench, out: Path, ray_tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geoxray.cli", "eval", "model=random", "data=items",
            f"data.items={bench.items_path}", f"data.image_root={bench.image_root}",
            "data.name=tiny", f"output_dir={out}", "run.progress=false", "run.batch_size=4",
            "run.bootstrap=50", f"run.max_items_per_task={KILL_PER_TASK}", "ray.num_cpus=2",
            f"ray.temp_dir={ray_tmp}", *extra]


def _alive(pgid: int, marker: str) -> list[int]:
    """Processes of a killed run: in its process group (the driver, GCS, raylet, agents) or
    naming its Ray temp dir (workers, which Ray starts in sessions of their own)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and (int(fields[2]) == pgid or marker in cmdline):
            alive.append(int(entry.name))
    return alive


class Killed:
    """The runs killed so far, and when the last process of each was gone."""

    def __init__(self):
        self.runs: list[dict] = []

    def add(self, pgid: int, marker: str) -> None:
        self.runs.append({"pgid": pgid, "marker": marker, "killed": time.time(), "gone": None})

    def poll(self) -> None:
        for run in self.runs:
            if run["gone"] is None and not _alive(run["pgid"], run["marker"]):
                run["gone"] = time.time()

    def wait_all_gone(self, bound_s: float) -> None:
        deadline = self.runs[-1]["killed"] + bound_s
        while time.time() < deadline:
            self.poll()
            if all(r["gone"] for r in self.runs):
                return
            time.sleep(0.2)
        left = {r["marker"]: _alive(r["pgid"], r["marker"]) for r in self.runs if not r["gone"]}
        pytest.fail(f"processes left {bound_s:.0f} s after the last kill: {left}")


def test_sigkill_at_random_points_converges_without_orphans(tiny_bench, tmp_path):
    rng = random.Random(20261204)
    out = tmp_path / "killed"
    # one short Ray temp dir per run (socket paths must stay under 107 bytes), so each
    # killed run's processes can be told apart
    scratch = Path(tempfile.mkdtemp(prefix="gxk-", dir="/tmp"))
    slow = "+model.engine_kwargs.latency_s=0.05"  # ~9 s of engine time: room for 10 kills
    killed, committed = Killed(), []
    t0 = time.time()
    while len(killed.runs) < N_KILLS:
        before = len(store.parts(out))
        ray_tmp = scratch / str(len(killed.runs))
        proc = subprocess.Popen(_eval_cmd(tiny_bench, out, ray_tmp, slow), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while (time.time() < deadline and proc.poll() is None
               and len(store.parts(out)) <= before):
            killed.poll()
            time.sleep(0.02)
        assert proc.poll() is None, ("the run ended before kill "
                                     f"{len(killed.runs) + 1}: "
                                     f"{proc.stderr.read().decode()[-1500:]}")
        time.sleep(rng.uniform(0.0, 0.5))  # a random point mid-stream
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed.add(proc.pid, str(ray_tmp))
        keys = store.read_predictions(out, columns=["key"]).column("key").to_pylist()
        assert len(keys) == len(set(keys))
        committed.append(len(keys))
    final = subprocess.run(_eval_cmd(tiny_bench, out, scratch / "final", slow),
                           capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    killed_s = time.time() - t0
    # Ray's workers run in sessions of their own: they outlive the process group's SIGKILL
    # until they notice their raylet is gone (~25 s measured); bounded, then none is left.
    killed.wait_all_gone(bound_s=60)
    cleanup = [r["gone"] - r["killed"] for r in killed.runs]
    t1 = time.time()
    straight = tmp_path / "straight"
    done = subprocess.run(_eval_cmd(tiny_bench, straight, scratch / "straight"),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    straight_s = time.time() - t1
    shutil.rmtree(scratch, ignore_errors=True)

    columns = ["item_id", "task", "answer", "reply", "pred", "invalid_reason"]
    a = store.read_predictions(out).to_pandas()
    b = store.read_predictions(straight).to_pandas()
    assert a["key"].is_unique and len(a) == len(b) == 352
    pd.testing.assert_frame_equal(a[columns].sort_values("item_id").reset_index(drop=True),
                                  b[columns].sort_values("item_id").reset_index(drop=True))
    assert ((out / "tables" / "accuracy.csv").read_text()
            == (straight / "tables" / "accuracy.csv").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["status"] == "complete"
    assert 0 < committed[0] and committed == sorted(committed)  # every kill kept its parts
    FIGURES["kills"] = dict(kills=N_KILLS, items=len(a), predictions_after_each_kill=committed,
                            cleanup_s=[round(min(cleanup), 1), round(max(cleanup), 1)],
                            killed_total_s=round(killed_s, 1),
                            straight_s=round(straight_s, 1))
    print("\nFIGURES", json.dumps(FIGURES["kills"]))


# --- an engine down, then flaky, then up --------------------------------------------------------
class FakeAPI(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint: answers one of the offered choices, picked by a hash
    of the conversation (deterministic per item), after failing the first `fail_first` calls
    with HTTP 503."""
    daemon_threads = True

    def __init__(self, port: int, fail_first: int = 0):
        self.fail_first, self.calls = fail_first, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls += 1
            fail = self.server.calls <= self.server.fail_first
        if fail:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "overloaded"}}')
            return
        choices = body["structured_outputs"]["choice"]
        digest = hashlib.blake2b(json.dumps(body["messages"], sort_keys=True).encode()).digest()
        answer = choices[int.from_bytes(digest[:4], "little") % len(choices)]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                              "message": {"role": "assistant", "content": answer}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(port: int, fail_first: int = 0) -> FakeAPI:
    server = FakeAPI(port, fail_first)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_engine_down_then_up_retries_failed_items_and_never_scores_them(ray_cluster, tiny_bench,
                                                                        tmp_path):
    from geoxray.run.evaluate import EngineDown, evaluate

    port = _free_port()
    api = ["model=gpt4o", "model.name=fakeapi", f"model.base_url=http://127.0.0.1:{port}/v1",
           "model.api_key_env=null", "model.retries=0", "model.request_timeout_s=10",
           "model.openai_choice=structured_outputs", "model.concurrency=2", "decode=choice",
           "run.batch_size=4", "run.max_items_per_task=16", "run.concurrency=2"]
    out = tmp_path / "run"
    counts = lambda: json.loads((out / "manifest.json").read_text())["counts"]  # noqa: E731

    # 1. nobody listens: the run stops after 3 batches in a row failed, nothing is scored
    t0 = time.time()
    with pytest.raises(EngineDown, match="failed every item of the last 3 batches"):
        evaluate(eval_config(out, tiny_bench, *api))
    down_s = time.time() - t0
    first = counts()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["status"] == "stopped"
    assert first["predictions"] == 0 and first["failed"] > 0 and first["unscored"] == 112
    acc = pd.read_csv(out / "tables" / "accuracy.csv")
    assert (acc["n"] == 0).all() and acc[acc.instance == "all"]["failed"].sum() == first["failed"]
    assert "unscored" in (out / "report.md").read_text()

    # 2. up but flaky: the first 6 calls get HTTP 503; the run completes around them
    server = _serve(port, fail_first=6)
    try:
        evaluate(eval_config(out, tiny_bench, *api))
        second = counts()
        assert second["retried"] == first["failed"]
        assert second["failed"] == 6 and second["predictions"] == 106
        acc = pd.read_csv(out / "tables" / "accuracy.csv")
        totals = acc[acc.instance == "all"]
        assert totals["failed"].sum() == 6 and totals["n"].sum() == 106  # apart, not wrong
        assert (totals["invalid"] == 0).all()

        # 3. opting out of retries leaves them; 4. the default rerun answers them
        evaluate(eval_config(out, tiny_bench, *api, "run.retry_failed=false"))
        assert counts()["written_this_run"] == 0 and counts()["failed"] == 6
        evaluate(eval_config(out, tiny_bench, *api))
        third = counts()
        assert third["retried"] == 6 and third["failed"] == 0 and third["predictions"] == 112
        calls = server.calls

        # the same answers as a run that never saw a failure
        straight = tmp_path / "straight"
        evaluate(eval_config(straight, tiny_bench, *api))
    finally:
        server.shutdown()
        server.server_close()
    columns = ["item_id", "reply", "pred", "invalid_reason"]
    a = store.read_predictions(out).to_pandas()[columns].sort_values("item_id")
    b = store.read_predictions(straight).to_pandas()[columns].sort_values("item_id")
    assert a["invalid_reason"].isna().all()
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert ((out / "tables" / "accuracy.csv").read_text()
            == (straight / "tables" / "accuracy.csv").read_text())
    FIGURES["down_up"] = dict(items=112, failed_while_down=first["failed"],
                              stop_after_s=round(down_s, 1), flaky_failed=6,
                              server_calls=calls)
    print("\nFIGURES", json.dumps(FIGURES["down_up"]))
