"""Full-size random-weight models: the shapes give the published parameter counts of each
checkpoint (counted on PyTorch's meta device: no memory), the folder is what vLLM's dummy
loader needs, and config mistakes fail at start."""
from __future__ import annotations

import json

import pytest

from geoxray.config import ConfigError, load_config
from geoxray.models.random_weights import SHAPES, ensure_random_model, model_config

# Sizes on the checkpoints' Hugging Face pages (safetensors parameter counts).
PUBLISHED_PARAMS = {
    "Qwen/Qwen2-VL-2B-Instruct": 2.21e9,
    "Qwen/Qwen2-VL-7B-Instruct": 8.29e9,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3.75e9,
    "Qwen/Qwen2.5-VL-7B-Instruct": 8.29e9,
    "Qwen/Qwen2.5-VL-72B-Instruct": 73.4e9,
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": 894e6,
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": 8.03e9,
    "OpenGVLab/InternVL3-2B": 2.09e9,
    "OpenGVLab/InternVL3-8B": 7.94e9,
}


@pytest.mark.parametrize("path", sorted(SHAPES))
def test_shapes_give_the_published_parameter_count(path):
    import torch
    from transformers import AutoModelForImageTextToText

    cfg, _ = model_config(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(PUBLISHED_PARAMS[path], rel=0.003), f"{n:,}"


def test_folder_holds_what_the_dummy_loader_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOXRAY_CACHE", str(tmp_path))
    cfg = load_config(["model=qwen2_vl_7b", "model.random_weights=true"])
    from geoxray.infer.vllm_engine import engine_args
    args = engine_args(cfg.model)
    assert args["load_format"] == "dummy"
    folder = tmp_path / "models"
    (built,) = folder.iterdir()
    assert args["model"] == str(built) and built.name.startswith("random-qwen2-vl-7b-instruct-")
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]  # vLLM: generates
    assert not list(built.glob("*.safetensors"))  # no weights: vLLM draws them
    processor = json.loads((built / "preprocessor_config.json").read_text())
    # paper protocol: no floor of geoxray's own, so the processor's (4 x 28 x 28) stands
    assert cfg.model.min_pixels is None
    assert (processor.get("min_pixels") or processor["size"]["shortest_edge"]) == 3136
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(built)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"]
    # the same settings find the same folder
    assert ensure_random_model(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels) == built


def test_llava_onevision_folder_counts_image_tokens_like_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOXRAY_CACHE", str(tmp_path))
    cfg = load_config(["model=llava_onevision_7b", "model.random_weights=true"])
    from geoxray.infer.vllm_engine import engine_args
    args = engine_args(cfg.model)
    assert args["load_format"] == "dummy" and args["trust_remote_code"] is False
    built = args["model"]
    config = json.loads((tmp_path / "models" / built.rsplit("/", 1)[-1] / "config.json")
                        .read_text())
    assert config["architectures"] == ["LlavaOnevisionForConditionalGeneration"]

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(built)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "Where?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.fromarray(np.zeros((512, 512, 3), np.uint8))] * 2
    ids = processor(images=images, text=prompt, return_tensors="np")["input_ids"][0]
    # anyres by hand: a 512x512 image fits the 2x2 grid of 384 px tiles (768x768), 27x27
    # patches a tile: 54x54 features + 54 row newlines, plus the 27x27 base image
    per_image = 54 * 54 + 54 + 27 * 27
    assert (ids == config["image_token_index"]).sum() == 2 * per_image == 2 * 3699
    # five such images (a cross-map item) fit the config's context
    assert 5 * per_image + 200 < cfg.model.max_model_len


def test_internvl3_folder_tiles_images_like_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOXRAY_CACHE", str(tmp_path))
    cfg = load_config(["model=internvl3_2b", "model.random_weights=true"])
    from geoxray.infer.vllm_engine import engine_args
    args = engine_args(cfg.model)
    # the remote-code processor's option is built into the folder's processor instead
    assert "max_dynamic_patch" not in (args["mm_processor_kwargs"] or {})
    built = args["model"]
    config = json.loads((tmp_path / "models" / built.rsplit("/", 1)[-1] / "config.json")
                        .read_text())
    assert config["architectures"] == ["InternVLForConditionalGeneration"]

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(built)
    # paper protocol: swift's InternVL template tiles up to 12 (its MAX_NUM default)
    max_tiles = cfg.model.engine_kwargs["mm_processor_kwargs"]["max_dynamic_patch"]
    assert max_tiles == 12
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)

    def image_tokens(height: int, width: int) -> int:
        image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
        ids = processor(images=[image], text=prompt, return_tensors="np")["input_ids"][0]
        return int((ids == config["image_token_id"]).sum())

    # InternVL's tiling by hand: the tile grid (at most 12 tiles) nearest the aspect ratio, a
    # larger grid of the same ratio only if the image covers half its area; a thumbnail
    # when tiled; 256 tokens a 448 px tile
    assert image_tokens(512, 512) == 256  # 1x1 (2x2 would need 401,408 pixels)
    assert image_tokens(512, 1024) == (2 + 1) * 256  # 2x1 + thumbnail
    assert image_tokens(900, 900) == (4 + 1) * 256  # 2x2 (810,000 >= 401,408) + thumbnail
    # 3x3 would need 903,168 pixels; 1000x1000 covers them
    assert image_tokens(1000, 1000) == (9 + 1) * 256
    # five images at the budget fit the config's context
    assert 5 * (max_tiles + 1) * 256 + 200 < cfg.model.max_model_len


def test_unknown_shapes_fail_at_start_naming_the_key():
    with pytest.raises(ConfigError, match="model.random_weights"):
        load_config(["model=internvl2_8b", "model.random_weights=true"])
    with pytest.raises(ConfigError, match="model.random_weights"):
        load_config(["model=random", "model.random_weights=true"])


def test_random_weights_results_never_pass_for_the_real_model():
    from geoxray.run.evaluate import default_output_dir, model_fingerprint
    real = load_config(["model=qwen2_vl_7b"])
    fake = load_config(["model=qwen2_vl_7b", "model.random_weights=true"])
    assert fake.model.name == "qwen2_vl_7b+random" and real.model.name == "qwen2_vl_7b"
    assert model_fingerprint(fake.model) != model_fingerprint(real.model)
    assert default_output_dir(fake) != default_output_dir(real)
    # validating again (a sweep re-composes points) does not stack suffixes
    again = load_config(["model=qwen2_vl_7b", "model.random_weights=true",
                         "model.name=qwen2_vl_7b+random"])
    assert again.model.name == "qwen2_vl_7b+random"


def test_profile_counts_text_tokens_with_the_built_tokenizer(tmp_path, monkeypatch):
    # a random-weights model's tokenizer is the one built here: `profile` must find it (the
    # real checkpoint's id cannot be downloaded), or image tokens per item come out null
    import numpy as np

    from geoxray.infer.engine import Request
    from geoxray.capacity.profile import text_token_counts
    monkeypatch.setenv("GEOXRAY_CACHE", str(tmp_path))
    image = np.zeros((8, 8, 3), np.uint8)
    requests = [Request("k", "i", "pose_fixed", "", "<image>" * n + "Where is north?",
                        [image] * n, ["u"] * n, ("N", "E"), "direction") for n in (1, 2)]
    for override in ("model=qwen2_vl_2b", "model=llava_onevision_7b", "model=internvl3_2b"):
        cfg = load_config([override, "model.random_weights=true"])
        counts = text_token_counts(cfg, requests)
        assert counts is not None and counts[0] == counts[1] > 5  # images are not text
