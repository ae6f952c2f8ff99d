"""Pieces shared by the priors: VAE encoding of renders, text encoding, view-dependent prompts, the jitted
SDS wrapper with per-call knobs, and sharding constraints.

Images follow the house convention [B, H, W, 3] float in [0, 1]; diffusion latents are NCHW ([B, 4, h, w])
as in diffusers (the Flax VAE returns NHWC; it is transposed here once).
"""

import contextlib
import math

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


VAE_QUERY_CHUNK = 1024  # queries per block of the memory-bounded VAE attention (128 x 128 latents: 16 blocks)


def encode_frames(vae, vae_params, frames, eps, frames_per_chunk=0, mesh=None, where="vae_frames_per_chunk",
                  query_chunk=VAE_QUERY_CHUNK):
    """Scaled VAE latents [N, 4, h, w] of frames [N, S, S, 3] in [0, 1], each frame encoded alone (official
    encode_imgs: the VAE has no cross-frame layer, so a batch of N frames is N independent encodes).

    eps [N, 4, h, w] or None as vae_encode. frames_per_chunk 0 (official): one plain encoder call over all N
    frames, whose activations are all kept for the gradient (about 0.6 GB per 256 px frame, ~11 GB per 1024 px
    frame: the largest part of the paper-size video and ControlNet steps, benchmarks/priors.py).
    k > 0 (dividing N): the memory-bounded encode, the same values: lax.map over N / k chunks of k frames under
    jax.checkpoint (the forward keeps only each chunk's latents, the backward recomputes one chunk at a time),
    and inside the encoder every ResNet block rematerialised and the mid-block self-attention computed
    query_chunk queries at a time (memory_bounded_vae_blocks), so the recomputed chunk never holds all of its
    activations nor the [h w, h w] score matrix (16k x 16k at 1024 px). With a mesh, the frames (of each chunk)
    are split over "data". `where` names the config key in the error (e.g. "four_d/priors/video.py:
    video.vae_frames_per_chunk"). Used by the video prior (config video.vae_frames_per_chunk) and the ControlNet
    prior (controlnet.vae_frames_per_chunk); tests/test_priors_chunked.py proves the equality.
    """
    n = frames.shape[0]
    k = int(frames_per_chunk)
    if k < 0 or (k and n % k):
        raise ValueError(f"{where} {k} must be 0 (all frames at once) or divide the {n} frames of the batch")

    def encode(x, e):
        x = constrain(x, mesh, batch_spec(4))  # the frames over "data"
        return vae_encode(vae, vae_params, x, e)

    if k == 0:
        return encode(frames, eps)

    def bounded(x, e):
        with memory_bounded_vae_blocks(query_chunk):
            return encode(x, e)

    chunks = frames.reshape((n // k, k) + frames.shape[1:])
    eps_chunks = None if eps is None else eps.reshape((n // k, k) + eps.shape[1:])
    z = jax.lax.map(lambda c: jax.checkpoint(bounded)(*c), (chunks, eps_chunks))
    return z.reshape((n,) + z.shape[2:])


def chunked_attention(q, k, v, query_chunk):
    """softmax(q k^T) v for q [B, H, T, D], k, v [B, H, S, D] (q and k already scaled), query_chunk queries at a
    time under jax.checkpoint: each row of the softmax depends on its own query only, so the result is the full
    attention's, with at most [B, H, query_chunk, S] scores alive (forward and backward). The queries are padded
    to a multiple of query_chunk (the padded rows are dropped). query_chunk <= 0 or >= T: one block."""
    t = q.shape[-2]
    c = int(query_chunk)

    def block(qc):
        w = jax.nn.softmax(jnp.einsum("...qd,...kd->...qk", qc, k), axis=-1)
        return jnp.einsum("...qk,...kd->...qd", w, v)

    if c <= 0 or t <= c:
        return block(q)
    nb = -(-t // c)
    qp = jnp.pad(q, [(0, 0)] * (q.ndim - 2) + [(0, nb * c - t), (0, 0)])
    qs = jnp.moveaxis(qp.reshape(q.shape[:-2] + (nb, c, q.shape[-1])), -3, 0)
    out = jax.lax.map(jax.checkpoint(block), qs)
    out = jnp.moveaxis(out, 0, -3).reshape(q.shape[:-2] + (nb * c, v.shape[-1]))
    return out[..., :t, :]


@contextlib.contextmanager
def memory_bounded_vae_blocks(query_chunk=VAE_QUERY_CHUNK):
    """Within the context, diffusers' Flax VAE builds its ResNet blocks rematerialised (flax nn.remat) and its
    attention blocks with chunked_attention: the same parameters (names and shapes) and the same values, less
    memory for the gradient. FlaxDownEncoderBlock2D / FlaxUNetMidBlock2D look the block classes up in the
    vae_flax module namespace when `setup` runs, i.e. when the VAE is applied (traced), so wrapping
    `vae.apply` selects them for that trace only (as loading.controlnet_attention does for the ControlNet).
    """
    import flax.linen as nn
    from diffusers.models import vae_flax as vf

    saved = vf.FlaxResnetBlock2D, vf.FlaxAttentionBlock
    resnet_call = nn.remat(lambda mdl, x: saved[0].__call__(mdl, x, True))  # deterministic: the VAE has no dropout

    class FlaxResnetBlock2D(saved[0]):
        def __call__(self, hidden_states, deterministic=True):
            return resnet_call(self, hidden_states)

    class FlaxAttentionBlock(saved[1]):
        # diffusers' attention block (group norm, q/k/v/proj dense, both q and k scaled by d^-1/4, residual)
        # with the score matrix computed by query blocks
        def __call__(self, hidden_states):
            b, h, w, c = hidden_states.shape
            x = self.group_norm(hidden_states).reshape((b, h * w, c))
            q, k, v = (self.transpose_for_scores(f(x)) for f in (self.query, self.key, self.value))
            scale = 1.0 / math.sqrt(math.sqrt(c / self.num_heads))
            out = chunked_attention(q * scale, k * scale, v, query_chunk)  # [B, heads, T, D]
            out = jnp.transpose(out, (0, 2, 1, 3)).reshape((b, h * w, c))
            return self.proj_attn(out).reshape((b, h, w, c)) + hidden_states

    vf.FlaxResnetBlock2D, vf.FlaxAttentionBlock = FlaxResnetBlock2D, FlaxAttentionBlock
    try:
        yield
    finally:
        vf.FlaxResnetBlock2D, vf.FlaxAttentionBlock = saved


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
