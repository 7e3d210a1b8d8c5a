"""Paired comparisons between runs: `geoxray compare RUN_A RUN_B [...]`.

A RUN is a run folder (with predictions/) or a sweep folder (with sweep.json: each finished
point is a run). Every (model, decode) found is a series; every pair of series is compared
per task on the items both answered, which must be the same items: same item ids (content
hashes of the item) and the same gold. Otherwise the comparison is refused, naming the task
and the items that differ, because a difference measured on different items is not paired.

Per (task, pair): both accuracies, their difference with a 95% bootstrap-t CI resampling
locations, McNemar's exact test on the discordant items, and Holm's correction over all
(task, pair) tests of the call. Per (series, task): accuracy, its CI and whether it is
better than chance. Arithmetic: `geoxray.score.paired`; definitions: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from geoxray.bench.tasks import TASK_BY_NAME, get_task
from geoxray.score import metrics, paired
from geoxray.score.consistency import primary_rows
from geoxray.score.tables import series_labels

PAIR_COLUMNS = ["task", "task_number", "a", "b", "n", "locations", "accuracy_a", "accuracy_b",
                "diff", "diff_low", "diff_high", "a_only", "b_only", "p_mcnemar", "p_holm",
                "significant"]
CELL_COLUMNS = ["series", "task", "task_number", "n", "accuracy", "ci_low", "ci_high",
                "chance", "above_chance"]
NEEDED = ("item_id", "model", "decode", "task", "location", "answer", "pred", "variant")
DEFAULT_ALPHA = 0.05


class CompareError(ValueError):
    """The runs cannot be compared item by item (the message says why)."""


@dataclass
class Comparison:
    pairs: pd.DataFrame  # PAIR_COLUMNS
    cells: pd.DataFrame  # CELL_COLUMNS
    notes: list[str] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA


# --- loading ---------------------------------------------------------------------------------
def _read(out_dir: Path) -> pd.DataFrame:
    from geoxray.run import store  # the one reader of predictions/

    table = store.read_predictions(out_dir)
    frame = table.to_pandas() if hasattr(table, "to_pandas") else table
    return primary_rows(frame[[c for c in frame.columns if c in NEEDED]])


def load_runs(paths: list[str | Path]) -> pd.DataFrame:
    """Predictions of every run (or sweep point) named, with a `series` column: the sweep
    point's label, or for a plain run its model (plus `[decode]` when it holds several)."""
    frames = []
    for raw in paths:
        path = Path(raw)
        state = path / "sweep.json"
        if state.is_file():
            points = json.loads(state.read_text()).get("points", {})
            done = {n: e for n, e in points.items() if e.get("status") == "done"}
            if not done:
                raise CompareError(f"{path}: sweep has no finished point")
            for name, entry in done.items():
                frame = _read(path / entry.get("out_dir", name))
                frames.append(frame.assign(series=entry.get("series") or name,
                                           run=str(path / name)))
        elif (path / "predictions").is_dir():
            frame = _read(path)
            frames.append(frame.assign(series=series_labels(frame), run=str(path)))
        else:
            raise CompareError(f"{path}: neither a run folder (predictions/) nor a sweep "
                               "folder (sweep.json)")
    preds = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    _unique_series(preds)
    return preds


def _unique_series(preds: pd.DataFrame) -> None:
    runs = preds.groupby("series")["run"].nunique() if len(preds) else pd.Series(dtype=int)
    clash = runs[runs > 1]
    if len(clash):
        name = clash.index[0]
        where = sorted(preds.loc[preds["series"] == name, "run"].unique())
        raise CompareError(f"series {name!r} appears in several runs {where}; compare runs "
                           "whose models are named apart")


# --- alignment -------------------------------------------------------------------------------
def _items(part: pd.DataFrame) -> pd.DataFrame:
    """One row per item id (first kept), indexed by item id."""
    return part.drop_duplicates("item_id", keep="first").set_index("item_id")


def check_same_items(a: str, items_a: pd.DataFrame, b: str, items_b: pd.DataFrame,
                     task: str) -> None:
    """Refuse (CompareError) unless both series answered exactly the same items of `task`
    with the same gold."""
    ids_a, ids_b = set(items_a.index), set(items_b.index)
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise CompareError(
            f"task {task}: {a!r} and {b!r} did not answer the same items ({len(ids_a)} vs "
            f"{len(ids_b)}; {len(only_a)} only in {a!r}{_examples(only_a)}, {len(only_b)} "
            f"only in {b!r}{_examples(only_b)}). Paired tests need the same items: rerun on "
            "the same benchmark build and task selection")
    gold_b = items_b.loc[items_a.index, "answer"]
    differ = items_a.index[items_a["answer"].to_numpy() != gold_b.to_numpy()]
    if len(differ):
        raise CompareError(f"task {task}: {len(differ)} items have a different gold in "
                           f"{a!r} and {b!r}{_examples(list(differ))}: not the same benchmark")


