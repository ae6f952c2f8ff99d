"""Reconstruction quality of `four-d fit`: PSNR on unseen views vs steps, dense and sparse camera regimes.

    python benchmarks/four_d_quality.py [--only NAME ...] [--steps 1500] [--sparse-steps 1000]
                                        [--eval-every 100] [--work DIR] [--out JSON] [--from-logs]

Scene: four_d.scenes "orbiting-spheres" (three lambertian spheres, two circling the y axis, one rising;
exact renders), 5 frames t = 0, 0.25, ..., 1, 32x32 images, official radius 1.8 / fovy 40.
- dense: two rings of 16 azimuths (polar 65 and 95) per time; unseen views between the rings
  (polar 80) at azimuths halfway between training azimuths.
- sparse: 8 azimuths at one elevation (polar 90) per time; unseen views at the in-between azimuths,
  at polar 90 and polar 70.
Runs (default config, `get_config()`, with the overrides listed per run): the dense baseline, and for the
sparse regime the baseline and what the official regularisers (orientation 1e-2, entropy 1e-3,
temporal TV 0.1 which is on by default) and the occupancy grid change.
Each run prints its curve; the script ends with a table and writes benchmarks/results/four_d_quality.json
(plus a PNG per run in --work: ground truth over prediction for every unseen view at t = 0.5).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks.harness import Bench, peak_rss_gib
from configs.four_d import get_config
from configs.overrides import apply_overrides
from four_d import fit as fit_lib
from four_d import scenes

TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)
SIZE = 32


def regime_views(regime):
    """(train views, test views) as (polar, azimuth) lists for a regime."""
    if regime == "dense":
        az = [360.0 * k / 16 for k in range(16)]
        train = [(65.0, a) for a in az] + [(95.0, a) for a in az]
        test = [(80.0, 11.25 + 90.0 * k) for k in range(4)]
    elif regime == "sparse":
        train = [(90.0, 45.0 * k) for k in range(8)]
        test = [(90.0 if k % 2 == 0 else 70.0, 22.5 + 90.0 * k) for k in range(4)]
    else:
        raise ValueError(f"benchmarks/four_d_quality.py: unknown regime {regime!r}")
    return train, test


# name -> (regime, config overrides)
RUNS = {
    "dense": ("dense", []),
    "sparse": ("sparse", []),
    "sparse no-occupancy": ("sparse", ["fit.use_occupancy=false"]),
    "sparse no-time-tv": ("sparse", ["reg.lambda_time_tv=0"]),
    "sparse +orient": ("sparse", ["fit.lambda_orient=0.01"]),
    "sparse +entropy": ("sparse", ["fit.lambda_entropy=0.001"]),
    "sparse +orient+entropy": ("sparse", ["fit.lambda_orient=0.01", "fit.lambda_entropy=0.001"]),
}


def write_regime(regime, work):
    path = os.path.join(work, f"data-{regime}")
    if not os.path.isfile(os.path.join(path, "cameras.json")):
        train, test = regime_views(regime)
        scenes.write_dataset(scenes.make_scene("orbiting-spheres", 0), path, times=TIMES, size=SIZE,
                             views=train, test_views=test)
    return path


def contact_sheet(res, data, config, out_png):
    """Ground truth (top) over prediction (bottom) of every test view at t = 0.5, upscaled 4x."""
    import imageio.v3 as iio
    import jax.numpy as jnp

    from four_d.field import field_from_config

    model = field_from_config(config)
    renderer = fit_lib.make_renderer(config, model, data["height"], data["width"], data["background"],
                                     occupancy=res.get("occupancy"))
    idx = [i for i in np.nonzero(data["split"] == "test")[0] if abs(data["times"][i] - 0.5) < 1e-6]
    gt = np.concatenate([data["images"][i] for i in idx], axis=1)
    pred = np.concatenate([np.clip(np.asarray(renderer(res["params"], jnp.asarray(data["poses"][i]),
                                                       jnp.asarray(data["K"]), 0.5)["rgb"]), 0, 1)
                           for i in idx], axis=1)
    sheet = np.concatenate([gt, pred], axis=0)
    sheet = np.kron(sheet, np.ones((4, 4, 1)))
    iio.imwrite(out_png, (sheet * 255).round().astype(np.uint8))


def train_psnr(out_dir):
    rows = [json.loads(x) for x in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: r["psnr"] for r in rows if "psnr" in r}


def from_logs(bench, runs, work):
    """Rows of the runs in WORK/runs/<name>/ from their metrics.jsonl (test and train PSNR curves so far)."""
    for name in runs:
        log = os.path.join(work, "runs", name.replace(" ", "_"), "metrics.jsonl")
        if not os.path.isfile(log):
            raise SystemExit(f"benchmarks/four_d_quality.py: {log} not found (run {name!r} was not started in {work})")
        rows = [json.loads(x) for x in open(log)]
        curve = {r["step"]: r["test_psnr"] for r in rows if "test_psnr" in r}
        done = os.path.join(os.path.dirname(log), "results.json")
        if os.path.isfile(done):  # a finished run: its final evaluation is in results.json only
            curve.update({r["step"]: r["test_psnr"] for r in json.load(open(done)).get("test_curve", [])})
        trn = {r["step"]: r["psnr"] for r in rows if "psnr" in r}
        if not curve:
            raise SystemExit(f"benchmarks/four_d_quality.py: {log} holds no held-out evaluation yet")
        cfg = json.load(open(os.path.join(os.path.dirname(log), "config.json")))
        regime, overrides = RUNS[name]
        last = max(curve)
        row = bench.add(name, regime=regime, overrides=" ".join(overrides) or "-", steps=last,
                        planned_steps=cfg["fit"]["iterations"], partial=last < cfg["fit"]["iterations"],
                        final_test_psnr=round(curve[last], 2), final_train_psnr=round(trn.get(last, float("nan")), 2),
                        best_test_psnr=round(max(curve.values()), 2),
                        seconds=round(max(r.get("time", 0.0) for r in rows), 1))
        row["curve"] = {str(k): round(v, 2) for k, v in sorted(curve.items())}
        row["train_curve"] = {str(k): round(v, 2) for k, v in sorted(trn.items())}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500, help="dense-regime steps")
    p.add_argument("--sparse-steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--work", default="/tmp/four_d_quality")
    p.add_argument("--only", nargs="*", default=None, help=f"run names among {list(RUNS)}")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--out", default=None,
                   help="results JSON (default benchmarks/results/four_d_quality.json); runs started in parallel "
                        "processes need one each")
    p.add_argument("--from-logs", action="store_true",
                   help="run nothing: tabulate the runs already in --work from their metrics.jsonl (runs that were "
                        "stopped early are reported up to their last evaluation, marked partial)")
    args = p.parse_args(argv)

    runs = args.only or list(RUNS)
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"benchmarks/four_d_quality.py: unknown runs {unknown}; choose from {list(RUNS)}")
    os.makedirs(args.work, exist_ok=True)
    bench = Bench("four_d_quality")
    bench.meta.update(scene="orbiting-spheres", size=SIZE, times=list(TIMES), eval_every=args.eval_every,
                      overrides=args.override)
    for name in runs if not args.from_logs else []:
        regime, overrides = RUNS[name]
        data_dir = write_regime(regime, args.work)
        steps = args.steps if regime == "dense" else args.sparse_steps
        cfg = apply_overrides(get_config(), [f"fit.iterations={steps}", f"fit.eval_every={args.eval_every}",
                                             f"fit.log_every={args.eval_every}", f"fit.checkpoint_every={steps}",
                                             *overrides, *args.override])
        out = os.path.join(args.work, "runs", name.replace(" ", "_"))
        if os.path.isdir(out):
            import shutil

            shutil.rmtree(out)
        t0 = time.perf_counter()
        res = fit_lib.fit(data_dir, out, cfg, progress=False, video=False)
        secs = time.perf_counter() - t0
        curve = {row["step"]: row["test_psnr"] for row in res["test_curve"]}
        trn = train_psnr(out)
        data = fit_lib.load_dataset(data_dir)
        png = os.path.join(args.work, f"{name.replace(' ', '_')}.png")
        contact_sheet(res, data, cfg, png)
        row = bench.add(name, regime=regime, overrides=" ".join(overrides) or "-", steps=steps,
                        initial_test_psnr=round(res["initial_test"]["psnr"], 2),
                        final_test_psnr=round(res["test"]["psnr"], 2),
                        final_test_ssim=None if res["test"]["ssim"] is None else round(res["test"]["ssim"], 3),
                        final_train_psnr=round(trn.get(steps, float("nan")), 2),
                        best_test_psnr=round(max(curve.values()), 2), seconds=round(secs, 1),
                        occupied_fraction=res.get("occupied_fraction"))
        row["curve"] = {str(k): round(v, 2) for k, v in sorted(curve.items())}
        row["train_curve"] = {str(k): round(v, 2) for k, v in sorted(trn.items())}
        print(json.dumps({"run": name, **row}), flush=True)
    if args.from_logs:
        from_logs(bench, runs, args.work)
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 3)
    # the table shows the curves in columns (test PSNR at each evaluated step)
    steps_all = sorted({int(k) for r in bench.rows for k in r["curve"]})
    show = [s for s in steps_all if s % max(args.eval_every * 3, 1) == 0 or s == steps_all[-1]]
    for r in bench.rows:
        for s in show:
            r[f"@{s}"] = r["curve"].get(str(s), "")
    curves = {r["name"]: (r.pop("curve"), r.pop("train_curve")) for r in bench.rows}
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "four_d_quality.json")
    bench.report(path)
    with open(path) as f:
        blob = json.load(f)
    for r in blob["rows"]:
        r["test_curve"], r["train_curve"] = curves[r["name"]]
    with open(path, "w") as f:
        json.dump(blob, f, indent=1)


if __name__ == "__main__":
    main()
