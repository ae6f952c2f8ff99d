"""Stable Diffusion 1.5 SDS prior (Animate124 static stage; official guidance/sd_utils.py).

    model, params = load_stable_diffusion("checkpoints/stable-diffusion-v1-5")
    emb = model.prompt_embeddings(params, "a panda, 8k, good quality")      # front/side/back + negative
    sds = make_sd_sds(model, get_config().sd)                                 # jitted once
    loss, aux = sds(params, key, renders, emb, azimuth)                       # renders [B, H, W, 3] in [0, 1]

One step: renders resized to config.image_size (512) bilinearly (align_corners False), VAE-encoded with a
*sampled* latent x scaling_factor (0.18215), t ~ U{min_step..max_step} per image (200..600), noise, one UNet
call on the doubled batch [uncond; cond] with the view-blended prompt embeddings, CFG
eps_c + s (eps_c - eps_u) (s = 100), grad = lambda (1 - alpha_bar) (eps_hat - eps), loss
0.5 ||z - sg(z - grad)||^2 / B (four_d/priors/sds.py). The gradient reaches the renders through the VAE
encoder only. The folder is a diffusers StableDiffusionPipeline layout: unet/, vae/, text_encoder/,
tokenizer/, scheduler/ (Flax msgpack, safetensors or PyTorch .bin weights; see loading.py).
"""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from configs.priors import get_config
from four_d.priors import common, loading, sds


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusion(common.TextConditioned):
    """The frozen modules of an SD 1.x folder (parameters live apart, in a dict: unet, vae, text_encoder)."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    alphas_cumprod: np.ndarray
    folder: str


def load_text_encoder(folder, dtype=jnp.float32):
    """(FlaxCLIPTextModel, params, CLIPTokenizer) from folder/text_encoder and folder/tokenizer."""
    from transformers import FlaxCLIPTextModel

    model, params = loading.load_transformers_model(FlaxCLIPTextModel, loading.require_dir(folder, "text_encoder"),
                                                    dtype)
    return model, params, loading.load_tokenizer(loading.require_dir(folder, "tokenizer"))


def load_stable_diffusion(folder, dtype="float32", **unet_overrides):
    """(StableDiffusion, params) from a local diffusers SD 1.x folder; never touches the network.

    dtype: "float32" or "bfloat16" (parameters and compute). unet_overrides go to FlaxUNet2DConditionModel
    (e.g. use_memory_efficient_attention=True).
    """
    jdtype = loading.parse_dtype(dtype, "four_d/priors/sd.py")
    loading.require_dir(folder)
    unet, unet_p = loading.load_unet2d(loading.require_dir(folder, "unet"), jdtype, **unet_overrides)
    vae, vae_p = loading.load_vae(loading.require_dir(folder, "vae"), jdtype)
    text, text_p, tok = load_text_encoder(folder, jdtype)
    alphas = loading.load_alphas_cumprod(loading.require_dir(folder, "scheduler"))
    if unet.config.in_channels != vae.config.latent_channels:
        raise ValueError(f"{folder}: unet in_channels {unet.config.in_channels} != vae latent_channels "
                         f"{vae.config.latent_channels} (not a text-to-image SD folder)")
    if unet.config.cross_attention_dim != text.config.hidden_size:
        raise ValueError(f"{folder}: unet cross_attention_dim {unet.config.cross_attention_dim} != text encoder "
                         f"hidden_size {text.config.hidden_size}")
    model = StableDiffusion(unet, vae, text, tok, alphas, os.path.abspath(folder))
    return model, dict(unet=unet_p, vae=vae_p, text_encoder=text_p)


def build_sd_prior(folder, config=None, mesh=None, **unet_overrides):
    """(model, params, sds) from a local SD 1.x folder with everything taken from config (configs/priors.py sd)."""
    config = config or get_config().sd
    unet_overrides.setdefault("use_memory_efficient_attention", bool(config.memory_efficient_attention))
    model, params = load_stable_diffusion(folder, config.dtype, **unet_overrides)
    return model, params, make_sd_sds(model, config, mesh)


def config_prompt_embeddings(model, params, text, config):
    """model.prompt_embeddings with the config's negative prompt and view suffixes (sd / video sections)."""
    return model.prompt_embeddings(params, text, config.negative_prompt, tuple(config.view_suffixes))


