"""Safe numerical primitives with sane values and gradients at the edges (zipnerf-style).

Every function is elementwise, jit-able and differentiable; gradients never produce NaN or inf for
finite inputs.
"""

import jax
import jax.numpy as jnp

# Largest argument for which exp is finite in float32 (exp(88.7) ~ 3.4e38).
_MAX_EXP_ARG = 88.0


@jax.custom_jvp
def safe_exp(x):
    """exp(x) with the argument clamped to 88 so values and gradients stay finite in float32."""
    return jnp.exp(jnp.minimum(x, _MAX_EXP_ARG))


@safe_exp.defjvp
def _safe_exp_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = safe_exp(x)
    return y, y * dx


@jax.custom_vjp
def trunc_exp(x):
    """exp(x) in the forward pass; the backward pass clamps the argument at 15.

    This is the density activation of the official Animate124/stable-dreamfusion code (`trunc_exp`):
    it keeps huge densities from producing exploding gradients early in training. Unlike the official
    float32 exp, the forward argument is clamped at 88 so the density stays finite (exp(88.8) is
    inf in float32); densities that large are opaque to float32 precision either way.
    """
    return jnp.exp(jnp.minimum(x, _MAX_EXP_ARG))


def _trunc_exp_fwd(x):
    return jnp.exp(jnp.minimum(x, _MAX_EXP_ARG)), x


def _trunc_exp_bwd(x, g):
    return (g * jnp.exp(jnp.clip(x, -15.0, 15.0)),)


trunc_exp.defvjp(_trunc_exp_fwd, _trunc_exp_bwd)


def safe_div(numerator, denominator, eps=1e-10):
    """numerator / denominator, returning 0 where |denominator| < eps (value and gradient)."""
    small = jnp.abs(denominator) < eps
    safe_den = jnp.where(small, jnp.ones_like(denominator), denominator)
    return jnp.where(small, jnp.zeros_like(numerator / safe_den), numerator / safe_den)


def safe_log(x, eps=1e-10):
    """log(max(x, eps)): finite value and gradient at x <= 0."""
    return jnp.log(jnp.maximum(x, eps))


def safe_sqrt(x, eps=1e-10):
    """sqrt(max(x, eps)): the gradient at 0 is finite (1 / (2 sqrt(eps)) is avoided by the clamp)."""
    return jnp.sqrt(jnp.maximum(x, eps))


def safe_normalize(v, axis=-1, eps=1e-10):
    """v / |v| along `axis`; the zero vector maps to zero with a zero gradient instead of NaN."""
    sq = jnp.sum(v * v, axis=axis, keepdims=True)
    nonzero = sq > eps * eps
    inv = jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0))
    return jnp.where(nonzero, v * inv, 0.0)


def materialize(x):
    """x, unchanged in value and gradient, computed once into its own buffer under XLA's fusion.

    XLA fuses a cheap elementwise producer into every consumer, recomputing it per consumer element: a
    per-point value read by per-tap consumers that broadcast it (kernels.splat: 9 or more taps per point,
    several consumers) is recomputed taps x consumers times, and a per-pixel value read by a stencil (the
    4 neighbours of a Jacobi step) once per neighbour. `jax.lax.optimization_barrier` does not prevent
    this on every backend (the CPU compiler expands barriers before fusion), but XLA never duplicates an
    "expensive" op into a consumer that reuses its elements, and a divide is expensive: x / d with a
    divisor d = 1 that the compiler cannot fold (2 only where x is NaN (floats) or the type's minimum
    (integers), where NaN / 2 = NaN and the minimum is never a valid index) is exactly x and is
    materialised once (subnormal floats may flush to zero, as in any other XLA:CPU kernel). Booleans are
    returned as they are (convert them to numbers first).
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x / jnp.where(jnp.isnan(x), 2.0, 1.0).astype(x.dtype)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jax.lax.div(x, jnp.where(x == jnp.iinfo(x.dtype).min, 2, 1).astype(x.dtype))
    return x
