"""ModelScope UNet3D (four_d.priors.unet3d): speed on a tiny config beside diffusers PyTorch, memory at real size.

(a) Tiny config at the paper's latent shape (CFG pair x 16 frames x 32 x 32): the jitted forward, an SDS-style
    step (noise the latents, CFG-pair forward, guidance, w(t) (eps_hat - eps); the UNet is frozen, nothing is
    differentiated through it), and for reference the forward + VJP w.r.t. the latents; beside diffusers'
    PyTorch UNet3DConditionModel on the CPU with the same weights (forward under no_grad, forward + backward).
(b) ModelScope T2V 1.7B at real size without weights: parameter count from jax.eval_shape, and the XLA memory
    analysis of the compiled CFG forward (batch 2 = uncond + cond) at latents (2, 4, 16, 32, 32), float32 and
    bfloat16, with and without memory-efficient attention, and of a forward + VJP w.r.t. the latents.
    Issue 10's target: the coarse stage's video SDS step in bfloat16 under 24 GB (params + temporaries).

    python benchmarks/unet3d.py                # both parts (part b compiles 1.4B-parameter graphs: minutes)
    python benchmarks/unet3d.py --skip-real    # part (a) only
"""

import argparse
import os
import sys
import time

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from benchmarks.harness import Bench, compile_time, time_callable
from four_d.priors.unet3d import (
    MODELSCOPE_T2V_UNET_CONFIG,
    FlaxUNet3DConditionModel,
    convert_torch_state_dict,
    count_params,
)

GB = 1e9
TEXT_LEN = 77  # CLIP context length of ModelScope's OpenCLIP-H text encoder (cross_attention_dim 1024)
GUIDANCE = 100.0  # reference/animate124.md section 4: CFG eps_c + 100 (eps_c - eps_u) for the video prior
TINY = dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
            cross_attention_dim=32, down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))


