import jax
import jax.numpy as jnp
import numpy as np

from kernels import mathx


def test_safe_exp_values_and_gradients():
    x = jnp.array([-100.0, 0.0, 1.0, 88.0, 1000.0])
    y = np.asarray(mathx.safe_exp(x))
    np.testing.assert_allclose(y[:4], np.exp(np.array([-100.0, 0.0, 1.0, 88.0])), rtol=1e-6, atol=1e-30)
    assert np.isfinite(y).all() and y[4] == y[3]  # clamped at 88
    g = np.asarray(jax.vmap(jax.grad(mathx.safe_exp))(x))
    np.testing.assert_allclose(g, y, rtol=1e-6)  # d/dx exp = exp, also at the clamp
    assert np.isfinite(g).all()


def test_trunc_exp_forward_is_exp_backward_is_clamped():
    x = jnp.array([-20.0, 0.0, 3.0, 15.0, 30.0])
    np.testing.assert_allclose(np.asarray(mathx.trunc_exp(x)), np.exp(np.asarray(x)), rtol=1e-6)
    g = np.asarray(jax.vmap(jax.grad(mathx.trunc_exp))(x))
    np.testing.assert_allclose(g, np.exp(np.clip(np.asarray(x), -15, 15)), rtol=1e-6)


def test_trunc_exp_forward_is_finite_for_huge_raw_density():
    # float32 exp overflows above 88.72; the forward clamps at 88 (exp(88) = 1.65e38), the backward
    # still clamps at 15 (official).
    x = jnp.array([88.0, 88.8, 100.0, 1e4, jnp.inf])
    y = np.asarray(mathx.trunc_exp(x))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np.exp(88.0), rtol=1e-6)
    g = np.asarray(jax.vmap(jax.grad(mathx.trunc_exp))(x))
    np.testing.assert_allclose(g, np.exp(15.0), rtol=1e-6)


def test_safe_div_zero_denominator_value_and_gradient():
    n = jnp.array([1.0, 2.0, 3.0])
    d = jnp.array([2.0, 0.0, 1e-12])
    np.testing.assert_allclose(np.asarray(mathx.safe_div(n, d)), [0.5, 0.0, 0.0])
    gn, gd = jax.vmap(jax.grad(mathx.safe_div, argnums=(0, 1)))(n, d)
    np.testing.assert_allclose(np.asarray(gn), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(gd), [-0.25, 0.0, 0.0])


def test_safe_log_and_sqrt_finite_at_zero():
    for fn, ref in ((mathx.safe_log, np.log), (mathx.safe_sqrt, np.sqrt)):
        x = jnp.array([0.0, -1.0, 4.0])
        y = np.asarray(fn(x))
        np.testing.assert_allclose(y[2], ref(4.0), rtol=1e-6)
        assert np.isfinite(y).all()
        assert np.isfinite(np.asarray(jax.vmap(jax.grad(fn))(x))).all()


def test_safe_normalize_unit_length_zero_vector_and_jacobian(rng):
    v = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    n = np.asarray(mathx.safe_normalize(v))
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mathx.safe_normalize(jnp.zeros(3))), 0.0)
    jac0 = np.asarray(jax.jacobian(mathx.safe_normalize)(jnp.zeros(3)))
    np.testing.assert_array_equal(jac0, np.zeros((3, 3)))
    # closed-form Jacobian (I - n n^T) / |v|
    x = v[0]
    jac = np.asarray(jax.jacobian(mathx.safe_normalize)(x))
    nn = n[0]
    np.testing.assert_allclose(jac, (np.eye(3) - np.outer(nn, nn)) / np.linalg.norm(np.asarray(x)), atol=1e-5)


def test_materialize_is_the_identity_and_is_its_own_kernel():
    # exact for every float (NaN, inf, -0, extremes; subnormals are flushed to zero by XLA:CPU's kernels, as
    # by any other op there) and every integer (incl. the type's limits)
    f = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1.2e-38, 3.4e38, -3.4e38], np.float32)
    out = np.asarray(jax.jit(mathx.materialize)(f))
    np.testing.assert_array_equal(out.view(np.uint32)[~np.isnan(f)], f.view(np.uint32)[~np.isnan(f)])
    assert np.isnan(out[np.isnan(f)]).all()
    i = np.array([0, 1, -1, 7, np.iinfo(np.int32).max, np.iinfo(np.int32).min + 1], np.int32)
    np.testing.assert_array_equal(np.asarray(jax.jit(mathx.materialize)(i)), i)
    u = np.array([0, 1, np.iinfo(np.uint32).max], np.uint32)
    np.testing.assert_array_equal(np.asarray(jax.jit(mathx.materialize)(u)), u)
    b = np.array([True, False])
    np.testing.assert_array_equal(np.asarray(mathx.materialize(b)), b)
    # derivative 1
    g = jax.grad(lambda x: jnp.sum(mathx.materialize(x) * jnp.arange(3.0)))(jnp.ones(3))
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 2.0])
    # the point of it: a per-point value read by a per-tap broadcast is computed by its own (divide) kernel
    # and not fused into the consumer (there, XLA would recompute it once per tap)
    def taps(x, once):
        y = jnp.round(jnp.sin(x) * 3.0)
        y = mathx.materialize(y) if once else y
        return (y[:, None] + jnp.arange(9.0)[None, :]) * 2.0

    x = jnp.linspace(0.0, 1.0, 64)
    plain = jax.jit(lambda v: taps(v, False)).lower(x).compile().as_text()
    once = jax.jit(lambda v: taps(v, True)).lower(x).compile().as_text()
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: taps(v, True))(x)), np.asarray(taps(x, False)))
    def fusion_shapes(text):
        return [line.split(" = ")[1].split(" ")[0] for line in text.splitlines() if " fusion(" in line]

    assert fusion_shapes(plain) == ["f32[64,9]{1,0}"]  # the sine is recomputed per tap
    assert fusion_shapes(once) == ["f32[64]{0}", "f32[64,9]{1,0}"]  # computed once per point
