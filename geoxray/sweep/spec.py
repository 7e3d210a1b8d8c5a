"""What a sweep is: models x decode modes x data variants (x any extra axes), as points.

A sweep file is `conf/sweep/<name>.yaml`:

    name: smoke
    models: [tiny_qwen2vl, random]          # conf/model options, or variants:
    #  - {name: qwen2_vl_7b_small_px, base: qwen2_vl_7b, overrides: [model.max_pixels=200704]}
    adapters: [none, runs/tune/x, tuned:tiny]  # optional: each model with each LoRA adapter
    decode: [paper, choice]                 # conf/decode options
    data: [synth_tiny]                      # conf/data options (or variants, as for models)
    overrides: [run.max_items_per_task=20]  # Hydra overrides applied to every point
    output_dir: null                        # default runs/sweeps/<name>
    max_cpu_models: 1                       # models without GPUs run this many at a time
    keep_apps: false                        # leave each model's Serve app up after its points

The command line may replace an axis with Hydra's multirun syntax (`model=random,constant`,
`decode=glob(*)`) and sweep any other key too (`run.batch_size=16,64` becomes an extra axis);
plain overrides (`run.max_items_per_task=5`) apply to every point. Without a sweep file, an
axis not given takes conf/config.yaml's default (as `geoxray eval` would).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from geoxray.config import ConfigError, conf_dir

AXES = ("model", "decode", "data")  # the config groups a sweep always spans
ADHOC = "adhoc"  # the name of a sweep without a sweep file


@dataclass(frozen=True)
class Variant:
    """One value of an axis: a conf group option (`base`), shown as `name`, plus overrides."""
    name: str
    base: str
    overrides: tuple[str, ...] = ()

    def group_overrides(self, group: str) -> list[str]:
        out = [f"{group}={self.base}", *self.overrides]
        if self.name != self.base and group in ("model", "data"):
            out.append(f"{group}.name={self.name}")  # results and tables carry the variant
        return out


@dataclass
class SweepSpec:
    name: str
    models: list[Variant]
    decode: list[Variant]
    data: list[Variant]
    overrides: list[str] = field(default_factory=list)
    extra_axes: list[tuple[str, list[str]]] = field(default_factory=list)  # key -> values
    output_dir: Optional[str] = None
    max_cpu_models: int = 1
    keep_apps: bool = False

    def points(self) -> list["SweepPoint"]:
        """Every point, grouped by model (each model's points are adjacent, in file order)."""
        extra_values = [[(key, v) for v in values] for key, values in self.extra_axes]
        points = []
        for model in self.models:
            for data, decode, extra in itertools.product(self.data, self.decode,
                                                         itertools.product(*extra_values)):
                points.append(SweepPoint(model, decode, data, tuple(extra)))
        names = [p.name for p in points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"sweep {self.name!r}: points share a name {dupes}; give the "
                              f"variants distinct `name`s")
        return points

    def out_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        if self.name == ADHOC:  # each ad-hoc sweep its own folder, named by what it runs
            from geoxray.bench.index import short_hash
            what = short_hash([[asdict(v) for v in axis] for axis in (self.models,
                               self.decode, self.data)], self.overrides, self.extra_axes, n=8)
            return Path("runs") / "sweeps" / f"{ADHOC}-{what}"
        return Path("runs") / "sweeps" / self.name


@dataclass(frozen=True)
class SweepPoint:
    model: Variant
    decode: Variant
    data: Variant
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The point's folder name: <model>-<data>-<decode>[-key=value...]."""
        parts = [self.model.name, self.data.name, self.decode.name]
        parts += [f"{k}={v}" for k, v in self.extra]
        return _safe("-".join(parts))

    @property
    def series(self) -> str:
        """The point's column label in a leaderboard (data and decode are separate there)."""
        if not self.extra:
            return self.model.name
        return f"{self.model.name} [" + ", ".join(f"{k}={v}" for k, v in self.extra) + "]"

    def overrides(self, common: list[str]) -> list[str]:
        out = (self.model.group_overrides("model") + self.data.group_overrides("data")
               + self.decode.group_overrides("decode"))
        return out + list(common) + [f"{k}={v}" for k, v in self.extra]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text)


