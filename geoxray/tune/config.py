"""The `tune` config group (conf/tune/*.yaml), checked against `TuneConfig` at start."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Linear layers of the language model that get LoRA: ms-swift's default `all-linear` with
# `freeze_vit=True, freeze_aligner=True` (every nn.Linear of the LLM except lm_head) written
# out for Qwen2-VL. The regex keeps the vision tower and the merger (aligner) out.
QWEN2_VL_LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class TuneConfig:
    name: Optional[str] = None          # run folder runs/tune/<name> (default from model+data)
    output_root: str = "runs/tune"
    tasks: Optional[list[str]] = None   # None = all 7; ablations: [pose_fixed, pose_random]
    val_fraction: float = 0.1           # share of train LOCATIONS held out for validation
    max_locations: Optional[int] = None  # train locations (paper: 654); validation on top
    max_items_per_task: Optional[int] = None
    max_items_per_location: Optional[int] = None  # paper: 31,392 QA / 654 locations = 48
    # LoRA (peft)
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = QWEN2_VL_LLM_LINEAR  # a regex over module names (peft)
    freeze_vision: bool = True          # LoRA never reaches the vision tower or the merger
    # optimisation
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    epochs: int = 1
    batch_size: int = 1                 # per worker per step
    grad_accum: int = 16
    max_grad_norm: float = 1.0
    seed: int = 42
    # Ray Train
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    save_every_steps: int = 0           # 0: a checkpoint at each epoch's end only
    max_failures: int = 2               # worker deaths survived (resumed from the last checkpoint)
    crash_after_steps: int = 0          # tests: the worker dies after this step (first attempt)


class TuneConfigError(ValueError):
    pass


def load_tune_config(preset: str, overrides: list[str], conf_root: Path) -> TuneConfig:
    """conf/tune/<preset>.yaml with `tune.key=value` overrides, merged onto TuneConfig."""
    path = conf_root / "tune" / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_root / "tune").glob("*.yaml"))
        raise TuneConfigError(f"config key 'tune': no preset {preset!r}; presets are {known}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TuneConfig), OmegaConf.load(path),
                                 OmegaConf.from_dotlist(overrides))
        cfg: TuneConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise TuneConfigError(f"config key 'tune.{key}': {getattr(exc, 'msg', exc)}") from None
    if cfg.r < 1 or cfg.alpha <= 0 or cfg.epochs < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise TuneConfigError("config keys 'tune.r/alpha/epochs/batch_size/grad_accum' must be positive")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise TuneConfigError("config key 'tune.val_fraction': must be in [0, 1)")
    return cfg


def as_dict(cfg: TuneConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore


__all__ = ["QWEN2_VL_LLM_LINEAR", "TuneConfig", "TuneConfigError", "as_dict",
           "load_tune_config"]
