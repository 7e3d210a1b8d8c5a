"""Tables, leaderboard, plots and the report, on synthetic predictions whose scores are known,
and the rebuild of a report from Parquet parts on disk."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geoxray.bench.schema import PREDICTION_SCHEMA
from geoxray.bench.tasks import TASKS, get_task
from geoxray.score import intervals, metrics
from geoxray.score.plots import empty_panel_note, task_pairs
from geoxray.score.report import read_predictions, write_report
from geoxray.score.tables import (ACCURACY_COLUMNS, ALL, BIAS_COLUMNS, INVALID_COLUMNS,
                                  SHARE_COLUMNS, accuracy_table, bias_table, compute_tables,
                                  invalid_reasons, leaderboard, option_shares)

N_BOOT = 200  # the CI arithmetic is tested in test_metrics; here only its plumbing


def make_predictions(model: str, answerer: str, *, seed: int = 0, decode: str = "paper",
                     invalid_rate: float = 0.1, with_probs: bool = False) -> pd.DataFrame:
    """Every task, 2 instances x 3 locations x 4 items (x 2 crops where the task has crops).
    answerer: `constant` (first option), `uniform` (random option), `mostly_right`."""
    rng = np.random.default_rng(seed)
    rows = []
    for spec in TASKS:
        crops = spec.crops[:2]
        for inst in ("instB", "instA"):  # not alphabetical: tables must sort
            for loc in range(3):
                for item in range(4 * len(crops)):
                    gold = spec.options[rng.integers(spec.K)]
                    if answerer == "constant":
                        pred = spec.options[0]
                    elif answerer == "uniform":
                        pred = spec.options[rng.integers(spec.K)]
                    else:
                        pred = gold if rng.random() < 0.7 else spec.options[rng.integers(spec.K)]
                    reason = None
                    if rng.random() < invalid_rate:
                        pred, reason = None, ("no_answer_field" if rng.random() < 0.7
                                              else "engine_error")
                    probs = (dict(zip(spec.options, rng.dirichlet(np.ones(spec.K))))
                             if with_probs else None)
                    item_id = f"{spec.name}/{inst}/{loc}/{item}"
                    rows.append({"key": f"{model}/{decode}/{item_id}", "item_id": item_id,
                                 "model": model, "decode": decode, "task": spec.name,
                                 "instance": inst, "location": f"{inst}:{loc}",
                                 "crop": crops[item % len(crops)], "answer": gold,
                                 "reply": "", "pred": pred, "invalid_reason": reason,
                                 "option_probs": probs, "prompt_tokens": 100,
                                 "generated_tokens": 5, "latency_s": 0.01})
    return pd.DataFrame(rows)


def to_arrow(preds: pd.DataFrame) -> pa.Table:
    """The frame as the run writes it: PREDICTION_SCHEMA, columns it lacks as nulls."""
    columns = {f.name: (preds[f.name].astype(object).where(preds[f.name].notna(), None)
                        .tolist() if f.name in preds else [None] * len(preds))
               for f in PREDICTION_SCHEMA}
    columns["option_probs"] = [None if p is None else list(p.items())
                               for p in columns["option_probs"]]
    return pa.table(columns, schema=PREDICTION_SCHEMA)


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    return pd.concat([make_predictions("good", "mostly_right", seed=1),
                      make_predictions("const", "constant", seed=2)], ignore_index=True)


@pytest.fixture(scope="module")
def tables(preds):
    return compute_tables(preds, n_boot=N_BOOT)


# --- tables ------------------------------------------------------------------------------------
def test_accuracy_table_columns_order_and_totals(preds, tables):
    acc = tables.accuracy
    assert list(acc.columns) == ACCURACY_COLUMNS
    assert len(acc) == 2 * len(TASKS) * 3  # (all + 2 instances) per model and task
    for (model, task), g in acc.groupby(["model", "task"], sort=False):
        assert list(g["instance"]) == [ALL, "instA", "instB"]
        total, parts = g.iloc[0], g.iloc[1:]
        for col in ("n", "correct", "invalid"):
            assert total[col] == parts[col].sum()
        assert total["accuracy"] == pytest.approx(total["correct"] / total["n"])
        assert total["ci_low"] <= total["accuracy"] <= total["ci_high"]
        assert total["K"] == get_task(task).K
    for _, g in acc.groupby("model", sort=False):  # task numbers ascend within a model
        assert list(g["task_number"]) == sorted(g["task_number"])
    # independent recount from the raw frame
    raw = preds[(preds.model == "good") & (preds.task == "pose_random")]
    row = acc[(acc.model == "good") & (acc.task == "pose_random") & (acc.instance == ALL)]
    assert int(row["n"].iloc[0]) == len(raw)
    assert int(row["correct"].iloc[0]) == int((raw.pred == raw.answer).sum())
    assert int(row["invalid"].iloc[0]) == int(raw.pred.isna().sum())


def test_all_row_ci_resamples_locations_of_every_instance(preds, tables):
    raw = preds[(preds.model == "good") & (preds.task == "intra_map")]
    expected = intervals.wilson_cluster_ci((raw.pred == raw.answer).to_numpy(),
                                           raw.location.tolist())
    row = tables.accuracy.query("model == 'good' and task == 'intra_map' and instance == 'all'")
    assert (row.ci_low.iloc[0], row.ci_high.iloc[0]) == pytest.approx(expected)


def test_bias_table_constant_answerer_and_invalid_excluded(preds, tables):
    bias = tables.bias
    assert list(bias.columns) == BIAS_COLUMNS
    assert set(bias["source"]) == {"counts"}  # no option_probs in these predictions
    const = bias[bias.model == "const"]
    assert (const.p_mode == 1.0).all() and (const.h_norm == 0.0).all()
    assert list(const.mode_option) == [t.options[0] for t in TASKS]
    # invalid rows left out: the same figures as scoring the valid rows alone
    good = preds[preds.model == "good"]
    valid_only = bias_table(good[good.pred.notna()])
    mine = bias[bias.model == "good"].reset_index(drop=True)
    for col in ("n_valid", "h_norm", "kl", "kl_uniform", "p_mode", "a_mode"):
        assert np.allclose(mine[col], valid_only[col])
    assert (mine["invalid_rate"] > 0).all() and (valid_only["invalid_rate"] == 0).all()


def test_option_shares_are_distributions_in_option_order(tables):
    shares = tables.option_shares
    assert list(shares.columns) == SHARE_COLUMNS
    for (model, task), g in shares.groupby(["model", "task"], sort=False):
        assert tuple(g["option"]) == get_task(task).options
        assert g["share"].sum() == pytest.approx(1.0)
        assert g["gold_share"].sum() == pytest.approx(1.0)


def test_invalid_reasons_add_up_to_invalid_counts(tables):
    inv = tables.invalid
    assert list(inv.columns) == INVALID_COLUMNS
    totals = tables.accuracy[tables.accuracy.instance == ALL]
    summed = inv.groupby(["model", "task"])["count"].sum()
    for _, row in totals.iterrows():
        assert summed.get((row.model, row.task), 0) == row.invalid
    assert set(inv["reason"]) == {"no_answer_field", "engine_error"}


def test_unknown_task_and_missing_location_do_not_crash():
    df = make_predictions("m", "uniform", seed=3, invalid_rate=0.0)
    df.loc[0, "task"] = "no_such_task"
    df.loc[1:5, "location"] = None
    with pytest.warns(UserWarning, match="unknown task"):
        inv = invalid_reasons(df)
    row = inv[inv.reason == "unknown_task"]
    assert list(row["task"]) == ["no_such_task"] and list(row["count"]) == [1]
    with pytest.warns(UserWarning):
        acc = accuracy_table(df, n_boot=20)
    assert acc[acc.instance == ALL]["n"].sum() == len(df) - 1


def test_leaderboard_pivots_match_the_tables(tables):
    board = tables.leaderboard
    acc = board["accuracy"]
    assert list(acc.columns) == ["const", "good"]  # models in sorted order
    assert list(acc.index) == [f"{t.number}. {t.title}" for t in TASKS] + ["mean over tasks"]
    totals = tables.accuracy[tables.accuracy.instance == ALL]
    good = totals[totals.model == "good"]["accuracy"].to_numpy()
    assert np.allclose(acc["good"].iloc[:-1], good)
    assert acc.loc["mean over tasks", "good"] == pytest.approx(good.mean())
    assert (board["p_mode"]["const"] == 1.0).all() and (board["h_norm"]["const"] == 0).all()


def test_leaderboard_labels_decode_modes_when_several(preds):
    both = pd.concat([preds[preds.model == "good"],
                      make_predictions("good", "uniform", seed=4, decode="choice")])
    board = leaderboard(both)
    assert list(board["accuracy"].columns) == ["good [choice]", "good [paper]"]


def test_expected_rows_come_from_option_probs():
    df = make_predictions("probs", "uniform", seed=5, decode="choice", with_probs=True)
    bias = bias_table(df)
    assert list(bias[bias.task == "pose_fixed"]["source"]) == ["counts", "expected"]
    exp = bias[(bias.task == "pose_fixed") & (bias.source == "expected")].iloc[0]
    part = df[df.task == "pose_fixed"]
    p = np.mean([[d[o] for o in get_task("pose_fixed").options] for d in part.option_probs],
                axis=0)
    assert exp.p_mode == pytest.approx(p.max()) and exp.n_valid == len(part)
    shares = option_shares(df)
    assert set(shares["source"]) == {"counts", "expected"}


def test_task_pairs_come_from_the_task_table():
    assert [(f.number, r.number) for f, r in task_pairs()] == [(1, 2), (3, 4), (6, 7)]


# --- the report ----------------------------------------------------------------------------------
def _check_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
        assert w >= 500 and h >= 300
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20  # drawn, not a blank canvas


def test_report_rebuilds_from_parquet_parts(tmp_path, preds):
    probs = make_predictions("probs", "uniform", seed=6, decode="paper", with_probs=True)
    frame = pd.concat([preds, probs], ignore_index=True)
    folder = tmp_path / "predictions"
    folder.mkdir()
    third = len(frame) // 3
    for i, start in enumerate(range(0, len(frame), third)):
        pq.write_table(to_arrow(frame.iloc[start:start + third]), folder / f"part-{i}.parquet")
    pq.write_table(to_arrow(frame.iloc[:5]), folder / "_inflight.parquet")  # not committed
    (folder / "part-torn.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"model": {"name": "good"}, "counts": {"items": len(frame)}, "dataset_hash": "abc"}))

    report = write_report(tmp_path, n_boot=N_BOOT)

    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert "part-torn.parquet" in text  # the unreadable part is reported, not fatal
    assert "dataset_hash" in text and "model.name" in text  # run info from the manifest
    for name in ("accuracy", "bias", "option_shares", "invalid", "leaderboard_accuracy"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file()
        assert (tmp_path / "tables" / f"{name}.md").is_file()
        assert f"tables/{name}.csv" in text
    # rebuilt tables equal the ones computed from the frame in memory
    rebuilt = pd.read_csv(tmp_path / "tables" / "accuracy.csv", keep_default_na=False)
    direct = compute_tables(frame, n_boot=N_BOOT).accuracy
    assert len(rebuilt) == len(direct)
    for col in ("model", "task", "instance"):
        assert list(rebuilt[col].astype(str)) == list(direct[col])
    for col in ("n", "correct", "invalid", "accuracy", "ci_low", "ci_high"):
        assert np.allclose(rebuilt[col].astype(float), direct[col].astype(float))
    bias = pd.read_csv(tmp_path / "tables" / "bias.csv")
    assert "expected" in set(bias.source)  # option_probs survived the Parquet map column
    # plots: valid, drawn images, linked from the Markdown and embedded in the HTML
    html = (tmp_path / "report.html").read_text()
    for name in ("accuracy", "option_shares", "fixed_vs_random"):
        png = tmp_path / "plots" / f"{name}.png"
        _check_png(png)
        assert f"plots/{name}.png" in text
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html


def test_read_predictions_drops_repeated_keys(tmp_path, preds):
    folder = tmp_path / "predictions"
    folder.mkdir()
    part = preds.iloc[:40]
    pq.write_table(to_arrow(part), folder / "part-a.parquet")
    pq.write_table(to_arrow(part.iloc[:10]), folder / "part-b.parquet")
    problems: list[str] = []
    frame = read_predictions(tmp_path, problems)
    assert len(frame) == 40 and frame["key"].is_unique
    assert any("10 prediction rows repeat a key" in p for p in problems)
    assert "reply" not in frame.columns  # scoring leaves the bulky text on disk
    assert "reply" in read_predictions(tmp_path, columns=None).columns


def test_report_of_an_empty_run(tmp_path):
    report = write_report(tmp_path, n_boot=N_BOOT)
    text = report.read_text()
    assert "0 predictions" in text
    assert (tmp_path / "report.html").is_file()
    assert pd.read_csv(tmp_path / "tables" / "accuracy.csv").empty


def test_nan_nulls_score_like_none():
    # pandas nulls arrive as NaN as often as None: scores must not change
    df = make_predictions("m", "mostly_right", seed=8)
    nan_df = df.astype({"pred": object, "invalid_reason": object})
    nan_df.loc[nan_df.pred.isna(), "pred"] = math.nan
    a = compute_tables(df, n_boot=50).accuracy
    b = compute_tables(nan_df, n_boot=50).accuracy
    pd.testing.assert_frame_equal(a, b)


def test_an_all_invalid_task_panel_says_why_it_is_empty():
    frame = make_predictions("m", "uniform", invalid_rate=0.0)
    frame.loc[frame.task == TASKS[0].name, ["pred", "invalid_reason"]] = [None, "no_answer_field"]
    shares = compute_tables(frame, n_boot=N_BOOT).option_shares
    assert "no valid answers" in empty_panel_note(shares[shares.task == TASKS[0].name])
    assert empty_panel_note(shares[shares.task == TASKS[1].name]) is None


# --- a report people read --------------------------------------------------------------------
def test_report_reads_headline_first_glossary_and_folded_configuration_last(tmp_path, preds):
    from geoxray.score.report import GLOSSARY, build_sections, glossary_rows

    tables = compute_tables(preds, n_boot=N_BOOT)
    write_report(tmp_path, preds=preds, manifest={"model": "good", "config": {"a": 1}},
                 n_boot=N_BOOT)
    text = (tmp_path / "report.md").read_text()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "Headline" and headings[-2:] == ["Glossary", "Configuration"]
    assert text.index("<details>") > text.index("## Configuration")
    html = (tmp_path / "report.html").read_text()
    assert "<details><summary>" in html and html.index("<details>") > html.index("Glossary")
    # the headline: one row per (task, model), task order, accuracy with CI and chance
    head_rows = [line for line in text.split("## Accuracy per task")[0].splitlines()
                 if line.startswith("| 1. Pose, fixed position")]
    assert len(head_rows) == preds["model"].nunique()
    # every column of every table in the report has a glossary entry
    sections = build_sections(preds, tables, {"model": "good"}, {}, {}, [])
    shown = {c for _, blocks in sections for b in blocks if b.table is not None
             for c in b.table.columns}
    defined = set(glossary_rows(sorted(shown))["column"])
    missing = {c for c in shown if c not in defined and not (
        c.startswith("task ") and "task N" in defined)} - {"column", "meaning"}
    assert not missing, missing
    assert all(GLOSSARY[k] for k in defined)


def test_console_table_has_one_row_per_task_and_model():
    from geoxray.score.report import console_table

    one = make_predictions("solo", "mostly_right", seed=3)
    text = console_table(compute_tables(one, n_boot=N_BOOT))
    lines = text.splitlines()
    assert len(lines) == 2 + len(TASKS)  # header, rule, one row per task
    assert lines[0].split()[:2] == ["task", "n"] and "model" not in lines[0]
    acc = compute_tables(one, n_boot=N_BOOT).accuracy.query("instance == 'all'")
    first = acc.sort_values("task_number").iloc[0]
    assert f"{first['accuracy']:.3f}" in lines[2] and lines[2].startswith("1. Pose, fixed")
    two = pd.concat([one, make_predictions("other", "constant", seed=4)])
    lines = console_table(compute_tables(two, n_boot=N_BOOT)).splitlines()
    assert "model" in lines[0] and len(lines) == 2 + 2 * len(TASKS)


def test_fixed_vs_random_legend_names_models_apart_from_conditions(tmp_path, monkeypatch):
    """A model called `random` must not read as the random-position condition."""
    from geoxray.score import plots

    seen = {}
    original = plots._legend_outside

    def spy(ax, handles=None, labels=None):
        seen["labels"] = labels
        return original(ax, handles, labels)

    monkeypatch.setattr(plots, "_legend_outside", spy)
    frame = make_predictions("random", "uniform", seed=5)
    plots.plot_fixed_vs_random(compute_tables(frame, n_boot=N_BOOT).accuracy,
                               tmp_path / "fvr.png")
    assert "model: random" in seen["labels"]
    assert not any(label == "random position" for label in seen["labels"])
    assert any("9 crops" in label for label in seen["labels"])


def test_zero_bars_are_drawn_and_labelled():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from geoxray.score.plots import label_bars

    fig, ax = plt.subplots()
    label_bars(ax, [0.0, 1.0, 2.0], [0.0, 0.5, float("nan")], [0.1, 0.6, float("nan")], 0.4,
               "red")
    stubs = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(stubs) == 1  # only the zero bar gets a stub
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.50", "n/a"]
    plt.close(fig)
