import cv2
import jax
import jax.numpy as jnp
import numpy as np

from kernels import camera


def test_project_matches_opencv(rng):
    K = np.array([[500.0, 0, 320.5], [0, 480.0, 240.25], [0, 0, 1]], np.float64)
    pts_world = rng.uniform([-1, -1, 2], [1, 1, 6], size=(200, 3))
    rvec = np.array([0.1, -0.2, 0.05])
    tvec = np.array([0.3, -0.1, 0.5])
    ref, _ = cv2.projectPoints(pts_world, rvec, tvec, K, None)
    R, _ = cv2.Rodrigues(rvec)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R, tvec
    cam = camera.transform_points(jnp.asarray(pose, jnp.float32), jnp.asarray(pts_world, jnp.float32))
    uv, z = camera.project(cam, jnp.asarray(K, jnp.float32))
    np.testing.assert_allclose(np.asarray(uv), ref[:, 0, :], atol=1e-4 * 500)  # float32 at |uv|~600
    np.testing.assert_allclose(np.asarray(z), (pts_world @ R.T + tvec)[:, 2], rtol=1e-6)


def test_project_matches_opencv_float64_tolerance(rng):
    # Same check in float64 where the stated 1e-4 px tolerance is meaningful.
    with jax.enable_x64(True):
        K = jnp.asarray([[500.0, 0, 320.5], [0, 480.0, 240.25], [0, 0, 1]], jnp.float64)
        pts = rng.uniform([-1, -1, 2], [1, 1, 6], size=(100, 3))
        ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), np.asarray(K), None)
        uv, _ = camera.project(jnp.asarray(pts, jnp.float64), K)
        np.testing.assert_allclose(np.asarray(uv), ref[:, 0, :], atol=1e-4)


def test_project_of_unproject_is_pixel_grid(rng):
    h, w = 17, 23
    K = camera.intrinsics_from_focal(30.0, h, w)
    depth = jnp.asarray(rng.uniform(0.5, 10.0, size=(h, w)), jnp.float32)
    pts = camera.unproject(depth, K)
    uv, z = camera.project(pts, K)
    np.testing.assert_allclose(np.asarray(uv), np.asarray(camera.pixel_grid(h, w)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(z), np.asarray(depth), rtol=1e-6)
    # pixel (row i, column j) is at u = j, v = i
    assert float(camera.pixel_grid(h, w)[3, 5, 0]) == 5.0 and float(camera.pixel_grid(h, w)[3, 5, 1]) == 3.0


def test_fov_intrinsics_closed_form():
    K = camera.intrinsics_from_fov(90.0, 101, 201)
    np.testing.assert_allclose(float(K[1, 1]), 50.5, rtol=1e-6)  # tan(45) = 1 -> f = H / 2
    np.testing.assert_allclose([float(K[0, 2]), float(K[1, 2])], [100.0, 50.0])


def test_pose_invert_compose(rng):
    R, _ = cv2.Rodrigues(rng.normal(size=3))
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3], pose[:3, 3] = R, rng.normal(size=3)
    pose = jnp.asarray(pose)
    inv = camera.invert_pose(pose)
    np.testing.assert_allclose(np.asarray(camera.compose(pose, inv)), np.eye(4), atol=1e-5)
    np.testing.assert_allclose(np.asarray(inv), np.linalg.inv(np.asarray(pose)), atol=1e-5)
    pts = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
    back = camera.transform_points(inv, camera.transform_points(pose, pts))
    np.testing.assert_allclose(np.asarray(back), np.asarray(pts), atol=1e-5)


def test_look_at_puts_target_on_axis():
    eye = jnp.array([1.0, -2.0, -3.0])
    target = jnp.array([0.2, 0.1, 0.4])
    pose = camera.look_at(eye, target)
    cam_target = camera.transform_points(pose, target)
    np.testing.assert_allclose(np.asarray(cam_target[:2]), [0.0, 0.0], atol=1e-5)
    assert float(cam_target[2]) > 0
    np.testing.assert_allclose(float(cam_target[2]), float(jnp.linalg.norm(target - eye)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(camera.transform_points(pose, eye)), [0, 0, 0], atol=1e-5)
    r = np.asarray(pose[:3, :3])
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
    assert np.linalg.det(r) > 0
    # world "up" (-y by default) appears up in the image: a point above the target has smaller v.
    above = camera.transform_points(pose, target + jnp.array([0.0, -0.5, 0.0]))
    assert float(above[1]) < 0


def test_camera_rays_hit_unprojected_points(rng):
    h, w = 6, 8
    K = camera.intrinsics_from_focal(7.0, h, w)
    pose = camera.look_at(jnp.array([0.5, -0.3, -2.0]), jnp.zeros(3))
    depth = jnp.asarray(rng.uniform(1.0, 3.0, size=(h, w)), jnp.float32)
    world = camera.transform_points(camera.invert_pose(pose), camera.unproject(depth, K))
    o, d = camera.camera_rays(pose, K, h, w)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(d), axis=-1), 1.0, atol=1e-5)
    to_pt = np.asarray(world - o)
    cosang = np.sum(to_pt * np.asarray(d), -1) / np.linalg.norm(to_pt, axis=-1)
    np.testing.assert_allclose(cosang, 1.0, atol=1e-5)
