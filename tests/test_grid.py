"""Tests for kernels/grid.py against an independent brute-force NumPy implementation of the official
gridencoder indexing (explicit loops over points, levels and corners; uint32 arithmetic emulated with
Python ints). Tolerances: lookups 1e-6 absolute (float32 weights vs float64 reference, table values
in [-1, 1]); gradients 1e-6."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import grid

# Official per-level resolutions and table size (animate124.md section 1).
OFFICIAL_RES = (16, 23, 31, 43, 59, 81, 112, 154, 213, 295, 407, 562, 777, 1073, 1483, 2048)
OFFICIAL_TOTAL = 903_480

# Small specs that exercise every indexing regime: dense levels, 3D modulo aliasing, dropped z,
# dropped y (R + 1 > table size), and capped dense levels.
TILED_SMALL = grid.GridSpec(num_levels=5, features_per_level=2, base_resolution=4, finest_resolution=300,
                            log2_table_size=8, mode="tiled")
DENSE_SMALL = grid.GridSpec(num_levels=4, features_per_level=3, base_resolution=4, finest_resolution=40,
                            mode="dense", max_dense_resolution=16)


def _ref_level_params(spec):
    """(scale as float32, resolution, table size) per level, computed the CUDA way (float32 scale)."""
    if spec.num_levels > 1:
        per_level = np.exp2(np.log2(spec.finest_resolution / spec.base_resolution) / (spec.num_levels - 1))
    else:
        per_level = 1.0
    s = np.log2(per_level)
    out = []
    for level in range(spec.num_levels):
        scale = np.float32(np.exp2(level * s) * spec.base_resolution - 1.0)
        res = math.ceil(float(scale)) + 1
        if spec.mode == "dense":
            if res > spec.max_dense_resolution:
                res = spec.max_dense_resolution
                scale = np.float32(res - 1)
            size = (res + 1) ** 3
        else:
            size = min(2**spec.log2_table_size, (res + 1) ** 3)
            size = -(-size // 8) * 8
        out.append((scale, res, size))
    return out


def _ref_lookup(table, points, spec, cotangent=None):
    """Brute-force lookup; with `cotangent` [N, L*F] also returns d<out, cot>/d table."""
    table = np.asarray(table, np.float64)
    feats = spec.features_per_level
    params = _ref_level_params(spec)
    out = np.zeros((len(points), spec.num_levels * feats))
    grad = np.zeros_like(table)
    for n, p in enumerate(np.asarray(points, np.float32)):
        u = (p + np.float32(spec.bound)) / np.float32(2 * spec.bound)
        if np.any(u < 0) or np.any(u > 1):
            continue
        offset = 0
        for level, (scale, res, size) in enumerate(params):
            pos = u * scale + np.float32(0.5)
            base = np.floor(pos)
            frac = (pos - base).astype(np.float64)
            for k in range(8):
                w, idx, stride = 1.0, 0, 1
                for d in range(3):
                    bit = (k >> d) & 1
                    w *= frac[d] if bit else 1.0 - frac[d]
                    if stride <= size:
                        idx = (idx + (int(base[d]) + bit) * stride) & 0xFFFFFFFF
                    stride *= res + 1
                row = offset + idx % size
                out[n, level * feats:(level + 1) * feats] += w * table[row]
                if cotangent is not None:
                    grad[row] += w * cotangent[n, level * feats:(level + 1) * feats]
            offset += size
    return out, grad


def test_official_resolutions_and_entries():
    spec = grid.GridSpec()
    assert spec.level_resolutions == OFFICIAL_RES
    assert spec.total_entries == OFFICIAL_TOTAL
    assert spec.output_dim == 32
    np.testing.assert_allclose(spec.per_level_scale, 1.38191, atol=1e-5)
    # Dense levels 0-2 (rounded up to multiples of 8), then capped at 2^16.
    assert spec.level_table_sizes == (4920, 13824, 32768) + (65536,) * 13
    assert spec.level_offsets[-1] == OFFICIAL_TOTAL and spec.level_offsets[3] == 4920 + 13824 + 32768
    # Levels 9-15 drop z (animate124.md); levels 3-8 keep the full 3D index.
    strides = spec.level_strides
    assert all(s[2] == 0 for s in strides[9:]) and all(s[2] > 0 for s in strides[:9])
    # Independent float32 (CUDA-style) computation gives the same resolutions and sizes.
    ref = _ref_level_params(spec)
    assert tuple(r for _, r, _ in ref) == OFFICIAL_RES
    assert sum(s for _, _, s in ref) == OFFICIAL_TOTAL


def test_dense_spec_caps_resolution():
    spec = grid.GridSpec(mode="dense", max_dense_resolution=128)
    assert spec.level_resolutions == OFFICIAL_RES[:7] + (128,) * 9
    assert spec.total_entries == sum((r + 1) ** 3 for r in spec.level_resolutions)
    assert spec.level_scales[-1] == 127.0


def test_spec_is_hashable_and_validates():
    assert hash(grid.GridSpec()) == hash(grid.GridSpec())
    with pytest.raises(ValueError, match="mode"):
        grid.GridSpec(mode="hash")
    with pytest.raises(ValueError, match="finest_resolution"):
        grid.GridSpec(base_resolution=32, finest_resolution=16)
    with pytest.raises(ValueError, match="table must have shape"):
        grid.grid_lookup(jnp.zeros((10, 2)), jnp.zeros((1, 3)), TILED_SMALL)


def test_small_specs_cover_all_regimes():
    strides = TILED_SMALL.level_strides
    sizes = TILED_SMALL.level_table_sizes
    res = TILED_SMALL.level_resolutions
    assert (res[0] + 1) ** 3 <= 256 and strides[0][2] > 0  # dense level
    assert any(s[2] > 0 and (r + 1) ** 3 > t for s, r, t in zip(strides, res, sizes))  # 3D modulo
    assert any(s[1] > 0 and s[2] == 0 for s in strides)  # z dropped
    assert strides[-1] == (1, 0, 0)  # y dropped too (R + 1 = 301 > 256)
    assert DENSE_SMALL.level_resolutions[-1] == 16


@pytest.mark.parametrize("spec", [TILED_SMALL, DENSE_SMALL], ids=["tiled", "dense"])
def test_lookup_matches_bruteforce(spec, rng):
    table = rng.uniform(-1, 1, (spec.total_entries, spec.features_per_level)).astype(np.float32)
    pts = rng.uniform(-1.0, 1.0, (40, 3)).astype(np.float32)
    pts[0] = [-1.0, -1.0, -1.0]  # both box corners are inside
    pts[1] = [1.0, 1.0, 1.0]
    got = jax.jit(grid.grid_lookup, static_argnums=2)(jnp.asarray(table), jnp.asarray(pts), spec)
    want, _ = _ref_lookup(table, pts, spec)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
    assert np.abs(want[:2]).max() > 0.1


def test_official_spec_matches_bruteforce(rng):
    spec = grid.GridSpec()
    table = rng.uniform(-1, 1, (spec.total_entries, 2)).astype(np.float32)
    pts = rng.uniform(-1.0, 1.0, (6, 3)).astype(np.float32)
    got = grid.grid_lookup(jnp.asarray(table), jnp.asarray(pts), spec)
    want, _ = _ref_lookup(table, pts, spec)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)


def test_vertex_returns_vertex_value(rng):
    # base 9 -> scale 8 (exact binary fractions): u = (i - 0.5) / 8 puts pos exactly on vertex i.
    for mode in ("dense", "tiled"):
        spec = grid.GridSpec(num_levels=1, features_per_level=2, base_resolution=9, finest_resolution=9,
                             mode=mode, log2_table_size=10)
        assert spec.level_scales == (8.0,)
        table = rng.uniform(-1, 1, (spec.total_entries, 2)).astype(np.float32)
        ijk = rng.integers(1, 9, (10, 3))
        x = 2.0 * (ijk - 0.5) / 8.0 - 1.0
        got = np.asarray(grid.grid_lookup(jnp.asarray(table), jnp.asarray(x, jnp.float32), spec))
        rows = (ijk[:, 0] + 10 * ijk[:, 1] + 100 * ijk[:, 2]) % spec.total_entries
        np.testing.assert_array_equal(got, table[rows])


def test_table_gradient_is_scattered_weights(rng):
    spec = TILED_SMALL
    table = rng.uniform(-1, 1, (spec.total_entries, 2)).astype(np.float32)
    pts = rng.uniform(-1.1, 1.1, (25, 3)).astype(np.float32)  # some outside: they get no gradient
    cot = rng.normal(size=(25, spec.output_dim)).astype(np.float32)

    def loss(t):
        return jnp.sum(grid.grid_lookup(t, jnp.asarray(pts), spec) * cot)

    got = np.asarray(jax.grad(loss)(jnp.asarray(table)))
    _, want = _ref_lookup(table, pts, spec, cotangent=cot.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.count_nonzero(want) > 100


def test_outside_points_give_zero(rng):
    spec = TILED_SMALL
    table = jnp.asarray(rng.uniform(0.5, 1, (spec.total_entries, 2)).astype(np.float32))
    x = jnp.array([[1.0001, 0.0, 0.0], [0.0, -1.01, 0.0], [0.0, 0.0, 3.0], [np.nan, 0, 0], [0.0, 0.0, 0.0]],
                  jnp.float32)
    out = np.asarray(grid.grid_lookup(table, x, spec))
    np.testing.assert_array_equal(out[:4], 0.0)
    assert np.all(out[4] > 0.5 - 1e-6)  # interpolation of values in [0.5, 1]
    g = jax.grad(lambda xx: jnp.sum(grid.grid_lookup(table, xx, spec)))(x)
    np.testing.assert_array_equal(np.asarray(g)[:3], 0.0)


def test_level_mask_and_leading_dims(rng):
    spec = TILED_SMALL
    table = jnp.asarray(rng.uniform(-1, 1, (spec.total_entries, 2)).astype(np.float32))
    x = jnp.asarray(rng.uniform(-1, 1, (2, 3, 3)).astype(np.float32))
    full = np.asarray(grid.grid_lookup(table, x, spec))
    assert full.shape == (2, 3, spec.output_dim)
    mask = np.array([1, 1, 0, 1, 0], np.float32)
    masked = np.asarray(grid.grid_lookup(table, x, spec, level_mask=jnp.asarray(mask)))
    np.testing.assert_array_equal(masked, full * np.repeat(mask, 2))


def test_init_table_distribution():
    spec = grid.GridSpec()
    t = np.asarray(grid.init_table(jax.random.key(0), spec))
    assert t.shape == (OFFICIAL_TOTAL, 2) and t.dtype == np.float32
    assert t.min() >= -1e-4 and t.max() <= 1e-4
    # U(-a, a): mean 0 (std of the mean a / sqrt(3 n) ~ 4.3e-8), std a / sqrt(3) = 5.77e-5.
    assert abs(t.mean()) < 5e-7
    np.testing.assert_allclose(t.std(), 1e-4 / np.sqrt(3), rtol=1e-2)
    t2 = np.asarray(grid.init_table(jax.random.key(0), spec))
    np.testing.assert_array_equal(t, t2)


def test_grid_corners_reconstructs_lookup(rng):
    spec = TILED_SMALL
    table = rng.uniform(-1, 1, (spec.total_entries, 2)).astype(np.float32)
    x = rng.uniform(-1.1, 1.1, (30, 3)).astype(np.float32)
    rows, w, inside = (np.asarray(a) for a in grid.grid_corners(jnp.asarray(x), spec))
    assert rows.shape == (30, spec.num_levels, 8) and rows.dtype == np.int32
    np.testing.assert_array_equal(inside, np.all(np.abs(x) <= 1.0, axis=-1))
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)  # partition of unity
    recon = np.einsum("nlk,nlkf->nlf", w, table[rows]).reshape(30, -1) * inside[:, None]
    want, _ = _ref_lookup(table, x, spec)
    np.testing.assert_allclose(recon, want, atol=1e-6, rtol=0)
