"""`geoxray plan`: GPU-hours and wall time of a sweep, from profiles.

    geoxray plan sweep=paper --gpus 8 [--device h100]     wall time on 8 GPUs
    geoxray plan sweep=paper --deadline-hours 12          GPUs needed to finish in 12 h

Per model (plan_model.py): cost per item per replica for each decode mode, per-point
overhead, engine start-up, GPUs per replica (TP). Then:

- work: the model's points, item counts from the benchmark (with the sweep's caps);
- replicas: a model gets enough replicas to finish near the ideal wall time
  (all GPU work / N GPUs), at most N // TP;
- schedule: models are placed longest first on the N GPUs, each as soon as its replicas'
  GPUs are free (first fit), exactly how `geoxray sweep` schedules them; models without
  GPUs run one after another beside them (the sweep's CPU lane);
- a model holds its GPUs from start-up to its last point: GPU-hours = GPUs x that time.

Writes plan.md, plan.csv, plan.json and plan.png (GPU-hours per model; the schedule).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geoxray.config import Config, ConfigError
from geoxray.capacity.plan_model import DEVICES, ModelCost, model_cost
from geoxray.sweep.spec import SweepSpec, load_sweep


@dataclass
class ModelPlan:
    model: str
    source: str
    note: str
    points: int
    items: int
    tp: int
    replicas: int = 0
    gpus: int = 0
    startup_s: float = 0.0
    work_s: float = 0.0  # replica-seconds of items (what more replicas divide)
    overhead_s: float = 0.0  # per-point overheads and scoring (not divided)
    wall_s: float = 0.0  # start-up + overhead + work / replicas
    gpu_hours: float = 0.0
    start_s: float | None = None
    end_s: float | None = None
    planned: bool = True
    blocked: bool = False  # needs more GPUs per replica than the plan has


@dataclass
class Plan:
    sweep: str
    device: str
    gpus: int
    wall_s: float
    gpu_hours: float
    reserved_gpu_hours: float  # gpus x wall: what a reservation of the whole block costs
    cpu_lane_s: float
    models: list[ModelPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- items --------------------------------------------------------------------------------
def item_counts(cfg: Config) -> tuple[dict[str, int], str]:
    """Selected items per task for a point's data and run settings, and where the counts
    came from. Uses a built benchmark's items.parquet; the authors' index otherwise."""
    import pyarrow.parquet as pq

    from geoxray.bench.index import build_items
    from geoxray.run.benchmark import items_path

    from geoxray.run.selection import SELECTION_COLUMNS, choose

    path, source = items_path(cfg), "items.parquet"
    if path is not None and path.is_file():
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in SELECTION_COLUMNS if c in names])
    else:  # an unbuilt benchmark: the paper's structure (the synthetic presets mirror it)
        table, source = build_items(), "authors' index (benchmark not built yet)"
    chosen = choose(table, cfg.run.tasks, cfg.data.splits, cfg.run.max_items_per_task,
                    cfg.run.sample_seed)
    return chosen.per_task, source


# --- the plan -------------------------------------------------------------------------------
def model_plans(spec: SweepSpec, device: str, profiles: Path,
                gpu_memory_gb: float | None = None) -> tuple[list[ModelPlan], list[ModelCost],
                                                             list[str]]:
    """One ModelPlan per model of the sweep (work not yet divided among replicas)."""
    from geoxray.sweep.run import plan_points

    notes: list[str] = []
    counted: dict[str, tuple[int, str]] = {}
    plans, costs = [], []
    for group in plan_points(spec, spec.out_dir()):
        cfg0 = group.points[0].cfg
        cost = model_cost(cfg0.model, device, profiles, gpu_memory_gb)
        plan = ModelPlan(cfg0.model.name, cost.source, cost.note.strip("; "),
                         len(group.points), 0, cost.tp, startup_s=cost.startup_s)
        plan.planned = bool(cost.per_item_s)
        for p in group.points:
            key = json.dumps([asdict(p.cfg.data), p.cfg.run.tasks, p.cfg.run.max_items_per_task],
                             sort_keys=True, default=str)
            if key not in counted:
                counts, source = item_counts(p.cfg)
                counted[key] = (sum(counts.values()), source)
                if source != "items.parquet":
                    notes.append(f"{p.cfg.data.name}: item counts from the {source}")
            n = counted[key][0]
            plan.items += n
            if plan.planned:
                work, overhead = cost.point_parts(p.cfg.decode.mode, n)
                plan.work_s += work
                plan.overhead_s += overhead
        plans.append(plan)
        costs.append(cost)
    return plans, costs, sorted(set(notes))


def choose_replicas(plans: list[ModelPlan], gpus: int) -> None:
    """Replicas per GPU model: first enough to finish its items within the ideal wall time
    (all GPU work / gpus), at most gpus // TP; then, while it shortens the schedule, one
    replica less for a model (fewer replicas can let models run side by side)."""
    gpu_plans = [p for p in plans if p.planned and p.tp > 0]
    total = sum(p.work_s * p.tp for p in gpu_plans)
    ideal = total / max(1, gpus) if total else 0.0
    for p in gpu_plans:
        most = max(1, gpus // p.tp)
        _set_replicas(p, min(most, max(1, math.ceil(p.work_s / ideal))) if ideal else 1)
    for p in plans:
        if p.planned and p.tp == 0:
            _set_replicas(p, 1)
    best = _makespan(plans, gpus)
    while True:
        trials = []
        for p in gpu_plans:
            if p.replicas > 1:
                _set_replicas(p, p.replicas - 1)
                trials.append((_makespan(plans, gpus), p))
                _set_replicas(p, p.replicas + 1)
        if not trials:
            return
        span, p = min(trials, key=lambda t: t[0])
        if span >= best - 1e-9:
            return
        best = span
        _set_replicas(p, p.replicas - 1)


def _set_replicas(p: ModelPlan, replicas: int) -> None:
    p.replicas, p.gpus = replicas, replicas * p.tp
    p.wall_s = p.startup_s + p.overhead_s + p.work_s / replicas
    p.gpu_hours = p.gpus * p.wall_s / 3600


def _makespan(plans: list[ModelPlan], gpus: int) -> float:
    import copy
    trial = copy.deepcopy(plans)
    return max(schedule(trial, gpus))


def schedule(plans: list[ModelPlan], gpus: int) -> tuple[float, float]:
    """Place GPU models longest first, first fit, as the sweep driver does; CPU models run
    in one lane. Returns (GPU makespan, CPU lane) in seconds; sets start_s/end_s."""
    jobs = sorted((p for p in plans if p.planned and p.gpus > 0),
                  key=lambda p: p.wall_s, reverse=True)
    free, now, running = gpus, 0.0, []  # running: (end, plan)
    pending = list(jobs)
    while pending:
        started = False
        for p in list(pending):
            if p.gpus <= free:
                p.start_s, p.end_s = now, now + p.wall_s
                free -= p.gpus
                running.append((p.end_s, p))
                pending.remove(p)
                started = True
        if pending and not started:
            if not running:  # cannot fit at all: more GPUs per replica than the cluster has
                for p in pending:
                    p.planned, p.blocked = False, True
                    p.note = (p.note + f"; needs {p.gpus} GPUs").strip("; ")
                break
            running.sort(key=lambda r: r[0])
            end, done = running.pop(0)
            now, free = end, free + done.gpus
    makespan = max((p.end_s for p in jobs if p.end_s is not None), default=0.0)
    lane = 0.0
    for p in plans:
        if p.planned and p.gpus == 0:
            p.start_s, p.end_s = lane, lane + p.wall_s
            lane = p.end_s
    return makespan, lane


def make_plan(spec: SweepSpec, gpus: int, device: str, profiles: Path,
              gpu_memory_gb: float | None = None, _models=None) -> Plan:
    import copy

    plans, _, notes = _models or model_plans(spec, device, profiles, gpu_memory_gb)
    plans, notes = copy.deepcopy(plans), list(notes)
    for p in plans:
        if p.tp > gpus:
            p.planned, p.blocked = False, True
            p.note = (p.note + f"; needs TP {p.tp} > {gpus} GPUs").strip("; ")
    choose_replicas(plans, gpus)
    makespan, lane = schedule(plans, gpus)
    wall = max(makespan, lane)
    planned = [p for p in plans if p.planned]
    if any(not p.planned for p in plans):
        notes.append("models marked not planned are left out of the totals")
    return Plan(spec.name, device, gpus, wall, sum(p.gpu_hours for p in planned),
                gpus * makespan / 3600, lane, plans, notes)


def gpus_for_deadline(spec: SweepSpec, hours: float, device: str, profiles: Path,
                      gpu_memory_gb: float | None = None, limit: int = 4096) -> Plan:
    """The smallest GPU count whose plan finishes within `hours` (or the best at `limit`)."""
    models = model_plans(spec, device, profiles, gpu_memory_gb)  # costs and items, once
    best = None
    n = 1
    while n <= limit:
        plan = make_plan(spec, n, device, profiles, gpu_memory_gb, _models=models)
        if best is None or plan.wall_s < best.wall_s:
            best = plan
        if plan.wall_s <= hours * 3600 and not any(p.blocked for p in plan.models):
            return plan
        n += 1 if n < 64 else 8
    return best


# --- checks ---------------------------------------------------------------------------------
def known_devices(profiles: Path) -> list[str]:
    """Devices a plan can cost: those with peak figures (plan_model.DEVICES) and those a
    profile in the folder was measured on."""
    found = set(DEVICES)
    for path in Path(profiles).glob("*.json"):
        try:
            found.add(str(json.loads(path.read_text())["device"]["slug"]).lower())
        except (ValueError, OSError, KeyError, TypeError):
            continue
    return sorted(found)


def check_device(device: str, profiles: Path) -> str:
    """The device's name as plans and profiles spell it (lower case), or a ConfigError that
    lists the known ones: an unknown device would plan every model at 0 GPU-hours."""
    name = device.strip().lower()
    known = known_devices(profiles)
    if name not in known:
        raise ConfigError(f"--device {device!r}: no peak figures and no profile in "
                          f"{profiles}/ for it; known devices: {', '.join(known)}")
    return name


def unplanned(plan: Plan) -> list[ModelPlan]:
    """Models the plan could not cost or place (API models need no GPU and are not counted)."""
    return [p for p in plan.models if not p.planned and p.source != "api"]


# --- output --------------------------------------------------------------------------------
COLUMNS = ["model", "source", "points", "items", "tp", "replicas", "gpus", "startup_s",
           "wall_h", "gpu_hours", "start_h", "end_h", "note"]


def plan_table(plan: Plan):
    import pandas as pd

    rows = []
    for p in plan.models:
        rows.append({"model": p.model, "source": p.source, "points": p.points,
                     "items": p.items, "tp": p.tp, "replicas": p.replicas if p.planned else None,
                     "gpus": p.gpus if p.planned else None, "startup_s": round(p.startup_s, 1),
                     "wall_h": round(p.wall_s / 3600, 3) if p.planned else None,
                     "gpu_hours": round(p.gpu_hours, 3) if p.planned else None,
                     "start_h": round(p.start_s / 3600, 3) if p.start_s is not None else None,
                     "end_h": round(p.end_s / 3600, 3) if p.end_s is not None else None,
                     "note": p.note if p.planned else f"NOT PLANNED: {p.note}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_plan(plan: Plan, out_dir: Path) -> dict[str, Path]:
    from geoxray.score.tables import to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    table = plan_table(plan)
    paths = {"csv": out_dir / "plan.csv", "md": out_dir / "plan.md",
             "json": out_dir / "plan.json", "png": out_dir / "plan.png"}
    table.to_csv(paths["csv"], index=False)
    gpu_wall = max((p.end_s or 0.0 for p in plan.models if p.gpus), default=0.0)
    head = (f"# Plan: sweep {plan.sweep} on {plan.gpus} x {plan.device}\n\n"
            f"- wall time: {plan.wall_s / 3600:.2f} h (GPU models {gpu_wall / 3600:.2f} h, "
            f"CPU lane {plan.cpu_lane_s / 3600:.2f} h)\n"
            f"- GPU-hours used: {plan.gpu_hours:.3f}; reserved ({plan.gpus} GPUs x GPU wall): "
            f"{plan.reserved_gpu_hours:.3f}\n")
    head += "".join(f"- {n}\n" for n in plan.notes)
    paths["md"].write_text(head + "\n" + to_markdown(table, digits=3))
    paths["json"].write_text(json.dumps(asdict(plan), indent=2, default=float))
    plot_plan(plan, paths["png"])
    return paths


def plot_plan(plan: Plan, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    models = [p for p in plan.models if p.planned]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * max(4, len(models)) + 1.5))
    names = [p.model for p in models]
    y = range(len(models))
    colors = ["tab:blue" if p.source == "profile" else "tab:orange" for p in models]
    left.barh(list(y), [p.gpu_hours for p in models], color=colors)
    left.set_yticks(list(y), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("GPU-hours")
    left.set_title(f"GPU-hours per model (total {plan.gpu_hours:.1f})")
    left.legend(handles=[Patch(color="tab:blue", label="from a profile"),
                         Patch(color="tab:orange", label="estimated")], fontsize=8)
    for i, p in enumerate(models):
        if p.start_s is None:
            continue
        right.barh(i, (p.end_s - p.start_s) / 3600, left=p.start_s / 3600, color=colors[i],
                   alpha=0.85 if p.gpus else 0.4)
        label = f"{p.replicas}x TP{p.tp}" if p.gpus else "CPU"
        right.text(p.end_s / 3600, i, f" {label}", va="center", fontsize=7)
    right.set_yticks(list(y), names, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("hours")
    right.set_title(f"Schedule on {plan.gpus} x {plan.device}: {plan.wall_s / 3600:.2f} h")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """geoxray plan sweep=NAME (--gpus N | --deadline-hours H) [--device h100] [overrides]"""
    parser = argparse.ArgumentParser(prog="geoxray plan", description="GPU-hours and wall "
                                     "time of a sweep from profiles (profiles/*.json).")
    parser.add_argument("overrides", nargs="*", help="sweep=NAME, axis sweeps, overrides")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--gpus", type=int, help="GPUs available")
    group.add_argument("--deadline-hours", type=float, help="find the GPUs for this deadline")
    parser.add_argument("--device", default="h100", help="profiles of which device (file "
                        "suffix: h100, h200, cpu, ...)")
    parser.add_argument("--gpu-memory-gb", type=float, help="GPU memory (default by device)")
    parser.add_argument("--profiles", default="profiles", help="folder of profile JSONs")
    parser.add_argument("--out", help="output folder (default runs/plans/<sweep>-<N>x<device>)")
    args = parser.parse_args(argv)
    name = None
    rest = []
    for o in args.overrides:
        if o.startswith("sweep="):
            name = o.split("=", 1)[1]
        else:
            rest.append(o)
    try:
        args.device = check_device(args.device, Path(args.profiles))
        if args.gpus is not None and args.gpus < 1:
            raise ConfigError(f"--gpus: must be >= 1 (got {args.gpus})")
        spec = load_sweep(name, rest)
        if args.gpus is not None:
            plan = make_plan(spec, args.gpus, args.device, Path(args.profiles),
                             args.gpu_memory_gb)
        else:
            plan = gpus_for_deadline(spec, args.deadline_hours, args.device,
                                     Path(args.profiles), args.gpu_memory_gb)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / "plans" / (
        f"{spec.name}-{plan.gpus}x{args.device}")
    paths = write_plan(plan, out)
    print(paths["md"].read_text())
    if args.deadline_hours is not None:
        verdict = "meets" if plan.wall_s <= args.deadline_hours * 3600 else "CANNOT meet"
        print(f"{plan.gpus} GPUs {verdict} the {args.deadline_hours:g} h deadline")
    print(f"-> {out}/ (plan.md, plan.csv, plan.json, plan.png)")
    missing = unplanned(plan)
    if missing:
        print(f"error: {len(missing)} model(s) cannot be planned on {args.device}: "
              + "; ".join(f"{p.model} ({p.note})" for p in missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
