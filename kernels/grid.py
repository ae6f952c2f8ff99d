"""Multi-resolution 3D feature grid with trilinear interpolation (official "tiled" indexing or dense).

Official source (facts in /work/shared/reference/animate124.md section 1): Animate124 uses the
stable-dreamfusion `GridEncoder(gridtype='tiled', align_corners=False)`:

- inputs x in [-bound, bound] are mapped to u = (x + bound) / (2 bound) in [0, 1]; a point with any
  coordinate of u outside [0, 1] gets 0 features (and no gradient);
- level l: scale = 2^(l log2(per_level_scale)) * base - 1, resolution R = ceil(scale) + 1,
  pos = u * scale + 0.5, corners floor(pos) + {0, 1} per axis, trilinear weights from frac(pos);
- index = x + y (R+1) + z (R+1)^2, where a dimension is added only while the running stride is
  <= the level's table size T_l (fine levels therefore drop z, and even y when R+1 > T_l), all in
  uint32 arithmetic, then taken modulo T_l. There is no hash;
- T_l = min(2^log2_table_size, (R+1)^3) rounded up to a multiple of 8 (`params_in_level` in
  gridencoder/grid.py). The CUDA kernel takes T_l from the offsets (offsets[l+1] - offsets[l]), i.e.
  the *rounded* size, both for the stride test and the modulo, so we do the same;
- the table is [sum_l T_l, F], initialised U(-1e-4, 1e-4); the output is level-major [N, L*F].

"dense" mode is the clean alternative: a true (R+1)^3 table per level, no modulo, no rounding, with the
resolution capped at `max_dense_resolution` (a capped level uses scale = R - 1, an integer lattice).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

GRID_MODES = ("tiled", "dense")
# Official embedding init: uniform(-1e-4, 1e-4) (GridEncoder.reset_parameters).
INIT_RANGE = 1e-4
# Snap a level scale to the nearest integer when float64 rounding leaves it this close (the finest
# default level comes out as 2046.9999999999986 instead of 2047, which would give R = 2049).
_SNAP_TOL = 1e-9


def _snap(value):
    nearest = round(value)
    return float(nearest) if abs(value - nearest) <= _SNAP_TOL * max(1.0, abs(value)) else value


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Static description of a multi-resolution grid (hashable: usable as a static jit argument).

    Defaults are the official Animate124 grid: 16 levels x 2 features, base 16, finest 2048 (the
    official `desired_resolution` is 2048 * bound; pass finest_resolution accordingly for bound != 1),
    log2 table size 16, "tiled" indexing, bound 1.
    """

    num_levels: int = 16
    features_per_level: int = 2
    base_resolution: int = 16
    finest_resolution: int = 2048
    log2_table_size: int = 16
    mode: str = "tiled"
    max_dense_resolution: int = 128
    bound: float = 1.0

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"kernels/grid.py GridSpec: {msg}")

        if self.mode not in GRID_MODES:
            bad(f"mode must be one of {GRID_MODES}, got {self.mode!r}")
        if int(self.num_levels) < 1:
            bad(f"num_levels must be >= 1, got {self.num_levels}")
        if int(self.features_per_level) < 1:
            bad(f"features_per_level must be >= 1, got {self.features_per_level}")
        if int(self.base_resolution) < 2:
            bad(f"base_resolution must be >= 2, got {self.base_resolution}")
        if self.finest_resolution < self.base_resolution:
            bad(f"finest_resolution {self.finest_resolution} < base_resolution {self.base_resolution}")
        if not 3 <= int(self.log2_table_size) <= 30:
            bad(f"log2_table_size must be in [3, 30], got {self.log2_table_size}")
        if int(self.max_dense_resolution) < 2:
            bad(f"max_dense_resolution must be >= 2, got {self.max_dense_resolution}")
        if not self.bound > 0:
            bad(f"bound must be > 0, got {self.bound}")
        if self.total_entries >= 2**31:
            bad(f"total_entries {self.total_entries} does not fit int32 indices; lower the "
                "resolutions, the table size or max_dense_resolution")

    @property
    def per_level_scale(self):
        """Resolution growth per level: (finest / base)^(1 / (L - 1)) (1 for a single level)."""
        if self.num_levels == 1:
            return 1.0
        return float(np.exp2(np.log2(self.finest_resolution / self.base_resolution)
                             / (self.num_levels - 1)))

    @property
    def level_scales(self):
        """Per-level lattice scale (float): pos = u * scale + 0.5. Capped dense levels use R - 1."""
        log2_s = math.log2(self.per_level_scale)
        scales = []
        for level in range(self.num_levels):
            scale = _snap(2.0 ** (level * log2_s) * self.base_resolution - 1.0)
            if self.mode == "dense" and math.ceil(scale) + 1 > self.max_dense_resolution:
                scale = float(self.max_dense_resolution - 1)
            scales.append(scale)
        return tuple(scales)

    @property
    def level_resolutions(self):
        """Per-level resolution R = ceil(scale) + 1 (ints); the lattice has R + 1 vertices per axis."""
        return tuple(int(math.ceil(s)) + 1 for s in self.level_scales)

    @property
    def level_table_sizes(self):
        """Per-level number of table rows T_l (see the module docstring)."""
        sizes = []
        for res in self.level_resolutions:
            full = (res + 1) ** 3
            if self.mode == "dense":
                sizes.append(full)
            else:
                sizes.append(int(math.ceil(min(2**self.log2_table_size, full) / 8) * 8))
        return tuple(sizes)

    @property
    def level_offsets(self):
        """Row offset of each level in the table, L + 1 entries (the last one is total_entries)."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.level_table_sizes)]))

    @property
    def total_entries(self):
        """Rows of the table (903,480 for the official defaults)."""
        return int(sum(self.level_table_sizes))

    @property
    def output_dim(self):
        return self.num_levels * self.features_per_level

    @property
    def level_strides(self):
        """Per-level index multipliers for (x, y, z): 0 for a dimension the tiled index drops."""
        strides = []
        for res, size in zip(self.level_resolutions, self.level_table_sizes):
            row, stride = [], 1
            for _ in range(3):
                # The official loop adds a dimension only while the running stride fits the table.
                row.append(stride if stride <= size else 0)
                stride *= res + 1
            strides.append(tuple(row))
        return tuple(strides)


def init_table(key, spec, dtype=jnp.float32):
    """Official initialisation: [total_entries, F] uniform in (-1e-4, 1e-4)."""
    return jax.random.uniform(key, (spec.total_entries, spec.features_per_level), dtype,
                              minval=-INIT_RANGE, maxval=INIT_RANGE)


# Corner bit patterns: corner k takes +1 on axis d when bit d of k is set (official order).
_CORNERS = np.array([[(k >> d) & 1 for d in range(3)] for k in range(8)], np.uint32)  # [8, 3]


def _modulo_masks(spec):
    """uint32 masks m_l with lin & m_l == lin % T_l for every index lin a level can produce, or None.

    A level whose whole lattice fits its table (every lin <= (R+1)^3 - 1 < T_l, all dimensions used)
    needs no modulo (mask all ones); a capped tiled level has T_l = 2^log2_table_size (a power of two,
    already a multiple of 8), where the modulo of the wrapped uint32 index is its low bits. An integer
    division per corner is the most expensive op of the lookup on CPU; this keeps the exact result.
    """
    masks = []
    for res, size, strides in zip(spec.level_resolutions, spec.level_table_sizes, spec.level_strides):
        full = (res + 1) ** 3
        if all(strides) and full <= size:
            masks.append(0xFFFFFFFF)
        elif size & (size - 1) == 0:
            masks.append(size - 1)
        else:
            return None
    return np.array(masks, np.uint32)


def grid_corners(x, spec):
    """Table rows and trilinear weights of the 8 lattice corners of every level.

    Args:
      x: [N, 3] points in world units.
      spec: GridSpec (static).

    Returns:
      (rows [N, L, 8] int32 into a [spec.total_entries, F] table, weights [N, L, 8] float32,
       inside [N] bool). grid_lookup(table, x, spec) = sum_k weights[..., k] * table[rows[..., k]] for
      inside points and 0 for outside ones. Corner k takes +1 on axis d when bit d of k is set.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[-1] != 3:
        raise ValueError(f"kernels/grid.py grid_corners: x must have shape [N, 3], got {x.shape}")
    u = (x + spec.bound) / (2.0 * spec.bound)  # [N, 3]
    inside = jnp.all((u >= 0.0) & (u <= 1.0), axis=-1)  # NaN compares False -> outside
    u = jnp.where(inside[:, None], u, 0.0)  # keeps floor/uint32 well defined for outside points

    scales = jnp.asarray(np.array(spec.level_scales, np.float32))  # [L]
    pos = u[:, None, :] * scales[None, :, None] + 0.5  # [N, L, 3], >= 0.5
    base = jnp.floor(pos)
    frac = pos - base

    corners = jnp.asarray(_CORNERS)  # [8, 3]
    cell = base.astype(jnp.uint32)[:, :, None, :] + corners[None, None]  # [N, L, 8, 3]
    strides = jnp.asarray(np.array(spec.level_strides, np.uint32))  # [L, 3]
    sizes = jnp.asarray(np.array(spec.level_table_sizes, np.uint32))  # [L]
    offsets = jnp.asarray(np.array(spec.level_offsets[:-1], np.uint32))  # [L]
    # uint32 products wrap exactly like the CUDA kernel's before the modulo.
    lin = jnp.sum(cell * strides[None, :, None, :], axis=-1, dtype=jnp.uint32)  # [N, L, 8]
    masks = _modulo_masks(spec)
    if masks is not None:  # lin % T_l as a bit mask (exact, see _modulo_masks): no integer division
        rows = ((lin & jnp.asarray(masks)[None, :, None]) + offsets[None, :, None]).astype(jnp.int32)
    else:
        rows = (lin % sizes[None, :, None] + offsets[None, :, None]).astype(jnp.int32)

    # Trilinear weights: product over axes of frac (bit set) or 1 - frac (bit clear).
    bits = corners.astype(bool)  # [8, 3]
    w = jnp.where(bits[None, None], frac[:, :, None, :], 1.0 - frac[:, :, None, :])
    return rows, jnp.prod(w, axis=-1), inside


