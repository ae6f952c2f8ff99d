"""four_d/cameras.py: spherical convention, reference/random/dynamic/orbit cameras, temporal sampling."""

import itertools
import random
from fractions import Fraction

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from four_d import cameras
from kernels.camera import camera_rays, invert_pose, project, transform_points


def _project_origin(pose, K):
    uv, z = project(transform_points(pose, jnp.zeros(3)), K)
    return np.asarray(uv), float(z)


def test_spherical_convention_closed_form():
    # Official: eye = r (sin p sin a, cos p, sin p cos a); polar from +y, azimuth 0 on +z, 90 on +x.
    pts = cameras.spherical_to_cartesian(
        jnp.array([90.0, 0.0, 90.0, 180.0]), jnp.array([0.0, 0.0, 90.0, 0.0]), 2.0
    )
    np.testing.assert_allclose(np.asarray(pts), [[0, 0, 2], [0, 2, 0], [2, 0, 0], [0, -2, 0]], atol=1e-6)
    polar, azimuth, radius = cameras.cartesian_to_spherical(jnp.array([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose([polar[0], azimuth[0], radius[0]], [45.0, 90.0, np.sqrt(2)], rtol=1e-6)


def test_spherical_round_trip(rng):
    p = rng.uniform(1, 179, 100)
    a = rng.uniform(-179, 179, 100)
    r = rng.uniform(0.5, 3, 100)
    p2, a2, r2 = cameras.cartesian_to_spherical(cameras.spherical_to_cartesian(p, a, r))
    np.testing.assert_allclose(np.asarray(p2), p, atol=1e-3)  # degrees, float32 acos
    np.testing.assert_allclose(np.asarray(a2), a, atol=1e-3)
    np.testing.assert_allclose(np.asarray(r2), r, rtol=1e-5)


def test_reference_camera_looks_at_origin_from_plus_z():
    cam = cameras.reference_camera(radius=1.8, fovy=40.0, size=64)
    pose, K = np.asarray(cam["poses"]), np.asarray(cam["K"])
    np.testing.assert_allclose(np.asarray(invert_pose(cam["poses"]))[:3, 3], [0, 0, 1.8], atol=1e-6)
    # The origin projects to the image centre at depth 1.8; cross-check the projection with OpenCV.
    uv, z = _project_origin(cam["poses"], cam["K"])
    np.testing.assert_allclose(uv, [31.5, 31.5], atol=1e-4)
    assert abs(z - 1.8) < 1e-6
    world = np.array([[0.3, 0.2, 0.1], [0.0, 0.0, 0.0]], np.float64)
    rvec, _ = cv2.Rodrigues(pose[:3, :3].astype(np.float64))
    cv_uv, _ = cv2.projectPoints(world, rvec, pose[:3, 3].astype(np.float64), K.astype(np.float64), None)
    ours, _ = project(transform_points(cam["poses"], jnp.asarray(world, jnp.float32)), cam["K"])
    np.testing.assert_allclose(np.asarray(ours), cv_uv[:, 0], atol=1e-3)
    # Image orientation: world +x to the right, world +y up (smaller row index).
    assert ours[0, 0] > 31.5 and ours[0, 1] < 31.5
    # Focal from fovy: f = (H/2) / tan(fovy/2).
    np.testing.assert_allclose(K[0, 0], 32 / np.tan(np.radians(20)), rtol=1e-6)
    # The central ray of an odd-sized image points from the eye to the origin.
    o, d = camera_rays(cam["poses"], cameras.reference_camera(size=5)["K"], 5, 5)
    np.testing.assert_allclose(np.asarray(d[2, 2]), [0, 0, -1], atol=1e-6)


def _assert_look_at_origin(cam, size):
    poses = np.asarray(cam["poses"])
    r = poses[:, :3, :3]
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)
    uv = np.stack([_project_origin(p, cam["K"])[0] for p in cam["poses"]])
    np.testing.assert_allclose(uv, (size - 1) / 2.0, atol=1e-3)
    eyes = np.asarray(invert_pose(cam["poses"]))[:, :3, 3]
    np.testing.assert_allclose(eyes, np.asarray(cam["eye"]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=-1), np.asarray(cam["radius"]), rtol=1e-5)


def test_random_cameras_ranges_and_look_at():
    cam = jax.jit(lambda k: cameras.random_cameras(k, 4000, size=32))(jax.random.PRNGKey(0))
    polar, azimuth = np.asarray(cam["polar"]), np.asarray(cam["azimuth"])
    assert cam["poses"].shape == (4000, 4, 4)
    np.testing.assert_allclose(np.asarray(cam["radius"]), 1.8)
    assert polar.min() >= 0.0 and polar.max() <= 135.0 + 1e-4
    assert azimuth.min() >= -180.0 and azimuth.max() < 180.0
    # polar < 45 only happens on the hemisphere branch (rate 0.5); its probability under the official
    # normalised-cube draw is estimated independently with NumPy (200k samples).
    g = np.random.default_rng(1)
    v = np.stack([g.uniform(-1, 1, 200_000), g.uniform(0, 1, 200_000), g.uniform(-1, 1, 200_000)], -1)
    p_cube = np.mean(np.degrees(np.arccos(v[:, 1] / np.linalg.norm(v, axis=-1))) < 45.0)
    expected = 0.5 * p_cube
    sigma = np.sqrt(expected * (1 - expected) / 4000)
    assert abs(np.mean(polar < 45.0) - expected) < 3.5 * sigma
    # Box branch: polar in [45, 135]; P(polar > 90) = 0.5 * 0.5 (hemisphere never goes below y = 0).
    assert abs(np.mean(polar > 90.0) - 0.25) < 3.5 * np.sqrt(0.25 * 0.75 / 4000)
    _assert_look_at_origin(jax.tree.map(lambda x: x if x.ndim < 1 or x.shape[0] != 4000 else x[:50], cam), 32)


def test_uniform_hemisphere_option():
    cam = cameras.random_cameras(jax.random.PRNGKey(3), 4000, uniform_sphere_rate=1.0, hemisphere="uniform")
    cos_p = np.cos(np.radians(np.asarray(cam["polar"])))
    # Uniform on the upper hemisphere <=> cos(polar) ~ U[0, 1]: mean 1/2, variance 1/12.
    assert cos_p.min() >= 0.0
    assert abs(cos_p.mean() - 0.5) < 3.5 * np.sqrt(1 / 12 / 4000)
    with pytest.raises(ValueError, match="hemisphere"):
        cameras.random_cameras(jax.random.PRNGKey(3), 2, hemisphere="cube")


def test_dynamic_camera_trajectory_linear():
    num_frames = 16
    for seed in range(6):
        cam = cameras.dynamic_camera_trajectory(jax.random.PRNGKey(seed), num_frames=num_frames, size=16)
        polar = np.asarray(cam["polar"], np.float64)
        azimuth = np.unwrap(np.radians(np.asarray(cam["azimuth"], np.float64)))
        f = np.arange(num_frames) / num_frames
        for angle, max_delta in ((polar, 45.0), (np.degrees(azimuth), 90.0)):
            slope = (angle[-1] - angle[0]) / f[-1]  # theta_f = theta_0 + (f / F) delta
            np.testing.assert_allclose(angle, angle[0] + f * slope, atol=1e-3)
            assert abs(slope) <= max_delta + 1e-3
        assert 0.0 <= polar[0] <= 135.0 + 1e-4
        _assert_look_at_origin(cam, 16)


def test_orbit_cameras():
    cam = cameras.orbit_cameras(8, polar=90.0, radius=1.8, size=16)
    eyes = np.asarray(cam["eye"])
    a = np.radians(np.arange(8) * 45.0)
    np.testing.assert_allclose(eyes, 1.8 * np.stack([np.sin(a), np.zeros(8), np.cos(a)], -1), atol=1e-5)
    _assert_look_at_origin(cam, 16)


def test_bad_size_raises():
    with pytest.raises(ValueError, match="size"):
        cameras.reference_camera(size=0)
    with pytest.raises(ValueError, match="num_frames"):
        cameras.temporal_balanced_sampling(jax.random.PRNGKey(0), precision=8, num_frames=16)


# --- temporal balanced sampling -----------------------------------------------------------------------


def _official_draw(r, precision, num_frames, zero_rate):
    """Independent re-statement of the official collate() time draw, with Python's `random`."""
    from_zero = r.random() < zero_rate
    window = int(r.randint(num_frames, precision) / num_frames) * num_frames
    stride = window // num_frames
    start = 0 if from_zero else r.randint(0, precision - window)
    t = np.arange(num_frames) * stride + start
    if r.random() > 0.5:
        t = (precision - t)[::-1]
        from_zero = False
    return t / precision, stride, from_zero


def _exact_distribution(precision, num_frames, zero_rate, mirror_rate):
    """Exact enumeration over every (v, branch, start, mirror) outcome with rational arithmetic."""
    zr, mr = Fraction(zero_rate).limit_denominator(1000), Fraction(mirror_rate).limit_denominator(1000)
    vs = range(num_frames, precision + 1)
    strides, touch0, touch1 = {}, Fraction(0), Fraction(0)
    for v, zero_branch, mirrored in itertools.product(vs, (True, False), (True, False)):
        window = (v // num_frames) * num_frames
        starts = [0] if zero_branch else list(range(precision - window + 1))
        p = Fraction(1, len(vs)) * (zr if zero_branch else 1 - zr) * (mr if mirrored else 1 - mr)
        strides[window // num_frames] = strides.get(window // num_frames, 0) + p
        for s in starts:
            t = [s + k * (window // num_frames) for k in range(num_frames)]
            if mirrored:
                t = [precision - x for x in t]
            touch0 += p / len(starts) * (0 in t)
            touch1 += p / len(starts) * (precision in t)
    return strides, touch0, touch1


def test_analytic_distribution_matches_exact_enumeration():
    d = cameras.temporal_sampling_distribution(precision=256, num_frames=16, zero_rate=0.2, mirror_rate=0.5)
    np.testing.assert_allclose(d["stride_probs"][:15], 16 / 241, rtol=1e-12)
    np.testing.assert_allclose(d["stride_probs"][15], 1 / 241, rtol=1e-12)
    assert abs(d["time_visits"].sum() - 16) < 1e-9
    for precision, num_frames, zr, mr in ((32, 4, 0.2, 0.5), (40, 8, 0.3, 0.25), (256, 16, 0.2, 0.5)):
        d = cameras.temporal_sampling_distribution(precision, num_frames, zr, mr)
        strides, t0, t1 = _exact_distribution(precision, num_frames, zr, mr)
        np.testing.assert_allclose(d["stride_probs"], [float(strides[s]) for s in d["strides"]], rtol=1e-12)
        np.testing.assert_allclose([d["p_touch_zero"], d["p_touch_one"]], [float(t0), float(t1)], rtol=1e-12)
        np.testing.assert_allclose(d["p_from_zero"], (1 - mr) * zr, rtol=1e-12)


def test_temporal_sampling_empirical_matches_analytic():
    n = 20_000
    out = jax.jit(lambda k: cameras.temporal_balanced_sampling_batch(k, n))(jax.random.PRNGKey(0))
    times, stride = np.asarray(out["times"]), np.asarray(out["stride"])
    assert times.shape == (n, 16) and times.dtype == np.float32
    assert times.min() >= 0.0 and times.max() <= 1.0
    np.testing.assert_allclose(
        np.diff(times, axis=1), np.broadcast_to(stride[:, None] / 256, (n, 15)), atol=1e-6
    )
    d = cameras.temporal_sampling_distribution()
    # Stride histogram: chi-square with 15 degrees of freedom; 99.9% quantile is 37.7.
    counts = np.array([np.sum(stride == s) for s in d["strides"]])
    expected = n * d["stride_probs"]
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 37.7, chi2
    # Per-event frequencies within 3.5 sigma of the analytic probability.
    for name, hit in (
        ("p_touch_zero", np.any(times == 0.0, axis=1)),
        ("p_touch_one", np.any(times == 1.0, axis=1)),
        ("p_from_zero", np.asarray(out["from_zero"])),
    ):
        p = d[name]
        assert abs(hit.mean() - p) < 3.5 * np.sqrt(p * (1 - p) / n), (name, hit.mean(), p)
    assert abs(np.asarray(out["mirrored"]).mean() - 0.5) < 3.5 * np.sqrt(0.25 / n)
    # from_zero clips start at exactly t = 0.
    assert np.all(times[np.asarray(out["from_zero"]), 0] == 0.0)
    # Mean number of frames per clip landing in [0, 1/16), compared with the analytic visit counts.
    emp = np.mean(np.sum(times < 1 / 16, axis=1))
    ana = d["time_visits"][:16].sum()
    assert abs(emp - ana) < 0.05 * ana, (emp, ana)


def test_temporal_sampling_matches_official_simulation():
    # The official Python-random procedure and ours give the same touch/stride statistics (20k draws each).
    r = random.Random(0)
    sims = [_official_draw(r, 256, 16, 0.2) for _ in range(20_000)]
    t_off = np.stack([s[0] for s in sims])
    d = cameras.temporal_sampling_distribution()
    for p, hit in ((d["p_touch_zero"], t_off[:, 0] == 0), (d["p_touch_one"], t_off[:, -1] == 1)):
        assert abs(hit.mean() - p) < 3.5 * np.sqrt(p * (1 - p) / len(sims))
    one = cameras.temporal_balanced_sampling(jax.random.PRNGKey(5))
    assert one["times"].shape == (16,) and np.all(np.diff(np.asarray(one["times"])) > 0)
