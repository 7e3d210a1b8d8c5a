"""protocol=paper against the authors' harness (IntMeGroup/GeoX-Bench @89d40cf), rebuilt here
from their source, and against PIL itself: crop boxes, re-saved crop bytes, the API image
encoding, the strict parser, and one item per task as their code would send it.

The `authors_*` helpers below restate the authors' lines (file and line cited at each); the
code under test never calls them."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoxray.bench.parse import LENIENT_ONLY, parse_reply
from geoxray.bench.prompts import get_prompt
from geoxray.bench.tasks import CROPS, NO_CROP, TASKS, crop_box, get_task, pil_crop_box
from geoxray.config import load_config
from geoxray.infer.config import ProtocolConfig
from geoxray.infer.protocol import ProtocolCrops, resave_bytes

PAPER = ProtocolConfig()  # the dataclass defaults are protocol=paper
CLEAN = ProtocolConfig(name="clean", crop_box="exact", crop_resave=False, api_image="png")

# --- the authors' code, restated --------------------------------------------------------------
# Tasks/utils.py lines 10-21: CenterDivImageCroper.factor_dict
AUTHORS_FACTORS = {
    "center": (1/6, 1/6, 1/6, 1/6), "left": (1/3, 1/6, 0, 1/6), "right": (0, 1/6, 1/3, 1/6),
    "top": (1/6, 1/3, 1/6, 0), "bottom": (1/6, 0, 1/6, 1/3), "top_left": (1/3, 1/3, 0, 0),
    "top_right": (0, 1/3, 1/3, 0), "bottom_left": (1/3, 0, 0, 1/3),
    "bottom_right": (0, 0, 1/3, 1/3)}


def authors_crop(image: Image.Image, crop_location: str) -> Image.Image:
    """Tasks/utils.py lines 40-50 (CenterDivImageCroper.__call__)."""
    width, height = image.size
    x1, y1, x2, y2 = AUTHORS_FACTORS[crop_location]
    left = width * abs(x1)
    right = width * (1 - abs(x2))
    top = height * abs(y1)
    bottom = height * (1 - abs(y2))
    return image.crop((left, top, right, bottom))


def authors_tmp_aerial(original: Path, crop_location: str, tmp_dir: Path) -> Path:
    """Tasks/orin_task_random.py lines 123-126 (image_opeartion) with the temp name of
    Tasks/task_template.py lines 136-150: crop, then `.save(tmp_path)`, whose extension is
    the original's, so PIL picks the format (and its defaults) from it."""
    name, ext = original.stem, original.suffix
    tmp = tmp_dir / f"{name}_aerial_tmp{ext}"
    authors_crop(Image.open(original), crop_location).save(tmp)
    return tmp


def swift_load_image(path: Path) -> np.ndarray:
    """ms-swift swift/llm/template/vision_utils.py load_image: open, convert RGB if needed."""
    image = Image.open(io.BytesIO(path.read_bytes()))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def authors_closeai_b64(path: Path) -> str:
    """model/CloseAI.py lines 62-80 (encode_image)."""
    with Image.open(path) as img:
        if img.mode != "RGB":
            img = img.convert("RGB")
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=100)
        return base64.b64encode(buffer.getvalue()).decode("utf-8")


