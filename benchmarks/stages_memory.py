"""XLA memory analysis of one training step of each Animate124 stage at the paper's sizes, without weights.

    python benchmarks/stages_memory.py [--stages static coarse fine] [--prior-dtype bfloat16]

Everything is shapes: the 4D field's parameters and Adam state come from jax.eval_shape of its init (float32,
configs/four_d.py "paper": 16 levels, table 2^16, finest 2048, T = 64 time grids in the dynamic stages, 1 in the
static one), the priors' parameters from jax.eval_shape of the paper-size diffusers / UNet3D configs of
benchmarks/priors.py in --prior-dtype (bfloat16: the official runs fp16 autocast). The step is lowered and
compiled (jax.jit(...).lower(...).compile()) and XLA's memory_analysis() is read: args (parameters, optimiser
state, priors, rays), temp (the step's temporaries), out, alias (outputs that reuse donated inputs);
total = args + temp + out - alias is the step's device footprint.

The stage step functions are written elsewhere (four_d/stages.py), so the step is composed here from the same
pieces, per the official scripts (../shared/reference/animate124.md sections 2-5):
  render   four_d.render.render_rays_chunked with jax.checkpoint per chunk (config render.train_chunk rays), the
           occupancy two-pass sampling (render.coarse_samples lookups of a 128^3 x 16 mask, then
           render.occupancy_num_samples = 256 field samples per ray), lambertian shading with finite-difference
           normals, 128 x 128 per frame (official --h/--w 128), random background; regularisers
           (orientation, entropy, normal-image TV and smoothing) on the render.
  static   1 view: SD 1.5 SDS (512 px, 64x64 latents) + zero123-XL SDS (256 px), through four_d.stage_priors'
           Prior functions (the contract the stages use).
  coarse   a 16-frame clip (16 x 128 x 128 rays, T = 64 grids): ModelScope video SDS (16 x 256 px, the 1.41 B
           UNet3D port on the CFG pair) + zero123 on frame 0 + temporal TV of the time grids (official mode).
  fine     the coarse step + the frozen coarse model (its own parameter tree, stop-gradient) rendering the two
           ControlNet frames (the tile condition) + ControlNet-Tile SDS on 2 frames at 1024 px with the SD 1.5
           UNet (memory-efficient attention, as the config default).
  Then value_and_grad w.r.t. the field parameters, optax (official Adam, gradient value clip 1 in the dynamic
  stages) and the update, with the train state donated.
Reference-view steps (every 4th, no SDS) are smaller than these and not listed. The CPU compiler computes bfloat16
through float32, so bfloat16 temporaries overstate what a GPU compile would need.
Writes benchmarks/results/stages_memory.json.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import jax.numpy as jnp
import optax

from benchmarks import priors as pb
from benchmarks.harness import Bench, compile_time, peak_rss_gib
from configs.four_d import get_config as four_d_config
from configs.priors import get_config as priors_config
from four_d import render as render_lib
from four_d import stage_priors as sp
from four_d.field import field_from_config
from four_d.fit import make_optimizer
from four_d.grid4d import grid_spec_from_config, temporal_tv_loss
from four_d.priors import controlnet as cn_lib
from four_d.priors import loading
from four_d.priors import sd as sd_lib
from four_d.priors import video as video_lib
from four_d.priors import zero123 as z_lib

GIB = 2**30
SDS_SIZE = 128  # official --h/--w 128: every SDS render
FRAMES = 16  # official --num_frames 16
F32 = jnp.float32


def _sds(shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


def field_state(cfg, time_grids, optimizer):
    model = field_from_config(cfg, time_grids)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"])
    opt_state = jax.eval_shape(optimizer.init, params)
    return model, params, opt_state


def prior_params(kinds, dname):
    """(dict kind -> (param shapes, fn)) built through four_d.stage_priors' Prior constructors, shapes only."""
    from diffusers import FlaxAutoencoderKL, FlaxControlNetModel, FlaxUNet2DConditionModel

    from four_d.priors.unet3d import MODELSCOPE_T2V_UNET_CONFIG, FlaxUNet3DConditionModel

    loading.use_exact_gelu()
    dtype = loading.parse_dtype(dname)
    pc = priors_config("paper")
    for section in (pc.sd, pc.zero123, pc.video, pc.controlnet):
        section.dtype = dname
    alphas = pb._alphas()
    vae = FlaxAutoencoderKL.from_config(pb.SD15_VAE, dtype=dtype)
    vae_s = pb._cast_shapes(pb._shapes(vae), dtype)
    emb = pb._emb_shapes()
    out = {}
    if "sd" in kinds or "controlnet" in kinds:
        unet = FlaxUNet2DConditionModel.from_config(pb.SD15_UNET, dtype=dtype,
                                                    use_memory_efficient_attention=bool(pc.sd.memory_efficient_attention))
        unet_s = pb._cast_shapes(pb._shapes(unet), dtype)
    if "sd" in kinds:
        model = sd_lib.StableDiffusion(unet, vae, None, None, alphas, "")
        out["sd"] = sp.sd_prior(model, dict(unet=unet_s, vae=vae_s), sd_lib.make_sd_sds(model, pc.sd), emb)
    if "zero123" in kinds:
        zunet = FlaxUNet2DConditionModel.from_config(
            pb.ZERO123_UNET, dtype=dtype, use_memory_efficient_attention=bool(pc.zero123.memory_efficient_attention))
        model = z_lib.Zero123(zunet, vae, None, None, alphas, "", "cc_projection")
        params = dict(unet=pb._cast_shapes(pb._shapes(zunet), dtype), vae=vae_s,
                      cc_projection=dict(kernel=_sds((pb.TEXT_DIM + 4, pb.TEXT_DIM), dtype),
                                         bias=_sds((pb.TEXT_DIM,), dtype)))
        ref = dict(clip=_sds((1, 1, pb.TEXT_DIM)), latent=_sds((1, 4, 32, 32)))
        zc = pc.zero123
        out["zero123"] = sp.zero123_prior(model, params, z_lib.make_zero123_sds(model, zc), ref, zc.reference_polar,
                                          zc.reference_azimuth, zc.reference_radius)
    if "video" in kinds:
        unet3d = FlaxUNet3DConditionModel.from_config(MODELSCOPE_T2V_UNET_CONFIG, dtype=dtype,
                                                      use_memory_efficient_attention=bool(
                                                          pc.video.memory_efficient_attention))
        u3 = pb._cast_shapes(jax.eval_shape(unet3d.init_weights, jax.random.key(0)), dtype)
        model = video_lib.VideoPrior(unet3d, vae, None, None, alphas)
        vemb = {k: _sds((pb.TEXT_LEN, unet3d.cross_attention_dim)) for k in emb}
        out["video"] = sp.video_prior(model, dict(unet=u3, vae=vae_s), video_lib.make_video_sds(model, pc.video), vemb)
    if "controlnet" in kinds:
        cnet = FlaxControlNetModel.from_config(pb.SD15_CONTROLNET, dtype=dtype)
        model = cn_lib.ControlNetTile(sd_lib.StableDiffusion(unet, vae, None, None, alphas, ""), cnet, "")
        cn_emb = {k: _sds((pb.TEXT_LEN, pb.TEXT_DIM)) for k in ("uncond", "cond")}
        params = dict(unet=unet_s, vae=vae_s, controlnet=pb._cast_shapes(pb._shapes(cnet), dtype))
        out["controlnet"] = sp.controlnet_prior(model, params, cn_lib.make_controlnet_sds(model, pc.controlnet), emb,
                                                cn_emb, pc.controlnet)
    return out, pc


