"""ControlNet-Tile SDS prior (Animate124 fine stage, semantic refinement; official guidance/cn_utils.py).

    model, params = load_controlnet_tile("checkpoints/stable-diffusion-v1-5", "checkpoints/control_v11f1e_sd15_tile",
                                         learned_embeds="data/panda/learned_embeds.bin")
    emb = model.sd.prompt_embeddings(params, "a _panda_ is dancing")          # UNet prompt (textual inversion)
    cn_emb = model.controlnet_embeddings(params)                              # "best quality, high resolution"
    sds = make_controlnet_sds(model, get_config().controlnet)
    idx = select_frames(16, 2)                                                # frames {0, 8}
    loss, aux = sds(params, key, clip[idx], frozen_clip[idx], emb, azimuth[idx], cn_emb, use_view=False)

One step (official): the selected frames (cn_frames 2) of the current render and of a frozen copy of the coarse
model's render (the tile condition, detached) are bilinearly resized to 1024 (128 x 128 latents); one t ~
U{200..800} for the whole clip; the ControlNet sees the noisy latents, the condition in [0, 1] and its own
prompt, its residuals are added to the SD 1.5 UNet (conditioning_scale 1); CFG eps_c + 7.5 (eps_c - eps_u);
the --grad_dyn target x0_hat = (z_t - sqrt(1 - a) eps_hat) / sqrt(a) with loss 0.5 ||z - sg(x0_hat)||^2 /
number of frames (lambda and the SDS weight do not enter this path, as official).

Memory: at 1024 px the SD VAE encoder's activations (two frames, 128 channels at 1024 x 1024, the mid-block
self-attention over 128 x 128 = 16k tokens) kept for the gradient dominate the step; config
vae_frames_per_chunk = 1 encodes one frame at a time under jax.checkpoint (common.encode_frames, shared with
the video prior: the same values, tests/test_priors_chunked.py), which the paper variant uses.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.priors import get_config
from four_d.priors import common, loading, sds
from four_d.priors import sd as sd_lib


@dataclasses.dataclass(frozen=True, eq=False)
class ControlNetTile:
    """SD 1.5 modules + a FlaxControlNetModel (params apart: unet, vae, text_encoder, controlnet)."""

    sd: sd_lib.StableDiffusion
    controlnet: object
    folder: str

    def controlnet_embeddings(self, params, config=None, prompt=None):
        """dict(uncond, cond) [L, D] for the ControlNet branch: config.controlnet_prompt (official --cn_cn_text
        "best quality, high resolution") unless prompt is given, config.negative_prompt as unconditional."""
        config = config or get_config().controlnet
        prompt = config.controlnet_prompt if prompt is None else prompt
        e = self.sd.encode_text(params, [config.negative_prompt, prompt])
        return dict(uncond=e[0], cond=e[1])


def load_controlnet_tile(sd_folder, controlnet_folder, dtype="float32", learned_embeds=None, **overrides):
    """(ControlNetTile, params) from a local SD 1.5 folder and a local ControlNet folder (config.json + weights).

    learned_embeds: a textual-inversion file (learned_embeds.bin / .safetensors) to add to the tokenizer and
    text encoder, as the official pipe.load_textual_inversion (four_d/priors/textual_inversion.py).
    """
    jdtype = loading.parse_dtype(dtype, "four_d/priors/controlnet.py")
    cn_cfg = loading.read_json(os.path.join(loading.require_dir(controlnet_folder), "config.json"))
    unet_cfg = loading.read_json(os.path.join(loading.require_dir(sd_folder, "unet"), "config.json"))
    for key in ("block_out_channels", "cross_attention_dim", "down_block_types", "layers_per_block"):
        a, b = cn_cfg.get(key), unet_cfg.get(key)
        if tuple(np.atleast_1d(a)) != tuple(np.atleast_1d(b)):
            raise ValueError(f"{controlnet_folder}/config.json: ControlNet {key} {a} does not match the UNet's {b} "
                             f"({sd_folder}/unet/config.json)")
    model, params = sd_lib.load_stable_diffusion(sd_folder, dtype, **overrides)
    cn, cn_p = loading.load_controlnet(controlnet_folder, jdtype)  # its attention: config, controlnet_attention
    params = dict(params, controlnet=cn_p)
    if learned_embeds is not None:
        from four_d.priors import textual_inversion

        text, text_p, tok, _ = textual_inversion.load_learned_embeds(
            model.text_encoder, params["text_encoder"], model.tokenizer, learned_embeds)
        model = dataclasses.replace(model, text_encoder=text, tokenizer=tok)
        params["text_encoder"] = text_p
    return ControlNetTile(model, cn, os.path.abspath(controlnet_folder)), params


def build_controlnet_prior(sd_folder, controlnet_folder, config=None, learned_embeds=None, mesh=None):
    """(model, params, sds) from local SD 1.5 + ControlNet folders with config (configs/priors.py controlnet)."""
    config = config or get_config().controlnet
    model, params = load_controlnet_tile(sd_folder, controlnet_folder, config.dtype, learned_embeds,
                                         use_memory_efficient_attention=bool(config.memory_efficient_attention))
    return model, params, make_controlnet_sds(model, config, mesh)


def config_frames(num_frames, config=None, key=None):
    """select_frames with the config's number of frames and method (official --cn_frames 2, even)."""
    config = config or get_config().controlnet
    return select_frames(num_frames, int(config.num_frames), config.frame_method, key)


