"""Losses of the training stages: hinge GAN (D and G), feature matching, end-point error.

Facts: paper Sec. 4 (L_GAN + 10 L_FM + L_EPE for the motion net), SPADE's GANLoss (gan_mode "hinge") and
its feature-matching term (pix2pix_model.compute_generator_loss), the official `MotionEnePointErrorWrapper`
(shared/reference/cinemagraphy.md section 1). `preds` arguments are the output of
discriminator.MultiscaleDiscriminator: a list (one per scale) of lists of feature maps whose last entry is
the patch prediction. All losses are float32 scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["end_point_error", "feature_matching", "hinge_d", "hinge_g"]


def _last(preds):
    return [scale[-1].astype(jnp.float32) for scale in preds]


def hinge_d(real_preds, fake_preds):
    """Discriminator hinge loss: mean over scales of mean(relu(1 - D(real))) + mean(relu(1 + D(fake))).

    SPADE: loss_D_real + loss_D_fake, each averaged over the scales (GANLoss sums the per-scale means and
    divides by the number of scales).
    """
    real = jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1.0 - p)) for p in _last(real_preds)]))
    fake = jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1.0 + p)) for p in _last(fake_preds)]))
    return real + fake


def hinge_g(fake_preds):
    """Generator hinge loss: mean over scales of -mean(D(fake)) (SPADE GANLoss for_discriminator=False)."""
    return jnp.mean(jnp.stack([-jnp.mean(p) for p in _last(fake_preds)]))


def feature_matching(fake_preds, real_preds):
    """sum over scales and intermediate layers (all but the prediction) of mean |fake - real|, / num scales.

    The real features are constants (SPADE detaches them). Multiply by lambda_feat (10) outside.
    """
    if len(fake_preds) != len(real_preds) or not fake_preds:
        raise ValueError("feature_matching: fake and real need the same non-zero number of scales")
    total = jnp.float32(0.0)
    for fake, real in zip(fake_preds, real_preds):
        for f, r in zip(fake[:-1], real[:-1]):
            total = total + jnp.mean(jnp.abs(f.astype(jnp.float32) - jax.lax.stop_gradient(r).astype(jnp.float32)))
    return total / len(fake_preds)


def end_point_error(pred, target, weight=None):
    """Mean end-point error: mean over pixels of ||pred - target||_2; pred/target [..., 2] (dx, dy).

    weight (optional, [...] broadcastable to the pixels): a weighted mean sum(w * epe) / max(sum(w), 1e-8),
    e.g. the motion mask for the error over moving pixels only.
    """
    d = pred.astype(jnp.float32) - target.astype(jnp.float32)
    epe = jnp.sqrt(jnp.sum(d * d, axis=-1) + 1e-12)  # eps: a finite gradient where pred == target
    if weight is None:
        return jnp.mean(epe)
    w = jnp.broadcast_to(weight.astype(jnp.float32), epe.shape)
    return jnp.sum(w * epe) / jnp.maximum(jnp.sum(w), 1e-8)
