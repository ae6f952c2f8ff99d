"""Volume rendering math: ray/box intersection, stratified samples, alpha compositing, regularisers.

Follows the official Animate124 / stable-dreamfusion renderer (`nerf/renderer.py`, `raymarching/`;
facts in /work/shared/reference/animate124.md section 2), rewritten for static shapes:

- near/far come from the AABB [-1, 1]^3 with near clamped to min_near = 0.2;
- alpha_i = 1 - exp(-sigma_i * delta_i), w_i = alpha_i * T_i, rgb = sum w c + (1 - sum w) bg,
  depth = sum w t (unnormalised). T_i comes from an exclusive cumulative sum of sigma delta (never a
  subtraction, which loses a thin prefix in float32 once an opaque sample follows it), sigma delta is
  clamped (sigma = inf is an opaque sample, not a NaN) and the background weight is T_final >= 0;
- the official CUDA marcher stops a ray once T < 1e-4. With static shapes every sample is composited
  instead; the samples it would have skipped carry less than 1e-4 of the weight in total.

Shapes: R rays, S samples per ray, C channels. Everything is float32, pure, jit-able and differentiable.
"""

import jax
import jax.numpy as jnp

from kernels.mathx import safe_exp

# Official `--min_near` default (stable-dreamfusion / Animate124 main.py).
DEFAULT_MIN_NEAR = 0.2
# Below this |direction component| the slab is treated as parallel to the ray; the substitute keeps
# the slab distances finite (|t| <= ~1e12) instead of producing inf - inf = NaN.
_PARALLEL_EPS = 1e-12
# Clamps of the compositor: densities above _MAX_DENSITY (incl. inf) and per-sample optical depths
# above _MAX_OPTICAL_DEPTH are opaque to float32 precision (exp(-88) is the smallest normal float32).
_MAX_DENSITY = 1e30
_MAX_OPTICAL_DEPTH = 88.0
# Clamp of the official entropy regulariser (`weights.clamp(1e-5, 1 - 1e-5)`).
_ENTROPY_EPS = 1e-5


def _check_last_dim(name, array, size):
    if array.ndim < 1 or array.shape[-1] != size:
        raise ValueError(f"kernels/volume.py: {name} must have shape [..., {size}], got {array.shape}")


def ray_aabb(origins, directions, aabb_min=(-1.0, -1.0, -1.0), aabb_max=(1.0, 1.0, 1.0),
             min_near=DEFAULT_MIN_NEAR):
    """Intersect rays with an axis-aligned box (slab method).

    Args:
      origins: [R, 3] ray origins (world units).
      directions: [R, 3] ray directions (need not be unit length; t is in units of |direction|).
      aabb_min, aabb_max: [3] box corners; the official box is [-bound, bound]^3 with bound 1.
      min_near: near is clamped to at least this (official `--min_near` 0.2), which also removes the
        part of the box behind the origin when the origin is inside the box.

    Returns:
      dict(near [R], far [R], hit [R] bool). A ray hits when the box interval [t_in, t_out] is
      non-empty and t_out > min_near. For misses near = far = min_near (an empty interval, so samples
      placed in it composite to zero opacity and every value stays finite).
    """
    _check_last_dim("origins", origins, 3)
    _check_last_dim("directions", directions, 3)
    if origins.shape != directions.shape:
        raise ValueError(f"kernels/volume.py: origins {origins.shape} and directions "
                         f"{directions.shape} must have the same shape")
    origins = jnp.asarray(origins, jnp.float32)
    directions = jnp.asarray(directions, jnp.float32)
    lo = jnp.asarray(aabb_min, jnp.float32)
    hi = jnp.asarray(aabb_max, jnp.float32)
    # Replace (near-)zero components by a tiny value of the same sign: the slab then spans
    # (-1e12, 1e12)-ish for an origin inside it, and lies entirely on one side otherwise.
    tiny = jnp.abs(directions) < _PARALLEL_EPS
    d = jnp.where(tiny, jnp.where(directions < 0, -_PARALLEL_EPS, _PARALLEL_EPS), directions)
    t0 = (lo - origins) / d
    t1 = (hi - origins) / d
    t_in = jnp.max(jnp.minimum(t0, t1), axis=-1)
    t_out = jnp.min(jnp.maximum(t0, t1), axis=-1)
    near = jnp.maximum(t_in, min_near)
    hit = (t_in <= t_out) & (t_out > min_near)
    near = jnp.where(hit, near, min_near)
    far = jnp.where(hit, t_out, min_near)
    return {"near": near, "far": far, "hit": hit}


def ray_uniforms(key, ray_ids, num_samples):
    """[R, S] uniforms in [0, 1) where row r depends only on (key, ray_ids[r]): uniform(fold_in(key, id), S).

    A ray's draws are then the same whichever chunk, batch position or device renders it, so splitting R
    rays into chunks (a memory setting) or over devices does not change a render."""
    ids = jnp.asarray(ray_ids, jnp.uint32)
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (int(num_samples),), jnp.float32))(ids)