def qwen_smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                      max_pixels: int = 1003520) -> tuple[int, int]:
    """qwen_vl_utils vision_process.smart_resize, which ms-swift's Qwen2-VL template runs with
    MAX_PIXELS from the environment (the authors set 1003520, model/model.py line 37) and
    MIN_PIXELS left at its default 4 x 28 x 28."""
    import math
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --- fixtures ---------------------------------------------------------------------------------
def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: JPEG has real work to do, every pixel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                     ((x + y) * 3) % 256], axis=-1)
    return np.clip(base + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("src")
    files = {}
    # a 513 px tile (3 mod 6: the side where exact and PIL rounding disagree), one with EXIF,
    # an ICC profile and a dpi (metadata the authors' re-save could carry), a PNG tile
    Image.fromarray(_photo(513, 513, 0)).save(root / "tile.jpg", quality=90)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    Image.fromarray(_photo(512, 517, 1)).save(
        root / "meta.jpg", quality=95, dpi=(300, 300), exif=exif.tobytes(),
        icc_profile=b"\0" * 128)
    Image.fromarray(_photo(515, 509, 2)).save(root / "tile.png")
    for i in range(4):
        Image.fromarray(_photo(512, 512, 10 + i)).save(root / f"cand{i}.jpg", quality=90)
    Image.fromarray(_photo(480, 640, 3)).save(root / "ground.jpg", quality=90)
    for p in root.iterdir():
        files[p.name] = p
    return files


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --- crop boxes -------------------------------------------------------------------------------
def test_pil_crop_boxes_equal_pils_crop_for_every_side_from_1_to_3000():
    """Each side length: an image whose pixel values are their own x coordinate, cropped by
    PIL with the authors' expression; the first and last value give PIL's box edges."""
    mismatches = []
    for side in range(1, 3001):
        ramp = Image.fromarray(np.arange(side, dtype=np.int32)[None, :])  # mode I, 1 x side
        column = Image.fromarray(np.arange(side, dtype=np.int32)[:, None])  # side x 1
        for crop in CROPS:
            x0, _, x1, _ = pil_crop_box(crop, side, 1)
            _, y0, _, y1 = pil_crop_box(crop, 1, side)
            row = np.asarray(authors_crop(ramp, crop))[0]
            col = np.asarray(authors_crop(column, crop))[:, 0]
            if (x1 - x0, y1 - y0) != (len(row), len(col)) \
                    or (len(row) and (row[0], row[-1]) != (x0, x1 - 1)) \
                    or (len(col) and (col[0], col[-1]) != (y0, y1 - 1)):
                mismatches.append((side, crop))
    assert mismatches == []


def test_exact_boxes_differ_from_pils_on_sides_3_mod_6():
    """The deviation protocol=clean keeps (docs/protocol.md): one pixel narrower at 513."""
    assert pil_crop_box("center", 513, 513) == (86, 86, 428, 428)  # 513*5/6 = 427.5 -> 428
    assert crop_box("center", 513, 513) == (86, 86, 427, 427)
    assert all(pil_crop_box(c, 512, 512) == crop_box(c, 512, 512) for c in CROPS)
    assert pil_crop_box(NO_CROP, 7, 9) == crop_box(NO_CROP, 7, 9) == (0, 0, 7, 9)


# --- crop bytes -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tile.jpg", "meta.jpg", "tile.png"])
def test_resaved_crops_equal_what_the_authors_cropper_writes(name, sources, tmp_path):
    src = sources[name]
    crops = ProtocolCrops(PAPER)
    decoded = _decoded(src)
    for crop in CROPS:
        tmp = authors_tmp_aerial(src, crop, tmp_path)
        pixels, uuid = crops(decoded, "digest", crop, name)
        # what the model reads back is what swift reads from their temp file
        np.testing.assert_array_equal(pixels, swift_load_image(tmp))
        assert uuid.startswith(f"digest:{crop}:pil")
        if name.endswith(".jpg"):  # the bytes themselves: PIL's JPEG defaults, no metadata
            x0, y0, x1, y1 = pil_crop_box(crop, decoded.shape[1], decoded.shape[0])
            assert resave_bytes(decoded[y0:y1, x0:x1], "JPEG") == tmp.read_bytes()
    # a JPEG crop is lossy (the re-save matters), a PNG one is not
    lossless = crops(decoded, "digest", "center", name)[0]
    x0, y0, x1, y1 = pil_crop_box("center", decoded.shape[1], decoded.shape[0])
    same = np.array_equal(lossless, decoded[y0:y1, x0:x1])
    assert same == name.endswith(".png")


def test_crops_are_encoded_once_per_image_and_crop(sources):
    crops = ProtocolCrops(PAPER)
    decoded = _decoded(sources["tile.jpg"])
    for _question in range(4):  # 4 headings ask about the same 9 crops of one tile
        for crop in CROPS:
            crops(decoded, "d1", crop, "tile.jpg")
    assert crops.encoded == 9
    crops(decoded, "d2", "center", "tile.jpg")  # another image: its own encode
    assert crops.encoded == 10


def test_clean_crops_are_todays_views_and_uuids(sources):
    decoded = _decoded(sources["tile.jpg"])
    pixels, uuid = ProtocolCrops(CLEAN)(decoded, "d", "top_left", "tile.jpg")
    x0, y0, x1, y1 = crop_box("top_left", 513, 513)
    assert uuid == "d:top_left" and np.shares_memory(pixels, decoded)
    np.testing.assert_array_equal(pixels, decoded[y0:y1, x0:x1])


# --- API encoding -----------------------------------------------------------------------------
def test_paper_api_images_are_the_authors_jpeg_quality_100(sources, tmp_path):
    from geoxray.infer.openai_engine import image_data_url
    tmp = authors_tmp_aerial(sources["tile.jpg"], "left", tmp_path)
    pixels, _ = ProtocolCrops(PAPER)(_decoded(sources["tile.jpg"]), "d", "left", "tile.jpg")
    url = image_data_url(pixels, load_config(["model=gpt4o"]).model.api_image)
    assert url == "data:image/jpeg;base64," + authors_closeai_b64(tmp)
    clean = load_config(["model=gpt4o", "protocol=clean"]).model.api_image
    assert image_data_url(pixels, clean).startswith("data:image/png;base64,")


# --- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ('{"location": "top left"}', ("top_left", None)),  # the prompt's spelling
    ('{"location": "top_left"}', ("top_left", None)),  # the gold label's spelling
    ('{"location": "Top Left"}', ("top_left", None)),  # case
    ('{"location": "top-left"}', (None, LENIENT_ONLY)),
    ('{"location": "top  left"}', (None, LENIENT_ONLY)),
    ('{"location": " center"}', (None, LENIENT_ONLY)),
    ('{"location": "bottom - right"}', (None, LENIENT_ONLY)),
    ('{"location": "middle"}', (None, "not_an_option")),
    ('{"location": "not exist"}', (None, "not_an_option")),
])
def test_strict_location_parsing(reply, expected):
    assert parse_reply(get_task("intra_map"), reply, "paper") == expected


