"""Speed, FLOPs and memory of the layering networks at their real sizes (random weights, no checkpoint).

  inpaint depth net / colour net   3D-Photo partial-conv U-Nets (official widths) at 768 x 768 (forward_3p:
                                   768 is already a multiple of 128, so the padded size is 768 x 768)
  inpaint_rgbd                     both nets plus the official pre/post-processing of one LDI layer
  DPT-Hybrid                       the official dpt_hybrid network at its 384 x 672 input (a 1280 x 720 photo)

Weights are created with jax.eval_shape(init) + NumPy random leaves (no slow initialisers). Per case: XLA
FLOPs per call (compiled cost analysis), compile time, median seconds per call; peak RSS at the end.

Usage: python benchmarks/nets_depth.py [--repeats 3] [--bf16] [--only inpaint|dpt]
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from benchmarks.harness import Bench, compile_time, peak_rss_gib, time_callable
from cine_jax.nets import dpt, inpaint


def random_variables(module, example, seed=0):
    """Parameters of `module` for `example` input: eval_shape(init) + NumPy normal leaves scaled by fan-in
    (BatchNorm variances uniform in [0.5, 1.5])."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), example)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
        fan = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan) if len(s.shape) > 1 else 0.02
        return jnp.asarray(rng.normal(size=s.shape).astype(np.float32) * scale + ("scale" in name))

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def flops_of(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def run_case(bench, name, fn, args, repeats, **extra):
    jitted = jax.jit(fn)
    ctime, compiled = compile_time(jitted, *args)
    median, _ = time_callable(compiled, *args, repeats=repeats)
    fl = flops_of(compiled)
    bench.add(name, gflops=round(fl / 1e9, 2), compile_s=round(ctime, 2), median_s=round(median, 3),
              gflop_per_s=round(fl / 1e9 / median, 1), **extra)


def inpaint_cases(bench, repeats, dtypes, size=768):
    rng = np.random.default_rng(0)
    ctx = (rng.random((size, size)) > 0.3).astype(np.float32)
    hol = 1.0 - ctx
    for dtype in dtypes:
        tag = jnp.dtype(dtype).name
        nets = {}
        for kind, cfg in (("depth", inpaint.DEPTH_NET), ("colour", inpaint.COLOR_NET)):
            net = inpaint.PartialConvUNet(cfg, dtype=dtype)
            variables = random_variables(net, jnp.zeros((1, 128, 128, cfg.in_channels)), seed=len(nets))
            nets[kind] = (net, variables)
            x = rng.normal(size=(1, size, size, cfg.in_channels)).astype(np.float32)
            x[..., -2], x[..., -1] = ctx, hol
            run_case(bench, f"inpaint {kind} net {size}x{size} ({tag})",
                     lambda v, x, net=net: inpaint.forward_3p(net, v, x), (variables, jnp.asarray(x)), repeats,
                     padded=f"{size}x{size}")
        (dn, dv), (cn, cv) = nets["depth"], nets["colour"]
        rgb = jnp.asarray(rng.random((size, size, 3)).astype(np.float32))
        depth = jnp.asarray(rng.uniform(1, 10, (size, size)).astype(np.float32))
        run_case(bench, f"inpaint_rgbd (both nets + pre/post) {size}x{size} ({tag})",
                 functools.partial(inpaint.inpaint_rgbd, dn, cn),
                 (dv, cv, rgb, depth, jnp.asarray(ctx), jnp.asarray(hol)), repeats, padded=f"{size}x{size}")


def dpt_cases(bench, repeats, dtypes, hw=(384, 672)):
    cfg = dpt.DPTHybridConfig()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, *hw, 3)).astype(np.float32))
    for dtype in dtypes:
        net = dpt.DPTHybrid(cfg, dtype=dtype)
        variables = random_variables(net, x, seed=3)
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
        run_case(bench, f"DPT-Hybrid {hw[0]}x{hw[1]} ({jnp.dtype(dtype).name})", net.apply, (variables, x), repeats,
                 params_m=round(n_params / 1e6, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also run bfloat16 compute (slow on CPU)")
    ap.add_argument("--only", choices=("inpaint", "dpt"))
    args = ap.parse_args()
    dtypes = [jnp.float32] + ([jnp.bfloat16] if args.bf16 else [])
    bench = Bench("nets_depth")
    steps = [s for s in ("inpaint", "dpt") if args.only in (None, s)]
    for step in tqdm(steps, desc="nets_depth"):
        (inpaint_cases if step == "inpaint" else dpt_cases)(bench, args.repeats, dtypes)
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 2)
    bench.add("peak RSS (whole run)", peak_rss_gib=round(peak_rss_gib(), 2))
    bench.report()


if __name__ == "__main__":
    main()
