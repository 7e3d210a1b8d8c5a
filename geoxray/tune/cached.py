"""`model.adapter=tuned:<preset>`: an adapter tuned here on first use and cached, like the
tiny model, so a first run can score a model that learned something next to its base:

    geoxray sweep sweep=demo          # adapters: [none, tuned:tiny]
    geoxray eval model.adapter=tuned:tiny

`tuned:<preset>` means `geoxray tune model=<this model> tune=<preset>` on tune's default data
(the tiny world's train split). The folder, `GEOXRAY_CACHE/adapters/<key>/tuned-<preset>/`,
is keyed by everything that decides the weights (base model, data, every tune setting), so a
changed preset trains anew and an unchanged one is found. Results are named
`<model>+tuned-<preset>`; the adapter's content hash keys its predictions as for any adapter.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
from pathlib import Path

from geoxray.infer.adapter import TUNED_PREFIX


def is_tuned(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(TUNED_PREFIX)


def display_name(value: str) -> str:
    """The folder name an adapter value gets (results are named <model>+<this>)."""
    if is_tuned(value):
        return f"tuned-{value[len(TUNED_PREFIX):]}"
    return Path(value).expanduser().resolve().name


def _model_overrides(overrides: list[str]) -> list[str]:
    """The overrides that choose the base model and where caches live (not its adapter)."""
    keep = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if key in ("model", "cache_dir") or (key.startswith("model.")
                                             and key not in ("model.adapter", "model.name")):
            keep.append(o)
    return keep


def tuned_adapter(value: str, model_overrides: list[str]) -> Path:
    """The cached adapter folder of `tuned:<preset>` for the model the overrides choose,
    tuned now (minutes on CPU for the tiny model) when not cached yet."""
    from geoxray.bench.index import short_hash
    from geoxray.config import ConfigError, cache_dir
    from geoxray.run.selection import model_fingerprint
    from geoxray.tune.config import TuneConfigError, as_dict
    from geoxray.tune.run import ADAPTER_FILES, load, tune

    preset = value[len(TUNED_PREFIX):]
    try:
        cfg, tc, preset = load([*_model_overrides(model_overrides), f"tune={preset}"])
    except TuneConfigError as exc:
        raise ConfigError(f"config key 'model.adapter': {value}: {exc}") from None
    settings = {k: v for k, v in as_dict(tc).items() if k not in ("name", "output_root")}
    key = short_hash(model_fingerprint(cfg.model), dataclasses.asdict(cfg.data), settings, n=12)
    root = cache_dir(cfg) / "adapters" / key
    out = root / display_name(value)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):  # one trainer per key; the others wait and find it
        if not all((out / f).is_file() for f in (*ADAPTER_FILES, "tune_manifest.json")):
            from geoxray import console
            console.say(f"first use of model.adapter={value}: tuning {cfg.model.name} with "
                        f"tune={preset} on {cfg.data.name} (cached in {out})")
            tc.name, tc.output_root = out.name, str(root)
            console.redirect_chatter(out)  # Ray Train's lines -> OUT/logs/ (in a CLI session)
            with console.elapsed(f"tuning {cfg.model.name}+{out.name}"):
                tune(cfg, tc, preset)
    return out


def resolve_tuned(overrides: list[str]) -> list[str]:
    """Overrides with each `tuned:<preset>` in `model.adapter=...` (one value or a sweep's
    list) replaced by its cached folder."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+") == "model.adapter" and TUNED_PREFIX in value:
            values = [str(tuned_adapter(v, overrides)) if is_tuned(v) else v
                      for v in value.split(",")]
            o = f"{key}={','.join(values)}"
        out.append(o)
    return out


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
