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
    # constant flow: forward = t v, backward = (t - N) v (border "clamp": exact up to the image edge)
    for t in range(n):
        np.testing.assert_allclose(fwd[t][ok[t]], np.broadcast_to(t * v, fwd[t][ok[t]].shape), atol=1e-5)
        np.testing.assert_allclose(bwd[t][ok[t]], np.broadcast_to((t - n) * v, bwd[t][ok[t]].shape), atol=1e-5)
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


def _bar_over_water(h=24, w=80, bar=(30, 40)):
    """A static bar (near layer, columns bar[0]..bar[1]-1) over water (far layer) flowing right at 1 px/frame."""
    rgba = np.ones((2, h, w, 4), np.float32)
    visible = np.zeros((2, h, w), bool)
    visible[0, :, bar[0]:bar[1]] = True
    visible[1] = ~visible[0]
    depth = np.stack([np.ones((h, w)), 3 * np.ones((h, w))]).astype(np.float32)
    ldi = layering.LDI(rgba=rgba, depth=depth, visible=visible, edges=np.array([0.5, 2.0, 3.5]))
    flow = np.zeros((h, w, 2), np.float32)
    flow[visible[1]] = (1.0, 0.0)
    return ldi, flow


def test_water_under_a_static_bar_keeps_flowing():
    # Issue 7 item 7 (README "flow lifting order"): a water point 10 px upstream of a static bar moves
    # 30 px in 30 frames (it passes behind the bar, on the water surface), not 10 px (integrating the
    # image flow first stops it at the bar, whose flow is 0). The bar itself does not move.
    ldi, flow = _bar_over_water()
    fields = scene.layer_flows(flow, ldi)
    uv = np.array([[19.0, 12.0], [19.0, 12.0], [35.0, 12.0]], np.float32)  # water, water behind bar, bar
    out = motion.euler_integrate(fields, uv, 30, layer=np.array([1, 1, 0]), border="clamp")
    d = np.asarray(out["displacement"])
    np.testing.assert_allclose(d[30, 0], [30.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(d[30, 1], [30.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(d[:, 2], 0.0)
    np.testing.assert_allclose(d[10, 0], [10.0, 0.0], atol=1e-4)  # at frame t: t px (no one-frame shift)
    # the official order (image flow integrated first) would stop the point at the bar: documented contrast
    image_only = motion.euler_integrate(flow, uv[:1], 30, border="clamp")
    assert float(np.asarray(image_only["displacement"])[30, 0, 0]) < 12.0


def test_hidden_points_move_with_their_surface_and_continuous_cuts_follow_the_image_flow():
    # (1) inpainted points of the water layer behind the bar get the water's flow, not the bar's;
    ldi, flow = _bar_over_water()
    fields = scene.layer_flows(flow, ldi)
    np.testing.assert_allclose(fields[1, :, 30:40], np.broadcast_to([1.0, 0.0], (24, 10, 2)), atol=1e-5)
    np.testing.assert_allclose(fields[0, :, 30:40], 0.0)
    # (2) one continuous surface (a ramp, no depth edge) split into two layers, with a flow that varies
    # across the cut: each layer takes the image flow on the other layer's side too, so a point crossing
    # the cut moves exactly as on the unsplit surface
    h, w = 20, 40
    z = np.broadcast_to(np.linspace(2.0, 2.4, w, dtype=np.float32), (h, w))
    visible = np.stack([z < 2.2, z >= 2.2])
    rgba = np.ones((2, h, w, 4), np.float32)
    ldi2 = layering.LDI(rgba=rgba, depth=np.stack([z, z]).astype(np.float32), visible=visible,
                        edges=np.array([1.9, 2.2, 2.5]))
    jj = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    flow2 = np.stack([0.5 + 0.02 * jj, np.zeros((h, w), np.float32)], -1)
    fields2 = scene.layer_flows(flow2, ldi2)
    np.testing.assert_allclose(fields2[0], flow2, atol=1e-6)
    np.testing.assert_allclose(fields2[1], flow2, atol=1e-6)