# --- loading -----------------------------------------------------------------------------------
def group_options(group: str) -> list[str]:
    """The options of a conf group (conf/<group>/*.yaml), sorted."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def default_option(group: str) -> str:
    """The option conf/config.yaml's defaults list picks for a group."""
    loaded = OmegaConf.to_container(OmegaConf.load(conf_dir() / "config.yaml"))
    defaults = loaded.get("defaults", []) if isinstance(loaded, dict) else []
    for entry in defaults:
        if isinstance(entry, dict) and group in entry:
            return str(entry[group])
    raise ConfigError(f"config key 'sweep.{group}': no default in conf/config.yaml; list one")


def sweep_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = conf_dir() / "sweep" / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"config key 'sweep': no sweep {name_or_path!r} (options: "
                          f"{group_options('sweep')})")
    return candidate


def _variant(group: str, entry: Any, where: str) -> Variant:
    if isinstance(entry, str):
        return Variant(entry, entry)
    if isinstance(entry, dict) and "name" in entry:
        unknown = set(entry) - {"name", "base", "overrides"}
        if unknown:
            raise ConfigError(f"config key '{where}': unknown field(s) {sorted(unknown)}")
        overrides = entry.get("overrides") or []
        if not isinstance(overrides, list):
            raise ConfigError(f"config key '{where}.overrides': must be a list")
        return Variant(str(entry["name"]), str(entry.get("base") or entry["name"]),
                       tuple(str(o) for o in overrides))
    raise ConfigError(f"config key '{where}': expected an option name or "
                      f"{{name, base, overrides}}, got {entry!r}")


def _check_options(group: str, variants: list[Variant], key: str) -> None:
    options = set(group_options(group))
    for v in variants:
        if v.base not in options:
            raise ConfigError(f"config key '{key}': no conf/{group}/{v.base}.yaml "
                              f"(options: {sorted(options)})")


_FIELDS = {"name", "models", "adapters", "decode", "data", "overrides", "output_dir",
           "max_cpu_models", "keep_apps", "description"}


