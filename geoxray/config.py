"""Typed configuration: Hydra composes conf/, these dataclasses check it at start.

A misspelt key or a wrong type fails before any work, with the key's full name."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from geoxray.infer.config import DecodeConfig, ModelConfig, ProtocolConfig
from geoxray.infer.registry import ENGINE_KINDS, engine_kind

DATA_KINDS = ("synthetic", "geoxbench", "index", "items", "sources")
ENGINES = tuple(ENGINE_KINDS)
DECODE_MODES = ("paper", "choice")


@dataclass
class DataConfig:
    name: str = "synth_tiny"
    kind: str = "synthetic"  # one of DATA_KINDS
    preset: str = "tiny"  # synthetic: tiny | paper | full
    seed: int = 0
    root: Optional[str] = None  # synthetic: where the world is written (default: cache)
    index_root: Optional[str] = None  # geoxbench/index: authors' index files (default: packaged)
    image_root: Optional[str] = None  # where index file paths resolve
    items: Optional[str] = None  # items: a prebuilt items.parquet
    splits: list[str] = field(default_factory=lambda: ["test"])
    sources: dict[str, Any] = field(default_factory=dict)  # sources: {name: {kind, root, ...}}
    build: dict[str, Any] = field(default_factory=dict)  # sources: BuildConfig fields


@dataclass
class RunConfig:
    batch_size: int = 64  # items per engine call (crosses the Ray boundary once)
    concurrency: int = 2  # Ray Data workers calling the engine
    tasks: Optional[list[str]] = None  # None = all 7
    max_items_per_task: Optional[int] = None  # quick runs: a seeded sample of N per task,
    sample_seed: int = 0  # stratified by instance and gold (geoxray/run/selection.py)
    image_cache_size: int = 64
    max_image_pixels: int = 50_000_000  # larger images are marked image_too_large (header check)
    image_read_timeout_s: Optional[float] = 60.0  # read + decode of one image; null = no limit
    progress: bool = True
    bootstrap: int = 1000
    retry_failed: bool = True  # a rerun retries items whose engine call failed
    stop_after_failed_batches: int = 3  # stop when the engine failed every item of N in a row
    consistency: bool = False  # also ask each item's geometric variants (bench/variants.py)
    state_rotation: bool = False  # consistency: pose prompts say how the tile is turned
    on_mismatch: str = "refuse"  # output_dir stamped with other settings: refuse | new_folder


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: a local cluster (or the job's, inside a Ray job)
    num_cpus: Optional[int] = None
    object_store_memory: Optional[int] = None
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # localhost unless configured
    temp_dir: Optional[str] = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output_dir: Optional[str] = None
    cache_dir: Optional[str] = None


class ConfigError(ValueError):
    pass


def conf_dir() -> Path:
    """The Hydra config folder: $GEOXRAY_CONF, else the repo's conf/ beside the package."""
    env = os.environ.get("GEOXRAY_CONF")
    candidate = Path(env) if env else Path(__file__).resolve().parents[1] / "conf"
    if not (candidate / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {candidate}; set GEOXRAY_CONF to geoxray's conf/")
    return candidate


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from hydra.core.config_store import ConfigStore

    # config.yaml lists `geoxray_schema` first: every group merges onto the typed schema, so
    # an override of an unknown key or of a wrong type fails at compose, naming the key.
    ConfigStore.instance().store(name="geoxray_schema", node=Config)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except HydraException as exc:
        raise ConfigError(describe_hydra_error(exc)) from None


def validate(raw: DictConfig | dict) -> Config:
    """Merge into the typed schema; name the offending key on any mistake."""
    reject_unknown_keys(raw)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from None
    _check_choice("data.kind", cfg.data.kind, DATA_KINDS)
    _check_choice("model.engine", cfg.model.engine, ENGINES)
    _check_choice("decode.mode", cfg.decode.mode, DECODE_MODES)
    _check_choice("run.on_mismatch", cfg.run.on_mismatch, ("refuse", "new_folder"))
    check_ranges(cfg)
    check_paths(cfg)
    from geoxray.infer.protocol import ProtocolError, apply_protocol
    try:  # the protocol resolves into plain model and decode settings, once, here
        apply_protocol(cfg.model, cfg.decode, cfg.protocol)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.run.tasks:
        from geoxray.bench.tasks import TASK_BY_NAME
        for name in cfg.run.tasks:
            _check_choice("run.tasks", name, tuple(TASK_BY_NAME))
    if engine_kind(cfg.model.engine).needs_path and not cfg.model.path:
        raise ConfigError(f"config key 'model.path': required for engine {cfg.model.engine}")
    if cfg.model.random_weights:
        from geoxray.models.random_weights import NAME_SUFFIX, SHAPES
        if not engine_kind(cfg.model.engine).local_weights or cfg.model.path not in SHAPES:
            raise ConfigError(f"config key 'model.random_weights': needs engine vllm and a "
                              f"model.path with known shapes ({', '.join(sorted(SHAPES))}); "
                              f"got {cfg.model.engine} {cfg.model.path!r}")
        if not cfg.model.name.endswith(NAME_SUFFIX):
            cfg.model.name += NAME_SUFFIX
    if cfg.model.adapter in ("none", ""):  # sweeps list the base as model.adapter=none
        cfg.model.adapter = None
    from geoxray.infer.adapter import TUNED_PREFIX
    if cfg.model.adapter and cfg.model.adapter.startswith(TUNED_PREFIX):
        raise ConfigError(f"config key 'model.adapter': {cfg.model.adapter!r} is tuned and "
                          f"cached by `geoxray eval` and `geoxray sweep` (or give the folder "
                          f"`geoxray tune` wrote)")
    if cfg.model.adapter:  # checked against the base now, not when the engine loads it
        from geoxray.infer.adapter import AdapterError, prepare_adapter
        from geoxray.infer.vllm_engine import model_folder
        if not engine_kind(cfg.model.engine).adapters:
            raise ConfigError(f"config key 'model.adapter': engine {cfg.model.engine!r} does "
                              f"not load adapters (engines that do: "
                              f"{[k for k, v in ENGINE_KINDS.items() if v.adapters]})")
        try:
            prepare_adapter(cfg.model, model_folder(cfg.model))
        except AdapterError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(allowed)}")


