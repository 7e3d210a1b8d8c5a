"""Intervals for means over clustered items (items of one location succeed or fail together)
that hold their level with few clusters. Pure numpy and the standard library (no scipy).

- `t_quantile(level, df)`: the two-sided Student-t quantile, exact for integer df (the closed
  form of the t CDF, Abramowitz & Stegun 26.7.3-4, inverted by bisection).
- `ratio_cr2(sums, sizes)`: the ratio estimate sum(y)/sum(m) over clusters and its CR2
  (leverage-corrected, Bell & McCaffrey 2002) cluster-robust standard error.
- `wilson_cluster_ci`: a Wilson score interval whose n is the effective sample size implied
  by the CR2 standard error (n_eff = p(1-p)/se^2, at most the item count) and whose z is the
  t quantile with G-1 degrees of freedom. Measured coverage: docs/metrics.md and
  tests/test_coverage.py.
- `cluster_bootstrap_t_ci`: a studentised (bootstrap-t) location bootstrap for a mean of
  per-item values in any range (used for paired differences).

Why not the percentile bootstrap: with G locations it ignores the G/(G-1) variance deflation
and the t tail, and covers ~89% at G = 8 (measured in docs/metrics.md).
"""
from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

# Beyond this many degrees of freedom the first Cornish-Fisher terms give the t quantile to
# < 1e-7 (the exact sums would take df/2 terms per bisection step).
_LARGE_DF = 2000


def t_abs_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (closed form, finite sums)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, s * math.cos(theta)  # sin * cos * (1 + 2/3 cos^2 + ...)
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return min(1.0, 2.0 / math.pi * (theta + total))
    total, term = 0.0, s  # sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return min(1.0, total)


@lru_cache(maxsize=256)
def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = level: the multiplier of a two-sided `level` interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if df > _LARGE_DF:
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    low, high = z, z
    while t_abs_cdf(high, df) < level:
        high *= 2.0
    for _ in range(100):  # bisection to float precision
        mid = 0.5 * (low + high)
        if t_abs_cdf(mid, df) < level:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * high:
            break
    return 0.5 * (low + high)


def cluster_sums(values: Sequence[float] | np.ndarray,
                 clusters: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of `values` and item count, clusters in sorted label order."""
    y = np.asarray(values, dtype=np.float64)
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    codes = codes.ravel()
    if codes.size != y.size:
        raise ValueError(f"{y.size} values but {codes.size} cluster labels")
    n = int(codes.max()) + 1 if codes.size else 0
    return (np.bincount(codes, weights=y, minlength=n),
            np.bincount(codes, minlength=n).astype(np.float64))


def ratio_cr2(sums: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, CR2 standard error) of sum(sums)/sum(sizes) over the last axis (clusters);
    leading axes are independent problems (e.g. simulated replicates).

    Residual of cluster j: e_j = y_j - est * m_j; its leverage in the ratio fit is m_j / M.
    se^2 = sum_j e_j^2 / (1 - m_j / M) / M^2. With one cluster the se is NaN."""
    sums, sizes = np.asarray(sums, float), np.asarray(sizes, float)
    total = sizes.sum(axis=-1)
    est = sums.sum(axis=-1) / total
    if sizes.shape[-1] < 2:
        return est, np.full_like(est, math.nan)
    resid = sums - est[..., None] * sizes
    keep = np.maximum(1.0 - sizes / total[..., None], 1e-12)
    se = np.sqrt((resid ** 2 / keep).sum(axis=-1)) / total
    return est, se


def wilson_cluster_ci(correct: Sequence[bool] | np.ndarray, clusters: Sequence[Any],
                      level: float = 0.95) -> tuple[float, float]:
    """Interval for the share of `correct` items over clustered items: Wilson's score
    interval with n = the CR2 effective sample size and z = t_{G-1}. NaN with no items or a
    single cluster (no location-to-location variation to measure)."""
    y = np.asarray(correct, dtype=np.float64)
    if y.size == 0:
        return math.nan, math.nan
    sums, sizes = cluster_sums(y, clusters)
    if sizes.size < 2:
        return math.nan, math.nan
    low, high = wilson_from_sums(sums, sizes, level)
    return float(low), float(high)


def wilson_from_sums(sums: np.ndarray, sizes: np.ndarray,
                     level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """`wilson_cluster_ci` from per-cluster hit counts and sizes (last axis: the G >= 2
    clusters; leading axes broadcast, so a simulation scores all replicates at once)."""
    est, se = ratio_cr2(sums, sizes)
    n_items = np.asarray(sizes, float).sum(axis=-1)
    var = est * (1.0 - est)
    # n_eff = p(1-p)/se^2, never more than the items there are; where p is 0 or 1 or se is 0
    # (every location alike) the items count as independent.
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where((se > 0) & (var > 0), np.minimum(n_items, var / se ** 2), n_items)
    z = t_quantile(level, np.shape(sizes)[-1] - 1)
    z2n = z * z / n_eff
    centre = (est + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * np.sqrt(var / n_eff + z2n / (4 * n_eff))
    # The score interval contains the estimate; say so exactly (rounding at 0 or 1 must not
    # leave it a hair outside).
    return (np.minimum(est, np.maximum(0.0, centre - half)),
            np.maximum(est, np.minimum(1.0, centre + half)))


def cluster_bootstrap_t_ci(values: Sequence[float] | np.ndarray, clusters: Sequence[Any],
                           n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """Bootstrap-t interval of sum(values)/n resampling clusters: each resample draws G
    clusters with replacement (rows of rng.integers(0, G, size=(B, G))), computes the
    ratio and its CR2 se, and t* = (est* - est) / se*; the interval is
    (est - q_hi se, est - q_lo se) with q the t* quantiles. Resamples with se* = 0 (all
    drawn clusters alike) carry no t and are dropped. NaN with < 2 clusters."""
    y = np.asarray(values, dtype=np.float64)
    if y.size == 0:
        return math.nan, math.nan
    sums, sizes = cluster_sums(y, clusters)
    G = sizes.size
    if G < 2:
        return math.nan, math.nan
    est, se = (float(v) for v in ratio_cr2(sums, sizes))
    if not se > 0:
        return est, est
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, G, size=(n_boot, G))
    s, m = sums[drawn], sizes[drawn]
    total = m.sum(axis=1)
    est_b = s.sum(axis=1) / total
    resid = s - est_b[:, None] * m
    se_b = np.sqrt((resid ** 2 / (1.0 - m / total[:, None])).sum(axis=1)) / total
    ok = se_b > 1e-12
    if not ok.any():
        return est, est
    t_b = (est_b[ok] - est) / se_b[ok]
    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(t_b, [alpha / 2, 1 - alpha / 2])
    return float(est - q_hi * se), float(est - q_lo * se)
