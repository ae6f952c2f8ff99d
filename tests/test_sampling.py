"""kernels/sampling.py against torch (grid_sample, interpolate, affine_grid), OpenCV remap and closed forms.

Tolerances: torch parity 1e-5 (float32 rounding, observed <= 1e-6); cv2.remap 1e-5 when coordinates are
on cv2's 1/32 px fixed-point grid, 1e-3 for arbitrary coordinates on a smooth image; finite differences
1e-6 in float64.
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import sampling


def _nchw(img):
    import torch

    x = np.ascontiguousarray(np.moveaxis(np.asarray(img), -1, -3))
    return torch.from_numpy(x.reshape(-1, *x.shape[-3:]))


def _torch_grid_sample(img, grid, mode, padding_mode, align_corners):
    """torch grid_sample of img [H, W, C] at normalised grid [N, 2] -> [N, C]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(img, -1, 0))[None])
    g = torch.from_numpy(np.asarray(grid, np.float32)[None, :, None, :])
    out = torch.nn.functional.grid_sample(
        t, g, mode=mode, padding_mode=padding_mode, align_corners=align_corners
    )
    return out[0, :, :, 0].numpy().T


def _torch_interpolate(img, size, **kw):
    """torch interpolate of img [H, W, C] or [B, H, W, C] (converted to NCHW and back)."""
    import torch

    x = np.asarray(img)
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))
    if x.ndim == 3:
        t = t[None]
    out = np.moveaxis(torch.nn.functional.interpolate(t, size=size, **kw).numpy(), -3, -1)
    return out[0] if x.ndim == 3 else out


BORDER_TO_TORCH = {"zeros": "zeros", "clamp": "border"}


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_bilinear_matches_grid_sample_align_corners_true(rng, border):
    h, w = 6, 7
    img = rng.uniform(size=(h, w, 3)).astype(np.float32)
    # Includes points up to 1.5 px outside, where zeros and border padding differ.
    uv = rng.uniform([-1.5, -1.5], [w + 0.5, h + 0.5], size=(300, 2)).astype(np.float32)
    grid = np.stack([2 * uv[:, 0] / (w - 1) - 1, 2 * uv[:, 1] / (h - 1) - 1], -1)  # closed form
    ref = _torch_grid_sample(img, grid, "bilinear", BORDER_TO_TORCH[border], True)
    out = jax.jit(functools.partial(sampling.sample_bilinear, border=border))(img, uv)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_nearest_matches_grid_sample_including_exact_halves(border):
    # H - 1 and W - 1 are powers of two, so quarter-pixel coordinates normalise exactly and torch sees the
    # same exact .5 ties; both must round half to even (0.5 -> 0, 1.5 -> 2, -0.5 -> 0).
    h, w = 9, 5
    img = np.random.default_rng(1).uniform(size=(h, w, 2)).astype(np.float32)
    q = np.arange(-1.5, 9.75, 0.25, dtype=np.float32)
    u, v = np.meshgrid(q, q)
    uv = np.stack([u.ravel(), v.ravel()], -1)
    grid = np.stack([2 * uv[:, 0] / (w - 1) - 1, 2 * uv[:, 1] / (h - 1) - 1], -1)
    ref = _torch_grid_sample(img, grid, "nearest", BORDER_TO_TORCH[border], True)
    out = sampling.sample_nearest(img, uv, border=border)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)


