"""The `geoxray` command: `geoxray COMMAND --help` for each command's options.

Commands that run an experiment take Hydra overrides (key=value, group=option):
    geoxray eval model=random decode=choice run.max_items_per_task=20
    geoxray list models           what model=, data=, sweep=, protocol= accept; the 7 tasks
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Callable

from omegaconf import OmegaConf

OVERRIDES_HELP = "Hydra overrides, e.g. model=random decode=choice run.max_items_per_task=20"


def _parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"geoxray {name}", description=description)


def _cmd_eval(argv: list[str]) -> int:
    parser = _parser("eval", "Evaluate one model on one benchmark in one decode mode -> DIR "
                     "(predictions/, tables/, report.md, report.html, plots/, logs/). A rerun "
                     "into the same DIR resumes.")
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the folder, print the destination, stop")
    args = parser.parse_intermixed_args(argv)
    from geoxray.config import load_config
    from geoxray.run.evaluate import evaluate
    from geoxray.run.manifest import summary_lines
    from geoxray.tune.cached import resolve_tuned

    cfg = load_config(resolve_tuned(args.overrides))  # model.adapter=tuned:X: tuned once, cached
    out_dir = evaluate(cfg, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    print("\n" + "\n".join(summary_lines(manifest)))
    print(_run_table(out_dir))
    print(f"results in {out_dir}/ (report.md, report.html, tables/, plots/)")
    return 0


def _run_table(out_dir) -> str:
    """The compact table a run ends with (one row per task), from the tables it wrote."""
    import pandas as pd

    from geoxray.score.report import console_table
    from geoxray.score.tables import Tables

    folder = out_dir / "tables"
    if not (folder / "accuracy.csv").exists():
        return ""
    empty = pd.DataFrame()
    bias = pd.read_csv(folder / "bias.csv") if (folder / "bias.csv").exists() else empty
    return "\n" + console_table(Tables(pd.read_csv(folder / "accuracy.csv"), bias, empty,
                                        empty)) + "\n"


def _cmd_build(argv: list[str]) -> int:
    parser = _parser("build", "Make a benchmark's items.parquet (data=synth_paper, geoxbench, "
                     "sources, ...) without running a model.")
    parser.add_argument("--rebuild", action="store_true", help="remake a cached synthetic world")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=synth_paper")
    args = parser.parse_args(argv)
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


def _cmd_report(argv: list[str]) -> int:
    parser = _parser("report", "Rebuild tables and report of a run folder from its "
                     "predictions/ alone (no model, no Ray).")
    parser.add_argument("dir", help="a run folder (the DIR of `geoxray eval`)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from geoxray.run import store
    from geoxray.run.evaluate import rebuild_report

    out_dir = Path(args.dir)
    if not (out_dir / store.PREDICTIONS).is_dir():
        print(f"error: {out_dir} has no predictions/ folder", file=sys.stderr)
        return 2
    path = rebuild_report(out_dir)  # the run's selection, from predictions/ and failures/
    print(f"report rebuilt from {out_dir / store.PREDICTIONS} -> {path}")
    return 0


def _cmd_serve(argv: list[str]) -> int:
    parser = _parser("serve", "Start a model's Serve app on a running Ray cluster and leave "
                     "it up; later evals of the model reuse it.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=qwen2_vl_7b")
    args = parser.parse_args(argv)
    from geoxray.config import ConfigError, load_config
    from geoxray.infer.registry import engine_kind
    from geoxray.infer.serve import start_model_app
    from geoxray.ops.raycluster import init_ray

    cfg = load_config(args.overrides)
    if not engine_kind(cfg.model.engine).serve_app:
        raise ConfigError(f"config key 'model.engine': {cfg.model.engine!r} runs no Serve app "
                          f"(serve takes a model on the vllm engine)")
    if cfg.ray.address is None:
        cfg.ray.address = "auto"  # a Serve app outlives this command only on a running cluster
    init_ray(cfg.ray)
    name = start_model_app(cfg.model, cfg.decode)
    print(f"Serve app {name!r} is up; later `geoxray eval model={cfg.model.name}` runs reuse it")
    return 0


def _cmd_config(argv: list[str]) -> int:
    parser = _parser("config", "Print the composed config, checked as `eval` would check it.")
    parser.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    args = parser.parse_args(argv)
    from geoxray.config import compose, validate

    raw = compose(args.overrides)
    validate(raw)
    print(OmegaConf.to_yaml(raw))
    return 0


def _cmd_list(argv: list[str]) -> int:
    from geoxray import catalog

    parser = _parser("list", "List what geoxray knows: models, data and sweeps (conf/ "
                     "groups: model=, data=, sweep=), protocols (conf/protocol/), the 7 tasks.")
    parser.add_argument("kind", choices=catalog.KINDS)
    parser.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    args = parser.parse_args(argv)
    table = catalog.rows(args.kind)
    if args.json:
        print(json.dumps(table, indent=1))
    elif table:
        print(catalog.format_rows(table))
    else:
        print(f"no {args.kind} (conf/{catalog.GROUPS.get(args.kind, args.kind)}/ is empty or "
              f"absent)")
    return 0


def _delegate(module: str, function: str = "main") -> Callable[[list[str]], int]:
    """A command whose module parses its own arguments (`main(argv)`), imported on use."""
    def run(argv: list[str]) -> int:
        return getattr(importlib.import_module(module), function)(argv)
    return run


@dataclass(frozen=True)
class Command:
    summary: str
    run: Callable[[list[str]], int]  # argv after the command name -> exit status


# Every command: adding one is one line (its function takes argv and returns the exit status).
COMMANDS: dict[str, Command] = {
    "eval": Command("one model on one benchmark -> DIR (predictions, tables, report)",
                    _cmd_eval),
    "build": Command("make a benchmark's items.parquet", _cmd_build),
    "report": Command("rebuild tables and report from DIR/predictions alone", _cmd_report),
    "serve": Command("start a model's Serve app and leave it up", _cmd_serve),
    "config": Command("print the composed, checked config", _cmd_config),
    "list": Command("list models, tasks, data, sweeps or protocols", _cmd_list),
    "sweep": Command("many models x decode modes x data, one leaderboard",
                     _delegate("geoxray.sweep.run")),
    "submit": Command("run eval/sweep/profile as a Ray job on a cluster",
                      _delegate("geoxray.ops.submit")),
    "status": Command("a submitted job's status (or every job's)",
                      _delegate("geoxray.ops.submit", "status_main")),
    "logs": Command("a submitted job's logs", _delegate("geoxray.ops.submit", "logs_main")),
    "stop": Command("stop a submitted job", _delegate("geoxray.ops.submit", "stop_main")),
    "profile": Command("a model's throughput, tokens and stage times -> profile JSON",
                       _delegate("geoxray.capacity.profile")),
    "plan": Command("GPU-hours and wall time of a sweep, from profiles",
                    _delegate("geoxray.capacity.plan")),
    "compare": Command("paired tests between runs or sweeps on the same items",
                       _delegate("geoxray.sweep.compare")),
    "tune": Command("LoRA instruction tuning on the train split -> runs/tune/NAME",
                    _delegate("geoxray.tune.run")),
}


def top_parser() -> argparse.ArgumentParser:
    """The top-level help: every command with its summary (each parses its own arguments)."""
    from geoxray import __version__

    parser = argparse.ArgumentParser(prog="geoxray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"geoxray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from geoxray import console
    from geoxray.config import ConfigError
    from geoxray.run.store import RunError

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        parser = top_parser()
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv[:1])  # --help and --version exit here
        parser.error(f"unknown option {argv[0]}")
    name = argv[0]
    if name not in COMMANDS:
        guess = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
        hint = f"did you mean {guess[0]}? " if guess else ""
        print(f"geoxray: unknown command {name!r}; {hint}(commands: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    try:
        with console.session():
            return COMMANDS[name].run(argv[1:])
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:  # a busy or mismatched folder, an engine that is down
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
