"""Nothing listens beyond the machine, and no credential is stored (docs/security.md).

* A default local `geoxray eval` (its own Ray cluster, started by `ops/raycluster.init_ray`)
  is watched from outside while it runs: every TCP listening socket owned by its process
  tree is read from /proc (no `ss` needed), and those bound beyond loopback must be on the
  list in docs/security.md (which names none for Ray 2.60 with geoxray's settings).
* Error texts of an API that echoes the request's Authorization header are redacted before
  they reach predictions.error or the log."""
from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoxray.redact import redact

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-do-not-leak-1234567890abcdef"


# --- who listens where (from /proc, as `ss -ltnp` does) --------------------------------------
def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _address(hex_addr: str) -> str:
    ip, port = hex_addr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        host = ".".join(str(b) for b in raw[::-1])
    else:  # 4 little-endian 32-bit words
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        host = str(ipaddress.IPv6Address(b"".join(words)))
    return f"{host}:{int(port, 16)}"


def listening_sockets() -> dict[int, str]:
    """socket inode -> local address of every TCP socket in LISTEN state (v4 and v6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[int(fields[9])] = _address(fields[1])
    return found


def listeners_of(pids: set[int]) -> set[tuple[str, str]]:
    """(local address, process name) of each listening socket these processes hold."""
    sockets = listening_sockets()
    out = set()
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            if m and int(m.group(1)) in sockets:
                out.add((sockets[int(m.group(1))], name))
    return out


def is_loopback(address: str) -> bool:
    """"127.0.0.1:5", "::1:5", "::ffff:7f00:1:5" (IPv4-mapped 127.0.0.1) -> True."""
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def documented_exposed_listeners() -> set[str]:
    """Process names docs/security.md allows to listen beyond loopback (its table between
    the `listeners-beyond-loopback` markers; empty for a local cluster)."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("<!-- listeners-beyond-loopback -->")[1].split("<!-- end -->")[0]
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.MULTILINE)}


def test_listener_parsing_sees_a_known_socket():
    """The probe itself: a socket bound here on 0.0.0.0 is seen, as non-loopback."""
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        seen = listeners_of({os.getpid()})
    assert (f"0.0.0.0:{port}", Path("/proc/self/comm").read_text().strip()) in seen
    assert not is_loopback(f"0.0.0.0:{port}") and not is_loopback("::ffff:c000:202:5")
    assert is_loopback("::ffff:7f00:1:5") and is_loopback("::1:5") and is_loopback("127.0.0.1:5")
    assert not is_loopback(":::5") and not is_loopback("192.0.2.2:5")


# A vLLM-hosting eval (a Serve replica with the tiny model) takes a minute more; it was
# measured once (docs/security.md) and runs when GEOXRAY_SECURITY_VLLM=1.
EVAL_MODELS = ["random"] + (["tiny_qwen2vl"] if os.environ.get("GEOXRAY_SECURITY_VLLM") else [])


@pytest.mark.parametrize("model", EVAL_MODELS)
def test_default_eval_listens_on_loopback_only(tiny_bench, tmp_path, model):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for inherited in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(inherited, None)
    cmd = [sys.executable, "-m", "geoxray.cli", "eval", f"model={model}", "data=items",
           f"data.items={tiny_bench.items_path}", f"data.image_root={tiny_bench.image_root}",
           f"output_dir={tmp_path / 'run'}", "run.progress=false",
           f"run.max_items_per_task={30 if model == 'random' else 2}",
           "run.bootstrap=50", "ray.num_cpus=2",
           "ray.object_store_memory=300000000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners_of(_descendants(proc.pid))
        time.sleep(0.2)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "run" / "manifest.json").is_file()
    names = {name for _, name in seen}
    # the probe saw Ray's servers (it would not catch anything if it saw nothing)
    assert {"gcs_server", "raylet"} <= names, seen
    exposed = {(addr, name) for addr, name in seen if not is_loopback(addr)}
    allowed = documented_exposed_listeners()
    assert {name for _, name in exposed} <= allowed, (
        f"listeners beyond loopback not named in docs/security.md: {sorted(exposed)}")


