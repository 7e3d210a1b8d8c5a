"""Per model, what a plan needs: its cost per item and per point on a device, its start-up,
and its replica layout (tensor parallel size from the config, raised if the weights need it).

Costs come from a profile (`geoxray profile`, profiles/<model>-<device>.json) when there is
one. Otherwise they are ESTIMATED, and the plan says so:
- from another profiled model on the same device, scaled by parameter count (compute per
  token grows with parameters; prompt lengths assumed alike), or, with no profile at all,
- from the device's peak compute and memory bandwidth (ASSUMED_TOKENS per item, an assumed
  utilisation): prefill 2 x params x prompt tokens / (peak x MFU), plus decode 2 x params
  bytes x generated tokens / bandwidth / concurrent sequences.
Parameter counts come from the model's id ("Qwen2-VL-7B" -> 7) or KNOWN_PARAMS_B.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoxray.capacity.profile_file import profile_path, read_profile
from geoxray.infer.config import ModelConfig
from geoxray.infer.registry import ENGINE_KINDS, engine_kind, gpus_per_replica

# Models whose id carries no size (billions of parameters, language + vision).
KNOWN_PARAMS_B = {"phi-3.5-vision": 4.2, "phi3.5_vision": 4.2, "phi3_5_vision": 4.2,
                  "minicpm-v-2_6": 8.1, "minicpm_v2.6": 8.1, "minicpm_v2_6": 8.1,
                  "tiny:qwen2vl": 0.0003}
# Peak dense bf16 FLOP/s, memory bandwidth (B/s), memory (GiB) of common GPUs.
DEVICES = {"h100": (989e12, 3.35e12, 80), "h200": (989e12, 4.8e12, 141),
           "a100": (312e12, 2.0e12, 80), "l40s": (362e12, 0.864e12, 48),
           "a10g": (125e12, 0.6e12, 24), "l4": (121e12, 0.3e12, 24)}
MFU = 0.35  # assumed fraction of peak compute reached in prefill
ASSUMED_TOKENS = {"paper": (1500, 80), "choice": (1500, 4)}  # (prompt, generated) per item
ASSUMED_STARTUP_S = (60.0, 4.0)  # start-up = a + b x params_b seconds (load, compile)
ASSUMED_FIXED_S = 20.0  # per point: Ray Data start-up, selection, manifest
WEIGHT_HEADROOM = 1.25  # weights x this must fit; the rest of the memory holds KV cache
GPU_MEMORY_UTILIZATION = 0.9
TP_EFFICIENCY = 0.8  # throughput of a replica on 2x the GPUs: 2 x 0.8


def params_billion(model: ModelConfig) -> float | None:
    for text in (model.path or "", model.name):
        key = text.lower()
        if key in KNOWN_PARAMS_B:
            return KNOWN_PARAMS_B[key]
        for known, value in KNOWN_PARAMS_B.items():
            if known in key:
                return value
        m = re.search(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*b(?![a-z0-9])", key.replace("_", "-"))
        if m:
            return float(m.group(1))
    return None


def weight_bytes_per_param(model: ModelConfig) -> float:
    return {"float32": 4.0, "fp32": 4.0, "float16": 2.0, "bfloat16": 2.0, "half": 2.0,
            "auto": 2.0, "fp8": 1.0}.get(str(model.dtype).lower(), 2.0)


@dataclass
class ModelCost:
    """What a model costs on one device, per replica."""
    model: str
    engine: str
    source: str  # "profile" | "estimate: ..." | "api" | "unknown"
    note: str = ""
    device: str = ""
    uses_gpu: bool = False
    params_b: float | None = None
    memory_gb: float | None = None  # weights x headroom
    tp: int = 0  # GPUs per replica (0: CPU or API)
    tp_basis: int = 1  # the TP size per_item_s was measured (or estimated) at
    startup_s: float = 0.0
    per_item_s: dict[str, float] = field(default_factory=dict)  # decode mode -> s/item/replica
    fixed_s: dict[str, float] = field(default_factory=dict)  # per point
    score_s: dict[str, tuple[float, float]] = field(default_factory=dict)  # base, per item

    def point_parts(self, mode: str, items: int) -> tuple[float, float]:
        """(work, overhead) seconds of one point of `items` items: work is replica-seconds
        (divided among replicas), overhead is the run's own cost and its scoring."""
        per_item = self.per_item_s.get(mode)
        if per_item is None:  # a mode never profiled: the slowest one measured
            per_item = max(self.per_item_s.values())
        base, per_score = self.score_s.get(mode, (0.0, 0.0))
        return items * per_item, self.fixed_s.get(mode, ASSUMED_FIXED_S) + base + per_score * items

    def point_seconds(self, mode: str, items: int, replicas: int = 1) -> float:
        """Wall seconds of one point of `items` items with `replicas` replicas."""
        work, overhead = self.point_parts(mode, items)
        return overhead + work / max(1, replicas)


def min_tp(memory_gb: float | None, gpu_memory_gb: float, configured: int) -> int:
    """The config's tensor parallel size, doubled until the weights fit."""
    tp = max(1, configured)
    if memory_gb is None:
        return tp
    while memory_gb > tp * gpu_memory_gb * GPU_MEMORY_UTILIZATION and tp < 64:
        tp *= 2
    return tp


def find_profile(model: str, device: str, folder: Path) -> Path | None:
    path = profile_path(model, device, folder)
    return path if path.is_file() else None


