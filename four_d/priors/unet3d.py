"""ModelScope text-to-video UNet (diffusers `UNet3DConditionModel`) in Flax Linen, and its checkpoint loader.

Animate124's coarse stage distils a video prior from ModelScope T2V 1.7B (`damo-vilab/text-to-video-ms-1.7b`,
reference/animate124.md section 4): latents (1, 4, 16, 32, 32), CFG over an (uncond, cond) pair. diffusers 0.39
has no Flax port of that UNet, so this module re-implements diffusers' PyTorch `UNet3DConditionModel`
(models/unets/unet_3d_condition.py, unet_3d_blocks.py, resnet.py `ResnetBlock2D` / `TemporalConvLayer`,
transformers/transformer_2d.py, transformers/transformer_temporal.py, attention.py `BasicTransformerBlock`)
layer for layer, with the same constructor arguments as its config.json and the same call layout:

    module = FlaxUNet3DConditionModel(**config)
    eps = module.apply({"params": params}, sample [B, C, F, H, W], timesteps, encoder_hidden_states [B, L, D])

Facts of the architecture this port keeps (read from the diffusers 0.39 PyTorch source):
- frames are folded into the batch (index b * F + f) for every 2D op; the text context and the time embedding
  are repeated per frame;
- the config's `attention_head_dim` H is the head WIDTH of every transformer: the blocks' spatial and temporal
  transformers have channels // H heads of H channels (diffusers passes its internal `num_attention_heads` = H
  as the width), `transformer_in` has 8 heads of H channels;
- spatial transformers (Transformer2DModel) use linear projections, GroupNorm(norm_num_groups, eps 1e-6)
  per frame, self-attention then cross-attention to the text, GEGLU feed-forward (exact GELU);
- temporal transformers (TransformerTemporalModel) GroupNorm(norm_num_groups, eps 1e-6) over (frames, H, W)
  jointly, then attend over the frames of each pixel, with two self-attention layers (double_self_attention);
- TemporalConvLayer: four GroupNorm(eps 1e-5) -> SiLU -> [dropout 0.1] -> Conv3d (3, 1, 1) stages, residual;
- ResnetBlock2D: GroupNorm(eps = norm_eps), `act_fn`, time-embedding add, 1x1 shortcut when channels change,
  divided by `mid_block_scale_factor` in the mid block (1 elsewhere);
- upsampling is nearest-neighbour to the skip connection's size (PyTorch `F.interpolate` index rule, so odd
  latent sizes give the same result as diffusers), downsampling a stride-2 3x3 conv with `downsample_padding`.

Reused from diffusers' Flax code: `FlaxAttention` (it matches PyTorch's `Attention` with bias-free q/k/v and a
biased output projection exactly, and brings the `use_memory_efficient_attention` / `split_head_dim` options of
diffusers' Flax UNet2D). Not reused, because they differ from the PyTorch UNet3D: `FlaxTransformer2DModel` and
`FlaxResnetBlock2D` (GroupNorm fixed to 32 groups / eps 1e-5), `FlaxGEGLU` (tanh-approximate GELU),
`FlaxUpsample2D` (no target size), `FlaxTimestepEmbedding` (SiLU only, no cond_proj). diffusers is imported
lazily (inside `setup`), so importing this module never imports diffusers or torch.
"""

import json
import logging
import os
import re
import warnings
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("UpBlock3D", "CrossAttnUpBlock3D")
# diffusers.models.activations.ACT2CLS; nn.GELU() there is the exact (erf) GELU.
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}
# Keys of older UNet configs that diffusers' UNet3DConditionModel does not take as arguments (it ignores them
# and hard-codes the value on the right); accepted here only with that value.
_LEGACY_FIXED_KEYS = {"flip_sin_to_cos": True, "freq_shift": 0, "center_input_sample": False}

WEIGHTS_NAME = "diffusion_pytorch_model"

