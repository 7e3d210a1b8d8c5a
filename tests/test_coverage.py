"""Coverage of the accuracy interval, measured by simulation (vectorised: all replicates of a
scenario are scored at once by the library's own `wilson_from_sums`; seconds in all).

World: G locations, location j has m_j items and its own success rate r_j ~ Beta with mean p
and intra-location correlation rho (a = p(1-rho)/rho, b = (1-p)(1-rho)/rho); the target is p.
Designs: 4 items a location (tasks 1, 3, 6: four headings), 36 (tasks 2, 4, 7: x 9 crops),
and mixed sizes 1..12. The percentile bootstrap this replaces covers ~89% at G = 8.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from geoxray.score.intervals import (cluster_bootstrap_t_ci, ratio_cr2, t_quantile,
                                     wilson_cluster_ci, wilson_from_sums)

REPLICATES = 10_000  # Monte Carlo se of a 95% coverage: 0.0022


def _simulate(rng, G, p, rho, design, replicates=REPLICATES):
    a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho
    sizes = (rng.integers(1, 13, size=(replicates, G)) if design == "mixed"
             else np.full((replicates, G), design))
    rates = rng.beta(a, b, size=(replicates, G))
    hits = rng.binomial(sizes, rates)
    return hits.astype(float), sizes.astype(float)


def _coverage(low, high, p):
    return float(np.mean((low <= p) & (p <= high)))


SCENARIOS = list(itertools.product((8, 12, 25), (0.25, 0.5, 0.75), (0.05, 0.15),
                                   (4, 36, "mixed")))


def test_wilson_t_interval_covers_95_percent_from_8_locations_up():
    rng = np.random.default_rng(20261204)
    worst = []
    for G, p, rho, design in SCENARIOS:
        hits, sizes = _simulate(rng, G, p, rho, design)
        cov = _coverage(*wilson_from_sums(hits, sizes), p)
        worst.append((cov, G, p, rho, design))
        assert 0.94 <= cov <= 0.99, (G, p, rho, design, cov)
    # not conservative everywhere: somewhere near the nominal level
    assert min(worst)[0] < 0.95


def test_percentile_bootstrap_undercovers_at_8_locations():
    """The motivation, measured the same way: the former interval misses its level."""
    rng = np.random.default_rng(3)
    G, p, rho, R, B = 8, 0.5, 0.15, 2000, 400
    hits, sizes = _simulate(rng, G, p, rho, 4, replicates=R)
    drawn = rng.integers(0, G, size=(R, B, G))
    h = np.take_along_axis(np.broadcast_to(hits[:, None], (R, B, G)), drawn, 2).sum(2)
    m = np.take_along_axis(np.broadcast_to(sizes[:, None], (R, B, G)), drawn, 2).sum(2)
    low, high = np.quantile(h / m, [0.025, 0.975], axis=1)
    assert _coverage(low, high, p) < 0.925
    assert _coverage(*wilson_from_sums(hits, sizes), p) >= 0.94


def test_vectorised_and_scalar_forms_agree():
    rng = np.random.default_rng(1)
    hits, sizes = _simulate(rng, 9, 0.4, 0.2, "mixed", replicates=5)
    low, high = wilson_from_sums(hits, sizes)
    for r in range(5):
        correct = np.concatenate([[1] * int(h) + [0] * int(m - h)
                                  for h, m in zip(hits[r], sizes[r])])
        clusters = np.repeat(np.arange(9), sizes[r].astype(int))
        assert wilson_cluster_ci(correct, clusters) == pytest.approx((low[r], high[r]))


def test_cr2_se_and_t_quantile_against_independent_formulas():
    rng = np.random.default_rng(2)
    hits, sizes = _simulate(rng, 6, 0.5, 0.2, "mixed", replicates=1)
    h, m = hits[0], sizes[0]
    est, se = ratio_cr2(h, m)
    M = m.sum()
    # CR2 for the ratio: the weighted regression of y_j/m_j on 1 with weights m_j; its
    # hat values are m_j / M. Written out as the sandwich with (1 - h_jj)^-1 adjustment.
    bread = 1 / M
    meat = sum((hj - est * mj) ** 2 / (1 - mj / M) for hj, mj in zip(h, m))
    assert est == pytest.approx(h.sum() / M)
    assert se == pytest.approx(bread * np.sqrt(meat))
    for df in (1, 2, 7, 24, 300, 5000):
        assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-8)


def test_edge_cases():
    import math
    assert all(math.isnan(x) for x in wilson_cluster_ci([], []))
    assert all(math.isnan(x) for x in wilson_cluster_ci([1, 0, 1], ["a", "a", "a"]))
    low, high = wilson_cluster_ci([1] * 8, list("abcdefgh"))  # all right: bounded below 1
    assert high == 1.0 and 0.3 < low < 1.0
    low, high = wilson_cluster_ci([0, 1] * 8, list("abcdefgh") * 2)  # every location alike
    assert low < 0.5 < high


def test_bootstrap_t_of_a_difference_covers_its_target():
    """Paired differences d in {-1, 0, 1}; the bootstrap-t interval (used by compare) holds
    its level from 12 locations (a slower check: 400 replicates x 400 resamples)."""
    rng = np.random.default_rng(5)
    G, R = 12, 400
    hits = 0
    for _ in range(R):
        sizes = np.full(G, 4)
        shift = rng.normal(0.1, 0.15, size=G)  # locations differ in how much A beats B
        pa = np.clip(0.5 + shift / 2, 0, 1)
        pb = np.clip(0.5 - shift / 2, 0, 1)
        a = rng.random((G, 4)) < pa[:, None]
        b = rng.random((G, 4)) < pb[:, None]
        d = (a.astype(int) - b.astype(int)).ravel()
        low, high = cluster_bootstrap_t_ci(d, np.repeat(np.arange(G), 4), n_boot=400,
                                           seed=int(rng.integers(1 << 30)))
        hits += low <= 0.1 <= high  # E[pa - pb] (no clipping at these spreads)
    assert hits / R >= 0.92  # MC se 0.011 at 400 replicates


def test_interval_contains_the_estimate_exactly_at_0_and_1():
    """All right or all wrong: the bounds must not round a hair past the estimate (a plot's
    error bar of -1e-16 is an error in matplotlib)."""
    for G in (2, 3, 8, 13, 40):
        for value in (0, 1):
            low, high = wilson_cluster_ci([value] * (3 * G), list(range(G)) * 3)
            assert low <= value <= high
            assert (high if value else low) == value
