"""XLA memory analysis of one training step of each Animate124 stage at the paper's sizes, without weights.

    python benchmarks/stages_memory.py [--stages static coarse fine] [--prior-dtype bfloat16]
                                       [--vae-frames-per-chunk K] [--train-chunk R]

The step is the real one: four_d.stages.make_stage_step(config "paper", stage, priors, 1-device mesh), lowered
with shapes only and compiled (jit(...).lower(...).compile()), and XLA's memory_analysis() is read: args (field
parameters, Adam state, occupancy grid, frozen coarse copy in the fine stage, priors, reference view), temp (the
step's temporaries), out, alias (outputs that reuse the donated state); total = args + temp + out - alias is the
step's device footprint. One compiled program holds both the reference-view branch and the SDS branch
(lax.cond), the occupancy refresh, the optimiser update; the footprint is that of the larger branch.

Everything is shapes: the state from four_d.stages.abstract_state (jax.eval_shape of the field's init and the
hand-overs: configs/four_d.py "paper": 16 levels, table 2^16, finest 2048, T = 64 time grids in the dynamic
stages, 1 in the static one, the 128^3 occupancy grid), the priors' parameters from jax.eval_shape of the
paper-size diffusers / UNet3D configs of benchmarks/priors.py in --prior-dtype (bfloat16: the official runs fp16
autocast), each prior built with its configs/priors.py "paper" section (attention, VAE chunking) and wrapped by
four_d.stage_priors' Prior constructors (the contract the stages use):
  static   1 view at 128 x 128: SD 1.5 SDS (512 px, 64x64 latents) + zero123-XL SDS (256 px).
  coarse   a 16-frame clip (16 x 128 x 128 rays): ModelScope video SDS (16 x 256 px, the 1.41 B UNet3D port on
           the CFG pair) + zero123 on frame 0 (lax.cond) + temporal TV of the time grids.
  fine     the coarse step + the frozen coarse model rendering the two ControlNet frames (the tile condition) +
           ControlNet-Tile SDS on 2 frames at 1024 px with the SD 1.5 UNet.
Memory settings (the same values, less memory): the defaults are the paper configs' (configs/priors.py "paper":
video and controlnet vae_frames_per_chunk 1; configs/four_d.py "paper": render.train_chunk);
--vae-frames-per-chunk K overrides both priors' vae_frames_per_chunk (0 = official one call), --train-chunk R
overrides render.train_chunk (rays per rematerialised render chunk).
The CPU compiler computes bfloat16 through float32, so bfloat16 temporaries overstate what a GPU compile would
need. Writes benchmarks/results/stages_memory.json (other option sets: stages_memory_<tags>.json).
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

from benchmarks import priors as pb
from benchmarks.harness import Bench, compile_time, peak_rss_gib
from configs.four_d import get_config as four_d_config
from configs.priors import get_config as priors_config
from four_d import stage_priors as sp
from four_d import stages as stages_lib
from four_d import train_loop
from four_d.priors import controlnet as cn_lib
from four_d.priors import loading
from four_d.priors import sd as sd_lib
from four_d.priors import video as video_lib
from four_d.priors import zero123 as z_lib

GIB = 2**30
F32 = jnp.float32


def _sds(shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


def prior_params(kinds, dname, vae_frames_per_chunk=None):
    """(dict kind -> (param shapes, fn)) built through four_d.stage_priors' Prior constructors, shapes only."""
    from diffusers import FlaxAutoencoderKL, FlaxControlNetModel, FlaxUNet2DConditionModel

    from four_d.priors.unet3d import MODELSCOPE_T2V_UNET_CONFIG, FlaxUNet3DConditionModel

    loading.use_exact_gelu()
    dtype = loading.parse_dtype(dname)
    pc = priors_config("paper")
    for section in (pc.sd, pc.zero123, pc.video, pc.controlnet):
        section.dtype = dname
    if vae_frames_per_chunk is not None:
        pc.video.vae_frames_per_chunk = int(vae_frames_per_chunk)
        pc.controlnet.vae_frames_per_chunk = int(vae_frames_per_chunk)
    alphas = pb._alphas()
    vae = FlaxAutoencoderKL.from_config(pb.SD15_VAE, dtype=dtype)
    vae_s = pb._cast_shapes(pb._shapes(vae), dtype)
    emb = pb._emb_shapes()
    out = {}
    if "sd" in kinds:
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
        # the ControlNet's SD UNet is built with the controlnet section's attention, as build_controlnet_prior does
        cunet = FlaxUNet2DConditionModel.from_config(
            pb.SD15_UNET, dtype=dtype, use_memory_efficient_attention=bool(pc.controlnet.memory_efficient_attention))
        cnet = FlaxControlNetModel.from_config(pb.SD15_CONTROLNET, dtype=dtype)
        model = cn_lib.ControlNetTile(sd_lib.StableDiffusion(cunet, vae, None, None, alphas, ""), cnet, "")
        cn_emb = {k: _sds((pb.TEXT_LEN, pb.TEXT_DIM)) for k in ("uncond", "cond")}
        params = dict(unet=pb._cast_shapes(pb._shapes(cunet), dtype), vae=vae_s,
                      controlnet=pb._cast_shapes(pb._shapes(cnet), dtype))
        out["controlnet"] = sp.controlnet_prior(model, params, cn_lib.make_controlnet_sds(model, pc.controlnet), emb,
                                                cn_emb, pc.controlnet)
    return out, pc