def load_sweep(name_or_path: str | None, cli_overrides: list[str] | None = None) -> SweepSpec:
    """A sweep file (or an empty sweep), with command-line overrides applied:
    `model=a,b` / `decode=...` / `data=...` replace an axis; `sweep.KEY=VALUE` sets a sweep
    field; other sweeps (`key=a,b`) become extra axes; the rest apply to every point."""
    raw: dict[str, Any] = {}
    if name_or_path:
        path = sweep_path(name_or_path)
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        except OmegaConfBaseException as exc:
            raise ConfigError(f"sweep file {path}: {exc}") from None
        unknown = set(raw) - _FIELDS
        if unknown:
            raise ConfigError(f"config key 'sweep.{sorted(unknown)[0]}': not a sweep field "
                              f"(fields: {sorted(_FIELDS)})")
    name = str(raw.get("name") or (Path(name_or_path).stem if name_or_path else ADHOC))
    axes = {"model": raw.get("models") or [], "decode": raw.get("decode") or [],
            "data": raw.get("data") or []}
    common = [str(o) for o in raw.get("overrides") or []]
    extra: list[tuple[str, list[str]]] = []
    settings = {k: raw.get(k) for k in ("output_dir", "max_cpu_models", "keep_apps")}

    for override in parse_overrides(cli_overrides or []):
        key, values, text = override
        if key.startswith("sweep."):
            field_name = key.split(".", 1)[1]
            if field_name == "name":
                name = values[0]
            elif field_name in settings:
                settings[field_name] = values[0]
            else:
                raise ConfigError(f"config key '{key}': not a sweep setting "
                                  f"(name, output_dir, max_cpu_models, keep_apps)")
        elif key == "output_dir" and text is not None:  # the sweep's folder, as for eval
            settings["output_dir"] = values[0]
        elif key in AXES:
            axes[key] = values
        elif values is not None and len(values) > 1 or text is None:
            extra.append((key, values))
        else:
            common.append(text)

    adapters = [[str(a) for a in raw["adapters"]]] if raw.get("adapters") else []
    adapters += [values for key, values in extra if key == "model.adapter"]
    extra = [(key, values) for key, values in extra if key != "model.adapter"]

    variants = {}
    for group, entries in axes.items():
        field_name = "models" if group == "model" else group
        if not entries and field_name in raw:
            raise ConfigError(f"config key 'sweep.{field_name}': empty; list at least one "
                              f"{group}")
        entries = entries or [default_option(group)]  # as `geoxray eval` would run
        variants[group] = [_variant(group, e, f"sweep.{group}[{i}]")
                           for i, e in enumerate(entries)]
        _check_options(group, variants[group], f"sweep.{group}")
    if adapters:  # `model.adapter=none,A,B`: each model with each adapter, named <model>+<A>
        variants["model"] = with_adapters(variants["model"], adapters[-1], common)
    for v in variants["decode"]:
        if v.name != v.base:
            raise ConfigError("config key 'sweep.decode': decode variants cannot be renamed "
                              "(tables label a series by decode mode); sweep a key instead")
    return SweepSpec(
        name=name, models=variants["model"], decode=variants["decode"], data=variants["data"],
        overrides=common, extra_axes=extra,
        output_dir=str(settings["output_dir"]) if settings["output_dir"] else None,
        max_cpu_models=int(settings["max_cpu_models"] or 1),
        keep_apps=str(settings["keep_apps"]).lower() in ("true", "1", "yes"))


def with_adapters(models: list[Variant], adapters: list[str],
                  common: list[str] | None = None) -> list[Variant]:
    """Each model variant once per adapter (`none`: the base itself), as `<model>+<folder>`
    like `geoxray eval model.adapter=...` names its results. The sweep runs a base and its
    adapters on one Serve app (sweep/run.py groups them by the base's replica).
    `tuned:<preset>` is tuned for each model on first use and cached (tune/cached.py)."""
    from geoxray.tune.cached import display_name, is_tuned, tuned_adapter

    out = []
    for model in models:
        for adapter in adapters:
            adapter = str(adapter)
            if adapter.lower() in ("none", "null", ""):
                out.append(model)
                continue
            name = display_name(adapter)
            if is_tuned(adapter):
                adapter = str(tuned_adapter(adapter, [*model.group_overrides("model"),
                                                      *(common or [])]))
            out.append(Variant(f"{model.name}+{name}", model.base,
                               (*model.overrides, f"model.adapter={adapter}")))
    return out


def parse_overrides(overrides: list[str]) -> list[tuple[str, list[str] | None, str | None]]:
    """Hydra overrides -> (key, values, text). A sweep (`a,b`, `range(..)`, `glob(..)`) gives
    its values and text None; a plain override gives [value] and its own text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            parsed = parser.parse_override(text)
        except HydraException as exc:
            raise ConfigError(f"override {text!r}: {exc}") from None
        key = parsed.get_key_element()
        bare = parsed.key_or_group
        if parsed.is_sweep_override():
            if isinstance(parsed.value(), Glob):
                if bare not in AXES:
                    raise ConfigError(f"override {text!r}: glob() works on model, decode, data")
                values = parsed.value().filter(group_options(bare))
            else:
                values = list(parsed.sweep_string_iterator())
            if not values:
                raise ConfigError(f"override {text!r}: the sweep has no values")
            out.append((bare if key == bare else key, values, None))
        else:
            out.append((bare, [parsed.get_value_element_as_str()], text))
    return out
