"""Soft point splatting: project camera-space points into a target view and average their features.

This is the point renderer of 3D cinemagraphy (the official code uses PyTorch3D's `PointsRasterizer` +
`AlphaCompositor` with 8 points per pixel, see reference/cinemagraphy.md section 5). A fixed number of
points per pixel needs a per-pixel sort, which is slow on accelerators and has no static-shape scatter
form; instead every point writes into a static window of pixels and a soft z-test keeps the nearest
surface, so the whole render is one scatter-min and one scatter-add (each a loop over blocks of points,
`point_block`, see "Speed" below).

Algorithm of `splat_points` (H x W target image, N points, C channels):

1. Project: uv, z = camera.project(points, K). A point is dropped (and counted) when it is invalid
   (`valid` False, or non-finite), behind the near plane (z <= near), or off-screen (no pixel centre of
   the image within its radius).
2. Tap window (static): Kt = ceil(max_radius + 0.5) - 1; the (2 Kt + 1)^2 taps (ky, kx) in [-Kt, Kt]^2
   sit around the nearest pixel (round(v), round(u)). Since |round(u) - u| <= 0.5, this window holds
   every pixel centre within max_radius of the point (corner taps that no point can reach are dropped,
   see `tap_offsets`). For a tap at pixel (i, j):
   d^2 = (j - u)^2 + (i - v)^2, coverage w_cov = max(0, 1 - d^2 / r^2) (PyTorch3D's point kernel, the
   one the official renderer composites with). A tap is active iff the point is kept, the pixel is
   inside the image and d < r.
3. Soft z-test: zmin_core[p] = min z over active taps of pixel p with d <= max(core_fraction * r,
   sqrt(1/2) a) (a = the point's `kernel_width`, its surface's point spacing in pixels: a pixel inside a
   magnified surface has one of its points within sqrt(1/2) a),
   zmin_all[p] = min z over all active taps of p, zmin = zmin_core where defined, else zmin_all (one
   single-channel integer scatter-min of both: z's bit pattern with a flag bit for taps outside the
   core). Using the core keeps a foreground edge from dilating by the full radius over a background
   that already covers the pixel. Each active tap of a point with depth slack e (>= 0, per
   point, default 0) gets
   s = min(1, exp(-(z - zmin[p] - e) / (depth_tau * zmin[p]))): the nearest surface has s = 1, a surface
   twice as far away gets exp(-1 / depth_tau) = exp(-50). The slack makes the test surface-aware: on a
   slanted surface the nearest point of a pixel may be a neighbour of the same surface, nearer by up to
   the surface's depth change across the footprint; a caller that knows each point's depth slope passes
   that change as `depth_slack` (cine_jax.render: slope x (1 + core_fraction) x radius), so a surface
   never occludes itself, while a surface behind by more than the slack is still suppressed.
4. Feature weight omega = s * k(d) on active taps, with the feature kernel k:
   "gaussian": k = exp(-d^2 / (2 sigma^2)), a sharp kernel so a dense surface reproduces itself;
   "bilinear": k = max(0, 1 - |dx| / a) max(0, 1 - |dy| / a) + 1e-6 exp(-d^2 / (2 sigma^2)), dx, dy the
   tap's offsets from the point and a = `kernel_width` (per point, >= 1: the spacing of the surface's
   points in this view). On a dense regular grid of points moved by a sub-pixel shift this is exactly
   bilinear interpolation (the weights of the four nearest points sum to 1), and with no shift it
   reproduces the points; the tiny Gaussian term only decides pixels that no tent reaches (the corners
   of the footprint), which take the nearest point's features.
   The radius only sets the support, so holes up to `radius` pixels are still filled once the sums are
   normalised. One float32 scatter-add of the rows
   [omega * f (C), omega * z, omega, log(1 - min(w_cov * s, 1 - 1e-6))] onto the flat pixel index gives
   features = sum(omega f) / sum(omega), depth = sum(omega z) / sum(omega) (0 where the sum is empty) and
   alpha = 1 - exp(sum log(1 - w_cov s)), the front-to-back "over" of the front surface's coverage
   (order independent, so no sort is needed).

Numerics: features/points of any float dtype are accumulated in float32 (float64 stays float64, which
the gradient tests use). A pixel counts as empty when sum(omega) <= 1e-30 (exactly 0 in practice; the
threshold keeps 1/sum(omega)^2 in the backward pass finite). With sigma = 0.25 the Gaussian underflows
float32 beyond d ~ 3.7 px, so with radii above that, pixels reached only by far taps stay empty; raise
sigma together with such radii.

Speed (the layout does not change the algorithm): the two scatters run as two passes over blocks of
`point_block` points (lax.scan), so each block's per-tap temporaries ([T, B] arrays and the [T B, 8]
rows) stay in cache instead of streaming ~0.2 GB per side of a 768 x 768 frame through memory; per-tap
values are tap-major [T, B] (XLA's CPU kernels vectorise the long axis; exp / log1p on [B, T] with T = 9
ran 3-4x slower); the scatter-add rows are padded with zero channels to a multiple of 8 float32 (one
vector per row on the CPU: 6M rows took 27 ms with 8 channels, 52 ms with 7). Measured step by step in
benchmarks/README.md (issue 7). The derivative of the z-test
comes from a float scatter-min (custom_jvp), so gradients are exact through the blocks too.

Slopes: without a slack the z-test compares a pixel's own point with nearer neighbours inside the core,
so on a surface whose depth changes by a relative g per pixel the own point gets s = exp(-g / depth_tau)
and coverage drops even in the point cloud's own view: min alpha ~0.999 at g = 0.1%, 0.986 at 0.5%,
0.955 at 1%, 0.87 at 2%, 0.80 at 3% (radius 1.5, defaults), and in other views neighbouring points of
the surface suppress each other (features are averaged over fewer points). `depth_slack` removes this.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kernels.camera import project
from kernels.mathx import safe_div

# Coverage is clipped below 1 before the log so a fully covering tap gives log(1e-6) instead of -inf.
_MAX_COVERAGE = 1.0 - 1e-6
# sum(omega) at or below this is an empty pixel (see module docstring).
_EMPTY_WEIGHT = 1e-30

_OUTPUT_KEYS = ("features", "depth", "alpha", "weight", "num_behind", "num_offscreen", "num_invalid")


def _is_number(x):
    """A static python/NumPy scalar (not bool, not a traced or device array)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def tap_half_width(max_radius):
    """Kt = ceil(max_radius + 0.5) - 1: the tap window is (2 Kt + 1)^2 pixels around the nearest pixel."""
    return int(math.ceil(float(max_radius) + 0.5)) - 1


