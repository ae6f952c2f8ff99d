"""Benchmark four_d rendering and fitting: rays/s, compile time, peak memory; occupancy skipping on/off.

    python benchmarks/four_d.py [--config tiny|paper] [--sizes 128 400] [--repeats 3]

Rows:
- "train step dense S" / "train step skip S": jitted fit steps (config.fit.batch_rays rays) with uniform
  sampling (render.num_samples) and with empty-space skipping (fit.use_occupancy, render.occupancy_num_samples
  over the occupied part of each ray; the occupancy refreshes every render.occupancy_update_every steps
  are included, amortised over --train-steps consecutive steps).
- "render HxW dense S": uniform stratified sampling with S = config.render.num_samples.
- "render HxW skip S/k": occupancy-guided two-pass sampling (four_d/render.py) with S / k samples;
  `err_vs_dense` is the mean |rgb difference| against the dense render. The occupancy grid comes from
  the freshly initialised field (density blob), refreshed `--occ-updates` times as in training. NOTE:
  the untrained blob has a wide semi-transparent halo with 1 < sigma < 10 which the official threshold
  min(mean, 10) marks empty, so err_vs_dense on the blob measures the official skipping semantics, not
  quadrature error. Quadrature error is measured separately ("analytic ...") on two opaque balls with
  exact zero density outside (tests/test_render4d.py scene), against a 2048-sample reference.
- "occupancy update": one refresh of all B G^3 cells.
Writes benchmarks/results/four_d.json.
"""

import argparse
import os
import sys

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
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 400])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-factor", type=int, default=4, help="skipping renders use num_samples / this")
    p.add_argument("--occ-updates", type=int, default=4)
    p.add_argument("--coarse-samples", type=int, default=None, help="default: config render.coarse_samples")
    p.add_argument("--train-steps", type=int, default=16, help="timed steps per training row")
    args = p.parse_args(argv)

    cfg = get_config(args.config)
    rc = cfg.render
    if args.coarse_samples is None:
        args.coarse_samples = int(rc.coarse_samples)
    bench = Bench("four_d")
    bench.meta["config"] = args.config or "default"
    model = field_from_config(cfg)
    field_apply = render.make_field_apply(model)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]

    # --- train step: uniform sampling vs empty-space skipping -----------------------------------
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
    }
    train_step_rows(bench, cfg, model, rays, args.train_steps)
    # --- occupancy --------------------------------------------------------------------------------
    grid = render.init_occupancy(rc.occupancy_resolution, rc.occupancy_time_bins)
    dens = lambda x, t: field_apply(params, x, t, None)["sigma"]
    upd = jax.jit(lambda g, k: render.update_occupancy(g, dens, k, bound=rc.bound, decay=rc.occupancy_decay))
    row = bench.time(f"occupancy update {rc.occupancy_time_bins}x{rc.occupancy_resolution}^3", upd, grid,
                     jax.random.key(0), repeats=1)
    for i in range(args.occ_updates):
        grid = upd(grid, jax.random.key(i))
    mask = render.occupancy_mask(grid, rc.density_threshold)
    row["occupied_fraction"] = round(float(mask.mean()), 4)

    # --- rendering ----------------------------------------------------------------------------------
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
            ctime, exe = compile_time(fn, params, cam["poses"], cam["K"], t)
            med, _ = time_callable(exe, params, cam["poses"], cam["K"], t, repeats=args.repeats)
            outs[name] = exe(params, cam["poses"], cam["K"], t)
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
