"""Predictions (one row per item, model and decode mode) -> score tables: accuracy with CIs
per task and instance, choice bias per task, option shares, invalid counts by reason, and the
task x model leaderboard. Task facts come from `geoxray.bench.tasks` only.

Row order everywhere: model, decode, task number, then (accuracy) instance `all` first and
the instances alphabetically; (bias) source `counts` before `expected`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoxray.bench.parse import LENIENT_ONLY
from geoxray.bench.tasks import TASK_BY_NAME, get_task
from geoxray.score import metrics
from geoxray.score.metrics import DEFAULT_N_BOOT, DEFAULT_SEED

ALL = "all"  # the instance label of a task's total
GROUP = ["model", "decode", "task"]
ACCURACY_COLUMNS = ["model", "decode", "task", "task_number", "task_title", "instance", "K",
                    "n", "correct", "invalid", "failed", "accuracy", "ci_low", "ci_high",
                    "chance"]
BIAS_COLUMNS = ["model", "decode", "task", "task_number", "K", "n", "n_valid", "h_norm", "kl",
                "kl_uniform", "p_mode", "mode_option", "a_mode", "invalid_rate", "source",
                "h_norm_low", "h_norm_high", "kl_uniform_low", "kl_uniform_high",
                "p_mode_low", "p_mode_high"]
SHARE_COLUMNS = ["model", "decode", "task", "task_number", "source", "option", "share",
                 "gold_share", "n_valid"]
INVALID_COLUMNS = ["model", "decode", "task", "task_number", "reason", "count", "share"]
UNKNOWN_TASK = "unknown_task"  # invalid reason of rows whose task is not in the task table
_PREPARED = "geoxray.score.prepared"  # attrs flag: `prepare` already ran on this frame


# --- input -----------------------------------------------------------------------------------
def _null_to_none(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), None)


def prepare(preds: pd.DataFrame) -> pd.DataFrame:
    """A clean copy of a predictions frame: required columns checked, optional ones filled
    (decode "", instance "unknown", location per item when missing, failed False), nulls
    as None. A `failed` row is an item whose engine call failed: counted, never scored."""
    missing = [c for c in ("model", "task", "answer", "pred") if c not in preds.columns]
    if missing:
        raise ValueError(f"predictions lack required column(s) {missing}")
    if preds.attrs.get(_PREPARED):
        return preds
    df = preds.reset_index(drop=True).copy()
    for name, default in (("decode", ""), ("instance", "unknown"), ("location", None),
                          ("invalid_reason", None), ("option_probs", None)):
        if name not in df.columns:
            df[name] = default
    for name in ("model", "decode", "task", "instance", "location", "answer", "pred",
                 "invalid_reason", "option_probs"):
        df[name] = _null_to_none(df[name])
    for name, default in (("model", "?"), ("decode", ""), ("instance", "unknown")):
        df[name] = [default if v is None else str(v) for v in df[name]]
    # An item without a location is its own resampling cluster.
    df["location"] = [f"item:{i}" if loc is None else str(loc)
                      for i, loc in zip(df.index, df["location"])]
    df["failed"] = (df["failed"].fillna(False).astype(bool) if "failed" in df.columns
                    else False)
    df.attrs[_PREPARED] = True
    return df


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that have an answer (failed engine calls are not answers, not even wrong)."""
    return df[~df["failed"]]