def unet_eps(unet, unet_params, noisy, t, context, mesh=None, **extra):
    """eps of a Flax UNet on NCHW latents [N, C, h, w], t [N], context [N, L, D]; float32 out."""
    noisy = common.constrain(noisy, mesh, common.batch_spec(noisy.ndim))
    context = common.constrain(context, mesh, common.batch_spec(context.ndim))
    out = unet.apply({"params": unet_params}, noisy.astype(unet.dtype), t, context.astype(unet.dtype),
                     **extra).sample
    return out.astype(jnp.float32)


def sd_sds_given(model, config, params, images, embeddings, azimuth, use_view, draws, knobs, mesh=None):
    """The deterministic SD SDS step given its random draws (common.draw): (loss, aux). See make_sd_sds."""
    b = images.shape[0]
    x = common.constrain(common.resize_bilinear(images.astype(jnp.float32), int(config.image_size)), mesh,
                         common.batch_spec(4))
    eps = draws["latent_eps"] if config.latent_sample else None
    latents = common.vae_encode(model.vae, params["vae"], x, eps)
    uncond, cond = common.view_embeddings(embeddings, azimuth, use_view)
    context = jnp.concatenate([uncond, cond], 0)  # official order [negative; positive]

    def predict(noisy, tt):
        out = unet_eps(model.unet, params["unet"], jnp.concatenate([noisy, noisy], 0), jnp.concatenate([tt, tt], 0),
                       context, mesh)
        return out[:b], out[b:]

    return sds.score_distillation(
        latents, draws["noise"], draws["t"], jnp.asarray(model.alphas_cumprod), predict,
        guidance_scale=knobs["guidance_scale"], cfg_form=config.cfg_form, weighting_strategy=config.weighting,
        grad_scale=knobs["grad_scale"], grad_clip=knobs["grad_clip"], loss_target=config.loss_target,
        loss_reduction=config.loss_reduction)


def make_sd_sds(model, config=None, mesh=None):
    """The jitted SD SDS loss: sds(params, key, images, embeddings, azimuth, use_view=True) -> (loss, aux).

    images [B, H, W, 3] in [0, 1] (any size: resized to config.image_size); embeddings from
    model.prompt_embeddings (dict of [L, D]); azimuth [B] degrees relative to the reference view (official
    data['azimuth'], 0 = front); use_view a bool (array) choosing the view-blended prompt (True) or the plain
    one. Knobs (keyword overrides per call, never recompiling): min_step, max_step, guidance_scale,
    grad_scale (lambda), grad_clip. With a mesh, the images and the doubled CFG batch are split over its
    "data" axis (params should be replicated: common.replicate).
    aux: sds.score_distillation's t, alpha_bar, w, grad_norm, grad_abs_mean, normaliser.
    """
    config = config or get_config().sd
    lo, hi = sds.step_range(config.t_range, model.num_train_timesteps)
    common.latent_shape(model.vae, 1, int(config.image_size))  # validates the size early

    def core(params, key, images, embeddings, azimuth, use_view, knobs):
        shape = common.latent_shape(model.vae, images.shape[0], int(config.image_size))
        draws = common.draw(key, shape, images.shape[0], knobs["min_step"], knobs["max_step"])
        return sd_sds_given(model, config, params, images, embeddings, azimuth, use_view, draws, knobs, mesh)

    fn = common.SDSFunction(core, common.knob_defaults(config, lo, hi), "four_d/priors/sd.py sds")

    def sds_fn(params, key, images, embeddings, azimuth, use_view=True, **knobs):
        common.check_images(images, "four_d/priors/sd.py sds")
        missing = {"uncond", "default", "front", "side", "back"} - set(embeddings)
        if missing:
            raise ValueError(f"four_d/priors/sd.py sds: embeddings lack {sorted(missing)} (use prompt_embeddings)")
        azimuth = jnp.broadcast_to(jnp.asarray(azimuth, jnp.float32), images.shape[:1])
        return fn(params, key, images, embeddings, azimuth, jnp.asarray(use_view, bool), **knobs)

    sds_fn.function = fn
    return sds_fn
