"""The bad-input corpus: every kind of bad image, path, record or reply a run can meet, with
the outcome it must have — the item is marked with a named reason (the run goes on), or the
build counts the record as a problem — never a traceback, never a hang.

Most kinds go through the real `PredictStage.__call__` (the function Ray Data runs) in this
process; `test_corpus_through_the_real_pipeline` runs the corpus through `evaluate` on a real
local Ray cluster and checks each item's mark and that every good item is scored."""
from __future__ import annotations

import io
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geoxray.bench.index import BuildProblems, build_items, content_hash, write_items
from geoxray.bench.schema import ITEM_SCHEMA
from geoxray.infer import images as images_module
from geoxray.infer.baselines import BaselineEngine
from geoxray.infer.engine import Reply
from geoxray.infer.images import ImageCache, ImageError, decode_image
from geoxray.infer.stage import PredictStage

GOOD = "good.jpg"       # a valid aerial
GROUND = "ground.jpg"   # the ground view every corpus item shares


def _jpeg(size=(96, 80), **kw) -> bytes:
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 2 % 256, y * 3 % 256, (x * y) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _corrupt_entropy_jpeg() -> bytes:
    """Damage inside the entropy-coded scan: the markers stay valid, the Huffman stream
    does not. PIL decodes it to garbage without a word; libjpeg warns."""
    data = bytearray(_jpeg((256, 256)))
    sos = data.find(b"\xff\xda")
    for i in range(sos + 1000, sos + 1016):  # 16 bytes in the middle of the scan
        data[i] = (data[i] * 31 + 7) % 255
    return bytes(data)


def _huge_dims_jpeg() -> bytes:
    """A 60000x60000 header on a few hundred bytes (SOF0 patched)."""
    data = bytearray(_jpeg((16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def _png_bad_crc() -> bytes:
    data = bytearray(_png(Image.fromarray(np.full((40, 40, 3), 90, np.uint8))))
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0x55  # inside the compressed pixels
    return bytes(data)


def _png_bomb() -> bytes:
    """20000x20000 pixels (1.2 GB as RGB) in a few tens of KB."""
    return _png(Image.new("1", (20000, 20000)))


def _png16() -> bytes:
    import cv2
    ok, buf = cv2.imencode(".png", np.full((30, 30, 3), 40000, np.uint16))
    return buf.tobytes()


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_jpeg())).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(exif=exif.tobytes())


def _eps() -> bytes:
    # PIL's EPS plugin would run Ghostscript on this: the format is not on the allow list.
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


# --- the corpus ------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    expect: str | None  # the item's invalid_reason; None = a good item that must be scored
    file: Callable[[Path, Path], str] | None = None  # (root, outside) -> aerial rel path
    row: dict | None = None  # overrides of the item row
    pipeline: bool = True  # also in the Ray pipeline test


def _write(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path, Path], str]:
    def make(root: Path, outside: Path) -> str:
        (root / name).write_bytes(data() if callable(data) else data)
        return name
    return make


def _fifo(root: Path, outside: Path) -> str:
    os.mkfifo(root / "fifo.jpg")  # nobody ever writes: a blocking open() would hang forever
    return "fifo.jpg"


def _directory(root: Path, outside: Path) -> str:
    (root / "folder.jpg").mkdir()
    return "folder.jpg"


def _symlink_loop(root: Path, outside: Path) -> str:
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    return "loop_a.jpg"


def _dangling(root: Path, outside: Path) -> str:
    os.symlink("no_such_target.jpg", root / "dangling.jpg")
    return "dangling.jpg"


def _unreadable(root: Path, outside: Path) -> str:
    """A file whose read fails. chmod 000 does not stop root, so (for everyone) a regular
    file that answers read() with EIO: /proc/self/mem through a symlink in the root."""
    os.symlink("/proc/self/mem", root / "eio.jpg")
    return "eio.jpg"


def _outside(kind: str) -> Callable[[Path, Path], str]:
    def make(root: Path, outside: Path) -> str:
        (outside / "secret.jpg").write_bytes(_jpeg())  # a valid image: reading it would work
        return str(outside / "secret.jpg") if kind == "absolute" else "../outside/secret.jpg"
    return make


def _changed(root: Path, outside: Path) -> str:
    (root / "changed.jpg").write_bytes(_jpeg((50, 50)))  # after the build hashed a 96x80
    return "changed.jpg"


