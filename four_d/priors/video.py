"""ModelScope text-to-video SDS prior (Animate124 coarse dynamic stage; official sd_utils.py with 'ms' in the key).

    model, params = load_video_prior("checkpoints/text-to-video-ms-1.7b")     # TextToVideoSDPipeline folder
    emb = model.prompt_embeddings(params, "a panda is dancing, high-resolution, 8k, good quality")
    sds = make_video_sds(model, get_config().video)
    loss, aux = sds(params, key, clip, emb, azimuth, use_view=False)          # clip [B, F, H, W, 3] in [0, 1]

One step (official): every frame resized to 256 (bilinear, align_corners False) and VAE-encoded alone (sampled
latent x 0.18215) into latents [B, 4, F, 32, 32]; ONE t ~ U{20..980} and one noise tensor per clip; the UNet3D
on the doubled batch [uncond; cond]; CFG eps_c + 100 (eps_c - eps_u); grad = lambda (1 - alpha_bar)(eps_hat -
eps); loss 0.5 ||z - sg(z - grad)||^2 / B, i.e. summed over all frames (--mean_frame off; on, it is also
divided by F).

The UNet3D is any Flax module with the call layout of the port in four_d/priors/unet3d.py:
`unet.apply({"params": p}, sample [B, C, F, H, W], timesteps [B], encoder_hidden_states [B, L, D])
-> [B, C, F, H, W]` (diffusers' UNet3DConditionModel layout). With a mesh, the frames of the clip are split
over the "data" axis, for the VAE encoding and in the UNet3D input.

Memory (benchmarks/priors.py, paper size, 16 frames at 256 px, bfloat16): the VAE encoder's activations over
the 16 frames, kept for the gradient, are the largest part of the step; config vae_frames_per_chunk = 1 encodes
one frame at a time under jax.checkpoint (same values; common.encode_frames, shared with the ControlNet prior)
and about halves the step's memory.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from configs.priors import get_config
from four_d.priors import common, loading, sds


@dataclasses.dataclass(frozen=True, eq=False)
class VideoPrior(common.TextConditioned):
    """A video diffusion model: UNet3D (unet3d.py layout), VAE, CLIP text encoder, schedule.
    Params live apart: dict(unet, vae, text_encoder)."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    alphas_cumprod: np.ndarray
    folder: str = ""


def load_video_prior(folder, dtype="float32", use_memory_efficient_attention=False):
    """(VideoPrior, params) from a local diffusers text-to-video folder (the ModelScope pipeline layout:
    unet/ holds a UNet3DConditionModel, vae/, text_encoder/, tokenizer/, scheduler/).

    The UNet3D goes through four_d.priors.unet3d.load_unet3d (the Flax port; computation and parameters in
    `dtype`); vae/, text_encoder/, tokenizer/ and scheduler/ through the same loaders as Stable Diffusion.
    """
    from four_d.priors.sd import load_text_encoder
    from four_d.priors.unet3d import load_unet3d

    jdtype = loading.parse_dtype(dtype, "four_d/priors/video.py")
    loading.require_dir(folder)
    unet, unet_p = load_unet3d(loading.require_dir(folder, "unet"), dtype=jdtype,
                               use_memory_efficient_attention=bool(use_memory_efficient_attention))
    vae, vae_p = loading.load_vae(loading.require_dir(folder, "vae"), jdtype)
    text, text_p, tok = load_text_encoder(folder, jdtype)
    alphas = loading.load_alphas_cumprod(loading.require_dir(folder, "scheduler"))
    if unet.in_channels != vae.config.latent_channels or unet.out_channels != vae.config.latent_channels:
        raise ValueError(f"{folder}: unet in/out channels {unet.in_channels}/{unet.out_channels} != vae "
                         f"latent_channels {vae.config.latent_channels} (not a text-to-video folder)")
    if unet.cross_attention_dim != text.config.hidden_size:
        raise ValueError(f"{folder}: unet cross_attention_dim {unet.cross_attention_dim} != text encoder "
                         f"hidden_size {text.config.hidden_size}")
    model = VideoPrior(unet, vae, text, tok, alphas, os.path.abspath(folder))
    return model, dict(unet=unet_p, vae=vae_p, text_encoder=text_p)


def build_video_prior(folder, config=None, mesh=None):
    """(model, params, sds) from a local text-to-video folder with config (configs/priors.py video)."""
    config = config or get_config().video
    model, params = load_video_prior(folder, config.dtype, config.memory_efficient_attention)
    return model, params, make_video_sds(model, config, mesh)