def _examples(ids: list) -> str:
    return f" (e.g. {', '.join(map(str, ids[:3]))})" if ids else ""


# --- the comparison --------------------------------------------------------------------------
def compare_frame(preds: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA, n_boot: int = 2000,
                  seed: int = 0, series: list[str] | None = None) -> Comparison:
    """Every pair of series, per task both answered. `preds` needs item_id, task, location,
    answer, pred and a `series` column (or model/decode, from which series are named)."""
    if "series" not in preds.columns:
        preds = preds.assign(series=series_labels(preds))
    preds = primary_rows(preds[preds["task"].isin(list(TASK_BY_NAME))])
    names = series or list(dict.fromkeys(preds["series"]))
    if len(names) < 2:
        raise CompareError(f"need at least two series to compare, found {names}")
    by_series = _by_series(preds, names)
    notes: list[str] = []
    rows = []
    for a, b in combinations(names, 2):
        tasks_a, tasks_b = set(by_series[a]), set(by_series[b])
        for task in sorted(tasks_a ^ tasks_b, key=lambda t: get_task(t).number):
            notes.append(f"task {task} only in {(a if task in tasks_a else b)!r}: not "
                         "compared")
        for task in sorted(tasks_a & tasks_b, key=lambda t: get_task(t).number):
            ia, ib = by_series[a][task], by_series[b][task]
            check_same_items(a, ia, b, ib, task)
            ib = ib.loc[ia.index]
            result = paired.paired_test(metrics.is_correct(ia["pred"].tolist(),
                                                           ia["answer"].tolist()),
                                        metrics.is_correct(ib["pred"].tolist(),
                                                           ib["answer"].tolist()),
                                        ia["location"].astype(str).to_numpy(), n_boot=n_boot,
                                        seed=seed)
            rows.append({"task": task, "task_number": get_task(task).number, "a": a, "b": b,
                         **{k: getattr(result, k) for k in (
                             "n", "locations", "accuracy_a", "accuracy_b", "diff", "diff_low",
                             "diff_high", "a_only", "b_only", "p_mcnemar")}})
    pairs = pd.DataFrame(rows, columns=[c for c in PAIR_COLUMNS if c not in ("p_holm",
                                                                             "significant")])
    pairs["p_holm"] = paired.holm(pairs["p_mcnemar"].to_numpy(float)) if len(pairs) else []
    pairs["significant"] = pairs["p_holm"] < alpha
    pairs = pairs.sort_values(["task_number"], kind="stable").reset_index(drop=True)
    return Comparison(pairs[PAIR_COLUMNS], accuracy_cells(by_series), notes, alpha)


