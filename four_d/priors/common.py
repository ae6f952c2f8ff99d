"""Pieces shared by the priors: VAE encoding of renders, text encoding, view-dependent prompts, the jitted
SDS wrapper with per-call knobs, and sharding constraints.

Images follow the house convention [B, H, W, 3] float in [0, 1]; diffusion latents are NCHW ([B, 4, h, w])
as in diffusers (the Flax VAE returns NHWC; it is transposed here once).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kernels.sampling import resize

DATA_AXIS = "data"


def check_images(images, where, channels=3):
    """Static check of a batch of images [B, H, W, C]; ValueError naming the function otherwise."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != channels:
        raise ValueError(f"{where}: images must be [B, H, W, {channels}] in [0, 1], got shape {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{where}: images must be floating point in [0, 1], got dtype {images.dtype}")


def resize_bilinear(images, size):
    """[B, H, W, C] -> [B, size, size, C] as F.interpolate(mode='bilinear', align_corners=False) (no antialias)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return resize(images, (size, size), method="bilinear", align_corners=False, antialias=False)


def vae_encode(vae, vae_params, images01, eps=None, scale=True):
    """Latents [B, 4, h, w] of images [B, H, W, 3] in [0, 1] (mapped to [-1, 1] first, as encode_imgs).

    eps [B, 4, h, w] (standard normal) draws the posterior sample mean + std * eps (official encode_imgs:
    latent_dist.sample()); eps=None takes the mean. scale multiplies by the VAE's scaling_factor (0.18215 for
    SD 1.5); zero123's reference latent is the one unscaled case. Differentiable w.r.t. the images (the only
    path of the SDS gradient).
    """
    x = (2.0 * images01 - 1.0).astype(vae.dtype)
    posterior = vae.apply({"params": vae_params}, jnp.transpose(x, (0, 3, 1, 2)), method=vae.encode).latent_dist
    z = posterior.mean.astype(jnp.float32)
    if eps is not None:
        z = z + posterior.std.astype(jnp.float32) * jnp.transpose(eps, (0, 2, 3, 1))
    if scale:
        z = z * vae.config.scaling_factor
    return jnp.transpose(z, (0, 3, 1, 2))


def latent_shape(vae, batch, size):
    """Shape [batch, latent_channels, size / f, size / f] of the latents of size x size images."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % factor:
        raise ValueError(f"four_d/priors: image size {size} must be a multiple of the VAE factor {factor}")
    return (batch, vae.config.latent_channels, size // factor, size // factor)


def draw(key, latent_shape_, num_t, min_step, max_step):
    """The random draws of one SDS step: dict(latent_eps, t [num_t], noise), all from one key.

    latent_eps samples the VAE posterior, t the timesteps (U{min..max} inclusive), noise the forward process.
    Kept apart from the deterministic step so tests can feed the same draws to a PyTorch reference.
    """
    from four_d.priors import sds

    k_lat, k_t, k_noise = jax.random.split(key, 3)
    return dict(latent_eps=jax.random.normal(k_lat, latent_shape_, jnp.float32),
                t=sds.sample_timesteps(k_t, (num_t,), min_step, max_step),
                noise=jax.random.normal(k_noise, latent_shape_, jnp.float32))


def encode_text(text_model, text_params, tokenizer, prompts):
    """Last hidden states [N, L, D] of the CLIP text encoder for a list of prompts.

    Tokenised as the official get_text_embeds: padding to model_max_length, truncation, no attention mask.
    Runs eagerly once per prompt set (not in the training step).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="np").input_ids
    return _text_forward(text_model, text_params, jnp.asarray(ids, jnp.int32))


def _text_forward(text_model, text_params, ids):
    fn = getattr(text_model, "_cine_jit", None)
    if fn is None:
        fn = jax.jit(lambda p, i: text_model(i, params=p).last_hidden_state)
        text_model._cine_jit = fn
    return fn(text_params, ids).astype(jnp.float32)


def wrap_azimuth(azimuth):
    return jnp.mod(jnp.asarray(azimuth, jnp.float32) + 180.0, 360.0) - 180.0


def view_blend_weights(azimuth):
    """(r, region) of the official front/side/back prompt interpolation (nerf/utils.py train_step).

    Azimuth in degrees, wrapped to [-180, 180). region 0: -90 <= az < 90, embedding r front + (1 - r) side
    with r = 1 - |az| / 90; region 1: otherwise, r side + (1 - r) back with r = 1 - (|az| - 90) / 90.
    """
    az = wrap_azimuth(azimuth)
    front = (az >= -90.0) & (az < 90.0)
    r = jnp.where(front, 1.0 - jnp.abs(az) / 90.0, 1.0 - (jnp.abs(az) - 90.0) / 90.0)
    return r, front


def view_embeddings(embeddings, azimuth, use_view=True):
    """(uncond [B, L, D], cond [B, L, D]) for cameras at azimuth [B] (degrees, 0 = the reference view).

    embeddings: dict(uncond, default, front, side, back), each [L, D] (prompt_embeddings). use_view (a
    bool, possibly traced) selects the view-blended prompt or the plain one (official --no_view_text with a
    dynamic camera uses 'default'). The unconditional embedding is the negative prompt for every view
    (official, --dir_texts_neg off).
    """
    azimuth = jnp.atleast_1d(jnp.asarray(azimuth, jnp.float32))
    r, front = view_blend_weights(azimuth)
    r = r[:, None, None]
    start = jnp.where(front[:, None, None], embeddings["front"], embeddings["side"])
    end = jnp.where(front[:, None, None], embeddings["side"], embeddings["back"])
    blended = r * start + (1.0 - r) * end
    default = jnp.broadcast_to(embeddings["default"], blended.shape)
    cond = jnp.where(jnp.asarray(use_view), blended, default)
    uncond = jnp.broadcast_to(embeddings["uncond"], cond.shape)
    return uncond, cond


def prompt_embeddings(text_model, text_params, tokenizer, text, negative="", suffixes=("front", "side", "back")):
    """dict(uncond, default, front, side, back) of [L, D] embeddings for a prompt (official prepare_embeddings:
    f"{text}, {d} view" for each direction, the negative prompt as the unconditional branch)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"four_d/priors: the prompt must be a non-empty string, got {text!r}")
    if len(suffixes) != 3:
        raise ValueError(f"four_d/priors: view suffixes must be (front, side, back), got {suffixes!r}")
    prompts = [negative, text] + [f"{text}, {d} view" for d in suffixes]
    e = encode_text(text_model, text_params, tokenizer, prompts)
    return dict(uncond=e[0], default=e[1], front=e[2], side=e[3], back=e[4])


