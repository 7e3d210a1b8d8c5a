"""Full-size models with random weights, built offline: the compute of a real model without its
download, for profiling and capacity planning (`model.random_weights=true`).

The folder holds the architecture's real shapes (config.json: layers, widths, heads, vocabulary,
vision tower) with no weights; vLLM fills them at random (`load_format="dummy"`), so a forward
pass costs what the real model's does. Image tokens per image follow the model's pixel budget
exactly, as with the real processor. The tokenizer is the tiny model's (trained here on the
benchmark's prompts): text prompts come out shorter than with the real tokenizer, which shifts
prompt token counts by a few dozen per item against several hundred image tokens. Replies are
random, so paper mode runs to `max_tokens`: profile it with the paper's 512.

Shapes are written down below for the architectures vLLM and transformers support natively
(Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL3); they are the published config.json values
of each checkpoint. InternVL3's checkpoints ship remote code (InternVLChatModel); its random
build uses transformers' own port of the same network (InternVLForConditionalGeneration:
InternViT, pixel shuffle, MLP projector, Qwen2.5), which vLLM runs natively. InternVL2 and
Phi-3.5-vision exist only as remote code, which cannot be had offline: `geoxray plan`
estimates them from a profiled model's figures.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from geoxray.models.tiny import (CHAT_TEMPLATE, SPECIAL_TOKENS, build_cached,
                                      build_image_processor, build_tokenizer, default_cache_root)

BUILD_FORMAT = 3
DONE_MARKER = "geoxray_random_build.json"
# Results of a random-weights model carry this after the model's name (tables, keys, output
# folders), so they never pass for, or resume into, the real checkpoint's; its profile is
# filed under the real name (same compute), marked random_weights.
NAME_SUFFIX = "+random"


def real_name(name: str) -> str:
    return name[: -len(NAME_SUFFIX)] if name.endswith(NAME_SUFFIX) else name


_QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_act="quick_gelu")
_QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                          hidden_act="silu", window_size=112, tokens_per_second=2,
                          fullatt_block_indexes=[7, 15, 23, 31])

# SigLIP so400m/14 at 384 px, as LLaVA-OneVision uses it (vLLM drops the pooling head).
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                      num_attention_heads=16, patch_size=14, image_size=384,
                      vision_use_head=False)

# InternViT-300M-448px-V2.5, InternVL3's vision tower.
_INTERNVIT_300M = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14],
                       norm_type="layer_norm", attention_bias=True, use_qk_norm=False,
                       layer_scale_init_value=0.1, use_mean_pooling=True)

ARCHITECTURES = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                 "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration",
                 "internvl": "InternVLForConditionalGeneration"}

def _text(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
          tied: bool) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                tie_word_embeddings=tied)


# HF id -> (architecture, text shapes, vision shapes). The vision tower's output width is the
# text hidden size.
SHAPES: dict[str, tuple[str, dict, dict]] = {
    "Qwen/Qwen2-VL-2B-Instruct":
        ("qwen2_vl", _text(1536, 8960, 28, 12, 2, 151936, True), _QWEN2_VL_VISION),
    "Qwen/Qwen2-VL-7B-Instruct":
        ("qwen2_vl", _text(3584, 18944, 28, 28, 4, 152064, False), _QWEN2_VL_VISION),
    "Qwen/Qwen2.5-VL-3B-Instruct":
        ("qwen2_5_vl", _text(2048, 11008, 36, 16, 2, 151936, True), _QWEN2_5_VL_VISION),
    "Qwen/Qwen2.5-VL-7B-Instruct":
        ("qwen2_5_vl", _text(3584, 18944, 28, 28, 4, 152064, False), _QWEN2_5_VL_VISION),
    "Qwen/Qwen2.5-VL-72B-Instruct":
        ("qwen2_5_vl", _text(8192, 29568, 80, 64, 8, 152064, False), _QWEN2_5_VL_VISION),
    # 0.5B: not in the paper, but small enough to check the 7B's path on a CPU
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf":
        ("llava_onevision", _text(896, 4864, 24, 14, 2, 151936, True), _SIGLIP_SO400M),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf":
        ("llava_onevision", _text(3584, 18944, 28, 28, 4, 152128, False), _SIGLIP_SO400M),
    "OpenGVLab/InternVL3-2B":
        ("internvl", _text(1536, 8960, 28, 12, 2, 151674, False), _INTERNVIT_300M),
    "OpenGVLab/InternVL3-8B":
        ("internvl", _text(3584, 18944, 28, 28, 4, 151674, False), _INTERNVIT_300M),
}


def _chat_template(image_placeholder: str) -> str:
    """Qwen's chat template (as in these checkpoints) with another image placeholder."""
    return CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                 image_placeholder)


# LLaVA-OneVision's image placeholder, one per image (the processor expands it to the image's
# anyres tokens).
LLAVA_IMAGE_TOKENS = ("<image>", "<video>")
LLAVA_CHAT_TEMPLATE = _chat_template("<image>\n")
# InternVL's: the processor expands <IMG_CONTEXT> to <img>, 256 tokens a tile, </img>.
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_CHAT_TEMPLATE = _chat_template("<IMG_CONTEXT>\n")
INTERNVL_MAX_TILES = 12  # the checkpoints' max_dynamic_patch
MROPE_SECTION = [16, 24, 24]  # every Qwen checkpoint above: (t, h, w) of head_dim 128 / 2


