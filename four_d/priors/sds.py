"""Score distillation sampling (SDS): the pure-function core shared by the four priors of Animate124.

A prior supplies a frozen noise predictor; everything else is here. With latents z (the VAE encoding of a
render, so z depends on the render), noise eps, a timestep t and alpha_bar = alphas_cumprod[t]:

    z_t     = sqrt(alpha_bar) z + sqrt(1 - alpha_bar) eps                  (DDPM forward process, add_noise)
    eps_hat = eps_c + s (eps_c - eps_u)   cfg_form "official" (the Animate124 fork of stable-dreamfusion)
            = eps_u + s (eps_c - eps_u)   cfg_form "upstream" (stable-dreamfusion upstream, zero123)
    grad    = nan_to_num(clamp(lambda w(t) (eps_hat - eps), -c, c))        (clamp only if c > 0)
    loss    = 0.5 sum (z - sg(z - grad))^2 / normaliser                   loss_target "mse" (--new_sds)
            = 0.5 sum (z - sg(x0_hat))^2 / normaliser,                     loss_target "x0" (--grad_dyn)
              x0_hat = (z_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar)

so dloss/dz = grad / normaliser ("mse"), or (z - x0_hat) / normaliser = sqrt((1 - a) / a) (eps_hat - eps) /
normaliser ("x0": lambda, w and the clamp do not enter, as in the official code). The noise predictor only
ever sees stop-gradient inputs and its outputs are stop-gradient too: the prior is frozen and never
differentiated; the gradient reaches the render through the VAE encoder (z) only.

Shapes: latents [N, ...] with any trailing shape (image latents [B, 4, h, w], video latents [B, 4, F, h, w]);
t int32 [N] (one timestep per leading entry; a prior that wants one t per clip repeats it).
Sources: ../shared/reference/animate124.md sections 3-5 and 9 (official sd_utils.py, zero123_diffusers_utils.py,
cn_utils.py; threestudio's weighting_strategy and C() schedules).
"""

import jax
import jax.numpy as jnp
import numpy as np

CFG_FORMS = ("official", "upstream")
WEIGHTINGS = ("sds", "uniform", "fantasia3d")
LOSS_TARGETS = ("mse", "x0")
LOSS_REDUCTIONS = ("sum", "mean")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"four_d/priors/sds.py: {name} must be one of {choices}, got {value!r}")


# ---- timesteps ------------------------------------------------------------------------------------------


def step_range(t_range, num_train_timesteps):
    """(min_step, max_step) for a t_range of fractions: (int(N lo), int(N hi)) as the official code.

    t is then drawn from U{min_step .. max_step} inclusive (sd_utils.noise_sample: randint(min, max + 1)).
    """
    lo, hi = (float(v) for v in t_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"four_d/priors/sds.py: t_range must satisfy 0 <= lo <= hi <= 1, got {tuple(t_range)}")
    n = int(num_train_timesteps)
    min_step, max_step = int(n * lo), int(n * hi)
    if max_step > n - 1:
        raise ValueError(f"four_d/priors/sds.py: t_range {tuple(t_range)} reaches t = {max_step} but the "
                         f"schedule has only {n} timesteps (0 .. {n - 1})")
    return min_step, max_step


def scheduled_value(value, step):
    """threestudio's C(): a constant, or [start_step, start_value, end_value, end_step] linear in step.

    Before start_step the start value holds, after end_step the end value. Works on Python numbers and on
    traced steps (jnp); use it for time-annealed t ranges, guidance scales or clamps.
    """
    if isinstance(value, (int, float)):
        return value
    if len(value) != 4:
        raise ValueError(f"four_d/priors/sds.py scheduled_value: expected a number or "
                         f"[start_step, start_value, end_value, end_step], got {value!r}")
    start_step, start_value, end_value, end_step = value
    if end_step <= start_step:
        raise ValueError(f"four_d/priors/sds.py scheduled_value: end_step must exceed start_step in {value!r}")
    frac = jnp.clip((jnp.asarray(step, jnp.float32) - start_step) / (end_step - start_step), 0.0, 1.0)
    return start_value + (end_value - start_value) * frac


