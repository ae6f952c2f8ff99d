"""Benchmark the SDS steps of the diffusion priors (four_d/priors/): speed against diffusers PyTorch on the CPU,
and paper-size memory without weights.

    python benchmarks/priors.py [--skip-speed] [--skip-memory] [--repeats 5] [--dtypes float32 bfloat16]
                                [--priors sd zero123 controlnet video]

Speed rows ("<prior> step, tiny"): one SDS step (resize + VAE encode with a sampled latent + noise + the
UNet (+ ControlNet) on the CFG pair + CFG + the gradient w.r.t. the render) on small random models built with
the diffusers PyTorch classes, saved with save_pretrained and loaded by our loaders; JAX (jit, compile timed
apart) beside the same computation in PyTorch (eager, autograd) in the same run. `jax_over_torch` is the ratio
of medians (target <= 0.7). The video row runs a tiny UNet3DConditionModel (loaded by load_unet3d) on 8 frames.

Memory rows ("<prior> memory, paper"): the paper-size models (SD 1.5 UNet + VAE at 512 px = 64x64 latents,
zero123 at 256 px = 32x32, ControlNet-Tile + SD 1.5 at 1024 px = 128x128 latents with 2 frames, ModelScope
T2V 1.7B UNet3D + SD VAE on 16 frames of 256 px renders = 16x32x32 latents) built from their configs with
jax.eval_shape (no weights, no initialisation): `params_gib` is the size of the parameters the step reads,
`temp_gib` / `args_gib` / `out_gib` XLA's memory_analysis() of the compiled step (value and gradient w.r.t.
the render), on this backend. The video rows are the whole step (video_step_memory) with the VAE encoder over
all 16 frames at once (official) and one frame at a time under jax.checkpoint (config vae_frames_per_chunk 1).
Writes benchmarks/results/priors.json (a subset of --priors writes priors_<names>.json).
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Bench, compile_time, peak_rss_gib, time_callable
from configs.priors import get_config
from four_d.priors import common, loading
from four_d.priors import controlnet as cn_lib
from four_d.priors import sd as sd_lib
from four_d.priors import video as video_lib
from four_d.priors import zero123 as z_lib

GIB = 2**30

# ---- paper-size configs (Hugging Face config.json values of the official checkpoints) -----------------------
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
SD15_CONTROLNET = dict(sample_size=64, in_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                       attention_head_dim=8, cross_attention_dim=768,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       conditioning_embedding_out_channels=(16, 32, 96, 256))
ZERO123_UNET = dict(SD15_UNET, in_channels=8, sample_size=32)
TEXT_LEN, TEXT_DIM = 77, 768

# ---- tiny configs for the speed rows ------------------------------------------------------------------------
TINY_UNET = dict(sample_size=16, layers_per_block=1, block_out_channels=(32, 64), attention_head_dim=8,
                 cross_attention_dim=64, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=128,
                block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
TINY_CONTROLNET = dict({k: v for k, v in TINY_UNET.items() if k not in ("sample_size", "up_block_types")},
                       conditioning_embedding_out_channels=(16, 16, 32, 32))
TINY_IMAGE = 128  # renders resized to 128 px: 16x16 latents
TINY_TEXT = 64


def _shapes(module):
    return jax.eval_shape(module.init_weights, jax.random.key(0))


def _bytes(tree):
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _cast_shapes(tree, dtype):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating)
                                                       else s.dtype), tree)


def _alphas():
    from diffusers import FlaxDDIMScheduler
    from diffusers.schedulers.scheduling_utils_flax import CommonSchedulerState

    s = FlaxDDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return np.asarray(CommonSchedulerState.create(s).alphas_cumprod, np.float32)


def _emb_shapes(dtype=jnp.float32):
    s = jax.ShapeDtypeStruct((TEXT_LEN, TEXT_DIM), dtype)
    return {k: s for k in ("uncond", "default", "front", "side", "back")}


def _memory_row(bench, name, jitted, args, params_bytes, dtype, extra=None):
    ctime, compiled = compile_time(jitted, *args)
    mem = compiled.memory_analysis()
    row = dict(dtype=dtype, compile_s=round(ctime, 1), params_gib=round(params_bytes / GIB, 3))
    if mem is not None:
        row.update(temp_gib=round(mem.temp_size_in_bytes / GIB, 3), args_gib=round(mem.argument_size_in_bytes / GIB, 3),
                   out_gib=round(mem.output_size_in_bytes / GIB, 3),
                   total_gib=round((mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                    + mem.output_size_in_bytes) / GIB, 3))
    bench.add(name, **row, **(extra or {}))
    print(f"  {name} [{dtype}]: {row}", flush=True)


def memory_rows(bench, dtypes, priors, attentions=("full",)):
    for attention in attentions:
        for dname in dtypes:
            _memory_rows(bench, dname, priors, attention)
    if "video" in priors:
        video_memory_rows(bench, dtypes)


def video_memory_rows(bench, dtypes, chunks=(0, 1)):
    """The whole ModelScope video SDS step at paper size (video_step_memory), per dtype and VAE chunking."""
    from four_d.priors.unet3d import MODELSCOPE_T2V_UNET_CONFIG, FlaxUNet3DConditionModel

    for dname in dtypes:
        unet3d = FlaxUNet3DConditionModel.from_config(MODELSCOPE_T2V_UNET_CONFIG, dtype=loading.parse_dtype(dname))
        shapes = jax.eval_shape(unet3d.init_weights, jax.random.key(0))
        for chunk in chunks:
            r = video_step_memory(unet3d, shapes, dname, frames_per_chunk=chunk)
            row = dict(dtype=dname, attention="full", image=256, batch=16, vae_frames_per_chunk=chunk,
                       **{k: round(v, 3) if k != "compile_s" else round(v, 1) for k, v in r.items()})
            bench.add(f"video memory, paper (ModelScope 1.7B, 16x32x32, VAE chunk {chunk or 'all'})", **row)
            print(f"  video memory [{dname}, chunk {chunk}]: {row}", flush=True)


def _memory_rows(bench, dname, priors, attention):
    """Rows for one dtype; attention "mem-eff" builds the UNets with use_memory_efficient_attention and the
    ControlNet through loading.controlnet_attention (chunked attention, as the official runs use xformers)."""
    from diffusers import FlaxAutoencoderKL, FlaxControlNetModel, FlaxUNet2DConditionModel

    loading.use_exact_gelu()  # as the loaders do: the PyTorch models' exact GELU in the Flax GEGLU
    alphas = _alphas()
    key = jax.random.key(0)
    mem_eff = dict(use_memory_efficient_attention=attention == "mem-eff")
    tag = dict(attention=attention)
    dtype = loading.parse_dtype(dname)
    unet = FlaxUNet2DConditionModel.from_config(SD15_UNET, dtype=dtype, **mem_eff)
    vae = FlaxAutoencoderKL.from_config(SD15_VAE, dtype=dtype)
    unet_s, vae_s = _cast_shapes(_shapes(unet), dtype), _cast_shapes(_shapes(vae), dtype)
    if "sd" in priors:
        cfg = get_config("paper").sd
        model = sd_lib.StableDiffusion(unet, vae, None, None, alphas, "")
        fn = sd_lib.make_sd_sds(model, cfg)
        imgs = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)  # official --h/--w 128 renders
        vg = jax.jit(jax.value_and_grad(lambda p, k, x, e, kn, fn=fn: fn.function.jitted(
            p, k, x, e, jnp.zeros(1), jnp.asarray(True), kn)[0], argnums=2))
        params = dict(unet=unet_s, vae=vae_s)
        _memory_row(bench, "sd memory, paper (64x64 latents)", vg,
                    (params, key, imgs, _emb_shapes(), fn.function.knobs()), _bytes(params), dname,
                    dict(image=cfg.image_size, batch=1, **tag))
    if "zero123" in priors:
        cfg = get_config("paper").zero123
        zunet = FlaxUNet2DConditionModel.from_config(ZERO123_UNET, dtype=dtype, **mem_eff)
        zs = _cast_shapes(_shapes(zunet), dtype)
        model = z_lib.Zero123(zunet, vae, None, None, alphas, "", "cc_projection")
        fn = z_lib.make_zero123_sds(model, cfg)
        params = dict(unet=zs, vae=vae_s, cc_projection=dict(
            kernel=jax.ShapeDtypeStruct((TEXT_DIM + 4, TEXT_DIM), dtype),
            bias=jax.ShapeDtypeStruct((TEXT_DIM,), dtype)))
        ref = dict(clip=jax.ShapeDtypeStruct((1, 1, TEXT_DIM), jnp.float32),
                   latent=jax.ShapeDtypeStruct((1, 4, 32, 32), jnp.float32))
        cam = dict(token=jax.ShapeDtypeStruct((1, 4), jnp.float32), angle=jax.ShapeDtypeStruct((1,), jnp.float32))
        vg = jax.jit(jax.value_and_grad(lambda p, k, x, r, c, kn, fn=fn: fn.function.jitted(p, k, x, r, c, kn)[0],
                                        argnums=2))
        _memory_row(bench, "zero123 memory, paper (32x32 latents)", vg,
                    (params, key, jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32), ref, cam,
                     fn.function.knobs()), _bytes(params), dname, dict(image=cfg.image_size, batch=1, **tag))
    if "controlnet" in priors:
        cfg = get_config("paper").controlnet
        cfg.memory_efficient_attention = attention == "mem-eff"  # the ControlNet's own attention (context manager)
        cnet = FlaxControlNetModel.from_config(SD15_CONTROLNET, dtype=dtype)
        cn_s = _cast_shapes(_shapes(cnet), dtype)
        model = cn_lib.ControlNetTile(sd_lib.StableDiffusion(unet, vae, None, None, alphas, ""), cnet, "")
        fn = cn_lib.make_controlnet_sds(model, cfg)
        frames = jax.ShapeDtypeStruct((cfg.num_frames, 128, 128, 3), jnp.float32)
        cn_emb = {k: jax.ShapeDtypeStruct((TEXT_LEN, TEXT_DIM), jnp.float32) for k in ("uncond", "cond")}
        vg = jax.jit(jax.value_and_grad(lambda p, k, x, c, e, ce, kn, fn=fn, n=cfg.num_frames: fn.function.jitted(
            p, k, x, c, e, jnp.zeros(n), ce, jnp.asarray(False), kn)[0], argnums=2))
        params = dict(unet=unet_s, vae=vae_s, controlnet=cn_s)
        _memory_row(bench, "controlnet memory, paper (128x128 latents, 2 frames)", vg,
                    (params, key, frames, frames, _emb_shapes(), cn_emb, fn.function.knobs()), _bytes(params),
                    dname, dict(image=cfg.image_size, batch=cfg.num_frames, **tag))


def video_step_memory(unet3d, unet3d_param_shapes, dtype="bfloat16", frames=16, size=256, render=256,
                      frames_per_chunk=0):
    """memory_analysis() of the WHOLE ModelScope video SDS step at paper size, without weights.

    The step is four_d.priors.video's: the renders [1, frames, render, render, 3] resized to `size`, the SD 1.5
    VAE encoder (ModelScope ships SD's VAE architecture) over every frame with a sampled latent, one t and noise
    per clip, the UNet3D on the CFG pair (latents [2, 4, frames, size / 8, size / 8], 77-token OpenCLIP-H
    context of width 1024), CFG 100, the SDS loss, and its gradient w.r.t. the renders (through the VAE encoder
    only). unet3d: the Flax UNet3D module (four_d/priors/unet3d.py; its dtype is the computation dtype);
    unet3d_param_shapes: jax.eval_shape of its init_weights. frames_per_chunk: the config's
    vae_frames_per_chunk (0 = all frames in one encoder call, official). Returns dict(params_gib, temp_gib,
    args_gib, out_gib, total_gib, compile_s).
    """
    from diffusers import FlaxAutoencoderKL

    loading.use_exact_gelu()
    jd = loading.parse_dtype(dtype)
    vae = FlaxAutoencoderKL.from_config(SD15_VAE, dtype=jd)
    vae_s = _cast_shapes(_shapes(vae), jd)
    cfg = get_config("paper").video
    cfg.image_size, cfg.vae_frames_per_chunk = size, frames_per_chunk
    model = video_lib.VideoPrior(unet3d, vae, None, None, _alphas())
    fn = video_lib.make_video_sds(model, cfg)
    params = dict(unet=_cast_shapes(unet3d_param_shapes, jd), vae=vae_s)
    clips = jax.ShapeDtypeStruct((1, frames, render, render, 3), jnp.float32)
    emb = {k: jax.ShapeDtypeStruct((TEXT_LEN, unet3d.cross_attention_dim), jnp.float32)
           for k in ("uncond", "default", "front", "side", "back")}
    vg = jax.jit(jax.value_and_grad(lambda p, k, x, e, kn: fn.function.jitted(
        p, k, x, e, jnp.zeros(1), jnp.asarray(False), kn)[0], argnums=2))
    ctime, compiled = compile_time(vg, params, jax.random.key(0), clips, emb, fn.function.knobs())
    mem = compiled.memory_analysis()
    if mem is None:
        return dict(params_gib=_bytes(params) / GIB, compile_s=ctime)
    return dict(params_gib=_bytes(params) / GIB, temp_gib=mem.temp_size_in_bytes / GIB,
                args_gib=mem.argument_size_in_bytes / GIB, out_gib=mem.output_size_in_bytes / GIB,
                total_gib=(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / GIB,
                compile_s=ctime)


# ---- speed: tiny models, JAX beside PyTorch -----------------------------------------------------------------


def _randomize(module, seed, scale=0.1):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((1.0 if ("norm" in name and name.endswith("weight")) else 0.0)
                    + scale * torch.randn(p.shape, generator=g))
    return module.eval()


def _save_tiny(root):
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    torch_models = dict(
        unet=_randomize(UNet2DConditionModel(**TINY_UNET), 1),
        vae=_randomize(AutoencoderKL(**TINY_VAE), 2),
        zunet=_randomize(UNet2DConditionModel(**dict(TINY_UNET, in_channels=8)), 3),
        controlnet=_randomize(ControlNetModel(**TINY_CONTROLNET), 4),
    )
    for name, m in torch_models.items():
        m.save_pretrained(os.path.join(root, name))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    sched.save_pretrained(os.path.join(root, "scheduler"))
    torch_models["scheduler"] = sched
    return torch_models


def _torch_sds(tm, prior, cfg, images, draws, extra):
    """The official step in torch (sd_utils / zero123_diffusers_utils / cn_utils): returns (loss, d/d images)."""
    import torch
    import torch.nn.functional as F

    x = images.clone().requires_grad_(True)
    b = x.shape[0]
    xs = F.interpolate(x, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    post = tm["vae"].encode(2 * xs - 1).latent_dist
    latents = (post.mean + post.std * draws["latent_eps"]) * tm["vae"].config.scaling_factor
    t, noise = draws["t"], draws["noise"]
    alphas = tm["scheduler"].alphas_cumprod
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        tt = torch.cat([t.expand(b)] * 2)
        if prior == "sd":
            eps = tm["unet"](torch.cat([noisy] * 2), tt, encoder_hidden_states=extra["text"]).sample
        elif prior == "zero123":
            inp = torch.cat([torch.cat([noisy] * 2), extra["concat"]], 1)
            eps = tm["zunet"](inp, tt, encoder_hidden_states=extra["cross"]).sample
        else:
            inp = torch.cat([noisy] * 2)
            down, mid = tm["controlnet"](inp, tt, encoder_hidden_states=extra["cn_text"],
                                         controlnet_cond=extra["cond"], return_dict=False)
            eps = tm["unet"](inp, tt, encoder_hidden_states=extra["text"], down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
        u, c = eps.chunk(2)
        s = cfg.guidance_scale
        eps_hat = (u + s * (c - u)) if cfg.cfg_form == "upstream" else (c + s * (c - u))
    if cfg.loss_target == "x0":
        target = ((noisy - (1 - alphas[t]) ** 0.5 * eps_hat) / alphas[t] ** 0.5).detach()
    else:
        w = (extra.get("grad_weight", 1.0) * (1 - alphas[t])).reshape(-1, 1, 1, 1)
        target = (latents - torch.nan_to_num(cfg.lambda_guidance * w * (eps_hat - noise))).detach()
    loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / b
    loss.backward()
    return loss, x.grad


def speed_rows(bench, repeats, priors):

    with tempfile.TemporaryDirectory(prefix="bench-priors-") as root:
        _speed_rows(bench, repeats, priors, root)
        if "video" in priors:
            _video_speed_row(bench, repeats, root)


# A tiny UNet3D (as benchmarks/unet3d.py's) for the video speed row: 8 frames of 128 px renders -> 8x16x16 latents.
TINY_UNET3D = dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
                   cross_attention_dim=TINY_TEXT, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
TINY_FRAMES = 8


def _torch_video_sds(tm, unet3d, cfg, clips, draws, text):
    """The official video step in torch (sd_utils with 'ms'): per-frame VAE latents, UNet3D on the CFG pair."""
    import torch
    import torch.nn.functional as F

    x = clips.clone().requires_grad_(True)  # b f c h w
    b, f = x.shape[:2]
    xs = F.interpolate(x.reshape(b * f, *x.shape[2:]), (cfg.image_size,) * 2, mode="bilinear", align_corners=False)
    post = tm["vae"].encode(2 * xs - 1).latent_dist
    z = (post.mean + post.std * draws["latent_eps"]) * tm["vae"].config.scaling_factor
    latents = z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)
    t, noise = draws["t"], draws["noise"]
    alphas = tm["scheduler"].alphas_cumprod
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        u, c = unet3d(torch.cat([noisy] * 2), torch.cat([t] * 2), encoder_hidden_states=text).sample.chunk(2)
        eps_hat = c + cfg.guidance_scale * (c - u)
    grad = torch.nan_to_num(cfg.lambda_guidance * (1 - alphas[t]).reshape(-1, 1, 1, 1, 1) * (eps_hat - noise))
    loss = 0.5 * F.mse_loss(latents, (latents - grad).detach(), reduction="sum") / b
    loss.backward()
    return loss, x.grad


def _video_speed_row(bench, repeats, root):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

    from four_d.priors.unet3d import load_unet3d

    tm = dict(vae=_randomize(AutoencoderKL(**TINY_VAE), 2))
    tm["vae"].save_pretrained(os.path.join(root, "video-vae"))
    unet3d_t = _randomize(UNet3DConditionModel(**TINY_UNET3D), 5)
    unet3d_t.save_pretrained(os.path.join(root, "unet3d"))
    tm["scheduler"] = DDIMScheduler.from_pretrained(os.path.join(root, "scheduler"))
    unet3d, unet3d_p = load_unet3d(os.path.join(root, "unet3d"))
    vae, vae_p = loading.load_vae(os.path.join(root, "video-vae"))
    cfg = get_config("paper").video
    cfg.image_size = TINY_IMAGE
    model = video_lib.VideoPrior(unet3d, vae, None, None, loading.load_alphas_cumprod(os.path.join(root, "scheduler")))
    fn = video_lib.make_video_sds(model, cfg)
    params = dict(unet=unet3d_p, vae=vae_p)
    rng = np.random.default_rng(1)
    clips = rng.uniform(size=(1, TINY_FRAMES, 128, 128, 3)).astype(np.float32)
    emb = {k: jnp.asarray(rng.normal(size=(TEXT_LEN, TINY_TEXT)).astype(np.float32))
           for k in ("uncond", "default", "front", "side", "back")}
    key, knobs = jax.random.key(0), fn.function.knobs()
    vg = jax.jit(jax.value_and_grad(lambda x, p, k, e, kn: fn.function.jitted(
        p, k, x, e, jnp.zeros(1), jnp.asarray(False), kn)[0]))
    jargs = (jnp.asarray(clips), params, key, emb, knobs)
    name = f"video step, tiny ({TINY_FRAMES} frames x {TINY_IMAGE} px, UNet3D {TINY_UNET3D['block_out_channels']})"
    row = bench.time(name, vg, *jargs, repeats=repeats)
    d = video_lib.video_draws(key, vae, 1, TINY_FRAMES, TINY_IMAGE, knobs["min_step"], knobs["max_step"])
    draws = {k: torch.tensor(np.asarray(v)) for k, v in d.items()}
    draws["t"] = draws["t"].long()
    tclips = torch.tensor(clips.transpose(0, 1, 4, 2, 3))
    text = torch.tensor(np.stack([emb["uncond"], emb["default"]]))
    torch_s, _ = time_callable(_torch_video_sds, tm, unet3d_t, cfg, tclips, draws, text, repeats=repeats)
    (jl, jg), (tl, tg) = vg(*jargs), _torch_video_sds(tm, unet3d_t, cfg, tclips, draws, text)
    tl, tg = float(tl.detach()), tg.detach().numpy().transpose(0, 1, 3, 4, 2)
    row.update(torch_s=round(torch_s, 4), jax_over_torch=round(row["median_s"] / torch_s, 3),
               loss_rel_err=float(f"{abs(float(jl) - tl) / abs(tl):.2e}"),
               grad_rel_err=float(f"{np.abs(np.asarray(jg) - tg).max() / np.abs(tg).max():.2e}"))
    print(f"  {row}", flush=True)


def _speed_rows(bench, repeats, priors, root):
    import torch

    cfgs = get_config("paper")
    tm = _save_tiny(root)
    alphas = loading.load_alphas_cumprod(os.path.join(root, "scheduler"))
    unet, unet_p = loading.load_unet2d(os.path.join(root, "unet"))
    vae, vae_p = loading.load_vae(os.path.join(root, "vae"))
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    for prior in [p for p in ("sd", "zero123", "controlnet") if p in priors]:
        cfg = cfgs[prior]
        cfg.image_size = TINY_IMAGE
        b = cfgs.controlnet.num_frames if prior == "controlnet" else 1
        images = rng.uniform(size=(b, 128, 128, 3)).astype(np.float32)  # official 128 px renders
        emb = {k: jnp.asarray(rng.normal(size=(TEXT_LEN, TINY_TEXT)).astype(np.float32))
               for k in ("uncond", "default", "front", "side", "back")}
        if prior == "sd":
            model = sd_lib.StableDiffusion(unet, vae, None, None, alphas, root)
            fn = sd_lib.make_sd_sds(model, cfg)
            params = dict(unet=unet_p, vae=vae_p)
            args = (emb, jnp.zeros(b), jnp.asarray(True))
            extra = dict(text=torch.tensor(np.stack([emb["uncond"]] * b + [emb["front"]] * b)))
        elif prior == "zero123":
            zunet, zunet_p = loading.load_unet2d(os.path.join(root, "zunet"))
            model = z_lib.Zero123(zunet, vae, None, None, alphas, root, "cc_projection")
            fn = z_lib.make_zero123_sds(model, cfg)
            cc = dict(kernel=jnp.asarray(0.1 * rng.normal(size=(TINY_TEXT + 4, TINY_TEXT)), jnp.float32),
                      bias=jnp.zeros(TINY_TEXT))
            params = dict(unet=zunet_p, vae=vae_p, cc_projection=cc)
            ref = dict(clip=jnp.asarray(rng.normal(size=(1, 1, TINY_TEXT)), jnp.float32),
                       latent=jnp.asarray(rng.normal(size=(1, 4, 16, 16)), jnp.float32))
            cam = z_lib.zero123_camera(np.array([20.0]), np.array([90.0]), np.array([0.0]))
            args = (ref, cam)
            emb_c = np.concatenate([np.asarray(ref["clip"]), np.asarray(cam["token"])[:, None]], -1) @ np.asarray(
                cc["kernel"]) + np.asarray(cc["bias"])
            extra = dict(grad_weight=torch.tensor(np.asarray(cam["angle"]) / 180.0),  # official angle / 180
                         cross=torch.tensor(np.concatenate([np.zeros_like(emb_c), emb_c]), dtype=torch.float32),
                         concat=torch.tensor(np.concatenate([np.zeros((1, 4, 16, 16)), np.asarray(ref["latent"])]),
                                             dtype=torch.float32))
        else:
            cnet, cnet_p = loading.load_controlnet(os.path.join(root, "controlnet"))
            model = cn_lib.ControlNetTile(sd_lib.StableDiffusion(unet, vae, None, None, alphas, root), cnet, root)
            fn = cn_lib.make_controlnet_sds(model, cfg)
            params = dict(unet=unet_p, vae=vae_p, controlnet=cnet_p)
            cn_emb = dict(uncond=emb["uncond"], cond=emb["side"])
            cond = rng.uniform(size=images.shape).astype(np.float32)
            args = (jnp.asarray(cond), emb, jnp.zeros(b), cn_emb, jnp.asarray(False))
            ctext = torch.tensor(np.stack([emb["uncond"]] * b + [emb["default"]] * b))
            ccond = torch.nn.functional.interpolate(torch.tensor(cond.transpose(0, 3, 1, 2)), (TINY_IMAGE,) * 2,
                                                    mode="bilinear", align_corners=False)
            extra = dict(text=ctext, cond=torch.cat([ccond] * 2),
                         cn_text=torch.tensor(np.stack([emb["uncond"]] * b + [emb["side"]] * b)))
        knobs = fn.function.knobs()
        vg = jax.jit(jax.value_and_grad(lambda x, p, k, *a, fn=fn, kn=knobs: fn.function.jitted(p, k, x, *a, kn)[0]))
        jargs = (jnp.asarray(images), params, key) + args
        row = bench.time(f"{prior} step, tiny ({TINY_IMAGE} px, batch {b})", vg, *jargs, repeats=repeats)
        shape = common.latent_shape(vae, b, TINY_IMAGE)
        d = common.draw(key, shape, 1 if prior == "controlnet" else b, knobs["min_step"], knobs["max_step"])
        draws = dict(latent_eps=torch.tensor(np.asarray(d["latent_eps"])), noise=torch.tensor(np.asarray(d["noise"])),
                     t=torch.tensor(np.asarray(d["t"]), dtype=torch.long))
        timg = torch.tensor(images.transpose(0, 3, 1, 2))
        torch_s, _ = time_callable(_torch_sds, tm, prior, cfg, timg, draws, extra, repeats=repeats)
        (jl, jg), (tl, tg) = vg(*jargs), _torch_sds(tm, prior, cfg, timg, draws, extra)
        tl, tg = tl.detach(), tg.detach()
        row.update(torch_s=round(torch_s, 4), jax_over_torch=round(row["median_s"] / torch_s, 3),
                   loss_rel_err=float(f"{abs(float(jl) - float(tl)) / abs(float(tl)):.2e}"),
                   grad_rel_err=float(f"{np.abs(np.asarray(jg) - tg.numpy().transpose(0, 2, 3, 1)).max() / np.abs(tg.numpy()).max():.2e}"))  # noqa: E501
        print(f"  {row}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--priors", nargs="+", default=["sd", "zero123", "controlnet", "video"])
    p.add_argument("--attention", nargs="+", default=["full", "mem-eff"], choices=["full", "mem-eff"],
                   help="memory rows with full and/or memory-efficient (chunked) UNet attention")
    args = p.parse_args(argv)
    everything = set(args.priors) == {"sd", "zero123", "controlnet", "video"}
    # a subset writes its own JSON (priors_<names>.json) so it does not overwrite the full table's
    bench = Bench("priors" if everything else "priors_" + "_".join(args.priors))
    if not args.skip_speed:
        import torch

        bench.meta["torch"] = torch.__version__
        bench.meta["torch_threads"] = torch.get_num_threads()
        speed_rows(bench, args.repeats, args.priors)
    if not args.skip_memory:
        memory_rows(bench, args.dtypes, args.priors, args.attention)
    bench.meta["peak_rss_gib"] = round(peak_rss_gib(), 2)
    bench.report()
    print(json.dumps(bench.meta))


if __name__ == "__main__":
    main()