def stratified_samples(key, near, far, num_samples, jitter=True, ray_ids=None):
    """Split [near, far] into `num_samples` equal bins and place one sample in each.

    Args:
      key: a jax.random key, or None (then samples sit at bin midpoints).
      near, far: [R] interval ends (far >= near).
      num_samples: S, static.
      jitter: if True and key is given, each sample is drawn uniformly inside its bin (independently
        per bin and ray); otherwise it is the bin midpoint.
      ray_ids: optional [R] integer ray indices: the draws of ray r are then `ray_uniforms(key, ray_ids)[r]`
        (independent of how the rays are chunked); None draws one [R, S] array from key.

    Returns:
      dict(t_edges [R, S+1] bin boundaries (sorted, t_edges[:, 0] = near, t_edges[:, -1] = far),
           t_mid [R, S] sample positions, t_edges[:, i] <= t_mid[:, i] <= t_edges[:, i+1]).
    """
    if int(num_samples) < 1:
        raise ValueError(f"kernels/volume.py: num_samples must be >= 1, got {num_samples}")
    near = jnp.asarray(near, jnp.float32)
    far = jnp.asarray(far, jnp.float32)
    if near.shape != far.shape:
        raise ValueError(f"kernels/volume.py: near {near.shape} and far {far.shape} must match")
    s = jnp.linspace(0.0, 1.0, num_samples + 1, dtype=jnp.float32)
    t_edges = near[..., None] * (1.0 - s) + far[..., None] * s
    lower, upper = t_edges[..., :-1], t_edges[..., 1:]
    if jitter and key is not None:
        if ray_ids is None:
            u = jax.random.uniform(key, lower.shape, jnp.float32)
        else:
            u = ray_uniforms(key, ray_ids, num_samples)
    else:
        u = jnp.full(lower.shape, 0.5, jnp.float32)
    # lower + u*(upper-lower) can overshoot `upper` by an ulp; the clip keeps samples in their bins.
    t_mid = jnp.clip(lower + u * (upper - lower), lower, upper)
    return {"t_edges": t_edges, "t_mid": t_mid}


def accumulate(weights, values):
    """Composite any per-sample quantity with given weights: sum_i w_i v_i.

    Args:
      weights: [R, S] (from `composite`).
      values: [R, S] or [R, S, C].

    Returns:
      [R] or [R, C], float32.
    """
    weights = jnp.asarray(weights, jnp.float32)
    values = jnp.asarray(values, jnp.float32)
    if values.shape[: weights.ndim] != weights.shape:
        raise ValueError(f"kernels/volume.py: values {values.shape} must start with the weights "
                         f"shape {weights.shape}")
    if values.ndim == weights.ndim:
        return jnp.sum(weights * values, axis=-1)
    return jnp.einsum("...s,...sc->...c", weights, values)


def optical_depth(sigma, delta):
    """sigma_i delta_i per sample, clamped so that every value (and gradient) stays finite.

    sigma is clamped to _MAX_DENSITY (so sigma = inf with delta = 0 gives 0, not inf * 0 = NaN) and
    the product to _MAX_OPTICAL_DEPTH (a sample whose optical depth exceeds it is opaque to float32
    precision anyway: exp(-88) underflows; its gradient is exactly 0 instead of ~exp(-88)). Samples
    with delta <= 0 contribute nothing. Densities are assumed >= 0.
    """
    sigma = jnp.minimum(jnp.asarray(sigma, jnp.float32), _MAX_DENSITY)
    return jnp.minimum(sigma * jnp.maximum(delta, 0.0), _MAX_OPTICAL_DEPTH)