def test_nearest_round_half_to_even_closed_form():
    img = np.arange(6, dtype=np.float32).reshape(1, 6, 1)  # value == column
    u = np.array([0.5, 1.5, 2.5, 3.49, 3.51, -0.5, -0.51, 5.5, 4.5], np.float32)
    uv = np.stack([u, np.zeros_like(u)], -1)
    out = np.asarray(sampling.sample_nearest(img, uv, "zeros"))[:, 0]
    np.testing.assert_array_equal(out, [0, 2, 2, 3, 4, 0, 0, 0, 4])  # -0.51 -> -1 and 5.5 -> 6: outside
    out = np.asarray(sampling.sample_nearest(img, uv, "clamp"))[:, 0]
    np.testing.assert_array_equal(out, [0, 2, 2, 3, 4, 0, 0, 5, 4])
    # Integer label maps keep their dtype.
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    got = sampling.sample_nearest(labels, np.array([[2.4, 1.6], [9.0, 0.0]], np.float32))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), [10, 0])


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_align_corners_false_via_normalized_to_pixel(rng, mode, border):
    h, w = 5, 8
    img = rng.uniform(size=(h, w, 3)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, size=(200, 2)).astype(np.float32)
    ref = _torch_grid_sample(img, grid, mode, BORDER_TO_TORCH[border], False)
    uv = sampling.normalized_to_pixel(grid, h, w, align_corners=False)
    fn = sampling.sample_bilinear if mode == "bilinear" else sampling.sample_nearest
    np.testing.assert_allclose(np.asarray(fn(img, uv, border)), ref, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
def test_pixel_normalized_match_affine_grid_and_round_trip(rng, align_corners):
    import torch

    h, w = 4, 7
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    ref = torch.nn.functional.affine_grid(theta, [1, 1, h, w], align_corners=align_corners)[0].numpy()
    v, u = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    got = sampling.pixel_to_normalized(np.stack([u, v], -1), h, w, align_corners)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)
    uv = rng.uniform(-3, 10, size=(50, 2)).astype(np.float32)
    xy = sampling.pixel_to_normalized(uv, h, w, align_corners)
    back = sampling.normalized_to_pixel(xy, h, w, align_corners)
    np.testing.assert_allclose(np.asarray(back), uv, atol=1e-5)
    # Closed forms of the corners.
    edge = -0.0 if align_corners else -0.5
    corner = sampling.pixel_to_normalized([edge, edge], h, w, align_corners)
    np.testing.assert_allclose(np.asarray(corner), [-1, -1])