def sample_timesteps(key, shape, min_step, max_step):
    """Integer timesteps uniform in {min_step .. max_step} (both inclusive), int32 of the given shape.

    min_step / max_step may be traced scalars (annealed ranges) without recompiling.
    """
    return jax.random.randint(key, shape, jnp.asarray(min_step, jnp.int32), jnp.asarray(max_step, jnp.int32) + 1)


# ---- the formulas -----------------------------------------------------------------------------------------


def _per_entry(values, like):
    """values [N] -> [N, 1, ..., 1] broadcastable against like [N, ...]."""
    values = jnp.asarray(values)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def gather_alphas(alphas_cumprod, t):
    """alpha_bar_t = alphas_cumprod[t] for integer t (any shape); float32."""
    return jnp.take(jnp.asarray(alphas_cumprod, jnp.float32), jnp.asarray(t, jnp.int32), mode="clip")


def add_noise(latents, noise, alpha_bar):
    """DDPM forward process sqrt(a) z + sqrt(1 - a) eps; alpha_bar [N] against latents [N, ...]."""
    a = _per_entry(alpha_bar, latents).astype(latents.dtype)
    return jnp.sqrt(a) * latents + jnp.sqrt(1.0 - a) * noise


def weighting(alpha_bar, strategy="sds"):
    """w(t) from alpha_bar_t: "sds" 1 - a (official), "uniform" 1, "fantasia3d" sqrt(a) (1 - a)."""
    _check_choice("weighting", strategy, WEIGHTINGS)
    a = jnp.asarray(alpha_bar, jnp.float32)
    if strategy == "sds":
        return 1.0 - a
    if strategy == "uniform":
        return jnp.ones_like(a)
    return jnp.sqrt(a) * (1.0 - a)


def classifier_free_guidance(eps_uncond, eps_cond, scale, form="official"):
    """eps_c + s (eps_c - eps_u) ("official" Animate124 fork) or eps_u + s (eps_c - eps_u) ("upstream")."""
    _check_choice("cfg_form", form, CFG_FORMS)
    base = eps_cond if form == "official" else eps_uncond
    return base + scale * (eps_cond - eps_uncond)


def sds_gradient(eps_hat, noise, w, grad_scale=1.0, grad_clip=-1.0):
    """grad = grad_scale * w * (eps_hat - eps), clamped to [-c, c] when c > 0, NaN/inf replaced as official.

    w and grad_scale are [N] (or scalars) against eps_hat [N, ...]. Official order (sd_utils): scale, clamp,
    then torch.nan_to_num (NaN -> 0, +-inf -> the largest finite float). grad_clip may be traced.
    """
    scale = _per_entry(jnp.asarray(grad_scale, jnp.float32) * jnp.asarray(w, jnp.float32), eps_hat)
    grad = scale * (eps_hat.astype(jnp.float32) - noise.astype(jnp.float32))
    clip = jnp.asarray(grad_clip, jnp.float32)
    grad = jnp.where(clip > 0, jnp.clip(grad, -jnp.abs(clip), jnp.abs(clip)), grad)
    return jnp.nan_to_num(grad)


def predicted_x0(noisy, eps_hat, alpha_bar):
    """One-step denoised estimate (z_t - sqrt(1 - a) eps_hat) / sqrt(a) (cn_utils --grad_dyn target)."""
    a = _per_entry(alpha_bar, noisy).astype(jnp.float32)
    return (noisy.astype(jnp.float32) - jnp.sqrt(1.0 - a) * eps_hat.astype(jnp.float32)) / jnp.sqrt(a)