def constrain(x, mesh, spec):
    """with_sharding_constraint on a mesh's "data" axis (no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_spec(ndim, axis=0):
    """PartitionSpec sharding `axis` of an ndim array over "data"."""
    spec = [None] * ndim
    spec[axis] = DATA_AXIS
    return P(*spec)


def replicate(tree, mesh):
    """Place a pytree (the frozen prior's params) replicated on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


class TextConditioned:
    """Methods shared by the prior dataclasses that hold a CLIP text encoder (fields text_encoder, tokenizer,
    alphas_cumprod; parameters apart, params["text_encoder"]): SD 1.x and the video prior."""

    @property
    def num_train_timesteps(self):
        return int(self.alphas_cumprod.shape[0])

    def encode_text(self, params, prompts):
        return encode_text(self.text_encoder, params["text_encoder"], self.tokenizer, prompts)

    def prompt_embeddings(self, params, text, negative="", suffixes=("front", "side", "back")):
        return prompt_embeddings(self.text_encoder, params["text_encoder"], self.tokenizer, text, negative, suffixes)


class SDSFunction:
    """A jit-compiled SDS loss `fn(params, key, *inputs, knobs)` with per-call knobs filled from the config.

    Calling `sds(params, key, *inputs, **knob_overrides)` passes the knobs (min_step, max_step,
    guidance_scale, grad_scale, grad_clip) as float32/int32 scalars, so changing them between steps
    (annealing) never recompiles. `traces` counts how many times the function was traced (tests assert
    it stays 1 over many steps); `jitted` is the underlying jax.jit object (AOT: `jitted.lower(...)`).
    """

    KNOB_DTYPES = dict(min_step=jnp.int32, max_step=jnp.int32, guidance_scale=jnp.float32,
                       grad_scale=jnp.float32, grad_clip=jnp.float32)

    def __init__(self, core, defaults, name):
        self.name = name
        self.defaults = dict(defaults)
        self.traces = 0

        def traced(*args):
            self.traces += 1
            return core(*args)

        self.jitted = jax.jit(traced)

    def knobs(self, **overrides):
        unknown = set(overrides) - set(self.KNOB_DTYPES)
        if unknown:
            raise ValueError(f"{self.name}: unknown knob(s) {sorted(unknown)}; known: {sorted(self.KNOB_DTYPES)}")
        vals = {**self.defaults, **overrides}
        return {k: jnp.asarray(vals[k], self.KNOB_DTYPES[k]) for k in self.KNOB_DTYPES}

    def __call__(self, params, key, *inputs, **overrides):
        return self.jitted(params, key, *inputs, self.knobs(**overrides))

    def lower(self, params, key, *inputs, **overrides):
        return self.jitted.lower(params, key, *inputs, self.knobs(**overrides))


def knob_defaults(section, min_step, max_step):
    return dict(min_step=min_step, max_step=max_step, guidance_scale=float(section.guidance_scale),
                grad_scale=float(section.lambda_guidance), grad_clip=float(section.grad_clip))


def as_numpy_image(image, where):
    """An image given as array-like -> float32 numpy [H, W, C] in [0, 1] (uint8 is divided by 255)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{where}: image must be [H, W, 3] (RGB) or [H, W, 4] (RGBA), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{where}: float image values must be finite and in [0, 1]")
    return arr