def stage_row(bench, stage, dname, vae_frames_per_chunk=None, train_chunk=None):
    kinds = sp.STAGE_PRIORS[stage]
    cfg = four_d_config("paper")
    if train_chunk is not None:
        cfg.render.train_chunk = int(train_chunk)
    priors, pc = prior_params(kinds, dname, vae_frames_per_chunk)
    mesh = train_loop.make_mesh(1)
    step = stages_lib.make_stage_step(cfg, stage, priors, mesh)
    state = stages_lib.abstract_state(cfg, stage)
    n = stages_lib.reference_size(cfg) ** 2
    ref = dict(rgb=_sds((n, 3)), mask=_sds((n,)), depth=_sds((n,)))
    pp = {k: priors[k][0] for k in stages_lib._active(cfg, stage, priors)}
    ctime, compiled = compile_time(step, state, ref, pp)
    mem = compiled.memory_analysis()
    time_grids = 1 if stage == "static" else int(cfg.grid.time_grid_size)
    frames = 1 if stage == "static" else int(cfg.stages.coarse.num_frames)
    field_gib = pb._bytes(state["params"]) / GIB
    prior_gib = pb._bytes(pp) / GIB
    row = dict(stage=stage, priors="+".join(kinds), prior_dtype=dname, frames=frames, time_grids=time_grids,
               train_chunk=int(cfg.render.train_chunk), video_vae_chunk=int(pc.video.vae_frames_per_chunk),
               controlnet_vae_chunk=int(pc.controlnet.vae_frames_per_chunk), field_params_gib=round(field_gib, 3),
               prior_params_gib=round(prior_gib, 3), compile_s=round(ctime, 1))
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
    p.add_argument("--vae-frames-per-chunk", type=int, default=None, help="config video.vae_frames_per_chunk")
    p.add_argument("--train-chunk", type=int, default=None, help="config render.train_chunk")
    args = p.parse_args(argv)
    bench = Bench("stages_memory")
    bench.meta["note"] = ("shapes only (jax.eval_shape); XLA memory_analysis() of four_d.stages.make_stage_step "
                          "compiled on this backend")
    for stage in args.stages:
        stage_row(bench, stage, args.prior_dtype, args.vae_frames_per_chunk, args.train_chunk)
    tags = [] if args.stages == list(sp.STAGES) else list(args.stages)
    if args.vae_frames_per_chunk is not None:
        tags.append(f"vae{args.vae_frames_per_chunk}")
    if args.train_chunk is not None:
        tags.append(f"chunk{args.train_chunk}")
    path = None
    if tags:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"stages_memory_{'_'.join(tags)}.json")
    bench.report(path)


if __name__ == "__main__":
    main()