def load_config(overrides: list[str] | None = None) -> Config:
    return validate(compose(overrides))


def cache_dir(cfg: Config | None = None) -> Path:
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("GEOXRAY_CACHE", Path.home() / ".cache" / "geoxray"))


# === checks beyond types, and error messages a person can act on =========================
# The key's full name, Hydra's own detail, the nearest valid key or option (never Hydra's
# advice to append `+key`, which would run with the typo doing nothing).

# --- range and path checks: nonsense values fail at start, before Ray ----------------------
# key -> (lowest allowed value, whether the bound itself is allowed). Optional fields are
# checked only when set.
RANGES: dict[str, tuple[float, bool]] = {
    "run.batch_size": (1, True),
    "run.concurrency": (1, True),
    "run.max_items_per_task": (1, True),
    "run.image_cache_size": (0, True),
    "run.bootstrap": (1, True),
    "decode.max_tokens": (1, True),
    "decode.temperature": (0, True),
    "model.num_replicas": (1, True),
    "model.tensor_parallel_size": (1, True),
    "model.max_model_len": (1, True),
    "model.limit_mm_per_prompt": (1, True),
    "model.max_num_seqs": (1, True),
    "model.max_in_flight": (1, True),
    "model.gpus_per_replica": (0, True),
    "model.cpus_per_replica": (0, True),
    "model.concurrency": (1, True),
    "model.request_timeout_s": (0, False),
    "model.retries": (0, True),
    "model.min_pixels": (1, True),
    "model.max_pixels": (1, True),
    "ray.num_cpus": (0, True),
    "ray.object_store_memory": (1, True),
}


