"""A profile on disk: `profiles/<model>-<device>.json`, its name, writing and reading.

Its own module because both sides use it: `profile.py` writes profiles, `plan_model.py`
reads them (and `profile.py` asks `plan_model.py` for parameter counts), so neither imports
the other for the file format."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

PROFILE_FORMAT = 1
DEFAULT_DIR = Path("profiles")


def slug(text: str) -> str:
    """A file-name-safe label: lower case, [a-z0-9_.] kept, anything else as "-"."""
    return re.sub(r"[^a-z0-9_.]+", "-", text.lower()).strip("-.") or "unknown"


def profile_path(model_name: str, device_slug: str, folder: str | Path = DEFAULT_DIR) -> Path:
    return Path(folder) / f"{slug(model_name)}-{device_slug}.json"


def write_profile(profile: dict[str, Any], folder: str | Path = DEFAULT_DIR) -> Path:
    path = profile_path(profile["model"], profile["device"]["slug"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(profile, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


def read_profile(path: str | Path) -> dict[str, Any]:
    profile = json.loads(Path(path).read_text())
    if profile.get("geoxray_profile") != PROFILE_FORMAT:
        raise ValueError(f"{path}: not a geoxray profile (format {PROFILE_FORMAT})")
    return profile
