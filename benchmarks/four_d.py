"""Benchmark four_d rendering and fitting: rays/s, compile time, peak memory, XLA memory analysis.

    python benchmarks/four_d.py [--config tiny|paper] [--sizes 128 400] [--repeats 3]
                                [--sections memory remat lambertian train render]

Sections:
- memory: XLA's memory analysis of the COMPILED gradient of a training render (no run): a 16-frame
  128x128 clip (262,144 rays) with lambertian shading (finite-difference normals), the default field,
  at 64 and 256 samples per ray, without rematerialisation (one render of all rays, the design before
  issue 8) and with render_rays_chunked under jax.checkpoint (--mem-chunks rays per chunk).
  `temp_gib` is the compiled program's temporary buffers (what the step needs besides its inputs).
- remat: the cost of rematerialisation (issue 8 target: a remat step <= 1.4x the non-remat step at a
  size that fits). Value and gradient of an MSE through a training render of --remat-rays rays (each
  count) x --remat-samples samples, albedo and lambertian shading, three ways: one render_rays call
  ("single"), render_rays_chunked with --remat-chunk rays per chunk without ("chunked") and with
  jax.checkpoint ("remat"). Each threading mode of --remat-threading runs in its own subprocess
  (XLA_FLAGS are read when the backend starts): "single" = XLA single-threaded
  (--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1: process CPU time is the work,
  the least disturbed figure on a shared machine), "default" = XLA's own threading. After one warm-up
  call each, the three programs are timed interleaved (single, chunked, remat, single, ...) for
  --remat-repeats rounds, and the MIN over the rounds of wall time (`wall_s`) and of process CPU time
  (`cpu_s`, time.process_time around the blocked call) is reported; ratios `remat/chunked` and
  `remat/single` in both. The forward pass of the chunked render (value only) is timed too: a remat
  step adds one recomputed forward, so `expected_remat/chunked` = (2 F + B) / (F + B) (B = chunked - F).
- lambertian: rays/s of the lambertian training step (value and gradient of an MSE through a render
  of --lam-rays rays at --lam-samples samples, a size that fits without remat): "before" is the
  pre-issue-8 code (git commit --before-commit: six field calls for the normal probes, two gathers per
  time pair, no chunks), run from a `git archive` of that commit in a subprocess; "after" the current
  render_rays in one call. Rows also give the process CPU time of a step (`cpu_s`; wall time on the
  shared machine depends on the other jobs).
- train: jitted `four-d fit` steps (config.fit.batch_rays rays) with uniform sampling (render.num_samples)
  and with empty-space skipping (fit.use_occupancy; occupancy refreshes included, amortised over
  --train-steps consecutive steps).
- render: images at --sizes with uniform stratified sampling (render.num_samples) and occupancy-guided
  two-pass sampling (num_samples / --skip-factor; `err_vs_dense` = mean |rgb difference|); the
  occupancy grid comes from the freshly initialised field (density blob), refreshed --occ-updates
  times. NOTE: the untrained blob has a wide semi-transparent halo with 1 < sigma < 10 which the
  official threshold min(mean, 10) marks empty, so err_vs_dense on the blob measures the official
  skipping semantics, not quadrature error. Quadrature error is measured separately ("analytic ...")
  on two opaque balls with exact zero density outside, against a 2048-sample reference.
Writes benchmarks/results/four_d.json (or --out).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Bench, compile_time, peak_rss_gib, time_callable
from configs.four_d import get_config
from four_d import fit as fit_lib
from four_d import render
from four_d.cameras import reference_camera
from four_d.field import field_from_config


def two_balls(params, x, t, level_mask=None):
    """sigma 20 inside two balls of radius 0.25 at (+-0.4, 0, 0), 0 elsewhere; red/blue albedo."""
    del params, t, level_mask
    c = jnp.array([[-0.4, 0.0, 0.0], [0.4, 0.0, 0.0]])
    inside = jnp.sum((x[:, None, :] - c) ** 2, -1) < 0.25**2
    sigma = jnp.where(jnp.any(inside, -1), 20.0, 0.0)
    albedo = jnp.where(inside[:, :1], jnp.array([0.9, 0.2, 0.1]), jnp.array([0.1, 0.3, 0.9]))
    return {"sigma": sigma, "albedo": albedo}


def analytic_error(bench, s_dense, s_skip, coarse, size=64, res=64):
    grid = render.init_occupancy(res, 1)
    upd = jax.jit(lambda g, k: render.update_occupancy(g, lambda x, t: two_balls(None, x, t)["sigma"], k))
    for i in range(4):
        grid = upd(grid, jax.random.key(i))
    mask = render.occupancy_mask(grid, 10.0)
    cam = reference_camera(size=size)
    kw = dict(bg=jnp.ones(3), jitter=False, chunk=4096)
    ref = render.render_image(two_balls, None, cam["poses"], cam["K"], size, size, 0.0, num_samples=2048, **kw)
    for name, s, occ in (("dense", s_dense, None), ("dense", s_skip, None), ("skip", s_skip, mask)):
        out = render.render_image(two_balls, None, cam["poses"], cam["K"], size, size, 0.0, num_samples=s,
                                  occupancy=occ, coarse_samples=coarse, **kw)
        err = jnp.abs(out["rgb"] - ref["rgb"])
        bench.add(f"analytic {size}x{size} {name} S={s}", samples=s, mean_abs_err=round(float(err.mean()), 5),
                  max_abs_err=round(float(err.max()), 4))


# --- the lambertian training step, before / after -------------------------------------------------------
# Runs in a subprocess on any checkout (uses only APIs the pre-issue-8 code had too): value and gradient of
# an MSE through one render_rays call with lambertian shading. argv: rays samples repeats.
_LAMBERTIAN_SNIPPET = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from configs.four_d import get_config
from four_d import render
from four_d.field import field_from_config
from kernels.camera import camera_rays, intrinsics_from_fov, look_at

rays, samples, repeats = (int(a) for a in sys.argv[1:4])
cfg = get_config()
model = field_from_config(cfg)
fa = render.make_field_apply(model)
params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
side = int(np.ceil(np.sqrt(rays)))
o, d = camera_rays(look_at((0.3, 0.4, 1.7), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)),
                   intrinsics_from_fov(40.0, side, side), side, side)
o, d = o.reshape(-1, 3)[:rays], d.reshape(-1, 3)[:rays]
t = jnp.linspace(0.0, 1.0, rays)
target = jax.random.uniform(jax.random.PRNGKey(2), (rays, 3))
light = jnp.array([0.3, 0.8, 0.52]) / jnp.linalg.norm(jnp.array([0.3, 0.8, 0.52]))

def loss(p):
    out = render.render_rays(fa, p, o, d, t, jax.random.PRNGKey(1), num_samples=samples, shading="lambertian",
                             ambient=0.3, light_dir=light, bg=jnp.ones(3))
    return jnp.mean((out["rgb"] - target) ** 2)

f = jax.jit(jax.value_and_grad(loss))
t0 = time.perf_counter(); c = f.lower(params).compile(); tc = time.perf_counter() - t0
jax.block_until_ready(c(params))
ts, cs = [], []
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(c(params))
    ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
print(json.dumps({"compile_s": tc, "median_s": float(np.median(ts)), "cpu_s": float(np.median(cs))}))
"""


