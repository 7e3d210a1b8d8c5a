"""Building benchmarks from miniature copies of all five source layouts: valid index files that
the items reader accepts, QC that reports and skips bad records, location-disjoint splits,
negatives and distractors from the distance band, byte-identical rebuilds, the SFT export."""
from __future__ import annotations

import csv
import math
import json
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from geoxray.bench.index import build_items, packaged_index_root
from geoxray.bench.tasks import TASKS, crop_box, get_task
from geoxray.data.build import build_from_sources
from geoxray.data.panorama import perspective_view
from geoxray.data.qc import QCReport, check_capture_gap
from geoxray.data.sources.record import SourceRecord, Tile
from geoxray.data.tiles import haversine_m
from test_sources import gsv_name, make_all, smooth_image, write

N = 10  # locations per source: 5 per split, enough for 3 distractors each
BAND = (100.0, 5000.0)
OPTS = dict(view_size=64, tile_size=64, band_m=BAND, workers=2)


def damage(cfg: dict[str, dict]) -> None:
    """One bad record of each kind the QC must report and skip."""
    rng = np.random.default_rng(9)
    cvglobal = Path(cfg["CVGlobal"]["root"])
    write(cvglobal / "streetview2048" / gsv_name(95.0, 153.0, "2022-12", "bad", 10, 3), smooth_image(rng, 64, 128))
    cvusa = Path(cfg["CVUSA"]["root"])
    with (cvusa / "split" / "all.csv").open("a", newline="") as fh:  # id N+1: no panorama file
        csv.writer(fh).writerow([43.30, -122.20, 43.30, -122.20, 0.0])
    vigor = Path(cfg["VIGOR"]["root"]) / "Chicago"
    first = sorted((vigor / "panorama").iterdir())[0]
    write(first, np.full((64, 128, 3), 128, np.uint8))  # blank
    far = "farpano,41.900000,-87.600000,.jpg"
    write(vigor / "panorama" / far, smooth_image(rng, 64, 128))
    sat = sorted((vigor / "satellite").iterdir())[0].name
    labels = Path(cfg["VIGOR"]["root"]) / "splits" / "Chicago" / "pano_label_balanced.txt"
    labels.write_text(labels.read_text() + f"{far} {sat} 500.0 0.0 {sat} 0 0 {sat} 0 0 {sat} 0 0\n")
    omni = Path(cfg["OmniCity"]["root"]) / "satellite-level/image-satellite/satellite-image-view2"
    sorted(omni.rglob("*.jpg"))[1].write_bytes(b"not a jpeg")
    llmgeo = Path(cfg["LLMGeo"]["root"])
    rows = list(csv.DictReader((llmgeo / "metadata.csv").open()))
    dup = dict(rows[0], id="499")  # same place as id 400
    for deg in (0, 90, 180, 270):
        write(llmgeo / str(deg) / "499.png", smooth_image(rng, 64, 64))
    write(llmgeo / "ProcessedTiles" / "499.png", smooth_image(rng, 96, 96))
    with (llmgeo / "metadata.csv").open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow(dup)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("sources")
    cfg = {e["kind"]: e for e in make_all(src, N)}
    damage(cfg)
    out = tmp_path_factory.mktemp("bench")
    report = build_from_sources(list(cfg.values()), out, sft=True, **OPTS)
    return cfg, out, report


def load_index(out: Path) -> dict[tuple[str, str, str], list[dict]]:
    files = {}
    for path in sorted((out / "index").rglob("*.json")):
        rel = path.relative_to(out / "index").parts
        split, folder = ("train", rel[1]) if rel[0] == "train" else ("test", rel[0])
        files[(split, folder, path.stem)] = json.loads(path.read_text())
    return files


def test_qc_reports_and_skips_bad_records(built):
    _, out, report = built
    counts = report.qc["counts"]
    assert counts["bad_coordinates"] == 1 and counts["missing_image"] == 1
    assert counts["blank_image"] == 1 and counts["camera_outside_tile"] == 1
    assert counts["unreadable_image"] == 1 and counts["duplicate_location"] == 1
    assert json.loads((out / "build_report.json").read_text())["qc"]["counts"] == counts
    ids = {r["original_id"] for recs in load_index(out).values() for r in recs}
    for bad in ("bad", f"{N + 1}", "pano00_x-Y", "farpano"):
        assert bad not in ids
    files = load_index(out)
    llm_ids = {r["image_id"].split("_")[0] for (s, f, inst), recs in files.items()
               if inst.startswith("LMMGeo") for r in recs}
    assert "499" not in llm_ids and "400" in llm_ids
    # The unreadable OmniCity view-2 aerial drops that instance only.
    per_instance = Counter(inst for (s, f, inst), recs in files.items()
                           if f == "Orin4_SameLocation" for _ in recs)
    assert per_instance["OmniCity_view1"] == per_instance["OmniCity_view3"] == 4 * N
    assert per_instance["OmniCity_view2"] == 4 * (N - 1)
    assert report.records_kept == {"CVGlobal": N, "CVUSA": N, "LLMGeo": N, "OmniCity": N, "VIGOR": N - 1}