def test_strict_parse_is_the_authors_regex_plus_case_and_space():
    """Independently: the authors' extractor (Tasks/location_8_gauss.py lines 27-31) returns
    the raw string; a reply scores iff lower-casing and space->underscore make it a gold label."""
    replies = [f'{{"location": "{v}"}}' for v in
               ("top left", "TOP_RIGHT", "left", "bottom-left", "Center ", "right\tside", "")]
    gold = set(CROPS)
    for reply in replies:
        raw = re.search(r'"location"\s*:\s*"(.*?)"', reply, re.IGNORECASE).group(1)
        strict = raw.lower().replace(" ", "_")
        option, reason = parse_reply(get_task("intra_map"), reply, "paper")
        assert option == (strict if strict in gold else None)
        lenient = re.sub(r"[\s\-_]+", "_", raw.strip().lower())
        if option is None:
            assert (reason == LENIENT_ONLY) == (lenient in gold)


def test_lenient_only_counts_per_task():
    from geoxray.score.tables import lenient_only_counts
    replies = {"intra_map": ['{"location": "top-left"}', '{"location": "top left"}',
                             '{"location": "bottom_right "}', '{"location": "x"}'],
               "pose_fixed": ['{"direction": "N"}', '{"direction": "n"}']}
    rows = []
    for task, texts in replies.items():
        spec = get_task(task)
        for i, text in enumerate(texts):
            pred, reason = parse_reply(spec, text, "paper")
            rows.append(dict(key=f"{task}{i}", item_id=f"{task}{i}", model="m", decode="paper",
                             task=task, instance="a", location=f"l{i}", crop="none",
                             answer=spec.options[0], reply=text, pred=pred,
                             invalid_reason=reason, option_probs=None))
    table = lenient_only_counts(pd.DataFrame(rows)).set_index("task")
    assert table.loc["intra_map", "lenient_only"] == 2  # "top-left", "bottom_right "
    assert table.loc["intra_map", "items"] == 4
    assert table.loc["pose_fixed", "lenient_only"] == 0


# --- settings ---------------------------------------------------------------------------------
def test_paper_settings_per_family_and_clean_keeps_the_model_config():
    q = load_config(["model=qwen2_vl_2b"])  # protocol=paper is the default
    assert (q.protocol.name, q.model.min_pixels, q.model.max_pixels) == ("paper", None, 1003520)
    assert (q.decode.max_tokens, q.decode.temperature, q.decode.repetition_penalty) == \
        (512, 0.0, None)  # None: the checkpoint's generation_config.json (1.05 for Qwen2-VL)
    c = load_config(["model=qwen2_vl_2b", "protocol=clean"])
    assert (c.model.min_pixels, c.model.max_pixels, c.decode.repetition_penalty) == \
        (200704, 602112, 1.0)
    assert load_config(["model=llava_onevision_7b"]).decode.max_tokens == 4096
    assert load_config(["model=gpt4o"]).decode.max_tokens == 8000
    iv = load_config(["model=internvl3_8b"]).model.engine_kwargs["mm_processor_kwargs"]
    assert iv["max_dynamic_patch"] == 12
    # a constrained choice is scored alike under every protocol
    assert load_config(["model=qwen2_vl_2b", "decode=choice"]).decode.max_tokens == 16


def test_protocol_is_part_of_the_key_and_clean_keeps_old_keys():
    from geoxray.infer.protocol import key_parts
    from geoxray.run.evaluate import decode_fingerprint, default_output_dir, model_fingerprint
    paper, clean = load_config([]), load_config(["protocol=clean"])
    assert key_parts(clean.protocol) == () and key_parts(paper.protocol) != ()
    assert default_output_dir(paper) != default_output_dir(clean)  # tables never mix them
    assert model_fingerprint(paper.model) != model_fingerprint(clean.model)
    # clean: the fingerprints of runs made before protocols existed
    from dataclasses import asdict

    from geoxray.bench.index import short_hash
    old_decode = {k: v for k, v in asdict(clean.decode).items() if k != "repetition_penalty"}
    assert decode_fingerprint(clean.decode) == short_hash(old_decode, n=16)


