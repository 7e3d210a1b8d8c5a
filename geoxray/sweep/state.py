"""`SWEEP_DIR/sweep.json`: the state of every point of a sweep, rewritten atomically on
every change, so a killed driver leaves a readable file and a rerun knows what is done.

    {"sweep": "smoke", "updated": "...", "points": {
        "<point>": {"model", "data", "decode", "series", "out_dir", "fingerprint",
                    "status": "pending|running|done|failed", "attempts", "started",
                    "finished", "wall_s", "predictions", "invalid", "written", "error"}}}

A point is redone only if it is not `done` or its fingerprint (what decides its answers:
model, decode, data, task selection) changed; its predictions resume by key either way.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

STATE_FILE = "sweep.json"
STATUSES = ("pending", "running", "done", "failed")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class SweepState:
    """Thread-safe view of sweep.json (model groups update it from worker threads)."""

    def __init__(self, sweep_dir: Path, name: str):
        self.path = Path(sweep_dir) / STATE_FILE
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"sweep": name, "created": now(), "points": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                if isinstance(loaded, dict) and isinstance(loaded.get("points"), dict):
                    self.data = loaded
            except ValueError:  # a torn file (cannot happen with atomic writes) starts afresh
                pass
        self.data["sweep"] = name

    def point(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.data["points"].get(name, {}))

    def is_done(self, name: str, fingerprint: str) -> bool:
        entry = self.point(name)
        return entry.get("status") == "done" and entry.get("fingerprint") == fingerprint

    def update(self, name: str, **fields: Any) -> None:
        with self._lock:
            entry = self.data["points"].setdefault(name, {"attempts": 0})
            entry.update(fields)
            self._write()

    def points(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self.data["points"].items()}

    def _write(self) -> None:
        self.data["updated"] = now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False))
        os.replace(tmp, self.path)
