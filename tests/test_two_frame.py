"""cine_jax/train/two_frame.py: the official two-frame training render on exact procedural data.

Known answers (procedural clips: exact frames, depth, flow and novel views at every time):
* static target camera, identity decoder, one-layer clouds of the real start and end frames: the render at time t
  equals the real frame t (PSNR > 40 dB on the frame less a 4 px border for 0 < t < N; bit-exact up to float32
  splatting at t = 0 and t = N, > 100 dB);
* time weighting: at t = 0 the end frame's colours do not matter at all (replaced by noise: the same output), at
  t = N the start frame's do not, in between both do;
* the learned-feature path (`learned_point_features`, traceable) equals the inference implementation
  learned.ResUNetFeatures (NumPy) on the same LDIs (relative error 1e-4), for a random ResUNet.
"""

import jax
import numpy as np
import pytest

from cine_jax import render
from cine_jax.train import procedural, two_frame
from configs import cinemagraph

H, W, N = 48, 64, 4


def _psnr(a, b, border=4):
    e = np.asarray(a, np.float64)[border:-border, border:-border] - np.asarray(b, np.float64)[border:-border,
                                                                                                border:-border]
    mse = float(np.mean(e**2))
    return np.inf if mse == 0 else -10 * np.log10(mse)


@pytest.fixture(scope="module")
def setup():
    clip = procedural.make_clip(11, (H, W), frames=N + 1, views=1, view_offset=0.0, view_rotation=0.0)
    opts = render.render_options(cinemagraph.get_config())
    dec = render.IdentityDecoder()
    fn = jax.jit(lambda smp, t, pose: two_frame.render_two_frame(smp, t, N, pose, clip["K"], (H, W), opts, dec)["rgb"])

    def sample(start_img, end_img):
        return two_frame.prepare(two_frame.single_layer_ldi(start_img, clip["depth"]),
                                 two_frame.single_layer_ldi(end_img, clip["depth"]), clip["flow"], clip["K"])

    return clip, fn, sample


def test_static_target_is_the_real_frame_t(setup):
    clip, fn, sample = setup
    s = sample(clip["frames"][0], clip["frames"][N])
    for t in range(N + 1):
        out = np.asarray(fn(s, t, np.eye(4)))
        p = _psnr(out, clip["frames"][t])
        assert p > (100 if t in (0, N) else 40), (t, p)
        if 0 < t < N:  # on the river (which really moved, frame 0 is a far worse answer there)
            river = clip["mask"][4:-4, 4:-4]
            inner = (slice(4, -4), slice(4, -4))
            p_river = -10 * np.log10(np.mean((out[inner][river] - clip["frames"][t][inner][river]) ** 2))
            p_still = -10 * np.log10(np.mean((clip["frames"][0][inner][river] - clip["frames"][t][inner][river]) ** 2))
            assert p_river > 35 and p_still < p_river - 5, (t, p_river, p_still)


def test_time_weighting_uses_the_start_side_at_0_and_the_end_side_at_N(setup):
    clip, fn, sample = setup
    noise = np.random.default_rng(0).uniform(0, 1, (H, W, 3)).astype(np.float32)
    s = sample(clip["frames"][0], clip["frames"][N])
    s_end_noise = sample(clip["frames"][0], noise)
    s_start_noise = sample(noise, clip["frames"][N])
    eye = np.eye(4)
    np.testing.assert_array_equal(np.asarray(fn(s_end_noise, 0, eye)), np.asarray(fn(s, 0, eye)))
    np.testing.assert_array_equal(np.asarray(fn(s_start_noise, N, eye)), np.asarray(fn(s, N, eye)))
    mid = np.asarray(fn(s, N // 2, eye))
    for other in (s_end_noise, s_start_noise):
        assert np.abs(np.asarray(fn(other, N // 2, eye)) - mid).max() > 0.1


def test_learned_features_match_the_inference_feature_net():
    from cine_jax import learned
    from cine_jax.nets import features as feats_lib

    h, w = 24, 28
    rng = np.random.default_rng(3)
    module = feats_lib.ResUNet()
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((2, h, w, 4), np.float32))
    variables = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(np.float32), shapes)
    K = np.array([[30.0, 0, 13.2], [0, 31.0, 11.7], [0, 0, 1]])
    ldis = []
    for s in range(2):  # two layers: a near square over a far plane, some hidden (inpainted) pixels
        rgba = rng.uniform(0, 1, (2, h, w, 4)).astype(np.float32)
        rgba[..., 3] = 1.0
        visible = np.zeros((2, h, w), bool)
        visible[0, 6:16, 8:20 + s] = True
        visible[1] = ~visible[0]
        rgba[0, ..., 3] = np.where(visible[0], 1.0, 0.0)
        depth = np.stack([np.full((h, w), 2.0), np.full((h, w), 5.0)]).astype(np.float32)
        ldis.append(procedural_ldi(rgba, depth, visible))
    sample = two_frame.prepare(ldis[0], ldis[1], np.zeros((h, w, 2), np.float32), K)
    ref_net = learned.ResUNetFeatures(module, variables, visible_erode=5)
    # the network's jitted apply is shared (one compile); everything around it differs (NumPy vs traceable jnp)
    got = np.asarray(two_frame.learned_point_features(ref_net._apply, variables, sample))
    L = 2
    for s in range(2):
        ref = ref_net(ldis[s])  # [L, H, W, 4 + C]
        pts = (sample["side"] == s) & sample["valid"]
        li = sample["layer"][pts] - s * L
        ui, vi = sample["uv"][pts, 0].astype(int), sample["uv"][pts, 1].astype(int)
        want = ref[li, vi, ui]
        err = np.abs(got[pts] - want).max() / np.abs(want).max()
        assert err < 1e-4, err
        assert pts.sum() == int((ldis[s].rgba[..., 3] > 0.5).sum())


def procedural_ldi(rgba, depth, visible):
    from cine_jax import layering

    return layering.LDI(rgba=rgba, depth=depth, visible=visible, edges=np.array([0.0, 3.0, 6.0]))


def test_prepare_errors():
    img = np.zeros((20, 24, 3), np.float32)
    d = np.ones((20, 24), np.float32)
    a = two_frame.single_layer_ldi(img, d)
    b = two_frame.single_layer_ldi(np.zeros((20, 26, 3), np.float32), np.ones((20, 26), np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        two_frame.prepare(a, b, np.zeros((20, 24, 2)), np.eye(3))
    with pytest.raises(ValueError, match="flow must be"):
        two_frame.prepare(a, a, np.zeros((20, 25, 2)), np.eye(3))
    with pytest.raises(ValueError, match="depth must be finite"):
        two_frame.single_layer_ldi(img, np.zeros((20, 24)))
