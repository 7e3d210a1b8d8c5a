"""Geometry throughput: panorama -> perspective views and z/x/y tiles -> 512x512 aerials,
against a straightforward per-pixel Python implementation measured in the same run.

    python benchmarks/bench_geometry.py [--quick]

Prints views/s, mosaics/s and tiles/s of both implementations, the speed-up, the largest
disagreement between them, and writes benchmarks/results/geometry.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geoxray.data.panorama import cardinal_views  # noqa: E402
from geoxray.data.tiles import (folder_fetch, latlon_to_global_px, metres_per_pixel,  # noqa: E402
                                mosaic_around, tiles_touched)

RESULTS = Path(__file__).resolve().parent / "results" / "geometry.json"


# --- the per-pixel baselines ---------------------------------------------------------------------
def naive_view(pano: np.ndarray, yaw: float, fov: float, size: int, center: float) -> np.ndarray:
    """One output pixel at a time: ray, azimuth/elevation, bilinear sample with wrap."""
    h, w = pano.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    f = size / 2 / math.tan(math.radians(fov) / 2)
    sy, cy = math.sin(math.radians(yaw)), math.cos(math.radians(yaw))
    for i in range(size):
        y = i + 0.5 - size / 2
        for j in range(size):
            x = j + 0.5 - size / 2
            # forward (sin yaw, cos yaw, 0), right (cos yaw, -sin yaw, 0), up (0, 0, 1)
            e, n, u = f * sy + x * cy, f * cy - x * sy, -y
            az = math.degrees(math.atan2(e, n))
            el = math.degrees(math.atan2(u, math.hypot(e, n)))
            px = (((az - center) / 360.0 + 0.5) % 1.0) * w - 0.5
            py = min(max((90.0 - el) / 180.0 * h - 0.5, 0.0), h - 1.0)
            x0, y0 = math.floor(px), math.floor(py)
            fx, fy = px - x0, py - y0
            x1, y1 = (x0 + 1) % w, min(y0 + 1, h - 1)
            x0 %= w
            for c in range(3):
                top = pano[y0, x0, c] * (1 - fx) + pano[y0, x1, c] * fx
                bot = pano[y1, x0, c] * (1 - fx) + pano[y1, x1, c] * fx
                out[i, j, c] = int(top * (1 - fy) + bot * fy + 0.5)
    return out


def naive_mosaic(fetch, lat: float, lon: float, zoom: int, size: int) -> tuple[np.ndarray, int]:
    """One output pixel at a time at native resolution: global pixel -> tile -> bilinear."""
    cx, cy = (float(v) for v in latlon_to_global_px(lat, lon, zoom))
    cache: dict = {}

    def pixel(gx: int, gy: int):
        key = (gx // 256, gy // 256)
        if key not in cache:
            cache[key] = fetch(zoom, key[0], key[1])
        tile = cache[key]
        return (0, 0, 0) if tile is None else tile[gy % 256, gx % 256]

    out = np.zeros((size, size, 3), np.uint8)
    for i in range(size):
        gy = cy - size / 2 + i + 0.5 - 0.5
        y0 = math.floor(gy)
        fy = gy - y0
        for j in range(size):
            gx = cx - size / 2 + j + 0.5 - 0.5
            x0 = math.floor(gx)
            fx = gx - x0
            a, b, c, d = pixel(x0, y0), pixel(x0 + 1, y0), pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1)
            for k in range(3):
                v = (a[k] * (1 - fx) + b[k] * fx) * (1 - fy) + (c[k] * (1 - fx) + d[k] * fx) * fy
                out[i, j, k] = int(v + 0.5)
    return out, len(cache)


# --- inputs ---------------------------------------------------------------------------------------
def smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def timed(fn, repeat: int) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return (time.perf_counter() - start) / repeat, result


def bench_views(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    panos = [smooth(rng, 1024, 2048) for _ in range(4)]
    headings = rng.uniform(0, 360, 64 if not quick else 16)
    size = 512
    start = time.perf_counter()
    n = 0
    for k, heading in enumerate(headings):  # a new heading every panorama, as in real data
        n += len(cardinal_views(panos[k % len(panos)], float(heading), 90.0, size))
    fast_s = (time.perf_counter() - start) / n
    naive_size = 128 if quick else 512
    naive_s, naive = timed(lambda: naive_view(panos[0], 90.0, 90.0, naive_size, float(headings[0])), 1)
    naive_s *= (size / naive_size) ** 2  # per-pixel cost scales with the pixel count
    fast = cardinal_views(panos[0], float(headings[0]), 90.0, naive_size, ["E"])["E"]
    return {"pano": [1024, 2048], "view": [size, size], "fov": 90, "views": n,
            "fast_views_per_s": round(1 / fast_s, 1), "naive_views_per_s": round(1 / naive_s, 4),
            "naive_measured_at": naive_size, "speedup": round(naive_s / fast_s, 1),
            "max_abs_diff": int(np.abs(fast.astype(int) - naive.astype(int)).max())}


def bench_tiles(quick: bool) -> dict:
    rng = np.random.default_rng(1)
    zoom, size = 19, 512
    lat0, lon0 = 43.2472, -122.2364
    cx, cy = latlon_to_global_px(lat0, lon0, zoom)
    tx0, ty0 = int(cx // 256) - 8, int(cy // 256) - 8
    tiles = {(tx0 + i, ty0 + j): smooth(rng, 256, 256) for i in range(16) for j in range(16)}

    def memory_fetch(z, x, y):
        return tiles.get((x, y))

    points = [(lat0 + d1, lon0 + d2) for d1, d2 in rng.uniform(-0.0015, 0.0015, (40 if not quick else 10, 2))]
    res = {"zoom": zoom, "out": [size, size]}
    with tempfile.TemporaryDirectory() as tmp:
        for (x, y), tile in tiles.items():
            p = Path(tmp) / str(zoom) / str(x) / f"{y}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), tile)
        for label, fetch in (("memory", memory_fetch), ("folder_png", folder_fetch(tmp))):
            for extent_label, extent in (("native", None), ("100m", 100.0)):
                start = time.perf_counter()
                used = 0
                for lat, lon in points:
                    img, missing = mosaic_around(fetch, lat, lon, zoom, extent, size)
                    assert missing == 0
                    side = size if extent is None else extent / float(metres_per_pixel(lat, zoom))
                    used += tiles_touched(lat, lon, zoom, side)
                secs = time.perf_counter() - start
                res[f"fast_{label}_{extent_label}"] = {
                    "mosaics_per_s": round(len(points) / secs, 1),
                    "tiles_per_s": round(used / secs, 1)}
    naive_size = 128 if quick else size
    naive_s, (naive, used) = timed(lambda: naive_mosaic(memory_fetch, lat0, lon0, zoom, naive_size), 1)
    fast, _ = mosaic_around(memory_fetch, lat0, lon0, zoom, None, naive_size)
    scale = (size / naive_size) ** 2
    per_mosaic = naive_s * scale
    tiles_per_mosaic = tiles_touched(lat0, lon0, zoom, size)
    res["naive_memory_native"] = {"mosaics_per_s": round(1 / per_mosaic, 4),
                                  "tiles_per_s": round(tiles_per_mosaic / per_mosaic, 3),
                                  "measured_at": naive_size}
    res["speedup_memory_native"] = round(per_mosaic * res["fast_memory_native"]["mosaics_per_s"], 1)
    res["max_abs_diff"] = int(np.abs(fast.astype(int) - naive.astype(int)).max())
    return res


def bench_build(quick: bool) -> dict:
    """Whole records through the build at real sizes (CVGlobal-like: 2048x1024 JPEG panorama
    -> 4 views of 512x512, 640x640 aerial -> 512x512), index and items left out."""
    from geoxray.data.build import build_from_sources

    rng = np.random.default_rng(2)
    n = 8 if quick else 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "CVGlobal"
        for i in range(n):
            lat, lon = -27.38 + 0.003 * (i % 6), 153.0 + 0.003 * (i // 6)
            name = f"{lat:.8f},{lon:.8f}_2022-12_pano{i:04d}_d{(37 * i) % 360}_z3.jpg"
            for sub, img in (("streetview2048", smooth(rng, 1024, 2048)), ("satellite", smooth(rng, 640, 640))):
                (root / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / sub / name), img)
        res = {}
        for workers in (1, 2):
            start = time.perf_counter()
            report = build_from_sources([{"kind": "CVGlobal", "root": str(root)}], Path(tmp) / f"out{workers}",
                                        workers=workers, write_items=False)
            secs = time.perf_counter() - start
            assert report.records_kept == {"CVGlobal": n}
            res[f"workers_{workers}"] = {"records_per_s": round(n / secs, 2),
                                         "views_per_s": round(4 * n / secs, 1)}
    return {"records": n, **res}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller baseline, fewer repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(),
                          "processor": platform.processor() or platform.machine(),
                          # other work on the machine slows every figure alike; ratios hold
                          "load_average_1m": round(os.getloadavg()[0], 2)},
              "quick": args.quick, "views": bench_views(args.quick), "tiles": bench_tiles(args.quick),
              "build": bench_build(args.quick)}
    v, t = result["views"], result["tiles"]
    print(f"views  : {v['fast_views_per_s']:.1f}/s remap vs {v['naive_views_per_s']:.4f}/s per-pixel "
          f"Python -> {v['speedup']:.0f}x (512x512 from 2048x1024, max |diff| {v['max_abs_diff']})")
    print(f"tiles  : {t['fast_memory_native']['tiles_per_s']:.1f} tiles/s "
          f"({t['fast_memory_native']['mosaics_per_s']:.1f} mosaics/s) vs "
          f"{t['naive_memory_native']['tiles_per_s']:.3f} tiles/s per-pixel Python -> "
          f"{t['speedup_memory_native']:.0f}x (max |diff| {t['max_abs_diff']})")
    print(f"         from PNG files: {t['fast_folder_png_native']['tiles_per_s']:.1f} tiles/s; "
          f"100 m extent (area-filtered): {t['fast_memory_100m']['mosaics_per_s']:.1f} mosaics/s")
    b = result["build"]
    print(f"build  : {b['workers_1']['records_per_s']:.1f} records/s with 1 thread, "
          f"{b['workers_2']['records_per_s']:.1f} with 2 (decode, 4 views, 1 aerial, JPEG writes)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
