"""3D-Photo inpainting networks (Shih et al., CVPR 2020) as Flax modules, as 3D Cinemagraphy uses them.

The official layering stage (xingyi-li/3d-cinemagraphy, lib/model/inpaint/inpainter.py with
lib/model/inpaint/networks/inpainting_nets.py; facts in shared/reference/cinemagraphy.md sections 2 and 10)
fills each depth layer with two partial-convolution U-Nets from vt-vl-lab/3d-photo-inpainting:

  Inpaint_Depth_Net  input (zero-mean log depth, edge, context, holes), 4 channels -> 1 (log depth offset)
  Inpaint_Color_Net  input (rgb * context, edge, context, holes), 6 channels -> 3 (sigmoid colour)

Architecture (both): 7 encoder levels of stride-2 partial convolutions (kernels 7, 5, 5, 3, 3, 3, 3; widths
64, 128, 256, 512, 512, 512, 512; eval-mode BatchNorm with running statistics on all but the first; ReLU),
then 7 decoder levels (nearest x2 upsampling of features and mask, concatenation with the skip features and
mask of the level above, 3x3 stride-1 partial convolution, BatchNorm + LeakyReLU 0.2 on all but the last).
The partial-convolution mask of the input is clamp(context + holes, 0, 1), repeated over all input channels;
the padding added by `forward_3p` has mask 0.

Partial convolution (Liu et al. 2018, official PartialConv): with M the input mask (one value per pixel and
channel), W the kernel and b the bias,
    S      = sum of M over the kernel window and all input channels     (official mask_conv, all-ones weights)
    out    = (conv(X * M, W) * (C_in * k * k) / S) + b                  where S > 0
    out    = 0, new mask = 0                                            where S == 0 (no valid input)
    new mask = 1 elsewhere (the same for every output channel).
Here every mask is constant over the channels of a feature map (the input mask is repeated, every new mask is
per-pixel), so S is computed from per-pixel masks weighted by their channel counts: a window sum of one
channel instead of a full [C_out, C_in, k, k] convolution of the mask. The converter reads the official
`mask_conv.weight` tensors and refuses any that are not all ones (the only case this shortcut is exact for,
and the only one the official code creates: they are constant 1 and never trained).

Pre/post-processing of sequential inpainting (official Inpainter.inpaint_depth / inpaint_rgb) are pure jnp
functions below; `PartialConvInpainter` runs both networks behind the `cine_jax.layering.Inpainter` interface.
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COLOR_NET",
    "DEPTH_NET",
    "PartialConvInpainter",
    "PartialConvUNet",
    "PartialConvUNetConfig",
    "check_state_dict",
    "clamp_inpainted_depth",
    "compose_inpainted_color",
    "crop_from_multiple",
    "forward_3p",
    "gaussian_blur3x3",
    "inpaint_color_net_params_from_torch_state_dict",
    "inpaint_depth_net_params_from_torch_state_dict",
    "inpaint_rgbd",
    "pad_to_multiple",
    "partial_conv_unet_params_from_torch_state_dict",
    "postprocess_inpainted_depth",
    "zero_mean_log_depth",
]


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartialConvUNetConfig:
    """Architecture of a 3D-Photo partial-convolution U-Net (defaults: official Inpaint_Depth_Net).

    in_channels      input channels incl. the trailing (context, holes) pair: 4 depth net, 6 colour net.
    out_channels     1 (depth net) or 3 (colour net).
    widths           encoder widths per level, official (64, 128, 256, 512, 512, 512, 512) (layer_size 7).
    enc_kernels      encoder kernel sizes, official (7, 5, 5, 3, 3, 3, 3) (PCBActiv 'down-7/5/3').
    enc_bias         which encoder convs have a bias: depth net enc_1, enc_2 (conv_bias=True); colour none.
    dec_names        state-dict names of the decoders from the deepest (level 7) to level 1.
    out_sigmoid      sigmoid on the output (colour net) or raw output (depth net).
    pad_multiple     forward_3P unit_length: inputs are zero-padded (centred) to a multiple of it (128 = 2^7).
    bn_eps           BatchNorm2d epsilon (PyTorch default 1e-5).
    leaky_slope      decoder LeakyReLU negative slope (official 0.2).
    """

    in_channels: int = 4
    out_channels: int = 1
    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512, 512)
    enc_kernels: tuple[int, ...] = (7, 5, 5, 3, 3, 3, 3)
    enc_bias: tuple[bool, ...] = (True, True, False, False, False, False, False)
    dec_names: tuple[str, ...] = ("dec_7", "dec_6", "dec_5", "dec_4", "dec_3", "dec_2", "dec_1")
    out_sigmoid: bool = False
    pad_multiple: int = 128
    bn_eps: float = 1e-5
    leaky_slope: float = 0.2

    def __post_init__(self):
        n = len(self.widths)
        if n < 1 or len(self.enc_kernels) != n or len(self.enc_bias) != n or len(self.dec_names) != n:
            raise ValueError(f"PartialConvUNetConfig: widths, enc_kernels, enc_bias and dec_names need one entry "
                             f"per level, got {len(self.widths)}, {len(self.enc_kernels)}, {len(self.enc_bias)}, "
                             f"{len(self.dec_names)}")
        if any(k % 2 == 0 or k < 1 for k in self.enc_kernels):
            raise ValueError(f"PartialConvUNetConfig: encoder kernels must be odd, got {self.enc_kernels}")
        if self.in_channels < 3:
            raise ValueError(f"PartialConvUNetConfig: in_channels must include context and holes (>= 3), got "
                             f"{self.in_channels}")
        if self.pad_multiple % (2**n) != 0:
            raise ValueError(f"PartialConvUNetConfig: pad_multiple {self.pad_multiple} must be a multiple of "
                             f"2^{n} (one halving per level)")

    @property
    def levels(self):
        return len(self.widths)

    def to_dict(self):
        """JSON-ready dict (lists instead of tuples); `from_dict` inverts it."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"PartialConvUNetConfig: unknown keys {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


DEPTH_NET = PartialConvUNetConfig()
COLOR_NET = PartialConvUNetConfig(
    in_channels=6, out_channels=3, enc_bias=(False,) * 7,
    dec_names=("dec_7", "dec_6", "dec_5A", "dec_4A", "dec_3A", "dec_2A", "dec_1A"), out_sigmoid=True)


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------


def _precision(dtype):
    # float32 runs are meant to match the PyTorch reference: ask for full float32 matmuls (TPUs default to
    # bfloat16 passes). Reduced-precision runs use the backend default.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class _PartialConvBlock(nn.Module):
    """Official PCBActiv: PartialConv -> optional eval BatchNorm -> optional activation.

    __call__(groups) with groups = [(x [N, H, W, C_g], m [N, H, W, 1] float32 in {0, 1}), ...]: the
    concatenated input and its per-pixel masks (the mask of group g is repeated over its C_g channels).
    Returns (y [N, H', W', features], new mask [N, H', W', 1] float32).
    """

    features: int
    kernel: int
    stride: int
    use_bias: bool
    use_bn: bool
    activation: str | None  # "relu", "leaky" or None
    bn_eps: float = 1e-5
    leaky_slope: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, groups):
        k, s, p = self.kernel, self.stride, (self.kernel - 1) // 2
        x = jnp.concatenate([g.astype(self.dtype) * m.astype(self.dtype) for g, m in groups], axis=-1)
        cin = x.shape[-1]
        # Channel-weighted valid count per pixel; exact integers in float32 (<= 1024 * 9 per window).
        count = sum(jnp.float32(g.shape[-1]) * m for g, m in groups)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features), jnp.float32)
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(self.dtype), (s, s), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_precision(self.dtype))
        msum = jax.lax.reduce_window(count, 0.0, jax.lax.add, (1, k, k, 1), (1, s, s, 1),
                                     ((0, 0), (p, p), (p, p), (0, 0)))
        hole = msum == 0.0
        ratio = jnp.float32(cin * k * k) / jnp.where(hole, 1.0, msum)
        y = y * ratio.astype(y.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(y.dtype)
        y = jnp.where(hole, jnp.zeros((), y.dtype), y)
        if self.use_bn:
            y = nn.BatchNorm(use_running_average=True, epsilon=self.bn_eps, dtype=self.dtype, name="bn")(y)
        if self.activation == "relu":
            y = nn.relu(y)
        elif self.activation == "leaky":
            y = nn.leaky_relu(y, self.leaky_slope)
        return y, (~hole).astype(jnp.float32)


def _up2(x):
    """Nearest-neighbour x2 upsampling of [N, H, W, C] (F.interpolate(scale_factor=2, mode='nearest'))."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class PartialConvUNet(nn.Module):
    """3D-Photo partial-convolution U-Net (official Inpaint_Depth_Net / Inpaint_Color_Net `forward`).

    __call__(x [N, H, W, in_channels]) with H, W multiples of 2^levels (use `forward_3p` to pad) and the
    last two channels (context, holes): the mask is clamp(context + holes, 0, 1) over all channels.
    Returns [N, H, W, out_channels] (sigmoid for the colour net, raw for the depth net), dtype `dtype`.
    Variables: {"params": ..., "batch_stats": ...} (BatchNorm running statistics, eval mode only).
    `dtype` is the compute dtype (float32 for parity, bfloat16 for speed on GPU/TPU); params stay float32
    and masks / partial-conv window counts are always float32.
    """

    config: PartialConvUNetConfig = DEPTH_NET
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"PartialConvUNet: expected input [N, H, W, {cfg.in_channels}], got {x.shape}")
        unit = 2**cfg.levels
        if x.shape[1] % unit or x.shape[2] % unit:
            raise ValueError(f"PartialConvUNet: height and width must be multiples of {unit}, got "
                             f"{x.shape[1:3]}; pad with forward_3p / pad_to_multiple")
        x = x.astype(jnp.float32)
        mask = jnp.clip(x[..., -2:-1] + x[..., -1:], 0.0, 1.0)
        common = dict(bn_eps=cfg.bn_eps, leaky_slope=cfg.leaky_slope, dtype=self.dtype)
        skips = [(x, mask)]
        h, m = x, mask
        for i in range(cfg.levels):
            h, m = _PartialConvBlock(cfg.widths[i], cfg.enc_kernels[i], 2, cfg.enc_bias[i], use_bn=i > 0,
                                     activation="relu", name=f"enc_{i + 1}", **common)([(h, m)])
            skips.append((h, m))
        for j, level in enumerate(range(cfg.levels, 0, -1)):
            last = level == 1
            feats = cfg.out_channels if last else cfg.widths[level - 2]
            h, m = _up2(h), _up2(m)
            h, m = _PartialConvBlock(feats, 3, 1, use_bias=last, use_bn=not last,
                                     activation=None if last else "leaky", name=cfg.dec_names[j],
                                     **common)([(h, m), skips[level - 1]])
        return nn.sigmoid(h) if cfg.out_sigmoid else h


# ---------------------------------------------------------------------------------------------------
# forward_3P: centred zero padding to a multiple of 128, crop back
# ---------------------------------------------------------------------------------------------------


def pad_to_multiple(x, multiple=128):
    """Zero-pad x [N, H, W, C] to the next multiple of `multiple`, centred as official forward_3P.

    anchor = (padded - size) // 2 rows / columns above / left (the odd extra pixel goes below / right).
    Returns (padded [N, H', W', C], box (top, left, H, W)) for `crop_from_multiple`.
    """
    if x.ndim != 4:
        raise ValueError(f"pad_to_multiple: expected [N, H, W, C], got {x.shape}")
    h, w = x.shape[1], x.shape[2]
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = jnp.pad(x, ((0, 0), (top, ph - h - top), (left, pw - w - left), (0, 0)))
    return padded, (top, left, h, w)


def crop_from_multiple(y, box):
    """Inverse of `pad_to_multiple`: y [N, H', W', C] -> [N, H, W, C]."""
    top, left, h, w = box
    return y[:, top:top + h, left:left + w]


def forward_3p(module, variables, x):
    """Official forward_3P: pad x [N, H, W, C] (C = in_channels, last two = context, holes) with zeros to a
    multiple of `module.config.pad_multiple` (centred), run the net, crop back to [N, H, W, out]."""
    padded, box = pad_to_multiple(jnp.asarray(x, jnp.float32), module.config.pad_multiple)
    return crop_from_multiple(module.apply(variables, padded), box)


# ---------------------------------------------------------------------------------------------------
# Official pre/post-processing (Inpainter.process_depth_for_network, deprocess_depth, inpaint_depth,
# inpaint_rgb), as pure jnp functions on single images
# ---------------------------------------------------------------------------------------------------


def zero_mean_log_depth(depth, context, eps=1e-8):
    """Network depth input: log(depth + eps) * context minus its mean over the context pixels, times context.

    depth [H, W] > 0, context [H, W] in {0, 1}. Returns (zero-mean log depth [H, W] float32 (0 outside the
    context), mean log depth (scalar)). The caller guarantees a non-empty context.
    """
    ctx = (jnp.asarray(context) > 0.5).astype(jnp.float32)
    logd = jnp.log(jnp.asarray(depth, jnp.float32) + eps) * ctx
    mean = jnp.sum(logd) / jnp.sum(ctx)
    return (logd - mean) * ctx, mean


def gaussian_blur3x3(x, sigma=1.5):
    """3x3 Gaussian blur of x [H, W] (kornia gaussian_blur2d((3, 3), (sigma, sigma)), 'reflect' border =
    mirror without repeating the edge pixel, i.e. OpenCV BORDER_REFLECT_101); weights exp(-d^2 / 2 sigma^2),
    normalised, applied separably."""
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2.0 * sigma**2))
    g = jnp.asarray(g / g.sum(), jnp.float32)
    xp = jnp.pad(jnp.asarray(x, jnp.float32), 1, mode="reflect")
    rows = g[0] * xp[:-2] + g[1] * xp[1:-1] + g[2] * xp[2:]
    return g[0] * rows[:, :-2] + g[1] * rows[:, 1:-1] + g[2] * rows[:, 2:]


def postprocess_inpainted_depth(net_out, mean, depth, context, sigma=1.5):
    """Official inpaint_depth output handling: exp(out + mean); context pixels restored to the input depth;
    3x3 Gaussian (sigma 1.5); context restored again. net_out, depth [H, W]; returns [H, W] float32."""
    ctx = jnp.asarray(context) > 0.5
    depth = jnp.asarray(depth, jnp.float32)
    d = jnp.exp(jnp.asarray(net_out, jnp.float32) + mean)
    d = jnp.where(ctx, depth, d)
    d = gaussian_blur3x3(d, sigma)
    return jnp.where(ctx, depth, d)


def clamp_inpainted_depth(inpainted, depth, near_edge, behind=1.01, floor=0.9):
    """Official depth-ordering clamps of inpaint_depth: where the inpainted depth is in front of the original
    surface (inpainted < depth) it becomes depth * 1.01; then it is clamped to >= 0.9 * near_edge (the near
    edge of the layer's bin). `cine_jax.layering.build_ldi` applies the same clamps after any Inpainter.
    """
    inpainted = jnp.asarray(inpainted, jnp.float32)
    depth = jnp.asarray(depth, jnp.float32)
    d = jnp.where(inpainted < depth, depth * behind, inpainted)
    return jnp.maximum(d, floor * near_edge)


def compose_inpainted_color(net_out, rgb, context, holes):
    """Official inpaint_rgb: out * holes + rgb * context. net_out, rgb [H, W, 3]; masks [H, W]."""
    ctx = (jnp.asarray(context) > 0.5).astype(jnp.float32)[..., None]
    hol = (jnp.asarray(holes) > 0.5).astype(jnp.float32)[..., None]
    return jnp.asarray(net_out, jnp.float32) * hol + jnp.asarray(rgb, jnp.float32) * ctx


def inpaint_rgbd(depth_net, color_net, depth_variables, color_variables, rgb, depth, context, holes, sigma=1.5):
    """One layer of official sequential inpainting without the bin clamps (see `clamp_inpainted_depth`).

    rgb [H, W, 3] in [0, 1], depth [H, W] > 0, context / holes [H, W] in {0, 1} (non-empty context).
    Depth net input (zero-mean log depth, edge = 0, context, holes); colour net input (rgb * context, edge = 0,
    context, holes); both through `forward_3p`. Returns (rgb [H, W, 3], depth [H, W]) float32: rgb is
    out * holes + rgb * context, depth is `postprocess_inpainted_depth` of the depth-net output.
    jit-able (depth_net / color_net static).
    """
    ctx = (jnp.asarray(context) > 0.5).astype(jnp.float32)
    hol = (jnp.asarray(holes) > 0.5).astype(jnp.float32)
    edge = jnp.zeros_like(ctx)  # the official pipeline never runs the edge net (fact sheet section 2)
    zm, mean = zero_mean_log_depth(depth, ctx)
    d_in = jnp.stack([zm, edge, ctx, hol], axis=-1)[None]
    d_out = forward_3p(depth_net, depth_variables, d_in)[0, ..., 0].astype(jnp.float32)
    out_depth = postprocess_inpainted_depth(d_out, mean, depth, ctx, sigma)
    rgb = jnp.asarray(rgb, jnp.float32)
    c_in = jnp.concatenate([rgb * ctx[..., None], edge[..., None], ctx[..., None], hol[..., None]], axis=-1)[None]
    c_out = forward_3p(color_net, color_variables, c_in)[0].astype(jnp.float32)
    return compose_inpainted_color(c_out, rgb, ctx, hol), out_depth


# ---------------------------------------------------------------------------------------------------
# Inpainter adapter
# ---------------------------------------------------------------------------------------------------


class PartialConvInpainter:
    """The learned 3D-Photo inpainter behind `cine_jax.layering.Inpainter`.

    PartialConvInpainter(depth_variables, color_variables) with the Flax variables returned by
    `inpaint_depth_net_params_from_torch_state_dict` / `inpaint_color_net_params_from_torch_state_dict`.
    __call__(rgb [H, W, 3] in [0, 1], depth [H, W] > 0, context [H, W] bool, holes [H, W] bool)
        -> (rgb [H, W, 3] float32, depth [H, W] float32)
    runs `inpaint_rgbd` (jitted once per image size): context pixels come back unchanged, hole pixels get the
    networks' values, pixels in neither mask are 0 in rgb and blurred network depth in depth (unspecified by
    the interface). The official bin clamps (`clamp_inpainted_depth`) need the layer's bin and are applied by
    `build_ldi`. `dtype` bfloat16 runs the convolutions in bfloat16 (GPU/TPU speed option).
    """

    def __init__(self, depth_variables, color_variables, *, depth_config=DEPTH_NET, color_config=COLOR_NET,
                 dtype=jnp.float32, gaussian_sigma=1.5):
        if gaussian_sigma <= 0:
            raise ValueError(f"PartialConvInpainter: gaussian_sigma must be > 0, got {gaussian_sigma}")
        self.depth_net = PartialConvUNet(depth_config, dtype=dtype)
        self.color_net = PartialConvUNet(color_config, dtype=dtype)
        if depth_config.in_channels != 4 or depth_config.out_channels != 1:
            raise ValueError("PartialConvInpainter: the depth net must map 4 channels to 1")
        if color_config.in_channels != 6 or color_config.out_channels != 3:
            raise ValueError("PartialConvInpainter: the colour net must map 6 channels to 3")
        self.depth_variables = depth_variables
        self.color_variables = color_variables
        self._run = jax.jit(functools.partial(inpaint_rgbd, self.depth_net, self.color_net, sigma=gaussian_sigma))

    def __call__(self, rgb, depth, context, holes):
        from cine_jax.depth import validate_depth, validate_image

        rgb = validate_image(rgb, "rgb")
        depth = validate_depth(depth, "depth", shape=rgb.shape[:2])
        context = _as_mask(context, "context", rgb.shape[:2])
        holes = _as_mask(holes, "holes", rgb.shape[:2])
        if not holes.any():
            return rgb.copy(), depth.copy()
        if not context.any():
            raise ValueError("PartialConvInpainter: context is empty, nothing to fill the holes from")
        out_rgb, out_depth = self._run(self.depth_variables, self.color_variables, rgb, depth, context, holes)
        out_rgb, out_depth = np.asarray(out_rgb, np.float32), np.asarray(out_depth, np.float32)
        if not (np.all(np.isfinite(out_rgb)) and np.all(np.isfinite(out_depth))):
            raise ValueError("PartialConvInpainter: the networks produced NaN or inf (check the weights)")
        return out_rgb, out_depth


def _as_mask(mask, name, shape):
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {m.shape}")
    return m.astype(bool)


# ---------------------------------------------------------------------------------------------------
# State-dict checking and conversion
# ---------------------------------------------------------------------------------------------------


def check_state_dict(state_dict, expected, *, source, optional=()):
    """Check a flat state dict against `expected` {key: shape}; returns {key: float32 numpy array}.

    Raises ValueError naming `source` and every problem: missing keys (with their expected shapes),
    unexpected keys, and keys whose shape differs (got vs expected). Keys in `optional` may be absent.
    A shape entry of None accepts any shape (the caller checks it). Integer tensors (BatchNorm
    num_batches_tracked) are kept as they are.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of names to arrays), got "
                         f"{type(state_dict).__name__}")
    missing = [k for k in expected if k not in state_dict and k not in optional]
    unexpected = sorted(k for k in state_dict if k not in expected)
    problems = []
    if missing:
        shown = ", ".join(f"{k} {tuple(expected[k]) if expected[k] is not None else ''}".strip()
                          for k in missing[:8])
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        problems.append(f"{len(missing)} missing key(s): {shown}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
        problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}{more}")
    out = {}
    for k, shape in expected.items():
        if k not in state_dict:
            continue
        a = np.asarray(state_dict[k])
        if shape is not None and tuple(a.shape) != tuple(shape):
            problems.append(f"{k} has shape {tuple(a.shape)}, expected {tuple(shape)}")
            continue
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            if not np.all(np.isfinite(a)):
                problems.append(f"{k} contains NaN or inf")
        out[k] = a
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))
    return out