def tap_offsets(max_radius):
    """Static tap offsets (dy [T], dx [T]) int32 of the window, row-major.

    Corners of the (2 Kt + 1)^2 square that no point can reach are dropped: a tap (ky, kx) is at least
    max(0, |ky| - 0.5)^2 + max(0, |kx| - 0.5)^2 away from any point whose nearest pixel is the centre
    (e.g. max_radius 3.0 keeps 45 of 49 taps; 1.5 keeps all 9).
    """
    kt = tap_half_width(max_radius)
    offs = np.arange(-kt, kt + 1)
    dy, dx = np.repeat(offs, offs.size), np.tile(offs, offs.size)
    reach = np.maximum(0.0, np.abs(dy) - 0.5) ** 2 + np.maximum(0.0, np.abs(dx) - 0.5) ** 2
    keep = reach < float(max_radius) ** 2
    return dy[keep].astype(np.int32), dx[keep].astype(np.int32)


def _resolve_max_radius(radius, max_radius, where):
    if max_radius is None:
        if _is_number(radius):
            max_radius = float(radius)
        else:
            raise ValueError(
                f"{where}: `radius` is an array, so the static `max_radius` (the largest footprint in "
                "pixels, which fixes the tap window) must be given"
            )
    if not _is_number(max_radius):
        raise ValueError(f"{where}: `max_radius` must be a python number (static), got {type(max_radius)}")
    max_radius = float(max_radius)
    if not (max_radius > 0.0 and math.isfinite(max_radius)):
        raise ValueError(f"{where}: `max_radius` must be positive and finite, got {max_radius}")
    return max_radius


