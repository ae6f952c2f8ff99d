"""Volume rendering of a dynamic field: rays, occupancy-guided sampling, images, regularisers.

The official renderer (animate124.md section 2) marches with a fixed step dt = 2 sqrt(3) / 1024 and
skips empty cells of a per-time-bin 128^3 occupancy grid with a data-dependent number of steps. Under
static shapes (GPU/TPU friendly) we keep S samples per ray and use the occupancy grid to decide WHERE
they go (two passes):

  1. coarse pass: M cheap points uniformly on [near, far] (M = `coarse_samples`, default 256) each look
     up one occupancy bit (a gather; no network);
  2. fine pass: the S network samples are placed by inverse CDF of the occupancy along the ray, i.e.
     uniformly (stratified) over the occupied part of the ray only. Each sample then stands for an
     occupied length L_occ / S, so delta_i = L_occ / S (passed to `composite` as compressed t_edges),
     while t_mid holds the true ray positions (used for points and depth).

Under the occupancy assumption (density ~ 0 in unoccupied cells) this is the same integral as uniform
sampling, with the quadrature step shrunk from (far - near) / S to L_occ / S: for a fixed error, S can
be divided by (far - near) / L_occ, which is where the compute is saved (the MLP cost is proportional
to S; the M occupancy lookups are gathers). A ray whose occupied length is 0 gets zero opacity. What
is NOT done: skipping the MLP for masked samples at fixed S (with static shapes that saves nothing).
benchmarks/four_d.py measures rays/s and image error with and without skipping (2-core CPU, default
config: 128x128 dense S=128 13.2k rays/s vs skip S=32 45.5k rays/s; 400x400 11.7k vs 50.2k; on an
analytic two-ball scene the mean |rgb error| vs a 2048-sample reference is 3.0e-4 dense S=128,
8.9e-4 dense S=32, 6.6e-4 skip S=32).

The field is passed as `field_apply(params, x [N, 3], t [N], level_mask) -> dict(sigma [N], albedo
[N, 3])` (see `make_field_apply`). Rays: origins/directions [R, 3] world units (directions unit length),
times [R] in [0, 1].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from four_d import field as field_lib
from four_d.field import SHADING_MODES  # noqa: F401  (re-exported: the shading index order)
from kernels import volume
from kernels.camera import camera_rays
from kernels.mathx import safe_div


@functools.lru_cache(maxsize=64)
def make_field_apply(model):
    """field_apply(params, x, t, level_mask) for a Linen DynamicField (params = its "params" collection).

    Cached per model (Linen modules hash by value), so renderers built for the same model share their
    compiled programs.
    """

    def field_apply(params, x, t, level_mask=None):
        return model.apply({"params": params}, x, t, level_mask)

    return field_apply


# ------------------------------------------------------------------------------------------------
# occupancy grid (one grid per time bin)
# ------------------------------------------------------------------------------------------------


def init_occupancy(resolution=128, time_bins=16):
    """Density grid [B, G, G, G] of zeros (official: 128^3, 16 time bins in the dynamic stages).

    Axes are (time bin, x, y, z); cell (i, j, k) covers [-b + i 2b/G, -b + (i+1) 2b/G] etc.
    """
    return jnp.zeros((time_bins, resolution, resolution, resolution), jnp.float32)


def occupancy_cell_centers(resolution, bound=1.0):
    """World coordinates [G^3, 3] of the cell centres in (x, y, z) C order."""
    c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution * (2 * bound) - bound
    gx, gy, gz = jnp.meshgrid(c, c, c, indexing="ij")
    return jnp.stack([gx, gy, gz], -1).reshape(-1, 3)


def update_occupancy(density_grid, density_fn, key, *, bound=1.0, decay=0.95, chunk=65536):
    """One official occupancy refresh: grid = max(decay * grid, sigma(jittered centres, jittered times)).

    density_fn(x [N, 3], t [N]) -> sigma [N]. Each cell is evaluated at a point uniform inside the cell
    and a time uniform inside its bin (official update_extra_state: jitter of half a cell each way).
    The G^3 B evaluations run in static chunks of `chunk` points (lax.map), so memory is bounded.
    Returns the new density grid (same shape).
    """
    b, g = density_grid.shape[0], density_grid.shape[1]
    cell = 2.0 * bound / g
    n = g**3
    kx, kt = jax.random.split(key)
    centers = occupancy_cell_centers(g, bound)
    x = centers[None] + jax.random.uniform(kx, (b, n, 3), minval=-0.5, maxval=0.5) * cell
    t = (jnp.arange(b, dtype=jnp.float32)[:, None] + jax.random.uniform(kt, (b, n))) / b
    x = x.reshape(-1, 3)
    t = t.reshape(-1)
    total = x.shape[0]
    chunk = min(chunk, total)
    pad = (-total) % chunk
    xp = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, 3)
    tp = jnp.pad(t, (0, pad)).reshape(-1, chunk)
    sigma = jax.lax.map(lambda a: density_fn(a[0], a[1]), (xp, tp)).reshape(-1)[:total]
    fresh = sigma.reshape(density_grid.shape).astype(jnp.float32)
    return jnp.maximum(decay * density_grid, fresh)


def occupancy_static_to_dynamic(density_grid, time_bins):
    """The dynamic stage's occupancy state from the static stage's (official from_pretrained_3d).

    The official loader copies the static density grid [1, G^3] into every time bin of the dynamic
    [T_occ, G^3] grid (buffers of different shape are broadcast from the checkpoint), so the first
    dynamic steps skip the same empty space the static field had. density_grid [1, G, G, G] ->
    [time_bins, G, G, G] (a copy per bin).

    Side effect NOT reproduced: the same loader also overwrites the per-bin `times` buffer
    ((k + 0.5) / T_occ) with the static value 0.5, after which every bin is refreshed from densities at
    t ~ 0.5 +- 1/32 for the rest of training, i.e. the occupancy never follows the motion: cells the
    object moves into at other times stay empty unless the t = 0.5 shape covers them, so that content
    cannot be learnt (or is clipped at the old silhouette). That reads as a bug of buffer copying, not
    a design. Here there is no times buffer: update_occupancy always refreshes bin k at times
    (k + U(0, 1)) / B, so after the transfer each bin tracks its own times.
    """
    grid = jnp.asarray(density_grid, jnp.float32)
    if grid.ndim != 4 or grid.shape[0] != 1 or not (grid.shape[1] == grid.shape[2] == grid.shape[3]):
        raise ValueError(f"four_d/render.py occupancy_static_to_dynamic: expected a static density grid "
                         f"[1, G, G, G], got shape {tuple(grid.shape)}")
    if int(time_bins) < 1:
        raise ValueError(f"four_d/render.py occupancy_static_to_dynamic: time_bins must be >= 1, got {time_bins}")
    return jnp.tile(grid, (int(time_bins), 1, 1, 1))


def occupancy_mask(density_grid, threshold=10.0):
    """Occupied cells [B, G, G, G] bool: sigma > min(mean density, threshold) (official, thresh 10)."""
    thr = jnp.minimum(jnp.mean(jnp.maximum(density_grid, 0.0)), threshold)
    return density_grid > thr


def lookup_occupancy(mask, points, times, bound=1.0):
    """Occupancy bits [...] of points [..., 3] at times [...] (nearest cell, floor(t B) time bin).

    Points outside [-bound, bound]^3 are unoccupied.
    """
    b, g = mask.shape[0], mask.shape[1]
    rel = (points + bound) / (2.0 * bound) * g
    idx = jnp.floor(rel).astype(jnp.int32)
    inside = jnp.all((idx >= 0) & (idx < g), axis=-1)
    idx = jnp.clip(idx, 0, g - 1)
    tb = jnp.clip(jnp.floor(times * b).astype(jnp.int32), 0, b - 1)
    return mask[tb, idx[..., 0], idx[..., 1], idx[..., 2]] & inside


def occupancy_samples(mask, origins, directions, times, near, far, key, num_samples, *,
                      coarse_samples=256, jitter=True, bound=1.0, ray_ids=None):
    """Place S samples uniformly over the occupied part of each ray (inverse CDF of occupancy).

    Returns dict(t_mid [R, S] true ray positions, t_edges [R, S+1] compressed edges whose differences
    are the occupied length per sample L_occ / S, occupied_length [R], coarse_occupancy [R, M]).
    """
    m = coarse_samples
    seg = (far - near) / m  # [R]
    u = (jnp.arange(m, dtype=jnp.float32) + 0.5) / m
    tc = near[:, None] + (far - near)[:, None] * u[None]
    pts = origins[:, None, :] + directions[:, None, :] * tc[..., None]
    occ = lookup_occupancy(mask, pts, jnp.broadcast_to(times[:, None], tc.shape), bound).astype(jnp.float32)
    count = jnp.sum(occ, -1)
    occupied_length = count * seg
    cdf = jnp.concatenate([jnp.zeros_like(occ[:, :1]), jnp.cumsum(occ, -1)], -1) / jnp.maximum(count, 1.0)[:, None]
    if jitter and key is not None and ray_ids is not None:
        jit_u = volume.ray_uniforms(key, ray_ids, num_samples)  # per ray: chunking does not change the draws
    elif jitter and key is not None:
        jit_u = jax.random.uniform(key, (origins.shape[0], num_samples), jnp.float32)
    else:
        jit_u = jnp.full((origins.shape[0], num_samples), 0.5, jnp.float32)
    v = (jnp.arange(num_samples, dtype=jnp.float32)[None] + jit_u) / num_samples
    # Bin k with cdf[k] <= v < cdf[k+1]; only occupied bins have cdf[k+1] > cdf[k].
    k = jax.vmap(lambda c, q: jnp.searchsorted(c, q, side="right"))(cdf, v) - 1
    k = jnp.clip(k, 0, m - 1)
    c0 = jnp.take_along_axis(cdf, k, -1)
    c1 = jnp.take_along_axis(cdf, k + 1, -1)
    frac = jnp.clip(safe_div(v - c0, c1 - c0), 0.0, 1.0)
    t_mid = near[:, None] + seg[:, None] * (k.astype(jnp.float32) + frac)
    step = occupied_length / num_samples
    t_edges = near[:, None] + step[:, None] * jnp.arange(num_samples + 1, dtype=jnp.float32)[None]
    return {"t_mid": t_mid, "t_edges": t_edges, "occupied_length": occupied_length, "coarse_occupancy": occ}


# ------------------------------------------------------------------------------------------------
# rays
# ------------------------------------------------------------------------------------------------


def _field_plain(field_apply, params, x, t, level_mask):
    out = field_apply(params, x, t, level_mask)
    return out["sigma"], out["albedo"], jnp.zeros_like(x)


def _field_with_normals(field_apply, params, x, t, level_mask, eps, bound):
    """sigma, albedo and finite-difference normals from ONE field call on [x; its 6 probes] (7 N points)."""
    n = x.shape[0]
    pts = jnp.concatenate([x, field_lib.probe_points(x, eps, bound)], axis=0)
    out = field_apply(params, pts, jnp.tile(t, 7), level_mask)
    normals = field_lib.normals_from_probes(out["sigma"][n:], eps)
    return out["sigma"][:n], out["albedo"][:n], normals


def render_rays(field_apply, params, origins, directions, times, key, *, num_samples, bound=1.0,
                min_near=0.2, bg=None, shading="albedo", ambient=1.0, light_dir=None, occupancy=None,
                level_mask=None, jitter=True, normal_eps=1e-2, compute_normals=None, coarse_samples=256,
                optical_axis=None, ray_ids=None):
    """Volume-render R rays through the dynamic field.

    Args:
      field_apply: (params, x [N, 3], t [N], level_mask) -> dict(sigma [N], albedo [N, 3]).
      origins, directions: [R, 3] (unit directions); times [R] in [0, 1]; key: PRNG key or None.
      num_samples: static S. bound/min_near: AABB [-bound, bound]^3, near >= min_near (official 1, 0.2).
      bg: None (black), [3] or [R, 3] background colour.
      shading: a name in SHADING_MODES, or its index (may be traced: one compiled program then serves
        every mode; lax.cond skips the normals at run time for "albedo").
      ambient: scalar ambient ratio (may be traced).
      light_dir: [3] or [R, 3] unit vector towards the light. Training passes the official light
        field.jittered_light(step key, origins); None is a headlight (-d), for renders meant for people.
      occupancy: None, or a bool mask [B, G, G, G] from `occupancy_mask` (enables the two-pass scheme).
      level_mask: optional [L] coarse-to-fine mask forwarded to the field.
      compute_normals: True computes normals even for "albedo" (orientation loss, normal image); by
        default they are computed when the shading needs them. They cost 6 extra field evaluations per
        sample (official, eps 1e-2), all in the same field call as the sample itself.
      optical_axis: [3] or [R, 3] unit camera +z axis in world coordinates (pose[2, :3] of a
        world-to-camera pose). Needed for the z-depth output.
      ray_ids: [R] integer index of each ray in the whole batch (default 0..R-1). With jitter, ray r's
        sample offsets are volume.ray_uniforms(key, ray_ids)[r]: they depend on (key, id) only, so a
        chunked render (render_rays_chunked passes the global ids) equals one call on all rays.

    Depth convention (ARCHITECTURE.md: z-depth along the optical axis): t is the distance along the
    UNIT ray, so near/far/min_near, delta and the optical depth sigma * delta are in world units along
    the ray (a physical line integral, the same for a point seen from any pixel). The official rays
    are not normalised (camera z = -1), so its t, dt, near and sigma * dt are in z units: its optical
    depth per sample is |d| = 1 / cos(angle to the axis) times smaller off-axis (up to 12% at the
    corners of a fovy-40 image), i.e. the same density looks more transparent near the image border
    and view-dependent. We follow the physical integral (view-consistent, which reconstruction needs)
    and return the official depth quantity, z-depth = sum w t cos, as "depth" ("distance" = sum w t).

    Returns dict(rgb [R, 3], depth [R] (z-depth, only with optical_axis), distance [R], opacity [R],
      weights [R, S], t_mid [R, S], sigma [R, S], normals [R, S, 3] (zeros without normals),
      normal_image [R, 3] ((n+1)/2 composited with detached weights; zeros without normals),
      orient_sum [R] (sum_s sg(w) max(0, n.d)^2, the orientation penalty before the mean),
      entropy_sum [R] (sum_s binary entropy of w_s), occupied_length [R] (far - near without occupancy)).
    """
    if origins.ndim != 2 or origins.shape[-1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"four_d/render.py render_rays: origins/directions must be [R, 3], got "
                         f"{origins.shape} and {directions.shape}")
    mode = field_lib.shading_index(shading)
    r = origins.shape[0]
    times = jnp.broadcast_to(jnp.asarray(times, jnp.float32), (r,))
    box = volume.ray_aabb(origins, directions, (-bound,) * 3, (bound,) * 3, min_near)
    near, far = box["near"], box["far"]
    if ray_ids is None:
        ray_ids = jnp.arange(r, dtype=jnp.uint32)
    if occupancy is None:
        s = volume.stratified_samples(key, near, far, num_samples, jitter, ray_ids=ray_ids)
        t_mid, t_edges = s["t_mid"], s["t_edges"]
        occupied_length = far - near
    else:
        s = occupancy_samples(occupancy, origins, directions, times, near, far, key, num_samples,
                              coarse_samples=coarse_samples, jitter=jitter, bound=bound, ray_ids=ray_ids)
        t_mid, t_edges, occupied_length = s["t_mid"], s["t_edges"], s["occupied_length"]

    x = (origins[:, None, :] + directions[:, None, :] * t_mid[..., None]).reshape(-1, 3)
    tt = jnp.broadcast_to(times[:, None], t_mid.shape).reshape(-1)
    plain = functools.partial(_field_plain, field_apply, params, x, tt, level_mask)
    with_normals = functools.partial(_field_with_normals, field_apply, params, x, tt, level_mask, normal_eps, bound)
    if isinstance(mode, int):
        sigma, albedo, normals = with_normals() if (compute_normals or mode != 0) else plain()
    else:
        mode = jnp.asarray(mode, jnp.int32)
        need = jnp.logical_or(bool(compute_normals), mode != 0)
        sigma, albedo, normals = jax.lax.cond(need, with_normals, plain)

    if light_dir is None:
        light = -directions
    else:
        light = jnp.broadcast_to(jnp.asarray(light_dir, jnp.float32), (r, 3))
    light = jnp.broadcast_to(light[:, None, :], (r, num_samples, 3)).reshape(-1, 3)
    colors = field_lib.shade(albedo, normals, light, jnp.asarray(ambient, jnp.float32), mode)
    sigma = sigma.reshape(r, num_samples)
    colors = colors.reshape(r, num_samples, -1)
    normals = normals.reshape(r, num_samples, 3)

    comp = volume.composite(sigma, colors, t_edges, bg, t_mid)
    weights = comp["weights"]
    out = {
        "rgb": comp["rgb"],
        "distance": comp["depth"],
        "opacity": comp["opacity"],
        "weights": weights,
        "t_mid": t_mid,
        "sigma": sigma,
        "normals": normals,
        "normal_image": volume.composite_normals(weights, normals),
        "orient_sum": volume.orientation_penalty(weights, normals, directions),
        "entropy_sum": jnp.sum(volume.binary_entropy(weights), axis=-1),
        "occupied_length": occupied_length,
    }
    if optical_axis is not None:
        axis = jnp.broadcast_to(jnp.asarray(optical_axis, jnp.float32), (r, 3))
        out["depth"] = comp["depth"] * jnp.sum(directions * axis, axis=-1)
    return out


# Per-ray outputs of the chunked training renderer (no [R, S] arrays: memory is bounded by a chunk).
TRAIN_KEYS = ("rgb", "depth", "distance", "opacity", "normal_image", "orient_sum", "entropy_sum",
              "occupied_length")


def render_rays_chunked(field_apply, params, origins, directions, times, key, *, chunk, remat=True,
                        light_dir=None, optical_axis=None, bg=None, ray_sharding=None, **render_kw):
    """render_rays over static chunks of rays (lax.scan), each chunk under jax.checkpoint.

    Forward and backward memory is bounded by one chunk: with remat, the backward pass recomputes a
    chunk's samples instead of keeping every sample's activations (XLA's memory analysis of a
    16-frame 128x128 lambertian clip is in benchmarks/four_d.py). remat=False keeps them (faster
    when it fits). Only per-ray outputs (TRAIN_KEYS) come back; the regularisers use their per-ray sums.

    Args as render_rays; light_dir / optical_axis / bg may be per ray ([R, 3]) or shared ([3]). The
    chunk of rays j is rays {i nc + j}: with the ray axis sharded in contiguous blocks over a mesh
    (ray_sharding, a NamedSharding of a [R] array), every chunk is spread over all devices and the
    re-layout is local. Every ray keeps its index among the R rays (render_rays' ray_ids), so its
    jitter, and the result, do not depend on the chunk size or the device count: the chunked render
    equals one render_rays call on all rays. R need not be a multiple of chunk (padded rays are dropped).
    """
    r = origins.shape[0]
    chunk = int(min(chunk, r))
    nc = -(-r // chunk)
    pad = nc * chunk - r

    def per_ray(a):
        a = jnp.asarray(a)
        if not jnp.issubdtype(a.dtype, jnp.integer):
            a = a.astype(jnp.float32)
        if pad:
            # padded rays: a valid unit direction / axis keeps every value finite; outputs are dropped
            fill = 1.0 / np.sqrt(3.0) if a.ndim == 2 else 0.0
            a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)], axis=0)
        # [R] -> [chunk, nc] (row i holds rays i nc .. i nc + nc - 1) -> [nc, chunk]
        return jnp.swapaxes(a.reshape((chunk, nc) + a.shape[1:]), 0, 1)

    xs = {"o": per_ray(origins), "d": per_ray(directions), "t": per_ray(jnp.broadcast_to(times, (r,))),
          "ids": per_ray(jnp.arange(r, dtype=jnp.uint32))}
    shared = {}
    for name, v in (("light", light_dir), ("axis", optical_axis), ("bg", bg)):
        if v is None:
            continue
        v = jnp.asarray(v, jnp.float32)
        if v.ndim == 2:
            xs[name] = per_ray(v)
        else:
            shared[name] = v

    def body(_, inp):
        j, c = inp
        if ray_sharding is not None:
            c = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
                a, NamedSharding(ray_sharding.mesh, P(*ray_sharding.spec, *([None] * (a.ndim - 1))))), c)
        c = {**shared, **c}
        del j
        out = render_rays(field_apply, params, c["o"], c["d"], c["t"], key, light_dir=c.get("light"),
                          optical_axis=c.get("axis"), bg=c.get("bg"), ray_ids=c["ids"], **render_kw)
        return None, {name: out[name] for name in TRAIN_KEYS if name in out}

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    _, ys = jax.lax.scan(body, None, (jnp.arange(nc), xs))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape((nc * chunk,) + a.shape[2:])[:r], ys)


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------

_IMAGE_KEYS = ("rgb", "depth", "distance", "opacity", "normal_image")
# render_rays keyword arguments that are static (Python values) in an image renderer; everything
# else it takes (bg, occupancy, light_dir, ambient, shading, level_mask) is a traced argument.
_STATIC_RENDER_KW = ("num_samples", "bound", "min_near", "jitter", "normal_eps", "compute_normals",
                     "coarse_samples")
_TRACED_RENDER_KW = ("bg", "occupancy", "light_dir", "ambient", "shading", "level_mask")


def _render_chunks(field_apply, params, origins, directions, times, key, chunk, axis, static_kw, traced_kw):
    """lax.map over static chunks of rays [N, ...] (N a multiple of chunk); per-ray outputs only."""
    n = origins.shape[0]
    nc = n // chunk

    def one(args):
        o, d, t, ids = args  # ids: the rays' indices in the image (their jitter does not depend on the chunk)
        out = render_rays(field_apply, params, o, d, t, key, optical_axis=axis, ray_ids=ids, **static_kw, **traced_kw)
        return {name: out[name] for name in _IMAGE_KEYS}

    out = jax.lax.map(one, (origins.reshape(nc, chunk, 3), directions.reshape(nc, chunk, 3),
                            times.reshape(nc, chunk), jnp.arange(n, dtype=jnp.uint32).reshape(nc, chunk)))
    return jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), out)


@functools.lru_cache(maxsize=64)
def _compiled_image_renderer(field_apply, h, w, chunk, mesh, static_items, traced_names):
    """One jitted renderer per (field, size, chunk, mesh, static settings, which traced args are given)."""
    static_kw = dict(static_items)
    n = h * w
    ndev = 1 if mesh is None else mesh.shape["data"]
    chunk = min(chunk, -(-n // ndev))
    per = ndev * chunk
    padded = -(-n // per) * per

    def rays(pose, K, t):
        o, d = camera_rays(pose, K, h, w)
        o = jnp.pad(o.reshape(-1, 3), ((0, padded - n), (0, 0)))
        # padded rays get a valid unit direction so every value stays finite
        d = jnp.pad(d.reshape(-1, 3), ((0, padded - n), (0, 0)), constant_values=1.0 / np.sqrt(3.0))
        return o, d, jnp.full((padded,), t, jnp.float32)

    def finish(out):
        return {k: v[:n].reshape((h, w) + v.shape[1:]) for k, v in out.items()}

    if mesh is None:
        @jax.jit
        def render(params, pose, K, t, key, traced):
            o, d, tt = rays(pose, K, t)
            kw = dict(static_kw, jitter=static_kw.get("jitter", False) and key is not None)
            axis = jnp.asarray(pose, jnp.float32)[2, :3]
            return finish(_render_chunks(field_apply, params, o, d, tt, key, chunk, axis, kw, traced))

        return render

    rep = NamedSharding(mesh, P())

    @functools.partial(jax.jit, out_shardings=rep)
    def render_sharded(params, pose, K, t, key, traced):
        del key  # sharded renders are deterministic (evaluation)
        o, d, tt = rays(pose, K, t)
        axis = jnp.asarray(pose, jnp.float32)[2, :3]
        kw = dict(static_kw, jitter=False)

        def local(params, o, d, tt, axis, traced):
            return _render_chunks(field_apply, params, o, d, tt, None, chunk, axis, kw, traced)

        sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data"), P(), P()),
                                out_specs=P("data"))
        return finish(sharded(params, o, d, tt, axis, traced))

    return render_sharded


def make_image_renderer(field_apply, h, w, *, chunk=4096, mesh=None, **render_kw):
    """A jitted fn(params, pose [4,4], K [3,3], t scalar, key or None) -> dict(rgb [H,W,3], depth [H,W]
    (z-depth), distance [H,W] (along the ray), opacity [H,W], normal_image [H,W,3]).

    render_kw are render_rays keywords. The compiled program is cached per (field_apply, size, chunk,
    mesh, static settings): the arrays among render_kw (bg, occupancy, light_dir, ambient, shading,
    level_mask) are passed as arguments, so renderers built again with other values of them reuse it
    (render_image does not re-jit per call). Rays are processed in static chunks of `chunk`
    (lax.map). With a `mesh` (axis "data"), the rays are split over the devices with shard_map (params
    replicated); each device maps over its own chunks, so the result equals the 1-device result ray
    for ray. Keys: deterministic renders pass key=None (jitter is then off).
    """
    unknown = set(render_kw) - set(_STATIC_RENDER_KW) - set(_TRACED_RENDER_KW)
    if unknown:
        raise ValueError(f"four_d/render.py make_image_renderer: unknown render arguments {sorted(unknown)}")
    static = tuple(sorted((k, v) for k, v in render_kw.items() if k in _STATIC_RENDER_KW))
    traced = {k: v for k, v in render_kw.items() if k in _TRACED_RENDER_KW and v is not None}
    if isinstance(traced.get("shading"), str):
        traced["shading"] = field_lib.shading_index(traced["shading"])
    traced = {k: jnp.asarray(v) for k, v in traced.items()}
    fn = _compiled_image_renderer(field_apply, int(h), int(w), int(chunk), mesh, static, tuple(sorted(traced)))

    def render(params, pose, K, t, key=None):
        return fn(params, pose, K, jnp.float32(t), key, traced)

    # the cached jitted program and its traced arguments: fn.compiled(params, pose, K, t, key, fn.traced)
    render.compiled, render.traced = fn, traced
    return render


def render_image(field_apply, params, pose, K, h, w, t, key=None, *, chunk=4096, mesh=None, **render_kw):
    """Render one image [H, W] at time t (see make_image_renderer; the compiled program is cached)."""
    return make_image_renderer(field_apply, h, w, chunk=chunk, mesh=mesh, **render_kw)(params, pose, K, t, key)


# ------------------------------------------------------------------------------------------------
# regularisers (animate124.md section 2)
# ------------------------------------------------------------------------------------------------


def normal_tv_loss(normal_image):
    """Total variation of a normal image [..., H, W, 3]: mean squared neighbour differences (rows + cols)."""
    dy = normal_image[..., 1:, :, :] - normal_image[..., :-1, :, :]
    dx = normal_image[..., :, 1:, :] - normal_image[..., :, :-1, :]
    return jnp.mean(dy**2) + jnp.mean(dx**2)


def gaussian_blur(image, kernel_size=9, sigma=None):
    """Separable Gaussian blur of [..., H, W, C] with reflect padding (torchvision gaussian_blur).

    sigma defaults to torchvision's 0.3 ((k - 1) / 2 - 1) + 0.8 (1.7 for the official kernel 9).
    """
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    r = kernel_size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), jnp.float32)
    nd = image.ndim
    pad = [(0, 0)] * nd
    pad[nd - 3] = (r, r)
    pad[nd - 2] = (r, r)
    p = jnp.pad(image, pad, mode="reflect")
    h, w = image.shape[-3], image.shape[-2]
    rows = sum(k[i] * p[..., i : i + h, :, :] for i in range(kernel_size))
    return sum(k[i] * rows[..., :, i : i + w, :] for i in range(kernel_size))


def normal_smooth_loss(normal_image, kernel_size=9):
    """MSE between a normal image [..., H, W, 3] and its Gaussian blur (official kernel 9).

    Official `F.mse_loss(pred, TF.gaussian_blur(pred, 9))`: the gradient flows through the blurred
    image too (not detached), i.e. d/dx mean((x - Gx)^2) = 2 (I - G)^T (x - Gx) / n.
    """
    blurred = gaussian_blur(normal_image, kernel_size)
    return jnp.mean((normal_image - blurred) ** 2)


def regularisers(out, reg, *, num_samples, step=0, iterations=1, image_shape=None):
    """Weighted Animate124 regularisers of a render_rays / render_rays_chunked output.

    reg: mapping with lambda_orient, lambda_entropy, lambda_normal_tv, lambda_normal_smooth and
    optionally normal_smooth_kernel (official 9). Orientation = lambda mean_samples(sg(w) max(0,
    n.d)^2) and entropy = lambda min(1, 2 step / iterations) mean_samples(H(w)) (official), both from
    the per-ray sums orient_sum / entropy_sum over R rays x num_samples samples. Normal-image terms
    need the rays to form an image: image_shape (H, W) with R = H W (or a batch [B, H, W]); skipped
    when None. Returns dict of weighted terms and "total".
    """
    terms = {}
    count = out["orient_sum"].shape[0] * int(num_samples)
    if reg["lambda_orient"] > 0:
        terms["orient"] = reg["lambda_orient"] * jnp.sum(out["orient_sum"]) / count
    if reg["lambda_entropy"] > 0:
        ramp = jnp.minimum(1.0, 2.0 * step / max(iterations, 1))
        terms["entropy"] = reg["lambda_entropy"] * ramp * jnp.sum(out["entropy_sum"]) / count
    if image_shape is not None:
        nimg = out["normal_image"].reshape(tuple(image_shape) + (3,))
        if reg["lambda_normal_tv"] > 0:
            terms["normal_tv"] = reg["lambda_normal_tv"] * normal_tv_loss(nimg)
        if reg["lambda_normal_smooth"] > 0:
            kernel = reg["normal_smooth_kernel"] if "normal_smooth_kernel" in reg else 9
            terms["normal_smooth"] = reg["lambda_normal_smooth"] * normal_smooth_loss(nimg, kernel)
    terms["total"] = sum(terms.values()) if terms else jnp.float32(0.0)
    return terms
