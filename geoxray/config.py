"""Typed configuration: Hydra composes conf/, these dataclasses check it at start.

A misspelt key or a wrong type fails before any work, with the key's full name."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from geoxray.infer.config import DecodeConfig, ModelConfig

DATA_KINDS = ("synthetic", "geoxbench", "index", "items", "sources")
ENGINES = ("random", "constant", "prior", "vllm", "openai")
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
    max_items_per_task: Optional[int] = None  # quick runs: the first N of each task
    image_cache_size: int = 64
    progress: bool = True
    bootstrap: int = 1000


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
        raise ConfigError(str(exc)) from None


def validate(raw: DictConfig | dict) -> Config:
    """Merge into the typed schema; name the offending key on any mistake."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {exc.msg if hasattr(exc, 'msg') else exc}") from None
    _check_choice("data.kind", cfg.data.kind, DATA_KINDS)
    _check_choice("model.engine", cfg.model.engine, ENGINES)
    _check_choice("decode.mode", cfg.decode.mode, DECODE_MODES)
    if cfg.run.batch_size < 1:
        raise ConfigError("config key 'run.batch_size': must be >= 1")
    if cfg.run.tasks:
        from geoxray.bench.tasks import TASK_BY_NAME
        for name in cfg.run.tasks:
            _check_choice("run.tasks", name, tuple(TASK_BY_NAME))
    if cfg.model.engine in ("vllm", "openai") and not cfg.model.path:
        raise ConfigError(f"config key 'model.path': required for engine {cfg.model.engine}")
    if cfg.model.random_weights:
        from geoxray.models.random_weights import NAME_SUFFIX, SHAPES
        if cfg.model.engine != "vllm" or cfg.model.path not in SHAPES:
            raise ConfigError(f"config key 'model.random_weights': needs engine vllm and a "
                              f"model.path with known shapes ({', '.join(sorted(SHAPES))}); "
                              f"got {cfg.model.engine} {cfg.model.path!r}")
        if not cfg.model.name.endswith(NAME_SUFFIX):
            cfg.model.name += NAME_SUFFIX
    if cfg.model.adapter in ("none", ""):  # sweeps list the base as model.adapter=none
        cfg.model.adapter = None
    if cfg.model.adapter:  # checked against the base now, not when the engine loads it
        from geoxray.tune.adapter import AdapterError, prepare_adapter
        try:
            prepare_adapter(cfg.model)
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
