"""Many LoRA adapters on one loaded base model vs one engine start per adapter.

    flock /tmp/geoxray-heavy.lock python benchmarks/bench_adapters.py [--adapters 3] [--items 24]
    python benchmarks/bench_adapters.py --model qwen2_vl_7b model.random_weights=true   # a GPU

Both arms score the same K adapters (random LoRA weights: the cost of serving is what is
measured, not what an adapter learned) on the same items, decode=choice, through the real
path (Ray Data -> Serve -> vLLM), each into fresh folders:
- shared: `geoxray sweep model.adapter=A,B,C`: one Serve app, the base loaded once, each
  adapter chosen per request;
- separate: `geoxray eval model.adapter=X` for each adapter with the app stopped in between
  (what a harness that loads one model per run does: one engine start per adapter).
Reports wall seconds, items/s and the engine start-up seconds of each arm, and the ratio
shared/separate in the same process. Writes benchmarks/results/adapters.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _engine_info(app: str) -> dict:
    from ray import serve
    return serve.get_app_handle(app).info.remote().result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny_qwen2vl", help="conf/model option (a Qwen2-VL)")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--items", type=int, default=24, help="items per task (pose_fixed, intra_map)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adapters.json"))
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. "
                    "model.random_weights=true (a full-size model on a GPU, no download)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from geoxray.config import load_config
    from geoxray.infer.registry import stop_engine
    from geoxray.infer.serve import app_name_for
    from geoxray.infer.vllm_engine import model_folder
    from geoxray.models.random_adapter import save_random_adapter
    from geoxray.run.evaluate import evaluate
    from geoxray.sweep.run import run_sweep
    from geoxray.sweep.spec import load_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    base = load_config([f"model={args.model}", *args.overrides])
    folder = model_folder(base.model)
    adapters = [save_random_adapter(folder, tmp / "adapters" / f"a{i}", seed=i)
                for i in range(args.adapters)]
    common = ["decode=choice", "data=synth_tiny", "run.tasks=[pose_fixed,intra_map]",
              f"run.max_items_per_task={args.items}", "decode.max_tokens=16",
              "run.progress=false", "run.bootstrap=100", *args.overrides]
    n_items = 2 * args.items * len(adapters)

    # separate: one engine start per adapter
    starts_separate = []
    t0 = time.perf_counter()
    for i, adapter in enumerate(adapters):
        cfg = load_config([f"model={args.model}", f"model.adapter={adapter}", *common,
                           f"output_dir={tmp / 'separate' / str(i)}"])
        evaluate(cfg)
        starts_separate.append(_engine_info(app_name_for(cfg.model))["engine_start_s"])
        stop_engine(cfg.model)
    separate_s = time.perf_counter() - t0

    # shared: one sweep, one app for every adapter
    starts_shared: set[float] = set()

    def evaluate_and_look(cfg):
        out = evaluate(cfg)
        starts_shared.add(_engine_info(app_name_for(cfg.model))["engine_start_s"])
        return out

    spec = load_sweep(None, [f"model={args.model}",
                             "model.adapter=" + ",".join(str(a) for a in adapters), *common,
                             f"output_dir={tmp / 'shared'}"])
    t0 = time.perf_counter()
    result = run_sweep(spec, evaluate=evaluate_and_look)
    shared_s = time.perf_counter() - t0
    assert set(result.statuses.values()) == {"done"}, result.statuses

    out = {
        "benchmark": "adapters", "machine": machine(),
        "command": "python benchmarks/bench_adapters.py " + " ".join(sys.argv[1:]),
        "model": base.model.name, "overrides": args.overrides, "adapters": len(adapters),
        "items": n_items,
        "decode": "choice", "tasks": ["pose_fixed", "intra_map"],
        "separate": {"wall_s": round(separate_s, 2), "items_per_s": round(n_items / separate_s, 3),
                     "engine_starts": len(starts_separate),
                     "engine_start_s": [round(s, 2) for s in starts_separate]},
        "shared": {"wall_s": round(shared_s, 2), "items_per_s": round(n_items / shared_s, 3),
                   "engine_starts": len(starts_shared),
                   "engine_start_s": [round(s, 2) for s in sorted(starts_shared)]},
        "speedup_shared_over_separate": round(separate_s / shared_s, 3),
        "note": "wall_s includes each arm's Ray Data pipelines and, for separate, every Serve "
                "app start (replica process, vLLM engine, model load); engine_start_s is "
                "vLLM's own start inside the replica",
    }
    print(f"{len(adapters)} adapters x {2 * args.items} items: separate {separate_s:.1f}s "
          f"({len(starts_separate)} engine starts), shared {shared_s:.1f}s "
          f"({len(starts_shared)} start): x{separate_s / shared_s:.2f}")
    save(out, Path(args.out))


if __name__ == "__main__":
    main()
