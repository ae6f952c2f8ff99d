"""four_d/grid4d.py: time interpolation (Eq. 1), static -> dynamic, temporal TV (Eq. 2), level mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.four_d import get_config
from four_d.grid4d import (
    Grid4D,
    grid_corners,
    grid_spec_from_config,
    level_mask_for_step,
    static_to_dynamic,
    temporal_tv_loss,
)
from kernels.grid import GridSpec, grid_lookup

SPEC = grid_spec_from_config(get_config("tiny").grid)  # 4 levels x 2 features, finest 64, tiled
T = 4


def _points(rng, n=64, spread=1.1):
    # a few points fall outside [-1, 1]^3 to exercise the zero-outside rule
    return jnp.asarray(rng.uniform(-spread, spread, (n, 3)), jnp.float32)


def _random_tables(rng, num_t=T, spec=SPEC):
    return jnp.asarray(rng.normal(size=(num_t, spec.total_entries, spec.features_per_level)), jnp.float32)


def _apply(tables, x, t, level_mask=None, spec=SPEC):
    model = Grid4D(spec, tables.shape[0])
    return model.apply({"params": {"tables": tables}}, x, t, level_mask)


@pytest.mark.parametrize("mode", ["tiled", "dense"])
def test_grid_corners_reproduce_grid_lookup(rng, mode):
    spec = GridSpec(
        num_levels=3,
        base_resolution=4,
        finest_resolution=40,
        log2_table_size=9,
        mode=mode,
        max_dense_resolution=16,
    )
    table = jnp.asarray(rng.normal(size=(spec.total_entries, 2)), jnp.float32)
    x = _points(rng)
    rows, w, inside = grid_corners(x, spec)
    ours = jnp.einsum("nlk,nlkf->nlf", w, table[rows]) * inside[:, None, None]
    np.testing.assert_allclose(
        np.asarray(ours).reshape(len(x), -1), np.asarray(grid_lookup(table, x, spec)), atol=1e-6
    )


def test_init_shape_and_range():
    params = Grid4D(SPEC, T).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)), jnp.zeros((2,)))
    tables = np.asarray(params["params"]["tables"])
    assert tables.shape == (T, SPEC.total_entries, 2)
    assert np.abs(tables).max() <= 1e-4 and tables.std() > 4e-5  # U(-1e-4, 1e-4): std 5.8e-5
    assert not np.array_equal(tables[0], tables[1])  # independent grids


def test_grid_times_equal_single_grid_lookup(rng):
    tables = _random_tables(rng)
    x = _points(rng)
    for k in range(T):
        out = _apply(tables, x, jnp.full((len(x),), k / (T - 1)))
        np.testing.assert_allclose(np.asarray(out), np.asarray(grid_lookup(tables[k], x, SPEC)), atol=1e-5)


def test_linear_in_time_between_grids(rng):
    tables = _random_tables(rng)
    x = _points(rng)
    enc = np.stack([np.asarray(grid_lookup(tables[k], x, SPEC), np.float64) for k in range(T)])  # [T, N, D]
    t = rng.uniform(0, 1, len(x)).astype(np.float32)  # a different time per point
    g = t.astype(np.float64) * (T - 1)
    lo, frac = np.floor(g).astype(int), g - np.floor(g)
    hi = np.minimum(lo + 1, T - 1)
    n = np.arange(len(x))
    expected = enc[lo, n] * (1 - frac)[:, None] + enc[hi, n] * frac[:, None]
    out = jax.jit(_apply)(tables, x, jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
    # Outside points are exactly zero.
    outside = np.any(np.abs(np.asarray(x)) > 1.0, axis=-1)
    assert outside.any() and np.all(np.asarray(out)[outside] == 0.0)
    # A scalar t broadcasts; t outside [0, 1] is clamped.
    np.testing.assert_allclose(np.asarray(_apply(tables, x, 1.7)), enc[T - 1], atol=1e-5)


def test_single_time_grid_is_static(rng):
    tables = _random_tables(rng, num_t=1)
    x = _points(rng)
    ref = np.asarray(grid_lookup(tables[0], x, SPEC))
    for t in (0.0, 0.37, 1.0):
        np.testing.assert_allclose(np.asarray(_apply(tables, x, t)), ref, atol=1e-6)


def test_static_to_dynamic_gives_the_static_field_at_every_time(rng):
    static = {"params": {"tables": _random_tables(rng, num_t=1), "mlp": {"kernel": jnp.ones((8, 3))}}}
    dyn = static_to_dynamic(static, T)
    assert dyn["params"]["tables"].shape == (T, SPEC.total_entries, 2)
    assert dyn["params"]["mlp"]["kernel"] is static["params"]["mlp"]["kernel"]
    x = _points(rng)
    ref = np.asarray(_apply(static["params"]["tables"], x, 0.0))
    for t in np.linspace(0, 1, 9):
        out = _apply(dyn["params"]["tables"], x, jnp.full((len(x),), t, jnp.float32))
        np.testing.assert_array_equal(np.asarray(out), ref)
    assert float(temporal_tv_loss(dyn["params"]["tables"], None, SPEC)) == 0.0
    assert float(temporal_tv_loss(dyn["params"]["tables"], jax.random.PRNGKey(0), SPEC, 128, "points")) == 0.0
    with pytest.raises(ValueError, match="static"):
        static_to_dynamic(dyn, T)


def test_temporal_tv_official_matches_bruteforce(rng):
    tables = _random_tables(rng)
    tab = np.asarray(tables, np.float64)
    total = 0.0
    for i in range(T - 1):  # official TV_loss: loop over adjacent pairs of embeddings
        total += np.mean(np.sum((tab[i] - tab[i + 1]) ** 2, axis=-1))
    expected = total / ((T - 1) * SPEC.num_levels)
    got = jax.jit(lambda tb: temporal_tv_loss(tb, None, SPEC))(tables)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Gradient closed form: d/dV_i of sum_i mean_rows |V_i - V_{i+1}|^2 / norm.
    grad = np.asarray(jax.grad(lambda tb: temporal_tv_loss(tb, None, SPEC))(tables), np.float64)
    d = tab[1:] - tab[:-1]
    g_ref = np.zeros_like(tab)
    g_ref[:-1] -= 2 * d
    g_ref[1:] += 2 * d
    g_ref /= SPEC.total_entries * (T - 1) * SPEC.num_levels
    np.testing.assert_allclose(grad, g_ref, rtol=1e-4, atol=1e-12)


def test_temporal_tv_points_matches_bruteforce(rng):
    tables = _random_tables(rng)
    key = jax.random.PRNGKey(7)
    n = 300
    x = jax.random.uniform(key, (n, 3), minval=-1.0, maxval=1.0)  # the same points the loss draws
    enc = [np.asarray(grid_lookup(tables[k], x, SPEC), np.float64) for k in range(T)]
    expected = sum(np.mean(np.sum((enc[i] - enc[i + 1]) ** 2, -1)) for i in range(T - 1))
    expected /= (T - 1) * SPEC.num_levels
    got = temporal_tv_loss(tables, key, SPEC, num_points=n, mode="points")
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        temporal_tv_loss(tables, key, SPEC, mode="grid")


def test_level_mask_for_step():
    m = np.asarray(level_mask_for_step(0))
    np.testing.assert_array_equal(m, [1.0] * 8 + [0.0] * 8)
    np.testing.assert_array_equal(np.asarray(level_mask_for_step(3000)), m)  # official: step <= iters
    np.testing.assert_array_equal(np.asarray(level_mask_for_step(3001)), np.ones(16))
    np.testing.assert_array_equal(np.asarray(jax.jit(level_mask_for_step)(jnp.int32(5))), m)
    np.testing.assert_array_equal(np.asarray(level_mask_for_step(0, masked_levels=0)), np.ones(16))
    with pytest.raises(ValueError, match="masked_levels"):
        level_mask_for_step(0, num_levels=4, masked_levels=5)


def test_level_mask_zeroes_the_fine_level_features(rng):
    tables = _random_tables(rng)
    x = _points(rng, spread=0.9)
    mask = level_mask_for_step(0, num_levels=4, masked_levels=2, mask_iters=10)
    full = np.asarray(_apply(tables, x, 0.3))
    out = np.asarray(_apply(tables, x, 0.3, mask))
    np.testing.assert_array_equal(out[:, 4:], 0.0)  # levels 2 and 3 = channels 4..7
    np.testing.assert_array_equal(out[:, :4], full[:, :4])
    # without the mask the fine levels carry features at every (inside) point, so zeros above are the mask
    assert np.all(np.abs(full[:, 4:]) > 1e-6) and np.abs(full[:, 4:]).max() > 0.1


def test_bad_inputs_raise(rng):
    tables = _random_tables(rng)
    with pytest.raises(ValueError, match="x must have shape"):
        _apply(tables, jnp.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match="level_mask"):
        _apply(tables, jnp.zeros((4, 3)), 0.0, jnp.ones(3))
    with pytest.raises(ValueError, match="tables must be"):
        temporal_tv_loss(tables[:, :10], None, SPEC)


def _gather_operand_shapes(jaxpr):
    """Operand shapes of every gather in a (closed) jaxpr, recursing into sub-jaxprs (pjit, cond, ...)."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "gather":
            out.append(tuple(eqn.invars[0].aval.shape))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    out += _gather_operand_shapes(inner)
                elif hasattr(sub, "eqns"):
                    out += _gather_operand_shapes(sub)
    return out


