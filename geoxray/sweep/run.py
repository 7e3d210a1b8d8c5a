"""`geoxray sweep`: run every point of a sweep, grouped by model, then write a leaderboard.

    points --group by model--> model groups --scheduler (GPU budget)--> worker threads
    a group: check the model, evaluate each of its points in turn (its Serve app is started by
             the first and reused by the rest), stop the app
    then: SWEEP_DIR/leaderboard/ from the predictions of the points that are done

Each point is an ordinary `evaluate` run in `SWEEP_DIR/<model>-<data>-<decode>/`, so it resumes
by prediction key; `sweep.json` records which points are done so a rerun skips them whole. A
model that fails is recorded with its error and the other models go on.

Groups run concurrently while their GPU needs (replicas x GPUs per replica) fit the cluster's
free GPUs; models that need no GPU run `max_cpu_models` at a time (they share the CPUs).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from geoxray.config import Config, ConfigError, load_config
from geoxray.infer.registry import engine_kind, gpus_per_replica, stop_engine
from geoxray.sweep.spec import SweepPoint, SweepSpec, Variant, load_sweep
from geoxray.sweep.state import SweepState, now

log = logging.getLogger(__name__)


@dataclass
class PlannedPoint:
    point: SweepPoint
    cfg: Config
    fingerprint: str

    @property
    def name(self) -> str:
        return self.point.name


@dataclass
class ModelGroup:
    model: Variant
    points: list[PlannedPoint] = field(default_factory=list)

    @property
    def gpus(self) -> float:
        return gpu_need(self.points[0].cfg)


def gpu_need(cfg: Config) -> float:
    """GPUs a model's Serve app holds: replicas x GPUs per replica."""
    return cfg.model.num_replicas * gpus_per_replica(cfg.model)


def point_fingerprint(cfg: Config) -> str:
    """What decides a point's answers; a change means the point is not done any more."""
    from geoxray.bench.index import short_hash
    from geoxray.run.selection import decode_fingerprint, model_fingerprint

    return short_hash(model_fingerprint(cfg.model), decode_fingerprint(cfg.decode),
                      asdict(cfg.data), cfg.run.tasks, cfg.run.max_items_per_task,
                      cfg.data.splits, n=16)


def replica_group(cfg: Config) -> str:
    """Points with the same key can share one running model: the same base and replica
    settings, whichever adapter they name."""
    from geoxray.infer.adapter import base_name
    from geoxray.infer.serve import app_name_for

    base = replace(cfg.model, adapter=None, lora_max_rank=None, name=base_name(cfg.model))
    return app_name_for(base)


def share_base_models(group: "ModelGroup") -> None:
    """A base model and its adapters in one group: give every point the LoRA room of the
    largest adapter, so they all name one Serve app (the base loaded once, each adapter
    chosen per request) instead of one engine start per adapter."""
    from geoxray.infer.adapter import engine_lora_rank

    ranks = [engine_lora_rank(p.cfg.model) for p in group.points if p.cfg.model.adapter]
    if ranks:
        for p in group.points:
            p.cfg.model.lora_max_rank = max(ranks)


def plan_points(spec: SweepSpec, sweep_dir: Path) -> list[ModelGroup]:
    """Compose and check every point's config before anything runs (a config mistake fails
    here, naming the key), grouped by the model replica they need, in sweep order (a base
    and its adapters are one group)."""
    groups: dict[str, ModelGroup] = {}
    for point in spec.points():
        cfg = load_config(point.overrides(spec.overrides))
        cfg.output_dir = str(sweep_dir / point.name)
        planned = PlannedPoint(point, cfg, point_fingerprint(cfg))
        groups.setdefault(replica_group(cfg), ModelGroup(point.model)).points.append(planned)
    for group in groups.values():
        share_base_models(group)
    return list(groups.values())


# --- running ---------------------------------------------------------------------------------
Evaluate = Callable[[Config], Path]


def _default_evaluate(cfg: Config) -> Path:
    from geoxray.run.evaluate import evaluate
    return evaluate(cfg)


def _manifest_counts(out_dir: Path) -> dict:
    import json
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    counts = manifest.get("counts", {})
    return {"predictions": counts.get("predictions"), "invalid": counts.get("invalid"),
            "written": counts.get("written_this_run")}


