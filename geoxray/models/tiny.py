"""A tiny, randomly initialised Qwen2-VL built on this machine (no download): the model the
tests and the default demo run through the real vLLM path.

What gets written (a normal Hugging Face model folder that vLLM and transformers both load):
- config.json + model.safetensors: a shrunken Qwen2-VL (text hidden 64, 2 layers, head_dim 32
  because vLLM's CPU attention needs >= 32; vision tower depth 2, patch 14, merge 2),
- a byte-level BPE tokenizer trained here on the benchmark's own prompts (so prompts are short)
  with Qwen's special tokens and a chat template that handles image content parts,
- the PIL Qwen2-VL image processor with a small pixel budget (112x112 -> 16 image tokens).

Its answers are random. Use it to check formats, determinism and agreement between engines,
never accuracy. Builds are cached under a name that hashes every build parameter, and are
written to a temporary folder renamed into place, so concurrent callers (Serve replicas, test
workers) never see a half-written model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

TINY_PREFIX = "tiny:"
BUILD_FORMAT = 1  # bump when the builder changes what it writes
DONE_MARKER = "geoxray_tiny_build.json"
_BUILD_LOCK = threading.Lock()  # threads of one process build once (and transformers' lazy
# imports are not thread-safe); other processes race through the atomic rename

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat template, reduced: string or list content, {"type": "image"} parts become
# the vision placeholder where they stand (so images go exactly where the prompt puts them).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyQwen2VLSpec:
    """Every parameter of a build; its hash names the cache folder."""
    seed: int = 0
    vocab_size: int = 1024  # BPE vocabulary trained on the prompts (padded to 64 in the model)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = 64 / 2 = 32
    num_kv_heads: int = 1
    vision_depth: int = 2
    vision_heads: int = 2
    min_pixels: int = 56 * 56  # -> 4 image tokens at least
    max_pixels: int = 112 * 112  # -> 16 image tokens at most
    max_position_embeddings: int = 4096
    init_std: float = 0.3  # large enough that replies depend on the images and greedy
    # choices have clear margins (at 0.02 every prompt gets the same near-uniform reply)
    # The language model's query/key weights at init_std x this: attention stays soft (score
    # std ~0.5 instead of ~6). Saturated random attention reads a few fixed prompt tokens at
    # the answer position, ~0 weight (so ~0 gradient) on the image tokens, and LoRA tuning
    # could not learn the images' cue (docs/tuning.md); soft, it learns it within an epoch.
    qk_scale: float = 0.3
    dtype: str = "float32"  # exact agreement between vLLM and a transformers forward pass

    def fingerprint(self) -> str:
        payload = json.dumps({"format": BUILD_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def default_cache_root() -> Path:
    return Path(os.environ.get("GEOXRAY_CACHE") or Path.home() / ".cache" / "geoxray")


def ensure_tiny_qwen2vl(cache_dir: str | os.PathLike | None = None, seed: int = 0,
                        spec: TinyQwen2VLSpec | None = None) -> Path:
    """The folder of a tiny Qwen2-VL, building it (a few seconds, offline) on first use."""
    spec = spec or TinyQwen2VLSpec(seed=seed)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "models"
    return build_cached(root / f"tiny_qwen2vl-{spec.fingerprint()}",
                        lambda out: _build(spec, out), DONE_MARKER, asdict(spec))


def build_cached(final: Path, build: Callable[[Path], None], marker: str, spec: dict) -> Path:
    """`final`, made by `build(tmp)` in a temporary sibling folder renamed into place (with
    `marker` holding `spec`) unless it exists: concurrent builders never see half a model."""
    if (final / marker).exists():
        return final
    with _BUILD_LOCK:
        if (final / marker).exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{uuid.uuid4().hex[:8]}-",
                                    dir=final.parent))
        try:
            build(tmp)
            (tmp / marker).write_text(json.dumps(spec, indent=2))
            os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache is readable by all
            try:
                os.rename(tmp, final)  # atomic; fails if another process finished first
            except OSError:
                if not (final / marker).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model_path(path: str, seed: int = 0) -> str:
    """A ModelConfig.path as vLLM wants it: "tiny:qwen2vl" builds the tiny model."""
    if path.startswith(TINY_PREFIX):
        kind = path[len(TINY_PREFIX):]
        if kind != "qwen2vl":
            raise ValueError(f"model.path {path!r}: the only tiny model is 'tiny:qwen2vl'")
        return str(ensure_tiny_qwen2vl(seed=seed))
    return path


# --- the pieces ---------------------------------------------------------------------------
def _training_corpus() -> list[str]:
    """The benchmark's prompts and answer words, so the tokenizer keeps them short."""
    raw = json.loads((resources.files("geoxray.bench") / "geoxbench" / "prompts.json").read_text())
    texts = [p[k] for p in raw.values() for k in ("system", "user")]
    words = ["N", "E", "S", "W", "true", "false", "0", "1", "2", "3", "center", "left", "right",
             "top", "bottom", "top left", "top right", "bottom left", "bottom right"]
    answers = [f'{{"explanation": "x", "{f}": "{w}"}}' for f in ("direction", "location")
               for w in words] + [f'"is_in_range": {b}' for b in ("true", "false")]
    return texts + answers + ["system user assistant"]


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_training_corpus(), trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=4096, clean_up_tokenization_spaces=False)
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_image_processor(out: Path, min_pixels: int, max_pixels: int) -> None:
    """Save Qwen2-VL's image processor with this pixel budget into `out`, marked so that
    AutoProcessor picks Qwen2VLProcessor (tokenizer + image processor together)."""
    try:  # transformers 5: the PIL backend needs no torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as ImageProcessor)
    except ImportError:  # transformers 4: the slow processor is PIL/numpy based
        from transformers import Qwen2VLImageProcessor as ImageProcessor
    ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                   temporal_patch_size=2, merge_size=2).save_pretrained(out)
    pp = out / "preprocessor_config.json"
    pre = json.loads(pp.read_text())
    pre["processor_class"] = "Qwen2VLProcessor"
    pre.setdefault("image_processor_type", "Qwen2VLImageProcessor")
    pp.write_text(json.dumps(pre, indent=2))


def _build(spec: TinyQwen2VLSpec, out: Path) -> None:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = build_tokenizer(spec.vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=1e-6,
        rope_theta=1000000.0, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True, initializer_range=spec.init_std,
        # mrope sections (t, h, w) sum to head_dim / 2 = 16
        rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": [4, 6, 6]},
    )
    vision = dict(depth=spec.vision_depth, embed_dim=spec.hidden_size,
                  hidden_size=spec.hidden_size, num_heads=spec.vision_heads, mlp_ratio=2,
                  in_channels=3, in_chans=3, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, initializer_range=spec.init_std)
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], **text)
    cfg.dtype = spec.dtype
    torch.manual_seed(spec.seed)
    model = Qwen2VLForConditionalGeneration(cfg).to(getattr(torch, spec.dtype)).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(spec.qk_scale)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    build_image_processor(out, spec.min_pixels, spec.max_pixels)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
