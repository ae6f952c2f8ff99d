"""four_d/previews.py: the test-orbit previews of a stage, with the analytic four_d/scenes.py renderer."""

import os

import cv2
import imageio.v2 as iio2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.four_d import get_config
from four_d import previews, scenes
from kernels.camera import intrinsics_from_fov

SIZE = 32


def scene_renderer(scene):
    """scenes.render in the previews' renderer signature (its alpha is the opacity)."""
    fn = jax.jit(lambda pose, K, t: scenes.render(scene, pose, K, SIZE, SIZE, t))

    def render(params, pose, K, t):
        out = fn(pose, K, jnp.float32(t))
        return dict(rgb=out["rgb"], normal=out["normal"], depth=out["depth"], opacity=out["alpha"])

    return render


@pytest.fixture(scope="module")
def config():
    c = get_config("tiny")
    c.cameras.num_test_frames = 12
    return c


def test_orbit_frames_are_view_k_at_time_k_over_n(config):
    """Frame k is the exact render from azimuth 360 k / n at t = k / n (scenes.orbit_pose, an independent pose)."""
    scene = scenes.make_scene("orbiting-spheres")
    pics, times = previews.render_orbit(scene_renderer(scene), None, config, SIZE)
    n = config.cameras.num_test_frames
    np.testing.assert_allclose(times, np.arange(n) / n)
    K = intrinsics_from_fov(config.cameras.fovy, SIZE, SIZE)
    for k in (0, 5, n - 1):
        pose = scenes.orbit_pose(90.0, 360.0 * k / n, 1.8)
        ref = scenes.render(scene, jnp.asarray(pose, jnp.float32), K, SIZE, SIZE, k / n)
        np.testing.assert_allclose(pics["rgb"][k], np.asarray(ref["rgb"]), atol=1e-4)
        np.testing.assert_allclose(pics["opacity"][k][..., 0], np.asarray(ref["alpha"]), atol=1e-6)
        # normals: (n + 1) / 2 on the object, white elsewhere
        m = np.asarray(ref["alpha"]) > 0.5
        np.testing.assert_allclose(pics["normal"][k][m], (np.asarray(ref["normal"])[m] + 1) / 2, atol=1e-4)
        assert np.all(pics["normal"][k][~m] == 1.0)


def test_depth_pictures_share_one_range():
    depths = np.array([[[1.0, 2.0]], [[4.0, 0.0]]], np.float32)  # [2 frames, 1, 2]
    opac = np.array([[[1.0, 1.0]], [[1.0, 0.0]]], np.float32)
    pics = previews.depth_pictures(depths, opac)
    top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1] / 255.0
    low = cv2.applyColorMap(np.array([[0]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1] / 255.0
    np.testing.assert_allclose(pics[0, 0, 0], top, atol=1e-6)  # nearest over all frames: brightest
    np.testing.assert_allclose(pics[1, 0, 0], low, atol=1e-6)  # farthest over all frames: darkest
    assert np.all(pics[1, 0, 1] == 0)  # empty pixel: black


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_stage_previews_writes_videos_and_sheet(tmp_path, config, fmt):
    scene = scenes.make_scene("orbiting-spheres")
    out = str(tmp_path / "static")
    paths = previews.stage_previews(scene_renderer(scene), None, out, config, "static", size=SIZE, fmt=fmt,
                                    sheet_frames=4)
    n = config.cameras.num_test_frames
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths.values())  # no partial files
    for c in previews.CHANNELS:
        frames = iio2.mimread(paths[c])
        assert len(frames) == n and frames[0].shape[:2] == (SIZE, SIZE)
    rgb = np.asarray(iio2.mimread(paths["rgb"])[3])[..., :3] / 255.0
    pics, _ = previews.render_orbit(scene_renderer(scene), None, config, SIZE)
    tol = 0.01 if fmt == "gif" else 0.08  # gif palette / h264 compression
    assert np.abs(rgb - pics["rgb"][3]).mean() < tol
    sheet = cv2.imread(paths["sheet"])
    assert sheet.shape[0] > 4 * SIZE and sheet.shape[1] > 4 * SIZE  # 4 rows (channels) x 4 frames


def test_bad_arguments(tmp_path, config):
    r = scene_renderer(scenes.make_scene("single-sphere"))
    with pytest.raises(ValueError, match="stage"):
        previews.stage_previews(r, None, str(tmp_path), config, "a/b")
    with pytest.raises(ValueError, match="normal"):
        previews.stage_previews(lambda *a: dict(rgb=np.zeros((8, 8, 3))), None, str(tmp_path), config, "s", size=8)


def test_normal_picture_semi_transparent():
    """A composited normal sum_s w n with opacity 0.5 is (n + 1) / 2 over white with weight 0.5."""
    n = np.array([[[0.0, -1.0, 1.0 / np.sqrt(2)]]], np.float32)
    op = np.array([[0.5]], np.float32)
    np.testing.assert_allclose(previews.normal_picture(0.5 * n, op), 0.5 * (n + 1) / 2 + 0.5, atol=1e-7)