# --- credentials never stored ----------------------------------------------------------------
class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """An API that answers every call with an error echoing the request headers (as some
    gateways do): 401 (not retried) or 500 (retried, so also logged)."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.status == 500:  # the headers as raw text lines
            message = "upstream failed; request headers were:\n" + str(self.headers)
        else:  # the headers as a dict
            message = f"invalid key; you sent {dict(self.headers)}"
        body = json.dumps({"error": {"message": message, "type": "x"}}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.status = 401
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _engine(server, monkeypatch):
    from geoxray.infer.config import DecodeConfig, ModelConfig
    from geoxray.infer.openai_engine import OpenAIEngine

    monkeypatch.setenv("GEOXRAY_TEST_KEY", SECRET)
    cfg = ModelConfig(name="api", engine="openai", path="m", api_key_env="GEOXRAY_TEST_KEY",
                      base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", retries=1,
                      request_timeout_s=10)
    return OpenAIEngine(cfg, DecodeConfig())


@pytest.mark.parametrize("status", [401, 500])
def test_api_errors_are_stored_without_the_key(echo_server, monkeypatch, tmp_path, caplog,
                                               status):
    from test_bad_inputs import GOOD, Case, _corpus_rows, _stage
    from geoxray.bench.schema import ITEM_SCHEMA
    from geoxray.run import store

    echo_server.status = status
    engine = _engine(echo_server, monkeypatch)
    rows = _corpus_rows(tmp_path / "images", tmp_path / "outside", [Case("good", None)])
    assert rows[0]["image_paths"][0] == GOOD
    caplog.set_level(logging.WARNING)
    stage = _stage(tmp_path / "images", engine=lambda: engine)
    out = stage(pa.Table.from_pylist([{**rows[0], "key": "k"}],
                                     schema=ITEM_SCHEMA.append(pa.field("key", pa.string()))))
    # an API error is an attempt, not an answer: it is stored apart, under failures/
    assert store.write_part(tmp_path / "run", out) == (0, 1)
    (part,) = store.parts(tmp_path / "run", store.FAILURES)
    error = pq.read_table(part).to_pylist()[0]["error"]
    # the server did echo the header (the test would pass vacuously otherwise)...
    assert "authorization" in error.lower() and "[REDACTED]" in error, error
    # ...and no part of the key was stored or logged
    assert SECRET not in error and SECRET[3:19] not in error
    assert SECRET not in caplog.text and SECRET[3:19] not in caplog.text
    raw = b"".join(p.read_bytes() for p in (tmp_path / "run").rglob("*.parquet"))
    assert SECRET.encode() not in raw


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer {SECRET}",
    f"{{'Authorization': 'Bearer {SECRET}'}}",
    f'{{"api_key": "{SECRET}"}}',
    f"https://api.example/v1?api_key={SECRET}&x=1",
    f"x-api-key: {SECRET}",
    f"Incorrect API key provided: {SECRET}.",
    f"https://user:{SECRET}@proxy.example:8080/v1",
    f"proxy-authorization: Basic {SECRET}",
    f"token={SECRET}",
    f"hf_{SECRET[3:]}".replace("-", ""),
])
def test_redact_removes_credentials_and_keeps_the_rest(text):
    out = redact(f"upstream said: {text} (status 401)")
    assert SECRET[3:] not in out and SECRET[3:].replace("-", "") not in out
    assert "[REDACTED]" in out
    assert out.startswith("upstream said: ") and out.endswith(" (status 401)")


def test_redact_leaves_ordinary_errors_alone():
    for text in ("ConnectionError: [Errno 111] Connection refused",
                 "max_tokens=8 exceeds context; prompt_tokens: 1200",
                 "corrupt_image: a/b.jpg: Corrupt JPEG data: 34 extraneous bytes"):
        assert redact(text) == text