# unet/config.json of ModelScope T2V 1.7B (damo-vilab / ali-vilab "text-to-video-ms-1.7b"), the prior of
# Animate124's coarse stage. Sources: the Hub repo's unet/config.json as quoted on a mirror page (attention_head_dim
# 64, block_out_channels [320, 640, 1280, 1280], cross_attention_dim 1024, the block types below, in/out channels 4,
# sample_size 32, act_fn silu); diffusers' scripts/convert_ms_text_to_video_to_diffusers.py, which converts the
# original checkpoint into `UNet3DConditionModel()` built with no arguments, i.e. diffusers' defaults (layers 2,
# norm_num_groups 32, norm_eps 1e-5, downsample_padding 1, mid_block_scale_factor 1); and the Hub's
# diffusion_pytorch_model.safetensors of 5.65 GB = 1.41e9 float32 values, the parameter count of this config.
MODELSCOPE_T2V_UNET_CONFIG = {
    "_class_name": "UNet3DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}


def validate_unet3d_config(
    *,
    in_channels,
    out_channels,
    down_block_types,
    up_block_types,
    block_out_channels,
    layers_per_block,
    downsample_padding,
    mid_block_scale_factor,
    act_fn,
    norm_num_groups,
    norm_eps,
    cross_attention_dim,
    attention_head_dim,
    num_attention_heads,
    time_cond_proj_dim,
    flip_sin_to_cos=True,
    freq_shift=0,
    center_input_sample=False,
    where="FlaxUNet3DConditionModel",
):
    """Raise ValueError (prefixed by `where`) for any setting diffusers' UNet3DConditionModel cannot build."""

    def bad(msg):
        raise ValueError(f"{where}: {msg}")

    def pos_int(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            bad(f"{name} must be a positive int, got {v!r}")

    pos_int("in_channels", in_channels)
    pos_int("out_channels", out_channels)
    pos_int("layers_per_block", layers_per_block)
    pos_int("cross_attention_dim", cross_attention_dim)
    if not isinstance(block_out_channels, Sequence) or len(block_out_channels) == 0:
        bad(f"block_out_channels must be a non-empty list of ints, got {block_out_channels!r}")
    for c in block_out_channels:
        pos_int("every block_out_channels entry", c)
    n = len(block_out_channels)
    if len(down_block_types) != n or len(up_block_types) != n:
        bad(
            f"down_block_types ({len(down_block_types)}), up_block_types ({len(up_block_types)}) and "
            f"block_out_channels ({n}) must have the same length"
        )
    for t in down_block_types:
        if t not in DOWN_BLOCK_TYPES:
            bad(f"down block type {t!r} is not supported (UNet3DConditionModel uses {DOWN_BLOCK_TYPES})")
    for t in up_block_types:
        if t not in UP_BLOCK_TYPES:
            bad(f"up block type {t!r} is not supported (UNet3DConditionModel uses {UP_BLOCK_TYPES})")
    if num_attention_heads is not None:
        bad(
            f"num_attention_heads must be null, got {num_attention_heads!r}: diffusers' UNet3DConditionModel "
            "refuses it too (NotImplementedError)"
        )
    if isinstance(attention_head_dim, bool) or not isinstance(attention_head_dim, (int, np.integer)):
        bad(
            f"attention_head_dim must be one int, got {attention_head_dim!r}: UNet3DConditionModel uses it both "
            "as the head width of every block and of transformer_in, and transformer_in cannot take a per-block "
            "list (diffusers fails on it too)"
        )
    pos_int("attention_head_dim", attention_head_dim)
    if isinstance(norm_num_groups, bool) or not isinstance(norm_num_groups, (int, np.integer)):
        bad(f"norm_num_groups must be an int (diffusers' UNet3D cannot be built without it), got {norm_num_groups!r}")
    for c in block_out_channels:
        if c % norm_num_groups:
            bad(f"norm_num_groups={norm_num_groups} does not divide block_out_channels entry {c}")
    width = attention_head_dim
    for i, t in enumerate(down_block_types):
        if t.startswith("CrossAttn") and block_out_channels[i] < width:
            bad(f"block {i} has {block_out_channels[i]} channels, fewer than attention_head_dim={width} (no head)")
    if block_out_channels[-1] < width:
        bad(f"the mid block has {block_out_channels[-1]} channels, fewer than attention_head_dim={width} (no head)")
    if block_out_channels[0] % 2:
        bad(f"block_out_channels[0] must be even (sinusoidal time embedding width), got {block_out_channels[0]}")
    if act_fn not in ACTIVATIONS:
        bad(f"act_fn {act_fn!r} is not one of {sorted(ACTIVATIONS)}")
    if isinstance(downsample_padding, bool) or not isinstance(downsample_padding, (int, np.integer)):
        bad(f"downsample_padding must be an int >= 0, got {downsample_padding!r}")
    if downsample_padding < 0:
        bad(f"downsample_padding must be >= 0, got {downsample_padding}")
    if not isinstance(norm_eps, (int, float)) or norm_eps <= 0:
        bad(f"norm_eps must be a positive number, got {norm_eps!r}")
    if not isinstance(mid_block_scale_factor, (int, float)) or mid_block_scale_factor <= 0:
        bad(f"mid_block_scale_factor must be a positive number, got {mid_block_scale_factor!r}")
    if time_cond_proj_dim is not None:
        pos_int("time_cond_proj_dim", time_cond_proj_dim)
    for key, value in (("flip_sin_to_cos", flip_sin_to_cos), ("freq_shift", freq_shift),
                       ("center_input_sample", center_input_sample)):
        if value != _LEGACY_FIXED_KEYS[key]:
            bad(
                f"{key}={value!r} is not supported: diffusers' UNet3DConditionModel ignores this key and always "
                f"uses {_LEGACY_FIXED_KEYS[key]!r}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Small pure pieces
# ----------------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0.0, max_period=10000.0):
    """Sinusoidal timestep features as diffusers' `get_timestep_embedding` (same operation order), [N] -> [N, dim].

    exponent_k = -ln(max_period) * k / (dim/2 - shift), emb = t * exp(exponent); [sin, cos] (flipped to
    [cos, sin] for UNet3D); an odd `dim` gets one zero column, as in PyTorch.
    """
    half = dim // 2
    exponent = -np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    emb = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def nearest_indices(in_size, out_size):
    """Source indices of PyTorch `F.interpolate(mode="nearest", size=...)`: floor(dst * (in / out)) in float32."""
    if out_size == in_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_nearest(x, size):
    """Nearest-neighbour resize of x [N, H, W, C] to `size` (H', W') with PyTorch's index rule (static shapes)."""
    _, h, w, _ = x.shape
    out_h, out_w = size
    if (out_h, out_w) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    x = jnp.take(x, jnp.asarray(nearest_indices(h, out_h)), axis=1)
    return jnp.take(x, jnp.asarray(nearest_indices(w, out_w)), axis=2)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


def _quiet_diffusers_flax_logger():
    # Every diffusers Flax module logs a deprecation warning in setup() (hundreds of lines per trace); only the
    # attention module's own logger is silenced, nothing else in diffusers.
    logging.getLogger("diffusers.models.attention_flax").setLevel(logging.ERROR)


class FlaxGEGLUFeedForward(nn.Module):
    """diffusers `FeedForward(dim, activation_fn="geglu")`: Linear(dim, 8 dim) -> a * GELU(b) -> Linear(4 dim, dim).

    GELU is the exact (erf) one, as PyTorch F.gelu; diffusers' FlaxGEGLU uses the tanh approximation.

    Params: net_0/proj, net_2 (PyTorch ff.net.0.proj, ff.net.2).
    """

    dim: int
    mult: int = 4
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        inner = self.dim * self.mult
        self.net_0 = _GEGLU(inner, dtype=self.dtype)
        self.net_2 = nn.Dense(self.dim, dtype=self.dtype)

    def __call__(self, x):
        return self.net_2(self.net_0(x))


class _GEGLU(nn.Module):
    inner_dim: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.proj = nn.Dense(2 * self.inner_dim, dtype=self.dtype)

    def __call__(self, x):
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)


class FlaxBasicTransformerBlock3D(nn.Module):
    """diffusers `BasicTransformerBlock` with layer norms (eps 1e-5), as used by the 2D and temporal transformers.

    x -> x + attn1(norm1 x) -> + attn2(norm2 x, context) -> + ff(norm3 x). With `context=None` attn2 is a second
    self-attention (TransformerTemporalModel's double_self_attention).
    """

    dim: int
    n_heads: int
    d_head: int
    dtype: jnp.dtype = jnp.float32
    use_memory_efficient_attention: bool = False
    split_head_dim: bool = False

    def setup(self):
        _quiet_diffusers_flax_logger()
        from diffusers.models.attention_flax import FlaxAttention

        kw = dict(
            heads=self.n_heads,
            dim_head=self.d_head,
            use_memory_efficient_attention=self.use_memory_efficient_attention,
            split_head_dim=self.split_head_dim,
            dtype=self.dtype,
        )
        self.norm1 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False)
        self.attn1 = FlaxAttention(self.dim, **kw)
        self.norm2 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False)
        self.attn2 = FlaxAttention(self.dim, **kw)
        self.norm3 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False)
        self.ff = FlaxGEGLUFeedForward(self.dim, dtype=self.dtype)

    def __call__(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class _TransformerLayers(nn.Module):
    """The layers both diffusers transformers here share: norm, proj_in, one transformer block, proj_out
    (param names as diffusers'); the subclasses differ only in which axis the tokens run along."""

    in_channels: int
    n_heads: int
    d_head: int
    norm_num_groups: int
    dtype: jnp.dtype = jnp.float32
    use_memory_efficient_attention: bool = False
    split_head_dim: bool = False

    def setup(self):
        inner = self.n_heads * self.d_head
        self.norm = nn.GroupNorm(self.norm_num_groups, epsilon=1e-6, dtype=self.dtype, use_fast_variance=False)
        self.proj_in = nn.Dense(inner, dtype=self.dtype)
        self.transformer_blocks = [
            FlaxBasicTransformerBlock3D(
                inner, self.n_heads, self.d_head, dtype=self.dtype,
                use_memory_efficient_attention=self.use_memory_efficient_attention,
                split_head_dim=self.split_head_dim,
            )
        ]
        self.proj_out = nn.Dense(self.in_channels, dtype=self.dtype)


class FlaxTransformer2D(_TransformerLayers):
    """diffusers `Transformer2DModel` (continuous input, use_linear_projection=True, one block) on frames.

    x [N, H, W, C], context [N, L, D] -> [N, H, W, C]; params norm, proj_in, transformer_blocks_0, proj_out.
    """

    def __call__(self, x, context):
        n, h, w, c = x.shape
        y = self.norm(x).reshape(n, h * w, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y).reshape(n, h, w, c)
        return y + x


class FlaxTransformerTemporal(_TransformerLayers):
    """diffusers `TransformerTemporalModel`: attention over the frames of every pixel.

    x [B*F, H, W, C] -> same. GroupNorm statistics span (frames, H, W) of one clip, as PyTorch normalises the
    [B, C, F, H, W] tensor. Params norm, proj_in, transformer_blocks_0, proj_out.
    """

    def __call__(self, x, num_frames):
        bf, h, w, c = x.shape
        b = bf // num_frames
        y = self.norm(x.reshape(b, num_frames, h, w, c))
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, num_frames, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, None)
        y = self.proj_out(y)
        y = y.reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4).reshape(bf, h, w, c)
        return y + x