CASES = [
    Case("zero_byte", "empty_image", _write("zero.jpg", b"")),
    Case("truncated_png", "corrupt_image", _write("trunc.png", _png(
        Image.fromarray(np.full((60, 60, 3), 7, np.uint8)))[:80])),
    Case("truncated_jpeg", "corrupt_image", _write("trunc.jpg", _jpeg()[:600])),
    Case("jpeg_corrupt_entropy", "corrupt_image", _write("entropy.jpg", _corrupt_entropy_jpeg())),
    Case("png_bad_crc", "corrupt_image", _write("crc.png", _png_bad_crc())),
    Case("fifo", "not_a_file", _fifo),
    Case("directory", "not_a_file", _directory),
    Case("symlink_loop", "unreadable_image", _symlink_loop),
    Case("dangling_symlink", "missing_image", _dangling),
    Case("unreadable", "unreadable_image", _unreadable),
    Case("png_bomb_20000x20000", "image_too_large", _write("bomb.png", _png_bomb)),
    Case("jpeg_huge_dims", "image_too_large", _write("huge.jpg", _huge_dims_jpeg())),
    Case("random_bytes", "corrupt_image", _write("noise.jpg", bytes(range(256)) * 8)),
    Case("text_named_png", "corrupt_image", _write("text.png", b"this is not an image\n" * 9)),
    Case("eps_not_allowed", "corrupt_image", _write("ghost.png", _eps())),
    Case("missing_file", "missing_image", lambda root, outside: "no/such/file.jpg"),
    Case("absolute_path", "path_outside_root", _outside("absolute")),
    Case("dotdot_path", "path_outside_root", _outside("dotdot")),
    Case("nul_in_path", "path_outside_root", lambda root, outside: "bad\x00name.jpg"),
    Case("image_changed_after_build", "image_changed", _changed),
    # valid variants: equal to PIL's reader (tests/test_image_pixels.py), scored
    Case("png_16bit", None, _write("deep.png", _png16())),
    Case("grayscale_png", None, _write("gray.png", _png(Image.new("L", (30, 20), 90)))),
    Case("palette_png", None, _write("pal.png", _png(Image.new("RGB", (30, 20), (9, 80, 200))
                                                     .quantize(4)))),
    Case("rgba_png", None, _write("rgba.png", _png(Image.new("RGBA", (30, 20), (1, 2, 3, 0))))),
    Case("cmyk_jpeg", None, _write("cmyk.jpg", _cmyk_jpeg())),
    Case("exif_rotated_jpeg", None, _write("exif.jpg", _exif_jpeg())),
    Case("jpeg_named_png", None, _write("actually_jpeg.png", _jpeg())),
    Case("good", None, _write(GOOD, _jpeg())),
    # malformed item rows
    Case("unknown_crop", "unknown_crop", row={"task": "loc_noprior", "crop": "middle"}),
    Case("crop_on_uncropped_task", "unknown_crop", row={"crop": "center"}),
    Case("null_image_paths", "no_images", row={"image_paths": None, "image_hashes": None}),
    Case("empty_image_list", "no_images", row={"image_paths": [], "image_hashes": []}),
    Case("wrong_image_count", "wrong_image_count", row={"image_paths": [GOOD, GOOD, GROUND]}),
    Case("too_few_for_crossmap", "wrong_image_count",
         row={"task": "crossmap_std", "answer": "0"}),
    # the run's selection keys items by their task's prompt: an unknown task stops at
    # selection (run/evaluate.py), so it is checked at the stage only
    Case("unknown_task", "unknown_task", row={"task": "pose_upside_down"}, pipeline=False),
    Case("hashes_of_wrong_length", None, row={"image_hashes": ["abc"]}),
]


def test_the_corpus_has_at_least_30_kinds():
    assert len({c.name for c in CASES}) == len(CASES) >= 30


