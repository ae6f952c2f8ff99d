"""Zero-1-to-3 (XL) SDS prior (Animate124 static/dynamic stages; official guidance/zero123_diffusers_utils.py).

    model, params = load_zero123("checkpoints/zero123-xl")
    ref = encode_reference(model, params, reference_image(rgba), key)      # once: CLIP embedding + VAE latent
    cam = zero123_camera(d_polar, d_azimuth, d_radius)                      # OFFICIAL-convention deltas
    sds = make_zero123_sds(model, get_config().zero123)
    loss, aux = sds(params, key, renders, ref, cam)                          # renders [B, H, W, 3] in [0, 1]

Conditioning (official): the reference RGBA is resized to 256 with cv2.INTER_AREA and composited on white;
its CLIP image embedding (CLIPVisionModelWithProjection: visual_projection(pooled output); here
FlaxCLIPVisionModel + the bias-free projection read from `visual_projection.weight`, as transformers 4.57 has
no Flax class with the projection) is concatenated with the camera token [d_polar (rad), sin(-d_az),
cos(d_az), d_radius] and projected by the 772 -> 768 `cc_projection`; the reference VAE latent (a posterior
sample, NOT scaled by 0.18215) is concatenated to the noisy latent on the channel axis (8-channel UNet). The
unconditional branch uses zero embeddings and a zero concat latent; CFG eps_u + 5 (eps_c - eps_u); the
gradient weight is lambda (40) x angle(current camera, reference camera) / 180 degrees; renders are resized
to 256 (32 x 32 latents) and t ~ U{200..600}.

Camera convention: the deltas are in the OFFICIAL convention (data['polar'] / ['azimuth'] / ['radius']
minus the reference's: polar from +y in degrees, azimuth in degrees, radius in scene units); the caller may
instead pass the 4-vector token itself (camera_from_token). Mapping four_d's own camera convention to these
deltas (the sign of the azimuth term) is four_d.cameras' job (zero123_camera_token), not this module's.

Folder layouts accepted (diffusers conversions of zero123 differ in the camera projection): model_index.json
naming `cc_projection` (Animate124 / kxic, `cc_projection.weight`) or `clip_camera_projection`
(ashawkey / bennyguo, `proj.weight`), plus unet/, vae/, image_encoder/, scheduler/ and optionally
feature_extractor/ (CLIP preprocessing; OpenAI CLIP defaults otherwise). Other layouts fail with the folder
and what was found.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.priors import get_config
from four_d.priors import common, loading, sds
from four_d.priors.sd import unet_eps

PROJECTION_FOLDERS = ("cc_projection", "clip_camera_projection")


@dataclasses.dataclass(frozen=True, eq=False)
class Zero123:
    """The frozen modules of a zero123 folder (params apart: unet, vae, image_encoder, visual_projection,
    cc_projection)."""

    unet: object
    vae: object
    image_encoder: object
    image_processor: object
    alphas_cumprod: np.ndarray
    folder: str
    projection_folder: str
    jit_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_train_timesteps(self):
        return int(self.alphas_cumprod.shape[0])


def _projection_folder(folder):
    index = loading.model_index(folder)
    named = [n for n in PROJECTION_FOLDERS if n in index]
    present = [n for n in PROJECTION_FOLDERS if os.path.isdir(os.path.join(folder, n))]
    for name in named + present:
        if os.path.isdir(os.path.join(folder, name)):
            return name
    raise ValueError(f"{folder}: no camera projection found: expected a folder {' or '.join(PROJECTION_FOLDERS)} "
                     f"(named in model_index.json: {sorted(index) or 'no model_index.json'}; folder holds "
                     f"{sorted(os.listdir(folder))})")


def _load_projection(path, in_dim, out_dim):
    """The 772 -> 768 camera projection as Flax Dense params {kernel [in, out], bias [out]}."""
    state = loading.read_state_dict(loading.weights_file(path))
    weights = {k: v for k, v in state.items() if k.endswith("weight")}
    biases = {k: v for k, v in state.items() if k.endswith("bias")}
    if len(weights) != 1 or len(biases) != 1 or len(state) != 2:
        raise ValueError(f"{path}: expected one Linear layer (a weight and a bias, e.g. cc_projection.weight or "
                         f"proj.weight), found {sorted(state)}")
    (wname, w), (_, b) = next(iter(weights.items())), next(iter(biases.items()))
    if w.shape != (out_dim, in_dim) or b.shape != (out_dim,):
        raise ValueError(f"{path}: {wname} has shape {w.shape}, expected ({out_dim}, {in_dim}) = (cross_attention_dim, "
                         f"image embedding + 4 camera values)")
    return dict(kernel=jnp.asarray(w.T), bias=jnp.asarray(b))


def load_zero123(folder, dtype="float32", **unet_overrides):
    """(Zero123, params) from a local diffusers-format zero123 folder; never touches the network."""
    from transformers import CLIPImageProcessor, FlaxCLIPVisionModel

    jdtype = loading.parse_dtype(dtype, "four_d/priors/zero123.py")
    loading.require_dir(folder)
    proj_name = _projection_folder(folder)
    unet, unet_p = loading.load_unet2d(loading.require_dir(folder, "unet"), jdtype, **unet_overrides)
    vae, vae_p = loading.load_vae(loading.require_dir(folder, "vae"), jdtype)
    enc_dir = loading.require_dir(folder, "image_encoder")
    enc, enc_p, unused = loading.load_transformers_model(FlaxCLIPVisionModel, enc_dir, jdtype, return_unused=True)
    if "visual_projection.weight" not in unused:
        raise ValueError(f"{enc_dir}: no visual_projection.weight (a CLIPVisionModelWithProjection checkpoint is "
                         f"needed); unused entries: {sorted(unused)[:5]}")
    vis = np.asarray(unused["visual_projection.weight"])
    if vis.shape[1] != enc.config.hidden_size:
        raise ValueError(f"{enc_dir}: visual_projection.weight {vis.shape} does not match hidden_size "
                         f"{enc.config.hidden_size}")
    if unet.config.in_channels != 2 * vae.config.latent_channels:
        raise ValueError(f"{folder}/unet: in_channels {unet.config.in_channels}, zero123 needs 2 x "
                         f"{vae.config.latent_channels} (noisy latent + reference latent)")
    cc = _load_projection(os.path.join(folder, proj_name), vis.shape[0] + 4, unet.config.cross_attention_dim)
    fe = os.path.join(folder, "feature_extractor")
    processor = (CLIPImageProcessor.from_pretrained(fe, local_files_only=True) if os.path.isdir(fe)
                 else CLIPImageProcessor())
    alphas = loading.load_alphas_cumprod(loading.require_dir(folder, "scheduler"))
    model = Zero123(unet, vae, enc, processor, alphas, os.path.abspath(folder), proj_name)
    params = dict(unet=unet_p, vae=vae_p, image_encoder=enc_p,
                  visual_projection=dict(kernel=jnp.asarray(vis.T, jdtype)),
                  cc_projection=loading.cast_floating(cc, jdtype))
    return model, params


# ---- the reference view ---------------------------------------------------------------------------------


def reference_image(image, size=256):
    """The official zero123 reference: RGBA/RGB [H, W, 3|4] (uint8 or float in [0, 1]) -> [size, size, 3] float32.

    cv2.resize(rgba, (size, size), INTER_AREA) / 255, then rgb * alpha + (1 - alpha) (white background), as
    nerf/utils.py prepare_embeddings. An RGB image is used as is (already composited).
    """
    import cv2

    arr = np.asarray(image)
    common.as_numpy_image(arr, "four_d/priors/zero123.py reference_image")  # validates shape and range
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
    if arr.shape[:2] != (size, size):  # official: cv2.resize of the uint8 RGBA, then / 255
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr
    if arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    return arr.astype(np.float32)


def clip_image_embedding(model, params, image):
    """[1, 1, D] CLIP image embedding of an image [H, W, 3] in [0, 1] (official get_img_embeds / _encode_image).

    As official: quantised with int(x * 255), preprocessed by the folder's CLIPImageProcessor (resize,
    centre crop, CLIP normalisation), then visual_projection(pooled output).
    """
    pixels = np.floor(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    values = model.image_processor(images=pixels, return_tensors="np").pixel_values
    return _clip_forward(model)(params["image_encoder"], params["visual_projection"], jnp.asarray(values))


def _clip_forward(model):
    """jit of pooled CLIP vision output @ visual_projection, cached on the model (eager Flax is slow)."""
    if "clip" not in model.jit_cache:
        enc = model.image_encoder

        def fwd(enc_params, proj, values):
            pooled = enc(values.astype(enc.dtype), params=enc_params).pooler_output
            return (pooled.astype(jnp.float32) @ proj["kernel"].astype(jnp.float32))[:, None, :]

        model.jit_cache["clip"] = jax.jit(fwd)
    return model.jit_cache["clip"]


def _vae_forward(model):
    if "vae" not in model.jit_cache:
        model.jit_cache["vae"] = jax.jit(lambda p, x, eps: common.vae_encode(model.vae, p, x, eps, scale=False))
    return model.jit_cache["vae"]


def encode_reference(model, params, image, key=None, sample=True, eps=None):
    """dict(clip [1, 1, D], latent [1, 4, h, w]) of the reference image [S, S, 3] in [0, 1] (reference_image).

    latent is the VAE posterior sample (key, or the given standard-normal eps) NOT scaled by the
    scaling_factor, as official prepare_img_latents; sample=False takes the mean (the original zero123 uses
    the mode).
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"four_d/priors/zero123.py encode_reference: image must be [S, S, 3] in [0, 1], "
                         f"got {image.shape} (use reference_image for RGBA)")
    x = jnp.asarray(image)[None]
    if sample and eps is None:
        if key is None:
            raise ValueError("four_d/priors/zero123.py encode_reference: sample=True needs a key (or eps)")
        eps = jax.random.normal(key, common.latent_shape(model.vae, 1, image.shape[0]), jnp.float32)
    latent = _vae_forward(model)(params["vae"], x, eps if sample else None)
    return dict(clip=clip_image_embedding(model, params, image), latent=latent)


