"""cine_jax.render: blending (Eq. 4-6), loop closure, hole filling by symmetric animation, parallax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cine_jax import motion, render, scene, synthetic
from cine_jax.layering import LDI
from configs import cinemagraph
from kernels import camera


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def _opts(**kw):
    o = render.render_options(cinemagraph.get_config("tiny"))
    o.update(kw)
    return o


def _single_layer(s):
    h, w = s.depth.shape
    rgba = np.concatenate([s.image, np.ones((h, w, 1), np.float32)], -1)[None]
    return LDI(rgba=rgba, depth=s.depth[None], visible=np.ones((1, h, w), bool),
               edges=np.array([s.depth.min() - 1e-6, s.depth.max() + 1e-6]))


def _scene_arrays(cloud, K):
    return {"uv": jnp.asarray(cloud.uv), "z": jnp.asarray(cloud.z), "features": jnp.asarray(cloud.features),
            "K_ref": jnp.asarray(K)}


def _setup(s, n):
    h, w = s.depth.shape
    ldi = _single_layer(s)
    cloud = scene.build_point_cloud(ldi)
    fields = scene.layer_flows(s.flow, ldi)
    disp = scene.symmetric_point_displacements(fields, cloud, n)
    K = np.asarray(camera.intrinsics_from_focal(float(max(h, w)), h, w))
    return cloud, disp, K


def _frame(arrays, disp, t, n, pose, K, size, opts, forward_only=False, decoder=None):
    decoder = decoder or render.IdentityDecoder(fill_holes=False)
    time = 0.0 if forward_only else t / n
    return render.render_frame(arrays, disp["forward"][t], disp["backward"][t], disp["forward_valid"][t],
                               disp["backward_valid"][t], time, pose, K, size, opts, decoder)


def test_blend_weights_closed_form():
    af = jnp.array([[1.0, 0.5, 0.0, 0.0]])
    ab = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    df = jnp.array([[2.0, 1.0, 0.0, 0.0]])
    db = jnp.array([[3.0, 1.0, 2.0, 0.0]])
    t = 0.25
    w = np.asarray(render.blend_weights(af, df, ab, db, t, beta=1.0))
    wf = 0.75 * 1.0 * np.exp(-2.0)
    wb = 0.25 * 1.0 * np.exp(-3.0)
    np.testing.assert_allclose(w[0, 0], wf / (wf + wb), rtol=1e-5)
    np.testing.assert_allclose(w[0, 1], 0.75 * 0.5 / (0.75 * 0.5 + 0.25), rtol=1e-5)
    assert w[0, 2] == 0.0  # only the backward side has content
    np.testing.assert_allclose(w[0, 3], 0.75)  # both empty: 1 - t/N
    # far scenes do not underflow: shifting both depths by 200 changes nothing
    w2 = np.asarray(render.blend_weights(af, df + 200, ab, db + 200, t, beta=1.0))
    np.testing.assert_allclose(w2[0, :2], w[0, :2], rtol=1e-5)


def test_constant_flow_plane_reproduces_advected_texture():
    # a fronto-parallel plane whose texture flows with constant velocity v, seen from the reference
    # camera. Frame t blends the forward cloud tex(p - t v) and the backward cloud tex(p - (t - N) v)
    # with W = 1 - t/N (equal alpha and depth), which we compare with the analytic texture.
    s = synthetic.plane_scene(64, 64, velocity=(0.7, 0.3), far_depth=2.0)
    n = 10
    cloud, disp, K = _setup(s, n)
    arrays = _scene_arrays(cloud, K)
    opts = _opts()
    pose = jnp.eye(4)
    for t in (3, 7):
        out = _frame(arrays, disp, t, n, pose, jnp.asarray(K), (64, 64), opts)
        wgt = 1 - t / n
        uv = synthetic.pixel_uv(64, 64)
        v = np.asarray(s.velocity, np.float32)
        expected = wgt * s.texture(uv - t * v) + (1 - wgt) * s.texture(uv - (t - n) * v)
        # away from the borders, where both clouds cover the pixel. Measured 71 dB (the bilinear splat
        # resamples the sub-pixel motion exactly up to the texture's curvature); a flipped flow sign
        # scores 37.8 dB and a one-frame time shift 37.4 dB against the same expectation.
        m = 8
        psnr = _psnr(np.asarray(out["rgb"])[m:-m, m:-m], expected[m:-m, m:-m])
        assert psnr >= 60.0, (t, psnr)
        np.testing.assert_allclose(np.asarray(out["weight_forward"])[m:-m, m:-m], wgt, atol=1e-4)


def test_frame_zero_at_identity_reproduces_input():
    s = synthetic.plane_scene(48, 48, near_box=(12, 12, 30, 30))
    cloud, disp, K = _setup(s, 6)
    out = _frame(_scene_arrays(cloud, K), disp, 0, 6, jnp.eye(4), jnp.asarray(K), (48, 48), _opts())
    assert _psnr(out["rgb"], s.image) >= 60.0
    assert float(np.asarray(out["alpha"]).min()) >= 0.99


def test_frame_n_equals_frame_zero():
    # render frame N explicitly: forward displaced by F(0->N) at time 1, backward by F(0->0) = 0
    s = synthetic.plane_scene(48, 48, velocity=(0.6, -0.2), near_box=(10, 14, 26, 30))
    n = 8
    h, w = 48, 48
    ldi = _single_layer(s)
    cloud = scene.build_point_cloud(ldi)
    fields = scene.layer_flows(s.flow, ldi)
    fwd = motion.euler_integrate(fields, cloud.uv, n, layer=cloud.layer, border="clamp")
    bwd = motion.euler_integrate(-fields, cloud.uv, n, layer=cloud.layer, border="clamp")
    K = np.asarray(camera.intrinsics_from_focal(48.0, h, w))
    arrays = _scene_arrays(cloud, K)
    pose = camera.translation_pose([0.3, -0.2, 0.1])  # large enough to uncover pixels at the borders
    dec = render.IdentityDecoder(fill_holes=True)
    valid = jnp.asarray(cloud.valid)
    f0 = render.render_frame(arrays, fwd["displacement"][0], bwd["displacement"][n], fwd["valid"][0] & valid,
                             bwd["valid"][n] & valid, 0.0, pose, jnp.asarray(K), (h, w), _opts(), dec)
    fn = render.render_frame(arrays, fwd["displacement"][n], bwd["displacement"][0], fwd["valid"][n] & valid,
                             bwd["valid"][0] & valid, 1.0, pose, jnp.asarray(K), (h, w), _opts(), dec)
    assert (~np.asarray(f0["covered"])).sum() > 0  # the loop must also close where frame 0 has holes
    np.testing.assert_array_equal(np.asarray(fn["covered"]), np.asarray(f0["covered"]))
    np.testing.assert_allclose(np.asarray(fn["rgb"]), np.asarray(f0["rgb"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(fn["features"]), np.asarray(f0["features"]), atol=1e-5)


def test_symmetric_animation_leaves_fewer_holes_than_forward_only():
    # water (the far plane) flows right; a static near square sits in front. Forward-only animation
    # uncovers pixels upstream that nothing fills; the backward cloud fills them.
    s = synthetic.plane_scene(64, 64, velocity=(1.0, 0.0), near_box=(20, 20, 44, 44))
    n = 12
    cloud, disp, K = _setup(s, n)
    arrays = _scene_arrays(cloud, K)
    opts = _opts()
    sym_holes, fwd_holes = 0, 0
    for t in (4, 8, 11):
        sym = _frame(arrays, disp, t, n, jnp.eye(4), jnp.asarray(K), (64, 64), opts)
        fwd_only = render.render_frame(arrays, disp["forward"][t], disp["forward"][t], disp["forward_valid"][t],
                                       disp["forward_valid"][t], 0.0, jnp.eye(4), jnp.asarray(K), (64, 64), opts,
                                       render.IdentityDecoder(fill_holes=False))
        sym_holes += int((~np.asarray(sym["covered"])).sum())
        fwd_holes += int((~np.asarray(fwd_only["covered"])).sum())
    assert fwd_holes > 0
    assert sym_holes < fwd_holes / 4, (sym_holes, fwd_holes)


def test_parallax_near_moves_more_than_far():
    # two layers: a near square at z=1 and a far plane at z=4. Feature = source column u, so the shift
    # of each rendered pixel is p_u - u_src; a camera translation tx shifts by -fx * tx / z.
    h, w = 48, 64
    fx = 64.0
    K = np.asarray(camera.intrinsics_from_focal(fx, h, w))
    u_src = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    depth = np.full((h, w), 4.0, np.float32)
    box = (16, 24, 32, 40)
    depth[box[0]:box[2], box[1]:box[3]] = 1.0
    feats = np.stack([u_src, np.zeros_like(u_src), np.zeros_like(u_src), np.ones_like(u_src)], -1)
    vis = np.zeros((2, h, w), bool)
    vis[0, box[0]:box[2], box[1]:box[3]] = True
    vis[1] = ~vis[0]
    rgba = np.stack([feats, feats])
    rgba[0, ..., 3] = vis[0]
    ldi = LDI(rgba=rgba.astype(np.float32), depth=np.stack([np.ones((h, w)), 4 * np.ones((h, w))]).astype(np.float32),
              visible=vis, edges=np.array([0.5, 2.0, 4.5]))
    cloud = scene.build_point_cloud(ldi)
    n = 2
    zeros = np.zeros((1,) + ldi.depth.shape[1:] + (2,), np.float32)
    disp = scene.symmetric_point_displacements(np.concatenate([zeros, zeros]), cloud, n)
    tx = 0.0625  # shifts of exactly 4 px (near) and 1 px (far): no resampling error in the measurement
    pose = camera.translation_pose([tx, 0.0, 0.0])
    out = _frame(_scene_arrays(cloud, K), disp, 0, n, pose, jnp.asarray(K), (h, w), _opts(adaptive_radius=False))
    shift = np.arange(w)[None, :] - np.asarray(out["features"])[..., 0]
    near_shift = np.median(shift[20:28, 30:36])
    far_shift = np.median(shift[4:12, 4:20])
    np.testing.assert_allclose(near_shift, fx * tx / 1.0, atol=0.02)
    np.testing.assert_allclose(far_shift, fx * tx / 4.0, atol=0.02)
    assert near_shift > 3 * far_shift


def test_push_pull_fill_is_smooth_on_a_revealed_border_band():
    # Issue 7 item 5: a camera move reveals a band along the right and bottom borders. The fill must have
    # no block edges: inside the band and across its border the step between neighbouring pixels stays
    # within a few times the image's own gradient (0.0125 / 0.0167 per pixel here); the old nearest-pull
    # push-pull left 2^k-pixel squares with steps of 0.31.
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:, 50:] = False
    valid[40:, :] = False
    out = np.asarray(render.push_pull_fill(jnp.asarray(img * valid[..., None]), jnp.asarray(valid), 8))
    np.testing.assert_array_equal(out[valid], img[valid])
    step_x = np.abs(np.diff(out, axis=1)).max()
    step_y = np.abs(np.diff(out, axis=0)).max()
    assert step_x < 4 * (1 / w) and step_y < 4 * (1 / h), (step_x, step_y)
    # no 2x2 or larger constant blocks inside the band (a nearest-neighbour pull makes them)
    band = ~valid
    flat = (np.abs(np.diff(out, axis=1)).max(-1) < 1e-7)[:-1] & (np.abs(np.diff(out, axis=0)).max(-1) < 1e-7)[:, :-1]
    assert not (flat & band[:-1, :-1]).any()


def test_push_pull_fill_keeps_valid_and_fills_holes(rng):
    img = rng.uniform(size=(20, 30, 3)).astype(np.float32)
    valid = rng.uniform(size=(20, 30)) > 0.3
    out = np.asarray(render.push_pull_fill(jnp.asarray(img), jnp.asarray(valid), levels=4))
    np.testing.assert_array_equal(out[valid], img[valid])
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
    # a constant image stays constant wherever it is filled
    const = np.full((20, 30, 3), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(render.push_pull_fill(jnp.asarray(const), jnp.asarray(valid), 4)), 0.3,
                               atol=1e-6)


def test_upsample2_matches_pytorch_bilinear(rng):
    # the push-pull's x2 upsampling: PyTorch's bilinear interpolate with align_corners=False (half-pixel
    # centres, replicated borders), odd sizes; float32 rounding only (tolerance 1e-6)
    torch = pytest.importorskip("torch")
    x = rng.random((5, 7, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], scale_factor=2,
                                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    out = np.asarray(render._upsample2(jnp.asarray(x), (10, 14, 3)))
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_sharded_chunk_equals_single_device():
    s = synthetic.plane_scene(32, 32, velocity=(0.5, 0.2), near_box=(8, 8, 20, 20))
    n = 4
    cloud, disp, K = _setup(s, n)
    arrays = _scene_arrays(cloud, K)
    opts = _opts()
    poses = jnp.stack([camera.translation_pose([0.01 * i, 0.0, 0.0]) for i in range(n)])
    Ks = jnp.broadcast_to(jnp.asarray(K), (n, 3, 3))
    args = (disp["forward"], disp["backward"], disp["forward_valid"], disp["backward_valid"], disp["time"], poses, Ks)
    dec = render.IdentityDecoder()
    one = render.make_chunk_renderer(arrays, (32, 32), opts, dec, render.make_mesh(jax.devices()[:1]))(*args)
    four = render.make_chunk_renderer(arrays, (32, 32), opts, dec, render.make_mesh(jax.devices()[:4]))(*args)
    assert len(jax.devices()) == 4
    np.testing.assert_allclose(np.asarray(four["rgb"]), np.asarray(one["rgb"]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(four["num_offscreen"]), np.asarray(one["num_offscreen"]))
