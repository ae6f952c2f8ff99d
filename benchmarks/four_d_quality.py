"""Reconstruction quality of `four-d fit`: PSNR on unseen views vs steps, dense and sparse camera regimes.

    python benchmarks/four_d_quality.py [--only NAME ...] [--seeds 0 1] [--steps 1500] [--sparse-steps 1000]
                                        [--ablation-steps 200] [--eval-every 100] [--work DIR] [--out JSON]
                                        [--sheet PNG] [--from-logs]

Scene: four_d.scenes "orbiting-spheres" (three lambertian spheres, two circling the y axis, one rising;
exact renders), 5 frames t = 0, 0.25, ..., 1, 32x32 images, official radius 1.8 / fovy 40.
- dense: two rings of 16 azimuths (polar 65 and 95) per time; unseen views between the rings
  (polar 80) at azimuths halfway between training azimuths.
- sparse: 8 azimuths at one elevation (polar 90) per time; unseen views at the in-between azimuths,
  at polar 90 and polar 70.

Runs:
- "dense", "sparse": the default config (`get_config()`: occupancy grid on, temporal TV 0.1, orientation
  and entropy off), --steps / --sparse-steps steps.
- the sparse ablation ("baseline", "+orient", "+entropy", "+time-tv", "+all3", "+all3+occupancy"):
  what the official regularisers and the occupancy grid change in the sparse regime. "baseline" has
  every regulariser off and uniform sampling (fit.use_occupancy=false, reg.lambda_time_tv=0,
  fit.lambda_orient=0, fit.lambda_entropy=0); each other run switches on terms with the official weights
  as configs/four_d.py holds them: orientation stages.lambda_orient (official --lambda_orient 1e-2),
  entropy stages.lambda_entropy (official --lambda_entropy 1e-3, ramped by min(1, 2 step / iters)),
  temporal TV reg.lambda_time_tv (official --lambda_time_tv 0.1), then the occupancy grid on top of all
  three. Sized for a shared 2-core CPU (ABLATION_SIZE, --ablation-size): 512 rays per step (not 4,096)
  and 32 samples per ray for every run (uniform, or occupancy-guided with render.occupancy_num_samples
  = 32: the same compute per ray), --ablation-steps steps (default 200), evaluated every --eval-every
  steps (use 50 for the ablation). --seeds runs each at several config seeds
  (network init and ray batches; the scene is fixed) to measure run-to-run noise.

Every run leaves in WORK/runs/<run>_seed<k>/: fit's metrics.jsonl / config.json / results.json, and at the
end bench.json (wall and process CPU seconds, PSNR/SSIM of full renders of the TRAIN views) and
heldout.npz (its renders of the unseen views). The table is always built from those files (runs stopped
early are reported up to their last evaluation, marked partial), so runs started in parallel processes
with the same --work are tabulated together by one `--from-logs` call. Columns: held-out PSNR at each
evaluation step, held-out SSIM at the last, the training-batch PSNR around each evaluation (mean of the
logged steps in the preceding evaluation interval) and the final train-view PSNR. Writes --out
(default benchmarks/results/four_d_quality.json, or four_d_quality_sparse.json when every run is an
ablation run) and a contact sheet --sheet (ground truth, then one row per run, of the unseen views at
t = 0.5, upscaled 4x; default next to --out).
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
SHEET_TIME = 0.5
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The ablation's size on the shared 2-core CPU (stated in benchmarks/README.md): the orientation term
# evaluates the field 7x per sample, so the default 4,096 rays x 128 samples costs ~30 CPU-s a step
# (measured: 29 CPU-s with orientation, 3.3 without); 512 rays x 32 samples is 1/32 of that.
ABLATION_SIZE = ("fit.batch_rays=512", "render.num_samples=32", "render.occupancy_num_samples=32")
ALL_OFF = ("fit.use_occupancy=false", "reg.lambda_time_tv=0.0", "fit.lambda_orient=0.0", "fit.lambda_entropy=0.0")


def official_weights():
    """The official regulariser weights as configs/four_d.py holds them (see its comments)."""
    c = get_config()
    return {"orient": float(c.stages.lambda_orient),  # official --lambda_orient 1e-2
            "entropy": float(c.stages.lambda_entropy),  # official --lambda_entropy 1e-3
            "time_tv": float(c.reg.lambda_time_tv)}  # official --lambda_time_tv 0.1 (run-dynamic.sh)


def ablation_runs():
    w = official_weights()
    orient, entropy = f"fit.lambda_orient={w['orient']}", f"fit.lambda_entropy={w['entropy']}"
    tv = f"reg.lambda_time_tv={w['time_tv']}"
    return {
        "baseline": [*ALL_OFF],
        "+orient": [*ALL_OFF, orient],
        "+entropy": [*ALL_OFF, entropy],
        "+time-tv": [*ALL_OFF, tv],
        "+all3": [*ALL_OFF, orient, entropy, tv],
        "+all3+occupancy": [*ALL_OFF, orient, entropy, tv, "fit.use_occupancy=true"],
    }


# name -> (regime, kind, config overrides); kind "full" = default-size run, "ablation" = ABLATION_SIZE
RUNS = {"dense": ("dense", "full", []), "sparse": ("sparse", "full", [])}
RUNS.update({name: ("sparse", "ablation", ov) for name, ov in ablation_runs().items()})


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


def write_regime(regime, work):
    path = os.path.join(work, f"data-{regime}")
    if not os.path.isfile(os.path.join(path, "cameras.json")):
        train, test = regime_views(regime)
        scenes.write_dataset(scenes.make_scene("orbiting-spheres", 0), path, times=TIMES, size=SIZE,
                             views=train, test_views=test)
    return path


def run_dir(work, name, seed):
    slug = name.replace(" ", "_").replace("+", "plus-")
    return os.path.join(work, "runs", f"{slug}_seed{seed}")


def run_config(name, seed, args):
    regime, kind, overrides = RUNS[name]
    steps = {"dense": args.steps, "sparse": args.sparse_steps}[regime] if kind == "full" else args.ablation_steps
    size = list(args.ablation_size) if kind == "ablation" else []
    # log every 10 steps: the train-batch PSNR column averages the logged steps of an evaluation interval
    log_every = max(1, min(10, args.eval_every))
    return apply_overrides(get_config(), [
        f"seed={seed}", f"fit.iterations={steps}", f"fit.eval_every={args.eval_every}", f"fit.log_every={log_every}",
        f"fit.checkpoint_every={steps}", *size, *overrides, *args.override])


def final_renderer(cfg, data, occupancy):
    from four_d.field import field_from_config

    return fit_lib.make_renderer(cfg, field_from_config(cfg), data["height"], data["width"], data["background"],
                                 occupancy=occupancy)


def run_one(name, seed, args):
    """Fit one run; write bench.json (times, train-view metrics) and heldout.npz (unseen-view renders)."""
    import jax.numpy as jnp

    regime = RUNS[name][0]
    data_dir = write_regime(regime, args.work)
    cfg = run_config(name, seed, args)
    out = run_dir(args.work, name, seed)
    if os.path.isdir(out):
        import shutil

        shutil.rmtree(out)
    data = fit_lib.load_dataset(data_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_lib.fit(data_dir, out, cfg, progress=False, video=False, data=data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    renderer = final_renderer(cfg, data, res.get("occupancy"))
    train_view = fit_lib.evaluate(renderer, res["params"], data, split="train")
    test_idx = np.nonzero(data["split"] == "test")[0]
    pred = np.stack([np.clip(np.asarray(renderer(res["params"], jnp.asarray(data["poses"][i]),
                                                 jnp.asarray(data["K"]), float(data["times"][i]))["rgb"]), 0, 1)
                     for i in test_idx])
    np.savez_compressed(os.path.join(out, "heldout.npz"), pred=pred.astype(np.float32), index=test_idx,
                        times=data["times"][test_idx], gt=data["images"][test_idx])
    blob = {"name": name, "seed": seed, "wall_s": wall, "cpu_s": cpu, "train_view_psnr": train_view["psnr"],
            "train_view_ssim": train_view["ssim"], "occupied_fraction": res.get("occupied_fraction"),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(blob, f, indent=1)
    print(json.dumps({"run": name, "seed": seed, "test_psnr": res["test"]["psnr"], **blob}), flush=True)


def read_run(work, name, seed):
    """Curves and figures of one run from its files (None if it was never started)."""
    out = run_dir(work, name, seed)
    log = os.path.join(out, "metrics.jsonl")
    if not os.path.isfile(log):
        return None
    rows = [json.loads(x) for x in open(log)]
    test = {r["step"]: (r["test_psnr"], r.get("test_ssim")) for r in rows if "test_psnr" in r}
    done = os.path.join(out, "results.json")
    finished = os.path.isfile(done)
    if finished:  # a finished run's final evaluation is in results.json only
        test.update({r["step"]: (r["test_psnr"], r.get("test_ssim"))
                     for r in json.load(open(done)).get("test_curve", [])})
    train = {r["step"]: r["psnr"] for r in rows if "psnr" in r}
    cfg = json.load(open(os.path.join(out, "config.json")))
    bench = os.path.join(out, "bench.json")
    return {"test": test, "train": train, "config": cfg, "finished": finished,
            "bench": json.load(open(bench)) if os.path.isfile(bench) else None,
            "heldout": os.path.join(out, "heldout.npz") if os.path.isfile(os.path.join(out, "heldout.npz")) else None,
            "seconds": max((r.get("time", 0.0) for r in rows), default=0.0)}


def tabulate(bench, runs, seeds, work, eval_every):
    """One row per (run, seed) found in WORK; returns {row name: (curves, heldout path)}."""
    extra = {}
    for name in runs:
        for seed in seeds:
            r = read_run(work, name, seed)
            if r is None or not r["test"]:
                print(f"benchmarks/four_d_quality.py: {name!r} seed {seed}: no held-out evaluation in {work} yet")
                continue
            regime, kind, overrides = RUNS[name]
            last = max(r["test"])
            planned = r["config"]["fit"]["iterations"]
            label = name if len(seeds) == 1 else f"{name} s{seed}"
            row = bench.add(label, regime=regime, seed=seed, steps=last, partial=last < planned)
            for s in sorted(r["test"]):
                row[f"test@{s}"] = round(r["test"][s][0], 2)
            ssim = r["test"][last][1]
            row[f"ssim@{last}"] = None if ssim is None else round(ssim, 3)
            # training-batch PSNR around each evaluation: mean of the logged steps in (s - eval_every, s]
            train_curve = {}
            for s in sorted(r["test"]):
                vals = [v for k, v in r["train"].items() if s - eval_every < k <= s]
                if vals:
                    train_curve[s] = float(np.mean(vals))
            if last in train_curve:
                row[f"train_batch@{last}"] = round(train_curve[last], 2)
            b = r["bench"]
            row["train_views"] = None if b is None else round(b["train_view_psnr"], 2)
            row["wall_s"] = round(b["wall_s"] if b else r["seconds"], 1)
            row["cpu_s"] = None if b is None else round(b["cpu_s"], 1)
            row["overrides"] = " ".join(o for o in overrides if o not in ALL_OFF) or "-"
            extra[label] = ({"test_psnr": {str(k): round(v[0], 3) for k, v in sorted(r["test"].items())},
                             "test_ssim": {str(k): v[1] for k, v in sorted(r["test"].items())},
                             "train_batch_psnr": {str(k): round(v, 3) for k, v in sorted(train_curve.items())},
                             "overrides_full": RUNS[name][2]}, r["heldout"], name, seed)
    return extra


def seed_noise(bench):
    """|difference| of held-out PSNR between the seeds of each run, per step (run-to-run noise)."""
    by_run = {}
    for row in bench.rows:
        base = row["name"].rsplit(" s", 1)[0] if row["name"].rsplit(" s", 1)[-1].isdigit() else row["name"]
        by_run.setdefault(base, []).append(row)
    noise = {}
    for name, rows in by_run.items():
        if len(rows) < 2:
            continue
        steps = sorted({k for r in rows for k in r if k.startswith("test@")} & set.intersection(
            *[{k for k in r if k.startswith("test@")} for r in rows]), key=lambda k: int(k[5:]))
        noise[name] = {k: round(max(r[k] for r in rows) - min(r[k] for r in rows), 2) for k in steps}
    return noise


def contact_sheet(extra, out_png, time_value=SHEET_TIME):
    """Ground truth (top row), then one row per run: the unseen views at t = time_value, upscaled 4x."""
    import cv2
    import imageio.v3 as iio

    rows, labels = [], []
    for label, (_, path, _, _) in extra.items():
        if path is None:
            continue
        z = np.load(path)
        sel = np.abs(z["times"] - time_value) < 1e-6
        if not rows:
            rows.append(np.concatenate(list(z["gt"][sel]), axis=1))
            labels.append("ground truth")
        rows.append(np.concatenate(list(z["pred"][sel]), axis=1))
        labels.append(label)
    if not rows:
        return None
    scale, margin = 4, 150
    tiles = []
    for img, text in zip(rows, labels):
        big = (np.clip(np.kron(img, np.ones((scale, scale, 1))), 0, 1) * 255).round().astype(np.uint8)
        pad = np.full((big.shape[0], margin, 3), 255, np.uint8)
        cv2.putText(pad, text, (4, big.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([pad, big], axis=1))
    iio.imwrite(out_png, np.concatenate(tiles, axis=0))
    return out_png


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500, help="dense-regime steps")
    p.add_argument("--sparse-steps", type=int, default=1000, help="steps of the default-config sparse run")
    p.add_argument("--ablation-steps", type=int, default=200, help="steps of each sparse-ablation run")
    p.add_argument("--ablation-size", nargs="*", default=list(ABLATION_SIZE),
                   help="config overrides that size the ablation runs")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="config seeds (each run once per seed)")
    p.add_argument("--work", default="/tmp/four_d_quality")
    p.add_argument("--only", nargs="*", default=None, help=f"run names among {list(RUNS)}")
    p.add_argument("--override", nargs="*", default=[], help="extra config overrides for every run")
    p.add_argument("--out", default=None, help="results JSON (default: see the module docstring)")
    p.add_argument("--sheet", default=None, help="contact-sheet PNG (default: --out with .png)")
    p.add_argument("--from-logs", action="store_true",
                   help="run nothing: tabulate the runs already in --work (runs stopped early are reported up to "
                        "their last evaluation, marked partial)")
    args = p.parse_args(argv)

    runs = args.only or list(RUNS)
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise SystemExit(f"benchmarks/four_d_quality.py: unknown runs {unknown}; choose from {list(RUNS)}")
    if args.eval_every < 1:
        raise SystemExit(f"benchmarks/four_d_quality.py: --eval-every must be >= 1, got {args.eval_every}")
    os.makedirs(args.work, exist_ok=True)
    if not args.from_logs:
        for name in runs:
            for seed in args.seeds:
                run_one(name, seed, args)
    bench = Bench("four_d_quality")
    ablation = all(RUNS[n][1] == "ablation" for n in runs)
    bench.meta.update(scene="orbiting-spheres", size=SIZE, times=list(TIMES), eval_every=args.eval_every,
                      seeds=args.seeds, overrides=args.override, xla_flags=os.environ.get("XLA_FLAGS", ""))
    if ablation:
        bench.meta.update(ablation_size=args.ablation_size, official_weights=official_weights(),
                          baseline_overrides=list(ALL_OFF))
    extra = tabulate(bench, runs, args.seeds, args.work, args.eval_every)
    noise = seed_noise(bench)
    if noise:
        bench.meta["seed_noise_abs_psnr_diff"] = noise
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 3)
    default = "four_d_quality_sparse.json" if ablation else "four_d_quality.json"
    path = args.out or os.path.join(RESULTS, default)
    bench.report(path)
    with open(path) as f:
        blob = json.load(f)
    for r in blob["rows"]:
        r.update(extra[r["name"]][0])
    sheet = contact_sheet(extra, args.sheet or os.path.splitext(path)[0] + ".png")
    blob["meta"]["contact_sheet"] = sheet
    with open(path, "w") as f:
        json.dump(blob, f, indent=1)
    if noise:
        print("run-to-run noise (|PSNR difference| between seeds):", json.dumps(noise))
    print(f"contact sheet: {sheet}")


if __name__ == "__main__":
    main()
