"""Benchmark: 60-frame 3D cinemagraphs of the sample photo at 768x768 and 1280x720.

    python benchmarks/cinemagraph.py [--frames 60] [--sizes 768x768,1280x720] [--quick]

Each size runs in its own subprocess so peak memory (ru_maxrss) is per size. Reports time per stage,
the render step's compile time (AOT, apart from rendering), steady time per frame, and peak memory,
prints a table and writes benchmarks/results/cinemagraph.json. Targets on the 2-core CPU (issue):
<= 1 s per 768x768 frame after compile, compile < 60 s, peak memory < 6 GiB.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.harness import Bench  # noqa: E402

TARGETS = {"s_per_frame_768": 1.0, "compile_s": 60.0, "peak_gib": 6.0}


def run_one(height, width, frames, out_json):
    """Animate the sample photo stretched to height x width (as the official demo stretches to 768^2)."""
    import cv2
    import numpy as np

    from benchmarks.harness import peak_rss_gib
    from cine_jax import io, pipeline, sample
    from configs import cinemagraph

    photo = sample.load_sample_photo().astype(np.float32) / 255.0
    image = np.clip(cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    with tempfile.TemporaryDirectory() as d:
        paths = sample.write_sample(d)
        ann = io.load_annotations(paths["annotations"], photo.shape[:2], (height, width))
    cfg = cinemagraph.get_config()
    cfg.io.max_side = max(height, width)
    t0 = time.perf_counter()
    res = pipeline.animate(image, mask=ann.mask, hints=[(h.start, h.vector) for h in ann.hints],
                           trajectory="circle", num_frames=frames, config=cfg, progress=False)
    total = time.perf_counter() - t0
    row = {
        "size": f"{width}x{height}",
        "frames": frames,
        "points": res.stats["num_points"],
        "layers": res.stats["num_layers"],
        **{f"{k}_s": v for k, v in res.stats["timings_s"].items()},
        "compile_s": res.stats["render_compile_s"],
        "s_per_frame": res.stats["render_s_per_frame"],
        "total_s": round(total, 2),
        "peak_gib": round(peak_rss_gib(), 2),
    }
    with open(out_json, "w") as f:
        json.dump(row, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--sizes", default="768x768,1280x720", help="WxH list")
    ap.add_argument("--quick", action="store_true", help="small smoke run (256x256, 8 frames)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        w, h = map(int, args.one.split("x"))
        run_one(h, w, args.frames, args.out)
        return
    if args.quick:
        args.sizes, args.frames = "256x256", 8
    bench = Bench("cinemagraph")
    for size in args.sizes.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [sys.executable, os.path.abspath(__file__), "--one", size, "--frames", str(args.frames), "--out", out]
        subprocess.run(cmd, check=True, cwd=ROOT)
        with open(out) as f:
            row = json.load(f)
        os.unlink(out)
        name = row.pop("size")
        if name == "768x768":
            row["meets_1s_per_frame"] = row["s_per_frame"] <= TARGETS["s_per_frame_768"]
        row["meets_compile_60s"] = row["compile_s"] < TARGETS["compile_s"]
        row["meets_6GiB"] = row["peak_gib"] < TARGETS["peak_gib"]
        bench.add(name, **row)
    bench.meta["targets"] = TARGETS
    bench.report()


if __name__ == "__main__":
    main()
