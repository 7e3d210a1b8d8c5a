"""Score arithmetic on plain arrays: accuracy with a location-clustered CI (Wilson score with
a CR2 effective sample size and a t quantile: `geoxray.score.intervals`), and the
choice-bias figures (H_norm, KL, KL to uniform, p_mode, a_mode) from answer counts or from
expected option probabilities, with location-bootstrap CIs. Pure numpy; `docs/metrics.md`
gives the definitions.

Nothing here knows a task: callers pass the options (from `geoxray.bench.tasks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from geoxray.score.intervals import wilson_cluster_ci

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
# Bootstrap draws are made in chunks of at most this many cluster indices (8 bytes each), so
# memory stays bounded however many locations a group has.
_MAX_DRAWS_PER_CHUNK = 1 << 22


# --- accuracy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Accuracy:
    n: int  # all items, valid or not
    correct: int
    invalid: int  # items without a parsed option (counted as wrong)
    accuracy: float  # correct / n; NaN when n == 0
    ci_low: float  # cluster Wilson-t CI over locations (NaN with < 2 locations)
    ci_high: float


def is_correct(pred: Sequence[Any], gold: Sequence[Any]) -> np.ndarray:
    """Boolean per item: a parsed prediction equal to the gold option. A missing prediction
    (None, or pandas' NaN) never matches."""
    return np.fromiter((isinstance(p, str) and p == g for p, g in zip(pred, gold, strict=True)),
                       dtype=bool, count=len(pred))


def cluster_bootstrap_ci(correct: Sequence[bool] | np.ndarray, clusters: Sequence[Any],
                         n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
                         level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Percentile CI of the mean of `correct`, resampling whole clusters with replacement.

    Each resample draws G cluster indices uniformly (G = number of distinct clusters) and
    takes every item of every drawn cluster, so its statistic is
    sum(hits[drawn]) / sum(sizes[drawn]). Vectorised: per-cluster hits and sizes come from
    bincount, resamples are rows of an index matrix (drawn in bounded chunks, consuming the
    generator exactly as B successive `rng.integers(0, G, size=G)` calls would).
    """
    y = np.asarray(correct, dtype=np.float64)
    if y.size == 0:
        return math.nan, math.nan
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.ravel()
    if codes.size != y.size:
        raise ValueError(f"{y.size} outcomes but {codes.size} cluster labels")
    n_clusters = int(codes.max()) + 1
    hits = np.bincount(codes, weights=y, minlength=n_clusters)
    sizes = np.bincount(codes, minlength=n_clusters).astype(np.float64)

    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n_clusters)
    for start in range(0, n_boot, rows_per_chunk):  # chunks of resamples, not one per resample
        rows = min(rows_per_chunk, n_boot - start)
        drawn = rng.integers(0, n_clusters, size=(rows, n_clusters))
        stats[start:start + rows] = hits[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    alpha = 1.0 - level
    low, high = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def is_valid(pred: Any, options: Sequence[str] | None = None) -> bool:
    """A parsed answer: a string, and one of `options` when they are given."""
    return isinstance(pred, str) and (options is None or pred in options)


def accuracy(pred: Sequence[Any], gold: Sequence[Any], clusters: Sequence[Any], *,
             options: Sequence[str] | None = None, n_boot: int = DEFAULT_N_BOOT,
             seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> Accuracy:
    """Accuracy over all items (an invalid answer is wrong) and its CI over `clusters`, each
    item's location (`intervals.wilson_cluster_ci`: it holds its level from 8 locations,
    where the percentile bootstrap covers ~89%). An answer is invalid when it is not
    `is_valid` (None, NaN, or outside `options` when given). `n_boot` and `seed` are kept
    for callers; the accuracy interval is analytic and uses neither."""
    n = len(pred)
    if n == 0:
        return Accuracy(0, 0, 0, math.nan, math.nan, math.nan)
    hit = is_correct(pred, gold)
    invalid = sum(1 for p in pred if not is_valid(p, options))
    low, high = wilson_cluster_ci(hit, clusters, level=level)
    return Accuracy(n, int(hit.sum()), invalid, float(hit.mean()), low, high)


# --- choice bias -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bias:
    K: int  # number of options of the task
    n: int  # all items of the group
    n_valid: int  # items the distribution is taken over
    h_norm: float  # -sum p ln p / ln K, in [0, 1]
    kl: float  # sum p ln(p / q); inf when p puts mass where q has none
    kl_uniform: float  # sum p ln(p K) = ln K - H
    p_mode: float  # max_k p_k
    mode_option: str | None  # argmax, first in option order on ties
    a_mode: float  # q at the mode option
    invalid_rate: float  # (n - n_valid) / n
    shares: tuple[float, ...]  # p, in option order
    gold_shares: tuple[float, ...]  # q, in option order


def entropy_norm(p: np.ndarray) -> float:
    """Shannon entropy of `p` (natural log, 0 ln 0 = 0) divided by ln K, K = len(p)."""
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum() / math.log(p.size))
    return min(1.0, max(0.0, h))  # clip rounding (and -0.0) to the true range [0, 1]


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats, 0 ln(0/q) = 0. Where p_k > 0 and q_k = 0 the divergence is
    infinite: we return inf rather than smooth, so the number never hides that the answers
    use an option the gold never takes on these items."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    on = p > 0
    if np.any(q[on] <= 0):
        return math.inf
    return float((p[on] * np.log(p[on] / q[on])).sum())


def bias_from_shares(p: np.ndarray, q: np.ndarray, options: Sequence[str], n: int,
                     n_valid: int) -> Bias:
    """Bias figures of an answer distribution `p` against the gold distribution `q`, both
    over `options`. With n_valid == 0 every figure is NaN and mode_option None."""
    K = len(options)
    if K < 2:
        raise ValueError(f"a task needs at least 2 options, got {K}")
    invalid_rate = (n - n_valid) / n if n > 0 else math.nan
    if n_valid == 0:
        nan_k = (math.nan,) * K
        return Bias(K, n, 0, math.nan, math.nan, math.nan, math.nan, None, math.nan,
                    invalid_rate, nan_k, nan_k)
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    mode = int(np.argmax(p))  # first maximum: ties go to the earlier option
    return Bias(
        K=K, n=n, n_valid=n_valid,
        h_norm=entropy_norm(p),
        kl=kl_divergence(p, q),
        kl_uniform=kl_divergence(p, np.full(K, 1.0 / K)),
        p_mode=float(p[mode]), mode_option=options[mode], a_mode=float(q[mode]),
        invalid_rate=invalid_rate,
        shares=tuple(float(x) for x in p), gold_shares=tuple(float(x) for x in q),
    )


def option_counts(values: Iterable[Any], options: Sequence[str]) -> np.ndarray:
    """How many of `values` equal each option; values outside the options are not counted."""
    position = {o: i for i, o in enumerate(options)}
    counts = np.zeros(len(options), dtype=np.int64)
    for v in values:
        i = position.get(v) if isinstance(v, str) else None
        if i is not None:
            counts[i] += 1
    return counts


def choice_bias(pred: Sequence[Any], gold: Sequence[Any], options: Sequence[str]) -> Bias:
    """Bias of the parsed answers. Valid items are those whose `pred` is one of `options`;
    p is the share of valid answers on each option, q the gold share over the same items."""
    valid = [(p, g) for p, g in zip(pred, gold, strict=True) if is_valid(p, options)]
    n_valid = len(valid)
    if n_valid == 0:
        return bias_from_shares(np.zeros(len(options)), np.zeros(len(options)), options,
                                len(pred), 0)
    p = option_counts((v[0] for v in valid), options) / n_valid
    q = option_counts((v[1] for v in valid), options) / n_valid
    return bias_from_shares(p, q, options, len(pred), n_valid)


def prob_vector(option_probs: Any, options: Sequence[str]) -> np.ndarray | None:
    """An item's option probabilities as a vector over `options`, renormalised to sum 1.

    Accepts a dict, or the list of (key, value) pairs that pyarrow gives for a map column.
    Options absent from the mapping count 0. Returns None when there is nothing usable:
    missing, malformed, non-finite or negative values, or zero total mass.
    """
    if option_probs is None or (isinstance(option_probs, float) and math.isnan(option_probs)):
        return None
    try:
        mapping = (option_probs if isinstance(option_probs, Mapping)
                   else {k: v for k, v in option_probs})
        vec = np.array([float(mapping.get(o, 0.0) or 0.0) for o in options], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    total = vec.sum()
    if not np.all(np.isfinite(vec)) or np.any(vec < 0) or total <= 0:
        return None
    return vec / total


def expected_bias(option_probs: Sequence[Any], gold: Sequence[Any],
                  options: Sequence[str]) -> Bias:
    """Bias of the expected answer distribution: p_k is the mean of P(option k) over the
    items with usable option probabilities (see `prob_vector`), q the gold share over those
    same items. Items without probabilities count towards invalid_rate."""
    rows, golds = [], []
    for probs, g in zip(option_probs, gold, strict=True):
        vec = prob_vector(probs, options)
        if vec is not None:
            rows.append(vec)
            golds.append(g)
    n_valid = len(rows)
    if n_valid == 0:
        return bias_from_shares(np.zeros(len(options)), np.zeros(len(options)), options,
                                len(gold), 0)
    p = np.mean(np.vstack(rows), axis=0)
    q = option_counts(golds, options) / n_valid
    return bias_from_shares(p, q, options, len(gold), n_valid)


# --- bias intervals ----------------------------------------------------------------------------
BIAS_CI_FIGURES = ("h_norm", "kl_uniform", "p_mode")


def _figures(p: np.ndarray) -> np.ndarray:
    """Rows of distributions p (B x K) -> columns h_norm, kl_uniform, p_mode (B x 3)."""
    K = p.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = -plogp.sum(axis=1)
    return np.column_stack([np.clip(h / math.log(K), 0.0, 1.0),
                            np.clip(math.log(K) - h, 0.0, None), p.max(axis=1)])


def bias_bootstrap_ci(shares: np.ndarray, clusters: Sequence[Any], *,
                      n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
                      level: float = DEFAULT_LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile location-bootstrap CIs of h_norm, kl_uniform and p_mode.

    `shares` is one row per valid item over the task's options: one-hot for an answer count,
    the renormalised option probabilities for an expected distribution. Each resample draws
    the G locations with replacement (rows of rng.integers(0, G, size=(B, G)), as in
    `cluster_bootstrap_ci`), sums their rows and normalises. NaN with no rows or one location.
    Note: p_mode's bootstrap distribution sits above its estimate when options are near-tied
    (a max is biased upward); the interval is a percentile interval, read it as such."""
    x = np.asarray(shares, dtype=np.float64)
    nan = {name: (math.nan, math.nan) for name in BIAS_CI_FIGURES}
    if x.ndim != 2 or x.shape[0] == 0:
        return nan
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.ravel()
    G = int(codes.max()) + 1
    if G < 2:
        return nan
    per_loc = np.zeros((G, x.shape[1]))
    np.add.at(per_loc, codes, x)
    rng = np.random.default_rng(seed)
    figures = np.empty((n_boot, len(BIAS_CI_FIGURES)))
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // G)
    for start in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - start)
        drawn = rng.integers(0, G, size=(rows, G))
        # times each location is drawn in each resample, then one matrix product
        weights = np.bincount((np.arange(rows)[:, None] * G + drawn).ravel(),
                              minlength=rows * G).reshape(rows, G)
        totals = weights @ per_loc
        figures[start:start + rows] = _figures(totals / totals.sum(axis=1, keepdims=True))
    alpha = 1.0 - level
    low, high = np.quantile(figures, [alpha / 2, 1 - alpha / 2], axis=0)
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(BIAS_CI_FIGURES)}


def share_rows(pred: Sequence[Any], options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(one-hot rows of the valid answers, their positions in `pred`)."""
    position = {o: i for i, o in enumerate(options)}
    keep = [i for i, p in enumerate(pred) if is_valid(p, options)]
    x = np.zeros((len(keep), len(options)))
    x[np.arange(len(keep)), [position[pred[i]] for i in keep]] = 1.0
    return x, np.asarray(keep, dtype=np.int64)


def prob_rows(option_probs: Sequence[Any], options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(renormalised probability rows of the items that have usable ones, their positions)."""
    rows, keep = [], []
    for i, probs in enumerate(option_probs):
        vec = prob_vector(probs, options)
        if vec is not None:
            rows.append(vec)
            keep.append(i)
    x = np.vstack(rows) if rows else np.zeros((0, len(options)))
    return x, np.asarray(keep, dtype=np.int64)