def _check_image_size(image_size, where):
    try:
        h, w = image_size
        h, w = int(h), int(w)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: `image_size` must be a static pair (H, W) of ints, got {image_size!r}") from e
    if h <= 0 or w <= 0:
        raise ValueError(f"{where}: `image_size` must be positive, got {(h, w)}")
    return h, w


KERNELS = ("gaussian", "bilinear")


def _check_params(near, depth_tau, core_fraction, sigma, where, kernel="gaussian"):
    if kernel not in KERNELS:
        raise ValueError(f"{where}: `kernel` must be one of {KERNELS}, got {kernel!r}")
    if not depth_tau > 0:
        raise ValueError(f"{where}: `depth_tau` must be > 0, got {depth_tau}")
    if not sigma > 0:
        raise ValueError(f"{where}: `sigma` must be > 0, got {sigma}")
    if not 0.0 <= core_fraction <= 1.0:
        raise ValueError(f"{where}: `core_fraction` must be in [0, 1], got {core_fraction}")
    if not near >= 0:
        raise ValueError(f"{where}: `near` must be >= 0, got {near}")


class _Taps(NamedTuple):
    """Static description of the tap window of one splat (hashable: a custom_jvp static argument)."""

    dy: tuple  # [T] row offsets of the taps
    dx: tuple  # [T] column offsets
    height: int
    width: int


def _tap_geometry(taps, ri, rj, base, fu, fv, r2, core2):
    """Per-tap geometry of a block of B points, tap-major [T, B] (the long axis last, which XLA's CPU
    kernels vectorise: exp / log1p on [B, T] arrays with T = 9 ran 3-4x slower).

    Returns (ox, oy, d2, active, core, pix): the tap's offsets from the point and squared distance, the
    active / core masks (a point that is not kept has r2 = 0, so none of its taps is active), and the flat
    pixel index (uint32, clipped into range; inactive taps carry neutral updates there). The index is the
    point's nearest-pixel index plus the tap's static offset; round(u) - u is exact (|round(u) - u| <=
    0.5), so the offset (round(u) - u) + dx is the same float as (round(u) + dx) - u.
    """
    dy, dx = np.asarray(taps.dy, np.int32)[:, None], np.asarray(taps.dx, np.int32)[:, None]
    ti, tj = ri[None, :] + dy, rj[None, :] + dx
    inside = (ti >= 0) & (ti < taps.height) & (tj >= 0) & (tj < taps.width)
    ox = fu[None, :] + dx.astype(fu.dtype)
    oy = fv[None, :] + dy.astype(fv.dtype)
    d2 = ox * ox + oy * oy
    active = inside & (d2 < r2[None, :])
    core = active & (d2 <= core2[None, :])
    pix = jnp.clip(base[None, :] + (dy * taps.width + dx), 0, taps.height * taps.width - 1).astype(jnp.uint32)
    return ox, oy, d2, active, core, pix


