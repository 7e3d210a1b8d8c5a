"""What every benchmark records beside its figures, and how it saves them."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    """The machine a result was taken on; the load at the end says how busy it was (other
    work slows every figure of a run alike, so ratios within a run still hold)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 1)}


def save(result: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
