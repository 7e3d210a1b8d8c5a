"""Building items.parquet at 755,976 items: the Ray Data job vs the in-memory `build_items`.

    python benchmarks/bench_build_scale.py                      # index of the `full` preset
    python benchmarks/bench_build_scale.py --world DIR          # a generated world: hash images

Without --world, the `full` preset's index files are planned from its seed (who pairs with
whom needs no pixels) into a temp dir, and items are built without image hashes. With
--world (the output of `geoxray.data.synth.generate(DIR, "full")`), images are hashed too.
Each build runs in its own child process (clean peaks); this process samples the child's
process tree every 0.2 s: each process's heap (anonymous memory: not the object store's
shared pages, which RSS counts again in every process that read them), the tree's PSS (every
page counted once: the real total) and every process's CPU seconds (a cost that, unlike wall
time, a busy machine does not inflate much). Both builds must write byte-identical files.
The same comparison on the authors' 42,900-item index shows what grows with the item count
and what is Ray's fixed cost. Writes benchmarks/results/build_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from results_io import machine, save  # benchmarks/, the script's folder

RESULTS = Path(__file__).parent / "results" / "build_scale.json"


# -- the child: one build -------------------------------------------------------------------
def run_build(variant: str, index: Path, images: Path | None, out: Path, num_cpus: int,
              object_store: int) -> dict:
    from geoxray.bench.index import BuildProblems, build_items, write_items
    started = time.perf_counter()
    problems = BuildProblems()
    ray_start_s = 0.0
    if variant == "local":
        table = build_items(index, images, problems)
        items = table.num_rows
        write_items(table, out)
        del table
    else:
        from geoxray.data.build_ray import build_items_ray
        from geoxray.config import RayConfig
        from geoxray.ops.raycluster import init_ray
        init_ray(RayConfig(num_cpus=num_cpus, object_store_memory=object_store))
        ray_start_s = time.perf_counter() - started
        items = build_items_ray(index, images, out, problems)
    wall = time.perf_counter() - started
    return {"items": items, "wall_s": round(wall, 2), "ray_start_s": round(ray_start_s, 2),
            "build_s": round(wall - ray_start_s, 2),
            "problems": problems.total,
            "driver_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# -- the parent: run a child, sample its tree -----------------------------------------------
def _smaps_kb(pid: int) -> dict[str, int]:
    """Pss (shared pages split between their users) and Anonymous (the process's own heap,
    not the object store's shared memory) of one process, in kB."""
    out = {"Pss": 0, "Anonymous": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class TreeSampler(threading.Thread):
    """Peak memory and CPU seconds of a process and all its descendants, sampled. RSS counts
    the object store's shared pages in every process that touched them; heap (anonymous
    memory) and PSS do not double count."""

    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.every_s, self.stop = psutil.Process(pid), every_s, threading.Event()
        self.cpu: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.peak = dict(driver_rss_mb=0.0, driver_heap_mb=0.0, tree_pss_mb=0.0,
                         max_worker_heap_mb=0.0, max_worker_rss_mb=0.0, processes=0)
        self.pss_by_kind_at_peak: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            rss, smaps = {}, {}
            for p in procs:
                try:
                    rss[p.pid] = p.memory_info().rss / 2**20
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    if p.pid not in self.kind:
                        self.kind[p.pid] = _process_kind(p, self.root.pid)
                except psutil.Error:
                    continue
                smaps[p.pid] = _smaps_kb(p.pid)
            root = self.root.pid
            others = [pid for pid in rss if pid != root]
            values = dict(
                driver_rss_mb=rss.get(root, 0.0),
                driver_heap_mb=smaps.get(root, {}).get("Anonymous", 0) / 1024,
                tree_pss_mb=sum(m["Pss"] for m in smaps.values()) / 1024,
                max_worker_heap_mb=max((smaps[p]["Anonymous"] / 1024 for p in others), default=0.0),
                max_worker_rss_mb=max((rss[p] for p in others), default=0.0),
                processes=len(rss))
            if values["tree_pss_mb"] > self.peak["tree_pss_mb"]:
                by_kind: dict[str, float] = {}
                for pid, m in smaps.items():
                    kind = self.kind.get(pid, "ray_services")
                    by_kind[kind] = round(by_kind.get(kind, 0.0) + m["Pss"] / 1024, 1)
                self.pss_by_kind_at_peak = by_kind
            for key, value in values.items():
                self.peak[key] = max(self.peak[key], round(value, 1))
            self.stop.wait(self.every_s)

    @property
    def cpu_s(self) -> float:
        return round(sum(self.cpu.values()), 1)

    @property
    def cpu_s_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            out[self.kind[pid]] = round(out.get(self.kind[pid], 0.0) + seconds, 1)
        return out


def _process_kind(p: psutil.Process, root: int) -> str:
    """driver, ray workers (tasks), or Ray's own services (GCS, raylet, agents, monitors)."""
    if p.pid == root:
        return "driver"
    cmd, name = " ".join(p.cmdline()), p.name()
    worker = "default_worker.py" in cmd or (name.startswith("ray::") and "Agent" not in name)
    return "ray_workers" if worker else "ray_services"


def measure(variant: str, args, index: Path, images: Path | None, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--index", str(index),
           "--out-items", str(out), "--num-cpus", str(args.num_cpus),
           "--object-store-mb", str(args.object_store_mb)]
    if images:
        cmd += ["--images", str(images)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{variant} build failed ({proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["items_per_s"] = round(result["items"] / result["wall_s"])
    result["peak"] = sampler.peak
    result["cpu_s_all_processes"] = sampler.cpu_s
    result["cpu_s_by_process_kind"] = sampler.cpu_s_by_kind
    result["pss_mb_by_process_kind_at_peak"] = sampler.pss_by_kind_at_peak
    peak = sampler.peak
    print(f"{variant:5s}: {result['items']:,} items in {result['wall_s']:.1f} s "
          f"({result['items_per_s']:,} items/s; Ray start {result['ray_start_s']:.1f} s; "
          f"{sampler.cpu_s:.0f} CPU-s in all processes); driver peak heap "
          f"{peak['driver_heap_mb']:.0f} MB (RSS {result['driver_maxrss_mb']:.0f} MB); "
          f"process tree peak PSS {peak['tree_pss_mb']:.0f} MB over {peak['processes']} "
          f"processes; largest other process heap {peak['max_worker_heap_mb']:.0f} MB",
          flush=True)
    return result


def plan_full_index(out: Path, seed: int = 0) -> int:
    """The `full` preset's index files, exactly as `generate` writes them, without rendering."""
    from geoxray.data.synth import make_config, plan_locations
    from geoxray.data.synth_index import index_records
    cfg = make_config("full", seed)
    n = 0
    for (split, folder, inst), recs in index_records(cfg.seed, plan_locations(cfg),
                                                     cfg.fov_deg).items():
        path = out / ("train" if split == "train" else "") / folder / f"{inst}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recs, indent=2, ensure_ascii=False) + "\n")
        n += len(recs)
    return n


def warm_page_cache(folders: list[Path]) -> None:
    """Read every file once, so the build that runs first does not pay the cold reads."""
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def compare(args, index: Path, images: Path | None, tmp: Path) -> dict:
    """Both builds of one index, each in its own process; their files must be identical."""
    tmp.mkdir(parents=True, exist_ok=True)
    index_mb = sum(p.stat().st_size for p in index.rglob("*.json")) / 2**20
    warm_page_cache([index] + ([images] if images else []))
    ray_result = measure("ray", args, index, images, tmp / "ray.parquet")
    result = {"index_mb": round(index_mb, 1), "ray": ray_result}
    if not args.skip_local:
        local = measure("local", args, index, images, tmp / "local.parquet")
        same = (tmp / "ray.parquet").read_bytes() == (tmp / "local.parquet").read_bytes()
        result["local_in_memory"] = local
        result["byte_identical"] = same
        result["speed_ratio_ray_over_local"] = round(local["wall_s"] / ray_result["wall_s"], 2)
        result["driver_heap_ratio_local_over_ray"] = round(
            local["peak"]["driver_heap_mb"] / max(ray_result["peak"]["driver_heap_mb"], 1), 2)
        print(f"ratio: Ray {result['speed_ratio_ray_over_local']:.2f}x the in-memory speed;"
              f" driver peak heap {result['driver_heap_ratio_local_over_ray']:.1f}x lower;"
              f" byte-identical items.parquet: {same}")
    result["items_parquet_mb"] = round((tmp / "ray.parquet").stat().st_size / 2**20, 1)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, help="a generated synthetic world (index + images)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--object-store-mb", type=int, default=1000)
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-small", action="store_true", help="skip the 42,900-item comparison")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", choices=("local", "ray"))
    ap.add_argument("--index", type=Path)
    ap.add_argument("--images", type=Path)
    ap.add_argument("--out-items", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_build(args.child, args.index, args.images, args.out_items,
                                   args.num_cpus, args.object_store_mb * 2**20)))
        return 0

    result: dict = {"benchmark": "build_scale", "preset": "full",
                    "ray_settings": {"num_cpus": args.num_cpus,
                                     "object_store_mb": args.object_store_mb}}
    with tempfile.TemporaryDirectory(prefix="gx-build-scale-") as tmp:
        tmp = Path(tmp)
        if args.world:
            index, images = args.world / "index", args.world / "images"
            result["source"] = "a generated full world (--world DIR; images hashed)"
        else:
            index, images = tmp / "index", None
            started = time.perf_counter()
            records = plan_full_index(index)
            result["source"] = "planned index of the full preset (no images, no hashes)"
            print(f"planned {records:,} index records in {time.perf_counter() - started:.1f} s")
        print("full preset:")
        result["full"] = compare(args, index, images, tmp / "full")
        if not args.skip_small:
            from geoxray.bench.index import packaged_index_root
            print("the authors' test index (42,900 items), for scale:")
            result["authors_test_index"] = compare(args, packaged_index_root(), None,
                                                   tmp / "small")
    result["machine"] = machine()
    # the command, with --world's folder (a machine path) left out
    result["command"] = "python benchmarks/bench_build_scale.py" + (
        " --world DIR" if args.world else "")
    save(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
