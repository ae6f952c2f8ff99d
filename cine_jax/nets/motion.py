"""The motion estimator of 3D Cinemagraphy: image + motion mask + hints -> Eulerian flow (paper Sec. 3.2).

Official: `SPADEUnetMaskMotion.motion_predictor` = `SPADEUnet4MaskMotion` (lib/model/motion/architectures.py,
SPADE in lib/model/motion/networks.py), weights `sceneflow_model.pth['netG']` under the prefix
"motion_predictor."; pre-processing in demo.py (`get_input_data`, `generate_mask_hints_from_user`),
post-processing in lib/renderer.py (`compute_flow_and_inpaint`). Facts: shared/reference/cinemagraphy.md
sections 1 and 10.

Network (NHWC here), with nf = 32 and input x = [RGB in [-1, 1], mask, hint dx, hint dy] at 768 x 768:
  encoder  e1 = conv1(x); e_k = SPADE_k(conv_k(LeakyReLU_0.2(e_{k-1}))) for k = 2..7;
           e8 = conv8(LeakyReLU(e7)). conv_k: 4x4 stride 2 pad 1, channels 6-32-64-128-256-256-256-256-256.
  decoder  d = up(ReLU(e8)); for k = 1..7: d_ = SPADE(dconv_k(d)); d = ReLU(cat[up(d_), up(e_{8-k})]);
           flow = dconv8(d) * div_flow. dconv: 3x3 pad 1. Every "up" is x2 bilinear (align_corners=False)
           except channel 3, which is x2 nearest (a quirk inherited from SLR-SFS, kept for the weights).
  SPADE    InstanceNorm(x) * (1 + gamma(c)) + beta(c), c = ReLU(conv3x3_{6->128}(input resized to x)),
           the input resized with RGB bilinear, mask nearest, hints bilinear (PyTorch index rules, no
           antialias: kernels.sampling.resize).
Every conv_k / dconv_k carries spectral normalisation (torch.nn.utils.spectral_norm).

Spectral norm, what we compute: the official demo never calls `.eval()` on this network, so the one
forward pass of inference runs PyTorch's training-mode hook: ONE power iteration from the stored u,
    v = normalize(W^T u),  u = normalize(W v),  sigma = u . (W v),  W_used = weight_orig / sigma,
with W = weight_orig reshaped to [out, in*k*k] and normalize(x) = x / max(|x|, 1e-12). That is the default
here (`power_iteration=True`). `power_iteration=False` is the eval-mode variant (sigma = u . (W v) from the
stored u, v). `apply` never writes the updated u, v back: each call does what the official's first (and
only) call does.

Input size: 8 stride-2 convs and skip concatenations need H and W to be multiples of 256 (the official
crashes otherwise); the official always resizes to 768 x 768 (`MOTION_SIZE`) and back, which
`motion_net_inputs` / `motion_postprocess` reproduce.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cine_jax.nets import Conv2d, _conv_init, conv_nhwc, leaky_relu, upsample2x
from kernels.sampling import resize

__all__ = [
    "HINT_FRAMES",
    "MOTION_SIZE",
    "SPADE",
    "SPADEUnet4MaskMotion",
    "SpectralConv2d",
    "config_from_state_dict",
    "densify_hints",
    "from_state_dict",
    "instance_norm",
    "motion_net_inputs",
    "motion_postprocess",
    "official_hint_sigma",
    "predict_flow",
    "resize_condition",
    "spectral_normalized_kernel",
    "upsample_split",
]

MOTION_SIZE = 768  # configs/config.yaml generator.motionH = motionW = W = 768
HINT_FRAMES = 50  # demo.py: a hint line (end - start) is divided by 50 frames
SIZE_MULTIPLE = 256  # 2^8: eight stride-2 convs, and the decoder's skips must line up exactly
_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# layers


def _l2_normalize(x, eps):
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x)), eps)


def spectral_normalized_kernel(weight_orig, u, v, power_iteration=True, eps=1e-12):
    """weight_orig [k, k, in, out] (HWIO) / sigma, float32; u [out], v [in*k*k] in PyTorch order (in, kh, kw).

    power_iteration=True: one PyTorch training-mode iteration from the stored u first (see module doc).
    u and v are constants for differentiation, as in PyTorch.
    """
    w = weight_orig.astype(_F32)
    mat = jnp.transpose(w, (3, 2, 0, 1)).reshape(w.shape[3], -1)  # PyTorch's weight.reshape(out, -1)
    u = u.astype(_F32)
    v = v.astype(_F32)
    if power_iteration:
        v = _l2_normalize(jnp.matmul(mat.T, u, precision=_HIGHEST), eps)
        u = _l2_normalize(jnp.matmul(mat, v, precision=_HIGHEST), eps)
    # PyTorch runs the iteration under no_grad: gradients reach W only through sigma = u . (W v).
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = jnp.dot(u, jnp.matmul(mat, v, precision=_HIGHEST), precision=_HIGHEST)
    return w / sigma


class SpectralConv2d(nn.Module):
    """nn.utils.spectral_norm(nn.Conv2d(..., bias=True)), zero padding, NHWC.

    params: "weight_orig" [k, k, in, out] (HWIO), "bias" [out]; collection "spectral": "weight_u" [out],
    "weight_v" [in*k*k] (PyTorch's buffers, v flattened in PyTorch's (in, kh, kw) order).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    power_iteration: bool = True
    eps: float = 1e-12  # torch.nn.utils.spectral_norm default
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        k, cin, cout = self.kernel_size, x.shape[-1], self.features
        weight = self.param("weight_orig", _conv_init, (k, k, cin, cout), self.param_dtype)
        bias = self.param(
            "bias", lambda key, s, d: jax.random.uniform(key, s, d, -1.0, 1.0) / np.sqrt(k * k * cin), (cout,),
            self.param_dtype,
        )
        u = self.variable(
            "spectral", "weight_u", lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (cout,)), 1e-12)
        )
        v = self.variable(
            "spectral", "weight_v",
            lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (cin * k * k,)), 1e-12),
        )
        kernel = spectral_normalized_kernel(weight, u.value, v.value, self.power_iteration, self.eps)
        y = conv_nhwc(x, kernel, self.stride, self.padding, "zeros", self.dtype, self.precision)
        return y + bias.astype(y.dtype)


