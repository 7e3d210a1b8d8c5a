"""Geometric consistency and prior-corrected scores from predictions of item variants
(`geoxray.bench.variants`). Pure functions on prediction frames with, besides the usual
columns (model, decode, task, answer, pred, option_probs), `base_item_id` (the original item)
and `variant` (`identity` for the original).

Per (model, decode, task), over the base items answered under ALL of the task's variants:
- `circular_accuracy`: share of base items answered right on every variant (CircularEval);
- `flip_rate`: share of base items whose answers, mapped back through each variant's label
  map to the original item's frame, are not all the same: the answer did not move with the
  geometry (an invalid answer counts as a flip). Under the identity label maps of the
  localization tasks this is plain disagreement between rotations;
- `acc_<variant>`: accuracy on each variant;
- `rstd`: the standard deviation over options of the per-option recall (accuracy on the
  items whose gold is that option), pooled over variants (population std, 0..sqrt(K-1)/K).
Prior-corrected accuracy (PriDe): `pride_table`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from geoxray.bench.tasks import TASK_BY_NAME, get_task
from geoxray.bench.variants import IDENTITY, inverse_label, permutation, variants
from geoxray.score import debias, metrics

GROUP = ["model", "decode", "task"]
CONSISTENCY_COLUMNS = ["model", "decode", "task", "task_number", "n_base", "variants",
                       "accuracy_identity", "circular_accuracy", "flip_rate", "rstd"]
PRIDE_COLUMNS = ["model", "decode", "task", "task_number", "n_estimate", "n", "accuracy_raw",
                 "accuracy_debiased", "prior", "prior_h_norm"]


def primary_rows(preds: pd.DataFrame) -> pd.DataFrame:
    """The rows of the original items (no `variant` column, or variant null or `identity`):
    what accuracy, bias and comparisons are computed on, so variants never inflate counts."""
    if "variant" not in preds.columns:
        return preds
    keep = preds["variant"].isna() | (preds["variant"] == IDENTITY)
    return preds if keep.all() else preds[keep].reset_index(drop=True)


def _with_identity(g: pd.DataFrame) -> pd.DataFrame:
    """A row without a variant is the original item (e.g. reused from a plain run): variant
    `identity`, base_item_id its own item_id."""
    variant = g["variant"].where(g["variant"].notna(), IDENTITY)
    base = g["base_item_id"]
    if "item_id" in g.columns:
        base = base.where(base.notna(), g["item_id"])
    return g.assign(variant=variant, base_item_id=base)


def _complete(g: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """Rows of the base items that have every variant in `names` (one row each)."""
    g = _with_identity(g)
    g = g[g["variant"].isin(names)].drop_duplicates(["base_item_id", "variant"])
    counts = g.groupby("base_item_id")["variant"].nunique()
    full = counts.index[counts == len(names)]
    return g[g["base_item_id"].isin(full)]


def recall_std(pred, gold, options) -> float:
    """Population std over options of recall_k = accuracy on the items with gold k (options
    that are never gold are left out)."""
    pred, gold = np.asarray(pred, dtype=object), np.asarray(gold, dtype=object)
    recalls = [float(np.mean(pred[gold == o] == o)) for o in options if np.any(gold == o)]
    return float(np.std(recalls)) if recalls else float("nan")


def consistency_scores(rows: pd.DataFrame, task: str) -> dict:
    """The figures of one (model, decode, task) group (see the module doc)."""
    spec = get_task(task)
    names = variants(task)
    g = _complete(rows, names)
    n_base = g["base_item_id"].nunique()
    out = {"n_base": n_base, "variants": len(names)}
    if n_base == 0:
        return {**out, "accuracy_identity": np.nan, "circular_accuracy": np.nan,
                "flip_rate": np.nan, "rstd": np.nan, **{f"acc_{v}": np.nan for v in names}}
    right = pd.Series(metrics.is_correct(g["pred"].tolist(), g["answer"].tolist()),
                      index=g.index)
    back = [inverse_label(task, v, p if metrics.is_valid(p, spec.options) else None)
            for v, p in zip(g["variant"], g["pred"])]
    frame = g.assign(right=right, back=back)
    per_base = frame.groupby("base_item_id")
    circular = per_base["right"].all()
    flipped = per_base["back"].agg(lambda b: b.isna().any() or b.nunique() > 1)
    out.update({
        "accuracy_identity": float(frame.loc[frame["variant"] == IDENTITY, "right"].mean()),
        "circular_accuracy": float(circular.mean()), "flip_rate": float(flipped.mean()),
        "rstd": recall_std(g["pred"].tolist(), g["answer"].tolist(), spec.options)})
    for v in names:
        out[f"acc_{v}"] = float(frame.loc[frame["variant"] == v, "right"].mean())
    return out


def consistency_table(preds: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, decode, task) with variants: CONSISTENCY_COLUMNS then the
    per-variant accuracies `acc_<variant>` (columns of every task present)."""
    rows = []
    known = preds[preds["task"].isin(list(TASK_BY_NAME))]
    for (model, decode, task), g in known.groupby(GROUP, sort=False):
        rows.append({"model": model, "decode": decode, "task": task,
                     "task_number": get_task(task).number, **consistency_scores(g, task)})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=CONSISTENCY_COLUMNS)
    extra = [c for c in table.columns if c.startswith("acc_")]
    return table.sort_values(["model", "decode", "task_number"], kind="stable")[
        CONSISTENCY_COLUMNS + extra].reset_index(drop=True)