# --- one item per task, as the authors' code builds it ---------------------------------------
def _item(task, sources) -> dict:
    crop = task.crops[len(task.crops) // 2]  # a real crop where the task has crops
    aerials = ["tile.jpg"] if task.n_aerials == 1 else [f"cand{i}.jpg" for i in range(4)]
    return dict(key="k", item_id=f"{task.name}-1", task=task.name, crop=crop,
                image_paths=aerials + ["ground.jpg"])


def authors_request(task, item, root: Path, tmp: Path) -> dict:
    """What the authors' loader and model wrapper hand ms-swift for one item: the message of
    the task's LMMMessage class (the same text as prompts.json), its images written to a
    temp folder (cropped: Tasks/orin_task_random.py lines 123-126, map_gauss_random.py lines
    196-203; copied: task_template.py line 160), `<image>` blanked by
    model/model.py replace_image_tokens (image_token = ''), then swift's
    Template._add_default_tags puts one <image> per image before the user text."""
    prompt = get_prompt(task.name)
    images = []
    for position, rel in enumerate(item["image_paths"]):
        if position < task.n_aerials and item["crop"] != NO_CROP:
            images.append(swift_load_image(authors_tmp_aerial(root / rel, item["crop"], tmp)))
        else:
            images.append(swift_load_image(root / rel))
    user = prompt.user.replace("<image>", "")
    return {"system": prompt.system, "user": "<image>" * len(images) + user, "images": images}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_one_item_per_task_equals_the_authors_request(task, sources, tmp_path):
    from transformers import Qwen2VLImageProcessor

    from geoxray.infer.chat import chat_messages
    from geoxray.infer.stage import PredictStage
    from geoxray.infer.vllm_engine import engine_args

    root = sources["tile.jpg"].parent
    item = _item(task, sources)
    theirs = authors_request(task, item, root, tmp_path)
    cfg = load_config(["model=qwen2_vl_2b"])
    stage = PredictStage(lambda: None, str(root), "m", "paper", protocol=cfg.protocol)
    request = stage.build_request(item)
    messages = chat_messages(request, lambda image, uuid: {"type": "image", "image": image},
                             cfg.model.message_layout)
    # text and image order: system, then the user turn with the images where swift puts them
    assert messages[0] == {"role": "system", "content": theirs["system"]}
    ours_user = "".join(p["text"] if p["type"] == "text" else "<image>"
                        for p in messages[1]["content"])
    assert ours_user == theirs["user"]
    images = [p["image"] for p in messages[1]["content"] if p["type"] == "image"]
    assert len(images) == len(theirs["images"]) == task.n_aerials + 1
    for ours, authors in zip(images, theirs["images"]):
        np.testing.assert_array_equal(ours, authors)
    # pixel sizes after the model's processor: vLLM's (the checkpoint's preprocessor_config,
    # min 3136 / max 12845056, overridden by our mm_processor_kwargs) vs swift's smart_resize
    budget = {"min_pixels": 3136, "max_pixels": 12845056,
              **(engine_args(cfg.model)["mm_processor_kwargs"] or {})}
    processor = Qwen2VLImageProcessor(**budget)
    grid = processor(images=[Image.fromarray(np.ascontiguousarray(i)) for i in images],
                     return_tensors="np")["image_grid_thw"]
    ours_sizes = [(int(h) * 14, int(w) * 14) for _, h, w in grid]
    assert ours_sizes == [qwen_smart_resize(*i.shape[:2]) for i in theirs["images"]]


# --- the checkpoint's repetition penalty ------------------------------------------------------
@pytest.mark.parametrize("written, expected", [(1.05, 1.05), (None, 1.0)])
def test_unset_repetition_penalty_is_the_checkpoints(written, expected, tmp_path):
    """`repetition_penalty: null` (protocol=paper) takes generation_config.json's value as vLLM
    reads the loaded checkpoint (ms-swift fills an unset RequestConfig field so); a set value
    wins. vLLM's ModelConfig of a copy of the tiny model, no engine started."""
    import json
    import shutil

    from vllm.config import ModelConfig as VLLMModelConfig

    from geoxray.infer.config import DecodeConfig
    from geoxray.infer.vllm_engine import repetition_penalty
    from geoxray.models.tiny import resolve_model_path

    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny:qwen2vl", 0), folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.pop("repetition_penalty", None)
    if written is not None:
        gen["repetition_penalty"] = written
    (folder / "generation_config.json").write_text(json.dumps(gen))
    vllm_config = VLLMModelConfig(model=str(folder), dtype="float32", max_model_len=2048)
    assert repetition_penalty(DecodeConfig(repetition_penalty=None), vllm_config) == expected
    assert repetition_penalty(DecodeConfig(repetition_penalty=1.2), vllm_config) == 1.2
