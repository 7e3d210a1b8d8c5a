"""What geoxray knows, as rows for `geoxray list`: models, data, sweeps and protocols are the
options of the conf/ groups (one YAML file each), tasks are bench/tasks.py's TASKS."""
from __future__ import annotations

from pathlib import Path

KINDS = ("models", "tasks", "data", "sweeps", "protocols")
# `geoxray list KIND` -> the conf/ group holding its options.
GROUPS = {"models": "model", "data": "data", "sweeps": "sweep", "protocols": "protocol"}


def rows(kind: str) -> list[dict[str, object]]:
    if kind == "tasks":
        return task_rows()
    return group_rows(GROUPS[kind])


def task_rows() -> list[dict[str, object]]:
    from geoxray.bench.tasks import TASKS

    return [{"name": t.name, "number": t.number, "options": len(t.options),
             "answer_field": t.answer_field, "title": t.title} for t in TASKS]


def group_rows(group: str) -> list[dict[str, object]]:
    """One row per conf/<group>/*.yaml: its name, its description (the `description` field,
    else the file's first comment line) and, for models and data, what it runs on."""
    from omegaconf import OmegaConf

    from geoxray.config import conf_dir

    folder = conf_dir() / group
    out = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        node = OmegaConf.load(path)  # not resolved: ${oc.env:...} stays as written
        row: dict[str, object] = {"name": path.stem}
        for key in ("engine", "path", "kind"):
            if key in node and not OmegaConf.is_missing(node, key):
                row[key] = OmegaConf.to_container(node, resolve=False)[key]
        row["description"] = (str(node["description"]) if "description" in node
                              else _first_comment(path))
        out.append(row)
    return out


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def format_rows(table: list[dict[str, object]]) -> str:
    """Aligned columns; the last column (a description) runs to the end of the line."""
    if not table:
        return ""
    columns = list(dict.fromkeys(k for row in table for k in row))
    columns.sort(key=lambda c: c in ("description", "title"))  # free text last
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in table)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    for row in table:
        lines.append("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)
