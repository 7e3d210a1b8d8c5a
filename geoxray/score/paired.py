"""Paired tests between two models answering the same items: McNemar's exact test, Holm's
step-down correction, a location bootstrap-t CI of the accuracy difference, and the
"better than chance" decision. Pure numpy and the standard library.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from geoxray.score.intervals import cluster_bootstrap_t_ci, cluster_sums


def _log_binom_pmf(k: np.ndarray, n: int) -> np.ndarray:
    """ln P(X = k), X ~ Binomial(n, 1/2)."""
    return (math.lgamma(n + 1) - np.vectorize(math.lgamma)(k + 1.0)
            - np.vectorize(math.lgamma)(n - k + 1.0) - n * math.log(2.0))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: b items right only for A,
    c right only for B. Under H0 each discordant item is A's with probability 1/2, so
    p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""
    n, k = int(b) + int(c), min(int(b), int(c))
    if n == 0:
        return 1.0
    if 2 * k == n:
        return 1.0
    logs = _log_binom_pmf(np.arange(k + 1, dtype=float), n)
    top = logs.max()
    tail = math.exp(top) * float(np.exp(logs - top).sum())
    return min(1.0, 2.0 * tail)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), in input order:
    sorted ascending, p_(i) * (m - i + 1) for i = 1..m, made non-decreasing, capped at 1.
    NaN p-values stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class PairedResult:
    n: int  # shared items
    locations: int
    accuracy_a: float
    accuracy_b: float
    diff: float  # accuracy_a - accuracy_b
    diff_low: float  # bootstrap-t CI over locations
    diff_high: float
    a_only: int  # items A got right and B wrong (McNemar's b)
    b_only: int  # items B got right and A wrong (McNemar's c)
    p_mcnemar: float


def paired_test(correct_a: Sequence[bool], correct_b: Sequence[bool], clusters: Sequence[Any],
                *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> PairedResult:
    """Compare two models on the same items (row i of both is the same item). The accuracy
    difference's CI resamples locations (`intervals.cluster_bootstrap_t_ci` of the per-item
    difference a_i - b_i); McNemar's exact test takes the discordant items as independent
    (it does not know about locations: read it with the CI)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} outcomes for A but {b.size} for B")
    n = int(a.size)
    if n == 0:
        return PairedResult(0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0,
                            math.nan)
    d = a.astype(float) - b.astype(float)
    low, high = cluster_bootstrap_t_ci(d, clusters, n_boot=n_boot, seed=seed, level=level)
    # bootstrap-t can step past what a difference of accuracies can be (e.g. -1.06 for a
    # 0.00 vs 0.94 pair with few locations): clipped to [-1, 1]
    low, high = max(low, -1.0), min(high, 1.0)
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    locations = cluster_sums(d, clusters)[1].size
    return PairedResult(n, locations, float(a.mean()), float(b.mean()), float(d.mean()),
                        low, high, a_only, b_only, mcnemar_exact(a_only, b_only))


def above_chance(ci_low: float, chance: float) -> bool:
    """Better than chance: the accuracy's 95% interval lies wholly above 1/K (a one-sided
    test at 2.5%). False where there is no interval (NaN)."""
    return bool(ci_low > chance) if ci_low == ci_low else False