def run_group(group: ModelGroup, state: SweepState, evaluate: Evaluate,
              keep_app: bool = False) -> dict[str, str]:
    """Every pending point of one model, in order. Returns point -> status."""
    results: dict[str, str] = {}
    todo = [p for p in group.points if not state.is_done(p.name, p.fingerprint)]
    for p in group.points:
        if p not in todo:
            results[p.name] = "skipped"
    if not todo:
        return results
    try:  # fail fast, before a GPU is held, on what would only fail in a replica later
        engine_kind(todo[0].cfg.model.engine).check(todo[0].cfg.model)
    except Exception as exc:  # a broken model fails its points, never the sweep
        for p in todo:
            _fail(state, p, exc, attempted=True)
            results[p.name] = "failed"
        return results
    try:
        broken: dict[str, str] = {}  # point -> why it is not attempted
        for i, p in enumerate(todo):
            if p.name in broken:
                _fail(state, p, RuntimeError(broken[p.name]), attempted=False)
                results[p.name] = "failed"
                continue
            state.update(p.name, status="running", started=now(), error=None,
                         attempts=state.point(p.name).get("attempts", 0) + 1)
            started = time.time()
            try:
                out_dir = Path(evaluate(p.cfg))
            except Exception as exc:
                _fail(state, p, exc, attempted=True, wall_s=time.time() - started)
                results[p.name] = "failed"
                if not _has_predictions(Path(p.cfg.output_dir)):
                    # Nothing came back at all: the model (not the point) is broken. Its
                    # other points would fail the same way, each after a start-up (a broken
                    # adapter fails its own points; a broken base fails its adapters' too).
                    adapter = p.cfg.model.adapter
                    for rest in todo[i + 1:]:
                        if adapter is None or rest.cfg.model.adapter == adapter:
                            broken[rest.name] = (f"not attempted: model {p.cfg.model.name} "
                                                 f"failed on {p.name}: {_one_line(exc)}")
                continue
            state.update(p.name, status="done", finished=now(),
                         wall_s=round(time.time() - started, 3), error=None,
                         **_manifest_counts(out_dir))
            results[p.name] = "done"
    finally:
        if not keep_app:
            try:
                stop_engine(todo[0].cfg.model)  # its Serve app: frees its GPUs
            except Exception as exc:  # an app that will not stop is logged, not fatal
                log.warning("stopping %s: %s", group.model.name, _one_line(exc))
    return results


def _has_predictions(out_dir: Path) -> bool:
    from geoxray.run import store
    return bool(store.parts(out_dir))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _fail(state: SweepState, p: PlannedPoint, exc: BaseException, attempted: bool,
          wall_s: float | None = None) -> None:
    out_dir = Path(p.cfg.output_dir)
    if attempted:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text("".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)))
    state.update(p.name, status="failed", finished=now(), error=_one_line(exc),
                 **({"wall_s": round(wall_s, 3)} if wall_s is not None else {}))


def schedule(groups: list[ModelGroup], total_gpus: float, max_cpu_models: int,
             run: Callable[[ModelGroup], dict[str, str]]) -> dict[str, str]:
    """Run groups on threads while their GPU needs fit the free GPUs (first fit, in order).
    A group needing more GPUs than the cluster shows runs alone (an autoscaler may add
    them). Returns point -> status over all groups."""
    pending = list(groups)
    running: dict[Future, ModelGroup] = {}
    free = float(total_gpus)
    cpu_slots = max(1, max_cpu_models)
    results: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(groups)),
                            thread_name_prefix="sweep-model") as pool:
        while pending or running:
            for group in list(pending):
                need = group.gpus
                fits = (need == 0 and cpu_slots > 0) or (0 < need <= free) or (
                    need > total_gpus and not running)
                if not fits:
                    continue
                pending.remove(group)
                if need == 0:
                    cpu_slots -= 1
                else:
                    free -= need
                running[pool.submit(run, group)] = group
            if not running:  # nothing fits and nothing runs: cannot happen, but never spin
                raise RuntimeError(f"sweep scheduler stuck with {len(pending)} models pending")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                group = running.pop(future)
                if group.gpus == 0:
                    cpu_slots += 1
                else:
                    free += group.gpus
                try:
                    results.update(future.result())
                except Exception as exc:  # run_group records its own failures; belt and braces
                    log.error("model %s: %s", group.model.name, _one_line(exc))
                    for p in group.points:
                        results.setdefault(p.name, "failed")
    return results