def select_frames(num_frames, cn_frames, method="even", key=None):
    """Indices of the frames the ControlNet sees (official --cn_frame_method).

    "even": arange(0, F, F // cn_frames) (F must be a multiple of cn_frames); "random": a random subset of
    cn_frames distinct frames (needs a key). cn_frames >= F selects every frame.
    """
    if cn_frames >= num_frames:
        return np.arange(num_frames)
    if method == "even":
        if num_frames % cn_frames:
            raise ValueError(f"four_d/priors/controlnet.py: num_frames {num_frames} must be a multiple of "
                             f"cn_frames {cn_frames} for frame_method 'even'")
        return np.arange(0, num_frames, num_frames // cn_frames)
    if method == "random":
        if key is None:
            raise ValueError("four_d/priors/controlnet.py: frame_method 'random' needs a key")
        return jax.random.permutation(key, num_frames)[:cn_frames]
    raise ValueError(f"four_d/priors/controlnet.py: frame_method must be 'even' or 'random', got {method!r}")


def controlnet_sds_given(model, config, params, frames, cond_frames, embeddings, azimuth, use_view, cn_embeddings,
                         draws, knobs, mesh=None):
    """The deterministic ControlNet-Tile step given its draws (t [1] shared by the clip). See make_controlnet_sds."""
    sd, cn = model.sd, model.controlnet
    f = frames.shape[0]
    size = int(config.image_size)
    spec = common.batch_spec(4)
    x = common.constrain(common.resize_bilinear(frames.astype(jnp.float32), size), mesh, spec)
    cond = common.resize_bilinear(jax.lax.stop_gradient(cond_frames).astype(jnp.float32), size)
    cond = jnp.transpose(jnp.concatenate([cond, cond], 0), (0, 3, 1, 2))  # [2F, 3, S, S] in [0, 1]
    latents = common.encode_frames(sd.vae, params["vae"], x, draws["latent_eps"] if config.latent_sample else None,
                                   int(config.vae_frames_per_chunk), mesh,
                                   "four_d/priors/controlnet.py: controlnet.vae_frames_per_chunk")
    uncond, cond_text = common.view_embeddings(embeddings, azimuth, use_view)
    context = jnp.concatenate([uncond, cond_text], 0)  # official [neg x F; pos x F]
    cn_context = jnp.concatenate([jnp.broadcast_to(cn_embeddings["uncond"], uncond.shape),
                                  jnp.broadcast_to(cn_embeddings["cond"], uncond.shape)], 0)
    t = jnp.broadcast_to(draws["t"], (f,))  # one t for the clip (official noise_sample(shape=batch_size))

    def predict(noisy, tt):
        inp = common.constrain(jnp.concatenate([noisy, noisy], 0), mesh, spec)
        tt2 = jnp.concatenate([tt, tt], 0)
        with loading.controlnet_attention(bool(config.memory_efficient_attention)):
            down, mid = cn.apply({"params": params["controlnet"]}, inp.astype(cn.dtype), tt2,
                                 cn_context.astype(cn.dtype), cond.astype(cn.dtype), float(config.conditioning_scale),
                                 return_dict=False)
        out = sd_lib.unet_eps(sd.unet, params["unet"], inp, tt2, context, mesh,
                              down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        return out[:f], out[f:]

    return sds.score_distillation(
        latents, draws["noise"], t, jnp.asarray(sd.alphas_cumprod), predict,
        guidance_scale=knobs["guidance_scale"], cfg_form=config.cfg_form, weighting_strategy=config.weighting,
        grad_scale=knobs["grad_scale"], grad_clip=knobs["grad_clip"], loss_target=config.loss_target,
        loss_reduction=config.loss_reduction)


def make_controlnet_sds(model, config=None, mesh=None):
    """The jitted ControlNet-Tile SDS loss:
    sds(params, key, frames, cond_frames, embeddings, azimuth, cn_embeddings, use_view=True) -> (loss, aux).

    frames [F, H, W, 3] in [0, 1]: the selected frames of the current render (select_frames); cond_frames the
    same frames rendered by the frozen coarse model (stop-gradient); embeddings the UNet prompt
    (model.sd.prompt_embeddings, dict of [L, D]); azimuth [F] degrees for the view-blended prompt (use_view);
    cn_embeddings from model.controlnet_embeddings. Knobs per call as the other priors. With a mesh the frames
    and the CFG pair are split over "data".
    """
    config = config or get_config().controlnet
    lo, hi = sds.step_range(config.t_range, model.sd.num_train_timesteps)
    common.latent_shape(model.sd.vae, 1, int(config.image_size))

    def core(params, key, frames, cond_frames, embeddings, azimuth, cn_embeddings, use_view, knobs):
        shape = common.latent_shape(model.sd.vae, frames.shape[0], int(config.image_size))
        draws = common.draw(key, shape, 1, knobs["min_step"], knobs["max_step"])
        return controlnet_sds_given(model, config, params, frames, cond_frames, embeddings, azimuth, use_view,
                                    cn_embeddings, draws, knobs, mesh)

    fn = common.SDSFunction(core, common.knob_defaults(config, lo, hi), "four_d/priors/controlnet.py sds")

    def sds_fn(params, key, frames, cond_frames, embeddings, azimuth, cn_embeddings, use_view=True, **knobs):
        common.check_images(frames, "four_d/priors/controlnet.py sds (frames)")
        common.check_images(cond_frames, "four_d/priors/controlnet.py sds (cond_frames)")
        if frames.shape[0] != int(config.num_frames):
            raise ValueError(f"four_d/priors/controlnet.py sds: got {frames.shape[0]} frames, config num_frames is "
                             f"{config.num_frames} (official --cn_frames; select them with config_frames)")
        if cond_frames.shape[0] != frames.shape[0]:
            raise ValueError(f"four_d/priors/controlnet.py sds: {frames.shape[0]} frames but {cond_frames.shape[0]} "
                             "condition frames")
        azimuth = jnp.broadcast_to(jnp.asarray(azimuth, jnp.float32), frames.shape[:1])
        return fn(params, key, frames, cond_frames, embeddings, azimuth, cn_embeddings, jnp.asarray(use_view, bool),
                  **knobs)

    sds_fn.function = fn
    return sds_fn