def make_step(stage, cfg, model, optimizer, priors, pc):
    """The composed training step of `stage` (module docstring): (state, frozen, priors_params, batch, key) ->
    (state, loss)."""
    rc = cfg.render
    fa = render_lib.make_field_apply(model)
    frames = 1 if stage == "static" else FRAMES
    hw = SDS_SIZE * SDS_SIZE
    spec = grid_spec_from_config(cfg.grid)

    def render(params, batch, key, rays=slice(None)):
        kw = dict(num_samples=int(rc.occupancy_num_samples), coarse_samples=int(rc.coarse_samples),
                  bound=rc.bound, min_near=rc.min_near, shading="lambertian", ambient=0.5,
                  occupancy=batch["occupancy"], light_dir=batch["light"][rays], optical_axis=batch["axis"][rays],
                  bg=batch["bg"])
        return render_lib.render_rays_chunked(fa, params, batch["origins"][rays], batch["directions"][rays],
                                              batch["times"][rays], key, chunk=int(rc.train_chunk), remat=True, **kw)

    def loss_fn(params, frozen, pp, batch, key):
        k_r, k_sd, k_z, k_v, k_cn, k_tv = jax.random.split(key, 6)
        out = render(params, batch, k_r)
        imgs = out["rgb"].reshape(frames, SDS_SIZE, SDS_SIZE, 3)
        reg = render_lib.regularisers(out, dict(lambda_orient=1e-2, lambda_entropy=1e-3, lambda_normal_tv=0.5,
                                                lambda_normal_smooth=0.5), num_samples=int(rc.occupancy_num_samples),
                                      step=1, iterations=2, image_shape=(frames, SDS_SIZE, SDS_SIZE))
        loss = reg["total"]
        az = batch["azimuth"]
        _, z_fn = priors["zero123"]
        loss = loss + z_fn(pp["zero123"], k_z, imgs[:1], batch["polar"][:1], az[:1], batch["radius"][:1])[0]
        if stage == "static":
            _, s_fn = priors["sd"]
            loss = loss + s_fn(pp["sd"], k_sd, imgs, az)[0]
        else:
            _, v_fn = priors["video"]
            loss = loss + v_fn(pp["video"], k_v, imgs[None], az[:1])[0]
            loss = loss + cfg.reg.lambda_time_tv * temporal_tv_loss(params["grid"]["tables"], k_tv, spec,
                                                                    int(cfg.reg.tv_points), cfg.reg.time_tv_mode)
        if stage == "fine":
            idx = cn_lib.config_frames(frames, pc.controlnet)
            rays = jnp.concatenate([jnp.arange(hw) + i * hw for i in idx])
            cond = render(jax.lax.stop_gradient(frozen), batch, k_r, rays)["rgb"].reshape(len(idx), SDS_SIZE,
                                                                                          SDS_SIZE, 3)
            full_cond = jnp.zeros_like(imgs).at[idx].set(cond)  # the fn selects the same frames again
            _, c_fn = priors["controlnet"]
            loss = loss + c_fn(pp["controlnet"], k_cn, imgs[None], full_cond[None], az[:1])[0]
        return loss

    def step(state, frozen, pp, batch, key):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, pp, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def batch_shapes(cfg, frames):
    r = frames * SDS_SIZE * SDS_SIZE
    g = int(cfg.render.occupancy_resolution)
    return dict(origins=_sds((r, 3)), directions=_sds((r, 3)), times=_sds((r,)), light=_sds((r, 3)),
                axis=_sds((r, 3)), bg=_sds((3,)), occupancy=_sds((int(cfg.render.occupancy_time_bins), g, g, g), bool),
                polar=_sds((frames,)), azimuth=_sds((frames,)), radius=_sds((frames,)))