def composite(sigma, rgb, t_edges, bg=None, t_mid=None):
    """Alpha-composite samples along rays (official NeRF quadrature).

    Args:
      sigma: [R, S] densities (>= 0, per unit of t).
      rgb: [R, S, C] per-sample colours.
      t_edges: [R, S+1] sample interval boundaries; delta_i = t_edges[i+1] - t_edges[i].
      bg: None (no background, i.e. black), [C] or [R, C]; composited with weight 1 - opacity.
      t_mid: [R, S] sample positions for the depth; defaults to the interval midpoints.

    Returns:
      dict(rgb [R, C], depth [R] = sum w t_mid (unnormalised, as official; in the units of t),
           opacity [R] = 1 - T_final (= sum w, in [0, 1]), weights [R, S], transmittance [R, S] (T_i,
           light reaching sample i)). The background weight is T_final = 1 - opacity >= 0.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    rgb = jnp.asarray(rgb, jnp.float32)
    t_edges = jnp.asarray(t_edges, jnp.float32)
    if sigma.ndim < 1 or rgb.shape[:-1] != sigma.shape:
        raise ValueError(f"kernels/volume.py: rgb {rgb.shape} must be sigma {sigma.shape} + [C]")
    if t_edges.shape != sigma.shape[:-1] + (sigma.shape[-1] + 1,):
        raise ValueError(f"kernels/volume.py: t_edges must have shape {sigma.shape[:-1]} + "
                         f"[{sigma.shape[-1] + 1}], got {t_edges.shape}")
    if t_mid is None:
        t_mid = 0.5 * (t_edges[..., :-1] + t_edges[..., 1:])
    t_mid = jnp.asarray(t_mid, jnp.float32)
    if t_mid.shape != sigma.shape:
        raise ValueError(f"kernels/volume.py: t_mid {t_mid.shape} must match sigma {sigma.shape}")

    delta = t_edges[..., 1:] - t_edges[..., :-1]
    optical = optical_depth(sigma, delta)
    # T_i = exp(-sum_{j<i} sigma_j delta_j): one exp of an EXCLUSIVE cumsum (a shifted inclusive one,
    # never cumsum - optical: subtracting a huge opaque term from the running sum loses the prefix in
    # float32 and gives opacity > 1), instead of a product of (1 - alpha) terms.
    total = jnp.cumsum(optical, axis=-1)
    excl = jnp.concatenate([jnp.zeros_like(total[..., :1]), total[..., :-1]], axis=-1)
    transmittance = safe_exp(-excl)
    alpha = -jnp.expm1(-optical)
    weights = alpha * transmittance
    # 1 - T_final (= sum w mathematically), computed so that it never exceeds 1: the background
    # weight T_final = exp(-total) is never negative.
    opacity = -jnp.expm1(-total[..., -1])
    color = accumulate(weights, rgb)
    if bg is not None:
        bg = jnp.asarray(bg, jnp.float32)
        color = color + safe_exp(-total[..., -1])[..., None] * bg
    depth = jnp.sum(weights * t_mid, axis=-1)
    return {"rgb": color, "depth": depth, "opacity": opacity, "weights": weights,
            "transmittance": transmittance}


def composite_normals(weights, normals):
    """Normal image as the official renderer makes it: (n + 1) / 2 composited with detached weights.

    The official code re-composites with `sigmas.detach()`, so the normal-image losses reach the
    density only through the normals; no background is added.

    Args:
      weights: [R, S]; normals: [R, S, 3] unit normals.

    Returns:
      [R, 3] in [0, 1] where the opacity is 1.
    """
    return accumulate(jax.lax.stop_gradient(weights), (jnp.asarray(normals, jnp.float32) + 1.0) * 0.5)


def _masked_mean(x, mask):
    if mask is None:
        return jnp.mean(x)
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def binary_entropy(weights):
    """Elementwise binary entropy in bits of values clipped to [1e-5, 1 - 1e-5] (official clamp)."""
    a = jnp.clip(jnp.asarray(weights, jnp.float32), _ENTROPY_EPS, 1.0 - _ENTROPY_EPS)
    return -(a * jnp.log2(a) + (1.0 - a) * jnp.log2(1.0 - a))


def orientation_penalty(weights, normals, directions):
    """Per-ray sum_s sg(w_s) max(0, n_s . d)^2 ([R]); orientation_loss is its mean over the samples.

    weights [R, S]; normals [R, S, 3]; directions [R, 3] or [R, S, 3] unit viewing directions.
    """
    weights = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
    normals = jnp.asarray(normals, jnp.float32)
    directions = jnp.asarray(directions, jnp.float32)
    _check_last_dim("normals", normals, 3)
    _check_last_dim("directions", directions, 3)
    if directions.ndim == normals.ndim - 1:
        directions = directions[..., None, :]
    cos = jnp.sum(normals * directions, axis=-1)
    return jnp.sum(weights * jnp.square(jnp.maximum(cos, 0.0)), axis=-1)


def opacity_entropy(weights, mask=None):
    """Binary entropy (in bits) of per-sample weights (or per-ray opacities), averaged.

    Official (`--lambda_entropy` 1e-3, scaled by min(1, 2 step / iters) by the caller):
    a = clip(w, 1e-5, 1 - 1e-5); mean(-a log2 a - (1 - a) log2(1 - a)).

    Args:
      weights: any shape, values in [0, 1].
      mask: optional, broadcastable to weights; 1 for real samples. The official marcher only
        produces real samples, so padded samples should be masked out to match its mean.

    Returns:
      scalar float32.
    """
    return _masked_mean(binary_entropy(weights), mask)


def orientation_loss(weights, normals, directions, mask=None):
    """Ref-NeRF/DreamFusion orientation penalty: mean(sg(w) * max(0, n . d)^2).

    Penalises normals that face away from the camera (n . d > 0 with d the viewing direction).
    Official weight `--lambda_orient` 1e-2; weights are detached as in the official code.

    Args:
      weights: [R, S]; normals: [R, S, 3]; directions: [R, 3] (per ray) or [R, S, 3] (per sample),
        unit ray directions.
      mask: optional [R, S] (or broadcastable), 1 for real samples.

    Returns:
      scalar float32.
    """
    weights = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
    normals = jnp.asarray(normals, jnp.float32)
    directions = jnp.asarray(directions, jnp.float32)
    _check_last_dim("normals", normals, 3)
    _check_last_dim("directions", directions, 3)
    if directions.ndim == normals.ndim - 1:
        directions = directions[..., None, :]
    cos = jnp.sum(normals * directions, axis=-1)
    return _masked_mean(weights * jnp.square(jnp.maximum(cos, 0.0)), mask)
