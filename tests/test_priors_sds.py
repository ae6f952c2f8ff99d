"""four_d/priors/sds.py: the SDS gradient against closed forms with a stub noise predictor of known output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from four_d.priors import sds

ALPHAS = jnp.asarray(np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2), jnp.float32)


def stub(eps_u, eps_c_gain):
    """A frozen 'prior': eps_uncond is a fixed array, eps_cond = gain * noisy (depends on its input)."""

    def predict(noisy, t):
        del t
        return eps_u, eps_c_gain * noisy

    return predict


def closed_form(z, noise, t, eps_u, gain, scale, form, strategy, lam):
    a = np.asarray(ALPHAS)[np.asarray(t)].reshape(-1, 1, 1, 1)
    noisy = np.sqrt(a) * z + np.sqrt(1 - a) * noise
    eps_c = gain * noisy
    eps_hat = eps_c + scale * (eps_c - eps_u) if form == "official" else eps_u + scale * (eps_c - eps_u)
    w = {"sds": 1 - a, "uniform": np.ones_like(a), "fantasia3d": np.sqrt(a) * (1 - a)}[strategy]
    return lam * w * (eps_hat - noise), noisy, eps_hat, a


@pytest.mark.parametrize("form,strategy", [("official", "sds"), ("upstream", "fantasia3d"), ("official", "uniform")])
def test_latent_gradient_is_w_times_eps_hat_minus_eps_over_batch(rng, form, strategy):
    b = 3
    z = rng.normal(size=(b, 4, 5, 6)).astype(np.float32)
    noise = rng.normal(size=z.shape).astype(np.float32)
    eps_u = rng.normal(size=z.shape).astype(np.float32)
    t = np.array([200, 417, 600])
    lam = np.array([1.0, 2.5, 0.5], np.float32)
    kw = dict(guidance_scale=7.5, cfg_form=form, weighting_strategy=strategy, grad_scale=lam)

    def loss(z_):
        return sds.score_distillation(z_, noise, t, ALPHAS, stub(eps_u, 0.7), **kw)[0]

    g = jax.jit(jax.grad(loss))(jnp.asarray(z))
    expect, *_ = closed_form(z, noise, t, eps_u, 0.7, 7.5, form, strategy, lam.reshape(-1, 1, 1, 1))
    np.testing.assert_allclose(g, expect / b, rtol=2e-5, atol=1e-6)
    # the loss value is 0.5 ||grad||^2 / B, the logged grad norm is ||grad||
    val, aux = jax.jit(lambda z_: sds.score_distillation(z_, noise, t, ALPHAS, stub(eps_u, 0.7), **kw))(z)
    np.testing.assert_allclose(val, 0.5 * np.sum(expect**2) / b, rtol=1e-5)
    np.testing.assert_allclose(aux["grad_norm"], np.linalg.norm(expect), rtol=1e-5)
    np.testing.assert_array_equal(aux["t"], t)


def test_gradient_through_a_linear_vae_reaches_the_image(rng):
    """z = M x (a linear 'encoder'): d loss / d x = M^T w (eps_hat - eps) / B."""
    b, n, k = 2, 12, 8
    m = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(b, n)).astype(np.float32)
    noise = rng.normal(size=(b, k, 1, 1)).astype(np.float32)
    eps_u = rng.normal(size=(b, k, 1, 1)).astype(np.float32)
    t = np.array([300, 550])

    def loss(x_):
        z = jnp.einsum("kn,bn->bk", m, x_)[..., None, None]
        return sds.score_distillation(z, noise, t, ALPHAS, stub(eps_u, -1.3), guidance_scale=100.0)[0]

    g = jax.jit(jax.grad(loss))(jnp.asarray(x))
    z = (x @ m.T)[..., None, None]
    grad_z, *_ = closed_form(z, noise, t, eps_u, -1.3, 100.0, "official", "sds", 1.0)
    np.testing.assert_allclose(g, (grad_z[..., 0, 0] @ m) / b, rtol=1e-4, atol=1e-6)


def test_x0_target_gradient_ignores_lambda_and_clip(rng):
    """--grad_dyn: d loss / d z = (z - x0_hat) / N = sqrt((1 - a) / a) (eps_hat - eps) / N."""
    z = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    noise = rng.normal(size=z.shape).astype(np.float32)
    eps_u = rng.normal(size=z.shape).astype(np.float32)
    t = np.array([250, 250])
    kw = dict(guidance_scale=7.5, loss_target="x0", grad_scale=123.0, grad_clip=1e-3)
    g = jax.jit(jax.grad(lambda z_: sds.score_distillation(z_, noise, t, ALPHAS, stub(eps_u, 0.4), **kw)[0]))(z)
    _, noisy, eps_hat, a = closed_form(z, noise, t, eps_u, 0.4, 7.5, "official", "sds", 1.0)
    np.testing.assert_allclose(g, np.sqrt((1 - a) / a) * (eps_hat - noise) / 2, rtol=1e-4, atol=1e-5)
    x0 = (noisy - np.sqrt(1 - a) * eps_hat) / np.sqrt(a)
    np.testing.assert_allclose(g, (z - x0) / 2, rtol=1e-4, atol=1e-5)


def test_clamp_and_nan_zeroing_as_official(rng):
    z = rng.normal(size=(1, 2, 4, 4)).astype(np.float32)
    noise = rng.normal(size=z.shape).astype(np.float32)
    eps_u = rng.normal(size=z.shape).astype(np.float32) * 5
    eps_u[0, 0, 0, 0] = np.nan
    t = np.array([400])
    def grad(clip):
        return jax.jit(jax.grad(lambda z_: sds.score_distillation(z_, noise, t, ALPHAS, stub(eps_u, 0.0),
                                                                  guidance_scale=10.0, grad_clip=clip)[0]))(z)

    g = grad(0.05)
    assert np.all(np.isfinite(g)) and g[0, 0, 0, 0] == 0.0
    assert np.abs(g).max() <= 0.05 + 1e-7 and np.isclose(np.abs(g).max(), 0.05)
    # grad_clip <= 0 disables the clamp (the official default)
    g2 = grad(-1.0)
    assert np.abs(g2).max() > 0.05 and g2[0, 0, 0, 0] == 0.0


def test_mean_reduction_divides_by_the_element_count(rng):
    z = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    noise = rng.normal(size=z.shape).astype(np.float32)
    eps_u = np.zeros_like(z)
    t = np.array([500, 500])
    f = lambda red: jax.jit(jax.grad(lambda z_: sds.score_distillation(  # noqa: E731
        z_, noise, t, ALPHAS, stub(eps_u, 1.0), guidance_scale=1.0, loss_reduction=red)[0]))(z)
    np.testing.assert_allclose(f("mean") * z.size, f("sum") * 2, rtol=1e-5)
    # an explicit normaliser (video --mean_frame: B x F) overrides the reduction
    g = jax.jit(jax.grad(lambda z_: sds.score_distillation(z_, noise, t, ALPHAS, stub(eps_u, 1.0), guidance_scale=1.0,
                                                           normaliser=7.0)[0]))(z)
    np.testing.assert_allclose(g * 7.0, f("sum") * 2, rtol=1e-5)


def test_timesteps_and_ranges():
    assert sds.step_range((0.2, 0.6), 1000) == (200, 600)  # official int(N * lo), int(N * hi)
    assert sds.step_range((0.02, 0.98), 1000) == (20, 980)
    t = np.asarray(sds.sample_timesteps(jax.random.key(0), (20000,), 200, 600))
    assert t.min() == 200 and t.max() == 600  # both ends inclusive (randint(min, max + 1))
    counts = np.bincount(t - 200, minlength=401)
    assert counts.min() > 20 and abs(counts.mean() - 20000 / 401) < 1e-6
    np.testing.assert_allclose(sds.scheduled_value([100, 0.98, 0.5, 300], np.array([0, 100, 200, 300, 900])),
                               [0.98, 0.98, 0.74, 0.5, 0.5], rtol=1e-6)
    assert sds.scheduled_value(7.5, 1000) == 7.5
    with pytest.raises(ValueError, match="t_range"):
        sds.step_range((0.6, 0.2), 1000)
    with pytest.raises(ValueError, match="cfg_form"):
        sds.classifier_free_guidance(jnp.zeros(1), jnp.zeros(1), 1.0, "cfg++")
    with pytest.raises(ValueError, match="weighting"):
        sds.weighting(jnp.zeros(1), "snr")


def test_weightings_closed_form():
    a = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(sds.weighting(a, "sds"), 1 - a)
    np.testing.assert_allclose(sds.weighting(a, "uniform"), 1.0)
    np.testing.assert_allclose(sds.weighting(a, "fantasia3d"), np.sqrt(a) * (1 - a), rtol=1e-6)