class FlaxTemporalConvLayer(nn.Module):
    """diffusers `TemporalConvLayer` (from ModelScope's unet_sd.py): 4 x [GroupNorm, SiLU, (dropout), Conv3d(3,1,1)].

    x [B*F, H, W, C] -> same, residual. Params norm{k} / conv{k} for PyTorch conv{k}.0 / conv{k}.2|3.
    """

    channels: int
    norm_num_groups: int
    dropout: float = 0.1  # nn.Dropout(0.1) of conv2..conv4 in diffusers (active only in training)
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        for k in range(1, 5):
            # torch.nn.GroupNorm default eps 1e-5 (TemporalConvLayer does not pass norm_eps).
            setattr(self, f"norm{k}", nn.GroupNorm(self.norm_num_groups, epsilon=1e-5, dtype=self.dtype,
                                                   use_fast_variance=False))
            setattr(self, f"conv{k}", nn.Conv(self.channels, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)),
                                              dtype=self.dtype))
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, x, num_frames, deterministic=True):
        bf, h, w, c = x.shape
        y = x.reshape(bf // num_frames, num_frames, h, w, c)
        identity = y
        y = self.conv1(jax.nn.silu(self.norm1(y)))
        for k in (2, 3, 4):
            y = jax.nn.silu(getattr(self, f"norm{k}")(y))
            y = getattr(self, f"conv{k}")(self.drop(y, deterministic=deterministic))
        return (identity + y).reshape(bf, h, w, c)


class FlaxResnetBlock2D(nn.Module):
    """diffusers `ResnetBlock2D` (time_embedding_norm "default", pre-norm) with configurable groups, eps, activation."""

    in_channels: int
    out_channels: int
    norm_num_groups: int
    eps: float
    act_fn: str = "silu"
    output_scale_factor: float = 1.0
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.norm1 = nn.GroupNorm(self.norm_num_groups, epsilon=self.eps, dtype=self.dtype, use_fast_variance=False)
        self.conv1 = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)
        self.time_emb_proj = nn.Dense(self.out_channels, dtype=self.dtype)
        self.norm2 = nn.GroupNorm(self.norm_num_groups, epsilon=self.eps, dtype=self.dtype, use_fast_variance=False)
        self.conv2 = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)
        if self.in_channels != self.out_channels:
            self.conv_shortcut = nn.Conv(self.out_channels, (1, 1), padding="VALID", dtype=self.dtype)

    def __call__(self, x, temb):
        act = ACTIVATIONS[self.act_fn]
        h = self.conv1(act(self.norm1(x)))
        h = h + self.time_emb_proj(act(temb))[:, None, None, :]
        h = self.conv2(act(self.norm2(h)))  # dropout 0.0 in UNet3D
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class FlaxDownsample2D(nn.Module):
    """diffusers `Downsample2D(use_conv=True)`: 3x3 stride-2 conv; padding p, or (0, 1) on each axis when p = 0."""

    channels: int
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        p = self.padding
        pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
        self.conv = nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=pad, dtype=self.dtype)

    def __call__(self, x):
        return self.conv(x)


