"""The benchmark as rows: counts, crops, parsers, prompts, malformed records."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from fractions import Fraction

import pytest

from geoxray.bench.index import BuildProblems, build_items, packaged_index_root
from geoxray.bench.prompts import load_prompts
from geoxray.bench.tasks import CROPS, TASKS, crop_box, get_task
from geoxray.bench.parse import parse_reply


@pytest.fixture(scope="module")
def geoxbench_items():
    return build_items()


def test_authors_index_gives_the_42900_test_items(geoxbench_items):
    counts = Counter(geoxbench_items.column("task").to_pylist())
    assert [counts[t.name] for t in TASKS] == [1100, 9900, 1100, 9900, 9900, 1100, 9900]
    assert geoxbench_items.num_rows == 42_900
    assert len(set(geoxbench_items.column("item_id").to_pylist())) == 42_900
    assert set(geoxbench_items.column("instance").to_pylist()) == {
        "CVGloable", "CVUSA_zoom18", "CVUSA_zoom19", "CVUSA_zoom20", "LMMGeo_zoom20",
        "LMMGeo_zoom21", "LMMGeo_zoom22", "OmniCity_view1", "OmniCity_view2", "OmniCity_view3",
        "VIGOR_Chicago"}


def test_items_carry_record_crop_images_and_gold(geoxbench_items):
    rows = geoxbench_items.to_pylist()
    for row in rows[:: 97]:
        task = get_task(row["task"])
        assert row["answer"] in task.options
        assert len(row["image_paths"]) == task.n_aerials + 1
        assert (row["crop"] == "none") == (len(task.crops) == 1)
    # independent recount of gold answers straight from the JSON files
    root = packaged_index_root()
    in_range = sum(r["GroundImage"]["in_range"] is True
                   for f in (root / "Location4_50_in_range").glob("*.json")
                   for r in json.loads(f.read_text()))
    got = sum(1 for r in rows if r["task"] == "loc_prior" and r["answer"] == "true")
    assert got == in_range == 550
    intra = Counter(r["answer"] for r in rows if r["task"] == "intra_map")
    assert set(intra) == set(CROPS) and set(intra.values()) == {1100}


def test_build_is_deterministic(geoxbench_items):
    again = build_items()
    assert again.equals(geoxbench_items)


# The crop table of the benchmark README: fractions removed (left, top, right, bottom).
README_CROPS = {
    "center": ("1/6", "1/6", "1/6", "1/6"), "left": ("1/3", "1/6", "0", "1/6"),
    "right": ("0", "1/6", "1/3", "1/6"), "top": ("1/6", "1/3", "1/6", "0"),
    "bottom": ("1/6", "0", "1/6", "1/3"), "top_left": ("1/3", "1/3", "0", "0"),
    "top_right": ("0", "1/3", "1/3", "0"), "bottom_left": ("1/3", "0", "0", "1/3"),
    "bottom_right": ("0", "0", "1/3", "1/3"),
}


@pytest.mark.parametrize("crop", sorted(README_CROPS))
@pytest.mark.parametrize("size", [(512, 512), (640, 480), (300, 301)])
def test_crop_boxes_match_the_readme_table(crop, size):
    w, h = size
    left, top, right, bottom = (float(Fraction(v)) for v in README_CROPS[crop])
    x0, y0, x1, y1 = crop_box(crop, w, h)
    assert abs(x0 - left * w) <= 0.5 and abs(y0 - top * h) <= 0.5
    assert abs((w - x1) - right * w) <= 0.5 and abs((h - y1) - bottom * h) <= 0.5
    assert abs((x1 - x0) - 2 * w / 3) <= 1 and abs((y1 - y0) - 2 * h / 3) <= 1
    # the camera (the tile's centre) lands where the crop's name says
    cx, cy = (w / 2 - x0) / (x1 - x0), (h / 2 - y0) / (y1 - y0)
    horizontal = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    vertical = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    expected = "_".join(p for p in (vertical, horizontal) if p) or "center"
    assert expected == crop


@pytest.mark.parametrize("task, reply, expected", [
    ("pose_fixed", '{"explanation": "the road...", "direction": "E"}', ("E", None)),
    ("pose_fixed", '{"direction" : "w"}', ("W", None)),
    ("pose_fixed", '{"direction": "NE"}', (None, "not_an_option")),
    ("pose_fixed", "I think it is east.", (None, "no_answer_field")),
    ("pose_random", '```json\n{"Direction": "s"}\n```', ("S", None)),
    ("loc_prior", '{"is_in_range": True}', ("true", None)),
    ("loc_noprior", '{"is_in_range":false, "is_in_range": true}', ("false", None)),
    ("loc_prior", '{"is_in_range": "true"}', (None, "no_answer_field")),
    ("intra_map", '{"location": "top left"}', ("top_left", None)),
    ("intra_map", '{"location": "Bottom Right"}', ("bottom_right", None)),
    ("intra_map", '{"location": "middle"}', (None, "not_an_option")),
    ("crossmap_std", '{"matched_aerial_index": 2}', ("2", None)),
    ("crossmap_random", '{"matched_aerial_index": 7}', (None, "not_an_option")),
    ("crossmap_random", '{"matched_aerial_index": "2"}', (None, "no_answer_field")),
    ("crossmap_std", "", (None, "no_answer_field")),
])
def test_paper_parsers(task, reply, expected):
    assert parse_reply(get_task(task), reply, "paper") == expected


def test_choice_parser_maps_shown_options_back():
    assert parse_reply(get_task("intra_map"), "top right", "choice") == ("top_right", None)
    assert parse_reply(get_task("pose_fixed"), "N", "choice") == ("N", None)
    assert parse_reply(get_task("loc_prior"), "maybe", "choice") == (None, "not_an_option")
    assert parse_reply(get_task("loc_prior"), None, "choice") == (None, "no_reply")


def test_every_option_round_trips_through_its_parser():
    for task in TASKS:
        for option in task.options:
            assert task.to_option(task.answer_json(option)) == (option, None)


def test_prompts_are_the_authors_and_agree_with_the_table():
    prompts = load_prompts()
    for task in TASKS:
        assert prompts[task.name].user.count("<image>") == task.n_aerials + 1
        assert task.answer_field in prompts[task.name].system + prompts[task.name].user


def test_malformed_records_are_counted_not_fatal(tmp_path):
    root = tmp_path / "index"
    shutil.copytree(packaged_index_root(), root)
    target = root / "Orin4_SameLocation" / "VIGOR_Chicago.json"
    records = json.loads(target.read_text())
    del records[0]["GroundImage"]  # malformed
    records[1]["GroundImage"]["real_location"] = "not a coordinate"
    target.write_text(json.dumps(records))
    (root / "LocationSelection" / "CVGloable.json").write_text("{ not json")
    problems = BuildProblems()
    table = build_items(root, problems=problems)
    # 2 bad records x (1 + 9 + 9) items of tasks 1, 2, 5; one unreadable file x (1 + 9) x 100
    assert table.num_rows == 42_900 - 2 * 19 - 100 * 10
    assert sum(v for k, v in problems.counts.items() if k.startswith("malformed")) == 2 * 3
    assert sum(v for k, v in problems.counts.items() if k.startswith("unreadable")) == 1
