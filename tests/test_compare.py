"""Paired comparisons against independent computations: scipy's exact binomial test for
McNemar, a hand-written Holm, an explicit-loop bootstrap-t, and a compare run from folders on
disk (plain runs and a sweep) through the CLI entry point."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from geoxray.bench.schema import PREDICTION_SCHEMA
from geoxray.bench.tasks import get_task
from geoxray.run import store
from geoxray.score import paired
from geoxray.score.intervals import cluster_bootstrap_t_ci
from geoxray.sweep import compare
from geoxray.sweep.compare import CompareError, compare_frame, compare_runs


# --- McNemar, Holm --------------------------------------------------------------------------
@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (7, 2), (2, 9), (25, 10),
                                 (0, 40), (130, 160), (1000, 1100), (4, 5)])
def test_mcnemar_exact_equals_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert paired.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def _holm_by_hand(p):
    """Textbook: reject in order while p_(i) <= alpha/(m-i+1); adjusted values written out."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_equals_a_hand_written_step_down():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = list(rng.random(rng.integers(1, 12)) ** 3)
        assert paired.holm(p) == pytest.approx(_holm_by_hand(p))
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = paired.holm([0.01, float("nan"), 0.02])  # NaN left out of m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


# --- bootstrap-t of the difference ----------------------------------------------------------
def _slow_bootstrap_t(d, clusters, n_boot, seed, level=0.95):
    labels = sorted(set(map(str, clusters)))
    per = {c: [v for v, k in zip(d, clusters) if str(k) == c] for c in labels}
    sums = [sum(per[c]) for c in labels]
    sizes = [len(per[c]) for c in labels]

    def ratio_se(s, m):
        total = sum(m)
        est = sum(s) / total
        var = sum((sj - est * mj) ** 2 / (1 - mj / total) for sj, mj in zip(s, m))
        return est, math.sqrt(var) / total

    est, se = ratio_se(sums, sizes)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(labels), size=(n_boot, len(labels)))
    ts = []
    for row in drawn:
        e, s = ratio_se([sums[j] for j in row], [sizes[j] for j in row])
        if s > 1e-12:
            ts.append((e - est) / s)
    q_lo, q_hi = np.quantile(ts, [(1 - level) / 2, 1 - (1 - level) / 2])
    return est - q_hi * se, est - q_lo * se


def test_bootstrap_t_equals_an_explicit_loop():
    rng = np.random.default_rng(4)
    clusters = np.repeat([f"l{j}" for j in range(11)], rng.integers(2, 9, size=11))
    d = rng.choice([-1, 0, 0, 1], size=clusters.size)
    fast = cluster_bootstrap_t_ci(d, clusters, n_boot=300, seed=9)
    assert fast == pytest.approx(_slow_bootstrap_t(d, clusters, 300, 9), abs=1e-12)


# --- compare on frames ----------------------------------------------------------------------
def _answers(rng, spec, gold, right_rate):
    return [g if rng.random() < right_rate else spec.options[rng.integers(spec.K)]
            for g in gold]


def _two_models(seed=0, tasks=("pose_fixed", "loc_prior", "crossmap_std"), locations=12,
                per=4, rates=(0.85, 0.4)):
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        spec = get_task(task)
        n = locations * per
        gold = [spec.options[i] for i in rng.integers(spec.K, size=n)]
        for model, rate in zip(("alpha", "beta"), rates):
            pred = _answers(rng, spec, gold, rate)
            if model == "beta":
                pred[0] = None  # an invalid answer is wrong in both accuracy and McNemar
            for i in range(n):
                rows.append({"item_id": f"{task}-{i}", "model": model, "decode": "paper",
                             "task": task, "location": f"loc{i // per}", "answer": gold[i],
                             "pred": pred[i]})
    return pd.DataFrame(rows)