def ddpm_alphas_cumprod(steps=1000, beta_start=0.00085, beta_end=0.012):
    """ModelScope's scheduler (scaled_linear betas 0.00085..0.012, 1000 steps) -> alpha_bar_t."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
    return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def make_functions(module):
    alphas = ddpm_alphas_cumprod()

    def unet(params, x, t, ctx):
        return module.apply({"params": params}, x, t, ctx)

    def sds_grad(params, latents, noise, t, ctx_pair):
        """One video SDS gradient on latents [1, 4, F, H, W]: CFG pair through the frozen UNet, w = 1 - alpha_bar."""
        a = alphas[t]
        noisy = jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise
        eps = unet(params, jnp.concatenate([noisy, noisy]).astype(module.dtype), jnp.stack([t, t]), ctx_pair)
        eps = jax.lax.stop_gradient(eps.astype(jnp.float32))
        eps_u, eps_c = eps[:1], eps[1:]
        eps_hat = eps_c + GUIDANCE * (eps_c - eps_u)
        return (1.0 - a) * (eps_hat - noise)

    def forward_vjp(params, x, t, ctx, cotangent):
        """Forward + VJP w.r.t. the latents (what SDS does NOT need; reference for backprop-through-UNet methods)."""
        out, pullback = jax.vjp(lambda s: unet(params, s, t, ctx), x)
        return out, pullback(cotangent.astype(out.dtype))[0]

    return unet, sds_grad, forward_vjp


def randomize_torch(model, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def bench_tiny(bench, frames, size, repeats):
    import torch
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    pt = UNet3DConditionModel(**TINY).eval()
    randomize_torch(pt)
    module = FlaxUNet3DConditionModel(**TINY)
    shapes = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
    params = convert_torch_state_dict({k: v.numpy() for k, v in pt.state_dict().items()}, shapes)
    unet, sds_grad, forward_vjp = make_functions(module)

    rng = np.random.default_rng(0)
    shape = (2, 4, frames, size, size)
    x = rng.normal(size=shape).astype(np.float32)
    t = np.array([500, 500], np.int32)
    ctx = rng.normal(size=(2, TEXT_LEN, TINY["cross_attention_dim"])).astype(np.float32)
    cot = rng.normal(size=shape).astype(np.float32)
    tag = f"tiny {TINY['block_out_channels']}, latents {shape}"

    # JAX
    ctime, fwd = compile_time(jax.jit(unet), params, x, t, ctx)
    jax_fwd, _ = time_callable(fwd, params, x, t, ctx, repeats=repeats)
    out = np.asarray(fwd(params, x, t, ctx))
    sds_args = (params, x[:1], cot[:1], jnp.int32(500), ctx)
    ctime_sds, sds = compile_time(jax.jit(sds_grad), *sds_args)
    jax_sds, _ = time_callable(sds, *sds_args, repeats=repeats)
    ctime_vjp, vjp = compile_time(jax.jit(forward_vjp), params, x, t, ctx, cot)
    jax_vjp, _ = time_callable(vjp, params, x, t, ctx, cot, repeats=repeats)
    jax_grad = np.asarray(vjp(params, x, t, ctx, cot)[1])

    # PyTorch (CPU, same weights)
    tx, tt, tc, tcot = (torch.from_numpy(a) for a in (x, t.astype(np.int64), ctx, cot))

    def torch_fwd():
        with torch.no_grad():
            return pt(tx, tt, tc).sample

    def torch_fwd_bwd():
        xs = tx.clone().requires_grad_(True)
        y = pt(xs, tt, tc).sample
        (g,) = torch.autograd.grad(y, xs, tcot)
        return g

    pt_fwd, _ = time_callable(torch_fwd, repeats=repeats)
    pt_bwd, _ = time_callable(torch_fwd_bwd, repeats=repeats)
    ref = torch_fwd().numpy()
    ref_grad = torch_fwd_bwd().numpy()
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    err_grad = float(np.linalg.norm(jax_grad - ref_grad) / np.linalg.norm(ref_grad))

    bench.add(f"{tag}: forward (CFG pair)", jax_s=round(jax_fwd, 4), torch_s=round(pt_fwd, 4),
              jax_over_torch=round(jax_fwd / pt_fwd, 3), compile_s=round(ctime, 2), rel_err=f"{err:.1e}")
    bench.add(f"{tag}: SDS step (noise, CFG forward, guidance, w(t))", jax_s=round(jax_sds, 4),
              torch_s=round(pt_fwd, 4), jax_over_torch=round(jax_sds / pt_fwd, 3), compile_s=round(ctime_sds, 2),
              note="torch column: its CFG forward alone")
    bench.add(f"{tag}: forward + VJP wrt latents", jax_s=round(jax_vjp, 4), torch_s=round(pt_bwd, 4),
              jax_over_torch=round(jax_vjp / pt_bwd, 3), compile_s=round(ctime_vjp, 2), rel_err=f"{err_grad:.1e}")
    print(f"tiny: params {count_params(params):,}; forward rel err vs PyTorch {err:.1e}, VJP {err_grad:.1e}")


def _abstract(tree, dtype):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), tree)


BF16_NOTE = "XLA:CPU computes bf16 dots/convs in f32 (converts): temporaries overstate a GPU's"


def memory_row(bench, name, fn, args, param_bytes, note=""):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    ctime = time.perf_counter() - t0
    m = compiled.memory_analysis()
    if m is None:
        bench.add(name, note="memory_analysis() unavailable on this backend", compile_s=round(ctime, 1))
        return
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    bench.add(name, params_gb=round(param_bytes / GB, 3), args_gb=round(m.argument_size_in_bytes / GB, 3),
              temp_gb=round(m.temp_size_in_bytes / GB, 3), out_gb=round(m.output_size_in_bytes / GB, 4),
              total_gb=round(total / GB, 3), under_24gb=bool(total < 24 * GB), compile_s=round(ctime, 1), note=note)


def bench_real(bench, frames, size, which):
    t0 = time.perf_counter()
    base = FlaxUNet3DConditionModel.from_config(MODELSCOPE_T2V_UNET_CONFIG)
    shapes = jax.eval_shape(base.init_weights, jax.random.PRNGKey(0))
    n = count_params(shapes)
    bench.add("ModelScope T2V UNet3D parameters (jax.eval_shape)", params=n, params_gb_f32=round(4 * n / GB, 3),
              params_gb_bf16=round(2 * n / GB, 3), compile_s=round(time.perf_counter() - t0, 1))
    print(f"ModelScope UNet3D: {n:,} parameters")
    cross = MODELSCOPE_T2V_UNET_CONFIG["cross_attention_dim"]
    f32, bf16 = jnp.float32, jnp.bfloat16
    jobs = [(f32, False, "forward"), (bf16, False, "forward"), (f32, True, "forward"), (bf16, True, "forward"),
            (bf16, False, "sds"), (bf16, True, "sds"),
            (f32, False, "vjp"), (bf16, False, "vjp"), (bf16, True, "vjp")]
    if which == "all":
        jobs += [(f32, False, "sds"), (f32, True, "sds"), (f32, True, "vjp")]
    for dtype, mem_eff, kind in tqdm(jobs, desc="real-size compiles"):
        module = FlaxUNet3DConditionModel.from_config(MODELSCOPE_T2V_UNET_CONFIG, dtype=dtype,
                                                      use_memory_efficient_attention=mem_eff)
        unet, sds_grad, forward_vjp = make_functions(module)
        p = _abstract(shapes, dtype)
        param_bytes = n * jnp.dtype(dtype).itemsize
        lat = jax.ShapeDtypeStruct((2, 4, frames, size, size), dtype)
        t2 = jax.ShapeDtypeStruct((2,), jnp.int32)
        ctx = jax.ShapeDtypeStruct((2, TEXT_LEN, cross), dtype)
        label = f"{jnp.dtype(dtype).name}{', mem-efficient attention' if mem_eff else ''}"
        note = BF16_NOTE if dtype == jnp.bfloat16 else ""
        if kind == "forward":
            memory_row(bench, f"CFG forward (2, 4, {frames}, {size}, {size}), {label}", unet, (p, lat, t2, ctx),
                       param_bytes, note)
        elif kind == "sds":
            one = jax.ShapeDtypeStruct((1, 4, frames, size, size), jnp.float32)
            memory_row(bench, f"SDS step (CFG forward + guidance), {label}", sds_grad,
                       (p, one, one, jax.ShapeDtypeStruct((), jnp.int32), ctx), param_bytes, note)
        else:
            memory_row(bench, f"forward + VJP wrt latents (2, 4, {frames}, {size}, {size}), {label}", forward_vjp,
                       (p, lat, t2, ctx, lat), param_bytes, note)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--frames", type=int, default=16, help="latent frames (paper: 16)")
    ap.add_argument("--size", type=int, default=32, help="latent height = width (paper: 32, i.e. 256 px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", choices=("all", "short"), default="short",
                    help="'all' adds the float32 SDS steps and the float32 VJP with memory-efficient attention")
    args = ap.parse_args()
    bench = Bench("unet3d")
    bench.meta["note"] = ("memory figures are XLA's CPU buffer assignment for the compiled step (arguments + outputs + "
                          "temporaries - aliased); a GPU compile differs somewhat")
    if not args.skip_tiny:
        bench_tiny(bench, args.frames, args.size, args.repeats)
    if not args.skip_real:
        bench_real(bench, args.frames, args.size, args.real)
    bench.report()


if __name__ == "__main__":
    main()
