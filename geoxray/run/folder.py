"""Which folder a run writes to, and the stamp that makes a folder hold one run's answers.

The stamp (DIR/run.json) records what defines the answers: the model's identity, the decode
settings, the protocol (when there is one) and the benchmark's items hash. A rerun with the
same stamp resumes; one with another is refused, naming each difference, unless
`run.on_mismatch=new_folder` asks for the next free folder (DIR-2, DIR-3, ...). Which items
are selected (tasks, caps) is not in the stamp: keys are per item, and the tables of a run
score exactly the keys it selected (store.SELECTION).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from geoxray.config import Config
from geoxray.run import store
from geoxray.run.manifest import dataset_hash
from geoxray.run.selection import model_identity

ON_MISMATCH = ("refuse", "new_folder")


def default_output_dir(cfg: Config) -> Path:
    # one folder per protocol: its tables must not mix two protocols' answers
    return Path("runs") / f"{cfg.model.name}-{cfg.data.name}-{cfg.decode.mode}-{cfg.protocol.name}"


def run_stamp(cfg: Config, items_path: Path) -> dict[str, Any]:
    stamp: dict[str, Any] = {"model": model_identity(cfg.model), "decode": asdict(cfg.decode),
                             "benchmark": {"items_hash": dataset_hash(items_path)}}
    if getattr(cfg, "protocol", None) is not None:  # the name and every setting, for people
        stamp["protocol"] = asdict(cfg.protocol)
    return stamp


def mismatch(out_dir: Path, stamp: dict[str, Any]) -> list[str]:
    """Differences between the folder's stamp and this run's ([] when none or no stamp)."""
    found = store.read_stamp(out_dir)
    return [] if found is None else store.stamp_differences(found, stamp)


def resolve(cfg: Config, stamp: dict[str, Any]) -> Path:
    """The folder this run writes to (honouring `output_dir`), or a RunFolderError that names
    what differs from the answers already there."""
    base = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg)
    differences = mismatch(base, stamp)
    if not differences:
        return base
    if cfg.run.on_mismatch == "new_folder":
        n = 2
        while mismatch(base.with_name(f"{base.name}-{n}"), stamp):
            n += 1
        return base.with_name(f"{base.name}-{n}")
    raise store.RunFolderError(
        f"{base} holds answers of other settings ({'; '.join(differences)}). A folder holds "
        f"one run: choose another output_dir, or set run.on_mismatch=new_folder")
