"""Run folders without Ray: the selection rule and keys (run/selection.py), the store's
parts, failures, quarantine, lock and selection filter (run/store.py), the folder stamp
(run/folder.py), failed items in the tables, and sweep folders."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoxray.bench.index import short_hash
from geoxray.bench.prompts import get_prompt
from geoxray.bench.schema import PREDICTION_SCHEMA
from geoxray.bench.tasks import TASKS
from geoxray.config import load_config
from geoxray.run import folder, store
from geoxray.run.selection import KeyMaker, choose, decode_fingerprint, model_fingerprint
from geoxray.score.tables import accuracy_table, invalid_reasons


# --- a small benchmark table ------------------------------------------------------------------
def items_table(per_stratum: int = 30, duplicates: int = 0) -> pa.Table:
    """pose_random: 2 instances x 4 golds, sorted by gold (as image sets sort); loc_prior: 2
    golds. Each stratum `per_stratum` items."""
    rows = []
    for task, golds in (("pose_random", "NESW"), ("loc_prior", ("true", "false"))):
        for instance in ("A", "B"):
            for gold in golds:
                for i in range(per_stratum):
                    rows.append({"item_id": f"{task}/{instance}/{gold}/{i}", "task": task,
                                 "split": "test", "instance": instance, "answer": gold})
    rows += [dict(rows[0]) for _ in range(duplicates)]
    rows.append({"item_id": "train/0", "task": "pose_random", "split": "train",
                 "instance": "A", "answer": "N"})
    return pa.Table.from_pylist(rows)


def test_cap_is_a_seeded_sample_stratified_by_task_instance_and_gold():
    table = items_table()
    chosen = choose(table, None, ["test"], cap=16, seed=0)
    assert chosen.per_task == {"pose_random": 16, "loc_prior": 16}
    assert chosen.available == 240 + 120 and chosen.limited
    assert chosen.limit_note() == "limited: 32 of 360 items"
    picked = [r for r in table.to_pylist() if r["item_id"] in chosen.item_ids]
    # 8 equal strata of pose_random share 16 items: 2 each (the first 16 rows are all gold N)
    assert Counter((r["instance"], r["answer"]) for r in picked
                   if r["task"] == "pose_random") == {(i, g): 2 for i in "AB" for g in "NESW"}
    assert chosen.gold["pose_random"] == Counter({g: 4 for g in "NESW"})
    again = choose(table, None, ["test"], cap=16, seed=0)
    other = choose(table, None, ["test"], cap=16, seed=1)
    assert again.item_ids == chosen.item_ids and other.item_ids != chosen.item_ids
    assert not choose(table, None, ["test"], cap=None).limited


def test_uneven_strata_get_proportional_shares_that_add_up():
    rows = ([{"item_id": f"a{i}", "task": "pose_random", "split": "test", "instance": "A",
              "answer": "N"} for i in range(70)]
            + [{"item_id": f"b{i}", "task": "pose_random", "split": "test", "instance": "A",
                "answer": "S"} for i in range(30)])
    chosen = choose(pa.Table.from_pylist(rows), None, ["test"], cap=10)
    assert chosen.per_task == {"pose_random": 10}
    assert chosen.gold["pose_random"] == Counter({"N": 7, "S": 3})


def test_repeated_item_rows_are_one_item_and_tasks_splits_filter():
    chosen = choose(items_table(duplicates=3), ["loc_prior"], ["test"], cap=None)
    assert chosen.per_task == {"loc_prior": 120} and chosen.selected == 120
    assert choose(items_table(duplicates=3), None, ["test"], None).selected == 360
    assert choose(items_table(), None, ["train"], None).selected == 1


def test_keys_are_the_old_formula_and_a_protocol_is_one_more_part():
    cfg = load_config(["model=random", "protocol=clean"])  # lossless crops: no key part
    task = TASKS[0].name
    old = short_hash("item-1", get_prompt(task).fingerprint, model_fingerprint(cfg.model),
                     decode_fingerprint(cfg.decode))  # the key runs before this change used
    keys = KeyMaker.for_config(cfg)
    assert keys.protocol is None and keys.key("item-1", task) == old
    assert replace(keys, protocol={"name": "cot"}).key("item-1", task) != old
    paper = KeyMaker.for_config(load_config(["model=random", "protocol=paper"]))
    assert paper.protocol == {"crop_box": "pil", "crop_resave": True}
    assert paper.key("item-1", task) != old  # the re-saved crops are other pixels
    changed = load_config(["model=random", "protocol=clean", "decode.max_tokens=8"])
    assert KeyMaker.for_config(changed).key("item-1", task) != old
    endpoint = load_config(["model=random", "protocol=clean", "model.request_timeout_s=5",
                            "model.retries=0"])
    assert KeyMaker.for_config(endpoint).key("item-1", task) == old  # not an answer's setting


# --- the store --------------------------------------------------------------------------------
def prediction_rows(keys, reason=None, task="pose_fixed", pred="N") -> pa.Table:
    rows = [{"key": k, "item_id": k, "model": "m", "decode": "paper", "task": task,
             "instance": "A", "location": f"loc{i}", "crop": "none", "answer": "N",
             "reply": None if reason else "N", "pred": None if reason else pred,
             "invalid_reason": reason, "error": "boom" if reason else None}
            for i, k in enumerate(keys)]
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def test_failures_are_kept_apart_and_only_top_level_parts_count(tmp_path):
    batch = pa.concat_tables([prediction_rows(["a", "b"]),
                              prediction_rows(["c"], reason="engine_error"),
                              prediction_rows(["d"], reason="timeout"),
                              prediction_rows(["e"], reason="missing_image")])
    assert store.write_part(tmp_path, batch) == (3, 2)  # a bad image is a mark, an answer
    assert len(store.parts(tmp_path, store.FAILURES)) == 1
    nested = tmp_path / "predictions" / "archive"
    nested.mkdir()
    pq.write_table(prediction_rows(["x"], pred="S"), nested / "part-old.parquet")
    pq.write_table(prediction_rows(["y"]), tmp_path / "predictions" / "other.parquet")
    found = store.scan(tmp_path)
    assert found.answered == {"a", "b", "e"} and found.failed == {"c", "d"}
    assert set(store.read_predictions(tmp_path).column("key").to_pylist()) == {"a", "b", "e"}
    store.write_part(tmp_path, prediction_rows(["c"]))  # a retry answers c
    assert store.scan(tmp_path).failed == {"d"}


def test_scoring_frame_is_the_selection_with_failed_items_flagged(tmp_path):
    store.write_part(tmp_path, pa.concat_tables([
        prediction_rows(["a", "b", "stray"]), prediction_rows(["c", "d"], reason="timeout")]))
    store.write_part(tmp_path, prediction_rows(["d"], reason="engine_error"))  # failed twice
    store.write_selection(tmp_path, ["a", "b", "c", "d"])
    problems: list[str] = []
    frame = store.scoring_frame(tmp_path, problems)
    assert sorted(frame["key"]) == ["a", "b", "c", "d"]
    assert dict(zip(frame["key"], frame["failed"])) == {"a": False, "b": False, "c": True,
                                                        "d": True}
    assert any("1 rows in the folder are outside the run's selection" in p for p in problems)
    acc = accuracy_table(frame, n_boot=20)
    total = acc[acc["instance"] == "all"].iloc[0]
    # failed items are counted apart: n and accuracy are over the 2 answered items only
    assert (total["n"], total["correct"], total["invalid"], total["failed"]) == (2, 2, 0, 2)
    assert total["accuracy"] == 1.0
    assert invalid_reasons(frame).empty  # a failure is not an invalid answer


def test_unreadable_part_is_quarantined_with_a_warning(tmp_path):
    store.write_part(tmp_path, prediction_rows(["a"]))
    torn = tmp_path / "predictions" / "part-torn.parquet"
    whole = store.parts(tmp_path)[0].read_bytes()
    torn.write_bytes(whole[: len(whole) // 2])  # a truncated copy
    problems: list[str] = []
    store.read_predictions(tmp_path, problems=problems)  # readers report, never move
    assert torn.exists() and any("part-torn.parquet" in p for p in problems)
    with pytest.warns(UserWarning, match="part-torn.parquet"):
        found = store.scan(tmp_path)
    assert found.answered == {"a"} and len(found.quarantined) == 1
    assert not torn.exists()
    assert (tmp_path / "quarantine" / "predictions-part-torn.parquet").exists()


def test_one_writer_per_folder(tmp_path):
    with store.writer_lock(tmp_path):
        with pytest.raises(store.RunFolderError, match="another geoxray run"):
            with store.writer_lock(tmp_path):
                pass
    with store.writer_lock(tmp_path):  # released on exit
        pass


# --- the folder stamp -------------------------------------------------------------------------
def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path):
    items = tmp_path / "items.parquet"
    pq.write_table(items_table(), items)
    cfg = load_config(["model=random", f"output_dir={tmp_path / 'run'}"])
    stamp = folder.run_stamp(cfg, items)
    assert folder.resolve(cfg, stamp) == tmp_path / "run"
    (tmp_path / "run").mkdir()
    store.write_stamp(tmp_path / "run", stamp)
    same = load_config(["model=random", f"output_dir={tmp_path / 'run'}", "model.retries=0",
                        "run.max_items_per_task=3"])  # endpoint and selection: same answers
    assert folder.resolve(same, folder.run_stamp(same, items)) == tmp_path / "run"
    other = load_config(["model=random", f"output_dir={tmp_path / 'run'}",
                         "decode.max_tokens=8"])
    with pytest.raises(store.RunFolderError, match=r"decode\.max_tokens: 512 -> 8"):
        folder.resolve(other, folder.run_stamp(other, items))
    moved = replace(other, run=replace(other.run, on_mismatch="new_folder"))
    assert folder.resolve(moved, folder.run_stamp(moved, items)) == tmp_path / "run-2"
    pq.write_table(items_table(per_stratum=3), items)  # the benchmark changed under the folder
    with pytest.raises(store.RunFolderError, match="benchmark.items_hash"):
        folder.resolve(cfg, folder.run_stamp(cfg, items))


# --- sweeps -----------------------------------------------------------------------------------
def test_adhoc_sweeps_get_distinct_folders_and_output_dir_is_honoured(tmp_path, capsys):
    from geoxray.sweep.run import main
    from geoxray.sweep.spec import load_sweep

    a = load_sweep(None, ["model=random"]).out_dir()
    b = load_sweep(None, ["model=constant"]).out_dir()
    assert a != b and a.name.startswith("adhoc-")
    assert a == load_sweep(None, ["model=random"]).out_dir()  # the same sweep resumes
    assert load_sweep(None, ["model=random", f"output_dir={tmp_path}"]).out_dir() == tmp_path
    assert main(["model=random", f"output_dir={tmp_path / 's'}", "--dry-run"]) == 0
    assert f"-> {tmp_path / 's'}/ [dry run" in capsys.readouterr().out


def test_profile_refuses_an_output_dir_it_would_ignore(capsys):
    from geoxray.capacity.profile import main

    assert main(["model=random", "output_dir=/tmp/nowhere"]) == 2
    assert "use --out DIR" in capsys.readouterr().err


def test_eval_dry_run_prints_the_destination_and_a_mismatch_is_refused(tiny_bench, tmp_path,
                                                                     capsys):
    from geoxray.cli import main

    out = tmp_path / "run"
    common = ["model=random", "data=items", f"data.items={tiny_bench.items_path}",
              f"data.image_root={tiny_bench.image_root}", f"output_dir={out}"]
    assert main(["eval", "--dry-run", *common]) == 0
    assert f"-> {out}/ [dry run: nothing written]" in capsys.readouterr().out
    assert not out.exists()
    out.mkdir()
    other = load_config([*common, "decode.max_tokens=8"])
    store.write_stamp(out, folder.run_stamp(other, tiny_bench.items_path))
    assert main(["eval", *common]) == 3  # before Ray starts
    err = capsys.readouterr().err
    assert "decode.max_tokens: 8 -> 512" in err and "run.on_mismatch=new_folder" in err
    assert main(["eval", "--dry-run", *common, "run.on_mismatch=new_folder"]) == 0
    assert f"-> {tmp_path / 'run-2'}/" in capsys.readouterr().out