def test_index_files_match_the_authors_structure(built):
    _, out, _ = built
    authors = defaultdict(set)
    for path in packaged_index_root().rglob("*.json"):
        for rec in json.loads(path.read_text()):
            authors[path.parent.name] |= set(rec)
            authors["GroundImage"] |= set(rec["GroundImage"])
            aerials = [c["AerialImage"] for c in rec.get("AerialCandidates", [])] or [rec["AerialImage"]]
            for a in aerials:
                authors["AerialImage"] |= set(a)
    for (split, folder, instance), recs in load_index(out).items():
        for rec in recs:
            assert set(rec) <= authors[folder], (folder, set(rec) - authors[folder])
            assert {"image_id", "source", "GroundImage"} <= set(rec)
            g = rec["GroundImage"]
            assert {"file_path", "fov", "capture_time", "real_location", "orientation", "degree"} <= set(g)
            assert set(g) <= authors["GroundImage"]
            for a in [c["AerialImage"] for c in rec.get("AerialCandidates", [])] or [rec["AerialImage"]]:
                assert {"file_path", "zoom_level", "centered"} <= set(a) <= authors["AerialImage"]
            if folder == "LocationSelection":
                assert sum(c["is_original"] for c in rec["AerialCandidates"]) == 1


def test_items_reader_accepts_the_build_and_counts_39_per_record(built):
    _, out, report = built
    items = pq.read_table(out / "items.parquet")
    assert report.item_problems == {}
    assert items.equals(build_items(out / "index", out / "images"))  # what the reader makes
    files = load_index(out)
    per_folder = {t.index_folder: 0 for t in TASKS}
    for task in TASKS:
        per_folder[task.index_folder] += len(task.crops)
    for split in ("test", "train"):
        want = sum(len(recs) * per_folder[f] for (s, f, _), recs in files.items()
                   if s == split and f in per_folder)
        assert report.items[split] == want == items.filter(pc.equal(items["split"], split)).num_rows
    # With every folder complete an instance has 39 items per base record.
    inst = "CVGloable"
    n_base = len(files[("test", "Orin4_SameLocation", inst)])
    rows = [r for r in items.to_pylist() if r["instance"] == inst and r["split"] == "test"]
    assert len(rows) == 39 * n_base
    assert all(h != "" for r in items.to_pylist() for h in r["image_hashes"])  # images exist


def test_no_location_in_both_splits(built):
    _, out, report = built
    seen = defaultdict(set)
    for (split, folder, instance), recs in load_index(out).items():
        source = instance.split("_")[0]
        for rec in recs:
            seen[(source, rec["GroundImage"]["real_location"])].add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    assert {s for splits in seen.values() for s in splits} == {"test", "train"}
    for source, n in report.locations.items():
        assert n["test"] == n["train"] or abs(n["test"] - n["train"]) == 1


def _tile_locations(files) -> dict[str, tuple[float, float]]:
    where = {}
    for (split, folder, inst), recs in files.items():
        if folder == "Orin4_SameLocation":
            for r in recs:
                lat, lon = map(float, r["GroundImage"]["real_location"].split(","))
                where[r["AerialImage"]["file_path"]] = (lat, lon, split, inst)
    return where


def test_negatives_are_half_and_far_away(built):
    _, out, report = built
    files = load_index(out)
    tiles = _tile_locations(files)
    for (split, folder, inst), recs in files.items():
        if folder != "Location4_50_in_range":
            continue
        n_base = len(files[(split, "Orin4_SameLocation", inst)])
        negatives = [r for r in recs if not r["GroundImage"]["in_range"]]
        if len(recs) == n_base:  # nothing was left out for lack of distractors
            assert len(negatives) == n_base // 2
        for r in recs:
            lat, lon = map(float, r["GroundImage"]["real_location"].split(","))
            tlat, tlon, tsplit, tinst = tiles[r["AerialImage"]["file_path"]]
            assert (tsplit, tinst) == (split, inst)
            d = float(haversine_m(lat, lon, tlat, tlon))
            if r["GroundImage"]["in_range"]:
                assert d == 0.0
            else:
                assert BAND[0] <= d <= BAND[1]


