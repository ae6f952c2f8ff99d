"""cine_jax.motion against closed forms, OpenCV box filters and brute-force NumPy loops.

Tolerances: float32 results vs float64 NumPy references, 1e-5 absolute unless stated (values are O(1)
pixels); "exactly" means bit-for-bit equality.
"""

from collections import namedtuple

import cv2
import numpy as np
import pytest

from cine_jax import motion

# ----------------------------------------------------------------------------------------------------
# NumPy references


def np_bilinear(img, u, v):
    """Own bilinear sampler with zero border, one point at a time (float64)."""
    h, w = img.shape[:2]
    u0, v0 = int(np.floor(u)), int(np.floor(v))
    fu, fv = u - u0, v - v0
    out = np.zeros(img.shape[2:], np.float64)
    taps = ((0, 0, (1 - fu) * (1 - fv)), (0, 1, fu * (1 - fv)), (1, 0, (1 - fu) * fv), (1, 1, fu * fv))
    for dv, du, wt in taps:
        i, j = v0 + dv, u0 + du
        if 0 <= i < h and 0 <= j < w:
            out += wt * img[i, j]
    return out


def np_euler_bilinear(flow, steps):
    """Paper Eq. 3 per pixel with bilinear sampling and the footprint bounds, brute-force loops."""
    h, w = flow.shape[:2]
    disp = np.zeros((steps + 1, h, w, 2))
    valid = np.ones((steps + 1, h, w), bool)
    for i in range(h):
        for j in range(w):
            d, ok = np.zeros(2), True
            for t in range(1, steps + 1):
                if ok:
                    d = d + np_bilinear(flow, j + d[0], i + d[1])
                    x, y = j + d[0], i + d[1]
                    ok = -0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5
                disp[t, i, j], valid[t, i, j] = d, ok
    return disp, valid


def np_euler_official_nearest(flow, steps):
    """The official euler_integration.py semantics: x_k = x_{k-1} + M(round(x_{k-1})) and the returned
    'DEBUG' accumulator D_t = sum_{k=1..t} M(round(x_k)) (one step shifted); out-of-bounds -> invalid."""
    h, w = flow.shape[:2]
    disp = np.zeros((steps + 1, h, w, 2))
    for i in range(h):
        for j in range(w):
            x, acc, ok = np.array([j, i], np.float64), np.zeros(2), True
            for t in range(1, steps + 1):
                if ok:
                    r = np.round(x).astype(int)
                    x = x + flow[r[1], r[0]]
                    r = np.round(x).astype(int)
                    ok = 0 <= r[0] < w and 0 <= r[1] < h
                    if ok:
                        acc = acc + flow[r[1], r[0]]
                disp[t, i, j] = acc
    return disp


# ----------------------------------------------------------------------------------------------------
# hints


def test_one_hint_is_constant_vector_times_mask(rng):
    h, w = 12, 16
    mask = (rng.random((h, w)) > 0.3).astype(np.float32) * 0.75
    flow = np.asarray(motion.hints_to_flow([((3.0, 4.0), (1.5, -0.25))], mask, (h, w)))
    ref = np.stack([1.5 * mask, -0.25 * mask], -1)
    np.testing.assert_allclose(flow, ref, atol=1e-6)


def test_two_hints_closed_form_gaussian_weights():
    h, w, sigma = 10, 14, 4.0
    hints = [((2.0, 3.0), (1.0, 0.5)), ((11.0, 7.0), (-0.5, 2.0))]
    flow = np.asarray(motion.hints_to_flow(hints, None, (h, w), sigma=sigma))
    for i, j in [(0, 0), (3, 2), (5, 7), (9, 13), (7, 11)]:
        ws = [np.exp(-(np.hypot(j - s[0], i - s[1]) / sigma) ** 2) for s, _ in hints]
        ref = sum(wk * np.array(v) for wk, (_, v) in zip(ws, hints)) / sum(ws)
        np.testing.assert_allclose(flow[i, j], ref, atol=1e-5)


