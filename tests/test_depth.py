"""Tests for cine_jax/depth.py: validation, disparity normalisation, guided filter, heuristic depth."""

import cv2
import numpy as np
import pytest
import scipy.stats

from cine_jax import depth as dp

# ------------------------------------------------------------------------------------- references


def brute_box_mean(x, r):
    """Mean over the (2r+1)^2 window clipped to the image, by explicit loops."""
    h, w = x.shape[:2]
    out = np.zeros(x.shape, np.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].reshape(-1, *x.shape[2:]).mean(0)
    return out


def brute_guided(I, p, r, eps):
    """He et al. 2010 guided filter, per-window loops (Algorithm 1 / Eq. 14 for colour guides)."""
    I = np.asarray(I, np.float64)
    p = np.asarray(p, np.float64)
    h, w = p.shape
    grey = I.ndim == 2
    Ic = I[..., None] if grey else I
    c = Ic.shape[-1]
    a = np.zeros((h, w, c))
    b = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win_i = Ic[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].reshape(-1, c)
            win_p = p[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].reshape(-1)
            mu = win_i.mean(0)
            sigma = (win_i - mu).T @ (win_i - mu) / len(win_p)
            cov = ((win_i - mu) * (win_p - win_p.mean())[:, None]).mean(0)
            a[i, j] = np.linalg.solve(sigma + eps * np.eye(c), cov)
            b[i, j] = win_p.mean() - a[i, j] @ mu
    q = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            sl = (slice(max(i - r, 0), i + r + 1), slice(max(j - r, 0), j + r + 1))
            q[i, j] = a[sl].reshape(-1, c).mean(0) @ Ic[i, j] + b[sl].mean()
    return q