class FlaxUpsample2D(nn.Module):
    """diffusers `Upsample2D(use_conv=True)`: nearest resize to `size` (2x when None), then a 3x3 conv."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.conv = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)

    def __call__(self, x, size=None):
        size = (2 * x.shape[1], 2 * x.shape[2]) if size is None else tuple(size)
        return self.conv(resize_nearest(x, size))


class _BlockOptions(nn.Module):
    """Fields shared by the 3D blocks (a mixin dataclass; never used alone)."""

    norm_num_groups: int = 32
    resnet_eps: float = 1e-5
    act_fn: str = "silu"
    attention_head_dim: int = 64
    dtype: jnp.dtype = jnp.float32
    use_memory_efficient_attention: bool = False
    split_head_dim: bool = False

    def _resnet(self, cin, cout, scale=1.0):
        return FlaxResnetBlock2D(cin, cout, self.norm_num_groups, self.resnet_eps, self.act_fn, scale, dtype=self.dtype)

    def _temp_conv(self, c):
        return FlaxTemporalConvLayer(c, self.norm_num_groups, dtype=self.dtype)

    def _attention_pair(self, c):
        # unet_3d_blocks.py builds Transformer2DModel(c // H, H, ...): c // H heads of width H.
        width = self.attention_head_dim
        kw = dict(dtype=self.dtype, use_memory_efficient_attention=self.use_memory_efficient_attention,
                  split_head_dim=self.split_head_dim)
        return (FlaxTransformer2D(c, c // width, width, self.norm_num_groups, **kw),
                FlaxTransformerTemporal(c, c // width, width, self.norm_num_groups, **kw))


class FlaxDownBlock3D(_BlockOptions):
    """diffusers `CrossAttnDownBlock3D` (has_cross_attention) / `DownBlock3D`.

    Per layer: resnet -> temporal conv [-> spatial transformer -> temporal transformer]; then the optional
    downsampler. Returns (x, skips) with one skip per layer plus one after the downsampler.
    """

    in_channels: int = 0
    out_channels: int = 0
    num_layers: int = 1
    has_cross_attention: bool = True
    add_downsample: bool = True
    downsample_padding: int = 1

    def setup(self):
        self.resnets = [self._resnet(self.in_channels if i == 0 else self.out_channels, self.out_channels)
                        for i in range(self.num_layers)]
        self.temp_convs = [self._temp_conv(self.out_channels) for _ in range(self.num_layers)]
        if self.has_cross_attention:
            pairs = [self._attention_pair(self.out_channels) for _ in range(self.num_layers)]
            self.attentions = [p[0] for p in pairs]
            self.temp_attentions = [p[1] for p in pairs]
        if self.add_downsample:
            self.downsamplers = [FlaxDownsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype)]

    def __call__(self, x, temb, context, num_frames, deterministic=True):
        skips = []
        for i in range(self.num_layers):
            x = self.resnets[i](x, temb)
            x = self.temp_convs[i](x, num_frames, deterministic)
            if self.has_cross_attention:
                x = self.attentions[i](x, context)
                x = self.temp_attentions[i](x, num_frames)
            skips.append(x)
        if self.add_downsample:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class FlaxUpBlock3D(_BlockOptions):
    """diffusers `CrossAttnUpBlock3D` (has_cross_attention) / `UpBlock3D`.

    Per layer: concat(x, last skip) -> resnet -> temporal conv [-> transformers]; then the optional upsampler to
    `upsample_size` (the next skip's H, W).
    """

    in_channels: int = 0
    prev_output_channel: int = 0
    out_channels: int = 0
    num_layers: int = 1
    has_cross_attention: bool = True
    add_upsample: bool = True

    def setup(self):
        resnets = []
        for i in range(self.num_layers):
            skip_c = self.in_channels if i == self.num_layers - 1 else self.out_channels
            res_in = self.prev_output_channel if i == 0 else self.out_channels
            resnets.append(self._resnet(res_in + skip_c, self.out_channels))
        self.resnets = resnets
        self.temp_convs = [self._temp_conv(self.out_channels) for _ in range(self.num_layers)]
        if self.has_cross_attention:
            pairs = [self._attention_pair(self.out_channels) for _ in range(self.num_layers)]
            self.attentions = [p[0] for p in pairs]
            self.temp_attentions = [p[1] for p in pairs]
        if self.add_upsample:
            self.upsamplers = [FlaxUpsample2D(self.out_channels, dtype=self.dtype)]

    def __call__(self, x, skips, temb, context, num_frames, upsample_size=None, deterministic=True):
        skips = list(skips)
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.resnets[i](x, temb)
            x = self.temp_convs[i](x, num_frames, deterministic)
            if self.has_cross_attention:
                x = self.attentions[i](x, context)
                x = self.temp_attentions[i](x, num_frames)
        if self.add_upsample:
            x = self.upsamplers[0](x, upsample_size)
        return x


class FlaxUNetMidBlock3DCrossAttn(_BlockOptions):
    """diffusers `UNetMidBlock3DCrossAttn` (one layer): resnet, temp conv, transformer, temporal transformer,
    resnet, temp conv; resnets divide by `output_scale_factor` (the UNet's mid_block_scale_factor)."""

    channels: int = 0
    output_scale_factor: float = 1.0

    def setup(self):
        c = self.channels
        self.resnets = [self._resnet(c, c, self.output_scale_factor) for _ in range(2)]
        self.temp_convs = [self._temp_conv(c) for _ in range(2)]
        spatial, temporal = self._attention_pair(c)
        self.attentions = [spatial]
        self.temp_attentions = [temporal]

    def __call__(self, x, temb, context, num_frames, deterministic=True):
        x = self.resnets[0](x, temb)
        x = self.temp_convs[0](x, num_frames, deterministic)
        x = self.attentions[0](x, context)
        x = self.temp_attentions[0](x, num_frames)
        x = self.resnets[1](x, temb)
        return self.temp_convs[1](x, num_frames, deterministic)


class FlaxTimestepEmbedding(nn.Module):
    """diffusers `TimestepEmbedding`: [+ cond_proj(cond)] -> linear_1 -> act -> linear_2."""

    time_embed_dim: int
    in_channels: int
    act_fn: str = "silu"
    cond_proj_dim: int | None = None
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.linear_1 = nn.Dense(self.time_embed_dim, dtype=self.dtype)
        self.linear_2 = nn.Dense(self.time_embed_dim, dtype=self.dtype)
        if self.cond_proj_dim is not None:
            self.cond_proj = nn.Dense(self.in_channels, use_bias=False, dtype=self.dtype)

    def __call__(self, sample, condition=None):
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        return self.linear_2(ACTIVATIONS[self.act_fn](self.linear_1(sample)))


# ----------------------------------------------------------------------------------------------------------------
# The UNet
# ----------------------------------------------------------------------------------------------------------------


class FlaxUNet3DConditionModel(nn.Module):
    r"""Flax port of diffusers' `UNet3DConditionModel` (ModelScope text-to-video); arguments as its config.json.

    Defaults are diffusers' defaults, which are exactly the ModelScope T2V 1.7B UNet (diffusers' conversion
    script builds `UNet3DConditionModel()` with no arguments).

    Args (config.json keys): sample_size (metadata only), in_channels, out_channels, down_block_types,
        up_block_types, block_out_channels, layers_per_block, downsample_padding, mid_block_scale_factor, act_fn,
        norm_num_groups, norm_eps, cross_attention_dim, attention_head_dim (the head width, see the module
        docstring), num_attention_heads (must be null, as in diffusers), time_cond_proj_dim, and the
        legacy keys flip_sin_to_cos / freq_shift / center_input_sample (accepted only with the values diffusers
        hard-codes).
    Module options: dtype (computation dtype, e.g. jnp.bfloat16; parameters are whatever you pass),
        use_memory_efficient_attention and split_head_dim (passed to diffusers' FlaxAttention: chunked attention
        https://arxiv.org/abs/2112.05682 / head-split einsum, as in diffusers' Flax UNet2D).

    Call: apply({"params": p}, sample [B, in_channels, F, H, W], timesteps (scalar, [1] or [B]),
        encoder_hidden_states [B, L, cross_attention_dim], timestep_cond [B, time_cond_proj_dim] or None,
        deterministic=True) -> [B, out_channels, F, H, W] in `dtype`. `deterministic=False` enables the
        temporal convolutions' dropout (0.1) and needs a "dropout" rng.
    """

    sample_size: int | Sequence[int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: Sequence[str] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                       "DownBlock3D")
    up_block_types: Sequence[str] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    attention_head_dim: int = 64
    num_attention_heads: int | None = None
    time_cond_proj_dim: int | None = None
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    dtype: jnp.dtype = jnp.float32
    use_memory_efficient_attention: bool = False
    split_head_dim: bool = False

    def __post_init__(self):
        # config.json gives lists; module fields must be hashable for jit/clone.
        for key in ("down_block_types", "up_block_types", "block_out_channels", "sample_size"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        validate_unet3d_config(**self.config)
        if self.use_memory_efficient_attention and self.split_head_dim:
            # diffusers' FlaxAttention chunked path assumes the [batch*heads, seq, dim] layout.
            raise ValueError("FlaxUNet3DConditionModel: use_memory_efficient_attention and split_head_dim cannot "
                             "both be True (diffusers' FlaxAttention supports one or the other)")
        super().__post_init__()

    @property
    def config(self):
        """The config.json arguments of this module (no dtype / attention options)."""
        keys = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups",
                "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                "time_cond_proj_dim", "flip_sin_to_cos", "freq_shift", "center_input_sample")
        return {k: getattr(self, k) for k in keys}

    def setup(self):
        boc = tuple(self.block_out_channels)
        n = len(boc)
        heads = self.attention_head_dim
        time_embed_dim = boc[0] * 4
        opts = dict(
            norm_num_groups=self.norm_num_groups, resnet_eps=self.norm_eps, act_fn=self.act_fn,
            attention_head_dim=heads, dtype=self.dtype,
            use_memory_efficient_attention=self.use_memory_efficient_attention, split_head_dim=self.split_head_dim,
        )
        self.conv_in = nn.Conv(boc[0], (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)
        self.time_embedding = FlaxTimestepEmbedding(time_embed_dim, boc[0], self.act_fn, self.time_cond_proj_dim,
                                                    dtype=self.dtype)
        # transformer_in: 8 heads of attention_head_dim channels (unet_3d_condition.py: num_attention_heads=8).
        self.transformer_in = FlaxTransformerTemporal(
            boc[0], 8, heads, self.norm_num_groups, dtype=self.dtype,
            use_memory_efficient_attention=self.use_memory_efficient_attention, split_head_dim=self.split_head_dim,
        )
        down = []
        out_c = boc[0]
        for i, t in enumerate(self.down_block_types):
            in_c, out_c = out_c, boc[i]
            down.append(FlaxDownBlock3D(
                in_channels=in_c, out_channels=out_c, num_layers=self.layers_per_block,
                has_cross_attention=t == "CrossAttnDownBlock3D", add_downsample=i < n - 1,
                downsample_padding=self.downsample_padding, **opts,
            ))
        self.down_blocks = down
        self.mid_block = FlaxUNetMidBlock3DCrossAttn(channels=boc[-1], output_scale_factor=self.mid_block_scale_factor,
                                                     **opts)
        rev = boc[::-1]
        up = []
        out_c = rev[0]
        for i, t in enumerate(self.up_block_types):
            prev_c, out_c = out_c, rev[i]
            in_c = rev[min(i + 1, n - 1)]
            up.append(FlaxUpBlock3D(
                in_channels=in_c, prev_output_channel=prev_c, out_channels=out_c, num_layers=self.layers_per_block + 1,
                has_cross_attention=t == "CrossAttnUpBlock3D", add_upsample=i < n - 1, **opts,
            ))
        self.up_blocks = up
        self.conv_norm_out = nn.GroupNorm(self.norm_num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                                          use_fast_variance=False)
        self.conv_out = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)

    def _check_inputs(self, sample, timesteps, encoder_hidden_states, timestep_cond):
        where = "FlaxUNet3DConditionModel"
        if sample.ndim != 5 or sample.shape[1] != self.in_channels:
            raise ValueError(f"{where}: sample must be [B, {self.in_channels}, F, H, W], got shape {sample.shape}")
        b = sample.shape[0]
        if (encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b
                or encoder_hidden_states.shape[2] != self.cross_attention_dim):
            raise ValueError(
                f"{where}: encoder_hidden_states must be [B={b}, L, {self.cross_attention_dim}], got shape "
                f"{encoder_hidden_states.shape}"
            )
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, b)):
            raise ValueError(f"{where}: timesteps must be a scalar, [1] or [B={b}], got shape {timesteps.shape}")
        if timestep_cond is not None:
            if self.time_cond_proj_dim is None:
                raise ValueError(f"{where}: timestep_cond given but the config has time_cond_proj_dim=null")
            if timestep_cond.shape != (b, self.time_cond_proj_dim):
                raise ValueError(
                    f"{where}: timestep_cond must be [B={b}, {self.time_cond_proj_dim}], got {timestep_cond.shape}"
                )

    def __call__(self, sample, timesteps, encoder_hidden_states, timestep_cond=None, deterministic=True):
        sample = jnp.asarray(sample)
        timesteps = jnp.asarray(timesteps)
        encoder_hidden_states = jnp.asarray(encoder_hidden_states)
        self._check_inputs(sample, timesteps, encoder_hidden_states, timestep_cond)
        b, _, f, h, w = sample.shape

        t = jnp.broadcast_to(timesteps.reshape(-1), (b,))
        t_emb = timestep_embedding(t, self.block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        emb = self.time_embedding(t_emb.astype(self.dtype), timestep_cond)
        emb = jnp.repeat(emb, f, axis=0)  # [B*F, 4 C0], row b*F + f = clip b
        context = jnp.repeat(encoder_hidden_states, f, axis=0)

        x = sample.transpose(0, 2, 3, 4, 1).reshape(b * f, h, w, self.in_channels)
        x = self.conv_in(x)
        x = self.transformer_in(x, f)

        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, emb, context, f, deterministic)
            skips.extend(res)
        x = self.mid_block(x, emb, context, f, deterministic)
        for block in self.up_blocks:
            k = block.num_layers
            res, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[1:3] if block.add_upsample else None
            x = block(x, res, emb, context, f, size, deterministic)

        x = jax.nn.silu(self.conv_norm_out(x))
        x = self.conv_out(x)
        return x.reshape(b, f, h, w, self.out_channels).transpose(0, 4, 1, 2, 3)

    def init_weights(self, rng, num_frames=1, height=8, width=8):
        """Random parameters (Flax default init; not PyTorch's). Use with jax.eval_shape for shapes only."""
        sample = jnp.zeros((1, self.in_channels, num_frames, height, width), jnp.float32)
        context = jnp.zeros((1, 1, self.cross_attention_dim), jnp.float32)
        cond = None if self.time_cond_proj_dim is None else jnp.zeros((1, self.time_cond_proj_dim), jnp.float32)
        return self.init(rng, sample, jnp.zeros((1,), jnp.int32), context, cond)["params"]

    @classmethod
    def from_config(cls, config, where="config", **options):
        """Build from a config.json dict: private keys (`_class_name`, ...) are skipped; other keys that are not
        arguments of diffusers' UNet3DConditionModel are ignored with a warning, as diffusers does."""
        config = dict(config)
        cls_name = config.get("_class_name")
        if cls_name is not None and cls_name != "UNet3DConditionModel":
            raise ValueError(f"{where}: _class_name is {cls_name!r}, expected 'UNet3DConditionModel'")
        fields = set(cls.__dataclass_fields__) - {"parent", "name", "dtype", "use_memory_efficient_attention",
                                                  "split_head_dim"}
        kwargs, ignored = {}, []
        for k, v in config.items():
            if k.startswith("_"):
                continue
            if k in fields:
                kwargs[k] = v
            else:
                ignored.append(k)
        if ignored:
            warnings.warn(
                f"{where}: keys {sorted(ignored)} are not UNet3DConditionModel arguments and are ignored "
                "(diffusers ignores them too)", stacklevel=2,
            )
        try:
            return cls(**kwargs, **options)
        except ValueError as e:
            msg = str(e).replace("FlaxUNet3DConditionModel: ", "")
            raise ValueError(f"{where}: {msg}") from None


# ----------------------------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax params
# ----------------------------------------------------------------------------------------------------------------

# Flax list attributes named `<name>_<i>` that are PyTorch ModuleLists / Sequentials `<name>.<i>`.
_LIST_NAMES = ("down_blocks", "up_blocks", "resnets", "temp_convs", "attentions", "temp_attentions",
               "downsamplers", "upsamplers", "transformer_blocks", "to_out", "net")


def flax_path_to_torch_key(path):
    """('down_blocks_0', 'temp_convs_1', 'conv2', 'kernel') -> 'down_blocks.0.temp_convs.1.conv2.3.weight'."""
    parts = []
    in_temp_conv = False
    for i, token in enumerate(path):
        last = i == len(path) - 1
        if last:
            parts.append("bias" if token == "bias" else "weight")
            continue
        m = re.fullmatch(r"(.+)_(\d+)", token)
        if m and m.group(1) in _LIST_NAMES:
            parts += [m.group(1), m.group(2)]
            in_temp_conv = m.group(1) == "temp_convs"
            continue
        m = re.fullmatch(r"(norm|conv)([1-4])", token)
        if in_temp_conv and m:
            k = m.group(2)
            # nn.Sequential(GroupNorm, SiLU, Conv3d) for conv1, (GroupNorm, SiLU, Dropout, Conv3d) for conv2..4.
            index = "0" if m.group(1) == "norm" else ("2" if k == "1" else "3")
            parts += [f"conv{k}", index]
            continue
        parts.append(token)
    return ".".join(parts)


def torch_shape(flax_leaf_name, shape):
    """The PyTorch tensor shape of a Flax leaf: Dense kernel (in, out) <- (out, in); Conv (..., in, out) <-
    (out, in, ...); scale / bias unchanged."""
    shape = tuple(shape)
    if flax_leaf_name == "kernel":
        return (shape[-1], shape[-2]) + shape[:-2]
    return shape


def torch_to_flax_array(flax_leaf_name, array):
    """Inverse of `torch_shape` on values: Linear (out, in) -> (in, out), Conv (out, in, *k) -> (*k, in, out)."""
    if flax_leaf_name == "kernel":
        nd = array.ndim
        return np.transpose(array, tuple(range(2, nd)) + (1, 0))
    return array


def expected_torch_state_dict(param_shapes):
    """{PyTorch key: (Flax path, Flax shape)} for a Flax params tree (arrays or ShapeDtypeStructs)."""
    expected = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(param_shapes)[0]:
        path = tuple(k.key for k in keypath)
        expected[flax_path_to_torch_key(path)] = (path, tuple(leaf.shape))
    return expected


def convert_torch_state_dict(state_dict, param_shapes, dtype=jnp.float32, source="state dict"):
    """Fill the Flax params tree `param_shapes` (e.g. jax.eval_shape(module.init_weights, key)) from a PyTorch
    UNet3DConditionModel state dict {name: np.ndarray}. Every key must be used and every parameter filled with the
    right shape; otherwise ValueError naming `source`, the keys and the expected shapes."""
    expected = expected_torch_state_dict(param_shapes)
    problems = []
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    for key in missing:
        path, shape = expected[key]
        problems.append(f"missing key '{key}' (expected shape {torch_shape(path[-1], shape)})")
    for key in unexpected:
        problems.append(f"unexpected key '{key}' (shape {tuple(np.shape(state_dict[key]))}; no such parameter "
                        "in this config)")
    out = {}
    for key, (path, shape) in expected.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        want = torch_shape(path[-1], shape)
        if value.shape != want:
            problems.append(f"key '{key}' has shape {value.shape}, expected {want}")
            continue
        out[path] = jnp.asarray(torch_to_flax_array(path[-1], value), dtype=dtype)
    if problems:
        head = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{source}: {len(problems)} problem(s) converting the UNet3D weights:\n  {head}{more}")
    params = {}
    for path, value in out.items():
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return params


def _read_safetensors(path):
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{path}: cannot read the safetensors file ({type(e).__name__}: {e})") from None


def _read_torch_bin(path):
    import torch  # only here: .bin checkpoints are torch pickles

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path}: entry '{k}' is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to(torch.float32).numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
    return out


