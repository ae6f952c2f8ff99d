"""4D grid encoding: T multi-resolution 3D grids, linearly interpolated in time (paper Eq. 1).

Official source (animate124.md section 1, dnerf/network_4dgrid.py): `encoder[0..T-1]` are independent
tiled GridEncoders; for t in [0, 1], g = t (T - 1) and

    h(x, t) = enc[ceil g](x) * (g - floor g) + enc[floor g](x) * (1 - (g - floor g)).

Only the two neighbouring grids are gathered per point: the T tables live in one [T, E, F] parameter,
the trilinear corner rows e of every level are computed once, and ONE gather reads the table at the
(time grid, row) pairs (floor g, e) and (ceil g, e) of every corner ([N, L, 8, 2] pairs; its
gradient is one scatter-add). A flat row offset t E overflows int32 once T E >= 2^31 (a dense grid
with max_dense_resolution >= 152 and T = 64 is a 16.5 GiB table that fits on one large GPU), so
such tables are indexed with (t, e) pairs of the [T, E, F] table (e < E < 2^31 is guaranteed by
GridSpec); smaller ones (checked statically) use the flat index of the [T E, F] view, which is the
faster gather on CPU.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from kernels.grid import INIT_RANGE, GridSpec, grid_corners

__all__ = [
    "Grid4D",
    "grid_corners",
    "time_grid_pair",
    "grid_spec_from_config",
    "level_mask_for_step",
    "static_to_dynamic",
    "temporal_tv_loss",
]

def _check_level_mask(level_mask, num_levels):
    if level_mask is None:
        return None
    level_mask = jnp.asarray(level_mask, jnp.float32)
    if level_mask.shape != (num_levels,):
        raise ValueError(
            f"four_d/grid4d.py: level_mask must have shape ({num_levels},), got {level_mask.shape}"
        )
    return level_mask


# Below this many rows in total the flat row index t E + e is a safe int32.
_FLAT_LIMIT = 2**31


def time_grid_pair(t, num_time_grids):
    """The two neighbouring time grids of times t (official common_forward_func).

    t [N] (clamped to [0, 1]) -> (pair [N, 2] int32 = (floor g, ceil g) with g = t (T - 1), frac [N]
    float32 = g - floor g, the weight of the ceil grid; official dist_floor). Both indices are in
    [0, T - 1]; for an integer g they coincide.
    """
    num_t = int(num_time_grids)
    g = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0) * (num_t - 1)
    lo = jnp.floor(g)
    hi = jnp.ceil(g)
    pair = jnp.stack([lo, hi], axis=-1).astype(jnp.int32)
    return jnp.clip(pair, 0, num_t - 1), g - lo


def _init_tables(key, shape, dtype=jnp.float32):
    # Official GridEncoder.reset_parameters: uniform(-1e-4, 1e-4), independently for every time grid.
    return jax.random.uniform(key, shape, dtype, minval=-INIT_RANGE, maxval=INIT_RANGE)


class Grid4D(nn.Module):
    """T time grids of one GridSpec; feature linear in time between the two neighbouring grids.

    Param "tables" [T, spec.total_entries, F]. T = 1 is the static stage (t is ignored).
    """

    spec: GridSpec
    num_time_grids: int = 64

    @nn.compact
    def __call__(self, x, t, level_mask=None):
        """x [N, 3] world points, t [N] (or scalar) in [0, 1] -> features [N, L*F] float32, level-major.

        Points outside [-bound, bound]^3 get 0; t is clamped to [0, 1]. level_mask [L] multiplies
        each level's features (coarse-to-fine schedule, level_mask_for_step).
        """
        spec, num_t = self.spec, self.num_time_grids
        if not isinstance(spec, GridSpec):
            raise ValueError(f"four_d/grid4d.py Grid4D: spec must be a kernels.grid.GridSpec, "
                             f"got {type(spec).__name__}")
        if int(num_t) != num_t or num_t < 1:
            raise ValueError(f"four_d/grid4d.py Grid4D: num_time_grids must be an integer >= 1, got {num_t!r}")
        num_t = int(num_t)
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"four_d/grid4d.py Grid4D: x must have shape [N, 3], got {x.shape}")
        level_mask = _check_level_mask(level_mask, spec.num_levels)
        shape = (num_t, spec.total_entries, spec.features_per_level)
        tables = self.param("tables", _init_tables, shape)
        n = x.shape[0]
        rows, w, inside = grid_corners(x, spec)  # rows [N, L, 8] in [0, E)
        # Indices are in range by construction (rows < E from grid_corners, time grids clipped to
        # [0, T - 1], T E < 2^31 checked statically for the flat index), so the gathers and their
        # gradient scatters skip bounds handling (mode="fill" masks every one of the N L 8 2 reads and
        # writes, a large share of the lambertian training step on CPU).
        if num_t == 1:
            vals = tables[0].at[rows].get(mode="promise_in_bounds").astype(jnp.float32)  # [N, L, 8, F]
        else:
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
            pair, frac = time_grid_pair(t, num_t)
            if num_t * spec.total_entries < _FLAT_LIMIT:
                # the flat row t E + e fits int32 (checked statically): one gather from the [T E, F] view,
                # measurably faster on CPU than a 2-index gather
                flat = tables.reshape(num_t * spec.total_entries, spec.features_per_level)
                idx = pair[:, None, None, :] * spec.total_entries + rows[..., None]
                both = flat.at[idx].get(mode="promise_in_bounds").astype(jnp.float32)  # [N, L, 8, 2, F]
            else:
                # one gather of (time grid, row) pairs from the [T, E, F] table: no t E product
                both = tables.at[pair[:, None, None, :], rows[..., None]].get(mode="promise_in_bounds")
                both = both.astype(jnp.float32)
            v_lo, v_hi = both[..., 0, :], both[..., 1, :]
            # lerp form: exactly v_lo when both grids agree (a copied static grid renders bit-identically).
            vals = v_lo + frac[:, None, None, None] * (v_hi - v_lo)
        out = jnp.einsum("nlk,nlkf->nlf", w, vals)  # [N, L, F]
        if level_mask is not None:
            out = out * level_mask[None, :, None]
        out = jnp.where(inside[:, None, None], out, 0.0)
        return out.reshape(n, spec.output_dim)


def static_to_dynamic(static_params, num_time_grids):
    """Dynamic-stage params from static-stage ones (official from_pretrained_3d).

    Every "tables" leaf of shape [1, E, F] is copied into all T time grids ([T, E, F]); every other
    leaf (the MLP) is kept as is. Works on a Flax variables dict or its "params" sub-tree.
    """
    flat = traverse_util.flatten_dict(static_params)
    found = 0
    out = {}
    for path, leaf in flat.items():
        if path[-1] == "tables":
            if leaf.ndim != 3 or leaf.shape[0] != 1:
                raise ValueError(
                    f"four_d/grid4d.py static_to_dynamic: {'/'.join(map(str, path))} must be a static "
                    f"[1, E, F] table, got shape {tuple(leaf.shape)}"
                )
            leaf = jnp.broadcast_to(leaf, (int(num_time_grids),) + tuple(leaf.shape[1:]))
            found += 1
        out[path] = leaf
    if not found:
        raise ValueError("four_d/grid4d.py static_to_dynamic: no 'tables' leaf in the given params")
    return traverse_util.unflatten_dict(out)


def temporal_tv_loss(tables, key, spec, num_points=100_000, mode="official"):
    """Temporal total variation between adjacent time grids (paper Eq. 2, official TV_loss, lambda 0.1).

    mode="official" (dnerf/network_4dgrid.py TV_loss, read from the code): over the table rows,
        sum_{i<T-1} mean_rows ||V_i - V_{i+1}||^2 / ((T - 1) L)
    (squared norm over the F features); `key` and `num_points` are unused (may be None).
    mode="points": the same with the encodings at num_points uniform points of [-bound, bound]^3,
        sum_i mean_x ||enc_i(x) - enc_{i+1}(x)||^2 / ((T - 1) L), x drawn with `key`.
    Both are vectorised over the T - 1 pairs; the "points" mode gathers the corners of all pairs at
    once (memory ~ num_points * L * 8 * (T - 1) * F floats). tables: [T, E, F]. Returns a float32 scalar
    (0 when T == 1).
    """
    tables = jnp.asarray(tables)
    if tables.ndim != 3 or tables.shape[1:] != (spec.total_entries, spec.features_per_level):
        raise ValueError(
            f"four_d/grid4d.py temporal_tv_loss: tables must be [T, {spec.total_entries}, "
            f"{spec.features_per_level}], got {tables.shape}"
        )
    num_t = tables.shape[0]
    if num_t < 2:
        return jnp.zeros((), jnp.float32)
    diff = (tables[1:] - tables[:-1]).astype(jnp.float32)  # [T-1, E, F]
    norm = (num_t - 1) * spec.num_levels
    if mode == "official":
        return jnp.sum(jnp.mean(jnp.sum(diff * diff, axis=-1), axis=-1)) / norm
    if mode != "points":
        raise ValueError(
            f"four_d/grid4d.py temporal_tv_loss: mode must be 'official' or 'points', got {mode!r}"
        )
    if key is None:
        raise ValueError("four_d/grid4d.py temporal_tv_loss: mode='points' needs a PRNG key")
    x = jax.random.uniform(key, (int(num_points), 3), minval=-spec.bound, maxval=spec.bound)
    rows, w, inside = grid_corners(x, spec)
    # enc_{i+1} - enc_i is linear in the table difference: interpolate the difference tables directly.
    vals = jnp.take(diff, rows, axis=1, mode="clip")  # [T-1, N, L, 8, F]
    enc = jnp.einsum("nlk,pnlkf->pnlf", w, vals) * inside[None, :, None, None]
    return jnp.sum(jnp.mean(jnp.sum(enc * enc, axis=(-2, -1)), axis=-1)) / norm


def level_mask_for_step(step, num_levels=16, masked_levels=8, mask_iters=3000):
    """Coarse-to-fine level mask [L] float32 (official --grid_levels_mask 8, --grid_levels_mask_iters 3000).

    While step <= mask_iters the last `masked_levels` levels are zeroed (1 elsewhere); afterwards all
    ones. `step` may be a traced integer.
    """
    if not 0 <= masked_levels <= num_levels:
        raise ValueError(
            f"four_d/grid4d.py level_mask_for_step: masked_levels must be in [0, {num_levels}], "
            f"got {masked_levels}"
        )
    fine = jnp.arange(num_levels) >= num_levels - masked_levels
    active = jnp.asarray(step) <= mask_iters
    return jnp.where(jnp.logical_and(active, fine), 0.0, 1.0).astype(jnp.float32)


def grid_spec_from_config(cfg):
    """GridSpec from a configs/four_d.py `grid` section (ignores time_grid_size)."""
    names = {f.name for f in dataclasses.fields(GridSpec)}
    return GridSpec(**{k: v for k, v in cfg.items() if k in names})
