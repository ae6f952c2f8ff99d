import jax.numpy as jnp
import numpy as np
import pytest

from cine_jax import layering, motion, scene
from kernels import camera


def _ldi_single(depth, image):
    h, w = depth.shape
    rgba = np.concatenate([image, np.ones((h, w, 1), np.float32)], -1)[None]
    return layering.LDI(rgba=rgba, depth=depth[None], visible=np.ones((1, h, w), bool),
                        edges=np.array([depth.min() - 1e-6, depth.max() + 1e-6]))


def test_point_cloud_keeps_alpha_pixels_and_counts_capacity(rng):
    h, w = 8, 10
    rgba = rng.uniform(size=(2, h, w, 4)).astype(np.float32)
    depth = np.stack([np.full((h, w), 1.0), np.full((h, w), 2.0)]).astype(np.float32)
    ldi = layering.LDI(rgba=rgba, depth=depth, visible=np.stack([np.ones((h, w), bool), np.zeros((h, w), bool)]),
                       edges=np.array([0.5, 1.5, 2.5]))
    cloud = scene.build_point_cloud(ldi, alpha_threshold=0.5)
    assert cloud.num_points == int((rgba[..., 3] > 0.5).sum())
    assert cloud.valid.sum() == cloud.num_points and cloud.num_dropped == 0
    assert cloud.uv.shape[0] == 16384  # rounded up to the padding multiple
    # features are the RGBA of the source pixel
    i = 0
    li = cloud.layer[i]
    u, v = cloud.uv[i].astype(int)
    np.testing.assert_array_equal(cloud.features[i], rgba[li, v, u])
    small = scene.build_point_cloud(ldi, capacity=100)
    assert small.uv.shape[0] == 100 and small.num_points == min(100, cloud.num_points)
    assert small.num_dropped == cloud.num_points - small.num_points


def test_point_cloud_layer_order_fix():
    h, w = 4, 4
    rgba = np.ones((2, h, w, 4), np.float32)
    depth = np.stack([np.full((h, w), 2.0), np.full((h, w), 1.5)]).astype(np.float32)  # layer 1 in front!
    ldi = layering.LDI(rgba=rgba, depth=depth, visible=np.stack([np.ones((h, w), bool), np.zeros((h, w), bool)]),
                       edges=np.array([0.5, 2.5, 3.0]))
    cloud = scene.build_point_cloud(ldi, order_eps=1.05)
    z1 = cloud.z[: cloud.num_points][cloud.layer[: cloud.num_points] == 1]
    np.testing.assert_allclose(z1, 2.0 * 1.05, rtol=1e-6)


def test_integrate_points_matches_image_euler_integration(rng):
    # the point version of Eq. 3 must equal motion.euler_integrate sampled at the start pixels
    h, w = 12, 14
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack([0.3 + 0.02 * yy, -0.2 + 0.01 * xx], -1).astype(np.float32)
    ref = motion.euler_integrate(jnp.asarray(flow), 6)
    uv = np.stack([xx.ravel(), yy.ravel()], -1)
    out = scene.integrate_points(flow[None], uv, np.zeros(h * w, np.int32), 6, border="zeros")
    np.testing.assert_allclose(np.asarray(out["displacement"]).reshape(7, h, w, 2),
                               np.asarray(ref["displacement"]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["valid"]).reshape(7, h, w), np.asarray(ref["valid"]))


def test_symmetric_point_displacements_loop_property():
    h, w = 16, 16
    v = np.array([0.25, -0.1], np.float32)
    flow = np.broadcast_to(v, (h, w, 2)).astype(np.float32)
    depth = np.ones((h, w), np.float32)
    ldi = _ldi_single(depth, np.zeros((h, w, 3), np.float32))
    cloud = scene.build_point_cloud(ldi)
    n = 8
    d = scene.symmetric_point_displacements(flow[None], cloud, n)
    fwd, bwd = np.asarray(d["forward"]), np.asarray(d["backward"])
    ok = np.asarray(d["forward_valid"]) & np.asarray(d["backward_valid"])
    # constant flow: forward = t v, backward = (t - N) v, so forward - backward = N v wherever both valid
    np.testing.assert_allclose((fwd - bwd)[ok], np.broadcast_to(n * v, fwd[ok].shape), atol=1e-5)
    np.testing.assert_allclose(fwd[0], 0.0)
    np.testing.assert_allclose(np.asarray(d["time"]), np.arange(n) / n)
    assert ok[1].sum() > 0.5 * cloud.num_points


def test_layer_flows_keep_visible_flow_and_extend_into_hidden():
    h, w = 24, 24
    rgba = np.ones((2, h, w, 4), np.float32)
    visible = np.zeros((2, h, w), bool)
    visible[0, 8:16, 8:16] = True  # a near square
    visible[1] = ~visible[0]  # the far layer is visible around it, hidden behind it
    ldi = layering.LDI(rgba=rgba, depth=np.stack([np.ones((h, w)), 2 * np.ones((h, w))]).astype(np.float32),
                       visible=visible, edges=np.array([0.5, 1.5, 2.5]))
    flow = np.zeros((h, w, 2), np.float32)
    flow[visible[1]] = (1.0, 0.0)  # only the far layer moves
    fields = scene.layer_flows(flow, ldi, visible_erode=3, diffuse_iters=3, diffuse_ksize=5)
    assert np.abs(fields[0]).max() == 0.0  # the square's own pixels are static
    # the hidden part of the far layer behind the square inherits the far flow
    np.testing.assert_allclose(fields[1, 10:14, 10:14], np.broadcast_to([1.0, 0.0], (4, 4, 2)), atol=1e-5)


def test_displaced_points_keep_source_depth():
    K = camera.intrinsics_from_focal(20.0, 10, 10)
    uv = jnp.array([[3.0, 4.0], [5.0, 5.0]])
    z = jnp.array([2.0, 3.0])
    pts = scene.displaced_points(uv, z, jnp.array([[1.0, 0.0], [0.0, -2.0]]), K)
    np.testing.assert_allclose(np.asarray(pts[:, 2]), [2.0, 3.0])
    uv2, _ = camera.project(pts, K)
    np.testing.assert_allclose(np.asarray(uv2), [[4.0, 4.0], [5.0, 3.0]], atol=1e-5)


def test_build_point_cloud_rejects_bad_features():
    ldi = _ldi_single(np.ones((4, 4), np.float32), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="features"):
        scene.build_point_cloud(ldi, features=np.zeros((1, 5, 4, 3), np.float32))
