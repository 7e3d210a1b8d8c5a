"""A LoRA adapter with random weights for a base model folder, in peft's layout: what the
tests and benchmarks serve when the point is the serving path, not what an adapter learned
(a trained one comes from `geoxray tune`).

peft initialises lora_B to zero (the adapter then changes nothing, and geoxray refuses it);
`trained=True` draws lora_B from N(0, scale^2) so each adapter is a different model.
"""
from __future__ import annotations

from pathlib import Path

from geoxray.tune.config import QWEN2_VL_LLM_LINEAR  # the paper's LoRA targets


def save_random_adapter(base_dir: str | Path, out: str | Path, r: int = 8, alpha: int = 32,
                        seed: int = 0, trained: bool = True, scale: float = 0.05) -> Path:
    """Write a LoRA adapter of the Qwen2-VL in `base_dir` to `out`; returns `out`. A folder
    without weights (`model.random_weights=true`: vLLM draws them) gets one from its
    config.json's shapes alone, so a 7B adapter needs no 7B model in memory."""
    if not list(Path(base_dir).glob("*.safetensors")):
        return _adapter_from_shapes(Path(base_dir), Path(out), r, alpha, seed,
                                    scale if trained else 0.0)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha,
                                             target_modules=QWEN2_VL_LLM_LINEAR))
    if trained:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(out)
    return Path(out)


def _adapter_from_shapes(base_dir: Path, out: Path, r: int, alpha: int, seed: int,
                         scale: float) -> Path:
    """peft's files for LoRA on every language-model linear of a Qwen2-VL config (lora_B
    all zero at scale 0: peft's untrained adapter)."""
    import json

    import torch
    from safetensors.torch import save_file

    config = json.loads((base_dir / "config.json").read_text())
    text = {**config, **(config.get("text_config") or {})}
    hidden, inter = text["hidden_size"], text["intermediate_size"]
    heads = text["num_attention_heads"]
    kv = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    shapes = {"self_attn.q_proj": (heads * head_dim, hidden),
              "self_attn.k_proj": (kv * head_dim, hidden),
              "self_attn.v_proj": (kv * head_dim, hidden),
              "self_attn.o_proj": (hidden, heads * head_dim),
              "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
              "mlp.down_proj": (hidden, inter)}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(text["num_hidden_layers"]):
        for module, (fan_out, fan_in) in shapes.items():
            key = f"base_model.model.model.language_model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) / fan_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * scale
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
        "lora_dropout": 0.0, "bias": "none", "target_modules": QWEN2_VL_LLM_LINEAR,
        "base_model_name_or_path": str(base_dir), "fan_in_fan_out": False,
        "inference_mode": True}, indent=2))
    return out
