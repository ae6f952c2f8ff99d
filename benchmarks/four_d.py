"""Benchmark four_d rendering and fitting: rays/s, compile time, peak memory, XLA memory analysis.

    python benchmarks/four_d.py [--config tiny|paper] [--sizes 128 400] [--repeats 3]
                                [--sections memory lambertian train render]

Sections:
- memory: XLA's memory analysis of the COMPILED gradient of a training render (no run): a 16-frame
  128x128 clip (262,144 rays) with lambertian shading (finite-difference normals), the default field,
  at 64 and 256 samples per ray, without rematerialisation (one render of all rays, the design before
  issue 8) and with render_rays_chunked under jax.checkpoint (--mem-chunks rays per chunk).
  `temp_gib` is the compiled program's temporary buffers (what the step needs besides its inputs).
- lambertian: rays/s of the lambertian training step (value and gradient of an MSE through a render
  of --lam-rays rays at --lam-samples samples, a size that fits without remat): "before" is the
  pre-issue-8 code (git commit --before-commit: six field calls for the normal probes, two gathers per
  time pair, no chunks), run from a `git archive` of that commit in a subprocess; "after" the current
  render_rays in one call, and render_rays_chunked without / with jax.checkpoint (ratio to the
  unchunked step in `vs_single`). Every row also gives the process CPU time of a step (`cpu_s`; wall
  time on the shared machine depends on the other jobs), and the remat row the issue-8 ratio remat on /
  off (target <= 1.4) in wall (`remat_ratio_wall`) and CPU time (`remat_ratio_cpu`).
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
Writes benchmarks/results/four_d.json.
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
    """Rows "lambertian step ...": rays/s before (git commit) and after, and chunked with/without remat."""
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

    cfg = get_config(args.config)
    model = field_from_config(cfg)
    fa = render.make_field_apply(model)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    from kernels.camera import camera_rays, intrinsics_from_fov, look_at

    side = int(np.ceil(np.sqrt(rays)))
    o, d = camera_rays(look_at((0.3, 0.4, 1.7), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)),
                       intrinsics_from_fov(40.0, side, side), side, side)
    o, d = o.reshape(-1, 3)[:rays], d.reshape(-1, 3)[:rays]
    t = jnp.linspace(0.0, 1.0, rays)
    target = jax.random.uniform(jax.random.PRNGKey(2), (rays, 3))
    light = jnp.array([0.3, 0.8, 0.52]) / jnp.linalg.norm(jnp.array([0.3, 0.8, 0.52]))
    wall_chunked, cpu_chunked = {}, {}
    for remat in (False, True):
        def loss(p, remat=remat):
            out = render.render_rays_chunked(fa, p, o, d, t, jax.random.PRNGKey(1), chunk=args.lam_chunk, remat=remat,
                                             num_samples=samples, shading="lambertian", ambient=0.3, light_dir=light,
                                             bg=jnp.ones(3))
            return jnp.mean((out["rgb"] - target) ** 2)

        ctime, exe = compile_time(jax.jit(jax.value_and_grad(loss)), params)
        med, _ = time_callable(exe, params, repeats=args.repeats)
        cpu = []
        for _ in range(args.repeats):  # process CPU time: much less disturbed by other jobs than wall time
            c0 = time.process_time()
            jax.block_until_ready(exe(params))
            cpu.append(time.process_time() - c0)
        cpu_chunked[remat] = float(np.median(cpu))
        row = dict(compile_s=round(ctime, 2), median_s=round(med, 4), rays_per_s=round(rays / med),
                   vs_single=round(med / single, 2), cpu_s=round(cpu_chunked[remat], 4))
        if remat:  # the issue-8 target: remat step <= 1.4x the non-remat chunked step
            wall_chunked[True] = med
            row["remat_ratio_wall"] = round(med / wall_chunked[False], 2)
            row["remat_ratio_cpu"] = round(cpu_chunked[True] / cpu_chunked[False], 2)
        wall_chunked[remat] = med
        bench.add(f"lambertian step chunked {args.lam_chunk} remat={'on' if remat else 'off'}", **size, **row)


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
    p.add_argument("--sections", nargs="+", default=["memory", "lambertian", "train", "render"],
                   choices=["memory", "lambertian", "train", "render"])
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
    p.add_argument("--lam-chunk", type=int, default=1024)
    p.add_argument("--before-commit", default="76306b7",
                   help="git commit of the 'before' lambertian row (pre-issue-8 main); '' skips it")
    p.add_argument("--repo", default=None, help="git checkout holding --before-commit (default: this one)")
    args = p.parse_args(argv)

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
    bench.report()


if __name__ == "__main__":
    main()