def grid_lookup(table, x, spec, level_mask=None):
    """Trilinearly interpolate every level of the grid at points x.

    Args:
      table: [spec.total_entries, F] features (any float dtype; interpolation runs in float32).
      x: [..., 3] points in world units; inside iff every coordinate is in [-bound, bound].
      spec: GridSpec (static).
      level_mask: optional [L] 0/1 (or any weights) multiplying each level's features, for the
        official coarse-to-fine schedule (`--grid_levels_mask`).

    Returns:
      [..., L * F] float32, level-major (features of level l at l*F:(l+1)*F); 0 for outside points.
    """
    if table.ndim != 2 or table.shape != (spec.total_entries, spec.features_per_level):
        raise ValueError(f"kernels/grid.py grid_lookup: table must have shape "
                         f"({spec.total_entries}, {spec.features_per_level}) for {spec}, got {table.shape}")
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"kernels/grid.py grid_lookup: x must have shape [..., 3], got {x.shape}")
    num_levels, feats = spec.num_levels, spec.features_per_level
    if level_mask is not None:
        level_mask = jnp.asarray(level_mask, jnp.float32)
        if level_mask.shape != (num_levels,):
            raise ValueError(f"kernels/grid.py grid_lookup: level_mask must have shape ({num_levels},), "
                             f"got {level_mask.shape}")
    lead = x.shape[:-1]
    rows, w, inside = grid_corners(x.reshape(-1, 3), spec)
    vals = jnp.take(table, rows, axis=0, mode="clip").astype(jnp.float32)  # [N, L, 8, F]
    out = jnp.einsum("nlk,nlkf->nlf", w, vals)  # [N, L, F]
    if level_mask is not None:
        out = out * level_mask[None, :, None]
    out = jnp.where(inside[:, None, None], out, 0.0)
    return out.reshape(lead + (num_levels * feats,))