def _zmin_pass_float(zf, geo, taps):
    """Per pixel (flat [H W]): min z over the core taps where any, else over all active taps (inf where
    none), by a two-channel float scatter-min per block. zf [nb, B] (> 0 on active taps); geo: the blocked
    per-point arguments of _tap_geometry after `taps`, each [nb, B]."""
    inf = jnp.asarray(jnp.inf, zf.dtype)

    def body(zmins, x):
        z, g = x
        _, _, _, active, core, pix = _tap_geometry(taps, *g)
        zt = jnp.broadcast_to(z[None, :], active.shape)
        keys = jnp.stack([jnp.where(core, zt, inf), jnp.where(active, zt, inf)], axis=-1).reshape(-1, 2)
        return zmins.at[pix.reshape(-1)].min(keys, mode="promise_in_bounds"), None

    zmins, _ = jax.lax.scan(body, jnp.full((taps.height * taps.width, 2), inf, zf.dtype), (zf, geo))
    return jnp.where(jnp.isfinite(zmins[:, 0]), zmins[:, 0], zmins[:, 1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _zmin_pass(zf, geo, taps):
    """`_zmin_pass_float` with one single-channel integer scatter-min per block (the same values).

    Positive floats order like their bit patterns read as unsigned integers, so each tap's key is z's bits
    with the top (sign) bit set on taps outside the core and all ones on inactive taps: the minimum key of
    a pixel is the core minimum when the pixel has a core tap, else the minimum of all taps with the top
    bit set. Half the scattered bytes of two float channels, and no second channel to build. The integer
    path has no derivative, so derivatives (jvp, hence grad) come from `_zmin_pass_float` (zmin depends on
    the other per-point values only through the piecewise constant masks).
    """
    bits = jnp.dtype(f"uint{jnp.dtype(zf.dtype).itemsize * 8}")
    top = jnp.asarray(1 << (bits.itemsize * 8 - 1), bits)
    none = jnp.asarray(np.iinfo(bits).max, bits)

    def body(kmin, x):
        z, g = x
        _, _, _, active, core, pix = _tap_geometry(taps, *g)
        key = jax.lax.bitcast_convert_type(z, bits)[None, :]
        keys = jnp.where(core, key, jnp.where(active, key | top, none))
        return kmin.at[pix.reshape(-1)].min(keys.reshape(-1), mode="promise_in_bounds"), None

    kmin, _ = jax.lax.scan(body, jnp.full((taps.height * taps.width,), none, bits), (zf, geo))
    zmin = jax.lax.bitcast_convert_type(kmin & ~top, zf.dtype)
    return jnp.where(kmin == none, jnp.asarray(jnp.inf, zf.dtype), zmin)


@_zmin_pass.defjvp
def _zmin_pass_jvp(taps, primals, tangents):
    zf, geo = primals
    return jax.jvp(lambda z: _zmin_pass_float(z, geo, taps), (zf,), (tangents[0],))


def splat_points(
    points,
    features,
    K,
    image_size,
    radius=1.5,
    *,
    valid=None,
    max_radius=None,
    near=1e-3,
    depth_tau=0.02,
    core_fraction=0.75,
    sigma=0.25,
    kernel="gaussian",
    kernel_width=1.0,
    depth_slack=None,
    point_block=None,
):
    """Soft z-buffered splat of N points into an H x W image (algorithm in the module docstring).

    Args:
      points: [N, 3] camera-space points of the target view (OpenCV: x right, y down, z forward).
      features: [N, C] per-point features, any float dtype (accumulated in float32).
      K: [3, 3] intrinsics of the target view (pixels).
      image_size: (H, W), static python ints.
      radius: footprint radius in pixels, a python float or an [N] array (clipped to `max_radius`).
        The official renderer uses 1.5 px (`point_radius` 1.5, reference/cinemagraphy.md section 5).
      valid: optional [N] bool; False marks padding: ignored and counted in `num_invalid`.
      max_radius: static float bounding the footprint (fixes the tap window); defaults to `radius` when
        that is a python number, and is required when `radius` is an array.
      near: points with z <= near are dropped (counted in `num_behind`).
      depth_tau: relative depth tolerance of the soft z-test (s = exp(-(z - zmin) / (tau zmin))).
      core_fraction: taps with d <= core_fraction * r define the front surface of a pixel when any exist.
      sigma: standard deviation (pixels) of the Gaussian feature weight.
      kernel: feature kernel, "gaussian" (default) or "bilinear" (module docstring, step 4).
      kernel_width: the spacing a of the point's surface in this view (pixels, a number or [N], clipped
        below at 1): the "bilinear" tent half-width, and the core reaches at least sqrt(1/2) a.
      depth_slack: optional [N] per-point depth slack e >= 0 of the soft z-test (same units as z).
      point_block: static int or None: the two passes (z-test, accumulation) loop over blocks of this
        many points, so each block's per-tap temporaries stay in cache (on a 2-core CPU, 16384 points
        per block took ~0.83x the time of one block for a 768 x 768 frame); None: one block (all points),
        the natural choice for an accelerator. The result does not depend on it beyond float summation
        order.

    Returns a dict:
      features [H, W, C] float32 weighted mean (0 on empty pixels); depth [H, W] weighted mean z (0 on
      empty); alpha [H, W] coverage in [0, 1] (0 on empty); weight [H, W] the normaliser sum(omega);
      num_behind, num_offscreen, num_invalid: int32 scalars (points dropped for each reason).
    """
    where = "kernels.splat.splat_points"
    height, width = _check_image_size(image_size, where)
    max_radius = _resolve_max_radius(radius, max_radius, where)
    _check_params(near, depth_tau, core_fraction, sigma, where, kernel)
    points = jnp.asarray(points)
    features = jnp.asarray(features)
    K = jnp.asarray(K)
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"{where}: `points` must be [N, 3], got shape {points.shape}")
    if features.ndim != 2 or features.shape[0] != points.shape[0]:
        raise ValueError(f"{where}: `features` must be [N, C] with N = {points.shape[0]}, got {features.shape}")
    if K.shape != (3, 3):
        raise ValueError(f"{where}: `K` must be [3, 3], got shape {K.shape}")
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise ValueError(f"{where}: `features` must be floating point, got {features.dtype}")
    n, c = features.shape
    if valid is not None:
        valid = jnp.asarray(valid)
        if valid.shape != (n,):
            raise ValueError(f"{where}: `valid` must be [N] = [{n}], got shape {valid.shape}")
    if point_block is not None and not (isinstance(point_block, (int, np.integer)) and point_block > 0):
        raise ValueError(f"{where}: `point_block` must be None or a positive int (static), got {point_block!r}")
    if _is_number(radius):
        radius = float(radius)
    else:
        radius = jnp.asarray(radius)
        if radius.shape not in ((), (n,)):
            raise ValueError(f"{where}: `radius` must be a number or [N] = [{n}], got shape {radius.shape}")
    kernel_width = jnp.asarray(kernel_width)
    if kernel_width.shape not in ((), (n,)):
        raise ValueError(f"{where}: `kernel_width` must be a number or [N] = [{n}], got shape {kernel_width.shape}")
    if depth_slack is not None:
        depth_slack = jnp.asarray(depth_slack)
        if depth_slack.shape != (n,):
            raise ValueError(f"{where}: `depth_slack` must be [N] = [{n}], got shape {depth_slack.shape}")

    # float32 accumulation for low-precision inputs; float64 inputs (x64 tests) stay float64.
    dtype = jnp.promote_types(jnp.promote_types(points.dtype, features.dtype), jnp.float32)
    points = points.astype(dtype)
    features = features.astype(dtype)
    K = K.astype(dtype)
    kt = tap_half_width(max_radius)
    num_pixels = height * width

    # 1. Projection and per-point drop reasons.
    uv, z = project(points, K)
    finite = jnp.all(jnp.isfinite(points), axis=-1) & jnp.all(jnp.isfinite(uv), axis=-1)
    ok = finite if valid is None else finite & valid.astype(bool)
    behind = ok & (z <= near)
    front = ok & (z > near)
    # Far off-screen coordinates are clamped just outside the image so rounding cannot overflow int32;
    # every tap of such a point stays outside the image, so its value does not matter.
    u = jnp.clip(jnp.where(front, uv[:, 0], -kt - 2.0), -kt - 2.0, width + kt + 1.0)
    v = jnp.clip(jnp.where(front, uv[:, 1], -kt - 2.0), -kt - 2.0, height + kt + 1.0)
    zf = jnp.where(front, z, 1.0)
    r = jnp.minimum(jnp.broadcast_to(jnp.asarray(radius, dtype), (n,)), max_radius)
    r2 = r * r
    ru, rv = jnp.round(u), jnp.round(v)
    a = jnp.maximum(jnp.broadcast_to(kernel_width.astype(dtype), (n,)), 1.0)
    # the core reaches at least sqrt(1/2) of the point spacing (kernel_width): inside a magnified surface
    # whose points are farther apart than the core, a pixel still has one of them in its core
    core2 = jnp.maximum((core_fraction**2) * r2, 0.5 * a * a)
    slack = jnp.zeros((n,), dtype) if depth_slack is None else jnp.maximum(depth_slack.astype(dtype), 0.0)
    # Per-point values, padded to whole blocks (a padding point is not kept: r2 = 0) and split [nb, B].
    # The blocked arrays are inputs of the loops, so they are computed once: XLA's CPU fusion would
    # otherwise recompute the projection (and the caller's camera transform) inside every per-tap kernel.
    block = n if point_block is None else max(1, min(int(point_block), n))
    nb = -(-n // block)

    def blocks(x):
        return jnp.pad(x, [(0, nb * block - n)] + [(0, 0)] * (x.ndim - 1)).reshape((nb, block) + x.shape[1:])

    ri, rj = rv.astype(jnp.int32), ru.astype(jnp.int32)
    geo = tuple(blocks(x) for x in (ri, rj, ri * width + rj, ru - u, rv - v, jnp.where(front, r2, 0.0), core2))
    dy, dx = tap_offsets(max_radius)
    taps = _Taps(tuple(int(t) for t in dy), tuple(int(t) for t in dx), height, width)

    # 2-3. Pass 1 over the blocks: the soft z-test's per-pixel zmin (core and full footprint in one
    # scatter-min).
    zmin_pix = _zmin_pass(blocks(zf), geo, taps)

    # 4. Pass 2 over the blocks: weights and the single scatter-add of every channel. The rows carry
    # [f, z, 1, log_t] padded with zero channels to a multiple of 8: XLA's CPU scatter moves a row of 8
    # float32 as one vector (6M rows: 27 ms for 8 channels against 52 ms for 7).
    nch = -(-(c + 3) // 8) * 8
    fz1 = jnp.concatenate([features, zf[:, None], jnp.ones((n, 1), dtype), jnp.zeros((n, nch - c - 2), dtype)], -1)
    last = jnp.asarray(np.eye(nch, dtype=np.float32)[c + 2], dtype)

    def accumulate(acc, x):
        g, z, e, width_a, f = x
        ox, oy, d2, active, _, pix = _tap_geometry(taps, *g)
        r2b = g[5]  # the blocked r2 (geo's order: ri, rj, base, fu, fv, r2, core2)
        zmin = jnp.where(active, zmin_pix[pix], 1.0)  # finite (>= near) on active taps
        gap = z[None, :] - zmin - e[None, :]
        s = jnp.exp(jnp.minimum(0.0, -gap / (depth_tau * zmin)))
        r2_safe = jnp.where(active, r2b[None, :], 1.0)
        w_cov = jnp.where(active, jnp.maximum(0.0, 1.0 - d2 / r2_safe), 0.0)
        k = jnp.exp(-d2 / (2.0 * sigma * sigma))
        if kernel == "bilinear":
            tx = jnp.maximum(0.0, 1.0 - jnp.abs(ox) / width_a[None, :])
            ty = jnp.maximum(0.0, 1.0 - jnp.abs(oy) / width_a[None, :])
            k = tx * ty + 1e-6 * k
        # fused_once: XLA's CPU fusion recomputes a cheap per-tap expression inside every consumer that
        # reads it several times (here the channels of the scatter rows) but keeps an "expensive" one (a
        # floating divide) materialised. Dividing by 1 on active taps (0 / 2 = 0 elsewhere) is exact.
        omega = jnp.where(active, s * k, 0.0) / jnp.where(active, 1.0, 2.0)
        log_t = jnp.log1p(-jnp.minimum(w_cov * s, _MAX_COVERAGE))
        # rows = omega * [f, z, 1, 0..] + log_t * [0, .., 1, 0..]: one fused elementwise producer.
        rows = (omega[:, :, None] * f[None, :, :] + log_t[:, :, None] * last).reshape(-1, nch)
        return acc.at[pix.reshape(-1)].add(rows, mode="promise_in_bounds"), jnp.any(active, axis=0)

    acc, reached = jax.lax.scan(accumulate, jnp.zeros((num_pixels, nch), dtype),
                                (geo, blocks(zf), blocks(slack), blocks(a), blocks(fz1)))
    reached = reached.reshape(-1)[:n]

    den = acc[:, c + 1]
    out_features = safe_div(acc[:, :c], den[:, None], eps=_EMPTY_WEIGHT)
    out_depth = safe_div(acc[:, c], den, eps=_EMPTY_WEIGHT)
    alpha = -jnp.expm1(acc[:, c + 2])
    offscreen = front & ~reached
    return {
        "features": out_features.reshape(height, width, c),
        "depth": out_depth.reshape(height, width),
        "alpha": alpha.reshape(height, width),
        "weight": den.reshape(height, width),
        "num_behind": jnp.sum(behind, dtype=jnp.int32),
        "num_offscreen": jnp.sum(offscreen, dtype=jnp.int32),
        "num_invalid": jnp.sum(~ok, dtype=jnp.int32),
    }


def _batch_args(points, features, K, valid, where):
    """Validate batched inputs: points [B, N, 3], features [B, N, C], K [3, 3] or [B, 3, 3], valid [B, N]."""
    points = jnp.asarray(points)
    features = jnp.asarray(features)
    K = jnp.asarray(K)
    if points.ndim != 3 or features.ndim != 3 or points.shape[:2] != features.shape[:2]:
        raise ValueError(f"{where}: need points [B, N, 3] and features [B, N, C], got {points.shape}, {features.shape}")
    b, n = points.shape[:2]
    if K.ndim == 2:
        K = jnp.broadcast_to(K, (b, 3, 3))
    if K.shape != (b, 3, 3):
        raise ValueError(f"{where}: `K` must be [3, 3] or [B, 3, 3] = [{b}, 3, 3], got {K.shape}")
    valid = jnp.ones((b, n), bool) if valid is None else jnp.asarray(valid, bool)
    if valid.shape != (b, n):
        raise ValueError(f"{where}: `valid` must be [B, N] = [{b}, {n}], got {valid.shape}")
    return points, features, K, valid


# Keyword arguments of splat_points that may be per-point arrays; the batched forms take them as [B, N]
# (or [N], shared) and map over the batch; everything else must be a static python value.
_PER_POINT_KW = ("kernel_width", "depth_slack")


def _split_kw(kw, b, n, where):
    static, arrays = {}, {}
    for key, val in kw.items():
        if key in _PER_POINT_KW and val is not None and not _is_number(val):
            arr = jnp.asarray(val)
            if arr.shape not in ((n,), (b, n)):
                raise ValueError(f"{where}: `{key}` must be a number, [N] or [B, N] = [{b}, {n}], got {arr.shape}")
            arrays[key] = jnp.broadcast_to(arr, (b, n))
        else:
            static[key] = val
    return static, arrays


def splat_points_batched(points, features, K, image_size, radius=1.5, *, valid=None, max_radius=None, **kw):
    """`splat_points` over a batch (vmap).

    points [B, N, 3], features [B, N, C], K [3, 3] (shared) or [B, 3, 3]; radius a python float or an
    array [B, N] (or [N], shared); valid optional [B, N]; kernel_width / depth_slack a number or [B, N]
    (or [N], shared). Other keywords as `splat_points`. Returns the same dict with a leading batch axis
    ([B, H, W, C], ..., counts [B]).
    """
    where = "kernels.splat.splat_points_batched"
    max_radius = _resolve_max_radius(radius, max_radius, where)
    points, features, K, valid = _batch_args(points, features, K, valid, where)
    b, n = points.shape[:2]
    static, arrays = _split_kw(kw, b, n, where)
    names = tuple(sorted(arrays))
    if _is_number(radius):
        radius_arr = jnp.zeros((b, n), points.dtype)
    else:
        radius_arr = jnp.broadcast_to(jnp.asarray(radius), (b, n))

    def fn(p, f, k, m, r, *per_point):
        rad = float(radius) if _is_number(radius) else r
        return splat_points(p, f, k, image_size, rad, valid=m, max_radius=max_radius, **static,
                            **dict(zip(names, per_point)))

    return jax.vmap(fn)(points, features, K, valid, radius_arr, *(arrays[k] for k in names))


@functools.lru_cache(maxsize=64)
def _sharded_fn(mesh, axis, image_size, radius, max_radius, kw_items, has_radius_array, array_names):
    """jit(shard_map(batched splat)) with the batch axis split over `axis` of `mesh` (cached)."""
    kw = dict(kw_items)
    spec = PartitionSpec(axis)

    def body(points, features, K, valid, radius_arr, *per_point):
        r = radius_arr if has_radius_array else radius
        return splat_points_batched(points, features, K, image_size, r, valid=valid, max_radius=max_radius, **kw,
                                    **dict(zip(array_names, per_point)))

    # Every input and output carries the batch on its leading axis, so one spec covers them all.
    # check_vma=False: the splat's block loops start their accumulators from constants, which the
    # varying-axes check would reject as carries that change type; every output is per device anyway.
    per_device = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    sharding = NamedSharding(mesh, spec)
    return jax.jit(per_device, in_shardings=sharding, out_shardings=sharding)


def splat_points_sharded(
    points, features, K, image_size, radius=1.5, *, mesh=None, axis="data", valid=None, max_radius=None, **kw
):
    """`splat_points_batched` with the batch sharded over the `axis` of a jax.sharding.Mesh.

    mesh defaults to a 1-D mesh over all devices named `axis`. B is padded (with invalid, all-zero
    elements) to a multiple of the axis size, each device splats its slice (shard_map under jit with
    NamedSharding in/out), and the padding is removed. Equals `splat_points_batched` on one device.
    """
    where = "kernels.splat.splat_points_sharded"
    max_radius = _resolve_max_radius(radius, max_radius, where)
    image_size = _check_image_size(image_size, where)
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()), (axis,))
    if axis not in mesh.shape:
        raise ValueError(f"{where}: mesh has axes {tuple(mesh.shape)}, not {axis!r}")
    points, features, K, valid = _batch_args(points, features, K, valid, where)
    b, n = points.shape[:2]
    static, arrays = _split_kw(kw, b, n, where)
    names = tuple(sorted(arrays))
    has_radius_array = not _is_number(radius)
    radius_arr = (
        jnp.broadcast_to(jnp.asarray(radius, points.dtype), (b, n)) if has_radius_array else jnp.zeros((b, n))
    )
    size = mesh.shape[axis]
    padded = -(-b // size) * size

    def pad(x, value=0):
        widths = [(0, padded - b)] + [(0, 0)] * (x.ndim - 1)
        return jnp.pad(x, widths, constant_values=value)

    # Padding batch elements get a valid camera (identity K) and no valid points.
    K = jnp.concatenate([K, jnp.broadcast_to(jnp.eye(3, dtype=K.dtype), (padded - b, 3, 3))], axis=0)
    fn = _sharded_fn(
        mesh,
        axis,
        image_size,
        float(radius) if not has_radius_array else None,
        max_radius,
        tuple(sorted(static.items())),
        has_radius_array,
        names,
    )
    out = fn(pad(points), pad(features), K, pad(valid, False), pad(radius_arr), *(pad(arrays[k]) for k in names))
    return {k: out[k][:b] for k in _OUTPUT_KEYS}
