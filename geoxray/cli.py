"""The `geoxray` command. Each subcommand takes Hydra overrides (key=value, group=option).

    geoxray eval [overrides]        one model on one benchmark -> DIR (predictions, tables, report)
    geoxray build [overrides]       make a benchmark's items.parquet (data=synth_paper, geoxbench, ...)
    geoxray report DIR              rebuild tables and report from DIR/predictions alone
    geoxray serve [overrides]       start a model's Serve app and leave it up
    geoxray config [overrides]      print the composed config
    geoxray sweep [sweep=smoke] [model=a,b decode=paper,choice]   many models, one leaderboard
    geoxray submit [--address URL] -- eval|sweep [overrides]       run it as a Ray job
    geoxray status|logs|stop JOB    follow a submitted job
    geoxray profile model=...       throughput, tokens, stage times -> profile JSON
    geoxray plan sweep=paper --gpus N   GPU-hours and wall time for a sweep
    geoxray tune [tune=tiny|paper] [tune.key=value] [overrides]   LoRA on the train split -> runs/tune/NAME
"""
from __future__ import annotations

import argparse
import json
import sys

from omegaconf import OmegaConf


def _cmd_eval(args) -> int:
    from geoxray.config import load_config
    from geoxray.run.evaluate import evaluate

    cfg = load_config(args.overrides)
    out_dir = evaluate(cfg)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    print(f"\n{manifest['model']} on {manifest['data']['name']} ({manifest['decode']}): "
          f"{counts['predictions']} predictions, {counts['invalid']} invalid, "
          f"{counts['written_this_run']} new this run")
    print((out_dir / "tables" / "accuracy.md").read_text()
          if (out_dir / "tables" / "accuracy.md").exists() else "")
    print(f"results in {out_dir}/ (report.md, report.html, tables/, plots/)")
    return 0


def _cmd_build(args) -> int:
    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark
    import pyarrow.parquet as pq

    cfg = load_config(args.overrides)
    bench = prepare_benchmark(cfg, require_images=False, rebuild=args.rebuild)
    table = pq.read_table(bench.items_path, columns=["task", "split"]).to_pandas()
    print(table.groupby(["split", "task"], sort=False).size().to_string())
    print(f"{len(table)} items -> {bench.items_path}")
    if bench.problems:
        print(f"skipped records: {bench.problems}")
    return 0


def _cmd_report(args) -> int:
    from pathlib import Path

    from geoxray.run import store
    from geoxray.score.report import write_report

    out_dir = Path(args.dir)
    if not (out_dir / store.PREDICTIONS).is_dir():
        print(f"error: {out_dir} has no predictions/ folder", file=sys.stderr)
        return 2
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    path = write_report(out_dir, manifest=manifest)  # reads predictions/ alone
    print(f"report rebuilt from {out_dir / store.PREDICTIONS} -> {path}")
    return 0


def _cmd_serve(args) -> int:
    from geoxray.config import load_config
    from geoxray.infer.serve import start_model_app
    from geoxray.ops.raycluster import init_ray

    cfg = load_config(args.overrides)
    if cfg.ray.address is None:
        cfg.ray.address = "auto"  # a Serve app outlives this command only on a running cluster
    init_ray(cfg.ray)
    name = start_model_app(cfg.model, cfg.decode)
    print(f"Serve app {name!r} is up; later `geoxray eval model={cfg.model.name}` runs reuse it")
    return 0


def _cmd_config(args) -> int:
    from geoxray.config import compose, validate

    raw = compose(args.overrides)
    validate(raw)
    print(OmegaConf.to_yaml(raw))
    return 0


# Subcommands whose module parses its own arguments: name -> (module, function).
DELEGATED = {
    "sweep": ("geoxray.sweep.run", "main"),
    "submit": ("geoxray.ops.submit", "main"),
    "status": ("geoxray.ops.submit", "status_main"),
    "logs": ("geoxray.ops.submit", "logs_main"),
    "stop": ("geoxray.ops.submit", "stop_main"),
    "profile": ("geoxray.capacity.profile", "main"),
    "plan": ("geoxray.capacity.plan", "main"),
    "tune": ("geoxray.tune.run", "main"),
}


def main(argv: list[str] | None = None) -> int:
    from geoxray.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module, function = DELEGATED[argv[0]]
        try:
            return getattr(importlib.import_module(module), function)(argv[1:])
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2

    parser = argparse.ArgumentParser(prog="geoxray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("eval", _cmd_eval), ("serve", _cmd_serve), ("config", _cmd_config)):
        p = sub.add_parser(name)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=random")
        p.set_defaults(fn=fn)
    p = sub.add_parser("build")
    p.add_argument("--rebuild", action="store_true", help="remake a cached synthetic world")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_build)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.set_defaults(fn=_cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