def instance_norm(x, eps=1e-5):
    """nn.InstanceNorm2d(C) (affine=False, no running stats): per sample and channel over H, W; float32."""
    x = x.astype(_F32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)  # biased, as PyTorch normalises
    return (x - mean) * jax.lax.rsqrt(var + eps)


def resize_condition(cond, size):
    """The SPADE conditioning map resized to size (h, w) as the official SPADE.forward does.

    cond [B, H, W, C]: C = 6 (RGB bilinear, mask nearest, hints bilinear), 4 (RGB bilinear, mask nearest)
    or 3 (RGB bilinear); bilinear is align_corners=False without antialias (torch F.interpolate).
    """
    c = cond.shape[-1]
    if c not in (3, 4, 6):
        raise ValueError(f"SPADE condition must have 3, 4 or 6 channels (RGB, mask, hints), got {c}")
    if tuple(cond.shape[1:3]) == tuple(size):
        return cond
    parts = [resize(cond[..., :3], size, "bilinear")]
    if c >= 4:
        parts.append(resize(cond[..., 3:4], size, "nearest"))
    if c == 6:
        parts.append(resize(cond[..., 4:6], size, "bilinear"))
    return jnp.concatenate(parts, axis=-1)


def upsample_split(x):
    """x2 upsampling of [B, H, W, C] with the official channel split: channel 3 nearest, all others
    bilinear (align_corners=False). Computed in float32, returned in x's dtype."""
    up = upsample2x(x.astype(_F32), align_corners=False)
    if x.shape[-1] > 3:
        size = (2 * x.shape[1], 2 * x.shape[2])
        near = resize(x[..., 3:4].astype(_F32), size, "nearest")  # floor(dst / 2)
        up = jnp.concatenate([up[..., :3], near, up[..., 4:]], axis=-1)
    return up.astype(x.dtype)