def stage_row(bench, stage, dname):
    kinds = sp.STAGE_PRIORS[stage]
    cfg = four_d_config("paper")
    time_grids = 1 if stage == "static" else int(cfg.grid.time_grid_size)
    if stage == "static":
        cfg.optim.grad_clip = 0.0  # official: no gradient clipping in the static stage
    optimizer = make_optimizer(cfg)
    model, params, opt_state = field_state(cfg, time_grids, optimizer)
    priors, pc = prior_params(kinds, dname)
    frozen = params if stage == "fine" else {}
    step = make_step(stage, cfg, model, optimizer, priors, pc)
    frames = 1 if stage == "static" else FRAMES
    args = ((params, opt_state), frozen, {k: p for k, (p, _) in priors.items()}, batch_shapes(cfg, frames),
            jax.random.key(0))
    ctime, compiled = compile_time(jax.jit(step, donate_argnums=0), *args)
    mem = compiled.memory_analysis()
    field_gib = pb._bytes(params) / GIB
    prior_gib = pb._bytes([p for p, _ in priors.values()]) / GIB
    row = dict(stage=stage, priors="+".join(kinds), prior_dtype=dname, frames=frames, time_grids=time_grids,
               field_params_gib=round(field_gib, 3), prior_params_gib=round(prior_gib, 3),
               compile_s=round(ctime, 1))
    if mem is not None:
        total = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes)
        row.update(args_gib=round(mem.argument_size_in_bytes / GIB, 3), temp_gib=round(mem.temp_size_in_bytes / GIB, 3),
                   out_gib=round(mem.output_size_in_bytes / GIB, 3), alias_gib=round(mem.alias_size_in_bytes / GIB, 3),
                   total_gib=round(total / GIB, 3), total_gb=round(total / 1e9, 2), under_40gb=bool(total < 40e9))
    row["peak_rss_gib"] = round(peak_rss_gib(), 2)
    bench.add(f"{stage} step, paper", **row)
    print(f"  {stage}: {row}", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", nargs="+", default=list(sp.STAGES), choices=sp.STAGES)
    p.add_argument("--prior-dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = p.parse_args(argv)
    bench = Bench("stages_memory")
    bench.meta["note"] = "shapes only (jax.eval_shape); XLA memory_analysis() of the compiled step on this backend"
    for stage in args.stages:
        stage_row(bench, stage, args.prior_dtype)
    path = None
    if args.stages != list(sp.STAGES):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"stages_memory_{'_'.join(args.stages)}.json")
    bench.report(path)


if __name__ == "__main__":
    main()
