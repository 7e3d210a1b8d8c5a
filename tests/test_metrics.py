"""Score arithmetic against independent computations: scipy for entropy and KL, an explicit
loop for the cluster bootstrap, and small examples worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from geoxray.bench.tasks import TASKS, get_task
from geoxray.score import metrics
from geoxray.score.metrics import (accuracy, choice_bias, cluster_bootstrap_ci, entropy_norm,
                                   expected_bias, kl_divergence, prob_vector)

DIRS = ("N", "E", "S", "W")


# --- entropy and KL against scipy ------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 4, 9])
def test_entropy_and_kl_match_scipy(K):
    rng = np.random.default_rng(K)
    for trial in range(20):
        p = rng.dirichlet(np.ones(K))
        if trial % 3 == 0:  # zeros in p exercise 0 ln 0 = 0
            p[rng.integers(K)] = 0.0
            p /= p.sum()
        q = rng.dirichlet(np.ones(K))
        assert entropy_norm(p) == pytest.approx(stats.entropy(p) / math.log(K), abs=1e-12)
        assert kl_divergence(p, q) == pytest.approx(stats.entropy(p, q), abs=1e-12)
        assert kl_divergence(p, np.full(K, 1 / K)) == pytest.approx(
            stats.entropy(p, np.full(K, 1 / K)), abs=1e-12)


def test_kl_is_inf_where_gold_has_no_mass_but_answers_do():
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert stats.entropy([0.5, 0.5], [1.0, 0.0]) == math.inf  # scipy agrees
    # mass of q where p has none is fine
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))


# --- a hand-worked example ----------------------------------------------------------------------
def test_hand_worked_example():
    pred = ["N", "N", "E", None]
    gold = ["N", "E", "E", "S"]
    acc = accuracy(pred, gold, ["a", "a", "b", "b"], options=DIRS, n_boot=50)
    assert (acc.n, acc.correct, acc.invalid) == (4, 2, 1)
    assert acc.accuracy == 0.5  # the invalid item counts as wrong

    b = choice_bias(pred, gold, DIRS)
    # valid items: 0, 1, 2 -> p = (2/3, 1/3, 0, 0); their golds N, E, E -> q = (1/3, 2/3, 0, 0)
    assert b.n == 4 and b.n_valid == 3 and b.K == 4
    assert b.shares == pytest.approx((2 / 3, 1 / 3, 0, 0))
    assert b.gold_shares == pytest.approx((1 / 3, 2 / 3, 0, 0))
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert b.h_norm == pytest.approx(h / math.log(4))
    assert b.kl == pytest.approx(2 / 3 * math.log(2) + 1 / 3 * math.log(1 / 2))
    assert b.kl_uniform == pytest.approx(math.log(4) - h)
    assert (b.p_mode, b.mode_option, b.a_mode) == (pytest.approx(2 / 3), "N",
                                                   pytest.approx(1 / 3))
    assert b.invalid_rate == 0.25


def test_invalid_answers_are_wrong_in_accuracy_but_left_out_of_bias():
    gold = ["N", "E", "S", "W"] * 5
    pred = list(gold)
    pred[::4] = [None] * 5  # every gold-N item answered invalidly
    acc = accuracy(pred, gold, range(20), options=DIRS, n_boot=20)
    assert (acc.correct, acc.invalid, acc.accuracy) == (15, 5, 0.75)
    b = choice_bias(pred, gold, DIRS)
    assert b.n_valid == 15 and b.invalid_rate == 0.25
    assert b.shares == pytest.approx((0, 1 / 3, 1 / 3, 1 / 3))  # N never answered
    assert b.kl == pytest.approx(0.0)  # gold on the valid items is the same distribution


def test_answer_outside_options_is_invalid():
    acc = accuracy(["X", "N"], ["N", "N"], ["a", "b"], options=DIRS, n_boot=10)
    assert (acc.correct, acc.invalid) == (1, 1)
    assert choice_bias(["X", "N"], ["N", "N"], DIRS).n_valid == 1
    # NaN (pandas' null) is invalid and never correct
    assert accuracy([float("nan")], ["N"], ["a"], options=DIRS, n_boot=10).invalid == 1


# --- answerers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", TASKS, ids=lambda t: t.name)
def test_constant_answerer_has_p_mode_1_and_h_norm_0(spec):
    rng = np.random.default_rng(spec.number)
    gold = [spec.options[i] for i in rng.integers(spec.K, size=300)]
    b = choice_bias([spec.options[0]] * 300, gold, spec.options)
    assert b.p_mode == 1.0 and b.h_norm == 0.0 and b.mode_option == spec.options[0]
    assert b.kl_uniform == pytest.approx(math.log(spec.K))
    assert b.a_mode == pytest.approx(gold.count(spec.options[0]) / 300)


@pytest.mark.parametrize("spec", TASKS, ids=lambda t: t.name)
def test_uniform_answerer_has_h_norm_near_1(spec):
    rng = np.random.default_rng(100 + spec.number)
    n = 20_000
    pred = [spec.options[i] for i in rng.integers(spec.K, size=n)]
    gold = [spec.options[i] for i in rng.integers(spec.K, size=n)]
    b = choice_bias(pred, gold, spec.options)
    # H deficit ~ (K-1)/(2n) nats: far below 0.002 of ln K for these n and K
    assert b.h_norm > 0.998
    assert b.p_mode < 1 / spec.K + 4 * math.sqrt((1 / spec.K) / n) + 0.01
    assert b.kl < 0.005 and b.kl_uniform < 0.005


def test_mode_ties_go_to_the_first_option_in_task_order():
    b = choice_bias(["S", "E", "S", "E"], ["N"] * 4, DIRS)
    assert b.mode_option == "E" and b.p_mode == 0.5


def test_no_valid_answer_gives_nan_figures():
    b = choice_bias([None, None], ["N", "E"], DIRS)
    assert b.n_valid == 0 and b.invalid_rate == 1.0 and b.mode_option is None
    assert all(math.isnan(x) for x in (b.h_norm, b.kl, b.kl_uniform, b.p_mode, b.a_mode))
    empty = accuracy([], [], [])
    assert empty.n == 0 and math.isnan(empty.accuracy) and math.isnan(empty.ci_low)


# --- expected distributions ----------------------------------------------------------------------
def test_expected_bias_averages_renormalised_option_probabilities():
    spec = get_task("loc_prior")
    probs = [{"true": 0.6, "false": 0.2},       # renormalised to 0.75 / 0.25
             [("true", 0.5), ("false", 0.5)],  # pyarrow's map -> list of pairs
             {"true": 1.0},                     # missing option counts 0
             None,                              # not scored: left out
             {"true": float("nan"), "false": 1.0}]  # unusable: left out
    gold = ["true", "false", "true", "false", "true"]
    b = expected_bias(probs, gold, spec.options)
    p_true = (0.75 + 0.5 + 1.0) / 3
    assert b.n == 5 and b.n_valid == 3 and b.invalid_rate == pytest.approx(0.4)
    assert b.shares == pytest.approx((p_true, 1 - p_true))
    assert b.gold_shares == pytest.approx((2 / 3, 1 / 3))
    assert b.h_norm == pytest.approx(stats.entropy([p_true, 1 - p_true]) / math.log(2))
    assert b.kl == pytest.approx(stats.entropy([p_true, 1 - p_true], [2 / 3, 1 / 3]))
    assert b.mode_option == "true" and b.a_mode == pytest.approx(2 / 3)


def test_prob_vector_rejects_garbage():
    assert prob_vector(None, DIRS) is None
    assert prob_vector(float("nan"), DIRS) is None
    assert prob_vector({"N": -1.0, "E": 2.0}, DIRS) is None
    assert prob_vector({"Q": 1.0}, DIRS) is None  # no mass on any option
    assert prob_vector("not a mapping", DIRS) is None


# --- cluster bootstrap ---------------------------------------------------------------------------
def _slow_cluster_bootstrap(correct, clusters, n_boot, seed, level):
    """The textbook procedure, one resample at a time: draw G locations with replacement,
    pool all their items, take the mean."""
    labels = sorted(set(map(str, clusters)))
    items = {c: [y for y, k in zip(correct, clusters) if str(k) == c] for c in labels}
    rng = np.random.default_rng(seed)
    stats_ = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(labels), size=len(labels))
        pooled = [y for j in drawn for y in items[labels[j]]]
        stats_.append(sum(pooled) / len(pooled))
    alpha = 1 - level
    return tuple(np.quantile(stats_, [alpha / 2, 1 - alpha / 2]))


def _clustered_outcomes(n_clusters, rng):
    sizes = rng.integers(1, 12, size=n_clusters)
    rates = rng.beta(2, 2, size=n_clusters)  # locations differ: outcomes correlate within
    correct, clusters = [], []
    for j, (m, r) in enumerate(zip(sizes, rates)):
        correct += list(rng.random(m) < r)
        clusters += [f"loc{j}"] * m
    return correct, clusters


def test_bootstrap_equals_an_explicit_loop_with_the_same_seed():
    correct, clusters = _clustered_outcomes(30, np.random.default_rng(1))
    for seed in (0, 7):
        fast = cluster_bootstrap_ci(correct, clusters, n_boot=300, seed=seed, level=0.95)
        slow = _slow_cluster_bootstrap(correct, clusters, 300, seed, 0.95)
        assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_chunking_does_not_change_the_result(monkeypatch):
    correct, clusters = _clustered_outcomes(25, np.random.default_rng(2))
    whole = cluster_bootstrap_ci(correct, clusters, n_boot=257, seed=3)
    monkeypatch.setattr(metrics, "_MAX_DRAWS_PER_CHUNK", 25 * 10)  # 10 resamples a chunk
    assert cluster_bootstrap_ci(correct, clusters, n_boot=257, seed=3) == whole


def test_bootstrap_of_independent_items_matches_the_normal_interval():
    rng = np.random.default_rng(5)
    n, p = 4000, 0.3
    correct = rng.random(n) < p
    low, high = cluster_bootstrap_ci(correct, range(n), n_boot=2000, seed=1)
    mean = correct.mean()
    half = 1.96 * math.sqrt(mean * (1 - mean) / n)
    assert low == pytest.approx(mean - half, abs=0.004)
    assert high == pytest.approx(mean + half, abs=0.004)


def test_bootstrap_by_location_is_wider_when_locations_answer_together():
    # 40 locations x 25 items, each location all right or all wrong: the effective sample
    # is 40, not 1000; an item-level interval would be 5x too narrow.
    rng = np.random.default_rng(9)
    loc_right = rng.random(40) < 0.5
    correct = np.repeat(loc_right, 25)
    clusters = np.repeat(np.arange(40), 25)
    low, high = cluster_bootstrap_ci(correct, clusters, n_boot=2000, seed=0)
    item_low, item_high = cluster_bootstrap_ci(correct, np.arange(1000), n_boot=2000, seed=0)
    mean = loc_right.mean()
    half = 1.96 * math.sqrt(mean * (1 - mean) / 40)
    assert (high - low) == pytest.approx(2 * half, rel=0.15)
    assert (high - low) > 3.5 * (item_high - item_low)


def test_bootstrap_edge_cases():
    assert cluster_bootstrap_ci([1, 0, 1], ["a", "a", "a"]) == (pytest.approx(2 / 3),
                                                                 pytest.approx(2 / 3))
    assert all(math.isnan(x) for x in cluster_bootstrap_ci([], []))
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([1, 0], ["a", "b"], level=1.5)
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([1, 0], ["a"])
    a = accuracy(["N", "E"], ["N", "N"], ["x", "y"], n_boot=100, seed=4)
    b = accuracy(["N", "E"], ["N", "N"], ["x", "y"], n_boot=100, seed=4)
    assert a == b and a.ci_low <= a.accuracy <= a.ci_high