def synthetic_landscape(h=96, w=128, seed=0):
    """Blue sky over the top third (slight vertical gradient), textured green-brown ground below."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    top = h // 3
    t = np.linspace(0, 1, top)[:, None]
    img[:top] = np.stack([0.45 + 0.1 * t, 0.65 + 0.1 * t, 0.95 - 0.05 * t], -1) * np.ones((1, w, 1))
    ground = np.array([0.35, 0.45, 0.2]) + 0.15 * rng.standard_normal((h - top, w, 3))
    img[top:] = np.clip(cv2.GaussianBlur(ground.astype(np.float32), (3, 3), 0.7), 0, 1)
    sky = np.zeros((h, w), bool)
    sky[:top] = True
    return img, sky


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad, msg",
    [(np.array([[1.0, np.nan]]), "NaN"), (np.array([[1.0, np.inf]]), "inf"),
     (np.array([[1.0, 0.0]]), "> 0"), (np.array([[1.0, -2.0]]), "> 0"), (np.ones(3), "shape")],
)
def test_validate_depth_rejects_bad_values_naming_the_argument(bad, msg):
    with pytest.raises(ValueError) as err:
        dp.validate_depth(bad, "my_depth")
    assert str(err.value).startswith("my_depth: ") and msg in str(err.value)


def test_validate_depth_shape_and_passthrough():
    d = np.full((3, 4), 2.5)
    out = dp.validate_depth(d, "d", shape=(3, 4))
    assert out.dtype == np.float32 and np.all(out == 2.5)
    with pytest.raises(ValueError, match="d: expected shape"):
        dp.validate_depth(d, "d", shape=(4, 3))


def test_validate_image_errors():
    with pytest.raises(ValueError, match="img: .*\\[H, W, 3\\]"):
        dp.validate_image(np.zeros((4, 4)), "img")
    with pytest.raises(ValueError, match="img: values must lie in \\[0, 1\\]"):
        dp.validate_image(np.full((2, 2, 3), 1.5), "img")
    with pytest.raises(ValueError, match="img: contains NaN"):
        dp.validate_image(np.full((2, 2, 3), np.nan), "img")
    with pytest.raises(ValueError, match="dtype uint8"):
        dp.validate_image(np.zeros((2, 2, 3), np.uint8), "img")


# ------------------------------------------------------------------------------------- disparity


def test_normalize_disparity_to_depth_closed_form(rng):
    disp = rng.uniform(3.0, 7.0, (5, 6))
    disp[0, 0], disp[1, 1] = 3.0, 7.0
    depth = dp.normalize_disparity_to_depth(disp)
    expected = 1.0 / np.maximum((disp - 3.0) / 4.0, 1e-6)
    np.testing.assert_allclose(depth, expected, rtol=1e-6)
    assert depth.min() == pytest.approx(1.0) and depth.max() == pytest.approx(1e6)
    np.testing.assert_array_equal(dp.normalize_disparity_to_depth(np.full((2, 2), 0.3)), 1.0)
    z = rng.uniform(0.5, 9.0, (4, 4)).astype(np.float32)
    np.testing.assert_allclose(dp.depth_to_disparity(z), 1.0 / z, rtol=1e-6)
    with pytest.raises(ValueError, match="zdepth"):
        dp.depth_to_disparity(-z, "zdepth")


# ------------------------------------------------------------------------------------- guided filter


def test_box_mean_matches_brute_force(rng):
    x = rng.uniform(size=(7, 9, 2))
    np.testing.assert_allclose(dp.box_mean(x, 2), brute_box_mean(x, 2), atol=1e-12)
    np.testing.assert_allclose(dp.box_mean(x[..., 0], 3), brute_box_mean(x[..., 0], 3), atol=1e-12)


@pytest.mark.parametrize("colour", [False, True])
def test_guided_filter_matches_brute_force(rng, colour):
    I = rng.uniform(size=(9, 11, 3) if colour else (9, 11))
    p = rng.uniform(size=(9, 11))
    got = dp.guided_filter(I, p, radius=2, eps=1e-2)
    np.testing.assert_allclose(got, brute_guided(I, p, 2, 1e-2), atol=1e-5)


def test_guided_filter_preserves_a_step_edge_better_than_a_box_blur(rng):
    h, w = 24, 32
    step = np.zeros((h, w))
    step[:, w // 2:] = 1.0
    noisy = step + 0.02 * rng.standard_normal((h, w))
    guided = dp.guided_filter(step, noisy, radius=4, eps=1e-3)
    box = cv2.blur(noisy, (9, 9), borderType=cv2.BORDER_REFLECT)
    # Contrast two pixels either side of the edge (1.0 for a perfect step).
    c_guided = np.mean(guided[:, w // 2 + 1] - guided[:, w // 2 - 2])
    c_box = np.mean(box[:, w // 2 + 1] - box[:, w // 2 - 2])
    assert c_guided > 0.95, c_guided  # measured ~0.999
    assert c_box < 0.6, c_box  # a 9-wide box spreads the edge over 9 px: contrast ~3/9
    # ... while flat regions are still smoothed: noise std drops.
    assert np.std(guided[:, 2:w // 2 - 6]) < 0.6 * np.std(noisy[:, 2:w // 2 - 6])


def test_guided_filter_errors():
    with pytest.raises(ValueError, match="src"):
        dp.guided_filter(np.zeros((4, 4)), np.zeros((4, 4, 2)), 1, 1e-3)
    with pytest.raises(ValueError, match="guide"):
        dp.guided_filter(np.zeros((5, 4)), np.zeros((4, 4)), 1, 1e-3)
    with pytest.raises(ValueError, match="eps"):
        dp.guided_filter(np.zeros((4, 4)), np.zeros((4, 4)), 1, 0.0)


# ------------------------------------------------------------------------------------- heuristic


def test_ground_plane_depth_closed_form():
    z = dp.ground_plane_depth(10, 3, near=1.0, far=4.0, horizon=0.5)
    rows = np.arange(10.0)
    expected = np.where(rows > 5, np.clip(5.0 / np.maximum(rows - 5, 1e-9), 1.0, 4.0), 4.0)
    np.testing.assert_allclose(z, np.broadcast_to(expected[:, None], (10, 3)), rtol=1e-6)


def test_detect_sky_on_synthetic_landscape():
    img, sky = synthetic_landscape()
    got = dp.detect_sky(img)
    iou = (got & sky).sum() / (got | sky).sum()
    assert iou > 0.95, iou


def test_heuristic_depth_on_synthetic_landscape():
    img, sky = synthetic_landscape()
    est = dp.HeuristicDepth(horizon=1 / 3)
    depth = est(img)
    assert depth.shape == sky.shape and depth.dtype == np.float32
    assert np.all(np.isfinite(depth)) and depth.min() > 0
    assert depth.min() == 1.0  # near
    # Sky sits at ~sky_depth (60, divided by the bottom-row factor (H - r_h) / (H - 1 - r_h) = 64/63).
    sky_med = np.median(depth[sky])
    assert 0.85 * 60.0 < sky_med <= 60.0, sky_med
    h = img.shape[0]
    ground_rows = np.arange(h // 3 + 2, h)  # below the horizon
    assert depth[ground_rows].max() < sky_med / 2
    rho = scipy.stats.spearmanr(ground_rows, np.median(depth[ground_rows], axis=1)).statistic
    assert rho < -0.99, rho  # depth decreases towards the bottom of the image
    np.testing.assert_array_equal(depth, est(img))  # deterministic
    assert isinstance(est, dp.DepthEstimator)


def test_heuristic_depth_on_china_photo():
    from sklearn.datasets import load_sample_image

    big = load_sample_image("china.jpg").astype(np.float32) / 255.0  # 427 x 640
    img = np.clip(cv2.resize(big, (160, 107), interpolation=cv2.INTER_AREA), 0, 1)
    depth = dp.HeuristicDepth()(img)
    assert depth.min() == 1.0 and np.all(np.isfinite(depth))
    sy, sx = 107 / 427, 160 / 640
    sky = depth[: int(140 * sy), int(340 * sx):]  # clear sky, top right
    water = depth[int(240 * sy):int(310 * sy), int(380 * sx):int(520 * sx)]  # lake, right of the tower
    assert np.median(sky) > 5 * np.median(water), (np.median(sky), np.median(water))  # ~51 vs ~4
    # pop-up: the tower (its upper floors are above the horizon) stands in front of the lake, near the
    # trees at its foot, instead of at the horizon's far depth (without pop-up: ~20 vs the lake's ~4)
    tower = depth[int(130 * sy):int(250 * sy), int(160 * sx):int(330 * sx)]
    assert np.median(tower) < 0.5 * np.median(water), (np.median(tower), np.median(water))
    flat = dp.HeuristicDepth(popup=False)(img)
    tower_flat = flat[int(130 * sy):int(250 * sy), int(160 * sx):int(330 * sx)]
    assert np.median(tower_flat) > 2 * np.median(flat[int(240 * sy):int(310 * sy), int(380 * sx):int(520 * sx)])


def standing_post_scene(h=96, w=128):
    """A level camera (horizon at mid-height) over smooth ground, a smooth blue sky far away, and a
    textured post standing on the ground 6 m ahead (GroundScene ray cast: exact depth)."""
    from cine_jax import synthetic as sy

    K = sy.metric_intrinsics(h, w, principal_offset=(0.0, 0.0))
    post = sy.Billboard("rect", 6.0, (-0.4, 0.4, -1.5, 1.6), sy.smooth_texture(5, min_period=4, max_period=8),
                        (0.9, 0.5, 0.4))
    scene = sy.GroundScene(height=h, width=w, K=K, camera_height=1.6, backdrop_depth=60.0, water_z=(1e9, 1e9),
                           water_speed=0.0, billboards=(post,),
                           ground_texture=sy.smooth_texture(6, min_period=30, max_period=60, amplitude=0.03),
                           water_texture=sy.smooth_texture(7),
                           backdrop_texture=sy.smooth_texture(8, min_period=60, max_period=90, amplitude=0.01),
                           backdrop_tint=(0.9, 1.2, 1.8))
    return scene.render()


def test_standing_object_takes_the_depth_of_its_ground_contact():
    # Issue 7 item 6, known answer: the post's depth equals the ground's at its foot (the exact ray-cast
    # ratio is 1.02: the post is 6 m away, the ground at its contact row 5.9 m). Without pop-up the post,
    # which rises above the horizon, got the far depth (ratio ~6).
    r = standing_post_scene()
    post = r["surface"] == 3
    contact = np.nonzero(post.any(1))[0].max() + 1
    left = np.nonzero(post.any(0))[0].min() - 5
    exact = np.median(r["depth"][post]) / np.median(r["depth"][contact, :left])
    for popup, lo, hi in ((True, 0.85, 1.15), (False, 3.0, np.inf)):
        d = dp.HeuristicDepth(popup=popup)(r["image"])
        ratio = np.median(d[post]) / np.median(d[contact, :left])
        assert lo < ratio < hi, (popup, ratio, exact)
    assert abs(exact - 1.0) < 0.05
    # the ground elsewhere keeps the plane's shape (depth ratios between rows as the exact render's)
    rows = np.arange(contact - 8, r["depth"].shape[0], 4)
    est_ratio = np.median(d[rows, :left], axis=1) / np.median(d[rows[-1], :left])
    true_ratio = np.median(r["depth"][rows, :left], axis=1) / np.median(r["depth"][rows[-1], :left])
    np.testing.assert_allclose(est_ratio, true_ratio, rtol=0.1)


def test_ground_contact_rows_closed_form():
    h, w = 20, 6
    standing = np.zeros((h, w), bool)
    standing[2:15, 1] = True  # rises 8 rows above the horizon (row 10), foot at row 14 -> contact 15
    standing[2:11, 2] = True  # ends at the horizon row -> contact 11
    standing[2:20, 3] = True  # to the bottom: contact = H (foot out of frame)
    standing[9:14, 4] = True  # rises only 2 rows: not a standing thing (min_rise 3) -> horizon
    standing[3:16, 5] = True
    standing[12, 5] = False  # a one-row gap, bridged with gap=1
    got = dp.ground_contact_rows(standing, 10, gap=1, min_rise=3)
    np.testing.assert_array_equal(got, [10, 15, 11, 20, 10, 16])


def test_estimator_registry_and_errors():
    from configs import cinemagraph

    cfg = cinemagraph.get_config().depth
    cfg.near, cfg.heuristic.far, cfg.heuristic.sky_depth = 2.0, 30.0, 90.0
    est = dp.get_estimator("heuristic", config=cfg, seed=0)
    assert isinstance(est, dp.HeuristicDepth) and est.near == 2.0 and est.far == 30.0 and est.sky_depth == 90.0
    img, _ = synthetic_landscape(48, 64)
    assert est(img).min() == 2.0
    with pytest.raises(ValueError, match="unknown depth estimator .nope.*heuristic"):
        dp.get_estimator("nope", config=cfg, seed=0)
    dp.register_estimator("constant", lambda config, seed: (lambda image: np.full(image.shape[:2], config.near)))
    assert dp.get_estimator("constant", config=cfg, seed=0)(img)[0, 0] == 2.0
    with pytest.raises(ValueError, match="near < far"):
        dp.HeuristicDepth(near=5.0, far=2.0)
    with pytest.raises(ValueError, match="median_ksize"):
        dp.HeuristicDepth(median_ksize=4)
