"""The feature net of 3D Cinemagraphy (from 3D Moments): RGBA LDI layers -> 32-channel features at ~H/4.

Official: `ResUNet(in_ch=4, out_ch=32)` in lib/model/inpaint/networks/resunet.py, weights
`model_150000.pth['feature_net']`; called on the stack of RGBA layers (`ImgRenderer.feature_extraction`)
and upsampled to the image size with bilinear align_corners=True before use. Facts:
shared/reference/cinemagraphy.md sections 3 and 10.

Network (NHWC), input RGBA in [0, 1] (no normalisation), all 3x3 / 7x7 convs with reflect padding:
  stem    conv1 7x7 s2 (no bias) -> BN -> ReLU -> maxpool 3x3 s2 p1
  layer1  3 BasicBlocks(64); layer2 4 BasicBlocks(128), first stride 2 + 1x1 downsample;
          layer3 6 BasicBlocks(256), idem (ResNet-34 stages 1-3; BasicBlock convs have no bias)
  decoder x = upconv3(layer3): bilinear x2 (align_corners=True) -> conv 3x3 256->128 -> BN -> ELU;
          x = iconv3(cat[x, pad(layer2)]) (256->128); x = upconv2(x) (128->64);
          x = iconv2(cat[x, pad(layer1)]) (128->32); out = out_conv 1x1 32->32 (bias)
  pad     `skipconnect` zero-pads the SKIP (not the upsampled map) to the upsampled size with F.pad
          [d//2, d - d//2] per axis, so at sizes that are not multiples of 16 the output is larger than
          H/4 (e.g. H = 100: 28 rows instead of 25), and the renderer stretches it to the image.
BatchNorm: every BN has track_running_stats=False, so even in eval mode it normalises with the statistics
of the current batch (biased variance, eps 1e-5): the batch is the stack of LDI layers, so each layer's
features depend on all layers. Sharding the layer axis is fine under jit (the mean is a global reduction).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cine_jax.nets import Conv2d, upsample2x
from kernels.sampling import resize

__all__ = [
    "BatchNormBatchStats",
    "ResUNet",
    "config_from_state_dict",
    "feature_size",
    "from_state_dict",
    "upsample_features",
]

_F32 = jnp.float32


class BatchNormBatchStats(nn.Module):
    """nn.BatchNorm2d(C, track_running_stats=False, affine=True): batch statistics over (B, H, W), always.

    params "scale" [C] (torch "weight"), "bias" [C]. Statistics and output in float32, cast to dtype.
    """

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        x = x.astype(_F32)
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(_F32) + bias.astype(_F32)
        return y.astype(self.dtype)


class _Sequential1x1BN(nn.Module):
    """BasicBlock.downsample = Sequential(conv1x1 stride s, no bias, BN): children "0" and "1"."""

    features: int
    stride: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Conv2d(self.features, 1, self.stride, use_bias=False, precision=self.precision, name="0", **kw)(x)
        return BatchNormBatchStats(name="1", **kw)(x)


class BasicBlock(nn.Module):
    """torchvision-style BasicBlock with reflect-padded 3x3 convs (no bias) and batch-statistics BN."""

    features: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = dict(padding=1, padding_mode="reflect", use_bias=False, precision=self.precision, **kw)
        out = Conv2d(self.features, 3, self.stride, name="conv1", **conv)(x)
        out = jax.nn.relu(BatchNormBatchStats(name="bn1", **kw)(out))
        out = Conv2d(self.features, 3, 1, name="conv2", **conv)(out)
        out = BatchNormBatchStats(name="bn2", **kw)(out)
        if self.downsample:
            x = _Sequential1x1BN(self.features, self.stride, precision=self.precision, name="downsample", **kw)(x)
        return jax.nn.relu(out.astype(_F32) + x.astype(_F32)).astype(self.dtype)


class _Layer(nn.Module):
    """A ResNet stage: Sequential of BasicBlocks named "0", "1", ...; the first may stride / downsample."""

    features: int
    blocks: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        for i in range(self.blocks):
            first = i == 0
            x = BasicBlock(self.features, self.stride if first else 1, self.downsample and first, name=str(i), **kw)(x)
        return x


class _ConvBNELU(nn.Module):
    """resunet.conv: Conv2d (bias, reflect padding (k-1)//2) -> BN (batch stats) -> ELU; children conv, bn."""

    features: int
    kernel_size: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        k = self.kernel_size
        x = Conv2d(self.features, k, 1, (k - 1) // 2, "reflect", precision=self.precision, name="conv", **kw)(x)
        return jax.nn.elu(BatchNormBatchStats(name="bn", **kw)(x).astype(_F32)).astype(self.dtype)


class _UpConv(nn.Module):
    """resunet.upconv: bilinear x2 (align_corners=True) then a _ConvBNELU named "conv"."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        x = upsample2x(x, align_corners=True)
        return _ConvBNELU(self.features, 3, self.dtype, self.param_dtype, self.precision, name="conv")(x)


def _pad_or_crop_zeros(x, h, w):
    """F.pad(x, [dw//2, dw - dw//2, dh//2, dh - dh//2]) (constant 0) to (h, w); negative amounts crop."""
    for ax, target in ((1, h), (2, w)):
        d = target - x.shape[ax]
        lo, hi = d // 2, d - d // 2
        start, stop = max(-lo, 0), x.shape[ax] - max(-hi, 0)
        x = jax.lax.slice_in_dim(x, start, stop, axis=ax)
        pads = [(0, 0)] * x.ndim
        pads[ax] = (max(lo, 0), max(hi, 0))
        x = jnp.pad(x, pads)
    return x


def _stage_sizes(n):
    """Spatial sizes along one axis: (stem conv, maxpool / layer1, layer2, layer3, output)."""
    s1 = (n + 2 * 3 - 7) // 2 + 1
    s2 = (s1 + 2 - 3) // 2 + 1
    s3 = (s2 + 2 - 3) // 2 + 1
    s4 = (s3 + 2 - 3) // 2 + 1
    return s1, s2, s3, s4, 4 * s4


def feature_size(h, w):
    """(h', w') of the feature map for an h x w input: 4 * (the layer3 size), about h / 4 (see module doc)."""
    return _stage_sizes(int(h))[-1], _stage_sizes(int(w))[-1]


class ResUNet(nn.Module):
    """The official feature net; input [L, H, W, in_ch] (the LDI layer stack, RGBA in [0, 1]), output
    [L, h', w', out_ch] with (h', w') = feature_size(H, W). BatchNorm uses the statistics of the whole
    stack (official track_running_stats=False), so the output of one layer depends on all layers.
    """

    in_ch: int = 4  # RGBA (use_inpainting_mask_for_feature / use_depth_for_feature are off in the config)
    out_ch: int = 32  # spacetime_model.feature_dim
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def dummy_inputs(self):
        return (jnp.zeros((2, 32, 32, self.in_ch), _F32),)

    def _check(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_ch:
            raise ValueError(
                f"ResUNet: input must be [layers, H, W, {self.in_ch}] (RGBA in [0, 1]), got shape {tuple(x.shape)}"
            )
        for name, n in (("H", x.shape[1]), ("W", x.shape[2])):
            if min(_stage_sizes(n)[:4]) < 2:  # reflect padding of 1 needs 2 pixels at the H/16 level
                raise ValueError(f"ResUNet: {name} = {n} is too small (at least 17 pixels: reflect padding at H/16)")

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x)
        self._check(x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kwp = dict(precision=self.precision, **kw)
        x = Conv2d(64, 7, 2, 3, "reflect", use_bias=False, name="conv1", **kwp)(x.astype(self.dtype))
        x = jax.nn.relu(BatchNormBatchStats(name="bn1", **kw)(x))
        # max-pool 3x3 s2 p1; the init value is a Python scalar so JAX uses its differentiable max-pool rule
        # (an array init value selects the generic reduce_window, which has no reverse-mode derivative)
        x = jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
        )
        x1 = _Layer(64, 3, 1, False, name="layer1", **kwp)(x)
        x2 = _Layer(128, 4, 2, True, name="layer2", **kwp)(x1)
        x3 = _Layer(256, 6, 2, True, name="layer3", **kwp)(x2)

        x = _UpConv(128, name="upconv3", **kwp)(x3)
        x = jnp.concatenate([x, _pad_or_crop_zeros(x2, x.shape[1], x.shape[2])], axis=-1)
        x = _ConvBNELU(128, 3, name="iconv3", **kwp)(x)
        x = _UpConv(64, name="upconv2", **kwp)(x)
        x = jnp.concatenate([x, _pad_or_crop_zeros(x1, x.shape[1], x.shape[2])], axis=-1)
        x = _ConvBNELU(self.out_ch, 3, name="iconv2", **kwp)(x)
        return Conv2d(self.out_ch, 1, name="out_conv", **kwp)(x).astype(_F32)


def upsample_features(features, size):
    """The renderer's upsampling of feature maps [L, h', w', C] to the image size (H, W): bilinear with
    align_corners=True (corners to corners, so the padded border of odd sizes is stretched in)."""
    return resize(jnp.asarray(features, _F32), size, "bilinear", align_corners=True)


def config_from_state_dict(state, prefix="", path="checkpoint"):
    """in_ch and out_ch read off the checkpoint (conv1.weight [64, in_ch, 7, 7], out_conv.weight)."""
    from cine_jax.nets import checkpoints as ck

    first, out = ck.conv_shapes(state, (prefix + "conv1.weight", prefix + "out_conv.weight"), path, "ResUNet")
    return {"in_ch": first[1], "out_ch": out[0]}


def from_state_dict(state, path="checkpoint", prefix="", **kwargs):
    """(module, variables) from an official ResUNet state dict (e.g. `model_150000.pth['feature_net']`)."""
    from cine_jax.nets import checkpoints as ck

    return ck.module_from_state_dict(ResUNet, config_from_state_dict(state, prefix, path), state, path, prefix,
                                     **kwargs)
