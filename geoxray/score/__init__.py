"""Scoring: metrics, tables, plots and the report (replies are parsed by bench/parse.py,
next to the task table).

`write_report(out_dir)` rebuilds tables, plots and report.md/html from
`out_dir/predictions/*.parquet`. Definitions: docs/metrics.md.

Names below load on first use, so `import geoxray.score` stays light (no pandas or
matplotlib import until a name is used).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Accuracy": "metrics", "Bias": "metrics", "accuracy": "metrics",
    "choice_bias": "metrics", "expected_bias": "metrics", "cluster_bootstrap_ci": "metrics",
    "Tables": "tables", "accuracy_table": "tables", "bias_table": "tables",
    "option_shares": "tables", "invalid_reasons": "tables", "lenient_only_counts": "tables", "leaderboard": "tables",
    "compute_tables": "tables", "write_tables": "tables",
    "write_plots": "plots",
    "read_predictions": "report", "write_report": "report", "console_table": "report",
    "headline_table": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