def loss_normaliser(latents, reduction="sum"):
    """The divisor of the official loss: the batch size N ("sum", official) or the element count ("mean")."""
    _check_choice("loss_reduction", reduction, LOSS_REDUCTIONS)
    return float(latents.shape[0]) if reduction == "sum" else float(np.prod(latents.shape))


def mse_target_loss(latents, grad, normaliser):
    """0.5 sum (z - sg(z - grad))^2 / normaliser, whose gradient w.r.t. z is grad / normaliser."""
    z = latents.astype(jnp.float32)
    target = jax.lax.stop_gradient(z - grad)
    return 0.5 * jnp.sum((z - target) ** 2) / normaliser


def x0_target_loss(latents, x0, normaliser):
    """0.5 sum (z - sg(x0))^2 / normaliser (official --grad_dyn), gradient (z - x0) / normaliser."""
    z = latents.astype(jnp.float32)
    return 0.5 * jnp.sum((z - jax.lax.stop_gradient(x0)) ** 2) / normaliser


# ---- the whole step ---------------------------------------------------------------------------------------


def score_distillation(latents, noise, t, alphas_cumprod, predict_noise, *, guidance_scale, cfg_form="official",
                       weighting_strategy="sds", grad_scale=1.0, grad_clip=-1.0, loss_target="mse",
                       loss_reduction="sum", normaliser=None):
    """One SDS loss on latents [N, ...] given the noise and timesteps; returns (loss, aux).

    predict_noise(noisy [N, ...], t [N]) -> (eps_uncond [N, ...], eps_cond [N, ...]) is the frozen prior
    (both CFG branches; the prior decides how to batch them). It receives stop-gradient inputs and its
    outputs are stop-gradient, so differentiating the loss never differentiates the prior.
    grad_scale is a scalar or [N] (zero123's angle weight); guidance_scale and grad_clip may be traced.
    normaliser overrides the divisor given by loss_reduction (the video prior's --mean_frame: B x frames).

    aux: t [N], alpha_bar [N], w [N], grad_norm (the L2 norm of the per-latent gradient, i.e. of
    normaliser * dloss/dz: grad for "mse", z - x0_hat for "x0"), grad_abs_mean (the official "loss_sds"
    log value, mean |grad|) and normaliser.
    """
    _check_choice("loss_target", loss_target, LOSS_TARGETS)
    if noise.shape != latents.shape:
        raise ValueError(f"four_d/priors/sds.py: noise {noise.shape} must match latents {latents.shape}")
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), latents.shape[:1])
    alpha_bar = gather_alphas(alphas_cumprod, t)
    noisy = add_noise(jax.lax.stop_gradient(latents), noise, alpha_bar)
    eps_u, eps_c = predict_noise(jax.lax.stop_gradient(noisy), t)
    eps_u, eps_c = jax.lax.stop_gradient(eps_u), jax.lax.stop_gradient(eps_c)
    eps_hat = classifier_free_guidance(eps_u.astype(jnp.float32), eps_c.astype(jnp.float32), guidance_scale,
                                       cfg_form)
    w = weighting(alpha_bar, weighting_strategy)
    grad = sds_gradient(eps_hat, noise, w, grad_scale, grad_clip)
    normaliser = loss_normaliser(latents, loss_reduction) if normaliser is None else float(normaliser)
    if loss_target == "mse":
        loss = mse_target_loss(latents, grad, normaliser)
        effective = grad
    else:
        x0 = predicted_x0(noisy, eps_hat, alpha_bar)
        loss = x0_target_loss(latents, x0, normaliser)
        effective = jax.lax.stop_gradient(latents.astype(jnp.float32)) - x0
    aux = dict(
        t=t,
        alpha_bar=alpha_bar,
        w=w,
        grad_norm=jnp.sqrt(jnp.sum(effective**2)),
        grad_abs_mean=jnp.mean(jnp.abs(effective)),
        normaliser=jnp.asarray(normaliser, jnp.float32),
    )
    return loss, aux