# ---- cameras (OFFICIAL convention) ------------------------------------------------------------------------


def camera_token(d_polar, d_azimuth, d_radius):
    """[..., 4] = [deg2rad(dp), sin(deg2rad(-da)), cos(deg2rad(da)), dr] (official train_step; azimuth > 180
    wrapped by -360 first, which the sine and cosine do not see). Degrees in, official convention."""
    p = jnp.asarray(d_polar, jnp.float32)
    a = jnp.asarray(d_azimuth, jnp.float32)
    a = jnp.where(a > 180.0, a - 360.0, a)
    r = jnp.broadcast_to(jnp.asarray(d_radius, jnp.float32), jnp.broadcast_shapes(p.shape, a.shape))
    return jnp.stack([jnp.deg2rad(p), jnp.sin(jnp.deg2rad(-a)), jnp.cos(jnp.deg2rad(a)), r], axis=-1)


def angle_to_reference(d_polar, d_azimuth, d_radius, ref_polar=90.0, ref_azimuth=0.0, ref_radius=1.8):
    """Degrees between the current camera direction and the reference's (official angle_between: both as
    (r sin(theta) cos(phi), r sin(theta) sin(phi), r cos(theta)) with theta = polar, phi = azimuth)."""

    def direction(polar, azimuth, radius):
        t, f = jnp.deg2rad(polar), jnp.deg2rad(azimuth)
        v = jnp.stack([radius * jnp.sin(t) * jnp.cos(f), radius * jnp.sin(t) * jnp.sin(f),
                       radius * jnp.cos(t) + 0.0 * f], -1)
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    p = jnp.asarray(d_polar, jnp.float32)
    a = jnp.asarray(d_azimuth, jnp.float32)
    r = jnp.asarray(d_radius, jnp.float32)
    v1 = direction(p + ref_polar, a + ref_azimuth, r + ref_radius)
    v2 = direction(jnp.float32(ref_polar), jnp.float32(ref_azimuth), jnp.float32(ref_radius))
    return jnp.rad2deg(jnp.arccos(jnp.clip(jnp.sum(v1 * v2, -1), -1.0, 1.0)))