@dataclass
class SweepResult:
    sweep_dir: Path
    statuses: dict[str, str]  # point -> done | skipped | failed (this run)
    leaderboard: Path | None


def run_sweep(spec: SweepSpec, *, gpus: float | None = None, evaluate: Evaluate | None = None,
              leaderboard: bool = True) -> SweepResult:
    """Run (or resume) a sweep; returns where everything went and what happened."""
    from geoxray.run.benchmark import prepare_benchmark
    from geoxray.sweep.leaderboard import write_leaderboard
    from geoxray import console
    from geoxray.ops.raycluster import init_ray

    sweep_dir = spec.out_dir()
    groups = plan_points(spec, sweep_dir)
    state = SweepState(sweep_dir, spec.name)
    for g in groups:
        for p in g.points:
            if not state.is_done(p.name, p.fingerprint):
                state.update(p.name, status="pending", model=p.point.model.name,
                             data=p.point.data.name, decode=p.point.decode.name,
                             series=p.point.series, out_dir=p.name, fingerprint=p.fingerprint)
    # Build each benchmark once, here: concurrent groups must not race to generate it, and a
    # data mistake (no images, bad index) stops the sweep before any model loads.
    seen: set[str] = set()
    for g in groups:
        for p in g.points:
            key = repr(asdict(p.cfg.data))
            if key not in seen:
                seen.add(key)
                prepare_benchmark(p.cfg)
    first = groups[0].points[0].cfg
    console.redirect_chatter(sweep_dir, pin=True)  # Ray's lines -> SWEEP_DIR/logs/ (CLI only)
    init_ray(first.ray)
    if gpus is None:
        import ray
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
    run = evaluate or _default_evaluate
    statuses = schedule(groups, gpus, spec.max_cpu_models,
                        lambda g: run_group(g, state, run, keep_app=spec.keep_apps))
    board = write_leaderboard(sweep_dir, spec, state.points(),
                              bootstrap=first.run.bootstrap) if leaderboard else None
    return SweepResult(sweep_dir, statuses, board)


# --- command line ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """geoxray sweep [sweep=NAME] [model=a,b decode=paper,choice data=...] [key=value ...]"""
    parser = argparse.ArgumentParser(
        prog="geoxray sweep", description="Run models x decode modes x data variants, grouped "
        "by model, then write a leaderboard. `sweep=NAME` picks conf/sweep/NAME.yaml.")
    parser.add_argument("overrides", nargs="*", help="sweep=NAME, axis sweeps (model=a,b), "
                        "sweep.output_dir=DIR, other Hydra overrides")
    parser.add_argument("--gpus", type=float, default=None,
                        help="GPUs the scheduler may use (default: what the cluster shows)")
    parser.add_argument("--dry-run", action="store_true", help="list the points and stop")
    parser.add_argument("--no-leaderboard", action="store_true")
    args = parser.parse_args(argv)

    name, rest = None, []
    for o in args.overrides:
        if o.startswith("sweep=") or o.startswith("+sweep="):
            name = o.split("=", 1)[1]
        else:
            rest.append(o)
    try:
        spec = load_sweep(name, rest)
        print(f"geoxray sweep {spec.name} -> {spec.out_dir()}/"
              + (" [dry run: nothing written]" if args.dry_run else ""), flush=True)
        if args.dry_run:
            groups = plan_points(spec, spec.out_dir())
            state = SweepState(spec.out_dir(), spec.name)
            for g in groups:
                print(f"{g.model.name} (GPUs {g.gpus:g}):")
                for p in g.points:
                    done = "done" if state.is_done(p.name, p.fingerprint) else "to run"
                    print(f"  {p.name}  [{done}]")
            return 0
        result = run_sweep(spec, gpus=args.gpus, leaderboard=not args.no_leaderboard)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    counts = {s: sum(1 for v in result.statuses.values() if v == s)
              for s in ("done", "skipped", "failed")}
    print(f"sweep {spec.name}: {counts['done']} done, {counts['skipped']} already done, "
          f"{counts['failed']} failed -> {result.sweep_dir}/")
    for point, status in result.statuses.items():
        if status == "failed":
            error = SweepState(result.sweep_dir, spec.name).point(point).get("error")
            print(f"  FAILED {point}: {error}")
    if result.leaderboard:
        print(f"leaderboard: {result.leaderboard}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