def _by_series(preds: pd.DataFrame, names: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    return {s: {t: _items(g) for t, g in preds[preds["series"] == s].groupby("task")}
            for s in names}


def accuracy_cells(by_series: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Per (series, task): accuracy, its CI and whether it is better than chance."""
    cells = []
    for s, tasks in by_series.items():
        for task, items in tasks.items():
            spec = get_task(task)
            acc = metrics.accuracy(items["pred"].tolist(), items["answer"].tolist(),
                                   items["location"].astype(str).tolist(),
                                   options=spec.options)
            cells.append({"series": s, "task": task, "task_number": spec.number, "n": acc.n,
                          "accuracy": acc.accuracy, "ci_low": acc.ci_low,
                          "ci_high": acc.ci_high, "chance": 1.0 / spec.K,
                          "above_chance": paired.above_chance(acc.ci_low, 1.0 / spec.K)})
    return pd.DataFrame(cells, columns=CELL_COLUMNS).sort_values(
        ["task_number"], kind="stable").reset_index(drop=True)


def compare_runs(paths: list[str | Path], **kwargs) -> Comparison:
    return compare_frame(load_runs(paths), **kwargs)


# --- output ----------------------------------------------------------------------------------
def marks(comparison: Comparison) -> pd.DataFrame:
    """Per (task, series): accuracy and its marks. `*` better than chance; `best` the top
    accuracy of the task (every series tied at it); `=` not significantly different from the
    best (Holm-adjusted McNemar at alpha; with ties, against the first best); `<`
    significantly below the best."""
    cells, pairs = comparison.cells, comparison.pairs
    out = []
    for task, part in cells.groupby("task", sort=False):
        top = part["accuracy"].max()
        tied = list(part.loc[part["accuracy"] == top, "series"])  # ties share the best mark
        best = tied[0]
        for r in part.itertuples(index=False):
            if r.series in tied:
                rel = "best"
            else:
                hit = pairs[(pairs["task"] == task) & (((pairs["a"] == best) & (pairs["b"] ==
                            r.series)) | ((pairs["b"] == best) & (pairs["a"] == r.series)))]
                rel = "<" if len(hit) and bool(hit["significant"].iloc[0]) else "="
            out.append({"task": task, "task_number": r.task_number, "series": r.series,
                        "accuracy": r.accuracy, "above_chance": r.above_chance,
                        "vs_best": rel})
    return pd.DataFrame(out, columns=["task", "task_number", "series", "accuracy",
                                      "above_chance", "vs_best"])


def mark_text(accuracy: float, above_chance: bool, vs_best: str) -> str:
    """A leaderboard cell: `0.712*` (better than chance), then `▲` best, `≈` tied with the
    best, nothing when significantly below it."""
    text = "" if accuracy != accuracy else f"{accuracy:.3f}"
    return text + ("*" if above_chance else "") + {"best": " ▲", "=": " ≈"}.get(vs_best, "")


MARK_LEGEND = ("`*` better than chance (the accuracy's 95% CI lies above 1/K); `▲` best on "
               "the task; `≈` not significantly different from the best (McNemar exact, Holm "
               "over all task x pair tests, alpha {alpha}); no mark after the number: "
               "significantly below the best.")


def ranked_leaderboard(preds: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA,
                       n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, Comparison]:
    """Series ranked by their mean accuracy over tasks (unweighted; NaN, ranked last, when a
    series lacks a task), one column of marked cells per task (`mark_text`). Where the
    series cannot be compared item by item, the cells keep only the chance mark and the
    comparison's notes say why."""
    if "series" not in preds.columns:
        preds = preds.assign(series=series_labels(preds))
    preds = preds[preds["task"].isin(list(TASK_BY_NAME))]
    names = list(dict.fromkeys(preds["series"]))
    try:
        comparison = compare_frame(preds, alpha=alpha, n_boot=n_boot, seed=seed, series=names)
    except CompareError as exc:
        empty = pd.DataFrame(columns=PAIR_COLUMNS)
        note = [] if len(names) < 2 else [f"no significance marks: {exc}"]
        comparison = Comparison(empty, accuracy_cells(_by_series(preds, names)), note, alpha)
    m = marks(comparison)
    if m.empty:
        return pd.DataFrame(columns=["rank", "series", "mean accuracy"]), comparison
    tasks = sorted(m["task"].unique(), key=lambda t: get_task(t).number)
    labels = {t: f"{get_task(t).number}. {get_task(t).title}" for t in tasks}
    m["text"] = [mark_text(a, c, v) for a, c, v in zip(m["accuracy"], m["above_chance"],
                                                       m["vs_best"])]
    wide = m.pivot(index="series", columns="task", values="text").reindex(columns=tasks)
    order_in = list(dict.fromkeys(m["series"]))  # ties keep the order the series came in
    mean = m.pivot(index="series", columns="task", values="accuracy").reindex(
        index=order_in, columns=tasks).mean(axis=1, skipna=False)
    order = mean.sort_values(ascending=False, na_position="last", kind="stable").index
    table = pd.DataFrame({"rank": range(1, len(order) + 1), "series": list(order),
                          "mean accuracy": [mean[s] for s in order]})
    for t in tasks:
        table[labels[t]] = [wide.loc[s, t] if isinstance(wide.loc[s, t], str) else ""
                            for s in order]
    return table, comparison


def write_comparison(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    from geoxray.score.tables import to_markdown

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, table in (("compare_pairs", comparison.pairs), ("compare_cells",
                                                              comparison.cells)):
        table.to_csv(folder / f"{stem}.csv", index=False)
        (folder / f"{stem}.md").write_text(to_markdown(table))
        paths[stem] = folder / f"{stem}.csv"
    return paths


def summary_text(comparison: Comparison) -> str:
    from geoxray.score.tables import to_markdown

    shown = comparison.pairs.drop(columns=["task_number"])
    lines = [f"Paired comparisons ({len(shown)} task x pair tests; Holm over all at alpha "
             f"{comparison.alpha}):", to_markdown(shown, digits=3)]
    lines += [f"note: {n}" for n in comparison.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="geoxray compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders and/or sweep folders")
    parser.add_argument("--out", help="write compare_pairs/compare_cells .csv/.md here")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        comparison = compare_runs(args.runs, alpha=args.alpha, n_boot=args.n_boot,
                                  seed=args.seed)
    except CompareError as exc:
        print(f"cannot compare: {exc}", file=sys.stderr)
        return 2
    print(summary_text(comparison))
    if args.out:
        write_comparison(comparison, args.out)
        print(f"tables in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
