"""LoRA instruction tuning (peft on Ray Train) and adapters served by vLLM: see docs/tuning.md."""