def test_time_grids_are_read_with_pairs_not_flat_int32_offsets():
    """A dense grid with T E >= 2^31 rows (max_dense_resolution 160, T = 64: a 21 GB float32 table) is
    read by ONE gather from the [T, E, F] table with (t, e) index pairs; a flat offset t E into a
    [T E, F] view overflows int32 (grid 63 would read rows at a negative offset). Traced abstractly:
    no table is allocated."""
    spec = GridSpec(mode="dense", max_dense_resolution=160)
    num_t = 64
    assert num_t * spec.total_entries >= 2**31 > spec.total_entries
    model = Grid4D(spec, num_t)
    tables = jax.ShapeDtypeStruct((num_t, spec.total_entries, 2), jnp.float32)
    fn = lambda tb, x, t: model.apply({"params": {"tables": tb}}, x, t)
    shapes = _gather_operand_shapes(jax.make_jaxpr(fn)(tables, jnp.zeros((5, 3)), jnp.zeros(5)).jaxpr)
    table_reads = [sh for sh in shapes if np.prod(sh) == num_t * spec.total_entries * 2]
    assert table_reads == [(num_t, spec.total_entries, 2)], shapes
    # the gradient is one scatter-add into the [T, E, F] table as well
    grad_jaxpr = jax.make_jaxpr(jax.grad(lambda tb, x, t: jnp.sum(fn(tb, x, t))))(tables, jnp.zeros((5, 3)),
                                                                                   jnp.zeros(5))
    scatters = [e for e in grad_jaxpr.jaxpr.eqns if e.primitive.name.startswith("scatter")]
    assert len(scatters) == 1 and tuple(scatters[0].outvars[0].aval.shape) == (num_t, spec.total_entries, 2)


def test_time_grid_pair_matches_official_floor_ceil(rng):
    from four_d.grid4d import time_grid_pair

    t = np.concatenate([rng.uniform(0, 1, 200), np.arange(64) / 63, [0.0, 1.0, -0.3, 1.7]]).astype(np.float32)
    pair, frac = time_grid_pair(jnp.asarray(t), 64)
    g = np.clip(t, 0, 1) * np.float32(63)  # float32, as the official torch code
    np.testing.assert_array_equal(np.asarray(pair), np.stack([np.floor(g), np.ceil(g)], -1).astype(np.int32))
    np.testing.assert_allclose(np.asarray(frac), g - np.floor(g), atol=1e-5)
    assert np.asarray(pair).min() == 0 and np.asarray(pair).max() == 63


def test_grid4d_rejects_bad_time_grid_counts():
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="num_time_grids"):
            Grid4D(SPEC, bad).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="GridSpec"):
        Grid4D({"num_levels": 4}, 2).init(jax.random.PRNGKey(0), jnp.zeros((2, 3)), jnp.zeros(2))
