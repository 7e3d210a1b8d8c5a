"""Checks of a composed config beyond its types, and error messages a person can act on:
the key's full name, Hydra's own detail, the nearest valid key or option (never Hydra's advice
to append `+key`, which would run with the typo doing nothing). Used by geoxray/config.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from geoxray.config import Config, ConfigError, conf_dir

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