def _read_sharded(index_path, reader):
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{index_path}: not a valid shard index ({type(e).__name__}: {e})") from None
    folder = os.path.dirname(index_path)
    out = {}
    for shard in sorted(set(weight_map.values())):
        out.update(reader(os.path.join(folder, shard)))
    return out


def resolve_unet3d_folder(folder):
    """The folder holding the UNet's config.json: `folder` itself or, for a pipeline folder, `folder/unet`."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a directory (expected a UNet3D folder or a diffusers pipeline folder)")
    for candidate in (folder, os.path.join(folder, "unet")):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise ValueError(f"{folder}: no config.json here or in {os.path.join(folder, 'unet')}")


def _add_variant(name, variant):
    """diffusers' file naming: the variant goes before the last extension ("a.safetensors.index.json" ->
    "a.safetensors.index.fp16.json")."""
    if not variant:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant, parts[-1]])


def load_unet3d_state_dict(folder, variant=None):
    """(path, {name: np.ndarray}) of the UNet weights in `folder` (safetensors preferred, then .bin; sharded
    checkpoints through their .index.json; `variant` such as "fp16" as diffusers names the files)."""
    candidates = [
        (_add_variant(f"{WEIGHTS_NAME}.safetensors", variant), _read_safetensors, False),
        (_add_variant(f"{WEIGHTS_NAME}.safetensors.index.json", variant), _read_safetensors, True),
        (_add_variant(f"{WEIGHTS_NAME}.bin", variant), _read_torch_bin, False),
        (_add_variant(f"{WEIGHTS_NAME}.bin.index.json", variant), _read_torch_bin, True),
    ]
    for name, reader, sharded in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path, (_read_sharded(path, reader) if sharded else reader(path))
    present = sorted(p for p in os.listdir(folder) if p.startswith(WEIGHTS_NAME))
    hint = f" (found {present}; pass variant=...)" if present else ""
    raise ValueError(f"{folder}: no {' / '.join(c[0] for c in candidates)}{hint}")


def load_unet3d(folder, dtype=jnp.float32, param_dtype=None, variant=None, use_memory_efficient_attention=False,
                split_head_dim=False):
    """Load a diffusers UNet3DConditionModel folder (or a pipeline folder with `unet/`) as (module, params).

    Reads config.json and diffusion_pytorch_model[.variant].safetensors (NumPy, no torch) or .bin
    (torch.load(weights_only=True)); params are cast to `param_dtype` (default: `dtype`, the computation dtype).
    Every checkpoint key must map to a parameter of the config's architecture and vice versa.
    """
    folder = resolve_unet3d_folder(folder)
    config_path = os.path.join(folder, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_path}: cannot read the config ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    module = FlaxUNet3DConditionModel.from_config(
        config, where=config_path, dtype=dtype, use_memory_efficient_attention=use_memory_efficient_attention,
        split_head_dim=split_head_dim,
    )
    weights_path, state_dict = load_unet3d_state_dict(folder, variant)
    shapes = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
    params = convert_torch_state_dict(state_dict, shapes, dtype=param_dtype or dtype, source=weights_path)
    return module, params


def count_params(params):
    """Number of scalars in a params tree (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
