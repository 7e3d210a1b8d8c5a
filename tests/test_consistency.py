"""Geometric variants checked on the synthetic world (markers rendered into real tiles: the
transformed gold must be what the transformed image shows), consistency scores of a constant
baseline and an oracle, and PriDe's prior recovered from synthetic probability tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geoxray.bench.tasks import CROPS, DIRECTIONS, crop_box, get_task
from geoxray.bench.variants import (IDENTITY, TASK_VARIANTS, inverse_label, label_map,
                                    permutation, rotation_note, transform, variants)
from geoxray.data import render
from geoxray.data.world import Marker, World
from geoxray.score import debias
from geoxray.score.consistency import consistency_table, pride_table

SEED, MPP, SIZE = 7, 0.5, 96
HEADING_DEG = {"N": 0.0, "E": 90.0, "S": 180.0, "W": 270.0}


def _marker_xy(plain: np.ndarray, marked: np.ndarray) -> tuple[float, float]:
    """(column, row) centroid of what the marker changed."""
    diff = np.abs(marked.astype(float) - plain.astype(float)).sum(axis=2)
    assert diff.sum() > 0, "marker not visible"
    rows, cols = np.indices(diff.shape)
    return ((cols + 0.5) * diff).sum() / diff.sum(), ((rows + 0.5) * diff).sum() / diff.sum()


def _tiles(x, y, markers):
    plain = render.render_tile(World(SEED), x, y, MPP, SIZE, supersample=1)
    marked = render.render_tile(World(SEED, markers=markers), x, y, MPP, SIZE, supersample=1)
    return plain, marked


def _row(task, answer, crop="none", item_id="item"):
    return {"item_id": item_id, "task": task, "answer": answer, "crop": crop,
            "location": "loc"}


def _direction_in_image(col, row, width, height) -> str:
    """Compass label of an image point seen from the image centre, with up = north."""
    dx, dy = col - width / 2, height / 2 - row
    azimuth = math.degrees(math.atan2(dx, dy)) % 360
    return DIRECTIONS[int(((azimuth + 45) % 360) // 90)]


def _cell(col, row, width, height) -> str:
    """The crop position name of a point: its 3 x 3 cell in thirds... of the crop, where the
    crops put the camera at 1/4, 1/2 or 3/4 of the width and height."""
    u, v = col / width, row / height
    c = 0 if u < 0.375 else (2 if u > 0.625 else 1)
    r = 0 if v < 0.375 else (2 if v > 0.625 else 1)
    names = {(0, 0): "top_left", (1, 0): "top", (2, 0): "top_right", (0, 1): "left",
             (1, 1): "center", (2, 1): "right", (0, 2): "bottom_left", (1, 2): "bottom",
             (2, 2): "bottom_right"}
    return names[(c, r)]


GROUND = np.zeros((8, 8, 3), dtype=np.uint8)  # the ground view: unchanged by rotations


@pytest.mark.parametrize("task", ["pose_fixed", "pose_random"])
@pytest.mark.parametrize("gold", DIRECTIONS)
def test_pose_rotation_gold_is_where_the_world_puts_the_view(task, gold):
    """A marker 5 m ahead of the camera along the gold heading: after the tile is turned,
    the marker lies in the image direction the transformed gold names."""
    x, y = 40.0, -25.0
    a = math.radians(HEADING_DEG[gold])
    plain, marked = _tiles(x, y, [Marker(x + 5 * math.sin(a), y + 5 * math.cos(a), 1.0,
                                         (1.0, 0.0, 1.0))])
    crop = "top_left" if task == "pose_random" else "none"
    x0, y0, x1, y1 = crop_box(crop, SIZE, SIZE)
    plain, marked = plain[y0:y1, x0:x1], marked[y0:y1, x0:x1]
    for variant in variants(task):
        tp = transform(_row(task, gold, crop), [plain, GROUND], variant)
        tm = transform(_row(task, gold, crop), [marked, GROUND], variant)
        col, row = _marker_xy(tp.images[0], tm.images[0])
        # the camera is the uncropped tile's centre: in the crop it is at the crop's centre
        # offset; turn that point with the image too, via a second marker-free computation
        cam = np.zeros(plain.shape[:2])
        cam[SIZE // 2 - y0, SIZE // 2 - x0] = 1.0
        cam_t = transform(_row(task, gold, crop), [cam[..., None].repeat(3, 2), GROUND],
                          variant).images[0][..., 0]
        cr, cc = np.argwhere(cam_t == 1.0)[0]
        seen = _direction_in_image(col - (cc + 0.5) + tm.images[0].shape[1] / 2,
                                   row - (cr + 0.5) + tm.images[0].shape[0] / 2,
                                   tm.images[0].shape[1], tm.images[0].shape[0])
        assert tm.row["answer"] == seen, (variant, gold)
        assert tm.images[1] is GROUND  # the ground view is untouched
        stated = transform(_row(task, gold, crop), [marked, GROUND], variant,
                           state_rotation=True)
        assert stated.row["answer"] == gold  # stated rotation: the compass answer holds
        assert (stated.prompt_note is None) == (variant == IDENTITY)


@pytest.mark.parametrize("crop", CROPS)
def test_intra_map_gold_is_where_the_camera_lands_in_the_turned_crop(crop):
    x, y = -12.0, 33.0
    plain, marked = _tiles(x, y, [Marker(x, y, 1.0, (0.0, 1.0, 1.0))])
    x0, y0, x1, y1 = crop_box(crop, SIZE, SIZE)
    plain, marked = plain[y0:y1, x0:x1], marked[y0:y1, x0:x1]
    assert _cell(*_marker_xy(plain, marked), x1 - x0, y1 - y0) == crop  # the task's own gold
    for variant in variants("intra_map"):
        tp = transform(_row("intra_map", crop, crop), [plain, GROUND], variant)
        tm = transform(_row("intra_map", crop, crop), [marked, GROUND], variant)
        h, w = tm.images[0].shape[:2]
        assert _cell(*_marker_xy(tp.images[0], tm.images[0]), w, h) == tm.row["answer"]
    mirrored = transform(_row("intra_map", crop, crop), [marked, GROUND + 1], "mirror")
    assert np.array_equal(mirrored.images[1], (GROUND + 1)[:, ::-1])  # the view mirrors too


@pytest.mark.parametrize("gold", ["0", "1", "2", "3"])
def test_crossmap_shift_gold_indexes_the_tile_of_the_camera(gold):
    x, y = 5.0, 5.0
    centres = [(x + 60.0 * k, y - 35.0 * k) for k in range(4)]
    g = int(gold)
    centres[0], centres[g] = centres[g], centres[0]  # the camera's tile at index g
    world = World(SEED, markers=[Marker(x, y, 1.5, (1.0, 1.0, 0.0))])
    plain_world = World(SEED)
    tiles = [render.render_tile(world, cx, cy, MPP, SIZE, supersample=1) for cx, cy in centres]
    plains = [render.render_tile(plain_world, cx, cy, MPP, SIZE, supersample=1)
              for cx, cy in centres]
    has_marker = [bool(np.any(t != p)) for t, p in zip(tiles, plains)]
    assert has_marker.index(True) == g and sum(has_marker) == 1
    for variant in variants("crossmap_std"):
        out = transform(_row("crossmap_std", gold), tiles + [GROUND], variant)
        new = int(out.row["answer"])
        assert any(out.images[new] is t for t, m in zip(tiles, has_marker) if m)
        assert out.images[-1] is GROUND and sorted(out.sources) == [0, 1, 2, 3, 4]
        assert all(s == "" for s in out.uuid_suffixes)  # same pixels: cache entries hold


@pytest.mark.parametrize("offset,in_range", [((10.0, -8.0), "true"), ((40.0, 30.0), "false")])
def test_localization_rotations_keep_the_answer(offset, in_range):
    x, y = 0.0, 0.0  # the camera; the tile is centred `offset` away
    plain, marked = _tiles(x + offset[0], y + offset[1], [Marker(x, y, 1.0, (1.0, 0.0, 0.0))])
    for variant in variants("loc_prior"):
        tp = transform(_row("loc_prior", in_range), [plain, GROUND], variant)
        tm = transform(_row("loc_prior", in_range), [marked, GROUND], variant)
        visible = bool(np.any(tp.images[0] != tm.images[0]))
        assert tm.row["answer"] == ("true" if visible else "false") == in_range


def test_label_maps_and_rows():
    assert label_map("pose_fixed", "rot90") == {"N": "E", "E": "S", "S": "W", "W": "N"}
    assert label_map("intra_map", "rot90")["top_left"] == "top_right"
    assert label_map("intra_map", "rot90")["top"] == "right"
    assert label_map("intra_map", "mirror")["bottom_left"] == "bottom_right"
    assert label_map("crossmap_std", "shift1") == {"0": "3", "1": "0", "2": "1", "3": "2"}
    assert inverse_label("pose_fixed", "rot90", "E") == "N"
    for task, names in TASK_VARIANTS.items():
        for v in names:  # every label map is a permutation of the options
            assert sorted(label_map(task, v).values()) == sorted(get_task(task).options)
    out = transform(_row("pose_fixed", "N", item_id="abc"), [GROUND, GROUND], "rot270")
    assert out.row["item_id"] == "abc~rot270" and out.row["base_item_id"] == "abc"
    assert out.row["variant"] == "rot270" and out.row["answer"] == "W"
    assert out.uuid_suffixes == ["~rot270", ""]
    assert rotation_note("rot90").endswith("north points to the right of the image.")
    with pytest.raises(ValueError, match="no variant"):
        label_map("loc_prior", "mirror")


# --- consistency scores: constant baseline vs oracle ----------------------------------------
def _variant_predictions(model, task, answerer, n_base=40, seed=0):
    rng = np.random.default_rng(seed)
    spec = get_task(task)
    rows = []
    for b in range(n_base):
        gold0 = spec.options[rng.integers(spec.K)]
        for v in variants(task):
            gold = label_map(task, v)[gold0]
            pred = answerer(spec, gold, rng)
            rows.append({"model": model, "decode": "choice", "task": task,
                         "base_item_id": f"b{b}", "variant": v, "answer": gold, "pred": pred,
                         "location": f"l{b // 4}", "option_probs": None})
    return rows


def test_constant_baseline_is_inconsistent_and_the_oracle_is_not():
    rows = []
    for task in ("pose_fixed", "intra_map", "crossmap_std", "loc_prior"):
        # intra_map's first option, `center`, is a fixed point of every variant; a corner
        # is not (a constant `center` is consistent on the centre items: ~1/9 of them)
        constant = "top_left" if task == "intra_map" else get_task(task).options[0]
        rows += _variant_predictions("constant", task, lambda s, g, r, c=constant: c)
        rows += _variant_predictions("oracle", task, lambda s, g, r: g)
    table = consistency_table(pd.DataFrame(rows)).set_index(["model", "task"])
    for task in ("pose_fixed", "intra_map", "crossmap_std"):
        const, oracle = table.loc[("constant", task)], table.loc[("oracle", task)]
        assert const["circular_accuracy"] == 0.0 and const["flip_rate"] == 1.0
        assert oracle["circular_accuracy"] == 1.0 and oracle["flip_rate"] == 0.0
        assert oracle["rstd"] == 0.0
        K = get_task(task).K
        assert const["rstd"] == pytest.approx(math.sqrt(K - 1) / K)  # recalls 1, 0, ..., 0
        assert const["n_base"] == 40 and oracle["acc_identity"] == 1.0
    # invariant variants: a constant answer IS consistent there; its circular accuracy is
    # the share of items whose gold is that answer
    loc = table.loc[("constant", "loc_prior")]
    assert loc["flip_rate"] == 0.0 and 0 < loc["circular_accuracy"] < 1


def test_a_model_that_reads_geometry_half_the_time():
    rng_rows = _variant_predictions(
        "half", "pose_fixed", lambda s, g, r: g if r.random() < 0.5 else s.options[0],
        n_base=400)
    t = consistency_table(pd.DataFrame(rng_rows)).iloc[0]
    # right on a variant with prob 0.5 + 0.5 * 1/4; circular needs all 4
    assert t["accuracy_identity"] == pytest.approx(0.625, abs=0.06)
    assert t["circular_accuracy"] == pytest.approx(0.625 ** 4, abs=0.05)
    assert 0.5 < t["flip_rate"] < 1.0


# --- PriDe on synthetic probability tables ---------------------------------------------------
def _observed(content_logits, prior):
    p = np.exp(content_logits - content_logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    obs = p * prior
    return obs / obs.sum(axis=-1, keepdims=True), p


def test_pride_recovers_an_injected_prior_and_the_accuracy():
    rng = np.random.default_rng(0)
    K, n = 4, 2000
    prior = np.array([0.7, 0.1, 0.12, 0.08])
    gold = rng.integers(K, size=n)
    logits = rng.normal(0, 1.0, size=(n, K))
    logits[np.arange(n), gold] += 1.2  # the content favours the gold, noisily
    obs, clean = _observed(logits, prior)
    raw_acc = np.mean(obs.argmax(1) == gold)
    oracle_acc = np.mean(clean.argmax(1) == gold)
    # estimation subset: 100 items under the 4 cyclic variants (content at j -> label j + v)
    perms = np.vstack([permutation("pose_fixed", v) for v in variants("pose_fixed")])
    sub = logits[:100]
    moved = np.stack([np.take_along_axis(sub, np.argsort(perms[v])[None].repeat(100, 0), 1)
                      for v in range(4)], axis=1)  # (100, 4 variants, K)
    est = debias.pride_prior(_observed(moved, prior)[0], perms)
    assert est == pytest.approx(prior, abs=0.02)
    deb = debias.debias(obs[100:], est)
    deb_acc = np.mean(deb.argmax(1) == gold[100:])
    assert raw_acc < oracle_acc - 0.1  # the prior costs accuracy
    assert deb_acc == pytest.approx(np.mean(clean[100:].argmax(1) == gold[100:]), abs=0.01)


def test_pride_refuses_variants_that_do_not_identify_a_prior():
    for task in ("intra_map", "loc_prior"):  # the centre crop / true-false never move
        perms = np.vstack([permutation(task, v) for v in variants(task)])
        with pytest.raises(ValueError, match="not identifiable"):
            debias.check_latin(perms)
    debias.check_latin(np.vstack([permutation("crossmap_std", v)
                                  for v in variants("crossmap_std")]))


def test_pride_table_from_variant_predictions():
    rng = np.random.default_rng(3)
    prior = np.array([0.1, 0.1, 0.6, 0.2])  # likes "S"
    spec = get_task("pose_fixed")
    rows = []
    for b in range(300):
        g0 = rng.integers(4)
        logits0 = rng.normal(0, 1, 4)
        logits0[g0] += 1.5
        for v in variants("pose_fixed"):
            perm = permutation("pose_fixed", v)
            logits = np.empty(4)
            logits[perm] = logits0  # content j shows at label perm[j]
            obs, _ = _observed(logits, prior)
            rows.append({"model": "m", "decode": "choice", "task": "pose_fixed",
                         "base_item_id": f"b{b:03d}", "variant": v,
                         "answer": spec.options[perm[g0]], "pred": None,
                         "location": f"l{b}", "option_probs": dict(zip(spec.options, obs))})
    # intra_map rows with probabilities: no prior can be identified, so no row
    rows.append({**rows[0], "task": "intra_map", "answer": "center",
                 "option_probs": {c: 1 / 9 for c in CROPS}})
    t = pride_table(pd.DataFrame(rows), fraction=0.2)
    assert list(t["task"]) == ["pose_fixed"]
    r = t.iloc[0]
    assert r["n_estimate"] == 60 and r["n"] == 240
    assert r["accuracy_debiased"] > r["accuracy_raw"] + 0.05
    got = dict(kv.split(":") for kv in r["prior"].split())
    assert float(got["S"]) == pytest.approx(0.6, abs=0.05)


def test_report_scores_originals_and_adds_the_consistency_sections(tmp_path):
    from geoxray.score.report import write_report

    rows = _variant_predictions("oracle", "pose_fixed", lambda s, g, r: g, n_base=12)
    rng = np.random.default_rng(1)
    for r in rows:  # choice-mode probabilities peaked on the answer given
        r["option_probs"] = {o: (0.7 if o == r["pred"] else 0.1) for o in DIRECTIONS}
        r["item_id"] = r["base_item_id"] + ("" if r["variant"] == IDENTITY
                                            else "~" + r["variant"])
        r["key"] = r["item_id"]
    rng.shuffle(rows)
    write_report(tmp_path, preds=pd.DataFrame(rows), n_boot=50)
    acc = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert acc.query("instance == 'all'")["n"].tolist() == [12]  # originals only
    text = (tmp_path / "report.md").read_text()
    assert "## Geometric consistency" in text and "## Prior-corrected accuracy (PriDe)" in text
    assert "circular_accuracy" in text.split("## Glossary")[1]  # its columns are explained


def test_originals_without_a_variant_count_as_identity():
    """Identity rows reused from a plain run carry no variant: they still complete a set."""
    rows = _variant_predictions("oracle", "pose_fixed", lambda s, g, r: g, n_base=5)
    for r in rows:
        r["item_id"] = r["base_item_id"] + ("" if r["variant"] == IDENTITY
                                            else "~" + r["variant"])
        if r["variant"] == IDENTITY:
            r["variant"], r["base_item_id"] = None, None
    t = consistency_table(pd.DataFrame(rows)).iloc[0]
    assert t["n_base"] == 5 and t["circular_accuracy"] == 1.0


# --- through the real pipeline: Ray Data -> stage (variants built from decoded images) ------
def test_consistency_run_asks_every_variant_and_a_constant_answer_flips(
        ray_cluster, tiny_bench, tmp_path):
    """`run.consistency=true`: each selected item is asked once per variant of its task (the
    identity keeps the item's own key); the constant baseline (always the first option) is
    never right on every variant of a pose or cross-map item and always flips there."""
    from conftest import eval_config
    from geoxray.run import store
    from geoxray.run.evaluate import evaluate

    tasks = ["pose_fixed", "crossmap_std"]
    cfg = eval_config(tmp_path, tiny_bench, "model=constant", "decode=choice",
                      "run.consistency=true", "run.max_items_per_task=12",
                      f"run.tasks=[{','.join(tasks)}]")
    evaluate(cfg)
    preds = store.read_predictions(tmp_path).to_pandas()
    assert preds["invalid_reason"].isna().all()
    for task in tasks:
        got = preds[preds.task == task]
        assert sorted(got["variant"].unique()) == sorted(variants(task))
        assert got.groupby("base_item_id").size().eq(len(variants(task))).all()
        assert got["base_item_id"].nunique() == 12
        # gold moves with the geometry: a variant's gold is the identity's gold mapped
        ident = got[got.variant == IDENTITY].set_index("base_item_id")["answer"]
        for r in got[got.variant != IDENTITY].itertuples():
            assert r.answer == label_map(task, r.variant)[ident[r.base_item_id]]
    # the identity rows carry the keys a plain run gives those items; variants have their own
    from geoxray.run.selection import KeyMaker
    keys = KeyMaker.for_config(cfg)
    ident = preds[preds.variant == IDENTITY]
    assert all(k == keys.key(i, t) for k, i, t in zip(ident.key, ident.item_id, ident.task))
    assert preds["key"].is_unique
    table = consistency_table(preds).set_index("task")
    for task in tasks:
        assert table.loc[task, "circular_accuracy"] == 0.0
        assert table.loc[task, "flip_rate"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "Geometric consistency" in report