def _run_snippet(root, rays, samples, repeats):
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", _LAMBERTIAN_SNIPPET, str(rays), str(samples), str(repeats)],
                         env=env, cwd=root, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks/four_d.py: lambertian snippet failed in {root}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lambertian_rows(bench, args):
    """Rows "lambertian step ...": rays/s before (git commit) and after (one render_rays call)."""
    import shutil
    import subprocess
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rays, samples = args.lam_rays, args.lam_samples
    size = dict(rays=rays, samples=samples)
    if args.before_commit:
        tmp = tempfile.mkdtemp(prefix="four_d_before_")
        try:
            arch = subprocess.run(["git", "-C", args.repo or repo, "archive", args.before_commit, "four_d", "kernels",
                                   "configs"],
                                  capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=arch, check=True)
            r = _run_snippet(tmp, rays, samples, args.repeats)
            bench.add(f"lambertian step before ({args.before_commit[:7]})", **size, compile_s=round(r["compile_s"], 2),
                      median_s=round(r["median_s"], 4), rays_per_s=round(rays / r["median_s"]),
                      cpu_s=round(r["cpu_s"], 4) if "cpu_s" in r else None)
        except (subprocess.CalledProcessError, RuntimeError) as e:
            print(f"benchmarks/four_d.py: skipping the 'before' row ({e})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    r = _run_snippet(repo, rays, samples, args.repeats)
    single = r["median_s"]
    bench.add("lambertian step after (one render_rays)", **size, compile_s=round(r["compile_s"], 2),
              median_s=round(single, 4), rays_per_s=round(rays / single), cpu_s=round(r["cpu_s"], 4))


# --- the cost of rematerialisation (issue 8: remat step <= 1.4x the non-remat step at a size that fits) ---------

# XLA flags of each --remat-threading mode (read when the backend starts, so each mode runs in a subprocess)
REMAT_THREADING = {"single": ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"],
                   "default": []}
# one render_rays / chunked remat off / chunked remat on (value and gradient), and the forward pass alone
# of the chunked render (value only): a remat step recomputes one forward, so with forward F and backward B
# the expected remat / chunked ratio is (2 F + B) / (F + B)
REMAT_KINDS = ("single", "chunked", "remat", "forward")


def _camera_batch(rays):
    """Rays of a look-at camera at (0.3, 0.4, 1.7) towards the origin (fovy 40), times in [0, 1], a random
    target colour per ray and a fixed unit light."""
    from kernels.camera import camera_rays, intrinsics_from_fov, look_at

    side = int(np.ceil(np.sqrt(rays)))
    o, d = camera_rays(look_at((0.3, 0.4, 1.7), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)),
                       intrinsics_from_fov(40.0, side, side), side, side)
    o, d = o.reshape(-1, 3)[:rays], d.reshape(-1, 3)[:rays]
    t = jnp.linspace(0.0, 1.0, rays)
    target = jax.random.uniform(jax.random.PRNGKey(2), (rays, 3))
    light = jnp.array([0.3, 0.8, 0.52]) / jnp.linalg.norm(jnp.array([0.3, 0.8, 0.52]))
    return o, d, t, target, light