def _corpus_rows(root: Path, outside: Path, cases=CASES) -> list[dict]:
    """One loc_prior item per case (aerial = the case's file, ground = a good image)."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (root / GROUND).write_bytes(_jpeg((64, 48)))
    (root / GOOD).write_bytes(_jpeg())
    rows = []
    for n, case in enumerate(cases):
        aerial = case.file(root, outside) if case.file else GOOD
        hashes = [content_hash(_jpeg()) if case.name == "image_changed_after_build" else "",
                  content_hash((root / GROUND).read_bytes())]
        row = dict(item_id=f"item-{n:03d}-{case.name}", task="loc_prior", instance="corpus",
                   split="test", base_id=str(n), record=n, location=f"corpus:{n}", crop="none",
                   image_paths=[aerial, GROUND], image_hashes=hashes, image_set=f"set{n}",
                   answer="true")
        row.update(case.row or {})
        rows.append(row)
    return rows


def _stage(root: Path, engine=None, **kw) -> PredictStage:
    return PredictStage(engine or (lambda: BaselineEngine("random")), str(root), "random",
                        "paper", **kw)


def _run_stage(stage: PredictStage, rows: list[dict]) -> dict[str, dict]:
    table = pa.Table.from_pylist([{**r, "key": r["item_id"]} for r in rows],
                                 schema=ITEM_SCHEMA.append(pa.field("key", pa.string())))
    out = stage(table)
    return {r["item_id"]: r for r in out.to_pylist()}


def _check_marks(preds: dict[str, dict], cases) -> None:
    for n, case in enumerate(cases):
        pred = preds[f"item-{n:03d}-{case.name}"]
        if case.expect is None:
            assert pred["invalid_reason"] is None and pred["pred"] in ("true", "false"), (
                case.name, pred["invalid_reason"], pred["error"])
        else:
            assert pred["invalid_reason"] == case.expect, (case.name, pred["error"])
            assert pred["pred"] is None and pred["error"], case.name


def test_every_kind_is_marked_by_the_stage(tmp_path):
    rows = _corpus_rows(tmp_path / "images", tmp_path / "outside")
    started = time.monotonic()
    preds = _run_stage(_stage(tmp_path / "images"), rows)
    assert time.monotonic() - started < 30  # no hang (the FIFO), no 1.2 GB decode (the bomb)
    assert len(preds) == len(CASES)
    _check_marks(preds, CASES)


def test_the_bomb_is_refused_from_its_header(tmp_path):
    """No pixel of the 20000x20000 PNG is decoded: refused in milliseconds."""
    data = _png_bomb()
    assert len(data) < 1_000_000
    started = time.perf_counter()
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason == "image_too_large" and "400000000" in info.value.detail
    assert time.perf_counter() - started < 0.5
    # the limit is a setting: a larger one lets a large image through
    assert decode_image(_png(Image.new("1", (300, 200))), max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(ImageError, match="image_too_large"):
        decode_image(_png(Image.new("1", (300, 201))), max_pixels=60_000)


def test_corrupt_entropy_data_is_what_pil_would_silently_accept():
    """The mark is real information: PIL (the authors' reader) decodes this file without
    an error, to wrong pixels."""
    data = _corrupt_entropy_jpeg()
    Image.open(io.BytesIO(data)).convert("RGB")  # no exception
    with pytest.raises(ImageError, match="Corrupt JPEG data"):
        decode_image(data)


def test_a_slow_read_times_out_and_the_next_image_is_read(tmp_path, monkeypatch):
    (tmp_path / "slow.jpg").write_bytes(_jpeg())
    (tmp_path / "fast.jpg").write_bytes(_jpeg())
    real_read = images_module.read_image_file

    def slow_storage(path, max_bytes):  # a hung network mount, for one file
        if path.name == "slow.jpg":
            time.sleep(3)
        return real_read(path, max_bytes)

    monkeypatch.setattr(images_module, "read_image_file", slow_storage)
    cache = ImageCache(tmp_path, read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        cache.get("slow.jpg")
    assert info.value.reason == "image_timeout"
    assert time.monotonic() - started < 2
    assert cache.get("fast.jpg")[0].shape == (80, 96, 3)


def test_a_bad_image_costs_one_read_for_all_its_items(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    cache = ImageCache(tmp_path)
    for _ in range(3):
        with pytest.raises(ImageError, match="empty_image"):
            cache.get("zero.jpg")
    assert len(cache._cache) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file; the EIO case "
                                               "(/proc/self/mem) covers unreadable files")
def test_permission_denied_is_unreadable(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(_jpeg())
    path.chmod(0)
    with pytest.raises(ImageError, match="unreadable_image"):
        ImageCache(tmp_path).get("locked.jpg")


class _SurrogateEngine:
    """A model whose reply holds a lone surrogate (seen from a real API: half an emoji)."""
    name = "surrogate"

    def generate(self, requests):
        return [Reply(text='{"is_in_range": true} \ud83d') for _ in requests]


def test_a_reply_with_a_lone_surrogate_is_stored(tmp_path):
    from geoxray.run import store

    rows = _corpus_rows(tmp_path / "images", tmp_path / "outside", [Case("good", None)])
    out = _stage(tmp_path / "images", engine=_SurrogateEngine)(
        pa.Table.from_pylist([{**rows[0], "key": "k"}],
                             schema=ITEM_SCHEMA.append(pa.field("key", pa.string()))))
    store.write_part(tmp_path / "run", out)  # used to fail: UnicodeEncodeError, 0 parts
    back = store.read_predictions(tmp_path / "run").to_pylist()
    assert back[0]["pred"] == "true" and back[0]["reply"].endswith("\ufffd")


# --- the build: malformed index records are counted problems ---------------------------------
def _record(n: int, aerial: object = "sat/a.jpg", ground: object = "views/g.jpg") -> dict:
    return {"image_id": f"{n}_0", "GroundImage": {"file_path": ground, "orientation": "N",
                                                  "real_location": f"1.{n},2.0", "in_range": True},
            "AerialImage": {"file_path": aerial}}


BAD_RECORDS = {
    "absolute_path": _record(1, aerial="/etc/passwd"),
    "dotdot_path": _record(2, ground="../../home/user/.ssh/id_rsa"),
    "null_path": _record(3, aerial=None),
    "number_path": _record(4, aerial=17),
    "empty_path": _record(5, ground=""),
    "no_aerial": {k: v for k, v in _record(6).items() if k != "AerialImage"},
    "bad_location": {**_record(7), "GroundImage": {**_record(7)["GroundImage"],
                                                   "real_location": "north pole"}},
}


def test_malformed_index_records_are_counted_never_read(tmp_path):
    folder = tmp_path / "index" / "Orin4_SameLocation"
    folder.mkdir(parents=True)
    (folder / "corpus.json").write_text(json.dumps([_record(0), *BAD_RECORDS.values()]))
    (tmp_path / "index" / "Orin4_SameLocation" / "broken.json").write_text("[{")
    # the good record's images: an unreadable file and a FIFO (hashing must not fail or block)
    (tmp_path / "images" / "sat").mkdir(parents=True)
    (tmp_path / "images" / "views").mkdir()
    os.symlink("/proc/self/mem", tmp_path / "images" / "sat" / "a.jpg")
    os.mkfifo(tmp_path / "images" / "views" / "g.jpg")
    problems = BuildProblems()
    table = build_items(tmp_path / "index", tmp_path / "images", problems)
    assert set(map(tuple, table.column("image_hashes").to_pylist())) == {("", "")}
    # the one good record gives its 1 + 9 + 9 items (pose_fixed, pose_random, intra_map)
    assert table.num_rows == 19 and set(table.column("base_id").to_pylist()) == {"0_0"}
    per_task = 3  # each bad record is counted once per task reading the folder
    assert sum(n for r, n in problems.counts.items() if r.startswith("malformed_record")) == \
        per_task * len(BAD_RECORDS)
    outside = [r for r in problems.counts if "outside image_root" in r]
    assert sum(problems.counts[r] for r in outside) == per_task * 2
    assert problems.counts["unreadable_index_file: JSONDecodeError"] == 1


# --- the same corpus through the real pipeline (Ray Data, baseline engine) --------------------
def test_corpus_through_the_real_pipeline(ray_cluster, tmp_path):
    from conftest import eval_config
    from geoxray.run import store
    from geoxray.run.benchmark import Benchmark
    from geoxray.run.evaluate import evaluate

    cases = [c for c in CASES if c.pipeline]
    rows = _corpus_rows(tmp_path / "images", tmp_path / "outside", cases)
    items = write_items(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), tmp_path / "items.parquet")
    bench = Benchmark("corpus", items, tmp_path / "images", {})
    out = tmp_path / "run"
    evaluate(eval_config(out, bench, "model=random", "run.batch_size=8", "run.concurrency=1",
                         "run.image_read_timeout_s=20"))
    preds = {r["item_id"]: r for r in store.read_predictions(out).to_pylist()}
    assert len(preds) == len(cases) == pq.read_metadata(items).num_rows
    _check_marks(preds, cases)