def model_config(path: str):
    """The transformers config of a known checkpoint's shapes, token ids from our tokenizer."""
    if path not in SHAPES:
        raise ValueError(f"config key 'model.random_weights': no shapes known for model.path "
                         f"{path!r}; known: {', '.join(sorted(SHAPES))}")
    arch, text, vision = SHAPES[path]
    tok = build_tokenizer()
    if arch == "llava_onevision":
        tok.add_tokens(list(LLAVA_IMAGE_TOKENS), special_tokens=True)
        tok.chat_template = LLAVA_CHAT_TEMPLATE
    elif arch == "internvl":
        tok.add_tokens(list(INTERNVL_TOKENS.values()), special_tokens=True)
        # InternVLProcessor reads these as tokenizer attributes (saved with the tokenizer)
        tok._set_model_specific_special_tokens(special_tokens=INTERNVL_TOKENS)
        tok.chat_template = INTERNVL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(text)
    context = 32768 if arch in ("llava_onevision", "internvl") else 128000
    tok.model_max_length = context
    text.update(max_position_embeddings=context,
                rms_norm_eps=1e-6, rope_theta=1000000.0,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], hidden_act="silu")
    if arch == "llava_onevision":
        from transformers import LlavaOnevisionConfig
        cfg = LlavaOnevisionConfig(
            text_config=dict(text, model_type="qwen2"),
            vision_config=dict(vision, model_type="siglip_vision_model"),
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            video_token_index=tok.convert_tokens_to_ids("<video>"),
            vision_feature_select_strategy="full", vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9", tie_word_embeddings=text["tie_word_embeddings"])
    elif arch == "internvl":
        from transformers import InternVLConfig
        cfg = InternVLConfig(
            text_config=dict(text, model_type="qwen2"), vision_config=vision,
            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
            projector_hidden_act="gelu", vision_feature_layer=-1,
            vision_feature_select_strategy="default", image_seq_length=256,
            tie_word_embeddings=text["tie_word_embeddings"])
    else:
        text["rope_scaling"] = {"type": "mrope", "rope_type": "default",
                                "mrope_section": MROPE_SECTION}
        common = dict(in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if arch == "qwen2_vl":
            from transformers import Qwen2VLConfig as Config
            vision = dict(vision, hidden_size=text["hidden_size"], **common)
        else:
            from transformers import Qwen2_5_VLConfig as Config
            vision = dict(vision, out_hidden_size=text["hidden_size"], **common)
        cfg = Config(text_config=text, vision_config=vision,
                     image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"],
                     vision_end_token_id=ids["<|vision_end|>"], **text)
    cfg.dtype = "bfloat16"
    # what vLLM reads to pick the generating model class (without it: a pooling model)
    cfg.architectures = [ARCHITECTURES[arch]]
    return cfg, tok


def _save_llava_processor(out: Path, tok) -> None:
    """LLaVA-OneVision's processor (anyres image tiling at 384 px, 729 tokens a tile) with our
    tokenizer: image tokens per image come out as with the real checkpoint."""
    try:  # transformers 5: the PIL backend
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil as ImageProcessor)
    except ImportError:
        from transformers import LlavaOnevisionImageProcessor as ImageProcessor
    from transformers import LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    LlavaOnevisionProcessor(
        image_processor=ImageProcessor(), tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=729,
        vision_feature_select_strategy="full", chat_template=LLAVA_CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_9").save_pretrained(out)


def _save_internvl_processor(out: Path, tok, max_tiles: int) -> None:
    """InternVL's processor: an image becomes up to `max_tiles` 448 px tiles (the grid nearest
    its aspect ratio) plus a thumbnail when tiled, 256 tokens each, as in the checkpoints."""
    try:  # transformers 5: the PIL backend
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            GotOcr2ImageProcessorPil as ImageProcessor)
    except ImportError:
        from transformers import GotOcr2ImageProcessor as ImageProcessor
    from transformers import InternVLProcessor, InternVLVideoProcessor

    InternVLProcessor(
        image_processor=ImageProcessor(crop_to_patches=True, min_patches=1,
                                       max_patches=max_tiles, size={"height": 448, "width": 448}),
        tokenizer=tok, video_processor=InternVLVideoProcessor(), image_seq_length=256,
        chat_template=INTERNVL_CHAT_TEMPLATE).save_pretrained(out)


def ensure_random_model(path: str, min_pixels: int | None, max_pixels: int | None,
                        cache_dir: str | Path | None = None, max_tiles: int | None = None
                        ) -> Path:
    """The folder (config, tokenizer, processor; no weights) of `path`'s architecture.
    `max_tiles`: InternVL's max_dynamic_patch (its pixel budget), default the checkpoints'."""
    if path not in SHAPES:
        model_config(path)  # raises, naming the key and the known paths
    if SHAPES[path][0] == "internvl":
        max_tiles = int(max_tiles or INTERNVL_MAX_TILES)
    spec = {"format": BUILD_FORMAT, "path": path, "shapes": SHAPES[path],
            "min_pixels": min_pixels, "max_pixels": max_pixels, "max_tiles": max_tiles}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "models"
    slug = path.rsplit("/", 1)[-1].lower()

    def build(out: Path) -> None:
        cfg, tok = model_config(path)
        cfg.save_pretrained(out)
        if SHAPES[path][0] == "llava_onevision":
            _save_llava_processor(out, tok)  # its pixel budget is its tiling, not min/max
            return
        if SHAPES[path][0] == "internvl":
            _save_internvl_processor(out, tok, max_tiles)
            return
        tok.save_pretrained(out)
        build_image_processor(out, min_pixels or 56 * 56, max_pixels or 28 * 28 * 1280)
        (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    return build_cached(root / f"random-{slug}-{digest}", build, DONE_MARKER, spec)