class _ConvReLU(nn.Module):
    """nn.Sequential(Conv2d 3x3, ReLU): the conv is named "0" as in the official state dict."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        conv = Conv2d(self.features, 3, padding=1, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, name="0")
        return jax.nn.relu(conv(x))


class SPADE(nn.Module):
    """SPADE(InstanceNorm2d, features, label_nc): InstanceNorm(x) * (1 + gamma) + beta from the condition.

    cond must already be at x's resolution (`resize_condition`). Submodules: mlp_shared.0, mlp_gamma,
    mlp_beta (3x3 convs with bias, no spectral norm).
    """

    features: int
    hidden: int = 128  # official "nhidden = 128 ... Yes, hardcoded"
    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, cond):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        normalized = instance_norm(x, self.eps)
        actv = _ConvReLU(self.hidden, name="mlp_shared", **kw)(cond.astype(self.dtype))
        gamma = Conv2d(self.features, 3, padding=1, name="mlp_gamma", **kw)(actv).astype(_F32)
        beta = Conv2d(self.features, 3, padding=1, name="mlp_beta", **kw)(actv).astype(_F32)
        return (normalized * (1.0 + gamma) + beta).astype(self.dtype)


# ----------------------------------------------------------------------------------------------------
# the network


class SPADEUnet4MaskMotion(nn.Module):
    """The official motion U-Net; input [B, H, W, channels_in] (H, W multiples of 256), output
    [B, H, W, channels_out] float32 = network output * div_flow (official `forward_flow`), px/frame at H x W.

    div_flow: configs/config.yaml generator.div_flow = 1.0 (the code default when absent is 20.0).
    power_iteration: True reproduces the official inference (training-mode spectral norm, one power
    iteration); False is eval-mode spectral norm.
    """

    num_filters: int = 32
    channels_in: int = 6  # RGB + mask (use_mask_as_motion_input) + hints (use_hint_as_motion_input)
    channels_out: int = 2
    spade_hidden: int = 128
    div_flow: float = 1.0
    power_iteration: bool = True
    norm_eps: float = 1e-5  # InstanceNorm2d default
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def dummy_inputs(self):
        return (jnp.zeros((1, SIZE_MULTIPLE, SIZE_MULTIPLE, self.channels_in), _F32),)

    def _check(self, x):
        if x.ndim != 4 or x.shape[-1] != self.channels_in:
            raise ValueError(
                f"SPADEUnet4MaskMotion: input must be [B, H, W, {self.channels_in}] (RGB in [-1, 1], mask, hints), "
                f"got shape {tuple(x.shape)}"
            )
        h, w = x.shape[1:3]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
            raise ValueError(
                f"SPADEUnet4MaskMotion: H and W must be positive multiples of {SIZE_MULTIPLE} (eight stride-2 convs "
                f"whose skips must line up; the official runs at {MOTION_SIZE}x{MOTION_SIZE}: resize with "
                f"motion_net_inputs), got {h}x{w}"
            )

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        self._check(x)
        nf = self.num_filters
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        cond = x.astype(_F32)
        conds = {}  # one resized condition per resolution (two SPADE layers share each of most sizes)

        def sconv(name, feats, k, stride, pad):
            return SpectralConv2d(feats, k, stride, pad, power_iteration=self.power_iteration, name=name, **kw)

        def spade(name, feats, y):
            layer = SPADE(feats, hidden=self.spade_hidden, eps=self.norm_eps, name=name, **kw)
            size = tuple(y.shape[1:3])
            if size not in conds:
                conds[size] = resize_condition(cond, size)
            return layer(y, conds[size])

        widths = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf, 8 * nf, 8 * nf, 8 * nf]
        enc_spade = [None, "spade_layer2_0", "spade_layer4_0"] + [f"spade_layer8_{i}" for i in range(4)] + [None]
        skips = []
        e = x.astype(self.dtype)
        for i, (feats, sname) in enumerate(zip(widths, enc_spade), start=1):
            e = sconv(f"conv{i}", feats, 4, 2, 1)(e if i == 1 else leaky_relu(e, 0.2))
            if sname is not None:
                e = spade(sname, feats, e)
            skips.append(e)

        d = upsample_split(jax.nn.relu(skips[-1]))
        dec = [(8 * nf, f"spade_layer8_{i}") for i in range(4, 8)]
        dec += [(4 * nf, "spade_layer4_1"), (2 * nf, "spade_layer2_1"), (nf, "spade_layer")]
        for k, ((feats, sname), skip) in enumerate(zip(dec, reversed(skips[:-1])), start=1):
            d_ = spade(sname, feats, sconv(f"dconv{k}", feats, 3, 1, 1)(d))
            d = jax.nn.relu(jnp.concatenate([upsample_split(d_), upsample_split(skip)], axis=-1))
        out = sconv("dconv8", self.channels_out, 3, 1, 1)(d)
        return out.astype(_F32) * jnp.float32(self.div_flow)


# ----------------------------------------------------------------------------------------------------
# official pre-processing (demo.py) and post-processing (lib/renderer.py)


def official_hint_sigma(height, num_hints, rng):
    """The official random Gaussian scale of hint densification: randint(H // (2K), H // (K / 2)).

    height: original image height H; num_hints: K >= 1; rng: np.random.Generator or an int seed.
    Returns an int in [H // (2K), H // (K / 2)) (NumPy's randint bounds, as the official).
    """
    k = int(num_hints)
    if k < 1:
        raise ValueError(f"official_hint_sigma: need at least one hint, got {num_hints!r}")
    low, high = int(height) // (2 * k), int(int(height) // (k / 2))
    if high <= low:
        raise ValueError(f"official_hint_sigma: image height {height} is too small for {k} hints")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    return int(rng.integers(low, high))


def _hint_arrays(starts, vectors, h, w):
    starts = np.asarray(starts, np.float64)
    vectors = np.asarray(vectors, np.float64)
    if starts.ndim != 2 or starts.shape[1] != 2 or starts.shape != vectors.shape or len(starts) == 0:
        raise ValueError(
            f"hints: starts and vectors must both be [K, 2] with K >= 1, got {starts.shape} and {vectors.shape}"
        )
    if not (np.all(np.isfinite(starts)) and np.all(np.isfinite(vectors))):
        raise ValueError("hints: starts and vectors must be finite")
    ij = np.trunc(starts).astype(np.int64)  # the official int(start[0]), int(start[1])
    bad = (ij[:, 0] < 0) | (ij[:, 0] >= w) | (ij[:, 1] < 0) | (ij[:, 1] >= h)
    if np.any(bad):
        raise ValueError(f"hints: start points {starts[bad].tolist()} are outside the {w}x{h} image")
    return ij, vectors.astype(np.float32)


def densify_hints(starts, vectors, mask, sigma):
    """The official dense hint field [h, w, 2] float32 at the image's own resolution (demo.py).

    Each pixel gets sum_k g_k v_k / sum_k g_k with g_k = exp(-(d_k / sigma)^2), d_k the distance to hint k's
    start point truncated to integer pixels (the official int()), and 0 where every g_k underflows (the
    official sets a zero denominator to 1); the field is then multiplied by (mask != 0).
    starts [K, 2] (x, y) pixels, vectors [K, 2] (dx, dy) px/frame (official: (end - start) / 50), both at
    the mask's resolution; mask [h, w]; sigma > 0 in pixels (`official_hint_sigma` draws the official one).
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"densify_hints: mask must be [H, W], got shape {mask.shape}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"densify_hints: sigma must be > 0, got {sigma!r}")
    h, w = mask.shape
    ij, vec = _hint_arrays(starts, vectors, h, w)
    xs = np.arange(w, dtype=np.float32)[None, :, None]
    ys = np.arange(h, dtype=np.float32)[:, None, None]
    dist = np.sqrt((xs - ij[:, 0].astype(np.float32)) ** 2 + (ys - ij[:, 1].astype(np.float32)) ** 2)
    g = np.exp(-((dist / np.float32(sigma)) ** 2)).astype(np.float32)  # [h, w, K]
    total = g.sum(-1, keepdims=True)
    dense = (g @ vec) / np.where(total == 0, np.float32(1), total)
    return (dense * (mask != 0)[..., None]).astype(np.float32)


def _image_uint8(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"motion_net_inputs: image must be [H, W, 3] (RGB), got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"motion_net_inputs: image must be uint8 or float in [0, 1], got {image.dtype}")
    if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 1:
        raise ValueError("motion_net_inputs: a float image must be finite and in [0, 1]")
    return np.round(image * 255.0).astype(np.uint8)


def motion_net_inputs(image, mask, starts, vectors, sigma, size=MOTION_SIZE):
    """The official motion-net input [1, size, size, 6] float32 (demo.py get_input_data + hints).

    image: [h, w, 3] uint8 as read from the file (a float image in [0, 1] is rounded to 8 bits first,
      because the official resizes the 8-bit picture): PIL bicubic to size x size ignoring the aspect
      ratio, then scaled to [-1, 1].
    mask: [h, w], non-zero = moving: binarised, then area-resized (fractional edges).
    starts, vectors, sigma: the hints at (h, w) (see `densify_hints`); the dense field is scaled by
      (size / w, size / h) and bilinearly resized (align_corners=False, no antialias, as torch).
    size: the working size, official 768 (configs/config.yaml motionH = motionW); a multiple of 256.
    """
    from PIL import Image

    size = int(size)
    if size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f"motion_net_inputs: size must be a positive multiple of {SIZE_MULTIPLE}, got {size}")
    u8 = _image_uint8(image)
    h, w = u8.shape[:2]
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != (h, w):
        raise ValueError(f"motion_net_inputs: mask must have the image's size {(h, w)}, got {mask.shape}")
    rgb = np.asarray(Image.fromarray(u8).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    rgb = rgb * 2.0 - 1.0  # Normalize((0.5,) * 3, (0.5,) * 3)
    dense = densify_hints(starts, vectors, mask, sigma) * np.array([size / w, size / h], np.float32)
    hints = resize(jnp.asarray(dense), (size, size), "bilinear")
    small_mask = resize(jnp.asarray((mask != 0).astype(np.float32))[..., None], (size, size), "area")
    return jnp.concatenate([jnp.asarray(rgb), small_mask, hints], axis=-1)[None]


def motion_postprocess(flow, mask, out_size, flow_scale=1.0, blur_ksize=15):
    """The official flow post-processing (renderer.compute_flow_and_inpaint, then demo.py's / flow_scale).

    flow: [S, S, 2] network output (already * div_flow) at the working size; mask: [S, S] the network's
    mask input (area-resized); out_size: (h, w) of the image the cinemagraph is rendered at.
    (flow * mask) -> blur_ksize^2 box mean with a zero border, applied ONCE (the official loops 7 times
    over the same unblurred input) -> * mask -> * (w / S, h / S) -> bilinear to (h, w) (align_corners=False)
    -> / flow_scale. Returns [h, w, 2] float32 px/frame.
    """
    from cine_jax.motion import smooth_flow

    flow = jnp.asarray(flow, _F32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"motion_postprocess: flow must be [S, S, 2], got {tuple(flow.shape)}")
    mask = jnp.asarray(mask, _F32)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != flow.shape[:2]:
        raise ValueError(f"motion_postprocess: mask must be {flow.shape[:2]}, got {tuple(mask.shape)}")
    try:
        h, w = (int(s) for s in out_size)
    except (TypeError, ValueError):
        raise ValueError(f"motion_postprocess: out_size must be (h, w), got {out_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"motion_postprocess: out_size must be positive, got {out_size!r}")
    if not (np.isfinite(flow_scale) and flow_scale > 0):
        raise ValueError(f"motion_postprocess: flow_scale must be > 0 (official --flow_scale), got {flow_scale!r}")
    s_h, s_w = flow.shape[:2]
    flow = smooth_flow(flow, mask, blur_ksize)
    flow = flow * jnp.array([w / s_w, h / s_h], _F32)
    return resize(flow, (h, w), "bilinear") / jnp.float32(flow_scale)


def predict_flow(module, variables, image, mask, starts, vectors, sigma, out_size=None, flow_scale=1.0,
                 size=MOTION_SIZE, apply_fn=None):
    """The official flow of an image: `motion_net_inputs` -> network -> `motion_postprocess`.

    out_size defaults to the image size; apply_fn (default jax.jit(module.apply)) lets a caller reuse a
    compiled network. Returns [h, w, 2] float32 px/frame.
    """
    inputs = motion_net_inputs(image, mask, starts, vectors, sigma, size)
    pred = (apply_fn or jax.jit(module.apply))(variables, inputs)[0]
    if out_size is None:
        out_size = np.asarray(image).shape[:2]
    return motion_postprocess(pred, inputs[0, ..., 3], out_size, flow_scale)


# ----------------------------------------------------------------------------------------------------
# conversion of the official file


def config_from_state_dict(state, prefix="", path="checkpoint"):
    """Module arguments read off the checkpoint's shapes (widths, channels); the full key/shape check of
    `checkpoints.variables_from_state_dict` then validates every tensor against them."""
    from cine_jax.nets import checkpoints as ck

    keys = (prefix + "conv1.weight_orig", prefix + "dconv8.weight_orig", prefix + "spade_layer.mlp_shared.0.weight")
    conv1, dconv8, spade = ck.conv_shapes(state, keys, path, "SPADEUnet4MaskMotion")
    return {"num_filters": conv1[0], "channels_in": conv1[1], "channels_out": dconv8[0], "spade_hidden": spade[0]}


def from_state_dict(state, path="checkpoint", prefix="motion_predictor.", **kwargs):
    """(module, variables) from an official state dict (e.g. `sceneflow_model.pth['netG']`).

    The architecture arguments are read from the tensor shapes (official: 32 filters, 6 -> 2 channels,
    SPADE hidden 128); kwargs set the others (div_flow, power_iteration, dtype...). Every key under the
    prefix must map and every variable must be found, or a ValueError names the file, key and shape.
    """
    from cine_jax.nets import checkpoints as ck

    return ck.module_from_state_dict(SPADEUnet4MaskMotion, config_from_state_dict(state, prefix, path), state,
                                     path, prefix, **kwargs)
