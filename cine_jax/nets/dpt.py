"""DPT-Hybrid monocular depth (Ranftl et al., ICCV 2021) as a Flax module, weight-compatible with MiDaS.

The official 3D Cinemagraphy depth (third_party/DPT/run_monodepth.py, model_type "dpt_hybrid", weights
`dpt_hybrid-midas-501f0c75.pt`; facts in shared/reference/cinemagraphy.md section 2) is DPT with the
"vitb_rn50_384" backbone: a ViT-B/16 whose patch embedding is a BiT ResNet-50 stem (timm
vit_base_resnet50_384). The same network is transformers' `DPTForDepthEstimation` with `is_hybrid=True`
(e.g. Intel/dpt-hybrid-midas). Both weight layouts convert to this module:

  backbone  BiT ResNet-v2 without pre-activation: weight-standardised convolutions (per output channel,
            biased variance, eps 1e-8) with TensorFlow "SAME" padding, GroupNorm (32 groups, eps 1e-5) +
            ReLU; stem 7x7/2 conv + 3x3/2 max pool; 3 stages of bottlenecks (3, 4, 9 blocks; 256, 512, 1024
            channels; stride 1, 2, 2 on the 3x3 conv and the 1x1 downsample of the first block).
  ViT       1x1 projection of stage 3 (stride 16) to 768, [CLS] + position embeddings (trained on a 24 x 24
            grid, resized bilinearly (align_corners=False) to H/16 x W/16), 12 pre-LayerNorm blocks
            (12 heads, MLP 3072, exact GELU).
  neck      features: BiT stages 1 and 2 (H/4, H/8) as they are; ViT blocks 8 and 11 (0-based): readout
            "project" (concat token with [CLS], Linear 2D -> D, GELU), 1x1 conv to 768, block 11 also a 3x3/2
            conv (H/32); then 3x3 convs to 256 (no bias) and four fusion blocks (deepest first: residual
            conv unit on the skip, added; residual conv unit; bilinear x2 upsampling with align_corners=True;
            1x1 conv).
  head      3x3 conv 256 -> 128, bilinear x2, 3x3 conv -> 32, ReLU, 1x1 conv -> 1, ReLU: inverse depth.

Known differences between the two implementations, kept as config values:
  head_align_corners  the head's x2 upsampling: MiDaS `Interpolate(scale_factor=2, mode="bilinear")` uses
                      align_corners=False; transformers' head uses nn.Upsample(align_corners=True).
  layer_norm_eps      timm's ViT uses 1e-6; transformers configs carry their own (default 1e-12).
The max pool of the stem pads with -inf (timm) where transformers pads with 0; both give the same result
because the pool follows a ReLU.

Pre/post-processing of the official run (`dpt_input_size`, `dpt_preprocess`, `quantize_disparity`,
`disparity_to_depth`) and the `DPTDepthEstimator` adapter (the `cine_jax.depth.DepthEstimator` interface)
are below. Importing this module does not import torch.
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

from cine_jax.nets.inpaint import check_state_dict
from kernels.sampling import resize

__all__ = [
    "DPTDepthEstimator",
    "DPTHybrid",
    "DPTHybridConfig",
    "disparity_to_depth",
    "dpt_config_from_transformers",
    "dpt_input_size",
    "dpt_params_from_midas_state_dict",
    "dpt_params_from_transformers_state_dict",
    "dpt_preprocess",
    "make_div",
    "midas_key_shapes",
    "quantize_disparity",
    "transformers_key_shapes",
]


def make_div(value, divisor=8):
    """BiT / timm channel rounding: nearest multiple of `divisor` (>= divisor), bumped if it lost > 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DPTHybridConfig:
    """DPT-Hybrid architecture; defaults are the official MiDaS `dpt_hybrid` (vitb_rn50_384) values.

    embedding_size      BiT stem width (64).
    stage_widths        BiT stage output widths (256, 512, 1024); bottleneck width = make_div(width / 4).
    stage_depths        bottleneck blocks per stage (3, 4, 9).
    num_groups          GroupNorm groups (32); group_norm_eps 1e-5; weight_std_eps 1e-8 (timm
                        partial(StdConv2dSame, eps=1e-8); transformers WeightStandardizedConv2d eps=1e-8).
    hidden_size, num_layers, num_heads, mlp_size   ViT-B: 768, 12, 12, 3072.
    layer_norm_eps      1e-6 (timm ViT); transformers configs set their own.
    image_size          training resolution (384): the position embeddings cover (image_size / 16)^2 tokens.
    patch_size          token stride in input pixels (16 = the BiT stride; fixed by the architecture).
    backbone_out_indices  (0, 1, 8, 11): entries 0 and 1 stand for BiT stages 1 and 2, entries 2 and 3 are
                        the ViT blocks whose outputs are reassembled.
    neck_hidden_sizes   (256, 512, 768, 768): widths of the four reassembled features (the first two are
                        the BiT stage 1 and 2 widths).
    reassemble_factors  resize of the ViT features 2 and 3: 1 (none) or 1/n (3x3 conv, stride n).
    fusion_hidden_size  256 (MiDaS `features`).
    head_channels       32: width of the head's second conv.
    head_align_corners  False (MiDaS Interpolate) / True (transformers nn.Upsample), see module docstring.
    """

    embedding_size: int = 64
    stage_widths: tuple[int, ...] = (256, 512, 1024)
    stage_depths: tuple[int, ...] = (3, 4, 9)
    num_groups: int = 32
    group_norm_eps: float = 1e-5
    weight_std_eps: float = 1e-8
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    layer_norm_eps: float = 1e-6
    image_size: int = 384
    patch_size: int = 16
    backbone_out_indices: tuple[int, ...] = (0, 1, 8, 11)
    neck_hidden_sizes: tuple[int, ...] = (256, 512, 768, 768)
    reassemble_factors: tuple[float, ...] = (1, 1, 1, 0.5)
    fusion_hidden_size: int = 256
    head_channels: int = 32
    head_align_corners: bool = False

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"DPTHybridConfig: {msg}")

        if len(self.stage_widths) != 3 or len(self.stage_depths) != 3:
            bad(f"the hybrid backbone has 3 BiT stages, got widths {self.stage_widths}, depths {self.stage_depths}")
        if any(d < 1 for d in self.stage_depths):
            bad(f"stage depths must be >= 1, got {self.stage_depths}")
        if self.patch_size != 16:
            bad(f"patch_size must be 16 (the BiT stem + 3 stages have stride 16), got {self.patch_size}")
        if self.image_size % self.patch_size:
            bad(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            bad(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if len(self.neck_hidden_sizes) != 4 or len(self.backbone_out_indices) != 4 or \
                len(self.reassemble_factors) != 4:
            bad("neck_hidden_sizes, backbone_out_indices and reassemble_factors need 4 entries")
        if tuple(self.neck_hidden_sizes[:2]) != tuple(self.stage_widths[:2]):
            bad(f"the first two neck sizes {self.neck_hidden_sizes[:2]} must equal the BiT stage 1 and 2 widths "
                f"{self.stage_widths[:2]}")
        if any(not 0 <= i < self.num_layers for i in self.backbone_out_indices[2:]):
            bad(f"ViT output indices {self.backbone_out_indices[2:]} must be in [0, {self.num_layers})")
        for f in self.reassemble_factors[2:]:
            if not (f == 1 or (0 < f < 1 and abs(1 / f - round(1 / f)) < 1e-9)):
                bad(f"reassemble factors of the ViT features must be 1 or 1/n, got {self.reassemble_factors}")
        if self.num_groups < 1 or any(w % self.num_groups for w in self._gn_widths()):
            bad(f"num_groups {self.num_groups} must divide every GroupNorm width {sorted(set(self._gn_widths()))}")
        if self.fusion_hidden_size % 2:
            bad(f"fusion_hidden_size must be even (the head halves it), got {self.fusion_hidden_size}")

    def _gn_widths(self):
        return [self.embedding_size] + [w for w in self.stage_widths] + [make_div(w / 4) for w in self.stage_widths]

    @property
    def grid(self):
        """Side of the square grid of trained position embeddings."""
        return self.image_size // self.patch_size

    def to_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"DPTHybridConfig: unknown keys {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------


def _precision(dtype):
    # float32 runs are meant to match PyTorch: full float32 matmuls/convs even where the backend default is
    # a bfloat16 pass (TPU). Reduced-precision runs use the default.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _tf_same_pads(size, k, s):
    """TensorFlow SAME padding (before, after) of one axis: total = max((ceil(n/s) - 1) s + k - n, 0)."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Module):
    """Convolution with explicit padding; kernel HWIO float32 (PyTorch [O, I, kh, kw] transposed)."""

    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 0  # int: symmetric zero padding (PyTorch); "tf_same": TensorFlow SAME
    use_bias: bool = True
    weight_std_eps: float | None = None  # BiT weight standardisation when set
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel, self.stride
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32)
        if self.weight_std_eps is not None:
            mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
            var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
            w = (w - mean) / jnp.sqrt(var + self.weight_std_eps)
        if self.padding == "tf_same":
            pads = (_tf_same_pads(x.shape[1], k, s), _tf_same_pads(x.shape[2], k, s))
        else:
            pads = ((self.padding, self.padding), (self.padding, self.padding))
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (s, s), pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=_precision(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(y.dtype)
        return y


def _group_norm(cfg, dtype, name):
    return nn.GroupNorm(num_groups=cfg.num_groups, epsilon=cfg.group_norm_eps, use_fast_variance=False,
                        dtype=dtype, name=name)


class _Bottleneck(nn.Module):
    """BiT bottleneck without pre-activation (timm Bottleneck / transformers BitBottleneckLayer)."""

    cfg: DPTHybridConfig
    width: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, self.dtype
        mid = make_div(self.width * 0.25)
        conv = functools.partial(_Conv, padding="tf_same", use_bias=False, weight_std_eps=cfg.weight_std_eps,
                                 dtype=dt)
        shortcut = x
        if self.downsample:
            shortcut = conv(self.width, 1, self.stride, name="downsample_conv")(x)
            shortcut = _group_norm(cfg, dt, "downsample_norm")(shortcut)
        h = nn.relu(_group_norm(cfg, dt, "norm1")(conv(mid, 1, name="conv1")(x)))
        h = nn.relu(_group_norm(cfg, dt, "norm2")(conv(mid, 3, self.stride, name="conv2")(h)))
        h = _group_norm(cfg, dt, "norm3")(conv(self.width, 1, name="conv3")(h))
        return nn.relu(h + shortcut)


class _ViTBlock(nn.Module):
    cfg: DPTHybridConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, self.dtype
        d, nh = cfg.hidden_size, cfg.num_heads
        dense = functools.partial(nn.Dense, dtype=dt, precision=_precision(dt))
        ln = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dt)
        h = ln(name="layernorm_before")(x)
        b, n, _ = h.shape
        q = dense(d, name="query")(h).reshape(b, n, nh, d // nh)
        k = dense(d, name="key")(h).reshape(b, n, nh, d // nh)
        v = dense(d, name="value")(h).reshape(b, n, nh, d // nh)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_precision(dt)) * (d // nh) ** -0.5
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dt)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, v, precision=_precision(dt)).reshape(b, n, d)
        x = x + dense(d, name="attention_output")(ctx)
        h = nn.gelu(dense(cfg.mlp_size, name="intermediate")(ln(name="layernorm_after")(x)), approximate=False)
        return x + dense(d, name="output")(h)


class _ResidualConvUnit(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _Conv(self.features, 3, padding=1, dtype=self.dtype, name="conv1")(nn.relu(x))
        h = _Conv(self.features, 3, padding=1, dtype=self.dtype, name="conv2")(nn.relu(h))
        return h + x


def _upsample2(x, align_corners):
    return resize(x, (2 * x.shape[1], 2 * x.shape[2]), "bilinear", align_corners=align_corners)


class _FusionBlock(nn.Module):
    features: int
    with_skip: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skip=None):
        if self.with_skip:
            if skip.shape != x.shape:  # transformers interpolates a mismatched skip; MiDaS never needs it
                skip = resize(skip, x.shape[1:3], "bilinear", align_corners=False)
            x = x + _ResidualConvUnit(self.features, self.dtype, name="residual_layer1")(skip)
        x = _ResidualConvUnit(self.features, self.dtype, name="residual_layer2")(x)
        x = _upsample2(x, align_corners=True)
        return _Conv(self.features, 1, dtype=self.dtype, name="projection")(x)


class DPTHybrid(nn.Module):
    """DPT-Hybrid inverse depth. __call__(pixels [B, H, W, 3]) -> [B, H, W] (ReLU, >= 0), dtype `dtype`.

    pixels are the normalised image ((rgb - 0.5) / 0.5, see `dpt_preprocess`); H and W must be multiples of
    32 (the fusion path doubles H/32 back to H/16). Any such size works: the position embeddings are
    resized to H/16 x W/16 as MiDaS forward_flex does. `dtype` is the compute dtype (float32 for parity,
    bfloat16 for speed on GPU/TPU); params stay float32, softmax and norms reduce in float32.
    Variables: {"params": ...} only (no BatchNorm).
    """

    config: DPTHybridConfig = DPTHybridConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels):
        cfg, dt = self.config, self.dtype
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"DPTHybrid: expected pixels [B, H, W, 3], got {pixels.shape}")
        bsz, hgt, wid = pixels.shape[:3]
        if hgt % 32 or wid % 32:
            raise ValueError(f"DPTHybrid: height and width must be multiples of 32, got {(hgt, wid)}; "
                             "resize with dpt_preprocess")
        x = pixels.astype(dt)

        # BiT backbone
        x = _Conv(cfg.embedding_size, 7, 2, padding="tf_same", use_bias=False, weight_std_eps=cfg.weight_std_eps,
                  dtype=dt, name="stem_conv")(x)
        x = nn.relu(_group_norm(cfg, dt, "stem_norm")(x))
        pads = ((0, 0), _tf_same_pads(x.shape[1], 3, 2), _tf_same_pads(x.shape[2], 3, 2), (0, 0))
        x = jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)
        stages = []
        for s, (width, depth) in enumerate(zip(cfg.stage_widths, cfg.stage_depths)):
            for j in range(depth):
                stride = (1 if s == 0 else 2) if j == 0 else 1
                x = _Bottleneck(cfg, width, stride, downsample=j == 0, dtype=dt, name=f"stage{s}_layer{j}")(x)
            stages.append(x)

        # ViT on the stride-16 features
        gh, gw = hgt // cfg.patch_size, wid // cfg.patch_size
        tokens = _Conv(cfg.hidden_size, 1, dtype=dt, name="patch_projection")(stages[-1])
        tokens = tokens.reshape(bsz, gh * gw, cfg.hidden_size)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, cfg.hidden_size), jnp.float32)
        pos = self.param("position_embeddings", nn.initializers.normal(0.02),
                         (1, cfg.grid * cfg.grid + 1, cfg.hidden_size), jnp.float32)
        grid = pos[0, 1:].reshape(cfg.grid, cfg.grid, cfg.hidden_size)
        if (gh, gw) != (cfg.grid, cfg.grid):
            grid = resize(grid, (gh, gw), "bilinear", align_corners=False)
        pos = jnp.concatenate([pos[:, :1], grid.reshape(1, gh * gw, cfg.hidden_size)], axis=1)
        h = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (bsz, 1, cfg.hidden_size)), tokens], axis=1)
        h = h + pos.astype(dt)
        vit_out = {}
        wanted = set(cfg.backbone_out_indices[2:])
        for i in range(cfg.num_layers):
            h = _ViTBlock(cfg, dt, name=f"layer{i}")(h)
            if i in wanted:
                vit_out[i] = h

        # Reassemble
        feats = [stages[0], stages[1]]
        for n, idx in enumerate(cfg.backbone_out_indices[2:], start=2):
            t = vit_out[idx]
            readout = jnp.broadcast_to(t[:, :1], t[:, 1:].shape)
            t = nn.Dense(cfg.hidden_size, dtype=dt, precision=_precision(dt), name=f"readout_project{n}")(
                jnp.concatenate([t[:, 1:], readout], axis=-1))
            t = nn.gelu(t, approximate=False).reshape(bsz, gh, gw, cfg.hidden_size)
            t = _Conv(cfg.neck_hidden_sizes[n], 1, dtype=dt, name=f"reassemble{n}_projection")(t)
            factor = cfg.reassemble_factors[n]
            if factor != 1:
                t = _Conv(cfg.neck_hidden_sizes[n], 3, int(round(1 / factor)), padding=1, dtype=dt,
                          name=f"reassemble{n}_resize")(t)
            feats.append(t)
        feats = [_Conv(cfg.fusion_hidden_size, 3, padding=1, use_bias=False, dtype=dt, name=f"neck_conv{n}")(f)
                 for n, f in enumerate(feats)]

        # Fusion, deepest first
        x = _FusionBlock(cfg.fusion_hidden_size, False, dt, name="fusion0")(feats[3])
        for k in (1, 2, 3):
            x = _FusionBlock(cfg.fusion_hidden_size, True, dt, name=f"fusion{k}")(x, feats[3 - k])

        # Head
        x = _Conv(cfg.fusion_hidden_size // 2, 3, padding=1, dtype=dt, name="head_conv1")(x)
        x = _upsample2(x, cfg.head_align_corners)
        x = nn.relu(_Conv(cfg.head_channels, 3, padding=1, dtype=dt, name="head_conv2")(x))
        x = nn.relu(_Conv(1, 1, dtype=dt, name="head_conv3")(x))
        return x[..., 0]


# ---------------------------------------------------------------------------------------------------
# Weight conversion: transformers and MiDaS state dicts
# ---------------------------------------------------------------------------------------------------

# Entries of the conversion table: (flax path or None if checked but unused, PyTorch shape, kind,
# transformers key, MiDaS key). kind: "conv" [O, I, kh, kw] -> HWIO; "linear" [O, I] -> [I, O]; "vec" as is.


def _table(cfg):
    rows = []
    add = rows.append
    bit_tf = "dpt.embeddings.backbone.bit"
    bit_mi = "pretrained.model.patch_embed.backbone"

    def norm(path, c, tf, mi):
        add(((*path, "scale"), (c,), "vec", f"{tf}.weight", f"{mi}.weight"))
        add(((*path, "bias"), (c,), "vec", f"{tf}.bias", f"{mi}.bias"))

    def conv(path, o, i, k, tf, mi, bias=True):
        add(((*path, "kernel"), (o, i, k, k), "conv", f"{tf}.weight", f"{mi}.weight"))
        if bias:
            add(((*path, "bias"), (o,), "vec", f"{tf}.bias", f"{mi}.bias"))

    def linear(path, o, i, tf, mi):
        add(((*path, "kernel"), (o, i), "linear", f"{tf}.weight", f"{mi}.weight" if mi else None))
        add(((*path, "bias"), (o,), "vec", f"{tf}.bias", f"{mi}.bias" if mi else None))

    e = cfg.embedding_size
    conv(("stem_conv",), e, 3, 7, f"{bit_tf}.embedder.convolution", f"{bit_mi}.stem.conv", bias=False)
    norm(("stem_norm",), e, f"{bit_tf}.embedder.norm", f"{bit_mi}.stem.norm")
    cin = e
    for s, (width, depth) in enumerate(zip(cfg.stage_widths, cfg.stage_depths)):
        mid = make_div(width * 0.25)
        for j in range(depth):
            p = (f"stage{s}_layer{j}",)
            tf = f"{bit_tf}.encoder.stages.{s}.layers.{j}"
            mi = f"{bit_mi}.stages.{s}.blocks.{j}"
            if j == 0:
                conv((*p, "downsample_conv"), width, cin, 1, f"{tf}.downsample.conv", f"{mi}.downsample.conv",
                     bias=False)
                norm((*p, "downsample_norm"), width, f"{tf}.downsample.norm", f"{mi}.downsample.norm")
            conv((*p, "conv1"), mid, cin if j == 0 else width, 1, f"{tf}.conv1", f"{mi}.conv1", bias=False)
            norm((*p, "norm1"), mid, f"{tf}.norm1", f"{mi}.norm1")
            conv((*p, "conv2"), mid, mid, 3, f"{tf}.conv2", f"{mi}.conv2", bias=False)
            norm((*p, "norm2"), mid, f"{tf}.norm2", f"{mi}.norm2")
            conv((*p, "conv3"), width, mid, 1, f"{tf}.conv3", f"{mi}.conv3", bias=False)
            norm((*p, "norm3"), width, f"{tf}.norm3", f"{mi}.norm3")
        cin = width

    d, m = cfg.hidden_size, cfg.mlp_size
    conv(("patch_projection",), d, cfg.stage_widths[-1], 1, "dpt.embeddings.projection",
         "pretrained.model.patch_embed.proj")
    add((("cls_token",), (1, 1, d), "vec", "dpt.embeddings.cls_token", "pretrained.model.cls_token"))
    add((("position_embeddings",), (1, cfg.grid**2 + 1, d), "vec", "dpt.embeddings.position_embeddings",
         "pretrained.model.pos_embed"))
    for i in range(cfg.num_layers):
        p = (f"layer{i}",)
        tf = f"dpt.encoder.layer.{i}"
        mi = f"pretrained.model.blocks.{i}"
        norm((*p, "layernorm_before"), d, f"{tf}.layernorm_before", f"{mi}.norm1")
        for name in ("query", "key", "value"):  # MiDaS: one fused attn.qkv, split in _midas_to_transformers
            linear((*p, name), d, d, f"{tf}.attention.attention.{name}", None)
        linear((*p, "attention_output"), d, d, f"{tf}.attention.output.dense", f"{mi}.attn.proj")
        norm((*p, "layernorm_after"), d, f"{tf}.layernorm_after", f"{mi}.norm2")
        linear((*p, "intermediate"), m, d, f"{tf}.intermediate.dense", f"{mi}.mlp.fc1")
        linear((*p, "output"), d, m, f"{tf}.output.dense", f"{mi}.mlp.fc2")
    # Final ViT LayerNorm: computed by timm but never used by the depth output (checked, dropped).
    add((None, (d,), "vec", "dpt.layernorm.weight", "pretrained.model.norm.weight"))
    add((None, (d,), "vec", "dpt.layernorm.bias", "pretrained.model.norm.bias"))

    for n in (2, 3):
        rs = "neck.reassemble_stage"
        pp = f"pretrained.act_postprocess{n + 1}"
        linear((f"readout_project{n}",), d, 2 * d, f"{rs}.readout_projects.{n}.0", f"{pp}.0.project.0")
        conv((f"reassemble{n}_projection",), cfg.neck_hidden_sizes[n], d, 1, f"{rs}.layers.{n}.projection",
             f"{pp}.3")
        if cfg.reassemble_factors[n] != 1:
            c = cfg.neck_hidden_sizes[n]
            conv((f"reassemble{n}_resize",), c, c, 3, f"{rs}.layers.{n}.resize", f"{pp}.4")
    f = cfg.fusion_hidden_size
    for n in range(4):
        conv((f"neck_conv{n}",), f, cfg.neck_hidden_sizes[n], 3, f"neck.convs.{n}", f"scratch.layer{n + 1}_rn",
             bias=False)
    for k in range(4):
        tf = f"neck.fusion_stage.layers.{k}"
        mi = f"scratch.refinenet{4 - k}"
        for unit in (1, 2):
            for c in (1, 2):
                # fusion0's first residual unit exists in both layouts but is never called (no skip input).
                path = None if (k == 0 and unit == 1) else (f"fusion{k}", f"residual_layer{unit}", f"conv{c}")
                for leaf, shape in (("kernel", (f, f, 3, 3)), ("bias", (f,))):
                    suffix = "weight" if leaf == "kernel" else "bias"
                    kind = "conv" if leaf == "kernel" else "vec"
                    add(((*path, leaf) if path else None, shape, kind,
                         f"{tf}.residual_layer{unit}.convolution{c}.{suffix}",
                         f"{mi}.resConfUnit{unit}.conv{c}.{suffix}"))
        conv((f"fusion{k}", "projection"), f, f, 1, f"{tf}.projection", f"{mi}.out_conv")
    conv(("head_conv1",), f // 2, f, 3, "head.head.0", "scratch.output_conv.0")
    conv(("head_conv2",), cfg.head_channels, f // 2, 3, "head.head.2", "scratch.output_conv.2")
    conv(("head_conv3",), 1, cfg.head_channels, 1, "head.head.4", "scratch.output_conv.4")
    return rows


def transformers_key_shapes(config):
    """{transformers key: PyTorch shape} of DPTForDepthEstimation (hybrid) for `config`."""
    return {tf: shape for _, shape, _, tf, _ in _table(config)}


def midas_key_shapes(config=None):
    """{MiDaS key: PyTorch shape} of the official DPTDepthModel(backbone="vitb_rn50_384") state dict, except
    the timm classifier `pretrained.model.head.{weight,bias}` ([classes, D], [classes]; accepted, unused)."""
    config = config or DPTHybridConfig()
    out = {mi: shape for _, shape, _, _, mi in _table(config) if mi is not None}
    d = config.hidden_size
    for i in range(config.num_layers):
        out[f"pretrained.model.blocks.{i}.attn.qkv.weight"] = (3 * d, d)
        out[f"pretrained.model.blocks.{i}.attn.qkv.bias"] = (3 * d,)
    return out


def _params_from_table(config, sd):
    """Flax variables from a checked {transformers key: array} dict."""
    params = {}
    for path, _, kind, tf, _ in _table(config):
        if path is None:
            continue
        a = sd[tf]
        if kind == "conv":
            a = np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))
        elif kind == "linear":
            a = np.ascontiguousarray(a.T)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = a.astype(np.float32)
    return {"params": params}


def dpt_params_from_transformers_state_dict(state_dict, *, source, config):
    """Flax variables {"params"} of `DPTHybrid(config)` from a transformers DPTForDepthEstimation (hybrid)
    state dict {key: numpy array} (model.safetensors / pytorch_model.bin of a save_pretrained folder).

    `config`: from `dpt_config_from_transformers(config.json)`. Every key is consumed: the final
    `dpt.layernorm.*` and `neck.fusion_stage.layers.0.residual_layer1.*` are checked and dropped (the depth
    output never uses them). Missing, unexpected or mis-shaped keys raise ValueError naming `source`, the key
    and the expected shape.
    """
    sd = check_state_dict(state_dict, transformers_key_shapes(config), source=source)
    return _params_from_table(config, sd)


def dpt_params_from_midas_state_dict(state_dict, *, source, config=None):
    """Flax variables {"params"} of `DPTHybrid(config)` from the official MiDaS DPT-Hybrid checkpoint
    (`dpt_hybrid-midas-501f0c75.pt`: DPTDepthModel(backbone="vitb_rn50_384") state dict with timm key names
    `pretrained.model.*`, `pretrained.act_postprocess{3,4}.*`, `scratch.*`).

    config defaults to the official DPTHybridConfig() (timm LayerNorm eps 1e-6, MiDaS head upsampling with
    align_corners=False). A checkpoint saved with its optimizer ({"model": ..., "optimizer": ...}) is
    unwrapped as the official BaseModel.load does. The fused timm `attn.qkv` [3D, D] is split into query,
    key, value (rows 0:D, D:2D, 2D:3D). The timm classifier `pretrained.model.head.*` and the final
    `pretrained.model.norm.*` and `scratch.refinenet4.resConfUnit1.*` are checked and dropped (unused by the
    depth output, as in the transformers conversion script). Missing, unexpected or mis-shaped keys raise
    ValueError naming `source`, the key and the expected shape.
    """
    config = config or DPTHybridConfig()
    if isinstance(state_dict, Mapping) and "optimizer" in state_dict and isinstance(state_dict.get("model"),
                                                                                      Mapping):
        state_dict = state_dict["model"]
    expected = midas_key_shapes(config)
    d = config.hidden_size
    head_w = head_b = None
    if isinstance(state_dict, Mapping):
        head_w = state_dict.get("pretrained.model.head.weight")
        head_b = state_dict.get("pretrained.model.head.bias")
    if (head_w is None) != (head_b is None):
        raise ValueError(f"{source}: pretrained.model.head.weight and .bias must come together")
    if head_w is not None:
        hw, hb = np.asarray(head_w), np.asarray(head_b)
        if hw.ndim != 2 or hw.shape[1] != d or hb.shape != (hw.shape[0],):
            raise ValueError(f"{source}: pretrained.model.head.weight/bias have shapes {hw.shape}/{hb.shape}, "
                             f"expected (classes, {d})/(classes,)")
        expected["pretrained.model.head.weight"] = tuple(hw.shape)
        expected["pretrained.model.head.bias"] = tuple(hb.shape)
    sd = check_state_dict(state_dict, expected, source=source)
    tf_sd = {}
    for _, _, _, tf, mi in _table(config):
        if mi is not None:
            tf_sd[tf] = sd[mi]
    for i in range(config.num_layers):
        w = sd[f"pretrained.model.blocks.{i}.attn.qkv.weight"]
        b = sd[f"pretrained.model.blocks.{i}.attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            tf_sd[f"dpt.encoder.layer.{i}.attention.attention.{name}.weight"] = w[j * d:(j + 1) * d]
            tf_sd[f"dpt.encoder.layer.{i}.attention.attention.{name}.bias"] = b[j * d:(j + 1) * d]
    return _params_from_table(config, tf_sd)


def dpt_config_from_transformers(config, *, source):
    """DPTHybridConfig from a transformers DPT config.json dict (DPTForDepthEstimation, is_hybrid=True).

    Only the hybrid depth model of DPT-Hybrid / MiDaS is supported; any setting this module does not
    implement (non-hybrid ViT or other backbones, readout other than "project", BatchNorm in the fusion
    blocks, the extra head projection, pre-activation BiT, dilation, ...) raises ValueError naming `source`
    and the setting. head_align_corners is True (transformers' head upsampling).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: expected a config dict, got {type(config).__name__}")

    get = config.get

    def need(cond, what):
        if not cond:
            raise ValueError(f"{source}: unsupported DPT config: {what}")

    need(config.get("model_type", "dpt") == "dpt", f"model_type {config.get('model_type')!r} (expected 'dpt')")
    need(get("is_hybrid", False) is True, "is_hybrid must be true (DPT-Hybrid)")
    need(get("readout_type", "project") == "project", f"readout_type {get('readout_type')!r}")
    need(get("hidden_act", "gelu") == "gelu", f"hidden_act {get('hidden_act')!r}")
    need(get("qkv_bias", True) is True, "qkv_bias must be true")
    need(not get("use_batch_norm_in_fusion_residual", False), "use_batch_norm_in_fusion_residual")
    need(get("use_bias_in_fusion_residual", None) in (None, True), "use_bias_in_fusion_residual false")
    need(not get("add_projection", False), "add_projection")
    need(get("head_in_index", -1) == -1, f"head_in_index {get('head_in_index')}")
    need(list(get("neck_ignore_stages", [0, 1])) == [0, 1], f"neck_ignore_stages {get('neck_ignore_stages')}")
    need(get("num_channels", 3) == 3, f"num_channels {get('num_channels')}")
    # transformers' DPTConfig fills a missing hybrid backbone_config with this BiT setting
    bb = get("backbone_config") or {"global_padding": "same", "layer_type": "bottleneck", "depths": [3, 4, 9],
                                    "embedding_dynamic_padding": True}
    need(isinstance(bb, Mapping), "backbone_config must be a dict")
    need(bb.get("model_type", "bit") == "bit", f"backbone model_type {bb.get('model_type')!r} (expected 'bit')")
    need(bb.get("layer_type", "preactivation") == "bottleneck", f"BiT layer_type {bb.get('layer_type')!r}")
    need(str(bb.get("global_padding", "")).upper() == "SAME", f"BiT global_padding {bb.get('global_padding')!r}")
    need(bb.get("embedding_dynamic_padding", False) is True, "BiT embedding_dynamic_padding must be true")
    need(bb.get("hidden_act", "relu") == "relu", f"BiT hidden_act {bb.get('hidden_act')!r}")
    need(bb.get("num_channels", 3) == 3, "BiT num_channels must be 3")
    need(bb.get("output_stride", 32) > 8, f"BiT output_stride {bb.get('output_stride')} (dilation)")
    depths = tuple(bb.get("depths", (3, 4, 6, 3)))
    need(len(depths) == 3, f"BiT depths {list(depths)} (the hybrid uses 3 stages)")
    sizes = list(bb.get("hidden_sizes", (256, 512, 1024, 2048)))
    need(len(sizes) >= 3, f"BiT hidden_sizes {sizes}")
    width_factor = bb.get("width_factor", 1)
    widths = tuple(make_div(h * width_factor) for h in sizes[:3])
    featmap = get("backbone_featmap_shape")
    need(featmap is not None and len(featmap) == 4 and featmap[1] == widths[-1],
         f"backbone_featmap_shape {featmap} (channel entry must be the last BiT stage width {widths[-1]})")
    image_size = get("image_size", 384)
    if isinstance(image_size, (list, tuple)):
        need(len(image_size) == 2 and image_size[0] == image_size[1], f"non-square image_size {image_size}")
        image_size = image_size[0]
    patch = get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        need(len(patch) == 2 and patch[0] == patch[1], f"non-square patch_size {patch}")
        patch = patch[0]
    try:
        return DPTHybridConfig(
            embedding_size=int(bb.get("embedding_size", 64)), stage_widths=widths, stage_depths=depths,
            num_groups=int(bb.get("num_groups", 32)), hidden_size=int(get("hidden_size", 768)),
            num_layers=int(get("num_hidden_layers", 12)), num_heads=int(get("num_attention_heads", 12)),
            mlp_size=int(get("intermediate_size", 3072)), layer_norm_eps=float(get("layer_norm_eps", 1e-12)),
            image_size=int(image_size), patch_size=int(patch),
            backbone_out_indices=tuple(int(i) for i in get("backbone_out_indices", (2, 5, 8, 11))),
            neck_hidden_sizes=tuple(int(c) for c in get("neck_hidden_sizes", (96, 192, 384, 768))),
            reassemble_factors=tuple(float(f) for f in get("reassemble_factors", (4, 2, 1, 0.5))),
            fusion_hidden_size=int(get("fusion_hidden_size", 256)), head_channels=32, head_align_corners=True)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------------------
# Official pre/post-processing (run_monodepth.py, dpt/transforms.py, util/io.py, demo.py)
# ---------------------------------------------------------------------------------------------------


def dpt_input_size(height, width, net_size=384, multiple_of=32):
    """Network input (height, width) of the official Resize(384, 384, keep_aspect_ratio=True,
    ensure_multiple_of=32, resize_method="minimal").

    "minimal" scales as little as possible: of the two scales net_size / height and net_size / width the one
    closer to 1 is used for both sides, then each side is rounded to the nearest multiple of `multiple_of`
    (NumPy round, half to even). For images larger than net_size on both sides the shorter side becomes
    net_size (1280 x 720 -> 672 x 384); smaller images grow until the side closer to net_size reaches it.
    """
    if height < 1 or width < 1:
        raise ValueError(f"dpt_input_size: image size must be positive, got {(height, width)}")
    sh, sw = net_size / height, net_size / width
    scale = sw if abs(1 - sw) < abs(1 - sh) else sh
    out_h = int(np.round(scale * height / multiple_of) * multiple_of)
    out_w = int(np.round(scale * width / multiple_of) * multiple_of)
    if out_h < multiple_of or out_w < multiple_of:
        raise ValueError(f"dpt_input_size: image {height}x{width} is too elongated: the network input would be "
                         f"{out_h}x{out_w}")
    return out_h, out_w


def dpt_preprocess(image, net_size=384, multiple_of=32, mean=0.5, std=0.5):
    """Official DPT-Hybrid input: bicubic resize (cv2.INTER_CUBIC) to `dpt_input_size`, (x - 0.5) / 0.5.

    image [H, W, 3] float in [0, 1]. Returns float32 [h, w, 3] (normalised, channels last).
    """
    import cv2

    img = np.asarray(image, np.float32)
    h, w = dpt_input_size(img.shape[0], img.shape[1], net_size, multiple_of)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return ((img - mean) / std).astype(np.float32)


def quantize_disparity(disp, bits=16):
    """Official write_depth(bits=2) + read back / 65535: min-max normalise, scale to 2^bits - 1, truncate to
    integers (astype uint16), divide by 2^bits - 1. A constant map (range <= float64 eps) gives zeros.
    disp [H, W] float; returns float64 [H, W] in [0, 1]."""
    d = np.asarray(disp, np.float32)
    lo, hi = d.min(), d.max()
    max_val = 2**bits - 1
    if float(hi) - float(lo) > np.finfo(np.float64).eps:
        q = ((d - lo) / (hi - lo) * np.float32(max_val)).astype(np.uint16 if bits <= 16 else np.uint32)
    else:
        q = np.zeros(d.shape, np.uint16)
    return q.astype(np.float64) / max_val


def disparity_to_depth(disp, median_ksize=5, eps=1e-6):
    """Official demo.py: disparity [H, W] in [0, 1] -> median filter (scipy.ndimage.median_filter, size 5,
    'reflect' border) -> depth = 1 / max(disp, eps). Returns float32 depth [H, W] > 0."""
    import scipy.ndimage

    d = np.asarray(disp, np.float64)
    if median_ksize > 1:
        d = scipy.ndimage.median_filter(d, size=median_ksize)
    return (1.0 / np.maximum(d, eps)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# DepthEstimator adapter
# ---------------------------------------------------------------------------------------------------


def _predict(model, variables, pixels, out_hw):
    """Inverse depth at the network size, bicubically upsampled to out_hw (torch bicubic, align_corners
    False, as run_monodepth.py)."""
    disp = model.apply(variables, pixels)  # [1, h, w]
    return resize(disp[..., None].astype(jnp.float32), out_hw, "bicubic", align_corners=False)[0, ..., 0]


class DPTDepthEstimator:
    """DPT-Hybrid behind `cine_jax.depth.DepthEstimator`: RGB [H, W, 3] in [0, 1] -> z-depth [H, W] > 0.

    DPTDepthEstimator(variables, config) with variables from `dpt_params_from_midas_state_dict` or
    `dpt_params_from_transformers_state_dict`. Steps (official run_monodepth.py + demo.py): `dpt_preprocess`
    (keep aspect, multiple of 32, shorter side 384, cubic, mean/std 0.5) -> DPTHybrid (jitted per input size)
    -> bicubic upsampling to H x W -> `quantize_disparity` (min-max, 16 bits) -> `disparity_to_depth` (5x5
    median, depth = 1 / max(disp, 1e-6)): the nearest pixel gets depth 1. `dtype` bfloat16 runs the network
    in bfloat16 (GPU/TPU speed option).
    """

    def __init__(self, variables, config=None, *, dtype=jnp.float32, net_size=384, multiple_of=32, bits=16,
                 median_ksize=5, eps=1e-6):
        self.config = config or DPTHybridConfig()
        if median_ksize < 1 or median_ksize % 2 == 0:
            raise ValueError(f"DPTDepthEstimator: median_ksize must be odd and >= 1, got {median_ksize}")
        if multiple_of % 32:
            raise ValueError(f"DPTDepthEstimator: multiple_of must be a multiple of 32, got {multiple_of}")
        self.model = DPTHybrid(self.config, dtype=dtype)
        self.variables = variables
        self.net_size, self.multiple_of, self.bits = net_size, multiple_of, bits
        self.median_ksize, self.eps = median_ksize, eps
        self._predict = jax.jit(functools.partial(_predict, self.model), static_argnums=(2,))

    def disparity(self, image):
        """Raw network inverse depth [H, W] float32 at the image size (before normalisation)."""
        from cine_jax.depth import validate_image

        img = validate_image(image)
        pixels = dpt_preprocess(img, self.net_size, self.multiple_of)[None]
        disp = np.asarray(self._predict(self.variables, pixels, img.shape[:2]), np.float32)
        if not np.all(np.isfinite(disp)):
            raise ValueError("DPTDepthEstimator: the network produced NaN or inf (check the weights)")
        return disp

    def __call__(self, image):
        from cine_jax.depth import validate_depth

        disp = quantize_disparity(self.disparity(image), self.bits)
        return validate_depth(disparity_to_depth(disp, self.median_ksize, self.eps), "DPT depth")
