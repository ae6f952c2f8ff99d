"""Network benchmarks: the motion estimator, the feature net and the image decoder at 768 x 768.

    python benchmarks/nets.py [--size 768] [--layers 4] [--repeats 3] [--no-breakdown] [--bf16-size 256]

For each network (official widths, random weights built from `jax.eval_shape` + NumPy, no init compile):
FLOPs per call from XLA's cost analysis (`cine_jax.nets.flops_per_call`, on a lowering without
conv_nhwc's CPU workaround so that only the network's own work counts), compile time, median wall and
process-CPU seconds per call, and achieved FLOP/s against this machine's float32 matmul peak measured in the
same run (the best of jitted square matmuls of 1024..4096), both per wall second (pct_of_matmul_peak) and
per CPU second (pct_of_matmul_peak_cpu: the same ratio computed from CPU time, which other jobs on a
shared machine disturb far less than wall time). XLA's memory analysis gives temporaries and
arguments + outputs. The feature net runs on a stack of `--layers` LDI layers (one call per image); the
motion net once per image; the decoder once per frame.

The decoder breakdown (`--no-breakdown` to skip) shows what decides its efficiency: one 3x3 conv as the
decoder runs it (cine_jax.nets.conv_nhwc) beside the unpadded XLA conv it avoids, the 7x7 first conv,
GroupNorm + PReLU, the last x2 upsampling, and the decoder with GroupNorm removed (not the real network:
the share of the normalisation).

bfloat16: each network is run once in float32 and once with bfloat16 params / activations at --bf16-size
(CPU bfloat16 convolutions are slow, so not at 768) and the relative error max|bf16 - f32| / max|f32| is
reported (the tests check the building blocks at <= 5e-2).

Prints a table and writes benchmarks/results/nets.json.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Bench, compile_time, peak_rss_gib
from cine_jax import nets
from cine_jax.nets import cast_floating, conv_nhwc, flops_per_call, upsample2x
from cine_jax.nets import decoder as D
from cine_jax.nets import features as FT
from cine_jax.nets import motion as M


def random_variables(module, seed=0):
    """Variables of module with random leaves (He-scaled kernels, spectral vectors unit-norm), no compile."""
    template = jax.eval_shape(module.init, jax.random.key(0), *module.dummy_inputs())
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = spec.shape
        if len(shape) == 4:
            return jnp.asarray(rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:3])), jnp.float32)
        if name in ("weight_u", "weight_v"):
            v = rng.normal(size=shape)
            return jnp.asarray(v / np.linalg.norm(v), jnp.float32)
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=shape), jnp.float32)
        if name == "weight":  # PReLU slope
            return jnp.full(shape, 0.25, jnp.float32)
        if name == "alpha":
            return jnp.asarray(2.0, jnp.float32)
        return jnp.asarray(0.05 * rng.normal(size=shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, template)


def time_wall_cpu(compiled, *args, repeats=3):
    """(median wall seconds, median process CPU seconds) per call after one warm-up call."""
    jax.block_until_ready(compiled(*args))
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))


def matmul_peak(repeats):
    """Best float32 matmul FLOP/s over square sizes (the roofline reference of this machine): returns
    (best FLOP per wall second, best FLOP per CPU second, size of the best wall time), each the maximum
    over the sizes. CPU seconds are what load from other jobs disturbs least."""
    best_wall, best_cpu, best_n = 0.0, 0.0, 0
    for n in (1024, 2048, 4096):
        a = jnp.asarray(np.random.default_rng(n).normal(size=(n, n)), jnp.float32)
        _, compiled = compile_time(jax.jit(lambda x, y: x @ y), a, a)
        wall, cpu = time_wall_cpu(compiled, a, a, repeats=repeats)
        if 2.0 * n**3 / wall > best_wall:
            best_wall, best_n = 2.0 * n**3 / wall, n
        best_cpu = max(best_cpu, 2.0 * n**3 / cpu)
    return best_wall, best_cpu, best_n


def _memory_gib(compiled):
    """(temporaries, arguments + outputs) GiB of a compiled executable (XLA memory analysis)."""
    try:
        m = compiled.memory_analysis()
        io = m.argument_size_in_bytes + m.output_size_in_bytes
        return round(m.temp_size_in_bytes / 2**30, 2), round(io / 2**30, 2)
    except Exception:  # not every backend reports it
        return None, None


def useful_flops(fn, *args):
    """FLOPs of the network itself: counted on a lowering without conv_nhwc's CPU workaround, whose few
    extra border outputs (discarded) would otherwise count as achieved work."""
    nets.PAD_UNPADDED_CONVS_ON_CPU = False
    try:
        return flops_per_call(jax.jit(fn).lower(*args))
    finally:
        nets.PAD_UNPADDED_CONVS_ON_CPU = True


def timed_row(bench, name, fn, *args, peak, repeats, note=""):
    """Compile fn for args, count its FLOPs, time it; add and print the row. peak = matmul_peak(...)."""
    ctime, compiled = compile_time(jax.jit(fn), *args)
    flops = useful_flops(fn, *args)
    wall, cpu = time_wall_cpu(compiled, *args, repeats=repeats)
    temp, io = _memory_gib(compiled)
    row = bench.add(
        name,
        gflop=round(flops / 1e9, 2),
        compile_s=round(ctime, 2),
        median_s=round(wall, 3),
        cpu_s=round(cpu, 3),
        gflop_per_s=round(flops / wall / 1e9, 1),
        pct_of_matmul_peak=round(100.0 * flops / wall / peak[0], 1),
        pct_of_matmul_peak_cpu=round(100.0 * flops / cpu / peak[1], 1),
        temp_gib=temp,
        args_out_gib=io,
        note=note,
    )
    print(row, flush=True)
    return row


def bench_net(bench, name, module, variables, args, peak, repeats, note=""):
    return timed_row(bench, name, module.apply, variables, *args, peak=peak, repeats=repeats, note=note)


def bf16_error(module, variables, args):
    want = jax.jit(module.apply)(variables, *args)
    m16 = module.clone(dtype=jnp.bfloat16)
    got = jax.jit(m16.apply)(cast_floating(variables, jnp.bfloat16), *args)
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def inputs(kind, size, layers, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "motion":
        x = rng.uniform(-1, 1, (1, size, size, 6)).astype(np.float32)
        x[..., 3] = (x[..., 3] > 0).astype(np.float32)
        return (jnp.asarray(x),)
    if kind == "features":
        return (jnp.asarray(rng.uniform(0, 1, (layers, size, size, 4)), jnp.float32),)
    x = rng.uniform(0, 1, (2, 1, size, size, 37)).astype(np.float32)
    return (jnp.asarray(x[0]), jnp.asarray(x[1]), 0.4)


def decoder_breakdown(bench, size, peak, repeats):
    """What decides the decoder's efficiency (see the module docstring)."""
    rng = np.random.default_rng(1)

    def row(name, fn, *args, note=""):
        timed_row(bench, name, fn, *args, peak=peak, repeats=repeats, note=note)

    dn = ("NHWC", "HWIO", "NHWC")
    half = size // 2
    x64 = jnp.asarray(rng.normal(size=(1, half, half, 64)), jnp.float32)
    k3 = jnp.asarray(rng.normal(size=(3, 3, 64, 64)) * 0.05, jnp.float32)
    row(f"  3x3 conv 64->64 @{half}, reflect pad, cine_jax.nets.conv_nhwc",
        lambda x, k: conv_nhwc(x, k, 1, 1, "reflect", jnp.float32, None), x64, k3, note="what the decoder runs")
    xp = jnp.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    row("  same conv as an unpadded (VALID) XLA conv on the padded input",
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dn), xp, k3,
        note="XLA:CPU slow path conv_nhwc avoids")
    x37 = jnp.asarray(rng.normal(size=(1, size, size, 37)), jnp.float32)
    k7 = jnp.asarray(rng.normal(size=(7, 7, 37, 32)) * 0.02, jnp.float32)
    row(f"  firstconv 7x7 37->32 @{size}", lambda x, k: conv_nhwc(x, k, 1, 3, "zeros", jnp.float32, None), x37, k7)
    gn = D.GroupNorm()
    gnv = {"params": {"scale": jnp.ones(64), "bias": jnp.zeros(64)}}
    pr = D.PReLU()
    prv = {"params": {"weight": jnp.full((1,), 0.25)}}
    row(f"  GroupNorm + PReLU 64 ch @{half}", lambda x: pr.apply(prv, gn.apply(gnv, x)), x64, note="memory bound")
    x32 = jnp.asarray(rng.normal(size=(1, half, half, 32)), jnp.float32)
    row(f"  x2 upsampling {half}->{size}, 32 ch (align_corners=True)", lambda x: upsample2x(x, True), x32,
        note="kernels.sampling.resize gathers")

    # The decoder without its normalisation: what the convolutions alone allow.
    class _NoNorm(D.GroupNorm):
        @nn.compact
        def __call__(self, x):
            self.param("scale", jax.nn.initializers.ones, (x.shape[-1],))
            self.param("bias", jax.nn.initializers.zeros, (x.shape[-1],))
            return x

    saved = D.GroupNorm
    D.GroupNorm = _NoNorm
    try:
        module = D.ImgDecoder()
        variables = random_variables(module, seed=5)
        row(f"  decoder without GroupNorm @{size}", module.apply, variables, *inputs("decoder", size, 1),
            note="not the real network: the GroupNorm share")
    finally:
        D.GroupNorm = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4, help="LDI layers stacked into one feature-net call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16-size", type=int, default=256)
    ap.add_argument("--no-breakdown", action="store_true")
    args = ap.parse_args()

    bench = Bench("nets")
    t0 = time.perf_counter()
    wall_peak, cpu_peak, n = matmul_peak(args.repeats)
    peak = (wall_peak, cpu_peak)
    bench.meta["matmul_peak_gflop_per_s"] = round(wall_peak / 1e9, 1)
    bench.meta["matmul_peak_gflop_per_cpu_s"] = round(cpu_peak / 1e9, 1)
    bench.meta["matmul_peak_size"] = n
    print(bench.add(f"float32 matmul {n}x{n} (peak reference)", gflop=round(2 * n**3 / 1e9, 2),
                    gflop_per_s=round(wall_peak / 1e9, 1), pct_of_matmul_peak=100.0,
                    pct_of_matmul_peak_cpu=100.0), flush=True)

    nets = {
        "motion": (M.SPADEUnet4MaskMotion(), "one call per image (power iteration on)"),
        "features": (FT.ResUNet(), f"one call on a stack of {args.layers} layers"),
        "decoder": (D.ImgDecoder(), "one call per frame, official blend included"),
    }
    for seed, (kind, (module, note)) in enumerate(nets.items()):
        variables = random_variables(module, seed)
        size = args.size
        row = bench_net(bench, f"{kind} @{size}", module, variables, inputs(kind, size, args.layers), peak,
                        args.repeats, note)
        bsize = max(args.bf16_size, 256) if kind == "motion" else args.bf16_size
        row["bf16_rel_err"] = round(bf16_error(module, variables, inputs(kind, bsize, 2, seed=7)), 4)
        row["bf16_size"] = bsize
        row["peak_rss_gib_so_far"] = round(peak_rss_gib(), 2)
        print(f"  bf16 relative error at {bsize}: {row['bf16_rel_err']}", flush=True)
        if kind == "decoder" and not args.no_breakdown:
            decoder_breakdown(bench, size, peak, args.repeats)
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 2)
    bench.meta["total_s"] = round(time.perf_counter() - t0, 1)
    bench.meta["note"] = "2 CPU cores shared with other jobs: timings are disturbed"
    bench.report()


if __name__ == "__main__":
    main()
