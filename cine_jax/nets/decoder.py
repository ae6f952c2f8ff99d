"""The image decoder of 3D Cinemagraphy (from 3D Moments) and the blends of the two splatted sides.

Official: `ImgDecoder(in_ch=37, out_ch=3)` in lib/model/inpaint/networks/img_decoder.py, weights
`model_150000.pth['img_decoder']`, called by `ImgRenderer.render_pcd` with the forward and backward
renderings F_f, F_b [37 channels: RGB, A, 32 features, D] and time t / N. Facts:
shared/reference/cinemagraphy.md sections 3, 5 and 10.

Blend (inside the official forward, `official_blend_weights`), with a LEARNED scalar alpha:
    w_f = (1 - t) exp(alpha D_f) A_f,  w_b = t exp(alpha D_b) A_b,  both / max(w_f + w_b, 1e-6),
    x = w_f F_f + w_b F_b (all 37 channels),
D the splatted normalised disparity (`normalized_disparity`: 1 / z min-max normalised over the points of
BOTH sides of the frame) and A the splatted alpha. The paper's Eq. 4 weights exp(-beta z) with depth z
instead (`eq4_blend_weights`); `ImgDecoder(blend="eq4")` switches to it (then the call needs both sides'
depths).

Network (NHWC; widths fixed as official): x0 = PReLU(conv7x7 37->32, zero pad, no bias);
Down(k) = maxpool 2 -> DoubleConv; DoubleConv = 2 x [conv3x3 reflect + bias -> GroupNorm(C/32) -> PReLU],
returning both outputs; Up(in, out, mid) = bilinear x2 (align_corners=True) -> F.pad(mode="reflect") to the
first skip's size -> conv1 on cat[skip1, up] -> conv2 on cat[skip2, conv1 out]; OutConv = x2 up, cat[x0,
up], conv3x3 reflect 64->3, sigmoid.
  up1 quirk: up1 upsamples the H/16 bottleneck to H/8 but its skips are at H/16, so the "padding" is
  negative and F.pad(mode="reflect") CROPS: ceil(s/2) rows from the top and floor(s/2) from the bottom
  (s = H/16 size), the same for columns (verified with torch 2.13 in tests/test_nets_decoder.py).
Input size: H and W must be even (OutConv concatenates the x2-upsampled H/2 map with the full-size x0; the
official crashes otherwise) and at least 32 (reflect padding at H/16).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cine_jax.nets import Conv2d, PReLU, upsample2x

__all__ = [
    "BLEND_MODES",
    "ImgDecoder",
    "blend_sides",
    "config_from_state_dict",
    "eq4_blend_weights",
    "from_state_dict",
    "normalized_disparity",
    "official_blend_weights",
]

_F32 = jnp.float32
BLEND_MODES = ("official", "eq4")
MIN_SIZE = 32


# ----------------------------------------------------------------------------------------------------
# blends (pure functions)


def normalized_disparity(z, valid=None, eps=1e-6):
    """The official decoder's disparity channel: normalize_0_1(1 / max(z, 1e-6)) over all points.

    z: [...] z-depth of every point of BOTH sides of one frame, after the camera move; valid: optional bool
    mask of the same shape (static-capacity padding): min and max are taken over valid points only and
    invalid points get 0. Returns float32 in [0, 1]; the official divides by (max - min) unguarded, here a
    zero range gives 0 instead of NaN.
    """
    disp = 1.0 / jnp.maximum(jnp.asarray(z, _F32), eps)
    if valid is None:
        lo, hi = jnp.min(disp), jnp.max(disp)
        out = disp - lo
    else:
        valid = jnp.asarray(valid, bool)
        lo = jnp.min(jnp.where(valid, disp, jnp.inf))
        hi = jnp.max(jnp.where(valid, disp, -jnp.inf))
        out = jnp.where(valid, disp - lo, 0.0)
    span = hi - lo
    return jnp.where(span > 0, out / jnp.where(span > 0, span, 1.0), 0.0)


def official_blend_weights(x_f, x_b, time, alpha):
    """(w_f, w_b) [..., 1] of the official ImgDecoder blend from the 37-channel sides [..., C].

    A = channel 3 (splatted alpha), D = channel -1 (normalised disparity); alpha the learned scalar,
    time = t / N (scalar, may be traced). Computed in float32.
    """
    x_f = jnp.asarray(x_f, _F32)
    x_b = jnp.asarray(x_b, _F32)
    alpha = jnp.asarray(alpha, _F32)
    time = jnp.asarray(time, _F32)
    w_f = (1.0 - time) * jnp.exp(alpha * x_f[..., -1:]) * x_f[..., 3:4]
    w_b = time * jnp.exp(alpha * x_b[..., -1:]) * x_b[..., 3:4]
    total = jnp.maximum(w_f + w_b, 1e-6)
    return w_f / total, w_b / total


def eq4_blend_weights(alpha_f, depth_f, alpha_b, depth_b, time, beta=1.0):
    """(w_f, w_b) of the paper's Eq. 4: W = (1-t) a_f e^{-beta z_f} / ((1-t) a_f e^{-beta z_f} + t a_b e^{-beta z_b}).

    alpha_* [...] splatted alpha, depth_* [...] splatted z-depth (0 where empty), time = t / N. Depths are
    shifted by the per-pixel minimum over the covered sides before exponentiating (the ratio is unchanged),
    so far scenes do not underflow; where neither side is covered w_f = 1 - t, w_b = t (both sides hold
    zeros there, so the blend is 0 either way). w_b = 1 - w_f. (cine_jax.render.blend_weights computes the
    same W for the weight-free renderer.)
    """
    alpha_f, depth_f, alpha_b, depth_b = (jnp.asarray(a, _F32) for a in (alpha_f, depth_f, alpha_b, depth_b))
    time = jnp.asarray(time, _F32)
    m = jnp.minimum(jnp.where(alpha_f > 0, depth_f, jnp.inf), jnp.where(alpha_b > 0, depth_b, jnp.inf))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    wf = (1.0 - time) * alpha_f * jnp.exp(-beta * jnp.clip(depth_f - m, 0.0, 80.0))
    wb = time * alpha_b * jnp.exp(-beta * jnp.clip(depth_b - m, 0.0, 80.0))
    total = wf + wb
    w = jnp.where(total > 1e-12, wf / jnp.where(total > 1e-12, total, 1.0), 1.0 - time)
    return w, 1.0 - w


def blend_sides(x_f, x_b, w_f, w_b):
    """x = w_f x_f + w_b x_b in float32 (the decoder's input)."""
    return jnp.asarray(w_f, _F32) * jnp.asarray(x_f, _F32) + jnp.asarray(w_b, _F32) * jnp.asarray(x_b, _F32)


# ----------------------------------------------------------------------------------------------------
# layers


class GroupNorm(nn.Module):
    """nn.GroupNorm(C // 32, C) (eps 1e-5, affine): params "scale" (torch "weight"), "bias"; stats float32."""

    group_size: int = 32
    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        groups = c // self.group_size
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xg = x.astype(_F32).reshape(b, h, w, groups, c // groups)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        return (y * scale.astype(_F32) + bias.astype(_F32)).astype(self.dtype)


class _ConvGNPReLU(nn.Module):
    """Sequential(Conv2d 3x3 reflect + bias, GroupNorm(C/32), PReLU): children "0", "1", "2"."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Conv2d(self.features, 3, 1, 1, "reflect", precision=self.precision, name="0", **kw)(x)
        x = GroupNorm(name="1", **kw)(x)
        return PReLU(name="2", **kw)(x)


class DoubleConv(nn.Module):
    """double_conv1 (-> mid) then double_conv2 (-> out); returns both outputs."""

    features: int
    mid_features: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x1 = _ConvGNPReLU(self.mid_features or self.features, name="double_conv1", **kw)(x)
        return x1, _ConvGNPReLU(self.features, name="double_conv2", **kw)(x1)


def _maxpool2(x):
    """nn.MaxPool2d(2): 2x2 windows, stride 2, odd trailing row / column dropped."""
    # Python-scalar init: JAX's differentiable max-pool rule (an array init has no reverse-mode derivative)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class _MaxPoolDoubleConv(nn.Module):
    """Down.maxpool_conv = Sequential(MaxPool2d(2), DoubleConv): the DoubleConv is child "1"."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        return DoubleConv(self.features, None, self.dtype, self.param_dtype, self.precision, name="1")(_maxpool2(x))


class Down(nn.Module):
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        return _MaxPoolDoubleConv(self.features, self.dtype, self.param_dtype, self.precision, name="maxpool_conv")(x)


class _ConcatDoubleConv(nn.Module):
    """x1 = double_conv1(x); return double_conv2(cat[xc, x1])."""

    features: int
    mid_features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, xc):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x1 = _ConvGNPReLU(self.mid_features, name="double_conv1", **kw)(x)
        return _ConvGNPReLU(self.features, name="double_conv2", **kw)(jnp.concatenate([xc, x1], axis=-1))


def reflect_pad_or_crop(x, h, w):
    """F.pad(x, [dw//2, dw - dw//2, dh//2, dh - dh//2], mode="reflect") to (h, w) in NHWC.

    Positive amounts reflect (edge not repeated); negative amounts crop, as PyTorch does for negative
    padding (d = -s removes ceil(s/2) leading and floor(s/2) trailing rows).
    """
    for ax, target in ((1, h), (2, w)):
        d = target - x.shape[ax]
        lo, hi = d // 2, d - d // 2
        if d < 0:
            x = jax.lax.slice_in_dim(x, -lo, x.shape[ax] + hi, axis=ax)
        elif d > 0:
            pads = [(0, 0)] * x.ndim
            pads[ax] = (lo, hi)
            x = jnp.pad(x, pads, mode="reflect")
    return x


def _up2_align_corners(x):
    return upsample2x(x, align_corners=True)


class Up(nn.Module):
    features: int
    mid_features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, xc1, xc2):
        x1 = reflect_pad_or_crop(_up2_align_corners(x), xc1.shape[1], xc1.shape[2])
        conv = _ConcatDoubleConv(self.features, self.mid_features, self.dtype, self.param_dtype, self.precision,
                                 name="conv")
        return conv(jnp.concatenate([xc1, x1], axis=-1), xc2)