def zero123_camera(d_polar, d_azimuth, d_radius, ref_polar=90.0, ref_azimuth=0.0, ref_radius=1.8):
    """dict(token [B, 4], angle [B] degrees) from OFFICIAL-convention deltas to the reference view."""
    token = jnp.atleast_2d(camera_token(d_polar, d_azimuth, d_radius))
    angle = jnp.atleast_1d(angle_to_reference(d_polar, d_azimuth, d_radius, ref_polar, ref_azimuth, ref_radius))
    return dict(token=token, angle=jnp.broadcast_to(angle, token.shape[:1]))


def camera_from_token(token, ref_polar=90.0, ref_azimuth=0.0, ref_radius=1.8):
    """dict(token, angle) from a caller-supplied official token [B, 4] (angle recovered from it)."""
    token = jnp.atleast_2d(jnp.asarray(token, jnp.float32))
    if token.shape[-1] != 4:
        raise ValueError(f"four_d/priors/zero123.py: a camera token is [B, 4], got {token.shape}")
    d_polar = jnp.rad2deg(token[:, 0])
    d_azimuth = jnp.rad2deg(jnp.arctan2(-token[:, 1], token[:, 2]))
    return dict(token=token, angle=angle_to_reference(d_polar, d_azimuth, token[:, 3], ref_polar, ref_azimuth,
                                                      ref_radius))