def test_compare_matches_an_independent_computation():
    preds = _two_models()
    result = compare_frame(preds, n_boot=500, seed=1)
    assert list(result.pairs["task"]) == ["pose_fixed", "loc_prior", "crossmap_std"]
    p_raw = []
    for row in result.pairs.itertuples(index=False):
        a = preds[(preds.model == "alpha") & (preds.task == row.task)].set_index("item_id")
        b = preds[(preds.model == "beta") & (preds.task == row.task)].set_index("item_id")
        b = b.loc[a.index]
        ra = (a["pred"] == a["answer"]).to_numpy()
        rb = (b["pred"] == b["answer"]).to_numpy()
        assert (row.a, row.b, row.n, row.locations) == ("alpha", "beta", len(a), 12)
        assert row.accuracy_a == pytest.approx(ra.mean())
        assert row.diff == pytest.approx(ra.mean() - rb.mean())
        n01, n10 = int((ra & ~rb).sum()), int((~ra & rb).sum())
        assert (row.a_only, row.b_only) == (n01, n10)
        expected_p = stats.binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
        assert row.p_mcnemar == pytest.approx(expected_p)
        low, high = _slow_bootstrap_t(list(ra.astype(int) - rb.astype(int)),
                                      list(a["location"]), 500, 1)
        assert (row.diff_low, row.diff_high) == pytest.approx((max(low, -1), min(high, 1)),
                                                              abs=1e-12)
        p_raw.append(expected_p)
    assert list(result.pairs["p_holm"]) == pytest.approx(_holm_by_hand(p_raw))
    # 4 options: accuracy ~0.89 vs ~0.55 on 48 items, a clear difference
    assert result.pairs.set_index("task").loc[["pose_fixed", "crossmap_std"],
                                              "significant"].all()
    cells = result.cells.set_index(["series", "task"])
    assert cells.loc[("alpha", "pose_fixed"), "above_chance"]


def test_identical_models_are_not_different():
    preds = _two_models(rates=(0.6, 0.6))
    twin = preds[preds.model == "alpha"].assign(model="twin")
    result = compare_frame(pd.concat([preds[preds.model == "alpha"], twin]), n_boot=200)
    assert (result.pairs["diff"] == 0).all() and (result.pairs["p_mcnemar"] == 1).all()
    assert not result.pairs["significant"].any()
    assert (result.pairs["diff_low"] == 0).all() and (result.pairs["diff_high"] == 0).all()


def test_marks_best_tied_and_below():
    preds = _two_models(rates=(0.9, 0.3))
    twin = preds[preds.model == "alpha"].assign(model="gamma")
    result = compare_frame(pd.concat([preds, twin]), n_boot=200)
    marks = compare.marks(result).set_index(["task", "series"])
    for task in ("pose_fixed", "loc_prior", "crossmap_std"):
        # identical answers: tied at the top, both marked best
        assert marks.loc[(task, "alpha"), "vs_best"] == "best"
        assert marks.loc[(task, "gamma"), "vs_best"] == "best"
        assert marks.loc[(task, "beta"), "vs_best"] == "<"
    assert compare.mark_text(0.7, True, "best") == "0.700* ▲"
    assert compare.mark_text(0.25, False, "<") == "0.250"


def test_refuses_different_items_and_names_why():
    preds = _two_models()
    dropped = preds.drop(preds[(preds.model == "beta") & (preds.item_id == "loc_prior-3")].index)
    with pytest.raises(CompareError, match=r"task loc_prior: 'alpha' and 'beta' did not answer "
                                           r"the same items \(48 vs 47; 1 only in 'alpha' "
                                           r"\(e\.g\. loc_prior-3\)"):
        compare_frame(dropped)
    regold = preds.copy()
    mask = (regold.model == "beta") & (regold.item_id == "pose_fixed-0")
    regold.loc[mask, "answer"] = "W" if regold.loc[mask, "answer"].iloc[0] != "W" else "N"
    with pytest.raises(CompareError, match="different gold"):
        compare_frame(regold)
    with pytest.raises(CompareError, match="at least two"):
        compare_frame(preds[preds.model == "alpha"])


# --- from folders, through the CLI ----------------------------------------------------------
def _write_run(folder, frame):
    full = frame.copy()
    for name in PREDICTION_SCHEMA.names:
        if name not in full.columns:
            full[name] = None
    full["key"] = full["model"] + "/" + full["item_id"]
    full["instance"] = "inst"
    import pyarrow as pa
    store.write_part(folder, pa.Table.from_pandas(full[PREDICTION_SCHEMA.names],
                                                  schema=PREDICTION_SCHEMA,
                                                  preserve_index=False))


