"""four_d/scenes.py: closed-form sphere renders vs analytic distances, brute-force ray marching, datasets."""

import json
import math

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest

from four_d import scenes
from kernels.camera import camera_rays, intrinsics_from_fov, look_at, project, transform_points


def test_depth_on_axis_equals_analytic_distance():
    scene = scenes.make_scene("single-sphere")
    h = w = 9  # odd size: the centre pixel's ray is the optical axis
    K = intrinsics_from_fov(40.0, h, w)
    for dist in (1.5, 2.0, 3.3):
        pose = look_at((0.0, 0.0, dist), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
        out = scenes.render(scene, pose, K, h, w, 0.0)
        assert float(out["distance"][4, 4]) == pytest.approx(dist - 0.4, abs=1e-5)
        assert float(out["depth"][4, 4]) == pytest.approx(dist - 0.4, abs=1e-5)
        # silhouette of a centred sphere: a disc of radius f r / sqrt(D^2 - r^2) pixels
        f = float(K[0, 0])
        rad_px = f * 0.4 / math.sqrt(dist**2 - 0.4**2)
        i, j = np.mgrid[0:h, 0:w]
        rr = np.hypot(i - 4.0, j - 4.0)
        sure = np.abs(rr - rad_px) > 0.05  # skip pixel centres within 0.05 px of the silhouette
        np.testing.assert_array_equal(np.asarray(out["alpha"])[sure], (rr < rad_px)[sure].astype(np.float32))


def test_hits_match_bruteforce_marching():
    scene = scenes.make_scene("orbiting-spheres", seed=3)
    h, w = 12, 14
    K = intrinsics_from_fov(40.0, h, w)
    pose = look_at((0.9, 0.7, 1.4), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    t = 0.3
    out = scenes.render(scene, pose, K, h, w, t)
    o, d = (np.asarray(a, np.float64).reshape(-1, 3) for a in camera_rays(pose, K, h, w))
    c = np.asarray(scenes.sphere_centers(scene, t), np.float64)
    r = scene.radius.astype(np.float64)
    # brute force: march every ray in steps of 1e-3 and find the first point inside any sphere
    ts = np.arange(0.0, 4.0, 1e-3)
    pts = o[:, None, :] + d[:, None, :] * ts[None, :, None]  # [R, T, 3]
    inside = np.any(np.linalg.norm(pts[:, :, None, :] - c, axis=-1) < r, axis=-1)
    hit_bf = inside.any(1)
    first = np.where(hit_bf, ts[np.argmax(inside, 1)], 0.0)
    dist = np.asarray(out["distance"]).reshape(-1)
    alpha = np.asarray(out["alpha"]).reshape(-1)
    np.testing.assert_array_equal(alpha > 0, hit_bf)
    np.testing.assert_allclose(dist[hit_bf], first[hit_bf], atol=1.1e-3)
    assert hit_bf.sum() > 10  # the spheres are in view
    # z-depth is the camera-frame z of the hit point
    p_cam = np.asarray(transform_points(pose, jnp.asarray(o + d * dist[:, None], jnp.float32)))
    np.testing.assert_allclose(np.asarray(out["depth"]).reshape(-1)[hit_bf], p_cam[hit_bf, 2], atol=1e-5)
    # lambertian shading closed form at every hit pixel
    p = o + d * dist[:, None]
    k = np.argmin(np.abs(np.linalg.norm(p[:, None] - c, axis=-1) - r), axis=1)
    n = (p - c[k]) / r[k, None]
    lam = np.maximum(0.0, n @ scene.light_dir.astype(np.float64))
    expect = scene.color[k] * (scene.ambient + (1 - scene.ambient) * lam)[:, None]
    np.testing.assert_allclose(np.asarray(out["rgb"]).reshape(-1, 3)[hit_bf], expect[hit_bf], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["rgb"]).reshape(-1, 3)[~hit_bf], 1.0)


def test_paths():
    scene = scenes.make_scene("orbiting-spheres")
    c0 = np.asarray(scenes.sphere_centers(scene, 0.0))
    c1 = np.asarray(scenes.sphere_centers(scene, 1.0))
    np.testing.assert_allclose(c1[:2], c0[:2], atol=1e-6)  # the circling spheres close their loop
    np.testing.assert_allclose(c1[2] - c0[2], [0.0, 0.5, 0.0], atol=1e-6)  # the third moves on a line
    ch = np.asarray(scenes.sphere_centers(scene, 0.25))
    np.testing.assert_allclose(np.linalg.norm(ch[:2, [0, 2]], axis=-1), 0.35, atol=1e-6)  # circle radius
    with pytest.raises(ValueError, match="unknown scene"):
        scenes.make_scene("nope")


def test_write_dataset_roundtrip(tmp_path):
    scene = scenes.make_scene("orbiting-spheres", seed=1)
    path = scenes.write_dataset(scene, str(tmp_path), num_views=3, times=(0.0, 0.5), size=16, num_test_views=1)
    meta = json.load(open(path))
    assert len(meta["frames"]) == 8
    assert [f["split"] for f in meta["frames"]].count("test") == 2
    K = jnp.asarray(meta["K"])
    for fr in meta["frames"]:
        pose = jnp.asarray(fr["pose"])
        img = iio.imread(tmp_path / fr["file"])
        ref = np.round(np.asarray(scenes.render(scene, pose, K, 16, 16, fr["time"])["rgb"]) * 255)
        # jitted (writer) vs eager render can differ by an ulp, i.e. 1/255 after rounding
        np.testing.assert_allclose(img.astype(np.int32), ref.astype(np.int32), atol=1)
        # cameras look at the origin from radius 1.8: the origin projects to the image centre
        uv, z = project(transform_points(pose, jnp.zeros(3)), K)
        np.testing.assert_allclose(uv, [7.5, 7.5], atol=1e-4)
        assert float(z) == pytest.approx(1.8, abs=1e-5)


def test_write_dataset_with_explicit_views(tmp_path):
    """Explicit (polar, azimuth) views: the camera centre is the official spherical point at radius 1.8
    and the origin projects to the image centre; bad views are rejected with the argument named."""
    from four_d.cameras import spherical_to_cartesian
    from kernels.camera import invert_pose

    scene = scenes.make_scene("orbiting-spheres", seed=2)
    path = scenes.write_dataset(scene, str(tmp_path), times=(0.0, 1.0), size=12, views=[(60.0, 10.0), (95.0, 200.0)],
                                test_views=[(80.0, 45.0)])
    meta = json.load(open(path))
    assert [f["split"] for f in meta["frames"]] == ["train"] * 4 + ["test"] * 2
    for fr in meta["frames"]:
        eye = np.asarray(invert_pose(jnp.asarray(fr["pose"])))[:3, 3]
        np.testing.assert_allclose(eye, spherical_to_cartesian(fr["polar"], fr["azimuth"], 1.8), atol=1e-5)
        uv, _ = project(transform_points(jnp.asarray(fr["pose"]), jnp.zeros(3)), jnp.asarray(meta["K"]))
        np.testing.assert_allclose(uv, [5.5, 5.5], atol=1e-4)
    with pytest.raises(ValueError, match="polar"):
        scenes.write_dataset(scene, str(tmp_path / "bad"), views=[(0.0, 10.0)])
    with pytest.raises(ValueError, match="views"):
        scenes.write_dataset(scene, str(tmp_path / "bad"), views=[], test_views=[(80.0, 0.0)])
