"""Tests of kernels/splat.py against a brute-force NumPy splatter, closed-form scenes and finite differences.

Tolerances: float32 outputs vs the float64 brute force 1e-5 (absolute; values are O(1)); finite
differences in float64 with step 1e-6: relative 1e-5 of the gradient norm per entry.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import camera, splat

KEYS = ("features", "depth", "alpha", "weight")
COUNTS = ("num_behind", "num_offscreen", "num_invalid")


def run(points, feats, K, image_size, radius=1.5, valid=None, **kw):
    """splat_points under jit (op-by-op eager dispatch compiles every primitive and is much slower)."""
    valid = np.ones(len(points), bool) if valid is None else valid
    if isinstance(radius, float):
        fn = lambda p, f, k, m: splat.splat_points(p, f, k, image_size, radius, valid=m, **kw)
        return jax.jit(fn)(points, feats, K, valid)
    fn = lambda p, f, k, r, m: splat.splat_points(p, f, k, image_size, r, valid=m, **kw)
    return jax.jit(fn)(points, feats, K, radius, valid)


def brute_force_splat(points, feats, K, H, W, radius, valid=None, max_radius=None, near=1e-3, depth_tau=0.02,
                      core_fraction=0.75, sigma=0.25, kernel="gaussian", kernel_width=1.0, depth_slack=None):
    """The documented algorithm with explicit loops over points and every pixel, in float64."""
    points = np.asarray(points, np.float64)
    feats = np.asarray(feats, np.float64)
    K = np.asarray(K, np.float64)
    n, c = feats.shape
    width = np.broadcast_to(np.asarray(kernel_width, np.float64), (n,))
    slack = np.zeros(n) if depth_slack is None else np.asarray(depth_slack, np.float64)
    radius = np.broadcast_to(np.asarray(radius, np.float64), (n,))
    max_radius = float(np.max(radius)) if max_radius is None else max_radius
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    counts = dict(num_behind=0, num_offscreen=0, num_invalid=0)
    taps = []  # (point, i, j, d2, r2, dx, dy)
    for p in range(n):
        x, y, z = points[p]
        if not valid[p] or not np.all(np.isfinite(points[p])):
            counts["num_invalid"] += 1
            continue
        if z <= near:
            counts["num_behind"] += 1
            continue
        u = K[0, 0] * x / z + K[0, 2]
        v = K[1, 1] * y / z + K[1, 2]
        r = min(radius[p], max_radius)
        hit = False
        for i in range(H):
            for j in range(W):
                d2 = (j - u) ** 2 + (i - v) ** 2
                if d2 < r * r:
                    taps.append((p, i, j, d2, r * r, j - u, i - v))
                    hit = True
        if not hit:
            counts["num_offscreen"] += 1
    zcore = np.full((H, W), np.inf)
    zall = np.full((H, W), np.inf)
    for p, i, j, d2, r2, _, _ in taps:
        z = points[p, 2]
        zall[i, j] = min(zall[i, j], z)
        # core: within core_fraction * r, or within half the diagonal of the point's spacing cell
        if d2 <= max(core_fraction**2 * r2, 0.5 * max(width[p], 1.0) ** 2):
            zcore[i, j] = min(zcore[i, j], z)
    zmin = np.where(np.isfinite(zcore), zcore, zall)
    num = np.zeros((H, W, c))
    numz = np.zeros((H, W))
    den = np.zeros((H, W))
    logt = np.zeros((H, W))
    for p, i, j, d2, r2, dx, dy in taps:
        z, zm = points[p, 2], zmin[i, j]
        # a point's own slack: depths up to zmin + slack count as the front surface
        behind = max(0.0, z - zm - max(slack[p], 0.0))
        s = math.exp(-behind / (depth_tau * zm))
        gauss = math.exp(-d2 / (2 * sigma**2))
        if kernel == "gaussian":
            omega = s * gauss
        else:
            a = max(width[p], 1.0)
            omega = s * (max(0.0, 1 - abs(dx) / a) * max(0.0, 1 - abs(dy) / a) + 1e-6 * gauss)
        num[i, j] += omega * feats[p]
        numz[i, j] += omega * z
        den[i, j] += omega
        logt[i, j] += math.log(1.0 - min(max(0.0, 1.0 - d2 / r2) * s, 1.0 - 1e-6))
    empty = den <= 1e-30
    safe = np.where(empty, 1.0, den)
    out = {
        "features": np.where(empty[..., None], 0.0, num / safe[..., None]),
        "depth": np.where(empty, 0.0, numz / safe),
        "alpha": 1.0 - np.exp(logt),
        "weight": den,
    }
    out.update(counts)
    return out


def random_scene(rng, n=40, H=10, W=12, C=3):
    """Two depth clusters (so the z-test has work), some points behind, off-screen and invalid."""
    K = np.array([[9.0, 0, 5.3], [0, 8.5, 4.6], [0, 0, 1]], np.float32)
    uv = rng.uniform([-2.0, -2.0], [W + 1.0, H + 1.0], size=(n, 2))
    z = np.where(rng.random(n) < 0.5, rng.uniform(1.0, 1.2, n), rng.uniform(2.0, 2.5, n))
    z[:3] = [-1.0, 0.0, 5e-4]  # behind / on / just in front of the camera but inside `near`
    uv[3] = [-40.0, 3.0]  # far off-screen
    uv[4] = [W + 0.5, H + 0.6]  # just off-screen: within radius of nothing for small radius
    pts = camera.unproject_points(jnp.asarray(uv, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(K))
    pts = np.array(pts, np.float32)
    pts[:3, 2] = z[:3]
    feats = rng.random((n, C), dtype=np.float32)
    valid = np.ones(n, bool)
    valid[5] = False
    return pts, feats, K, valid


def assert_matches_brute(out, ref, atol=1e-5):
    for k in KEYS:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], atol=atol, rtol=1e-5, err_msg=k)
    for k in COUNTS:
        assert int(out[k]) == ref[k], (k, int(out[k]), ref[k])


@pytest.mark.parametrize("radius", [1.5, 2.3])
def test_matches_brute_force_scalar_radius(rng, radius):
    pts, feats, K, valid = random_scene(rng)
    out = jax.jit(lambda p, f, m: splat.splat_points(p, f, K, (10, 12), radius, valid=m))(pts, feats, valid)
    ref = brute_force_splat(pts, feats, K, 10, 12, radius, valid=valid)
    assert_matches_brute(out, ref)
    assert ref["num_behind"] == 3 and ref["num_offscreen"] >= 1 and ref["num_invalid"] == 1
    assert out["features"].dtype == jnp.float32


@pytest.mark.parametrize("point_block", [None, 7])  # 7: 9 blocks, the last one padded
def test_matches_brute_force_per_point_radius(rng, point_block):
    pts, feats, K, valid = random_scene(rng, n=60)
    radius = rng.uniform(0.4, 3.0, size=60).astype(np.float32)  # some above max_radius: clipped
    fn = jax.jit(lambda p, f, r, m: splat.splat_points(p, f, K, (10, 12), r, valid=m, max_radius=2.5,
                                                        point_block=point_block))
    out = fn(pts, feats, radius, valid)
    ref = brute_force_splat(pts, feats, K, 10, 12, radius, valid=valid, max_radius=2.5)
    assert_matches_brute(out, ref)


@pytest.mark.parametrize("point_block", [None, 7])
def test_matches_brute_force_bilinear_kernel_with_slack(rng, point_block):
    # per-point tent widths (some below 1: clipped to 1) and per-point depth slacks, some large enough to
    # make the far cluster (z 2-2.5) count as front surface against the near one (z 1-1.2)
    pts, feats, K, valid = random_scene(rng, n=60)
    radius = rng.uniform(0.6, 2.4, size=60).astype(np.float32)
    width = rng.uniform(0.5, 2.0, size=60).astype(np.float32)
    slack = np.where(rng.random(60) < 0.3, 1.5, rng.uniform(0.0, 0.05, 60)).astype(np.float32)
    fn = jax.jit(lambda p, f, r, m, a, e: splat.splat_points(p, f, K, (10, 12), r, valid=m, max_radius=2.5,
                                                              kernel="bilinear", kernel_width=a, depth_slack=e,
                                                              depth_tau=0.01, core_fraction=0.5,
                                                              point_block=point_block))
    out = fn(pts, feats, radius, valid, width, slack)
    ref = brute_force_splat(pts, feats, K, 10, 12, radius, valid=valid, max_radius=2.5, kernel="bilinear",
                            kernel_width=width, depth_slack=slack, depth_tau=0.01, core_fraction=0.5)
    assert_matches_brute(out, ref)
    # the slack matters: without it the result differs
    plain = brute_force_splat(pts, feats, K, 10, 12, radius, valid=valid, max_radius=2.5, kernel="bilinear",
                              kernel_width=width, depth_tau=0.01, core_fraction=0.5)
    assert np.abs(plain["features"] - ref["features"]).max() > 0.05


def test_bilinear_kernel_is_bilinear_interpolation_of_a_shifted_dense_surface(rng):
    # a fronto-parallel plane moved by a sub-pixel (du, dv): the bilinear kernel gives the source image
    # bilinearly interpolated at (u - du, v - dv), which cv2.remap computes independently
    import cv2

    H, W = 20, 24
    K = camera.intrinsics_from_focal(30.0, H, W)
    tex = rng.random((H, W, 3), dtype=np.float32)
    pts = dense_plane_points(np.full((H, W), 2.0), K)
    du, dv = 0.3, -0.45
    moved = pts + np.array([du * 2.0 / 30.0, dv * 2.0 / 30.0, 0.0], np.float32)
    out = run(moved, tex.reshape(-1, 3), K, (H, W), kernel="bilinear", depth_tau=0.01, core_fraction=0.5)
    jj, ii = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    ref = cv2.remap(tex, jj - du, ii - dv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    interior = (slice(2, -2), slice(2, -2))
    # cv2.remap quantises the interpolation weights to 1/32 (INTER_BITS = 5): tolerance 1/64 of the range
    np.testing.assert_allclose(np.asarray(out["features"])[interior], ref[interior], atol=1.0 / 64)
    # and in float64 against the exact bilinear formula
    fx, fy = 1 - du, -dv  # weights of the left and upper neighbours: u - du = (j - 1) + (1 - du)...
    exact = ((1 - fy) * ((1 - fx) * tex[:-1, :-1] + fx * tex[:-1, 1:])
             + fy * ((1 - fx) * tex[1:, :-1] + fx * tex[1:, 1:]))
    # target pixel (i, j) samples source (j - du, i - dv) = (j - 1 + 0.7, i + 0.45): columns j-1, j; rows i, i+1
    np.testing.assert_allclose(np.asarray(out["features"])[2:-2, 2:-2], exact[2:-1, 1:-2][:H - 4, :W - 4],
                               atol=2e-5)
    # no shift: the surface reproduces itself exactly
    same = run(pts, tex.reshape(-1, 3), K, (H, W), kernel="bilinear")
    np.testing.assert_allclose(np.asarray(same["features"]), tex, atol=1e-5)


def slanted_ground(H=48, W=64):
    """A plane whose disparity falls linearly with the row (a ground plane, depth 1 to ~5) and the exact
    texture seen after a camera translation: the plane n . X = 1 ray-cast from the moved centre."""
    K = np.asarray(camera.intrinsics_from_focal(60.0, H, W), np.float64)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = 1.0 / (1.0 - 0.8 * v / H)
    def tex(uv):
        return 0.5 + 0.4 * np.sin(2 * np.pi * (uv[..., :1] / 19.0 + uv[..., 1:] / 13.0) + np.array([0.0, 1.0, 2.0]))

    n = np.array([0.0, -0.8 * K[1, 1] / H, 1.0 - 0.8 * K[1, 2] / H])
    slope = np.zeros_like(z)
    dz = np.abs(np.diff(z, axis=0))
    slope[:-1] = np.maximum(slope[:-1], dz)
    slope[1:] = np.maximum(slope[1:], dz)

    def exact(shift):
        d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        o = -np.asarray(shift)
        X = o + ((1 - n @ o) / (d @ n))[..., None] * d
        return tex(np.stack([K[0, 0] * X[..., 0] / X[..., 2] + K[0, 2], K[1, 1] * X[..., 1] / X[..., 2] + K[1, 2]], -1))

    pts = dense_plane_points(z, K.astype(np.float32))
    return K.astype(np.float32), pts, tex(np.stack([u, v], -1)).reshape(-1, 3).astype(np.float32), slope, exact


def test_slanted_surface_does_not_occlude_itself_with_slope_slack():
    # Issue 7 item 4: on a slanted surface a sub-pixel camera move makes a point's footprint overlap
    # nearer points of the same surface; the plain soft z-test (relative to the pixel's nearest point)
    # then suppresses the surface's own points. A per-point slack of slope x (1 + core) x radius keeps
    # them: coverage stays ~1 and the bilinear kernel interpolates the texture exactly.
    H, W = 48, 64
    K, pts, feats, slope, exact = slanted_ground(H, W)
    interior = (slice(3, -3), slice(3, -3))
    kw = dict(kernel="bilinear", depth_tau=0.01, core_fraction=0.5)
    for shift in ((0.0, 0.011, 0.0), (0.02, 0.017, 0.0)):
        ref = exact(shift)
        moved = pts + np.asarray(shift, np.float32)
        plain = run(moved, feats, K, (H, W), **kw)
        slack = (slope * 1.5 * 1.5).reshape(-1).astype(np.float32)
        aware = run(moved, feats, K, (H, W), depth_slack=slack, **kw)
        def psnr(f, ref=ref):
            return 10 * np.log10(1.0 / np.mean((np.asarray(f)[interior] - ref[interior]) ** 2))

        # measured: 42.6 / 40.4 dB with the slack, 24.0 / 28.4 dB without (bilinear interpolation of this
        # texture, periods 13-19 px, is the remaining error)
        assert psnr(aware["features"]) >= 39.0, (shift, psnr(aware["features"]))
        assert float(jnp.min(aware["alpha"][interior])) >= 0.99
        assert psnr(plain["features"]) < psnr(aware["features"]) - 8.0, (shift, psnr(plain["features"]))
        assert float(jnp.min(plain["alpha"][interior])) < 0.95


def test_magnified_foreground_hides_the_background_between_its_points(rng):
    # Zooming in spreads a near surface's points 1.3 px apart; a pixel in the middle of four of them is
    # 0.92 px from each, outside the core (0.5 x 1.5 px), while a background point behind may sit in its
    # core. The core reaches sqrt(1/2) x the spacing (kernel_width), so the background stays hidden
    # (without that: a grid of background dots showing through the foreground).
    H = W = 40
    K = np.asarray(camera.intrinsics_from_focal(40.0, H, W), np.float32)
    a = 1.3
    ii, jj = np.meshgrid(np.arange(-2, H + 2, a / 1.0), np.arange(-2, W + 2, a / 1.0), indexing="ij")
    near = np.asarray(camera.unproject_points(jnp.asarray(np.stack([jj, ii], -1).reshape(-1, 2), jnp.float32),
                                              jnp.ones(ii.size, jnp.float32), K))
    far = dense_plane_points(np.full((H, W), 3.0), K)
    pts = np.concatenate([near, far])
    ind = np.concatenate([np.zeros((len(near), 1)), np.ones((len(far), 1))]).astype(np.float32)
    width = np.concatenate([np.full(len(near), a), np.ones(len(far))]).astype(np.float32)
    out = run(pts, ind, K, (H, W), kernel="bilinear", kernel_width=width, depth_tau=0.01, core_fraction=0.5)
    share = np.asarray(out["features"])[3:-3, 3:-3, 0]
    assert share.max() < 0.01, share.max()
    # the same with the plain core (kernel_width 1 for everyone): the background shows through
    leak = run(pts, ind, K, (H, W), kernel="bilinear", depth_tau=0.01, core_fraction=0.5)
    assert np.asarray(leak["features"])[3:-3, 3:-3, 0].max() > 0.2


def test_tap_window_contains_the_footprint():
    # Kt = ceil(r + 0.5) - 1: r = 1.5 -> 3x3, r = 1.51 -> 5x5, r = 0.4 -> 1x1.
    assert [splat.tap_half_width(r) for r in (0.4, 0.5, 1.0, 1.5, 1.51, 2.5)] == [0, 0, 1, 1, 2, 2]
    # Brute force over sub-pixel positions: every pixel within max_radius is a kept tap.
    for max_r in (0.4, 1.0, 1.5, 2.2, 3.0):
        taps = set(zip(*splat.tap_offsets(max_r)))
        for fu in np.linspace(-0.5, 0.5, 21):
            for fv in np.linspace(-0.5, 0.5, 21):
                for ky in range(-5, 6):
                    for kx in range(-5, 6):
                        if (kx - fu) ** 2 + (ky - fv) ** 2 < max_r**2:
                            assert (ky, kx) in taps, (max_r, fu, fv, ky, kx)
    assert [len(splat.tap_offsets(r)[0]) for r in (1.5, 2.5, 3.0)] == [9, 25, 45]


def dense_plane_points(depth, K):
    return np.asarray(camera.unproject(jnp.asarray(depth, jnp.float32), K)).reshape(-1, 3)


def test_occlusion_far_plane_contributes_under_one_percent(rng):
    H = W = 32
    K = camera.intrinsics_from_focal(40.0, H, W)
    near = dense_plane_points(np.ones((H, W)), K)
    far = dense_plane_points(np.full((H, W), 2.0), K)
    shift = np.array([0.013, 0.007, 0.0], np.float32)  # sub-pixel, different for the two planes
    pts = np.concatenate([near, far]) + shift
    tex_near = rng.random((H * W, 3), dtype=np.float32)
    tex_far = rng.random((H * W, 3), dtype=np.float32)
    both = run(pts, np.concatenate([tex_near, tex_far]), K, (H, W))
    only_near = run(near + shift, tex_near, K, (H, W))
    interior = (slice(2, -2), slice(2, -2))
    assert float(jnp.min(only_near["alpha"][interior])) > 0.99
    diff = np.abs(np.asarray(both["features"] - only_near["features"]))[interior]
    assert diff.max() < 0.01, diff.max()
    # Distinct constant features: the far plane's share of the weight is its feature value.
    ind = np.concatenate([np.zeros((H * W, 1)), np.ones((H * W, 1))]).astype(np.float32)
    share = np.asarray(run(pts, ind, K, (H, W))["features"][..., 0])[interior]
    assert share.max() < 0.01, share.max()
    np.testing.assert_allclose(np.asarray(both["depth"])[interior], 1.0, atol=0.01)


def test_dense_surface_reproduces_itself(rng):
    H, W = 40, 48
    K = camera.intrinsics_from_focal(50.0, H, W)
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    # Smooth, gently sloped depth (relative change < 0.1% per pixel): on steeper slopes the soft z-test
    # also discounts a pixel's own point against a nearer neighbour (see the module docstring).
    depth = 2.0 + 0.02 * np.sin(i / 7.0) * np.cos(j / 9.0)
    tex = rng.random((H, W, 3), dtype=np.float32)
    out = run(dense_plane_points(depth, K), tex.reshape(-1, 3), K, (H, W))
    interior = (slice(1, -1), slice(1, -1))
    assert float(jnp.min(out["alpha"][interior])) >= 0.99
    mse = float(np.mean((np.asarray(out["features"]) - tex)[interior] ** 2))
    psnr = 10 * np.log10(1.0 / mse)
    assert psnr >= 40.0, psnr
    np.testing.assert_allclose(np.asarray(out["depth"])[interior], depth[interior], rtol=1e-4)
    # A sub-pixel camera move (~0.5 px) leaves no holes: the radius-1.5 footprint covers every pixel.
    moved = run(dense_plane_points(depth, K) + np.array([0.02, 0.015, 0.0], np.float32),
                tex.reshape(-1, 3), K, (H, W))
    assert float(jnp.min(moved["alpha"][2:-2, 2:-2])) >= 0.99


def test_empty_pixels_and_dropped_points_are_zero_and_counted():
    H, W = 16, 16
    K = camera.intrinsics_from_focal(20.0, H, W)
    good_uv = np.array([[3.23, 4.13], [10.71, 12.38]], np.float32)  # no pixel at d = r
    good = np.asarray(camera.unproject_points(jnp.asarray(good_uv), jnp.asarray([1.5, 2.0]), K))
    bad = np.array([[0.1, 0.1, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5e-4],  # behind / at / inside near
                    [-10.0, 0.0, 1.0], [1e6, 1e6, 1e-2],  # off-screen (second one projects to ~2e9 px)
                    [np.nan, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)  # NaN and a masked one: invalid
    pts = np.concatenate([good, bad])
    feats = np.arange(27, dtype=np.float32).reshape(9, 3) / 27.0
    valid = np.array([True] * 8 + [False])
    out = run(pts, feats, K, (H, W), valid=valid)
    ref = run(good, feats[:2], K, (H, W))
    for k in KEYS:
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)
    assert (int(out["num_behind"]), int(out["num_offscreen"]), int(out["num_invalid"])) == (3, 2, 2)
    # Pixels farther than the radius from both points are exactly empty.
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    far = np.min([(jj - u) ** 2 + (ii - v) ** 2 for u, v in good_uv], axis=0) >= 1.5**2
    for k in KEYS:
        assert np.all(np.asarray(out[k])[far] == 0.0), k
    assert np.all(np.asarray(out["alpha"])[~far] > 0) and np.all(np.asarray(out["alpha"]) <= 1.0)


def test_radius_scalar_equals_array_and_static_n(rng):
    pts, feats, K, valid = random_scene(rng)
    a = run(pts, feats, K, (10, 12), 1.7, valid=valid)
    b = run(pts, feats, K, (10, 12), np.full(40, 1.7, np.float32), valid=valid, max_radius=1.7)
    c = run(pts, feats, K, (10, 12), np.full(40, 9.0, np.float32), valid=valid, max_radius=1.7)
    for k in KEYS:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-7, err_msg=k)
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(c[k]), atol=1e-7, err_msg=k)
    # The mask changes which points count, not the shapes: one trace serves every mask.
    traces = []

    def f(p, x, m):
        traces.append(1)
        return splat.splat_points(p, x, K, (10, 12), valid=m)

    jf = jax.jit(f)
    for m in (valid, np.ones(40, bool), rng.random(40) < 0.5):
        jf(pts, feats, m)
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_accumulate_in_float32(rng, dtype):
    pts, feats, K, valid = random_scene(rng)
    feats_lp = jnp.asarray(feats, dtype)
    out = run(pts, feats_lp, K, (10, 12), valid=valid)
    ref = brute_force_splat(pts, np.asarray(feats_lp.astype(jnp.float32)), K, 10, 12, 1.5, valid=valid)
    assert out["features"].dtype == jnp.float32 and out["weight"].dtype == jnp.float32
    assert_matches_brute(out, ref)


def test_errors():
    pts = np.zeros((4, 3), np.float32)
    feats = np.zeros((4, 2), np.float32)
    K = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="max_radius"):
        splat.splat_points(pts, feats, K, (4, 4), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="points"):
        splat.splat_points(pts[:, :2], feats, K, (4, 4))
    with pytest.raises(ValueError, match="features"):
        splat.splat_points(pts, feats[:3], K, (4, 4))
    with pytest.raises(ValueError, match="image_size"):
        splat.splat_points(pts, feats, K, 4)
    with pytest.raises(ValueError, match="valid"):
        splat.splat_points(pts, feats, K, (4, 4), valid=np.ones(3, bool))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="point_block"):
            splat.splat_points(pts, feats, K, (4, 4), point_block=bad)


def loss_fn(points, feats, K, weights, **kw):
    out = splat.splat_points(points, feats, K, (8, 9), 2.0, **kw)
    return (jnp.sum(out["features"] * weights[0]) + jnp.sum(out["depth"] * weights[1][..., 0])
            + jnp.sum(out["alpha"] * weights[2][..., 0]))


def test_gradients_finite_with_empty_pixels_and_points_behind(rng):
    K = jnp.asarray([[6.0, 0, 4.0], [0, 6.0, 3.5], [0, 0, 1]], jnp.float32)
    pts = jnp.asarray([[0.1, 0.05, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [50.0, 0.0, 1.0],
                       [0.2, -0.1, 1.3]], jnp.float32)
    feats = jnp.asarray(rng.random((5, 2)), jnp.float32)
    weights = jnp.asarray(rng.random((3, 8, 9, 2)), jnp.float32)
    gp, gf = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(pts, feats, K, weights)
    assert np.all(np.isfinite(np.asarray(gp))) and np.all(np.isfinite(np.asarray(gf)))
    assert np.all(np.asarray(gp)[1:4] == 0) and np.all(np.asarray(gf)[1:4] == 0)  # dropped points
    assert np.any(np.asarray(gp)[0] != 0)


@pytest.mark.parametrize("point_block", [None, 2])  # 2: the z-test's jvp and the accumulation over 3 blocks
def test_gradients_match_finite_differences(rng, point_block):
    with jax.enable_x64(True):
        K = jnp.asarray([[6.0, 0, 4.0], [0, 6.0, 3.5], [0, 0, 1]], jnp.float64)
        # Overlapping footprints at three depths, chosen away from the d = r and core boundaries.
        uv = np.array([[3.31, 3.17], [4.12, 3.63], [3.74, 2.58], [5.61, 4.43], [2.22, 5.09]])
        z = np.array([1.0, 1.01, 1.6, 1.2, 1.05])
        pts = camera.unproject_points(jnp.asarray(uv), jnp.asarray(z), K)
        feats = jnp.asarray(rng.random((5, 2)))
        weights = jnp.asarray(rng.random((3, 8, 9, 2)))
        ji, ii = np.meshgrid(np.arange(9), np.arange(8))
        for (u, v) in uv:  # guard: no tap within 1e-3 px^2 of a kernel edge, so FD stays smooth
            d2 = (ji - u) ** 2 + (ii - v) ** 2
            assert np.min(np.abs(d2 - 4.0)) > 1e-3 and np.min(np.abs(d2 - 2.25)) > 1e-3
        f = jax.jit(lambda p, x: loss_fn(p, x, K, weights, point_block=point_block))
        gp, gf = jax.grad(f, argnums=(0, 1))(pts, feats)
        eps = 1e-6
        for arg, grad in ((0, gp), (1, gf)):
            base = [pts, feats]
            fd = np.zeros(grad.shape)
            for idx in np.ndindex(grad.shape):
                plus, minus = [b for b in base], [b for b in base]
                plus[arg] = base[arg].at[idx].add(eps)
                minus[arg] = base[arg].at[idx].add(-eps)
                fd[idx] = (float(f(*plus)) - float(f(*minus))) / (2 * eps)
            scale = np.max(np.abs(fd))
            assert scale > 0
            np.testing.assert_allclose(np.asarray(grad), fd, atol=1e-5 * scale, rtol=0)


def test_batched_and_sharded_match_single(rng):
    b, n, H, W = 3, 40, 10, 12
    scenes = [random_scene(rng, n=n, H=H, W=W) for _ in range(b)]
    pts = np.stack([s[0] for s in scenes])
    feats = np.stack([s[1] for s in scenes])
    valid = np.stack([s[3] for s in scenes])
    K = np.stack([scenes[0][2] * np.array([[1.0 + 0.1 * k], [1], [1]], np.float32) for k in range(b)])
    K[:, 2, 2] = 1.0
    radius = rng.uniform(0.8, 2.0, size=(b, n)).astype(np.float32)
    batched = jax.jit(lambda p, f, k, r, m: splat.splat_points_batched(p, f, k, (H, W), r, valid=m, max_radius=2.0))(
        pts, feats, K, radius, valid)
    for k in range(b):
        single = run(pts[k], feats[k], K[k], (H, W), radius[k], valid=valid[k], max_radius=2.0)
        for key in KEYS + COUNTS:
            np.testing.assert_allclose(np.asarray(batched[key][k]), np.asarray(single[key]), atol=1e-6)
    assert jax.device_count() == 4  # tests/conftest.py fakes 4 CPU devices; B = 3 is padded to 4
    sharded = splat.splat_points_sharded(pts, feats, K, (H, W), radius, valid=valid, max_radius=2.0)
    for key in KEYS + COUNTS:
        assert sharded[key].shape == batched[key].shape
        np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(batched[key]), atol=1e-6, err_msg=key)
    # Shared K and a scalar radius through both paths.
    a = jax.jit(lambda p, f, k, m: splat.splat_points_batched(p, f, k, (H, W), 1.5, valid=m))(pts, feats, K[0], valid)
    s = splat.splat_points_sharded(pts, feats, K[0], (H, W), 1.5, valid=valid)
    for key in KEYS + COUNTS:
        np.testing.assert_allclose(np.asarray(s[key]), np.asarray(a[key]), atol=1e-6, err_msg=key)


def test_deterministic_and_permutation_invariant(rng):
    pts, feats, K, valid = random_scene(rng, n=60)
    fn = jax.jit(lambda p, f, m: splat.splat_points(p, f, K, (10, 12), 1.8, valid=m))
    a, b = fn(pts, feats, valid), fn(pts, feats, valid)
    for k in KEYS:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    perm = rng.permutation(60)
    c = fn(pts[perm], feats[perm], valid[perm])
    for k in KEYS + COUNTS:
        np.testing.assert_allclose(np.asarray(c[k]), np.asarray(a[k]), atol=1e-6, err_msg=k)