def remat_worker(spec):
    """Subprocess body of the remat section: one JSON line per (shading, rays) case on stdout."""
    import json

    cfg = get_config(spec["config"])
    model = field_from_config(cfg)
    fa = render.make_field_apply(model)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    samples, chunk, repeats = int(spec["samples"]), int(spec["chunk"]), int(spec["repeats"])
    for shading in spec["shadings"]:
        for rays in spec["rays"]:
            o, d, t, target, light = _camera_batch(rays)

            def make(kind, shading=shading, light=light):
                def loss(p, ro, rd, rt, tgt):
                    kw = dict(num_samples=samples, shading=shading, ambient=0.3, light_dir=light, bg=jnp.ones(3))
                    if kind == "single":
                        out = render.render_rays(fa, p, ro, rd, rt, jax.random.PRNGKey(1), **kw)
                    else:
                        out = render.render_rays_chunked(fa, p, ro, rd, rt, jax.random.PRNGKey(1), chunk=chunk,
                                                         remat=kind == "remat", **kw)
                    return jnp.mean((out["rgb"] - tgt) ** 2)

                return jax.jit(loss if kind == "forward" else jax.value_and_grad(loss))

            call = (params, o, d, t, target)
            exes, compile_s, losses = {}, {}, {}
            for kind in REMAT_KINDS:
                compile_s[kind], exes[kind] = compile_time(make(kind), *call)
                out = jax.block_until_ready(exes[kind](*call))  # warm-up
                losses[kind] = float(out if kind == "forward" else out[0])
            wall = {k: [] for k in REMAT_KINDS}
            cpu = {k: [] for k in REMAT_KINDS}
            load0 = os.getloadavg()[0]
            for _ in range(repeats):  # interleaved, so a change of load hits the three alike
                for kind in REMAT_KINDS:
                    t0, c0 = time.perf_counter(), time.process_time()
                    jax.block_until_ready(exes[kind](*call))
                    wall[kind].append(time.perf_counter() - t0)
                    cpu[kind].append(time.process_time() - c0)
            print(json.dumps({"shading": shading, "rays": rays, "samples": samples, "chunk": chunk,
                              "repeats": repeats, "wall": wall, "cpu": cpu, "compile_s": compile_s, "loss": losses,
                              "load": [round(load0, 1), round(os.getloadavg()[0], 1)]}), flush=True)


