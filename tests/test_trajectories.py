"""cine_jax.trajectories against the closed forms of the official paths (cinemagraphy.md section 6).

Tolerances: poses are float32, compared with float64 closed forms at 1e-7 absolute (translations are
<= 0.24); the dolly-zoom size check is 1e-4 relative as asked.
"""

import json

import numpy as np
import pytest

from cine_jax import trajectories as tr
from kernels.camera import intrinsics, project, transform_points


def translations(traj):
    return np.asarray(traj["poses"])[:, :3, 3].astype(np.float64)


@pytest.mark.parametrize("name", tr.TRAJECTORIES)
def test_shape_counts_rotation_identity(name):
    traj = tr.make_trajectory(name)
    n = {"up-down": 60, "zoom-in": 60, "side": 60, "circle": 90}.get(name, 60)
    assert traj["num_frames"] == n and traj["name"] == name
    poses = np.asarray(traj["poses"])
    assert poses.shape == (n, 4, 4) and poses.dtype == np.float32
    assert np.asarray(traj["focal_scale"]).shape == (n,)
    np.testing.assert_array_equal(poses[:, :3, :3], np.broadcast_to(np.eye(3), (n, 3, 3)))
    np.testing.assert_array_equal(poses[:, 3], np.broadcast_to([0, 0, 0, 1], (n, 4)))
    assert tr.make_trajectory(name, num_frames=0)["num_frames"] == n
    assert tr.make_trajectory(name, num_frames=7)["poses"].shape == (7, 4, 4)


