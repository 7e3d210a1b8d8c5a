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
    """Write a LoRA adapter of the Qwen2-VL in `base_dir` to `out`; returns `out`."""
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