def test_cli_compares_run_folders_and_sweeps(tmp_path, capsys):
    preds = _two_models()
    _write_run(tmp_path / "run_a", preds[preds.model == "alpha"])
    _write_run(tmp_path / "run_b", preds[preds.model == "beta"])
    from geoxray.cli import main as cli_main
    assert cli_main(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_b"),
                     "--n-boot", "200", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "Paired comparisons (3 task x pair tests" in out
    table = pd.read_csv(tmp_path / "cmp" / "compare_pairs.csv")
    direct = compare_frame(preds, n_boot=200)
    assert table["diff"].to_numpy() == pytest.approx(direct.pairs["diff"].to_numpy())
    assert table["p_holm"].to_numpy() == pytest.approx(direct.pairs["p_holm"].to_numpy())

    # the same items in a sweep folder: comparable with the plain run
    sweep = tmp_path / "sweep"
    _write_run(sweep / "p1", preds[preds.model == "beta"].assign(model="beta-in-sweep"))
    (sweep / "sweep.json").write_text(json.dumps({"sweep": "s", "points": {
        "p1": {"status": "done", "out_dir": "p1", "series": "beta [sweep]"},
        "p2": {"status": "failed", "out_dir": "p2"}}}))
    result = compare_runs([tmp_path / "run_a", sweep], n_boot=200)
    assert set(result.pairs["b"]) == {"beta [sweep]"}
    assert result.pairs["diff"].to_numpy() == pytest.approx(direct.pairs["diff"].to_numpy())

    # a run on other items is refused with the reason, exit status 2
    other = preds[preds.model == "beta"].assign(item_id=lambda f: f["item_id"] + "x")
    _write_run(tmp_path / "run_c", other)
    assert cli_main(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_c")]) == 2
    assert "did not answer the same items" in capsys.readouterr().err
    assert cli_main(["compare", str(tmp_path / "run_a"), str(tmp_path / "nothing")]) == 2


def test_sweep_leaderboard_ranks_and_marks(tmp_path):
    from types import SimpleNamespace

    from geoxray.sweep.leaderboard import write_leaderboard

    preds = _two_models(rates=(0.9, 0.2))
    _write_run(tmp_path / "p_alpha", preds[preds.model == "alpha"])
    _write_run(tmp_path / "p_beta", preds[preds.model == "beta"])
    spec = SimpleNamespace(name="s", data=[SimpleNamespace(name="synth")])
    points = {"p_beta": {"status": "done", "data": "synth", "series": "beta", "out_dir": "p_beta"},
              "p_alpha": {"status": "done", "data": "synth", "series": "alpha",
                          "out_dir": "p_alpha"}}
    index = write_leaderboard(tmp_path, spec, points, bootstrap=200)
    ranked = pd.read_csv(tmp_path / "leaderboard" / "tables" / "leaderboard_ranked.csv")
    assert list(ranked["series"]) == ["alpha", "beta"]  # ranked by mean accuracy
    assert list(ranked["rank"]) == [1, 2]
    first_task = ranked.columns[3]
    assert first_task == "1. Pose, fixed position"
    assert ranked.loc[0, first_task].endswith("* ▲")  # best, and above chance
    assert "▲" not in ranked.loc[1, first_task] and "≈" not in ranked.loc[1, first_task]
    page = index.read_text()
    assert page.index("<h2>Leaderboard</h2>") < page.index("<h2>Files</h2>")
    assert "better than chance" in page and "compare_pairs.csv" in page


def test_tied_best_series_share_the_mark_and_keep_their_order():
    preds = _two_models(rates=(0.9, 0.3))
    twin = preds[preds.model == "alpha"].assign(model="gamma")
    ranked, _ = compare.ranked_leaderboard(pd.concat([twin, preds]), n_boot=100)
    assert list(ranked["series"][:2]) == ["gamma", "alpha"]  # tied: order of appearance
    assert all(ranked.iloc[i, 3].endswith("▲") for i in (0, 1))


def test_a_close_second_is_marked_tied_with_the_best():
    preds = _two_models(rates=(0.9, 0.3))
    close = preds[preds.model == "alpha"].assign(model="delta").reset_index(drop=True)
    close.loc[close.index[:2], "pred"] = None  # two fewer right: not a significant difference
    marks = compare.marks(compare_frame(pd.concat([preds, close]), n_boot=100))
    m = marks.set_index(["task", "series"])
    assert m.loc[("pose_fixed", "alpha"), "vs_best"] == "best"
    assert m.loc[("pose_fixed", "delta"), "vs_best"] == "="
    assert compare.mark_text(0.5, True, "=") == "0.500* ≈"


def test_difference_ci_stays_within_what_a_difference_can_be():
    from geoxray.score.paired import paired_test
    # the demo's shape: base 0/32, tuned 30/32 over 8 locations; bootstrap-t alone gives -1.06
    a = [False] * 32
    b = [True] * 30 + [False] * 2
    r = paired_test(a, b, [i // 4 for i in range(32)], n_boot=500)
    assert r.diff == pytest.approx(-30 / 32)
    assert -1.0 <= r.diff_low <= r.diff <= r.diff_high <= 1.0
