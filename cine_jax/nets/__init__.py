"""The learned networks of 3D Cinemagraphy as Flax Linen modules, weight-compatible with the official files.

Modules (NHWC, `module.apply(variables, ...)` is a pure function of the variables and the inputs):

    motion.SPADEUnet4MaskMotion   image + mask + hints -> Eulerian flow    (`sceneflow_model.pth['netG']`)
    features.ResUNet              RGBA LDI layers -> 32 features at ~H/4   (`model_150000.pth['feature_net']`)
    decoder.ImgDecoder            two splatted 37-channel maps -> RGB      (`model_150000.pth['img_decoder']`)

Each module file also holds the official pre- and post-processing around its network as pure functions.
`checkpoints` reads official PyTorch / safetensors files and writes and reads converted Flax variables;
`cine_jax.convert` is the registry of converters behind `cine-jax convert`.

Naming: every Flax module and variable is named so that the official PyTorch state-dict key is the Flax
path joined with "." (Sequential indices are modules named "0", "1", ...), with the leaf renamed by
`checkpoints.TORCH_LEAF_NAMES` ("kernel" -> "weight", "scale" -> "weight"). Conv kernels are stored in
Flax's HWIO layout; the converter transposes PyTorch's OIHW. That single rule is the whole mapping.

Precision: `dtype` (activations / matmul inputs) and `param_dtype` are module arguments. float32 is the
default and what the parity tests check. bfloat16 (`dtype=jnp.bfloat16`, params cast with
`cast_floating`) is meant for GPU/TPU; normalisation statistics, the spectral-norm power iteration, the
learned blend and the resizes always compute in float32. `precision` is passed to every conv: None is the
backend default (float32 on CPU; TPUs default to bfloat16 passes, so use "highest" there for parity).
bfloat16 errors against float32 (max |diff| / max |f32|, random weights, benchmarks/nets.py at 256x256):
motion 2.4e-2, features 4.5e-2, decoder 7.5e-3. On CPU bfloat16 convolutions are slow: use it on GPU/TPU.

Speed: every conv goes through `conv_nhwc`, which on CPU never hands XLA an unpadded convolution (its
slow path; see the docstring). With that the three networks ran at roughly 50-80% of a float32 matmul's
FLOP rate at 768x768 on this project's 2-core CPU (benchmarks/nets.py, three runs on a shared machine).
`flops_per_call` is the FLOP count the benchmarks use.

This package imports Flax/JAX only; torch is imported inside converter functions, never at import time.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Conv2d", "PReLU", "cast_floating", "conv_nhwc", "flops_per_call", "leaky_relu", "upsample2x"]


def _conv_init(key, shape, dtype):
    # PyTorch's default conv init (kaiming_uniform with a = sqrt(5)) is U(-b, b), b = 1 / sqrt(fan_in).
    fan_in = shape[0] * shape[1] * shape[2]
    bound = 1.0 / jnp.sqrt(jnp.float32(fan_in))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# conv_nhwc's CPU workaround for unpadded convolutions (see its docstring). A switch only so that
# benchmarks/nets.py can count the network's useful FLOPs without the discarded border outputs.
PAD_UNPADDED_CONVS_ON_CPU = True


def _conv(x, kernel, stride, pads, precision):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def conv_nhwc(x, kernel, stride, padding, padding_mode, dtype, precision):
    """2-D cross-correlation of x [B, H, W, I] with kernel [kh, kw, I, O] as torch.nn.Conv2d computes it.

    padding: symmetric int p. padding_mode "zeros" pads with 0; "reflect" pads by reflection without
    repeating the edge (torch padding_mode="reflect", numpy mode="reflect"), then convolves unpadded.
    On CPU an unpadded convolution with a kernel wider than 1 is computed as a convolution padded by the
    stride whose outputs starting in that padding are dropped: bit-identical, and 1.5-4x faster because
    XLA:CPU runs unpadded ("VALID") convolutions on a much slower path (measured on this project's Xeon:
    3x3 64->64 at 386x386 0.36 -> 0.13 CPU s, 7x7 37->32 at 774x774 4.15 -> 1.11 CPU s).
    """
    p = int(padding)
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    if padding_mode == "reflect" and p > 0:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        p = 0
    elif padding_mode not in ("zeros", "reflect"):
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
    kh, kw = kernel.shape[:2]
    if p == 0 and max(kh, kw) > 1 and PAD_UNPADDED_CONVS_ON_CPU and jax.default_backend() == "cpu":
        s = stride
        y = _conv(x, kernel, s, ((s, s), (s, s)), precision)
        n_h = (x.shape[1] - kh) // s + 1
        n_w = (x.shape[2] - kw) // s + 1
        return y[:, 1 : 1 + n_h, 1 : 1 + n_w]
    return _conv(x, kernel, stride, ((p, p), (p, p)), precision)


def upsample2x(x, align_corners):
    """x2 bilinear upsampling of [B, H, W, C] as torch F.interpolate(scale_factor=2, mode="bilinear",
    align_corners=...), computed in float32 by kernels.sampling.resize and returned in x's dtype.

    (An elementwise 3-tap stencil with an interleave was tried instead of resize's gathers and measured
    1.3-3x slower in CPU time on this machine, e.g. 384 -> 768 with 32 channels: 0.094 vs 0.049 s.)
    """
    from kernels.sampling import resize

    size = (2 * x.shape[1], 2 * x.shape[2])
    return resize(x.astype(jnp.float32), size, "bilinear", align_corners=align_corners).astype(x.dtype)


class Conv2d(nn.Module):
    """torch.nn.Conv2d in NHWC: params "kernel" [k, k, in, out] (HWIO) and "bias" [out] (if use_bias)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    padding_mode: str = "zeros"  # "zeros" | "reflect"
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        y = conv_nhwc(x, kernel, self.stride, self.padding, self.padding_mode, self.dtype, self.precision)
        if self.use_bias:
            fan_in = k * k * x.shape[-1]
            bias = self.param(
                "bias",
                lambda key, s, d: jax.random.uniform(key, s, d, -1.0, 1.0) / jnp.sqrt(jnp.float32(fan_in)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(y.dtype)
        return y


class PReLU(nn.Module):
    """torch.nn.PReLU() with one shared slope: param "weight" [1] (init 0.25, as torch)."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.constant(0.25), (1,), self.param_dtype)
        x = x.astype(self.dtype)
        return jnp.where(x >= 0, x, w.astype(x.dtype)[0] * x)


def leaky_relu(x, slope=0.2):
    return jnp.where(x >= 0, x, slope * x)


def cast_floating(tree, dtype):
    """Cast every floating leaf of a variables tree to dtype (e.g. jnp.bfloat16 params); others untouched."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree
    )


def flops_per_call(fn, *args, **kwargs):
    """FLOPs of one call of fn(*args, **kwargs) from XLA's cost analysis of the compiled executable.

    fn: a plain function or a jitted one (compiled here for args; kwargs are closed over, so static), or an
    already compiled executable (`jax.jit(f).lower(...).compile()`, or a `Lowered`; then args are ignored).
    Returns a float; raises ValueError when the backend gives no "flops" estimate. XLA counts 2 FLOPs per
    multiply-add that reads the input (taps falling on zero padding are not counted) and includes
    elementwise work (normalisation, activations, resizes).
    """
    if hasattr(fn, "cost_analysis"):  # a jax.stages.Compiled (or Lowered)
        compiled = fn
    else:
        if kwargs:
            jitted = jax.jit(functools.partial(fn, **kwargs))
        else:
            jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        raise ValueError(f"flops_per_call: the {jax.default_backend()} backend gave no flops estimate")
    return float(cost["flops"])