def build_zero123_prior(folder, config=None, mesh=None, **unet_overrides):
    """(model, params, sds) from a local zero123 folder with config (configs/priors.py zero123)."""
    config = config or get_config().zero123
    unet_overrides.setdefault("use_memory_efficient_attention", bool(config.memory_efficient_attention))
    model, params = load_zero123(folder, config.dtype, **unet_overrides)
    return model, params, make_zero123_sds(model, config, mesh)


def prepare_reference(model, params, image, key, config=None):
    """The reference conditioning as official, sizes and sampling from config: reference_image(image,
    config.reference_size) then encode_reference(sample=config.reference_latent_sample)."""
    config = config or get_config().zero123
    return encode_reference(model, params, reference_image(image, int(config.reference_size)), key,
                            sample=bool(config.reference_latent_sample))


def config_camera(d_polar, d_azimuth, d_radius, config=None):
    """zero123_camera with the reference view of config (reference_polar / _azimuth / _radius)."""
    config = config or get_config().zero123
    return zero123_camera(d_polar, d_azimuth, d_radius, config.reference_polar, config.reference_azimuth,
                          config.reference_radius)


# ---- the SDS step -----------------------------------------------------------------------------------------


def zero123_sds_given(model, config, params, images, reference, camera, draws, knobs, mesh=None):
    """The deterministic zero123 SDS step given its random draws (common.draw). See make_zero123_sds."""
    b = images.shape[0]
    x = common.constrain(common.resize_bilinear(images.astype(jnp.float32), int(config.image_size)), mesh,
                         common.batch_spec(4))
    latents = common.vae_encode(model.vae, params["vae"], x, draws["latent_eps"] if config.latent_sample else None)
    clip = jnp.broadcast_to(reference["clip"].astype(jnp.float32), (b,) + reference["clip"].shape[1:])
    token = camera["token"].astype(jnp.float32)[:, None, :]
    cc = params["cc_projection"]
    emb = jnp.concatenate([clip, token], -1) @ cc["kernel"].astype(jnp.float32) + cc["bias"].astype(jnp.float32)
    context = jnp.concatenate([jnp.zeros_like(emb), emb], 0)  # official [uncond (zeros); cond]
    ref = jnp.broadcast_to(reference["latent"].astype(jnp.float32), latents.shape)
    concat = jnp.concatenate([jnp.zeros_like(ref), ref], 0)  # zero concat latent on the uncond branch

    def predict(noisy, tt):
        inp = jnp.concatenate([jnp.concatenate([noisy, noisy], 0), concat], 1)
        out = unet_eps(model.unet, params["unet"], inp, jnp.concatenate([tt, tt], 0), context, mesh)
        return out[:b], out[b:]

    scale = knobs["grad_scale"]
    if config.grad_scale == "angle":  # official: angle / (180 / number of reference views), one view here
        scale = scale * camera["angle"].astype(jnp.float32) / 180.0
    elif config.grad_scale != "none":
        raise ValueError(f"four_d/priors/zero123.py: grad_scale must be 'angle' or 'none', got {config.grad_scale!r}")
    return sds.score_distillation(
        latents, draws["noise"], draws["t"], jnp.asarray(model.alphas_cumprod), predict,
        guidance_scale=knobs["guidance_scale"], cfg_form=config.cfg_form, weighting_strategy=config.weighting,
        grad_scale=jnp.broadcast_to(scale, (b,)), grad_clip=knobs["grad_clip"], loss_target=config.loss_target,
        loss_reduction=config.loss_reduction)


