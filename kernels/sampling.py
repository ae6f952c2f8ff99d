"""Sampling images at arbitrary pixel coordinates, and resizing with PyTorch-compatible semantics.

Coordinates follow the camera convention: uv[..., 0] = u = column, uv[..., 1] = v = row, and pixel
(row i, column j) has its centre at (u, v) = (j, i). In torch terms this is `grid_sample` with
`align_corners=True` after un-normalising the grid; `pixel_to_normalized` / `normalized_to_pixel`
convert either way (for both `align_corners` settings) so torch-style code can be ported.

`resize` reproduces `torch.nn.functional.interpolate(x, size=...)` (modes bilinear, bicubic, nearest,
nearest-exact, area; bilinear/bicubic also with antialias=True). Each axis is resized by a small
static table of taps (source indices [out, K] and weights [out, K], built with NumPy at trace time in
float32 exactly as ATen computes them) applied as K gathers and a float32 weighted sum, O(out * K); very
wide tables (large area/antialias reductions) become one dense matmul at HIGHEST precision (the default
TPU matmul precision is bfloat16).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

BORDER_MODES = ("zeros", "clamp")
RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")

# torch's upsample_bicubic2d uses the cubic convolution kernel with A = -0.75 (ATen UpSample.h,
# get_cubic_upsample_coefficients); its antialiased variant follows PIL and uses A = -0.5.
_CUBIC_A = -0.75
_CUBIC_A_ANTIALIAS = -0.5


def _check_border(border):
    if border not in BORDER_MODES:
        raise ValueError(f"kernels/sampling.py: border must be one of {BORDER_MODES}, got {border!r}")


def _prepare(image, uv, name):
    """Validate and normalise (image, uv); returns (image [H, W, C], uv float, squeeze_channel)."""
    image = jnp.asarray(image)
    uv = jnp.asarray(uv)
    if image.ndim not in (2, 3):
        raise ValueError(f"kernels/sampling.py {name}: image must be [H, W, C] or [H, W], got {image.shape}")
    if uv.ndim < 1 or uv.shape[-1] != 2:
        raise ValueError(f"kernels/sampling.py {name}: uv must be [..., 2] (u, v), got {uv.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"kernels/sampling.py {name}: image is empty, shape {image.shape}")
    if not jnp.issubdtype(uv.dtype, jnp.floating):
        uv = uv.astype(jnp.float32)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    return image, uv, squeeze


def _gather(image, vi, ui):
    """image [H, W, C] at integer (vi, ui) already inside the image; one flat gather per tap."""
    h, w, c = image.shape
    return jnp.take(image.reshape(h * w, c), vi * w + ui, axis=0, mode="clip")


def sample_bilinear(image, uv, border="zeros"):
    """Bilinearly sample image [H, W, C] at pixel coordinates uv [..., 2] = (u, v); returns [..., C].

    border="zeros": taps outside the image contribute 0 (grid_sample padding_mode="zeros").
    border="clamp": coordinates are clamped to [0, W-1] x [0, H-1] (padding_mode="border"; this is also
    cv2.remap with BORDER_REPLICATE).
    A NaN coordinate gives 0 in either mode (with zero, finite gradients); +-inf is outside (zeros) or
    clamped (clamp). The gradient w.r.t. uv is the piecewise-linear one (floor has zero derivative).
    A 2-D image [H, W] is accepted and gives [...].
    """
    _check_border(border)
    image, uv, squeeze = _prepare(image, uv, "sample_bilinear")
    h, w = image.shape[:2]
    u, v = uv[..., 0], uv[..., 1]
    nan = jnp.isnan(u) | jnp.isnan(v)
    if border == "clamp":
        lo_u, hi_u, lo_v, hi_v = 0.0, w - 1.0, 0.0, h - 1.0
    else:
        # Beyond one pixel outside every tap is outside; clipping there changes nothing but keeps the
        # float -> int32 conversion in range for huge or infinite coordinates.
        lo_u, hi_u, lo_v, hi_v = -2.0, w + 1.0, -2.0, h + 1.0
    u = jnp.clip(jnp.where(nan, lo_u, u), lo_u, hi_u)
    v = jnp.clip(jnp.where(nan, lo_v, v), lo_v, hi_v)
    u0 = jnp.floor(u)
    v0 = jnp.floor(v)
    fu = (u - u0)[..., None]
    fv = (v - v0)[..., None]
    u0 = u0.astype(jnp.int32)
    v0 = v0.astype(jnp.int32)

    def tap(vi, ui):
        inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & ~nan
        val = _gather(image, jnp.clip(vi, 0, h - 1), jnp.clip(ui, 0, w - 1))
        return jnp.where(inside[..., None], val, jnp.zeros((), image.dtype))

    out = (
        tap(v0, u0) * (1 - fu) * (1 - fv)
        + tap(v0, u0 + 1) * fu * (1 - fv)
        + tap(v0 + 1, u0) * (1 - fu) * fv
        + tap(v0 + 1, u0 + 1) * fu * fv
    )
    return out[..., 0] if squeeze else out


def sample_nearest(image, uv, border="zeros"):
    """Nearest-neighbour sample of image [H, W, C] at pixel coordinates uv [..., 2]; returns [..., C].

    Coordinates are rounded half to even (u = 0.5 -> 0, 1.5 -> 2), which is what torch grid_sample
    mode="nearest" does (std::nearbyint under the default rounding mode). border="zeros": a rounded
    index outside the image gives 0; border="clamp": it is clamped to the image. NaN gives 0. Keeps the
    image dtype (works for integer label maps). A 2-D image [H, W] gives [...].
    """
    _check_border(border)
    image, uv, squeeze = _prepare(image, uv, "sample_nearest")
    h, w = image.shape[:2]
    u, v = uv[..., 0], uv[..., 1]
    nan = jnp.isnan(u) | jnp.isnan(v)
    # Clip (before the int cast) to a range that keeps "outside" outside, so inf and huge values are safe.
    ui = jnp.round(jnp.clip(jnp.where(nan, -2.0, u), -2.0, w + 1.0)).astype(jnp.int32)
    vi = jnp.round(jnp.clip(jnp.where(nan, -2.0, v), -2.0, h + 1.0)).astype(jnp.int32)
    inside = ~nan
    if border == "zeros":
        inside = inside & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    val = _gather(image, jnp.clip(vi, 0, h - 1), jnp.clip(ui, 0, w - 1))
    out = jnp.where(inside[..., None], val, jnp.zeros((), image.dtype))
    return out[..., 0] if squeeze else out


def sample_bilinear_batched(images, uv, border="zeros"):
    """sample_bilinear over a batch: images [B, H, W, C], uv [B, ..., 2] -> [B, ..., C]."""
    return jax.vmap(functools.partial(sample_bilinear, border=border))(images, uv)


def sample_nearest_batched(images, uv, border="zeros"):
    """sample_nearest over a batch: images [B, H, W, C], uv [B, ..., 2] -> [B, ..., C]."""
    return jax.vmap(functools.partial(sample_nearest, border=border))(images, uv)


# --- normalised (grid_sample / affine_grid) coordinates <-> pixel coordinates -------------------------


def _axis_to_normalized(p, size, align_corners):
    if align_corners:
        # size 1: every normalised value maps to pixel 0; pick 0 as the preimage.
        return p * 0.0 if size == 1 else p * (2.0 / (size - 1)) - 1.0
    return (2.0 * p + 1.0) / size - 1.0


def _axis_to_pixel(x, size, align_corners):
    if align_corners:
        return (x + 1.0) * 0.5 * (size - 1)
    return ((x + 1.0) * size - 1.0) * 0.5


def pixel_to_normalized(uv, h, w, align_corners=True):
    """Pixel coordinates uv [..., 2] = (u, v) -> torch grid_sample coordinates [..., 2] = (x, y) in [-1, 1].

    align_corners=True: -1 and +1 are the centres of the first and last pixels (u = 0 and u = W - 1).
    align_corners=False: -1 and +1 are the outer edges of the image (u = -0.5 and u = W - 0.5).
    h, w are the (static) image height and width.
    """
    uv = jnp.asarray(uv)
    if uv.shape[-1] != 2:
        raise ValueError(f"kernels/sampling.py pixel_to_normalized: uv must be [..., 2], got {uv.shape}")
    if not jnp.issubdtype(uv.dtype, jnp.floating):
        uv = uv.astype(jnp.float32)
    x = _axis_to_normalized(uv[..., 0], w, align_corners)
    y = _axis_to_normalized(uv[..., 1], h, align_corners)
    return jnp.stack([x, y], axis=-1)


def normalized_to_pixel(xy, h, w, align_corners=True):
    """Inverse of pixel_to_normalized: grid_sample coordinates [..., 2] = (x, y) -> pixels (u, v).

    This is exactly how grid_sample un-normalises its grid, so
    grid_sample(img, grid, align_corners=a, padding_mode="zeros"|"border", mode="bilinear") equals
    sample_bilinear(img, normalized_to_pixel(grid, h, w, a), border="zeros"|"clamp").
    """
    xy = jnp.asarray(xy)
    if xy.shape[-1] != 2:
        raise ValueError(f"kernels/sampling.py normalized_to_pixel: xy must be [..., 2], got {xy.shape}")
    if not jnp.issubdtype(xy.dtype, jnp.floating):
        xy = xy.astype(jnp.float32)
    u = _axis_to_pixel(xy[..., 0], w, align_corners)
    v = _axis_to_pixel(xy[..., 1], h, align_corners)
    return jnp.stack([u, v], axis=-1)


# --- resize: per-axis tap tables (NumPy, static) ------------------------------------------------------
# Each builder returns (idx [out, K] int32, wts [out, K] float32, or None when every weight is 1).
# Arithmetic is float32 to mirror ATen's opmath for float32 tensors, so index choices agree with torch.

_F32 = np.float32
_RESIZE = "kernels/sampling.py resize"


def _source_index(in_size, out_size, align_corners, cubic):
    """ATen area_pixel_compute_source_index for every output index; float32 [out]."""
    dst = np.arange(out_size, dtype=_F32)
    if align_corners:
        scale = _F32(in_size - 1) / _F32(out_size - 1) if out_size > 1 else _F32(0.0)
        return scale * dst
    scale = _F32(in_size) / _F32(out_size)
    src = scale * (dst + _F32(0.5)) - _F32(0.5)
    # Linear modes clamp negative source positions to 0; cubic relies on index clamping instead.
    return src if cubic else np.maximum(src, _F32(0.0))


def _taps_linear(in_size, out_size, align_corners):
    if in_size == out_size:
        return np.arange(out_size, dtype=np.int32)[:, None], None
    src = _source_index(in_size, out_size, align_corners, cubic=False)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(_F32), _F32(0.0), _F32(1.0)).astype(_F32)
    return np.stack([i0, i1], 1).astype(np.int32), np.stack([_F32(1.0) - lam, lam], 1)


def _cubic_weights(t, a):
    """The four cubic-convolution weights for fractional offsets t [out] (ATen order); float32 [out, 4]."""
    a = _F32(a)

    def near(x):  # |x| <= 1
        return ((a + _F32(2)) * x - (a + _F32(3))) * x * x + _F32(1)

    def far(x):  # 1 < |x| < 2
        return ((a * x - _F32(5) * a) * x + _F32(8) * a) * x - _F32(4) * a

    return np.stack([far(t + _F32(1)), near(t), near(_F32(1) - t), far(_F32(2) - t)], 1).astype(_F32)


def _taps_cubic(in_size, out_size, align_corners):
    src = _source_index(in_size, out_size, align_corners, cubic=True)
    i = np.floor(src)
    t = (src - i).astype(_F32)
    idx = np.clip(i.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return idx.astype(np.int32), _cubic_weights(t, _CUBIC_A)


def _taps_nearest(in_size, out_size, exact):
    dst = np.arange(out_size)
    if in_size == out_size:
        return dst.astype(np.int32)[:, None], None
    if not exact and out_size == 2 * in_size:  # ATen's nearest_idx fast path
        return (dst >> 1).astype(np.int32)[:, None], None
    scale = _F32(in_size) / _F32(out_size)
    pos = dst.astype(_F32) + _F32(0.5) if exact else dst.astype(_F32)
    src = np.floor(pos * scale).astype(np.int64)
    return np.minimum(src, in_size - 1).astype(np.int32)[:, None], None


def _taps_area(in_size, out_size):
    """adaptive_avg_pool semantics: output o averages input [floor(o*in/out), ceil((o+1)*in/out))."""
    o = np.arange(out_size, dtype=np.int64)
    start = (o * in_size) // out_size
    end = ((o + 1) * in_size + out_size - 1) // out_size
    k = int((end - start).max())
    idx = start[:, None] + np.arange(k)[None, :]
    valid = idx < end[:, None]
    wts = np.where(valid, 1.0 / (end - start)[:, None], 0.0).astype(_F32)
    return np.minimum(idx, in_size - 1).astype(np.int32), wts


def _taps_antialias(in_size, out_size, cubic, align_corners):
    """PIL-style separable filter that torch uses for antialias=True (bilinear: triangle; bicubic: A=-0.5).

    When downsampling the filter is stretched by the scale so every input pixel contributes; weights are
    normalised to sum to 1 per output, which also handles the image edges. With align_corners=True torch
    only changes the scale to (in - 1) / (out - 1) (the filter centre stays at scale * (dst + 0.5)).
    """
    if in_size == out_size:
        return np.arange(out_size, dtype=np.int32)[:, None], None
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
        scale = in_size / out_size
    half = 2.0 if cubic else 1.0
    support = half * scale if scale >= 1.0 else half
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    # C++ int64 casts truncate toward zero; after max(.., 0) that equals floor here.
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    k = int((xmax - xmin).max())
    j = np.arange(k)[None, :]
    x = np.abs((j + xmin[:, None] - center[:, None] + 0.5) * invscale)
    if cubic:
        a = _CUBIC_A_ANTIALIAS
        f = np.where(
            x < 1.0,
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
            np.where(x < 2.0, ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a, 0.0),
        )
    else:
        f = np.maximum(1.0 - x, 0.0)
    f = np.where(j < (xmax - xmin)[:, None], f, 0.0)
    total = f.sum(1, keepdims=True)
    wts = (f / np.where(total == 0.0, 1.0, total)).astype(_F32)
    idx = np.minimum(xmin[:, None] + j, in_size - 1)
    return idx.astype(np.int32), wts


def resize_taps(in_size, out_size, method="bilinear", align_corners=False, antialias=False):
    """The 1-D tap table resize uses along one axis: (idx [out, K] int32, wts [out, K] float32 or None).

    out[o] = sum_k wts[o, k] * in[idx[o, k]] (wts None means K = 1 and weight 1). Exposed for tests and for
    callers that want the same semantics on other axes (e.g. time).
    """
    if method == "bilinear":
        if antialias:
            return _taps_antialias(in_size, out_size, False, align_corners)
        return _taps_linear(in_size, out_size, align_corners)
    if method == "bicubic":
        if antialias:
            return _taps_antialias(in_size, out_size, True, align_corners)
        return _taps_cubic(in_size, out_size, align_corners)
    if method in ("nearest", "nearest-exact"):
        return _taps_nearest(in_size, out_size, exact=method == "nearest-exact")
    if method == "area":
        return _taps_area(in_size, out_size)
    raise ValueError(f"{_RESIZE}: method must be one of {RESIZE_METHODS}, got {method!r}")


# Up to this many taps per output an axis is resized by K static gathers and a weighted sum (measured
# ~18x faster on CPU than one flattened gather); wider tables (large area / antialias reductions) use a
# dense [out, in] matrix product instead of unrolling hundreds of gathers.
_MAX_GATHER_TAPS = 16


def _apply_taps(x, axis, idx, wts):
    """Resize x along `axis` with a tap table; float32 (or wider) accumulation in x's dtype."""
    if wts is None:
        return jnp.take(x, jnp.asarray(idx[:, 0]), axis=axis, mode="clip")
    out, k = idx.shape
    bcast = (out,) + (1,) * (x.ndim - axis - 1)
    if k <= _MAX_GATHER_TAPS:
        acc = None
        for j in range(k):
            term = jnp.take(x, jnp.asarray(idx[:, j]), axis=axis, mode="clip")
            term = term * jnp.asarray(wts[:, j], x.dtype).reshape(bcast)
            acc = term if acc is None else acc + term
        return acc
    dense = np.zeros((out, x.shape[axis]), np.float64)
    np.add.at(dense, (np.repeat(np.arange(out), k), idx.reshape(-1)), wts.reshape(-1))
    # HIGHEST: the default TPU matmul precision would round the image to bfloat16.
    y = jnp.tensordot(jnp.asarray(dense, x.dtype), x, axes=([1], [axis]), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(y, 0, axis)


def resize(image, size, method="bilinear", align_corners=False, antialias=False):
    """Resize image [H, W, C] or [B, H, W, C] to size = (out_h, out_w) (static ints).

    Matches torch.nn.functional.interpolate(x, size=size, mode=method, align_corners=..., antialias=...)
    on the NCHW transpose, within float32 rounding:
      bilinear  src = (dst + 0.5) * in / out - 0.5 clamped at 0 (align_corners=False), or
                src = dst * (in - 1) / (out - 1) (align_corners=True); no antialias unless asked, so a
                large downscale aliases exactly as torch does.
      bicubic   same source index (not clamped), cubic convolution A = -0.75, taps clamped to the image;
                overshoot is not clipped (torch does not clip).
      nearest   src = floor(dst * in / out) (torch "nearest", not pixel-centre aligned).
      nearest-exact  src = floor((dst + 0.5) * in / out).
      area      adaptive average pooling: the mean over [floor(o*in/out), ceil((o+1)*in/out)) per axis.
    antialias=True (bilinear/bicubic only) uses torch's PIL-style filter (torch's align_corners=True
    variant of it included).
    Weighted methods need a floating image and compute in at least float32 (the result is cast back to
    the image dtype); nearest modes are pure gathers and keep any dtype.
    """
    image = jnp.asarray(image)
    if image.ndim not in (3, 4):
        raise ValueError(f"{_RESIZE}: image must be [H, W, C] or [B, H, W, C], got {image.shape}")
    try:
        out_h, out_w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{_RESIZE}: size must be (out_h, out_w) ints, got {size!r}") from None
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{_RESIZE}: size must be positive, got {size!r}")
    if method not in RESIZE_METHODS:
        raise ValueError(f"{_RESIZE}: method must be one of {RESIZE_METHODS}, got {method!r}")
    # Same restrictions as torch.nn.functional.interpolate.
    interpolating = method in ("bilinear", "bicubic")
    if align_corners and not interpolating:
        raise ValueError(f"{_RESIZE}: align_corners only applies to bilinear/bicubic, not {method!r}")
    if antialias and not interpolating:
        raise ValueError(f"{_RESIZE}: antialias only applies to bilinear/bicubic, not {method!r}")
    h_axis, w_axis = image.ndim - 3, image.ndim - 2
    in_h, in_w = image.shape[h_axis], image.shape[w_axis]
    if in_h < 1 or in_w < 1:
        raise ValueError(f"{_RESIZE}: image is empty, shape {image.shape}")

    dtype = image.dtype
    x = image
    if method not in ("nearest", "nearest-exact"):
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{_RESIZE}: {method!r} needs a floating image, got {dtype}")
        x = x.astype(jnp.promote_types(dtype, jnp.float32))
    # Shrinking axis first keeps the intermediate small.
    order = [(h_axis, in_h, out_h), (w_axis, in_w, out_w)]
    if out_w * in_h < out_h * in_w:
        order.reverse()
    for axis, n_in, n_out in order:
        idx, wts = resize_taps(n_in, n_out, method, align_corners, antialias)
        if wts is None and n_in == n_out:
            continue
        x = _apply_taps(x, axis, idx, wts)
    return x.astype(dtype)