def test_distractors_are_other_locations_in_the_band(built):
    _, out, report = built
    files = load_index(out)
    tiles = _tile_locations(files)
    positions = Counter()
    for (split, folder, inst), recs in files.items():
        if folder != "LocationSelection":
            continue
        own = {r["image_id"]: r["AerialImage"]["file_path"] for r in files[(split, "Orin4_SameLocation", inst)]}
        for r in recs:
            cands = r["AerialCandidates"]
            paths = [c["AerialImage"]["file_path"] for c in cands]
            assert len(cands) == 4 and len(set(paths)) == 4
            k = next(i for i, c in enumerate(cands) if c["is_original"])
            positions[k] += 1
            assert paths[k] == own[r["image_id"]]
            lat, lon = map(float, r["GroundImage"]["real_location"].split(","))
            for i, p in enumerate(paths):
                tlat, tlon, tsplit, tinst = tiles[p]
                assert (tsplit, tinst) == (split, inst)
                if i != k:
                    assert BAND[0] <= float(haversine_m(lat, lon, tlat, tlon)) <= BAND[1]
    assert max(positions.values()) - min(positions.values()) <= 8  # balanced per instance


def test_instances_with_too_few_locations_are_reported(built):
    _, out, report = built
    # LLMGeo's zoom-21 instance has 2 locations: no LocationSelection, counted as no_distractor.
    files = load_index(out)
    assert not any(f == "LocationSelection" and i == "LMMGeo_zoom21" for (_, f, i) in files)
    assert report.qc["counts"]["no_distractor"] > 0


def test_views_follow_the_file_name_heading(built):
    cfg, out, _ = built
    pano_dir = Path(cfg["CVGlobal"]["root"]) / "streetview2048"
    pano_path = sorted(p for p in pano_dir.iterdir() if "_bad_" not in p.name)[3]
    heading = float(pano_path.name.split("_d")[-1].split("_")[0])
    pano = cv2.cvtColor(cv2.imread(str(pano_path)), cv2.COLOR_BGR2RGB)
    stem = pano_path.name[:-4]
    for name, az in (("N", 0.0), ("E", 90.0)):
        got = cv2.cvtColor(cv2.imread(str(out / "images" / "streetview2048" / f"{stem}{name}.jpg")),
                           cv2.COLOR_BGR2RGB).astype(float)
        right = perspective_view(pano, az, 0, 90, 64, center_azimuth_deg=heading)
        wrong = perspective_view(pano, az, 0, 90, 64, center_azimuth_deg=0.0)
        assert np.abs(got - right).mean() < 3.0 < np.abs(got - wrong).mean()
    tile = cv2.imread(str(out / "images" / "satellite" / f"{stem}.jpg"))
    assert tile.shape == (64, 64, 3)


def test_rebuild_is_byte_identical(built, tmp_path):
    cfg, out, _ = built
    again = tmp_path / "again"
    build_from_sources(list(cfg.values()), again, sft=False, **{**OPTS, "workers": 1})
    first = sorted(p.relative_to(out) for p in (out / "index").rglob("*.json"))
    second = sorted(p.relative_to(again) for p in (again / "index").rglob("*.json"))
    assert first == second and first
    for rel in first:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (out / "items.parquet").read_bytes() == (again / "items.parquet").read_bytes()


def test_sft_export_is_chat_jsonl_of_the_train_split(built):
    _, out, report = built
    items = [r for r in pq.read_table(out / "items.parquet").to_pylist() if r["split"] == "train"]
    lines = [json.loads(x) for x in Path(report.sft_path).read_text().splitlines()]
    assert len(lines) == len(items) > 0
    info = json.loads((out / "sft" / "dataset_info.json").read_text())
    assert info["geoxbench_sft"]["file_name"] == "train.jsonl"
    for line, item in zip(lines, items):
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert line["messages"][1]["content"].count("<image>") == len(line["images"]) == len(item["image_paths"])
        task = get_task(item["task"])
        assert task.parse(line["messages"][2]["content"]) == item["answer"]
        assert json.loads(line["messages"][2]["content"])  # the answer is plain JSON
        if item["task"] == "pose_fixed":
            assert "Spcfically, your answer should be in JSON format" in line["messages"][0]["content"]
    # A cropped aerial has the crop's size.
    item, line = next((i, l) for i, l in zip(items, lines) if i["crop"] == "top_left")
    full = cv2.imread(str(out / "images" / item["image_paths"][0]))
    crop = cv2.imread(line["images"][0])
    x0, y0, x1, y1 = crop_box("top_left", full.shape[1], full.shape[0])
    assert crop.shape[:2] == (y1 - y0, x1 - x0)
    assert line["images"][-1] == str((out / "images" / item["image_paths"][-1]).resolve())