def _torch_conv_to_hwio(w):
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _unet_layers(cfg):
    """(name, in_channels, out_channels, kernel, bias, bn) per layer in state-dict terms."""
    layers = []
    cin = cfg.in_channels
    for i in range(cfg.levels):
        layers.append((f"enc_{i + 1}", cin, cfg.widths[i], cfg.enc_kernels[i], cfg.enc_bias[i], i > 0))
        cin = cfg.widths[i]
    for j, level in enumerate(range(cfg.levels, 0, -1)):
        last = level == 1
        up = cfg.widths[level - 1]
        skip = cfg.in_channels if level == 1 else cfg.widths[level - 2]
        out = cfg.out_channels if last else cfg.widths[level - 2]
        layers.append((cfg.dec_names[j], up + skip, out, 3, last, not last))
    return layers


def partial_conv_unet_params_from_torch_state_dict(state_dict, *, source, config):
    """Flax variables {"params", "batch_stats"} of `PartialConvUNet(config)` from an official state dict.

    state_dict: {name: numpy array} as saved by the official code (plain `model.state_dict()`), keys
    `<layer>.conv.input_conv.weight [out, in, k, k]` (+ `.bias [out]` where the config has one),
    `<layer>.conv.mask_conv.weight [out, in, k, k]` (must be all ones: read and checked, not stored), and
    for BatchNorm layers `<layer>.bn.{weight, bias, running_mean, running_var} [out]` and
    `.num_batches_tracked []` (optional, unused in eval mode). Every key is consumed; missing, unexpected
    or mis-shaped keys raise ValueError naming `source`, the key and the expected shape.
    """
    expected, optional = {}, set()
    for name, cin, cout, k, bias, bn in _unet_layers(config):
        expected[f"{name}.conv.input_conv.weight"] = (cout, cin, k, k)
        if bias:
            expected[f"{name}.conv.input_conv.bias"] = (cout,)
        expected[f"{name}.conv.mask_conv.weight"] = (cout, cin, k, k)
        if bn:
            for s in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{name}.bn.{s}"] = (cout,)
            expected[f"{name}.bn.num_batches_tracked"] = ()
            optional.add(f"{name}.bn.num_batches_tracked")
    sd = check_state_dict(state_dict, expected, source=source, optional=optional)
    params, stats = {}, {}
    for name, _, _, _, bias, bn in _unet_layers(config):
        mk = f"{name}.conv.mask_conv.weight"
        if not np.all(sd[mk] == 1.0):
            raise ValueError(f"{source}: {mk} must be all ones (the official PartialConv mask kernel), found "
                             f"values in [{sd[mk].min():.4g}, {sd[mk].max():.4g}]")
        p = {"kernel": _torch_conv_to_hwio(sd[f"{name}.conv.input_conv.weight"])}
        if bias:
            p["bias"] = sd[f"{name}.conv.input_conv.bias"]
        params[name] = p
        if bn:
            var = sd[f"{name}.bn.running_var"]
            if np.any(var < 0):
                raise ValueError(f"{source}: {name}.bn.running_var has negative entries")
            params[name]["bn"] = {"scale": sd[f"{name}.bn.weight"], "bias": sd[f"{name}.bn.bias"]}
            stats[name] = {"bn": {"mean": sd[f"{name}.bn.running_mean"], "var": var}}
    return {"params": params, "batch_stats": stats}


def inpaint_depth_net_params_from_torch_state_dict(state_dict, *, source, config=DEPTH_NET):
    """Flax variables of the depth net from the official `depth-model.pth` state dict (see
    `partial_conv_unet_params_from_torch_state_dict`)."""
    return partial_conv_unet_params_from_torch_state_dict(state_dict, source=source, config=config)


def inpaint_color_net_params_from_torch_state_dict(state_dict, *, source, config=COLOR_NET):
    """Flax variables of the colour net from the official `color-model.pth` state dict."""
    return partial_conv_unet_params_from_torch_state_dict(state_dict, source=source, config=config)