@pytest.mark.parametrize(
    "name, v, double",
    [("up-down", (0, -0.08, 0), True), ("side", (-0.09, 0, 0), True), ("zoom-in", (0, 0, -0.24), False)],
)
def test_straight_lines_first_middle_last(name, v, double):
    t = translations(tr.make_trajectory(name))
    v = np.array(v)
    n = 60
    start = -v if double else 0 * v
    np.testing.assert_allclose(t[0], start, atol=1e-7)
    np.testing.assert_allclose(t[-1], v, atol=1e-7)
    # Quadratic through collinear, evenly spaced corners sampled at linspace(0, 1, N) = the line.
    for k in (1, n // 2, 41):
        np.testing.assert_allclose(t[k], start + (v - start) * k / (n - 1), atol=1e-7)
    # Middle of an even count sits half a step either side of the centre corner.
    mid = 0.5 * (t[n // 2 - 1] + t[n // 2])
    np.testing.assert_allclose(mid, 0.5 * (start + v), atol=1e-7)


def test_circle_closed_form_and_endpoints():
    x, y, z = -0.04, -0.04, -0.09
    t = translations(tr.make_trajectory("circle"))
    n = 90
    for k in (0, 1, 45, 67, 89):
        s = -2 + 4 * k / n
        ref = [np.cos(np.pi * s) * x, np.sin(np.pi * s) * y, np.cos(np.pi * s / 2) * z]
        np.testing.assert_allclose(t[k], ref, atol=1e-7)
    # Official: s = np.arange(-2, 2, 4 / N) (90 values for N = 90).
    s = np.arange(-2.0, 2.0, 4.0 / n)
    ref = np.stack([np.cos(np.pi * s) * x, np.sin(np.pi * s) * y, np.cos(np.pi * s / 2) * z], -1)
    np.testing.assert_allclose(t, ref, atol=1e-7)
    np.testing.assert_allclose(t[0], [x, 0, -z], atol=1e-7)
    np.testing.assert_allclose(t[45], [x, 0, z], atol=1e-7)  # s = 0
    # Closed loop: the frame after the last one (s = 2) is the first again.
    s_next = 2.0
    nxt = [np.cos(np.pi * s_next) * x, np.sin(np.pi * s_next) * y, np.cos(np.pi * s_next / 2) * z]
    np.testing.assert_allclose(nxt, t[0], atol=1e-7)
    step = np.linalg.norm(np.diff(np.concatenate([t, t[:1]]), axis=0), axis=-1)
    assert step[-1] == pytest.approx(step[0], rel=1e-4)  # the seam step is an ordinary step
    # N with float-arange trouble (np.arange gives 50 values for 49): ours gives exactly N.
    assert tr.make_trajectory("circle", num_frames=49)["num_frames"] == 49
    assert tr.make_trajectory("circle", num_frames=49)["poses"].shape[0] == 49


def test_swing_loops_and_moves_forward():
    t = translations(tr.make_trajectory("swing"))
    n = 60
    k = np.arange(n + 1)
    p = 2 * np.pi * k / n
    ref = np.stack([np.sin(p) * -0.09, 0 * p, np.sin(p) ** 2 * -0.03], -1)
    np.testing.assert_allclose(t, ref[:n], atol=1e-7)
    np.testing.assert_allclose(ref[n], t[0], atol=1e-7)  # frame N == frame 0
    assert np.all(t[:, 2] <= 0) and t[15, 2] == pytest.approx(-0.03, abs=1e-7)


def test_dolly_zoom_keeps_reference_plane_size():
    h, w, f = 48, 64, 60.0
    scene_depth, ref = 2.0, 3.0
    traj = tr.make_trajectory("dolly-zoom", scene_depth=scene_depth, ref_depth=ref)
    poses, fs = np.asarray(traj["poses"]), np.asarray(traj["focal_scale"])
    assert fs[0] == 1.0 and fs[-1] == pytest.approx((ref - 0.24 * scene_depth) / ref, rel=1e-6)
    np.testing.assert_allclose(translations(traj)[-1], [0, 0, -0.24 * scene_depth], atol=1e-7)

    def size(depth, k):
        K = intrinsics(f * fs[k], f * fs[k], w / 2, h / 2)
        pts = np.array([[-0.2, 0.1, depth], [0.3, -0.1, depth]], np.float32)
        uv, _ = project(transform_points(poses[k], pts), K)
        return float(np.linalg.norm(np.asarray(uv[1] - uv[0])))

    ref_sizes = np.array([size(ref, k) for k in range(traj["num_frames"])])
    np.testing.assert_allclose(ref_sizes, ref_sizes[0], rtol=1e-4)
    far = np.array([size(2 * ref, k) for k in range(traj["num_frames"])])
    assert far[-1] / far[0] < 0.95  # content behind the reference plane shrinks
    with pytest.raises(ValueError, match="ref_depth"):
        tr.make_trajectory("dolly-zoom", ref_depth=0.2)


@pytest.mark.parametrize("name", ["up-down", "zoom-in", "side", "circle", "swing", "dolly-zoom"])
def test_scale_and_scene_depth_are_linear(name):
    base = translations(tr.make_trajectory(name, ref_depth=10.0))
    assert np.abs(base).max() > 0.01
    for scale, depth, factor in ((2.5, 1.0, 2.5), (1.0, 3.0, 3.0), (0.5, 4.0, 2.0)):
        got = translations(tr.make_trajectory(name, scale=scale, scene_depth=depth, ref_depth=10.0))
        np.testing.assert_allclose(got, factor * base, atol=1e-6)


def test_static_and_errors():
    static = np.asarray(tr.make_trajectory("static", 5)["poses"])
    np.testing.assert_array_equal(static, np.tile(np.eye(4), (5, 1, 1)))
    with pytest.raises(ValueError, match="circle"):  # the message lists the names
        tr.make_trajectory("spiral")
    with pytest.raises(ValueError, match="num_frames"):
        tr.make_trajectory("side", num_frames=-3)
    with pytest.raises(ValueError, match="scene_depth"):
        tr.make_trajectory("side", scene_depth=0.0)


def test_cameras_from_json_uses_io_load_cameras(tmp_path):
    poses = np.tile(np.eye(4), (4, 1, 1))
    poses[:, 0, 3] = np.arange(4)
    K = np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])
    path = tmp_path / "cams.json"
    path.write_text(json.dumps({"K": K.tolist(), "poses": poses.tolist()}))
    cams = tr.cameras_from_json(str(path), num_frames=3)
    assert cams["num_frames"] == 3
    np.testing.assert_array_equal(np.asarray(cams["poses"]), poses[:3])
    np.testing.assert_array_equal(np.asarray(cams["K"]), np.broadcast_to(K, (3, 3, 3)))
    np.testing.assert_array_equal(np.asarray(cams["K_source"]), K)
    np.testing.assert_array_equal(np.asarray(cams["focal_scale"]), np.ones(3))
    assert tr.cameras_from_json(str(path))["num_frames"] == 4
    with pytest.raises(ValueError, match="num_frames"):
        tr.cameras_from_json(str(path), num_frames=5)