def _split_known(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    known = df["task"].isin(list(TASK_BY_NAME))
    if not known.all():
        bad = sorted({str(t) for t in df.loc[~known, "task"]})
        warnings.warn(f"{int((~known).sum())} prediction rows have unknown task(s) {bad}; "
                      f"they are counted in the invalid table as {UNKNOWN_TASK!r}")
    return df[known], df[~known]


def _groups(df: pd.DataFrame):
    """(model, decode, task spec, rows) per group, in the documented order."""
    for (model, decode, task), g in df.groupby(GROUP, sort=False):
        yield model, decode, get_task(task), g


def _ordered(table: pd.DataFrame, columns: list[str], by: list[str]) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame(columns=columns)
    return table.sort_values(by, kind="stable").reset_index(drop=True)[columns]


# --- tables ----------------------------------------------------------------------------------
def accuracy_table(preds: pd.DataFrame, *, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """One row per (model, decode, task, instance) plus instance `all` for the task total:
    n, correct, invalid, accuracy (invalid = wrong) and its 95% CI over locations, over the
    answered items; `failed` counts the items whose engine call failed (not in n)."""
    df, _ = _split_known(prepare(preds))
    rows = []
    for model, decode, spec, g in _groups(df):
        parts = [(ALL, g)] + sorted(g.groupby("instance", sort=False), key=lambda kv: kv[0])
        for instance, items in parts:
            part = _scored(items)
            acc = metrics.accuracy(part["pred"].tolist(), part["answer"].tolist(),
                                   part["location"].tolist(), options=spec.options,
                                   n_boot=n_boot, seed=seed)
            rows.append({"model": model, "decode": decode, "task": spec.name,
                         "task_number": spec.number, "task_title": spec.title,
                         "instance": instance, "K": spec.K, "n": acc.n,
                         "correct": acc.correct, "invalid": acc.invalid,
                         "failed": int(items["failed"].sum()),
                         "accuracy": acc.accuracy, "ci_low": acc.ci_low,
                         "ci_high": acc.ci_high, "chance": 1.0 / spec.K,
                         "_rank": 0 if instance == ALL else 1})
    table = pd.DataFrame(rows, columns=ACCURACY_COLUMNS + ["_rank"])
    return _ordered(table, ACCURACY_COLUMNS, ["model", "decode", "task_number", "_rank",
                                              "instance"])


def _bias_rows(df: pd.DataFrame, n_boot: int = 0, seed: int = DEFAULT_SEED):
    """(group fields, source, Bias, CIs) for every group: `counts` always, `expected` where
    any item carries option probabilities. CIs (`metrics.bias_bootstrap_ci`) only when
    n_boot > 0, else empty."""
    for model, decode, spec, g in _groups(df):
        key = {"model": model, "decode": decode, "task": spec.name,
               "task_number": spec.number}
        gold = g["answer"].tolist()
        locations = g["location"].to_numpy()
        pred = g["pred"].tolist()
        ci = {}
        if n_boot > 0:
            x, keep = metrics.share_rows(pred, spec.options)
            ci = metrics.bias_bootstrap_ci(x, locations[keep], n_boot=n_boot, seed=seed)
        yield key, "counts", metrics.choice_bias(pred, gold, spec.options), ci
        probs = g["option_probs"].tolist()
        if any(p is not None for p in probs):
            if n_boot > 0:
                x, keep = metrics.prob_rows(probs, spec.options)
                ci = metrics.bias_bootstrap_ci(x, locations[keep], n_boot=n_boot, seed=seed)
            yield key, "expected", metrics.expected_bias(probs, gold, spec.options), ci


def _ci_columns(ci: dict) -> dict:
    return {f"{name}_{end}": ci.get(name, (np.nan, np.nan))[i]
            for name in metrics.BIAS_CI_FIGURES for i, end in enumerate(("low", "high"))}


def bias_table(preds: pd.DataFrame, *, n_boot: int = DEFAULT_N_BOOT,
               seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Choice bias per (model, decode, task) over the valid answers (source `counts`), and
    from the expected option distribution where option_probs exist (source `expected`),
    with percentile location-bootstrap CIs of h_norm, kl_uniform and p_mode."""
    df, _ = _split_known(_scored(prepare(preds)))
    rows = [{**key, "K": b.K, "n": b.n, "n_valid": b.n_valid, "h_norm": b.h_norm,
             "kl": b.kl, "kl_uniform": b.kl_uniform, "p_mode": b.p_mode,
             "mode_option": b.mode_option, "a_mode": b.a_mode,
             "invalid_rate": b.invalid_rate, "source": source, **_ci_columns(ci)}
            for key, source, b, ci in _bias_rows(df, n_boot, seed)]
    return _ordered(pd.DataFrame(rows, columns=BIAS_COLUMNS), BIAS_COLUMNS,
                    ["model", "decode", "task_number", "source"])


def option_shares(preds: pd.DataFrame) -> pd.DataFrame:
    """Long format: the share of answers (or expected probability) on each option of each
    task, beside the gold share over the same items. Options in the task's order."""
    df, _ = _split_known(_scored(prepare(preds)))
    rows = []
    for key, source, b, _ in _bias_rows(df):
        options = get_task(key["task"]).options
        for i, option in enumerate(options):
            rows.append({**key, "source": source, "option": option, "share": b.shares[i],
                         "gold_share": b.gold_shares[i], "n_valid": b.n_valid, "_i": i})
    table = pd.DataFrame(rows, columns=SHARE_COLUMNS + ["_i"])
    return _ordered(table, SHARE_COLUMNS, ["model", "decode", "task_number", "source", "_i"])


def invalid_reasons(preds: pd.DataFrame) -> pd.DataFrame:
    """Invalid items per (model, decode, task, reason), with their share of the group's items.
    Rows of tasks outside the task table appear with reason `unknown_task`."""
    df, unknown = _split_known(_scored(prepare(preds)))
    rows = []
    for model, decode, spec, g in _groups(df):
        bad = [r if r is not None else "unspecified"
               for p, r in zip(g["pred"], g["invalid_reason"])
               if not metrics.is_valid(p, spec.options)]
        for reason, count in pd.Series(bad, dtype=object).value_counts().items():
            rows.append({"model": model, "decode": decode, "task": spec.name,
                         "task_number": spec.number, "reason": reason, "count": int(count),
                         "share": count / len(g)})
    for (model, decode, task), g in unknown.groupby(GROUP, sort=False):
        rows.append({"model": model, "decode": decode, "task": task, "task_number": np.nan,
                     "reason": UNKNOWN_TASK, "count": len(g), "share": 1.0})
    table = pd.DataFrame(rows, columns=INVALID_COLUMNS)
    table["_neg"] = -table["count"]
    return _ordered(table, INVALID_COLUMNS, ["model", "decode", "task_number", "_neg",
                                             "reason"])


LENIENT_COLUMNS = ["model", "decode", "task", "task_number", "items", "lenient_only",
                   "lenient_only_share"]


def lenient_only_counts(preds: pd.DataFrame) -> pd.DataFrame:
    """Per (model, decode, task): how many replies only a lenient parser would have accepted
    (invalid reason `lenient_only`, bench/parse.py), so a reader sees whether parsing
    leniency could move the task's score. A column for the report's tables."""
    df, _ = _split_known(prepare(preds))
    rows = []
    for model, decode, spec, g in _groups(df):
        n = int((g["invalid_reason"] == LENIENT_ONLY).sum())
        rows.append({"model": model, "decode": decode, "task": spec.name,
                     "task_number": spec.number, "items": len(g), "lenient_only": n,
                     "lenient_only_share": n / len(g) if len(g) else np.nan})
    table = pd.DataFrame(rows, columns=LENIENT_COLUMNS)
    return _ordered(table, LENIENT_COLUMNS, ["model", "decode", "task_number"])


# --- leaderboard -----------------------------------------------------------------------------
def series_labels(table: pd.DataFrame) -> pd.Series:
    """Column label of a (model, decode) pair: the model, plus `[decode]` when the table
    holds more than one decode mode."""
    several = table["decode"].nunique() > 1
    return pd.Series([f"{m} [{d}]" if several else str(m)
                      for m, d in zip(table["model"], table["decode"])], index=table.index)


def task_label(task: str) -> str:
    spec = get_task(task)
    return f"{spec.number}. {spec.title}"


def _pivot(table: pd.DataFrame, value: str) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame()
    t = table.assign(series=series_labels(table), task_label=table["task"].map(task_label))
    order = list(dict.fromkeys(t.sort_values("task_number", kind="stable")["task_label"]))
    pivot = t.pivot_table(index="task_label", columns="series", values=value, aggfunc="first",
                          sort=False, dropna=False)
    pivot = pivot.reindex(order)
    pivot.index.name, pivot.columns.name = "task", None
    return pivot


def leaderboard(preds: pd.DataFrame | None = None, *, accuracy: pd.DataFrame | None = None,
                bias: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Task x model pivots: `accuracy` (task totals, plus a `mean over tasks` row: the
    unweighted mean of the task accuracies), `p_mode` and `h_norm` (bias from counts).
    Pass precomputed `accuracy`/`bias` tables to skip recomputing them from `preds`."""
    if accuracy is None:
        accuracy = accuracy_table(preds)
    if bias is None:
        bias = bias_table(preds)
    acc = _pivot(accuracy[accuracy["instance"] == ALL], "accuracy")
    if not acc.empty:
        acc.loc["mean over tasks"] = acc.mean(axis=0, skipna=False)
    counts = bias[bias["source"] == "counts"]
    return {"accuracy": acc, "p_mode": _pivot(counts, "p_mode"),
            "h_norm": _pivot(counts, "h_norm")}


# --- writing ---------------------------------------------------------------------------------
@dataclass
class Tables:
    accuracy: pd.DataFrame
    bias: pd.DataFrame
    option_shares: pd.DataFrame
    invalid: pd.DataFrame
    leaderboard: dict[str, pd.DataFrame] = field(default_factory=dict)


def compute_tables(preds: pd.DataFrame, *, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = DEFAULT_SEED) -> Tables:
    df = prepare(preds)
    with warnings.catch_warnings():  # unknown tasks: warn once, from invalid_reasons
        warnings.simplefilter("ignore")
        acc = accuracy_table(df, n_boot=n_boot, seed=seed)
        bias = bias_table(df, n_boot=n_boot, seed=seed)
        shares = option_shares(df)
    invalid = invalid_reasons(df)
    return Tables(acc, bias, shares, invalid, leaderboard(accuracy=acc, bias=bias))


def format_cell(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats to `digits` places, inf as `inf`, NaN/None blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
    """A GitHub Markdown table (floats to `digits` places, NaN blank)."""
    if index:
        table = table.reset_index()
    if table.empty and not len(table.columns):
        return "_(no rows)_\n"
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---"
                            for c in table.columns) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v, digits).replace("|", "\\|")
                                           for v in row) + " |")
    return "\n".join(lines) + "\n"


def table_files(tables: Tables) -> dict[str, pd.DataFrame]:
    """Every table by its file stem; leaderboard pivots keep the task as a column."""
    files = {"accuracy": tables.accuracy, "bias": tables.bias,
             "option_shares": tables.option_shares, "invalid": tables.invalid}
    for name, pivot in tables.leaderboard.items():
        files[f"leaderboard_{name}"] = pivot.reset_index() if not pivot.empty else pivot
    return files


def write_tables(preds: pd.DataFrame | None, out_dir: str | Path, *,
                 tables: Tables | None = None, n_boot: int = DEFAULT_N_BOOT,
                 seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write out_dir/tables/{accuracy,bias,option_shares,invalid,leaderboard_*}.{csv,md}.
    Returns the paths by file name ("accuracy.csv", "accuracy.md", ...)."""
    if tables is None:
        tables = compute_tables(preds, n_boot=n_boot, seed=seed)
    folder = Path(out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for stem, table in table_files(tables).items():
        csv, md = folder / f"{stem}.csv", folder / f"{stem}.md"
        table.to_csv(csv, index=False)
        md.write_text(to_markdown(table))
        paths[csv.name], paths[md.name] = csv, md
    return paths