def test_default_sigma_is_height_over_k_and_far_pixels_defined():
    h, w = 20, 8
    hints = [((0.0, 0.0), (1.0, 0.0)), ((7.0, 19.0), (0.0, 1.0))]
    a = np.asarray(motion.hints_to_flow(hints, None, (h, w)))
    b = np.asarray(motion.hints_to_flow(hints, None, (h, w), sigma=h / 2))
    np.testing.assert_array_equal(a, b)
    # sigma 0.01 px: every raw weight underflows away from the hints; the softmax keeps the nearest hint.
    c = np.asarray(motion.hints_to_flow(hints, None, (h, w), sigma=0.01))
    assert np.all(np.isfinite(c))
    np.testing.assert_allclose(c[2, 1], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(c[17, 6], [0.0, 1.0], atol=1e-6)


def test_hint_objects_and_errors():
    Hint = namedtuple("Hint", "start end")
    HintV = namedtuple("HintV", "start vector")
    a = motion.hints_to_flow([Hint((2.0, 2.0), (3.0, 4.0))], None, (5, 5))
    b = motion.hints_to_flow([HintV((2.0, 2.0), (1.0, 2.0))], None, (5, 5))
    np.testing.assert_allclose(np.asarray(a)[0, 0], [1.0, 2.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="hint"):
        motion.hints_to_flow([], None, (5, 5))
    with pytest.raises(ValueError, match="mask"):
        motion.hints_to_flow([((1, 1), (1, 0))], np.ones((4, 5)), (5, 5))
    with pytest.raises(ValueError, match="sigma"):
        motion.hints_to_flow([((1, 1), (1, 0))], None, (5, 5), sigma=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        motion.hints_to_flow([((1, np.nan), (1, 0))], None, (5, 5))


# ----------------------------------------------------------------------------------------------------
# smoothing and diffusion


@pytest.mark.parametrize("ksize", [15, 4])
def test_smooth_flow_matches_cv2_blur(rng, ksize):
    h, w = 20, 23
    flow = rng.normal(size=(h, w, 2)).astype(np.float32)
    mask = np.clip(rng.random((h, w)) * 1.5, 0, 1).astype(np.float32)
    ours = np.asarray(motion.smooth_flow(flow, mask, ksize))
    blurred = cv2.blur(flow * mask[..., None], (ksize, ksize), borderType=cv2.BORDER_CONSTANT)
    np.testing.assert_allclose(ours, blurred * mask[..., None], atol=1e-5)


def test_masked_diffuse_two_sources_closed_form():
    # Two source pixels a at (10, 10) and b at (10, 13), 5 x 5 windows (half width 2), worked out by hand:
    # pass 1: a pixel within 2 rows of row 10 sees a if its column is 8..12 and b if 11..15, so columns
    #   8-10 -> a, 11-12 -> (a + b) / 2, 13-15 -> b; rows 13+ see nothing (undefined, 0).
    # pass 2: (13, 10) averages the defined pixels of rows 11-12, columns 8-12: 3 columns of a and 2 of
    #   (a + b) / 2, i.e. (4a + b) / 5; (10, 16) sees columns 14-15 (b) and 16-18 (undefined): b.
    a, b = 2.0, -1.0
    values = np.zeros((24, 26, 1), np.float32)
    mask = np.zeros((24, 26), np.float32)
    values[10, 10], values[10, 13] = a, b
    mask[10, 10] = mask[10, 13] = 1
    one, valid1 = motion.masked_diffuse(values, mask, iters=1, ksize=5, return_valid=True)
    one = np.asarray(one)[..., 0]
    assert one[9, 8] == a and one[11, 12] == (a + b) / 2 and one[8, 15] == b
    assert one[10, 10] == a and one[10, 13] == b  # sources keep their values
    assert one[13, 10] == 0 and not np.asarray(valid1)[13, 10]
    two = np.asarray(motion.masked_diffuse(values, mask, iters=2, ksize=5))[..., 0]
    np.testing.assert_allclose(two[13, 10], (4 * a + b) / 5, rtol=1e-6)
    np.testing.assert_allclose(two[10, 16], b, rtol=1e-6)


def test_masked_diffuse_keeps_inside_and_fills_band(rng):
    h, w, iters, k = 40, 45, 3, 5
    values = rng.normal(size=(h, w, 3)).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    mask[15:22, 18:25] = 1.0
    out, valid = motion.masked_diffuse(values, mask, iters=iters, ksize=k, return_valid=True)
    out, valid = np.asarray(out), np.asarray(valid)
    inside = mask > 0.5
    np.testing.assert_array_equal(out[inside], values[inside])
    # The band is Chebyshev distance <= iters * (k // 2) from the mask.
    ii, jj = np.mgrid[:h, :w]
    cheb = np.maximum(np.maximum(15 - ii, ii - 21).clip(0), np.maximum(18 - jj, jj - 24).clip(0))
    np.testing.assert_array_equal(valid, cheb <= iters * (k // 2))
    assert np.all(out[~valid] == 0)
    # A constant inside extends as exactly that constant.
    const = motion.masked_diffuse(np.full((h, w, 2), 0.375, np.float32), mask, iters=iters, ksize=k)
    np.testing.assert_allclose(np.asarray(const)[valid], 0.375, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Euler integration (of points; here every pixel centre of the image is a point)


def grid_uv(h, w):
    gu, gv = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack([gu.ravel(), gv.ravel()], -1).astype(np.float32)


def euler_grid(flow, n, border="zeros"):
    """motion.euler_integrate started at every pixel centre, reshaped to [n + 1, H, W, ...]."""
    h, w = flow.shape[:2]
    r = motion.euler_integrate(flow, grid_uv(h, w), n, border=border)
    return {"displacement": np.asarray(r["displacement"]).reshape(n + 1, h, w, 2),
            "valid": np.asarray(r["valid"]).reshape(n + 1, h, w)}


def test_constant_flow_exact_and_leaves_image():
    h, w, n = 8, 10, 12
    v = np.array([0.75, -0.5], np.float32)  # exact in binary: t * v is exact
    flow = np.broadcast_to(v, (h, w, 2)).astype(np.float32)
    # border="clamp": M is the constant v at every position, so the closed form holds everywhere.
    r = euler_grid(flow, n, border="clamp")
    disp, valid = r["displacement"], r["valid"]
    assert disp.shape == (n + 1, h, w, 2) and valid.shape == (n + 1, h, w)
    np.testing.assert_array_equal(disp[0], 0)
    grid_u, grid_v = np.meshgrid(np.arange(w), np.arange(h))
    for t in range(n + 1):
        x, y = grid_u + t * v[0], grid_v + t * v[1]
        inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
        # Invalid once it has left (and positions only move away, so "ever left" == "outside now").
        np.testing.assert_array_equal(valid[t], inside)
        np.testing.assert_array_equal(disp[t][inside], np.broadcast_to(t * v, (inside.sum(), 2)))
    # A pixel that left at step s keeps the displacement of step s afterwards.
    i, j = 0, 3  # y = -0.5 t leaves (< -0.5) at t = 2
    assert valid[1, i, j] and not valid[2, i, j]
    np.testing.assert_array_equal(disp[2:, i, j], np.broadcast_to(2 * v, (n - 1, 2)))
    # border="zeros" (default): the flow fades in the outer half pixel (u < 0 or u > W - 1), so only
    # paths that stayed inside the pixel-centre hull are exactly t * v; everything matches brute force.
    r = euler_grid(flow, n)
    disp, valid = r["displacement"], r["valid"]
    ref_d, ref_v = np_euler_bilinear(flow.astype(np.float64), n)
    np.testing.assert_array_equal(valid, ref_v)
    np.testing.assert_allclose(disp, ref_d, atol=1e-6)
    for t in range(1, n + 1):
        x, y = grid_u + (t - 1) * v[0], grid_v + (t - 1) * v[1]
        hull = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        np.testing.assert_array_equal(disp[t][hull], np.broadcast_to(t * v, (hull.sum(), 2)))
    assert disp[1, 0, 0, 0] == 0.75 and disp[2, 0, 0, 1] == -0.75  # half the flow at v = -0.5


def test_affine_flow_matches_bruteforce_bilinear_loop():
    # M(x) = A x + b: bilinear sampling of a linear field is exact inside, so the recursion is also
    # x_{t+1} = (I + A) x_t + b in closed form; the NumPy loop checks the border handling too.
    h, w, n = 9, 11, 10
    A = np.array([[0.06, 0.03], [-0.02, 0.04]])
    b = np.array([0.3, -0.2])
    gu, gv = np.meshgrid(np.arange(w), np.arange(h))
    x = np.stack([gu, gv], -1).astype(np.float64)
    flow = (x @ A.T + b).astype(np.float32)
    r = euler_grid(flow, n)
    ref_d, ref_v = np_euler_bilinear(flow.astype(np.float64), n)
    np.testing.assert_array_equal(np.asarray(r["valid"]), ref_v)
    np.testing.assert_allclose(np.asarray(r["displacement"]), ref_d, atol=1e-5)
    assert 0 < ref_v[-1].sum() < h * w  # some pixels leave, some stay
    # Closed form for every pixel whose path stays inside the pixel-centre hull (full bilinear support).
    q, hull = x.copy(), np.ones((h, w), bool)
    for _ in range(n):
        hull &= (q[..., 0] >= 0) & (q[..., 0] <= w - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h - 1)
        q = q + q @ A.T + b
    assert hull.sum() >= 10
    np.testing.assert_allclose(np.asarray(r["displacement"])[n][hull], (q - x)[hull], atol=1e-5)
    # The official nearest-sampling, shifted accumulator gives a visibly different answer (documented
    # deviation): more than 0.1 px at many interior pixels after 10 steps.
    off = np_euler_official_nearest(flow.astype(np.float64), n)
    diff = np.linalg.norm(off[n] - np.asarray(r["displacement"])[n], axis=-1)[ref_v[n]]
    assert diff.max() > 0.3 and np.mean(diff > 0.1) > 0.5


def test_scan_equals_naive_per_frame_recomputation(rng):
    h, w, n = 7, 9, 6
    flow = rng.normal(scale=0.7, size=(h, w, 2)).astype(np.float32)
    r = euler_grid(flow, n)
    for t in range(n + 1):
        naive = euler_grid(flow, t)
        np.testing.assert_array_equal(np.asarray(naive["displacement"][t]), np.asarray(r["displacement"][t]))
        np.testing.assert_array_equal(np.asarray(naive["valid"][t]), np.asarray(r["valid"][t]))


def test_symmetric_loop_property():
    h, w, n = 8, 40, 6
    v = np.array([0.5, 0.25], np.float32)
    flow = np.broadcast_to(v, (h, w, 2)).astype(np.float32)
    s = motion.symmetric_displacements(flow, grid_uv(h, w), n)
    fw, bw = np.asarray(s["forward"]).reshape(n, h, w, 2), np.asarray(s["backward"]).reshape(n, h, w, 2)
    fv = np.asarray(s["forward_valid"]).reshape(n, h, w)
    bv = np.asarray(s["backward_valid"]).reshape(n, h, w)
    np.testing.assert_allclose(np.asarray(s["time"]), np.arange(n) / n, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(fw[0], 0)
    # Interior: both paths (x0 + k v, k <= t, and x0 - k v, k <= N - t) stay in the pixel-centre hull,
    # where the zero-border bilinear sample is exactly v (outside it the flow fades).
    gu, gv = np.meshgrid(np.arange(w), np.arange(h))

    def in_hull(x, y):
        return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)

    for t in range(n):
        f_ok = np.all([in_hull(gu + k * v[0], gv + k * v[1]) for k in range(t + 1)], axis=0)
        b_ok = np.all([in_hull(gu - k * v[0], gv - k * v[1]) for k in range(n - t + 1)], axis=0)
        both = f_ok & b_ok
        assert both.sum() > 0.4 * h * w and np.all(fv[t][both] & bv[t][both])
        # closed forms: forward[t] = t v, backward[t] = (t - N) v (time shifted and sign flipped
        # versions differ by v or 2 t v), and the loop: forward - backward = N v
        np.testing.assert_array_equal(fw[t][f_ok], np.broadcast_to(t * v, (f_ok.sum(), 2)))
        np.testing.assert_array_equal(bw[t][b_ok], np.broadcast_to((t - n) * v, (b_ok.sum(), 2)))
        np.testing.assert_array_equal((fw[t] - bw[t])[both], np.broadcast_to(n * v, (both.sum(), 2)))
    # per-layer fields: each point follows the field of its own layer
    fields = np.stack([flow, -2 * flow])
    uv = np.array([[20.0, 4.0], [20.0, 4.0]], np.float32)
    s2 = motion.symmetric_displacements(fields, uv, n, layer=np.array([0, 1]))
    np.testing.assert_allclose(np.asarray(s2["forward"])[3], [3 * v, -6 * v], atol=1e-6)
    np.testing.assert_allclose(np.asarray(s2["backward"])[3], [(3 - n) * v, -2 * (3 - n) * v], atol=1e-6)


def test_inside_image_is_the_rounded_footprint():
    pos = np.array([[-0.5, 0.0], [-0.51, 0.0], [6.49, 3.0], [6.5, 3.0], [2.0, -0.5], [2.0, 4.5], [2.0, 4.49]])
    got = np.asarray(motion.inside_image(pos, 5, 7))
    # official bounds: round(u) in [0, W-1], round(v) in [0, H-1] (round half up at the low edge)
    np.testing.assert_array_equal(got, [True, False, True, False, True, False, True])


def test_euler_errors():
    uv = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="flow"):
        motion.euler_integrate(np.zeros((4, 4, 3), np.float32), uv, 2)
    with pytest.raises(ValueError, match="border"):
        motion.euler_integrate(np.zeros((4, 4, 2), np.float32), uv, 2, border="wrap")
    with pytest.raises(ValueError, match="uv"):
        motion.euler_integrate(np.zeros((4, 4, 2), np.float32), np.zeros((3, 3)), 2)
    with pytest.raises(ValueError, match="layer"):
        motion.euler_integrate(np.zeros((2, 4, 4, 2), np.float32), uv, 2, layer=np.zeros(4, int))
    with pytest.raises(ValueError, match="num_frames"):
        motion.symmetric_displacements(np.zeros((4, 4, 2), np.float32), uv, 0)


# ----------------------------------------------------------------------------------------------------
# convenience


def test_flow_from_annotations_pipeline(rng):
    h, w = 16, 18
    mask = np.zeros((h, w), np.float32)
    mask[4:12, 3:15] = 1.0
    hints = [((5.0, 6.0), (2.0, 0.0)), ((12.0, 9.0), (0.0, -1.0))]
    got = motion.flow_from_annotations(mask, hints, (h, w), sigma=5.0, smooth_ksize=5, flow_scale=2.0)
    got = np.asarray(got)
    dense = np.asarray(motion.hints_to_flow(hints, mask, (h, w), sigma=5.0))
    ref = cv2.blur(dense * mask[..., None], (5, 5), borderType=cv2.BORDER_CONSTANT) * mask[..., None] / 2.0
    np.testing.assert_allclose(got, ref, atol=1e-5)
    user = rng.normal(size=(h, w, 2)).astype(np.float32)
    prepared = np.asarray(motion.prepare_flow(user, mask, flow_scale=4.0))
    np.testing.assert_allclose(prepared, user * mask[..., None] / 4, atol=1e-6)
    with pytest.raises(ValueError, match="flow_scale"):
        motion.prepare_flow(user, flow_scale=0.0)
    with pytest.raises(ValueError, match="NaN"):
        motion.prepare_flow(np.full((h, w, 2), np.nan, np.float32))