# --- PriDe -----------------------------------------------------------------------------------
def estimation_items(base_ids, fraction: float) -> list:
    """A deterministic subset (the first `fraction` of the ids in sorted order, at least one):
    content hashes sort in no meaningful order, so this is a fixed pseudo-random sample."""
    ids = sorted(set(base_ids))
    return ids[:max(1, int(round(fraction * len(ids))))] if ids else []


def pride_scores(rows: pd.DataFrame, task: str, fraction: float = 0.2) -> dict | None:
    """Prior over option labels from the variants of a `fraction` of the base items, and
    the raw and prior-corrected argmax accuracy on the identity rows of all the others.
    None where the task's variants do not identify a prior or no item has probabilities."""
    spec = get_task(task)
    names = variants(task)
    perms = np.vstack([permutation(task, v) for v in names])
    try:
        debias.check_latin(perms)
    except ValueError:
        return None
    g = _complete(rows, names)
    vectors = [metrics.prob_vector(p, spec.options) for p in g["option_probs"]]
    g = g.assign(vec=vectors)
    has = g.groupby("base_item_id")["vec"].agg(lambda v: all(x is not None for x in v))
    usable = list(has.index[has])
    chosen = estimation_items(usable, fraction)
    if not chosen:
        return None
    est = g[g["base_item_id"].isin(chosen)]
    order = {v: i for i, v in enumerate(names)}
    probs = np.stack([np.vstack([vec for _, vec in sorted(
        zip(part["variant"].map(order), part["vec"]), key=lambda t: t[0])])
        for _, part in est.groupby("base_item_id")])
    prior = debias.pride_prior(probs, perms)
    rows = _with_identity(rows)
    held = rows[(rows["variant"] == IDENTITY) & ~rows["base_item_id"].isin(chosen)]
    if held.empty:  # every item went into the estimate: score them all
        held = rows[rows["variant"] == IDENTITY]
    probs_held = held["option_probs"].tolist()
    gold = held["answer"].tolist()
    raw = debias.raw_predictions(probs_held, spec.options)
    deb = debias.debiased_predictions(probs_held, spec.options, prior)
    return {"n_estimate": len(chosen), "n": len(held),
            "accuracy_raw": float(metrics.is_correct(raw, gold).mean()),
            "accuracy_debiased": float(metrics.is_correct(deb, gold).mean()),
            "prior": " ".join(f"{o}:{p:.3f}" for o, p in zip(spec.options, prior)),
            "prior_h_norm": debias.prior_entropy(prior)}


def pride_table(preds: pd.DataFrame, fraction: float = 0.2) -> pd.DataFrame:
    """PRIDE_COLUMNS per (model, decode, task) where a prior can be estimated."""
    rows = []
    known = preds[preds["task"].isin(list(TASK_BY_NAME))]
    for (model, decode, task), g in known.groupby(GROUP, sort=False):
        scores = pride_scores(g, task, fraction)
        if scores is not None:
            rows.append({"model": model, "decode": decode, "task": task,
                         "task_number": get_task(task).number, **scores})
    return pd.DataFrame(rows, columns=PRIDE_COLUMNS)