def make_zero123_sds(model, config=None, mesh=None):
    """The jitted zero123 SDS loss: sds(params, key, images, reference, camera) -> (loss, aux).

    images [B, H, W, 3] in [0, 1]; reference from encode_reference; camera dict(token [B, 4], angle [B]) from
    zero123_camera (official deltas) or camera_from_token. Knobs per call: min_step, max_step,
    guidance_scale, grad_scale (lambda, 40), grad_clip. With a mesh the CFG pair is split over "data".
    """
    config = config or get_config().zero123
    lo, hi = sds.step_range(config.t_range, model.num_train_timesteps)
    if config.grad_scale not in ("angle", "none"):
        raise ValueError(f"four_d/priors/zero123.py: grad_scale must be 'angle' or 'none', got {config.grad_scale!r}")
    common.latent_shape(model.vae, 1, int(config.image_size))

    def core(params, key, images, reference, camera, knobs):
        shape = common.latent_shape(model.vae, images.shape[0], int(config.image_size))
        draws = common.draw(key, shape, images.shape[0], knobs["min_step"], knobs["max_step"])
        return zero123_sds_given(model, config, params, images, reference, camera, draws, knobs, mesh)

    fn = common.SDSFunction(core, common.knob_defaults(config, lo, hi), "four_d/priors/zero123.py sds")

    def sds_fn(params, key, images, reference, camera, **knobs):
        common.check_images(images, "four_d/priors/zero123.py sds")
        if set(camera) != {"token", "angle"}:
            raise ValueError("four_d/priors/zero123.py sds: camera must be dict(token [B, 4], angle [B]) "
                             "(zero123_camera or camera_from_token)")
        b = images.shape[0]
        camera = dict(token=jnp.broadcast_to(jnp.asarray(camera["token"], jnp.float32), (b, 4)),
                      angle=jnp.broadcast_to(jnp.asarray(camera["angle"], jnp.float32), (b,)))
        reference = dict(clip=jnp.asarray(reference["clip"]), latent=jnp.asarray(reference["latent"]))
        return fn(params, key, images, reference, camera, **knobs)

    sds_fn.function = fn
    return sds_fn
