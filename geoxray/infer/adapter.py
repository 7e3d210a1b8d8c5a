"""LoRA adapters in the standard peft layout (what peft, ms-swift and LLaMA-Factory save):
checked against their base model before any engine starts, and hashed by content.

    <folder>/adapter_config.json         peft_type LORA, r, lora_alpha, target_modules, ...
    <folder>/adapter_model.safetensors   (or adapter_model.bin) lora_A / lora_B per module

Checks (each an `AdapterError` naming `model.adapter`): the folder and both files exist; the
config is LoRA with a rank the engine accepts; every adapted module exists in the base model
with the shapes the adapter expects (an adapter of another base fails here, not as garbage
answers); and at least one lora_B is non-zero (peft initialises B to zero, so an untrained
adapter is exactly the base model: it would be scored as the base under another name).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "adapter_config.json"
# `model.adapter=tuned:<preset>`: tuned on first use and cached by tune/cached.py
TUNED_PREFIX = "tuned:"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Ranks vLLM accepts for max_lora_rank (vllm/config/lora.py)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


class AdapterError(ValueError):
    """A LoRA adapter that cannot be scored on this base model."""


@dataclass(frozen=True)
class AdapterInfo:
    path: str
    name: str            # the folder's name: results are named <model>+<name>
    rank: int
    alpha: float
    hash: str            # content hash of config + weights (part of prediction keys)
    modules: int         # adapted modules


def files_hash(folder: Path, names: tuple[str, ...] | list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        p = Path(folder) / name
        if p.is_file():
            h.update(name.encode())
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _weights_file(folder: Path) -> Path | None:
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def adapter_hash(folder: str | Path) -> str:
    folder = Path(folder)
    weights = _weights_file(folder)
    return files_hash(folder, [CONFIG_FILE] + ([weights.name] if weights else []))


def engine_max_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise AdapterError(f"config key 'model.adapter': LoRA rank {rank} is above vLLM's "
                       f"largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def _lora_tensors(weights: Path) -> dict[str, dict[str, "object"]]:
    """module name -> {"A": tensor, "B": tensor} (names without peft's wrapper prefix)."""
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(weights))
    else:
        import torch
        state = torch.load(weights, map_location="cpu", weights_only=True)
    out: dict[str, dict] = {}
    for key, tensor in state.items():
        m = _LORA_KEY.match(key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = tensor
    return out


def _base_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape from the base checkpoint's safetensors headers (no tensor read)."""
    from safetensors import safe_open
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def _base_weight(module: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """The base weight of an adapted module; checkpoints name the language model differently
    across transformers versions (model.language_model.layers.N vs model.layers.N), so fall
    back to the name from `layers.` on, when that is unambiguous."""
    if f"{module}.weight" in shapes:
        return shapes[f"{module}.weight"]
    tail = module[module.find("layers."):] if "layers." in module else None
    if tail:
        hits = [k for k in shapes if k.endswith(f"{tail}.weight") and ".visual." not in k
                and not k.startswith("visual.")]
        if len(hits) == 1:
            return shapes[hits[0]]
    return None


def check_adapter(adapter: str | Path, base_dir: str | Path,
                  max_lora_rank: int | None = None) -> AdapterInfo:
    """Check an adapter folder against the base model folder (see the module doc)."""
    folder = Path(adapter)
    key = "config key 'model.adapter'"
    if not folder.is_dir():
        raise AdapterError(f"{key}: no adapter folder {folder}")
    if not (folder / CONFIG_FILE).is_file():
        raise AdapterError(f"{key}: {folder} has no {CONFIG_FILE} (not a peft adapter folder, "
                           f"or a partial copy)")
    weights = _weights_file(folder)
    if weights is None:
        raise AdapterError(f"{key}: {folder} has no {' or '.join(WEIGHT_FILES)} "
                           f"(a partial adapter folder)")
    try:
        conf = json.loads((folder / CONFIG_FILE).read_text())
        tensors = _lora_tensors(weights)
    except Exception as exc:  # truncated JSON or weights: a partial copy
        raise AdapterError(f"{key}: cannot read {folder} ({type(exc).__name__}: {exc})") from None
    if str(conf.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{key}: {folder} is a {conf.get('peft_type')!r} adapter; only LoRA "
                           f"adapters can be served by vLLM")
    rank = int(conf.get("r", 0))
    if max_lora_rank is not None and rank > max_lora_rank:
        raise AdapterError(f"{key}: rank {rank} of {folder} is above the engine's limit "
                           f"max_lora_rank={max_lora_rank} (model.engine_kwargs.max_lora_rank)")
    engine_max_rank(rank)
    if not tensors or any(set(ab) != {"A", "B"} for ab in tensors.values()):
        raise AdapterError(f"{key}: {weights} holds no complete lora_A/lora_B pairs")
    shapes = _base_shapes(Path(base_dir))
    for module, ab in sorted(tensors.items()):
        base = _base_weight(module, shapes)
        want = (tuple(ab["B"].shape)[0], tuple(ab["A"].shape)[1])
        if base is None or tuple(base[:2]) != want:
            raise AdapterError(
                f"{key}: {folder} does not fit the base model {base_dir}: module {module} "
                f"{'is not in the base' if base is None else f'has weight {base}'}, the adapter "
                f"expects (out, in) = {want} (an adapter trained for another base model? its "
                f"config says {conf.get('base_model_name_or_path')!r})")
        if tuple(ab["A"].shape)[0] != rank:
            raise AdapterError(f"{key}: {module} has rank {ab['A'].shape[0]}, config says {rank}")
    if all(float(ab["B"].abs().max()) == 0.0 for ab in tensors.values()):
        raise AdapterError(f"{key}: {folder} changes nothing (every lora_B is zero: an "
                           f"untrained adapter is the base model; it would be scored as the "
                           f"base under another name)")
    return AdapterInfo(path=str(folder.resolve()), name=folder.resolve().name, rank=rank,
                       alpha=float(conf.get("lora_alpha", rank)), hash=adapter_hash(folder),
                       modules=len(tensors))


def adapter_rank(folder: str | Path) -> int:
    return int(json.loads((Path(folder) / CONFIG_FILE).read_text()).get("r", 0))


def prepare_adapter(model, base_folder: str | Path) -> AdapterInfo:
    """At config time: check `model.adapter` against the base model's folder (ModelConfig;
    the engine's registry entry already said it loads adapters) and name the results
    `<model>+<adapter folder>`. Raises AdapterError."""
    base = Path(base_folder)
    if not list(base.glob("*.safetensors")):  # a hub id or a random-weights model: no shapes
        base = None
    info = check_adapter(model.adapter, base, (model.engine_kwargs or {}).get("max_lora_rank")) \
        if base is not None else _check_files_only(model)
    suffix = f"+{info.name}"
    if not model.name.endswith(suffix):
        model.name += suffix
    return info


def _check_files_only(model) -> AdapterInfo:
    folder = Path(model.adapter)
    if not (folder / CONFIG_FILE).is_file() or _weights_file(folder) is None:
        raise AdapterError(f"config key 'model.adapter': {folder} is not a complete peft "
                           f"adapter folder ({CONFIG_FILE} + {' or '.join(WEIGHT_FILES)})")
    rank = adapter_rank(folder)
    limit = (model.engine_kwargs or {}).get("max_lora_rank")
    if limit is not None and rank > limit:
        raise AdapterError(f"config key 'model.adapter': rank {rank} is above the engine's "
                           f"limit max_lora_rank={limit}")
    engine_max_rank(rank)
    return AdapterInfo(path=str(folder.resolve()), name=folder.resolve().name, rank=rank,
                       alpha=0.0, hash=adapter_hash(folder), modules=0)


# --- serving: one loaded base model answers for many adapters ---------------------------------
@dataclass(frozen=True)
class AdapterRef:
    """What a request names to be answered with an adapter: vLLM loads it once per replica
    (by `lora_id`, derived from the content hash, so a folder retrained in place is loaded
    anew rather than served from the replica's cache)."""
    name: str
    path: str
    hash: str

    @property
    def lora_id(self) -> int:
        return int(self.hash[:7], 16) + 1  # vLLM wants a positive int, unique per adapter


def adapter_ref(model) -> AdapterRef | None:
    if not model.adapter:
        return None
    folder = Path(model.adapter).resolve()
    return AdapterRef(name=folder.name, path=str(folder), hash=adapter_hash(folder))


def engine_lora_rank(model) -> int | None:
    """The max_lora_rank a replica of `model` is started with: None (no LoRA support) unless
    the model has an adapter or `model.lora_max_rank` reserves room for adapters (a sweep sets
    it on a base and all its adapters, so they share one replica)."""
    ranks = [r for r in (model.lora_max_rank,
                         adapter_rank(model.adapter) if model.adapter else None) if r]
    return engine_max_rank(max(ranks)) if ranks else None


def base_name(model) -> str:
    """The model's name without the `+<adapter>` suffix prepare_adapter gave it."""
    if model.adapter:
        return model.name.removesuffix(f"+{Path(model.adapter).resolve().name}")
    return model.name