def device_profiles(device: str, folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(Path(folder).glob(f"*-{device}.json")):
        try:
            found.append(read_profile(path))
        except (ValueError, OSError):
            continue
    return found


def cost_from_profile(model: ModelConfig, profile: dict[str, Any]) -> ModelCost:
    replicas = max(1, int(profile["model_config"].get("num_replicas") or 1))
    cost = ModelCost(model.name, model.engine, "profile", device=profile["device"]["slug"],
                     params_b=profile.get("params_b") or params_billion(model),
                     startup_s=float(profile.get("engine_startup_s") or 0.0),
                     tp_basis=max(1, int(profile["model_config"].get("tensor_parallel_size")
                                         or 1)))
    # Engines inside the stage workers run `concurrency` at a time (one worker was timed);
    # a Serve app's replicas are fed by one worker's batch.
    workers = 1 if engine_kind(model.engine).serve_app else max(
        1, int(profile["run"].get("concurrency") or 1))
    cost.startup_s += max((float(p.get("cold_start_s") or 0.0)
                           for p in profile["modes"].values()), default=0.0)
    for mode, p in profile["modes"].items():
        # Profiles measure with the config's replicas; plans count per replica.
        cost.per_item_s[mode] = float(p["per_item_s"]) * replicas / workers
        cost.fixed_s[mode] = float(p.get("fixed_s") or 0.0)
        score = p.get("score_s") or {}
        cost.score_s[mode] = (float(score.get("base", 0.0)), float(score.get("per_item", 0.0)))
    return cost


def model_cost(model: ModelConfig, device: str, folder: Path,
               gpu_memory_gb: float | None = None) -> ModelCost:
    """The cost of `model` on `device` ("h100", "cpu", ...): profiled, else estimated."""
    kind = engine_kind(model.engine)
    uses_gpu = gpus_per_replica(model) > 0
    gpu_mem = gpu_memory_gb or DEVICES.get(device, (0, 0, 80))[2]
    path = find_profile(model.name, device, folder)
    if kind.cost == "api":
        cost = ModelCost(model.name, model.engine, "api", note="API model: no GPU; not "
                         "planned", device=device)
    elif path is not None:
        cost = cost_from_profile(model, read_profile(path))
        cost.note = f"profile {path.name}"
    elif kind.cost == "baseline":  # no model at all
        cost = ModelCost(model.name, model.engine, "estimate: baseline", device=device,
                         note="no profile; baseline cost taken as negligible",
                         per_item_s={"paper": 1e-3, "choice": 1e-3})
    else:
        cost = _estimate(model, device, folder)
    cost.uses_gpu = uses_gpu
    if cost.params_b is None:
        cost.params_b = params_billion(model)
    if uses_gpu:
        cost.memory_gb = (cost.params_b * weight_bytes_per_param(model) * WEIGHT_HEADROOM
                          if cost.params_b else None)
        cost.tp = min_tp(cost.memory_gb, gpu_mem, model.tensor_parallel_size)
        if cost.tp > model.tensor_parallel_size:
            cost.note += f"; TP raised to {cost.tp} for memory"
        if cost.tp != cost.tp_basis and cost.per_item_s:
            # More GPUs per replica: faster per item, at an assumed 80% scaling efficiency.
            speedup = cost.tp / cost.tp_basis * (TP_EFFICIENCY if cost.tp > cost.tp_basis
                                                 else 1 / TP_EFFICIENCY)
            cost.per_item_s = {m: v / speedup for m, v in cost.per_item_s.items()}
            cost.note += f"; per item scaled from TP {cost.tp_basis} to {cost.tp}"
    return cost


def _is_model_cost(engine: str | None) -> bool:
    """A profile of a real model (not a baseline or an API): a reference for estimates."""
    kind = ENGINE_KINDS.get(engine or "")
    return kind is not None and kind.cost == "model"


def _estimate(model: ModelConfig, device: str, folder: Path) -> ModelCost:
    params = params_billion(model)
    cost = ModelCost(model.name, model.engine, "unknown", device=device, params_b=params)
    if params is None:
        cost.note = "no profile and no parameter count: not planned"
        return cost
    cost.startup_s = ASSUMED_STARTUP_S[0] + ASSUMED_STARTUP_S[1] * params
    refs = [p for p in device_profiles(device, folder)
            if _is_model_cost(p.get("engine")) and p.get("params_b")]
    if refs:  # the profiled model nearest in size, scaled by parameters
        ref = min(refs, key=lambda p: abs(math.log(p["params_b"] / params)))
        base = cost_from_profile(model, ref)
        scale = params / ref["params_b"]
        cost.per_item_s = {m: s * scale for m, s in base.per_item_s.items()}
        cost.fixed_s, cost.score_s = base.fixed_s, base.score_s
        cost.tp_basis = base.tp_basis
        cost.startup_s = base.startup_s * max(1.0, scale)
        cost.source = f"estimate: params {params:g}B vs profiled {ref['model']}"
        cost.note = f"scaled x{scale:.2f} from {ref['model']} ({ref['params_b']:g}B)"
        return cost
    if device not in DEVICES:
        cost.note = f"no profile on {device} and no figures for that device: not planned"
        return cost
    peak, bandwidth, _ = DEVICES[device]
    seqs = max(1, model.max_num_seqs)
    for mode, (prompt, generated) in ASSUMED_TOKENS.items():
        prefill = 2 * params * 1e9 * prompt / (peak * MFU)
        decode = generated * 2 * params * 1e9 / bandwidth / seqs
        cost.per_item_s[mode] = prefill + decode
        cost.fixed_s[mode] = ASSUMED_FIXED_S
    cost.source = f"estimate: params {params:g}B, {device} peak figures"
    cost.note = (f"no profile: assumed {ASSUMED_TOKENS['paper'][0]} prompt tokens/item, "
                 f"MFU {MFU}")
    return cost