def video_draws(key, vae, batch, frames, size, min_step, max_step):
    """dict(latent_eps [B F, 4, h, w] (per-frame posterior samples), t [B] (one per clip), noise [B, 4, F, h, w])."""
    per_frame = common.latent_shape(vae, batch * frames, size)
    c, h, w = per_frame[1:]
    k_lat, k_t, k_noise = jax.random.split(key, 3)
    return dict(latent_eps=jax.random.normal(k_lat, per_frame, jnp.float32),
                t=sds.sample_timesteps(k_t, (batch,), min_step, max_step),
                noise=jax.random.normal(k_noise, (batch, c, frames, h, w), jnp.float32))


def video_normaliser(config, batch, frames):
    """The loss divisor: None (the reduction's, B for "sum": official --mean_frame off) or B x F (mean_frame)."""
    return batch * frames if config.mean_frame else None


def video_sds_given(model, config, params, clips, embeddings, azimuth, use_view, draws, knobs, mesh=None):
    """The deterministic video SDS step given its draws (video_draws). See make_video_sds."""
    b, f, hh, ww, _ = clips.shape
    size = int(config.image_size)
    x = common.resize_bilinear(clips.reshape(b * f, hh, ww, 3).astype(jnp.float32), size)
    eps = draws["latent_eps"] if config.latent_sample else None
    z = common.encode_frames(model.vae, params["vae"], x, eps, int(config.vae_frames_per_chunk), mesh,
                             "four_d/priors/video.py: video.vae_frames_per_chunk")  # [B F, 4, h, w]
    latents = jnp.transpose(z.reshape((b, f) + z.shape[1:]), (0, 2, 1, 3, 4))  # (b f) c h w -> b c f h w
    uncond, cond = common.view_embeddings(embeddings, azimuth, use_view)
    context = jnp.concatenate([uncond, cond], 0)
    frames_spec = P(None, None, common.DATA_AXIS, None, None)

    def predict(noisy, tt):
        inp = common.constrain(jnp.concatenate([noisy, noisy], 0), mesh, frames_spec)
        dtype = jax.tree.leaves(params["unet"])[0].dtype  # the UNet3D's parameter dtype (float32 / bfloat16)
        out = model.unet.apply({"params": params["unet"]}, inp.astype(dtype), jnp.concatenate([tt, tt], 0),
                               context.astype(dtype))
        out = common.constrain(out.astype(jnp.float32), mesh, frames_spec)
        return out[:b], out[b:]

    return sds.score_distillation(
        latents, draws["noise"], draws["t"], jnp.asarray(model.alphas_cumprod), predict,
        guidance_scale=knobs["guidance_scale"], cfg_form=config.cfg_form, weighting_strategy=config.weighting,
        grad_scale=knobs["grad_scale"], grad_clip=knobs["grad_clip"], loss_target=config.loss_target,
        loss_reduction=config.loss_reduction, normaliser=video_normaliser(config, b, f))


def make_video_sds(model, config=None, mesh=None):
    """The jitted video SDS loss: sds(params, key, clips, embeddings, azimuth, use_view=True) -> (loss, aux).

    clips [B, F, H, W, 3] (or one clip [F, H, W, 3]) in [0, 1]; embeddings from model.prompt_embeddings;
    azimuth [B] degrees (the clip's camera, for the view-blended prompt; official uses it only with a static
    camera, use_view=False is --no_view_text with a dynamic camera). Knobs per call as the other priors.
    """
    config = config or get_config().video
    lo, hi = sds.step_range(config.t_range, model.num_train_timesteps)
    size = int(config.image_size)
    common.latent_shape(model.vae, 1, size)

    def core(params, key, clips, embeddings, azimuth, use_view, knobs):
        draws = video_draws(key, model.vae, clips.shape[0], clips.shape[1], size, knobs["min_step"],
                            knobs["max_step"])
        return video_sds_given(model, config, params, clips, embeddings, azimuth, use_view, draws, knobs, mesh)

    fn = common.SDSFunction(core, common.knob_defaults(config, lo, hi), "four_d/priors/video.py sds")

    def sds_fn(params, key, clips, embeddings, azimuth=0.0, use_view=True, **knobs):
        if getattr(clips, "ndim", 0) == 4:
            clips = clips[None]
        shape = getattr(clips, "shape", None)
        if shape is None or len(shape) != 5 or shape[-1] != 3:
            raise ValueError(f"four_d/priors/video.py sds: clips must be [B, F, H, W, 3] or [F, H, W, 3], got {shape}")
        azimuth = jnp.broadcast_to(jnp.asarray(azimuth, jnp.float32), clips.shape[:1])
        return fn(params, key, clips, embeddings, azimuth, jnp.asarray(use_view, bool), **knobs)

    sds_fn.function = fn
    return sds_fn