def remat_rows(bench, args):
    """Rows "remat ...": min wall / CPU time of single, chunked and remat steps and their ratios."""
    import json
    import subprocess

    spec = dict(config=args.config, shadings=args.remat_shadings, rays=args.remat_rays, samples=args.remat_samples,
                chunk=args.remat_chunk, repeats=args.remat_repeats)
    for mode in args.remat_threading:
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f] + REMAT_THREADING[mode]
        env = dict(os.environ, XLA_FLAGS=" ".join(flags))
        # the worker's lines are echoed as they come (a run stopped early still shows its finished cases)
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--remat-worker", json.dumps(spec)],
                                env=env, stdout=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            print(f"[remat worker, {mode} threading] {line.rstrip()}", flush=True)
            if line.startswith("{"):
                lines.append(line)
        if proc.wait() != 0:
            raise RuntimeError(f"benchmarks/four_d.py: remat worker ({mode} threading) failed (exit {proc.returncode})")
        for line in lines:
            r = json.loads(line)
            wall = {k: min(v) for k, v in r["wall"].items()}
            cpu = {k: min(v) for k, v in r["cpu"].items()}
            row = bench.add(f"remat {r['shading']} {r['rays']}x{r['samples']} XLA {mode}", threading=mode,
                            shading=r["shading"], rays=r["rays"], samples=r["samples"], chunk=r["chunk"],
                            repeats=r["repeats"])
            for k in REMAT_KINDS:
                row[f"{k}_wall_s"] = round(wall[k], 4)
                row[f"{k}_cpu_s"] = round(cpu[k], 4)
            row["remat/chunked_wall"] = round(wall["remat"] / wall["chunked"], 3)
            row["remat/chunked_cpu"] = round(cpu["remat"] / cpu["chunked"], 3)
            row["remat/single_wall"] = round(wall["remat"] / wall["single"], 3)
            row["remat/single_cpu"] = round(cpu["remat"] / cpu["single"], 3)
            if "forward" in wall:  # (2 F + B) / (F + B) with B = chunked - F: the cost of one recomputed forward
                for unit, tm in (("wall", wall), ("cpu", cpu)):
                    f_, b_ = tm["forward"], tm["chunked"] - tm["forward"]
                    row[f"expected_remat/chunked_{unit}"] = round((2 * f_ + b_) / (f_ + b_), 3)
            row["load"] = r["load"]
            row["loss"] = r["loss"]  # the same loss up to the jitter keys (chunks fold the chunk index in)
            row["compile_s"] = {k: round(v, 2) for k, v in r["compile_s"].items()}
            row["all_wall_s"] = {k: [round(x, 4) for x in v] for k, v in r["wall"].items()}
            row["all_cpu_s"] = {k: [round(x, 4) for x in v] for k, v in r["cpu"].items()}
            print(json.dumps({"name": row["name"], **{k: v for k, v in row.items() if "ratio" in k or "/" in k}}),
                  flush=True)


# --- XLA memory analysis of the SDS-sized clip ------------------------------------------------------------


def memory_rows(bench, args):
    """Rows "memory ...": compiled temporaries of the gradient of a 16 x 128 x 128 lambertian clip render."""
    cfg = get_config(args.config)
    model = field_from_config(cfg)
    fa = render.make_field_apply(model)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"])
    r = 16 * 128 * 128
    f32 = jnp.float32
    rays = (jax.ShapeDtypeStruct((r, 3), f32), jax.ShapeDtypeStruct((r, 3), f32), jax.ShapeDtypeStruct((r,), f32),
            jax.ShapeDtypeStruct((r, 3), f32), jax.ShapeDtypeStruct((r, 3), f32), jax.ShapeDtypeStruct((), jnp.int32))
    for samples in args.mem_samples:
        for chunk in [None] + list(args.mem_chunks):
            def loss(p, o, d, t, light, axis, mode, chunk=chunk, samples=samples):
                kw = dict(num_samples=samples, shading=mode, ambient=0.3, light_dir=light, optical_axis=axis,
                          bg=jnp.ones(3))
                if chunk is None:  # one render of every ray: every sample's activations are kept
                    out = render.render_rays(fa, p, o, d, t, jax.random.PRNGKey(1), **kw)
                else:
                    out = render.render_rays_chunked(fa, p, o, d, t, jax.random.PRNGKey(1), chunk=chunk, remat=True,
                                                     **kw)
                return jnp.mean(out["rgb"]) + jnp.mean(out["depth"])

            ctime, exe = compile_time(jax.jit(jax.grad(loss)), params, *rays)
            ma = exe.memory_analysis()
            name = "no remat (one render)" if chunk is None else f"remat, chunks of {chunk} rays"
            bench.add(f"memory 16x128x128 lambertian S={samples} {name}", rays=r, samples=samples,
                      temp_gib=round(ma.temp_size_in_bytes / 2**30, 3),
                      args_gib=round(ma.argument_size_in_bytes / 2**30, 3), compile_s=round(ctime, 2))