def test_bilinear_clamp_matches_cv2_remap_replicate(rng):
    h, w = 20, 24
    img = rng.uniform(size=(h, w, 3)).astype(np.float32)
    # cv2 quantises map coordinates to 1/32 px (INTER_TAB_SIZE); on that grid its weights are exact.
    uv = (rng.integers(-3 * 32, (w + 2) * 32, size=(400, 2)) / 32).astype(np.float32)
    uv[:, 1] = (rng.integers(-3 * 32, (h + 2) * 32, size=400) / 32).astype(np.float32)
    for border, cv_border in [("clamp", cv2.BORDER_REPLICATE), ("zeros", cv2.BORDER_CONSTANT)]:
        ref = cv2.remap(
            img, uv[None, :, 0], uv[None, :, 1], cv2.INTER_LINEAR, borderMode=cv_border, borderValue=0
        )
        out = sampling.sample_bilinear(img, uv, border)
        # Observed: BORDER_CONSTANT also agrees at the border (partially outside taps count as 0).
        np.testing.assert_allclose(np.asarray(out), ref[0], atol=1e-5, err_msg=border)
    # Arbitrary coordinates: a smooth image keeps cv2's 1/64 px quantisation error below 1e-3.
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    smooth = (0.5 + 0.5 * np.sin(0.05 * jj + 0.03 * ii))[..., None].astype(np.float32)
    uv = rng.uniform([-2, -2], [w + 1, h + 1], size=(400, 2)).astype(np.float32)
    ref = cv2.remap(smooth, uv[None, :, 0], uv[None, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = sampling.sample_bilinear(smooth, uv, "clamp")
    np.testing.assert_allclose(np.asarray(out)[:, 0], ref[0], atol=1e-3)


def test_bilinear_gradient_matches_finite_differences(rng):
    with jax.enable_x64(True):
        h, w = 5, 6
        img = jnp.asarray(rng.uniform(size=(h, w, 2)))
        # Fractional parts in [0.2, 0.8] so +-eps stays inside one cell.
        uv = jnp.asarray(rng.integers(0, [w - 1, h - 1], size=(20, 2)) + rng.uniform(0.2, 0.8, size=(20, 2)))
        wts = jnp.asarray(rng.normal(size=(20, 2)))
        eps = 1e-4
        # Each output depends only on its own uv, so one perturbation of all points gives every point's
        # partial derivative at once.
        per_point = lambda p, b: jnp.sum(sampling.sample_bilinear(img, p, b) * wts, axis=-1)
        for border in ("zeros", "clamp"):
            g = jax.grad(lambda p, b=border: jnp.sum(per_point(p, b)))(uv)
            for k in range(2):
                d = jnp.zeros_like(uv).at[:, k].set(eps)
                fd = (per_point(uv + d, border) - per_point(uv - d, border)) / (2 * eps)
                np.testing.assert_allclose(np.asarray(g[:, k]), np.asarray(fd), atol=1e-6)
        # Closed form: d/du = (1 - fv)(I[v0, u0+1] - I[v0, u0]) + fv (I[v0+1, u0+1] - I[v0+1, u0]).
        p = jnp.array([2.25, 1.75])
        gu = jax.grad(lambda q: sampling.sample_bilinear(img, q)[0])(p)[0]
        ref = 0.25 * (img[1, 3, 0] - img[1, 2, 0]) + 0.75 * (img[2, 3, 0] - img[2, 2, 0])
        np.testing.assert_allclose(float(gu), float(ref), atol=1e-12)


def test_non_finite_and_huge_coordinates():
    img = np.arange(12, dtype=np.float32).reshape(3, 4, 1) + 1.0
    uv = np.array([[np.nan, 1.0], [np.inf, 1.0], [-np.inf, 1.0], [1e30, 1.0], [3.0, 2.0]], np.float32)
    z = np.asarray(sampling.sample_bilinear(img, uv, "zeros"))[:, 0]
    np.testing.assert_array_equal(z, [0, 0, 0, 0, 12])
    c = np.asarray(sampling.sample_bilinear(img, uv, "clamp"))[:, 0]
    np.testing.assert_array_equal(c, [0, 8, 5, 8, 12])  # row 1 clamped to the last/first column
    n = np.asarray(sampling.sample_nearest(img, uv, "clamp"))[:, 0]
    np.testing.assert_array_equal(n, [0, 8, 5, 8, 12])
    g = jax.grad(lambda p: jnp.sum(sampling.sample_bilinear(img, p, "zeros")))(jnp.asarray(uv))
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g[:4]), 0.0)


def test_batched_equals_per_image(rng):
    imgs = rng.uniform(size=(3, 5, 6, 2)).astype(np.float32)
    uv = rng.uniform(-1, 6, size=(3, 4, 7, 2)).astype(np.float32)
    out = sampling.sample_bilinear_batched(imgs, uv, "clamp")
    ref = np.stack([np.asarray(sampling.sample_bilinear(imgs[b], uv[b], "clamp")) for b in range(3)])
    assert out.shape == (3, 4, 7, 2)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-7)
    outn = sampling.sample_nearest_batched(imgs, uv)
    refn = np.stack([np.asarray(sampling.sample_nearest(imgs[b], uv[b])) for b in range(3)])
    np.testing.assert_array_equal(np.asarray(outn), refn)
    # A 2-D image [H, W] gives [...] without a channel axis.
    np.testing.assert_allclose(
        np.asarray(sampling.sample_bilinear(imgs[0, ..., 0], uv[0], "clamp")), ref[0, ..., 0], atol=1e-7
    )


RESIZE_CASES = [
    ((7, 9), (5, 13)),
    ((16, 12), (6, 7)),
    ((3, 5), (8, 8)),
    ((10, 10), (1, 3)),
    ((9, 13), (9, 26)),
    ((40, 9), (2, 5)),  # area / antialias tables wider than _MAX_GATHER_TAPS: the dense matmul path
]
RESIZE_MODES = [
    ("bilinear", False, False),
    ("bilinear", True, False),
    ("bicubic", False, False),
    ("bicubic", True, False),
    ("nearest", False, False),
    ("nearest-exact", False, False),
    ("area", False, False),
    ("bilinear", False, True),
    ("bicubic", False, True),
    ("bilinear", True, True),
]