class OutConv(nn.Module):
    features: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, xc1):
        x2 = jnp.concatenate([xc1, _up2_align_corners(x)], axis=-1)
        y = Conv2d(self.features, 3, 1, 1, "reflect", dtype=self.dtype, param_dtype=self.param_dtype,
                   precision=self.precision, name="conv")(x2)
        return jax.nn.sigmoid(y.astype(_F32))


# ----------------------------------------------------------------------------------------------------
# the network


class ImgDecoder(nn.Module):
    """The official image decoder with its learned blend.

    `apply(variables, x_f, x_b, time)` = official forward: blend the two 37-channel renderings
    [B, H, W, 37] (time = t / N, a scalar or one per frame [B]) with the learned alpha (or Eq. 4 with
    blend="eq4": pass depth_f, depth_b [B, H, W]) and decode to RGB [B, H, W, 3] in [0, 1] (float32).
    `apply(variables, x, method=ImgDecoder.decode)` decodes an already blended map.
    Variables: params (conv / GroupNorm / PReLU weights and the scalar "alpha").
    """

    in_ch: int = 37  # RGB, A, 32 features (spacetime_model.feature_dim), D (use_depth_for_decoding)
    out_ch: int = 3
    blend: str = "official"  # "official": learned alpha on normalised disparity; "eq4": paper Eq. 4 on depth
    eq4_beta: float = 1.0  # Eq. 4 exponent scale per unit of depth (nearest depth = 1 in cine_jax)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def dummy_inputs(self):
        x = jnp.zeros((1, MIN_SIZE, MIN_SIZE, self.in_ch), _F32)
        if self.blend == "eq4":
            z = jnp.ones((1, MIN_SIZE, MIN_SIZE), _F32)
            return (x, x, 0.5, z, z)
        return (x, x, 0.5)

    def _check(self, x, name):
        if x.ndim != 4 or x.shape[-1] != self.in_ch:
            raise ValueError(
                f"ImgDecoder: {name} must be [B, H, W, {self.in_ch}] (RGB, A, features, D), got {tuple(x.shape)}"
            )
        h, w = x.shape[1:3]
        if h % 2 or w % 2 or h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(
                f"ImgDecoder: H and W must be even and at least {MIN_SIZE} (the output layer joins the x2-upsampled "
                f"H/2 map with the full-size one; reflect padding at H/16), got {h}x{w}"
            )

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        self.firstconv = Conv2d(32, 7, 1, 3, "zeros", use_bias=False, **kw)
        self.firstprelu = PReLU(dtype=self.dtype, param_dtype=self.param_dtype)
        self.down1 = Down(64, **kw)
        self.down2 = Down(128, **kw)
        self.down3 = Down(256, **kw)
        self.down4 = Down(512, **kw)
        self.conv5 = DoubleConv(512, **kw)
        self.up1 = Up(256, 512, **kw)
        self.up2 = Up(128, 256, **kw)
        self.up3 = Up(64, 128, **kw)
        self.up4 = Up(32, 64, **kw)
        self.outc = OutConv(self.out_ch, **kw)
        self.alpha = self.param("alpha", nn.initializers.ones, (), self.param_dtype)

    def blend_weights(self, x_f, x_b, time, depth_f=None, depth_b=None):
        """(w_f, w_b) [B, H, W, 1] of the configured blend; time is a scalar or one value per frame [B]."""
        time = jnp.asarray(time, _F32)
        if time.ndim not in (0, 1) or (time.ndim == 1 and time.shape[0] != jnp.shape(x_f)[0]):
            raise ValueError(f"ImgDecoder: time must be a scalar or [B] (one per frame), got shape {time.shape}")
        time = time.reshape(-1, 1, 1, 1) if time.ndim == 1 else time
        if self.blend == "official":
            return official_blend_weights(x_f, x_b, time, self.alpha)
        if self.blend == "eq4":
            if depth_f is None or depth_b is None:
                raise ValueError("ImgDecoder(blend='eq4'): pass depth_f and depth_b (splatted z-depth, [B, H, W])")
            t = time[..., 0] if time.ndim else time
            w_f, w_b = eq4_blend_weights(x_f[..., 3], depth_f, x_b[..., 3], depth_b, t, self.eq4_beta)
            return w_f[..., None], w_b[..., None]
        raise ValueError(f"ImgDecoder: blend must be one of {BLEND_MODES}, got {self.blend!r}")

    def __call__(self, x_f, x_b, time, depth_f=None, depth_b=None):
        x_f, x_b = jnp.asarray(x_f), jnp.asarray(x_b)
        self._check(x_f, "x_f")
        if x_b.shape != x_f.shape:
            raise ValueError(f"ImgDecoder: x_f and x_b must have the same shape, got {x_f.shape} and {x_b.shape}")
        w_f, w_b = self.blend_weights(x_f, x_b, time, depth_f, depth_b)
        return self.decode(blend_sides(x_f, x_b, w_f, w_b))

    def decode(self, x):
        """RGB [B, H, W, out_ch] in [0, 1] (float32) from a blended map [B, H, W, C]."""
        x = jnp.asarray(x)
        self._check(x, "x")
        x0 = self.firstprelu(self.firstconv(x.astype(self.dtype)))
        x20, x21 = self.down1(x0)
        x30, x31 = self.down2(x21)
        x40, x41 = self.down3(x31)
        x50, x51 = self.down4(x41)
        _, x61 = self.conv5(x51)
        xt1 = self.up1(x61, x51, x50)
        xt2 = self.up2(xt1, x41, x40)
        xt3 = self.up3(xt2, x31, x30)
        xt4 = self.up4(xt3, x21, x20)
        return self.outc(xt4, x0)


def config_from_state_dict(state, prefix="", path="checkpoint"):
    """in_ch and out_ch read off firstconv.weight [32, in_ch, 7, 7] and outc.conv.weight [out_ch, 64, 3, 3]."""
    from cine_jax.nets import checkpoints as ck

    first, out = ck.conv_shapes(state, (prefix + "firstconv.weight", prefix + "outc.conv.weight"), path, "ImgDecoder")
    return {"in_ch": first[1], "out_ch": out[0]}


def from_state_dict(state, path="checkpoint", prefix="", **kwargs):
    """(module, variables) from an official ImgDecoder state dict (e.g. `model_150000.pth['img_decoder']`)."""
    from cine_jax.nets import checkpoints as ck

    return ck.module_from_state_dict(ImgDecoder, config_from_state_dict(state, prefix, path), state, path, prefix,
                                     **kwargs)