def train_step_rows(bench, cfg, model, rays, n_steps):
    """Rows "train step dense S" and "train step skip S_occ": rays/s over n_steps consecutive steps.

    The skipping run starts at step 0 with warm-up 0, so its n_steps include ceil(n / update_every)
    occupancy refreshes (amortised, as in training); `refresh_s` is one refresh measured separately.
    """
    import time

    mesh = fit_lib.make_mesh()
    rc = cfg.render
    for occ in (False, True):
        c = cfg.copy_and_resolve_references()
        c.fit.use_occupancy = occ
        c.fit.occupancy_warmup = 0
        opt = fit_lib.make_optimizer(c)
        step = fit_lib.make_train_step(c, model, opt, rays, np.ones(3, np.float32), mesh)
        state = fit_lib.init_state(c, model, opt)
        ctime, compiled = compile_time(step, state, rays)
        jax.block_until_ready(compiled(state, rays))  # warm-up (state donated; a fresh one is made below)
        state = fit_lib.init_state(c, model, opt)
        t0 = time.perf_counter()
        for _ in range(n_steps):
            state, m = compiled(state, rays)
        jax.block_until_ready(state)
        per = (time.perf_counter() - t0) / n_steps
        s = int(rc.occupancy_num_samples if occ else rc.num_samples)
        row = bench.add(f"train step {'skip' if occ else 'dense'} S={s}", compile_s=round(ctime, 3),
                        median_s=round(per, 4), rays_per_s=round(cfg.fit.batch_rays / per), samples=s,
                        batch=cfg.fit.batch_rays, steps=n_steps)
        if occ:
            row["refreshes"] = -(-n_steps // int(rc.occupancy_update_every))
            row["occupied_fraction"] = round(float(m["occupied_fraction"]), 4)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None)
    p.add_argument("--sections", nargs="+", default=["memory", "remat", "lambertian", "train", "render"],
                   choices=["memory", "remat", "lambertian", "train", "render"])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 400])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-factor", type=int, default=4, help="skipping renders use num_samples / this")
    p.add_argument("--occ-updates", type=int, default=4)
    p.add_argument("--coarse-samples", type=int, default=None, help="default: config render.coarse_samples")
    p.add_argument("--train-steps", type=int, default=16, help="timed steps per training row")
    p.add_argument("--mem-samples", type=int, nargs="+", default=[64, 256])
    p.add_argument("--mem-chunks", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--lam-rays", type=int, default=4096)
    p.add_argument("--lam-samples", type=int, default=64)
    p.add_argument("--remat-rays", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--remat-samples", type=int, default=64)
    p.add_argument("--remat-chunk", type=int, default=256, help="rays per chunk of the chunked renders")
    p.add_argument("--remat-shadings", nargs="+", default=["albedo", "lambertian"], choices=["albedo", "lambertian"])
    p.add_argument("--remat-threading", nargs="+", default=["single", "default"], choices=list(REMAT_THREADING))
    p.add_argument("--remat-repeats", type=int, default=5, help="timed rounds after the warm-up (min is reported)")
    p.add_argument("--remat-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/four_d.json)")
    p.add_argument("--before-commit", default="76306b7",
                   help="git commit of the 'before' lambertian row (pre-issue-8 main); '' skips it")
    p.add_argument("--repo", default=None, help="git checkout holding --before-commit (default: this one)")
    args = p.parse_args(argv)
    if args.remat_worker is not None:
        import json

        return remat_worker(json.loads(args.remat_worker))
    if args.remat_repeats < 1:
        raise SystemExit(f"benchmarks/four_d.py: --remat-repeats must be >= 1, got {args.remat_repeats}")

    cfg = get_config(args.config)
    rc = cfg.render
    if args.coarse_samples is None:
        args.coarse_samples = int(rc.coarse_samples)
    bench = Bench("four_d")
    bench.meta["config"] = args.config or "default"
    bench.meta["sections"] = args.sections
    model = field_from_config(cfg)
    field_apply = render.make_field_apply(model)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]

    if "memory" in args.sections:
        memory_rows(bench, args)
    if "remat" in args.sections:
        remat_rows(bench, args)
    if "lambertian" in args.sections:
        lambertian_rows(bench, args)
    if "train" in args.sections:
        # --- train step: uniform sampling vs empty-space skipping -------------------------------
        n_frames, hw = 4, 64 * 64
        rs = np.random.default_rng(0)
        cam = reference_camera(size=64)
        from kernels.camera import camera_rays

        o, d = camera_rays(cam["poses"], cam["K"], 64, 64)
        rays = {
            "origins": jnp.broadcast_to(o.reshape(1, hw, 3), (n_frames, hw, 3)),
            "directions": jnp.broadcast_to(d.reshape(1, hw, 3), (n_frames, hw, 3)),
            "rgb": jnp.asarray(rs.random((n_frames, hw, 3)), jnp.float32),
            "times": jnp.linspace(0.0, 1.0, n_frames),
            "axes": jnp.broadcast_to(jnp.asarray(cam["poses"])[2, :3], (n_frames, 3)),
        }
        train_step_rows(bench, cfg, model, rays, args.train_steps)
    if "render" in args.sections:
        # --- occupancy ----------------------------------------------------------------------------
        grid = render.init_occupancy(rc.occupancy_resolution, rc.occupancy_time_bins)
        dens = lambda x, t: field_apply(params, x, t, None)["sigma"]
        upd = jax.jit(lambda g, k: render.update_occupancy(g, dens, k, bound=rc.bound, decay=rc.occupancy_decay))
        row = bench.time(f"occupancy update {rc.occupancy_time_bins}x{rc.occupancy_resolution}^3", upd, grid,
                         jax.random.key(0), repeats=1)
        for i in range(args.occ_updates):
            grid = upd(grid, jax.random.key(i))
        mask = render.occupancy_mask(grid, rc.density_threshold)
        row["occupied_fraction"] = round(float(mask.mean()), 4)

        # --- rendering ------------------------------------------------------------------------------
        s_dense = int(rc.num_samples)
        s_skip = max(1, s_dense // args.skip_factor)
        for size in args.sizes:
            cam = reference_camera(size=size)
            common = dict(chunk=int(rc.chunk), bound=rc.bound, min_near=rc.min_near, bg=jnp.ones(3), jitter=False)
            dense = render.make_image_renderer(field_apply, size, size, num_samples=s_dense, **common)
            skip = render.make_image_renderer(field_apply, size, size, num_samples=s_skip, occupancy=mask,
                                              coarse_samples=args.coarse_samples, **common)
            t = jnp.float32(0.5)
            outs = {}
            for name, fn, s in (("dense", dense, s_dense), ("skip", skip, s_skip)):
                call = (params, cam["poses"], cam["K"], t, None, fn.traced)
                ctime, exe = compile_time(fn.compiled, *call)
                med, _ = time_callable(exe, *call, repeats=args.repeats)
                outs[name] = exe(*call)
                bench.add(f"render {size}x{size} {name} S={s}", compile_s=round(ctime, 3), median_s=round(med, 4),
                          rays_per_s=round(size * size / med), samples=s)
            err = float(jnp.mean(jnp.abs(outs["skip"]["rgb"] - outs["dense"]["rgb"])))
            bench.rows[-1]["err_vs_dense"] = round(err, 5)
        analytic_error(bench, s_dense, s_skip, args.coarse_samples)
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 3)
    bench.add("peak memory", peak_rss_gib=round(peak_rss_gib(), 3))
    bench.report(args.out)


if __name__ == "__main__":
    main()