@pytest.mark.parametrize("method,align_corners,antialias", RESIZE_MODES)
def test_resize_matches_torch_interpolate(rng, method, align_corners, antialias):
    # Up, down, mixed, non-integer ratios, size 1 and exact 2x (torch's nearest fast path).
    for (ih, iw), (oh, ow) in RESIZE_CASES:
        img = rng.uniform(size=(ih, iw, 3)).astype(np.float32)
        kw = {"mode": method, "antialias": antialias}
        if method in ("bilinear", "bicubic"):
            kw["align_corners"] = align_corners
        ref = _torch_interpolate(img, (oh, ow), **kw)
        out = sampling.resize(img, (oh, ow), method, align_corners, antialias)
        assert out.shape == (oh, ow, 3) and out.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, err_msg=f"{(ih, iw)} -> {(oh, ow)}")


def test_resize_batched_jit_and_closed_forms(rng):
    imgs = rng.uniform(size=(2, 12, 10, 3)).astype(np.float32)
    fn = jax.jit(sampling.resize, static_argnums=(1, 2, 3, 4))
    out = fn(imgs, (5, 15), "bilinear", False, False)
    np.testing.assert_allclose(np.asarray(out), _torch_interpolate(imgs, (5, 15), mode="bilinear"), atol=1e-5)
    # area with an integer factor is the block mean.
    area = sampling.resize(imgs, (4, 5), "area")
    np.testing.assert_allclose(np.asarray(area), imgs.reshape(2, 4, 3, 5, 2, 3).mean((2, 4)), atol=1e-6)
    # torch "nearest" is floor(dst * in / out): 12 -> 5 picks rows 0, 2, 4, 7, 9.
    near = sampling.resize(imgs, (5, 10), "nearest")
    np.testing.assert_array_equal(np.asarray(near), imgs[:, [0, 2, 4, 7, 9]])
    # Same size is the identity for every method; uint8 masks keep their dtype under nearest.
    for m in sampling.RESIZE_METHODS:
        np.testing.assert_allclose(np.asarray(sampling.resize(imgs, (12, 10), m)), imgs, atol=1e-6)
    mask = (imgs[0, ..., :1] > 0.5).astype(np.uint8)
    got = sampling.resize(mask, (7, 4), "nearest")
    assert got.dtype == jnp.uint8
    ref = _torch_interpolate(mask.astype(np.float32), (7, 4), mode="nearest").astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(got), ref)
    # bf16 in, bf16 out, computed in float32.
    bf = sampling.resize(jnp.asarray(imgs[0], jnp.bfloat16), (6, 6))
    assert bf.dtype == jnp.bfloat16


def test_resize_taps_weights_sum_to_one():
    for method, ac, aa in RESIZE_MODES:
        for n_in, n_out in [(7, 3), (3, 11), (16, 5), (5, 1)]:
            idx, wts = sampling.resize_taps(n_in, n_out, method, ac, aa)
            assert idx.min() >= 0 and idx.max() < n_in
            if wts is not None:
                np.testing.assert_allclose(wts.sum(1), 1.0, atol=1e-6, err_msg=f"{method} {n_in}->{n_out}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (4, 4), "method": "lanczos"},
        {"size": (4, 4), "method": "nearest", "align_corners": True},
        {"size": (4, 4), "method": "area", "antialias": True},
        {"size": (0, 4)},
        {"size": 4},
    ],
)
def test_resize_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="kernels/sampling.py resize"):
        sampling.resize(np.zeros((5, 5, 1), np.float32), **kwargs)
    with pytest.raises(ValueError, match="floating"):
        sampling.resize(np.zeros((5, 5, 1), np.uint8), (3, 3), "bilinear")


def test_sample_rejects_bad_arguments():
    img = np.zeros((4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="border"):
        sampling.sample_bilinear(img, np.zeros((2, 2), np.float32), border="reflect")
    with pytest.raises(ValueError, match="uv must be"):
        sampling.sample_nearest(img, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="image must be"):
        sampling.sample_bilinear(np.zeros((1, 4, 4, 1), np.float32), np.zeros((2, 2), np.float32))
