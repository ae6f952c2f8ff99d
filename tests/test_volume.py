"""Tests for kernels/volume.py: closed forms (constant density, thin slab, background), a brute-force
NumPy float64 product-form compositor (values and finite-difference gradients), a NumPy slab-method
ray/box reference, and scipy for the entropy. Tolerances are stated per assertion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import entr

from kernels import volume


def _np_composite(sigma, rgb, t_edges, bg):
    """Float64 product form: alpha = 1 - exp(-sigma delta), T_i = prod_{j<i} (1 - alpha_j)."""
    sigma, rgb, t_edges = (np.asarray(a, np.float64) for a in (sigma, rgb, t_edges))
    r, s = sigma.shape
    out = np.zeros((r, rgb.shape[-1]))
    for i in range(r):
        trans = 1.0
        for j in range(s):
            alpha = 1.0 - np.exp(-sigma[i, j] * (t_edges[i, j + 1] - t_edges[i, j]))
            out[i] += trans * alpha * rgb[i, j]
            trans *= 1.0 - alpha
        out[i] += trans * bg
    return out


def _np_ray_aabb(o, d, lo, hi, min_near):
    """Slab method in float64 with explicit handling of parallel rays; returns near, far, hit."""
    near, far, hit = [], [], []
    for oi, di in zip(np.asarray(o, np.float64), np.asarray(d, np.float64)):
        t_in, t_out, ok = -np.inf, np.inf, True
        for a in range(3):
            if di[a] == 0.0:
                ok &= lo[a] <= oi[a] <= hi[a]
                continue
            t0, t1 = sorted(((lo[a] - oi[a]) / di[a], (hi[a] - oi[a]) / di[a]))
            t_in, t_out = max(t_in, t0), min(t_out, t1)
        ok = ok and t_in <= t_out and t_out > min_near
        hit.append(ok)
        near.append(max(t_in, min_near) if ok else min_near)
        far.append(t_out if ok else min_near)
    return np.array(near), np.array(far), np.array(hit)


@pytest.mark.parametrize("sigma_val,length", [(0.0, 1.0), (0.3, 2.0), (2.5, 0.7), (40.0, 1.5)])
def test_constant_density_opacity_closed_form(sigma_val, length, rng):
    # Random (non-uniform) bin edges: the quadrature is exact for piecewise-constant density.
    inner = np.sort(rng.uniform(0.5, 0.5 + length, (3, 30)), axis=-1)
    edges = np.concatenate([np.full((3, 1), 0.5), inner, np.full((3, 1), 0.5 + length)], -1)
    sigma = np.full((3, 31), sigma_val, np.float32)
    out = volume.composite(sigma, np.ones((3, 31, 3), np.float32), edges.astype(np.float32))
    want = 1.0 - np.exp(-sigma_val * length)
    np.testing.assert_allclose(np.asarray(out["opacity"]), want, atol=1e-5)
    # Weights sum to the opacity; T_i = exp(-sigma (t_i - near)) (closed form).
    np.testing.assert_allclose(np.asarray(out["weights"]).sum(-1), np.asarray(out["opacity"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["transmittance"]),
                               np.exp(-sigma_val * (edges[:, :-1] - 0.5)), atol=1e-5)


def test_rgb_over_background_closed_form():
    sigma_val, length = 1.2, 1.0
    edges = np.broadcast_to(np.linspace(2.0, 2.0 + length, 17, dtype=np.float32), (2, 17))
    c = np.array([0.2, 0.5, 0.9], np.float32)
    rgb = np.broadcast_to(c, (2, 16, 3))
    e = np.exp(-sigma_val * length)
    bg_one = np.array([1.0, 0.0, 0.3], np.float32)
    out = volume.composite(np.full((2, 16), sigma_val, np.float32), rgb, edges, bg=bg_one)
    np.testing.assert_allclose(np.asarray(out["rgb"]), np.broadcast_to(c * (1 - e) + bg_one * e, (2, 3)),
                               atol=1e-5)
    bg_per_ray = np.array([[1, 1, 1], [0, 0, 0]], np.float32)
    out = volume.composite(np.full((2, 16), sigma_val, np.float32), rgb, edges, bg=bg_per_ray)
    np.testing.assert_allclose(np.asarray(out["rgb"]), c * (1 - e) + bg_per_ray * e, atol=1e-5)


def test_thin_opaque_slab_depth():
    # 200 bins on [1, 3]; an opaque slab fills the bin whose midpoint is t0 = 2.205.
    edges = np.linspace(1.0, 3.0, 201, dtype=np.float32)[None]
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    sigma = np.zeros((1, 200), np.float32)
    k = int(np.argmin(np.abs(mid[0] - 2.205)))
    sigma[0, k] = 1e4
    out = volume.composite(sigma, np.ones((1, 200, 3), np.float32), edges)
    np.testing.assert_allclose(float(out["opacity"][0]), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(out["depth"][0]), mid[0, k], atol=1e-5)
    np.testing.assert_allclose(float(out["depth"][0]), 2.205, atol=0.005)  # half a bin


def test_matches_product_form_and_finite_difference_gradient(rng):
    r, s = 4, 12
    sigma = rng.uniform(0, 3, (r, s)).astype(np.float32)
    rgb = rng.uniform(0, 1, (r, s, 3)).astype(np.float32)
    edges = np.sort(rng.uniform(0.2, 2.0, (r, s + 1)), axis=-1).astype(np.float32)
    bg = np.array([0.3, 0.6, 0.1], np.float32)
    out = volume.composite(sigma, rgb, edges, bg=bg)
    np.testing.assert_allclose(np.asarray(out["rgb"]), _np_composite(sigma, rgb, edges, bg), atol=1e-5)

    # d(sum_c rgb[ray] * cot_c) / d sigma: JAX autodiff vs central differences of the float64 reference.
    cot = rng.normal(size=(r, 3))
    g = np.asarray(jax.grad(lambda sg: jnp.sum(volume.composite(sg, rgb, edges, bg=bg)["rgb"] * cot))(
        jnp.asarray(sigma)))
    fd = np.zeros((r, s))
    h = 1e-6
    for i in range(r):
        for j in range(s):
            sp, sm = sigma.astype(np.float64), sigma.astype(np.float64)
            sp[i, j] += h
            sm[i, j] -= h
            fd[i, j] = np.sum((_np_composite(sp, rgb, edges, bg) - _np_composite(sm, rgb, edges, bg))[i]
                              * cot[i]) / (2 * h)
    np.testing.assert_allclose(g, fd, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sigma_val", [0.0, 1e6])
def test_gradients_finite_at_extreme_density(sigma_val, rng):
    sigma = jnp.full((3, 8), sigma_val, jnp.float32)
    rgb = jnp.asarray(rng.uniform(0, 1, (3, 8, 3)).astype(np.float32))
    edges = jnp.asarray(np.broadcast_to(np.linspace(0.2, 2.0, 9, dtype=np.float32), (3, 9)))

    def loss(sg, col):
        o = volume.composite(sg, col, edges, bg=jnp.ones(3))
        return jnp.sum(o["rgb"]) + jnp.sum(o["depth"]) + jnp.sum(o["opacity"])

    gs, gc = jax.grad(loss, argnums=(0, 1))(sigma, rgb)
    assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.isfinite(np.asarray(gc)))
    if sigma_val == 0.0:
        # Closed form at zero density: d opacity / d sigma_i = delta_i = 0.225.
        g_op = jax.grad(lambda sg: jnp.sum(volume.composite(sg, rgb, edges)["opacity"]))(sigma)
        np.testing.assert_allclose(np.asarray(g_op), 0.225, atol=1e-6)
    else:
        # Fully opaque first sample: all colour weight on it (closed form), the rest get none.
        np.testing.assert_allclose(np.asarray(gc)[:, 0], 1.0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(gc)[:, 1:], 0.0, atol=1e-6)


# Official march step dt = 2 sqrt(3) / 1024 (raymarching, dt_gamma 0).
_DT = 2.0 * np.sqrt(3.0) / 1024


@pytest.mark.parametrize("opaque", [1e8, np.inf])
@pytest.mark.parametrize("prefix", [1, 10, 40])
def test_opaque_sample_after_a_prefix(opaque, prefix, rng):
    """sigma = 20 on the first `prefix` samples, then one opaque sample (1e8 or inf), then random ones.

    Closed form: everything behind the opaque sample is hidden, so opacity = 1 exactly and rgb =
    sum_{i<=k} w_i c_i with the float64 product form (alpha = 1 at the opaque sample). Opacity never
    exceeds 1 and the background weight is never negative. Tolerance 1e-5 on colours.
    """
    s = 64
    sigma = np.zeros((2, s), np.float32)
    sigma[:, :prefix] = 20.0
    sigma[:, prefix] = opaque
    sigma[:, prefix + 1:] = rng.uniform(0, 50, (2, s - prefix - 1))
    rgb = rng.uniform(0, 1, (2, s, 3)).astype(np.float32)
    edges = np.broadcast_to(2.0 + _DT * np.arange(s + 1, dtype=np.float32), (2, s + 1)).copy()
    edges[1, prefix + 1] = edges[1, prefix]  # a zero-length interval at the opaque sample of ray 1
    bg = np.array([0.2, 0.9, 0.4], np.float32)
    out = volume.composite(sigma, rgb, edges, bg=bg)
    for key in ("rgb", "depth", "opacity", "weights", "transmittance"):
        assert np.all(np.isfinite(np.asarray(out[key]))), key
    op = np.asarray(out["opacity"])
    assert np.all(op <= 1.0) and np.all(np.asarray(out["weights"]).sum(-1) <= 1.0 + 1e-6)
    np.testing.assert_allclose(op[0], 1.0, atol=1e-7)
    ref_sigma = np.where(np.isinf(sigma), 1e30, sigma).astype(np.float64)
    np.testing.assert_allclose(np.asarray(out["rgb"])[0], _np_composite(ref_sigma, rgb, edges, bg)[0], atol=1e-5)
    # ray 1: the opaque sample has zero length, so it is transparent (no inf * 0 = NaN)
    np.testing.assert_allclose(np.asarray(out["rgb"])[1], _np_composite(
        np.where(np.isinf(sigma), 0.0, sigma), rgb, edges, bg)[1], atol=1e-5)
    # the prefix keeps its weight: T at the opaque sample = exp(-20 * prefix * dt)
    np.testing.assert_allclose(np.asarray(out["weights"])[0, prefix], np.exp(-20.0 * prefix * _DT), rtol=1e-5)

    def loss(sg, col):
        o = volume.composite(sg, col, jnp.asarray(edges), bg=jnp.asarray(bg))
        return jnp.sum(o["rgb"]) + jnp.sum(o["depth"]) + jnp.sum(o["opacity"])

    gs, gc = jax.grad(loss, argnums=(0, 1))(jnp.asarray(sigma), jnp.asarray(rgb))
    assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.isfinite(np.asarray(gc)))
    np.testing.assert_array_equal(np.asarray(gc)[0, prefix + 1:], 0.0)  # hidden samples get no gradient


def test_ray_aabb_matches_slab_bruteforce(rng):
    n = 200
    o = rng.uniform(-3, 3, (n, 3))
    lo, hi = np.array([-1.0, -0.5, -1.0]), np.array([1.0, 1.0, 0.8])
    o[:40] = rng.uniform(lo + 0.05, hi - 0.05, (40, 3))  # origins inside the box
    target = rng.uniform(-1.5, 1.5, (n, 3))
    d = target - o
    d[40:60, 0] = 0.0  # parallel to the x slabs (inside or outside them)
    d[60:70, 1:] = 0.0  # axis-aligned rays
    d[70:80] = o[70:80] - target[70:80]  # some pointing away from the box
    out = jax.jit(lambda a, b: volume.ray_aabb(a, b, tuple(lo), tuple(hi), 0.2))(
        jnp.asarray(o, jnp.float32), jnp.asarray(d, jnp.float32))
    near, far, hit = _np_ray_aabb(o.astype(np.float32), d.astype(np.float32), lo, hi, 0.2)
    assert 20 < hit.sum() < n - 20  # both hits and misses are exercised
    np.testing.assert_array_equal(np.asarray(out["hit"]), hit)
    np.testing.assert_allclose(np.asarray(out["near"]), near, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["far"]), far, rtol=1e-5, atol=1e-5)
    # Origins inside the box start at min_near.
    np.testing.assert_allclose(np.asarray(out["near"])[:40], 0.2)


def test_ray_aabb_default_box_and_validation():
    o = jnp.array([[0.0, 0.0, -3.0], [0.0, 5.0, -3.0]])
    d = jnp.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = volume.ray_aabb(o, d)
    np.testing.assert_allclose(np.asarray(out["near"]), [2.0, 0.2])
    np.testing.assert_allclose(np.asarray(out["far"]), [4.0, 0.2])
    np.testing.assert_array_equal(np.asarray(out["hit"]), [True, False])
    with pytest.raises(ValueError, match="origins"):
        volume.ray_aabb(jnp.zeros((3, 2)), jnp.zeros((3, 2)))


def test_stratified_samples(rng):
    near = jnp.asarray(rng.uniform(0.2, 1.0, 500).astype(np.float32))
    far = near + jnp.asarray(rng.uniform(0.0, 2.0, 500).astype(np.float32))
    key = jax.random.key(3)
    a = volume.stratified_samples(key, near, far, 16)
    b = volume.stratified_samples(key, near, far, 16)
    c = volume.stratified_samples(jax.random.key(4), near, far, 16)
    edges, mid = np.asarray(a["t_edges"]), np.asarray(a["t_mid"])
    assert edges.shape == (500, 17) and mid.shape == (500, 16)
    np.testing.assert_array_equal(mid, np.asarray(b["t_mid"]))  # deterministic for a key
    assert not np.array_equal(mid, np.asarray(c["t_mid"]))
    np.testing.assert_allclose(edges[:, 0], np.asarray(near), atol=1e-6)
    np.testing.assert_allclose(edges[:, -1], np.asarray(far), atol=1e-6)
    np.testing.assert_allclose(np.diff(edges, axis=-1),
                               np.broadcast_to((np.asarray(far - near) / 16)[:, None], (500, 16)), atol=1e-5)
    assert np.all(mid >= edges[:, :-1]) and np.all(mid <= edges[:, 1:])
    assert np.all(np.diff(mid, axis=-1) >= 0)
    # Uniform within the bin: relative position has mean 1/2 and variance 1/12 (8000 samples).
    width = edges[:, 1:] - edges[:, :-1]
    rel = ((mid - edges[:, :-1]) / np.where(width > 1e-3, width, np.nan))
    rel = rel[np.isfinite(rel)]
    assert abs(rel.mean() - 0.5) < 0.02 and abs(rel.var() - 1 / 12) < 0.005
    # No key (or jitter off): midpoints.
    for out in (volume.stratified_samples(None, near, far, 16),
                volume.stratified_samples(key, near, far, 16, jitter=False)):
        np.testing.assert_allclose(np.asarray(out["t_mid"]), 0.5 * (edges[:, 1:] + edges[:, :-1]), atol=1e-6)


def test_per_ray_draws_depend_on_the_ray_index_only(rng):
    """ray_uniforms: row r = uniform(fold_in(key, id_r)) whatever the other ids are, so a subset (a chunk)
    draws what the whole batch draws for those rays; rows differ between rays and are uniform."""
    key = jax.random.key(7)
    whole = np.asarray(volume.ray_uniforms(key, jnp.arange(4000), 8))
    ids = np.array([3999, 5, 17, 2])
    np.testing.assert_array_equal(np.asarray(volume.ray_uniforms(key, jnp.asarray(ids), 8)), whole[ids])
    np.testing.assert_array_equal(whole[5], np.asarray(jax.random.uniform(jax.random.fold_in(key, 5), (8,))))
    assert whole.shape == (4000, 8) and whole.min() >= 0 and whole.max() < 1
    assert abs(whole.mean() - 0.5) < 0.01 and abs(whole.var() - 1 / 12) < 0.005
    assert np.abs(np.corrcoef(whole[:-1, 0], whole[1:, 0])[0, 1]) < 0.05  # neighbouring rays independent
    near = jnp.asarray(rng.uniform(0.2, 1.0, 6).astype(np.float32))
    far = near + 1.0
    s = volume.stratified_samples(key, near, far, 8, ray_ids=jnp.arange(6))
    lower = np.asarray(s["t_edges"])[:, :-1]
    np.testing.assert_allclose(np.asarray(s["t_mid"]), lower + whole[:6] / 8, atol=1e-6)


def test_accumulate_and_composite_normals(rng):
    w = jnp.asarray(rng.uniform(0, 0.2, (5, 7)).astype(np.float32))
    v = rng.normal(size=(5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(volume.accumulate(w, v)),
                               np.einsum("rs,rsc->rc", np.asarray(w, np.float64), v), atol=1e-6)
    np.testing.assert_allclose(np.asarray(volume.accumulate(w, v[..., 0])),
                               (np.asarray(w) * v[..., 0]).sum(-1), atol=1e-6)
    n = v / np.linalg.norm(v, axis=-1, keepdims=True)
    img = volume.composite_normals(w, n)
    np.testing.assert_allclose(np.asarray(img), np.einsum("rs,rsc->rc", np.asarray(w), (n + 1) / 2),
                               atol=1e-6)
    gw = jax.grad(lambda ww: jnp.sum(volume.composite_normals(ww, n)))(w)
    np.testing.assert_array_equal(np.asarray(gw), 0.0)  # detached weights, as official


def test_opacity_entropy_matches_scipy(rng):
    w = rng.uniform(0, 1, (6, 9)).astype(np.float32)
    w[0, :3] = [0.0, 1.0, 0.5]
    a = np.clip(w.astype(np.float64), 1e-5, 1 - 1e-5)
    ref = (entr(a) + entr(1 - a)) / np.log(2)
    np.testing.assert_allclose(float(volume.opacity_entropy(w)), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(volume.opacity_entropy(jnp.float32(0.5))), 1.0, rtol=1e-6)
    mask = (rng.uniform(size=(6, 9)) > 0.3).astype(np.float32)
    np.testing.assert_allclose(float(volume.opacity_entropy(w, mask)), ref[mask > 0].mean(), rtol=1e-5)
    g = jax.grad(volume.opacity_entropy)(jnp.asarray(w))
    assert np.all(np.isfinite(np.asarray(g)))


def test_orientation_loss(rng):
    w = rng.uniform(0, 1, (4, 6)).astype(np.float32)
    n = rng.normal(size=(4, 6, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    d = rng.normal(size=(4, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    ref = np.mean(w * np.maximum(np.einsum("rsc,rc->rs", n, d), 0.0) ** 2)
    np.testing.assert_allclose(float(volume.orientation_loss(w, n, d)), ref, rtol=1e-5)
    per_sample = np.broadcast_to(d[:, None], n.shape)
    np.testing.assert_allclose(float(volume.orientation_loss(w, n, per_sample)), ref, rtol=1e-5)
    gw, gn = jax.grad(volume.orientation_loss, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(n), d)
    np.testing.assert_array_equal(np.asarray(gw), 0.0)  # weights are detached, as official
    assert np.abs(np.asarray(gn)).max() > 0