def check_ranges(cfg: Config) -> None:
    for key, (low, inclusive) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        if value < low or (value == low and not inclusive):
            raise ConfigError(f"config key '{key}': must be {'>=' if inclusive else '>'} "
                              f"{low} (got {value})")


def check_paths(cfg: Config) -> None:
    """Folders the data settings name must exist: a typo'd root would read nothing."""
    for key in ("index_root", "image_root"):
        value = getattr(cfg.data, key)
        if value and not Path(value).is_dir():
            raise ConfigError(f"config key 'data.{key}': {value} is not a directory")


# --- error messages: the key, Hydra's detail, the nearest valid name -----------------------
def schema_keys(schema: type = None, prefix: str = "") -> list[str]:
    """Every dotted key of the typed schema ("run.concurrency", ...)."""
    import dataclasses

    keys = []
    for f in dataclasses.fields(schema or Config):
        key = f"{prefix}{f.name}"
        keys.append(key)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += schema_keys(type(default), f"{key}.")
    return keys


def reject_unknown_keys(raw: DictConfig | dict) -> None:
    """A key the schema lacks fails, also when added with `+key=value` (the merge would keep
    it in a section and the run would go on without it ever being read)."""
    known = set(schema_keys())
    sections = {k for k in known if (_field_type(k) or "").endswith(" section")}

    def walk(node: Any, prefix: str) -> None:
        for name in list(node.keys()):
            key = f"{prefix}{name}"
            if key not in known:
                raise ConfigError(_unknown_key_message(key))
            if key in sections and hasattr(node[name], "keys"):
                walk(node[name], f"{key}.")

    walk(raw, "")


def _field_type(key: str) -> str | None:
    """The declared type of a dotted key, as a reader would write it ("int", "int or null")."""
    import dataclasses
    import typing

    cls: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        return f"a {cls.__name__} section"
    args = [a for a in typing.get_args(cls) if a is not type(None)]
    if typing.get_origin(cls) is typing.Union and len(args) == 1:
        return f"{_type_name(args[0])} or null"
    return _type_name(cls)


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def nearest(word: str, choices: list[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key_message(key: str) -> str:
    """Names the nearest valid key: among the same section's keys when the section exists
    (`run.concurrancy` -> `run.concurrency`), else among all keys (`modle` -> `model`)."""
    section, _, leaf = key.rpartition(".")
    known = schema_keys()
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    if section and section in known:
        guess = nearest(leaf, siblings)
        guess = f"{section}.{guess}" if guess else None
    else:
        guess = nearest(key, known)
    hint = (f"did you mean '{guess}'?" if guess else
            f"valid keys{' of ' + section if section else ''}: {', '.join(siblings)}")
    return f"config key '{key}': no such key; {hint}"


def describe_omegaconf_error(exc: Exception) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    key = getattr(exc, "full_key", None) or "?"
    detail = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    if isinstance(exc, (ConfigAttributeError, ConfigKeyError)) and "not in" in detail:
        return _unknown_key_message(key)
    if isinstance(exc, ValidationError):
        expected = _field_type(key)
        if expected:
            return f"config key '{key}': expected {expected}; {detail}"
    return f"config key '{key}': {detail}"


def describe_hydra_error(exc: Exception) -> str:
    """One line that names the key and keeps Hydra's own detail, minus its advice to append
    (`+key=value`), which for a typo'd key would run with the typo doing nothing."""
    import re

    from hydra.errors import MissingConfigException

    cause = exc.__cause__
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is not None and getattr(cause, "full_key", None):
        return describe_omegaconf_error(cause)
    text = str(exc)
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if isinstance(exc, MissingConfigException) and missing:
        group, option = missing.groups()
        options = group_options(group)
        guess = nearest(option, options)
        hint = f"did you mean '{guess}'? " if guess else ""
        return (f"config group '{group}': no option {option!r}; {hint}"
                f"(options: {', '.join(options)})")
    return "\n".join(line for line in text.splitlines() if "To append" not in line).strip()


def group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml names (empty if no such group)."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