def test_eight_headings_add_an_orin8_folder(tmp_path):
    from test_sources import make_cvglobal
    entry = make_cvglobal(tmp_path / "src", n=8)
    report = build_from_sources([entry], tmp_path / "out", headings=8, write_items=False, **OPTS)
    files = load_index(tmp_path / "out")
    orin8 = files[("test", "Orin8", "CVGloable")]
    assert len(orin8) == 8 * report.locations["CVGlobal"]["test"]
    assert [r["GroundImage"]["orientation"] for r in orin8[:8]] == ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
    assert [r["GroundImage"]["degree"] for r in orin8[:8]] == [0, 45, 90, 135, 180, 225, 270, 315]
    assert len(files[("test", "Orin4_SameLocation", "CVGloable")]) == 4 * report.locations["CVGlobal"]["test"]


def test_capture_time_gap_rule():
    def rec(street, aerial):
        return SourceRecord("X", f"{street}-{aerial}", 1.0, 1.0, street, "views", "{deg}.png",
                            (Tile("X", "t.png", capture_time=aerial),))
    records = [rec("2020-01", "2020-06"), rec("2010-01", "2022-01"), rec(None, "2022-01")]
    qc = QCReport()
    kept = check_capture_gap(records, 60, qc)
    assert [r.pair_id for r in kept] == ["2020-01-2020-06", "None-2022-01"]
    assert qc.counts["capture_time_gap"] == 1


def test_evaluation_runs_on_the_built_benchmark(built, ray_cluster, tmp_path):
    """`geoxray eval` end to end (random baseline) on the benchmark built from sources."""
    from conftest import eval_config
    from geoxray.run import store
    from geoxray.run.evaluate import evaluate

    _, out, report = built
    bench = SimpleNamespace(items_path=out / "items.parquet", image_root=out / "images")
    cap = 30  # per task: enough to cross every stage, cheap on 2 cores
    evaluate(eval_config(tmp_path, bench, "model=random", f"run.max_items_per_task={cap}"))
    preds = store.read_predictions(tmp_path).to_pandas()
    per_task = Counter(r["task"] for r in pq.read_table(out / "items.parquet").to_pylist()
                       if r["split"] == "test")
    assert len(preds) == sum(min(cap, n) for n in per_task.values()) > 0
    assert set(preds["task"]) == {t.name for t in TASKS}
    assert preds["invalid_reason"].isna().all()  # every image found and decoded


def test_uncentred_tiles_keep_the_camera_offset(tmp_path):
    from test_sources import make_cvusa
    entry = make_cvusa(tmp_path / "src", n=8)
    build_from_sources([entry], tmp_path / "out", recenter_tiles=False, write_items=False, **OPTS)
    rec = load_index(tmp_path / "out")[("test", "Orin4_SameLocation", "CVUSA_zoom19")][0]
    # The miniature's tiles are centred 0.000004 deg south and 0.000003 deg west of the camera.
    east, north = rec["real distance"]
    assert east == pytest.approx(-0.000003 * math.pi / 180 * 6378137 * math.cos(math.radians(43.24)), rel=0.02)
    assert north == pytest.approx(-0.000004 * math.pi / 180 * 6378137, rel=0.02)
    px, py = rec["pixel distance"]
    assert px < 0 < py  # the tile centre is left of and below the camera in the image
    assert rec["AerialImage"]["centered"] is False and "real_location" in rec["AerialImage"]


def test_cli_builds_from_sources_config(tmp_path, capsys):
    """`geoxray build data=sources` with a source named on the command line."""
    from test_sources import make_cvusa
    from geoxray.cli import main

    spec = make_cvusa(tmp_path / "cvusa", n=6)
    out = tmp_path / "bench"
    source = "{kind: %s, root: '%s', zooms: [19]}" % (spec["kind"], spec["root"])
    code = main(["build", "data=sources", f"+data.sources.cvusa={source}", f"data.root={out}",
                 "data.build.test_fraction=0.5", "+data.build.view_size=64",
                 "+data.build.tile_size=96"])
    assert code == 0, capsys.readouterr().err
    items = pq.read_table(out / "items.parquet")
    assert items.num_rows > 0
    assert f"{items.num_rows} items" in capsys.readouterr().out
    # a source with no datasets is a config error naming the key
    assert main(["build", "data=sources", f"data.root={tmp_path / 'empty'}"]) == 2
    assert "data.sources" in capsys.readouterr().err
