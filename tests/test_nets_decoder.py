"""cine_jax.nets.decoder (ImgDecoder and the blends) against a PyTorch reference written from the facts.

Reference: tests/torch_reference/cine_decoder.py (official widths, F.pad(mode="reflect") called exactly as
the official Up block does, learned alpha set to 2.5), saved in the official model_XXXXXX.pth layout and
converted through cine_jax.convert. Tolerance: float32 relative error (max |diff| / max |reference|)
<= 1e-4; bfloat16 blocks <= 5e-2.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cine_jax.nets import cast_floating, flops_per_call, upsample2x  # noqa: E402
from cine_jax.nets import checkpoints as ck  # noqa: E402
from cine_jax.nets import decoder as D  # noqa: E402
from tests.torch_reference import torch_threads  # noqa: E402
from tests.torch_reference.cine_decoder import ImgDecoderRef  # noqa: E402
from tests.torch_reference.cine_files import DECODER_ALPHA as ALPHA  # noqa: E402
from tests.torch_reference.cine_files import official_model  # noqa: E402


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _sides(h, w, seed):
    """Two splatted renderings: RGB, A (some empty pixels), features, normalised disparity D in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (2, 2, h, w, 37)).astype(np.float32)
    x[:, :, :, :, 4:36] = rng.normal(size=(2, 2, h, w, 32))
    x[:, :, : h // 4, : w // 3, 3] = 0.0  # holes
    return x[0], x[1]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net():
    """Random official-width weights -> model_150000.pth -> cine_jax.convert -> load_converted."""
    _, _, out, _, ref = official_model()
    module, variables = ck.load_converted(f"{out}/img_decoder", expected_class="ImgDecoder")
    return dict(ref=ref, module=module, variables=variables, apply=jax.jit(module.apply))


def test_learned_alpha_is_converted(net):
    assert float(net["variables"]["params"]["alpha"]) == ALPHA
    assert net["module"].in_ch == 37 and net["module"].blend == "official"


def test_matches_torch_at_a_size_that_is_not_a_multiple_of_16(net):
    """44x56 (small, and not a multiple of 16): H/16 = 2 and W/16 = 3, so up1 crops 1+1 rows and 2+1
    columns, and up2 / up3 reflect-pad one row or column (44 -> 22 -> 11 -> 5, 56 -> 28 -> 14 -> 7).
    One compile covers every padding / cropping case of the network."""
    size = (44, 56)
    x_f, x_b = _sides(*size, seed=sum(size))
    with torch.no_grad():
        want = net["ref"](_nchw(x_f), _nchw(x_b), 0.3).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(net["apply"](net["variables"], jnp.asarray(x_f), jnp.asarray(x_b), 0.3))
    assert got.shape == (2, *size, 3)
    assert _rel(got, want) <= 1e-4


def test_up1_negative_reflect_padding_is_a_centre_crop():
    """The fact sheet inferred it; torch 2.13 confirms: F.pad(mode="reflect") with negative amounts crops,
    ceil(s/2) leading and floor(s/2) trailing, and our reflect_pad_or_crop does the same (and reflects for
    positive amounts)."""
    x = torch.arange(2 * 3 * 6 * 10, dtype=torch.float32).reshape(2, 3, 6, 10)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)  # 12 x 20, skip is 6 x 10
    cropped = F.pad(up, [-5, -5, -3, -3], mode="reflect")
    assert torch.equal(cropped, up[:, :, 3:9, 5:15])
    odd = F.pad(up[:, :, :, :14], [-4, -3, -2, -1], mode="reflect")  # d = -7 columns, -3 rows
    assert torch.equal(odd, up[:, :, 2:11, 4:11])
    nhwc = lambda t: jnp.asarray(t.numpy().transpose(0, 2, 3, 1))
    for t, (h, w) in ((up, (6, 10)), (up[:, :, :, :14], (9, 7)), (x, (7, 12)), (x[:, :, :5, :9], (6, 10))):
        dh, dw = h - t.shape[2], w - t.shape[3]
        want = F.pad(t, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2], mode="reflect").numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(np.asarray(D.reflect_pad_or_crop(nhwc(t), h, w)), want)


def test_upsample2x_matches_torch():
    """The x2 upsampling used by all three networks, both corner modes, odd / even / tiny sizes."""
    rng = np.random.default_rng(9)
    for h, w in ((1, 2), (5, 7), (6, 3)):
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        for align in (False, True):
            want = F.interpolate(_nchw(x), scale_factor=2, mode="bilinear", align_corners=align)
            got = jax.jit(upsample2x, static_argnums=1)(jnp.asarray(x), align)
            np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_official_blend_matches_torch():
    x_f, x_b = _sides(8, 6, seed=1)
    x_f[..., -1] *= 3  # disparity well away from 0
    ref = ImgDecoderRef()
    with torch.no_grad():
        ref.alpha.fill_(ALPHA)
        want = ref.blend(_nchw(x_f), _nchw(x_b), 0.7).numpy().transpose(0, 2, 3, 1)
    w_f, w_b = D.official_blend_weights(x_f, x_b, 0.7, ALPHA)
    np.testing.assert_allclose(np.asarray(D.blend_sides(x_f, x_b, w_f, w_b)), want, rtol=1e-5, atol=1e-6)
    # closed form at one pixel
    i = (1, 5, 4)
    a = 0.3 * np.exp(ALPHA * x_f[i][-1]) * x_f[i][3]
    b = 0.7 * np.exp(ALPHA * x_b[i][-1]) * x_b[i][3]
    np.testing.assert_allclose(float(w_f[i][0]), a / max(a + b, 1e-6), rtol=1e-5)


def test_eq4_blend_closed_form(net):
    alpha_f = np.array([1.0, 0.5, 0.0, 0.0, 1.0], np.float32)
    alpha_b = np.array([1.0, 1.0, 1.0, 0.0, 1.0], np.float32)
    z_f = np.array([2.0, 1.0, 0.0, 0.0, 1e4], np.float32)
    z_b = np.array([3.0, 1.0, 5.0, 0.0, 1e4 + 1], np.float32)
    t = 0.25
    w_f, w_b = (np.asarray(w) for w in D.eq4_blend_weights(alpha_f, z_f, alpha_b, z_b, t, beta=1.0))
    a, b = 0.75 * np.exp(-2.0), 0.25 * np.exp(-3.0)
    np.testing.assert_allclose(w_f[0], a / (a + b), rtol=1e-6)
    np.testing.assert_allclose(w_f[1], 0.75 * 0.5 / (0.75 * 0.5 + 0.25), rtol=1e-6)
    assert w_f[2] == 0.0 and w_f[3] == 0.75  # only the backward side covers / nothing covers
    np.testing.assert_allclose(w_f[4], 0.75 / (0.75 + 0.25 * np.exp(-1.0)), rtol=1e-5)  # far scenes are fine
    np.testing.assert_allclose(w_f + w_b, 1.0)
    # the module's blend switch
    eq4 = net["module"].clone(blend="eq4")
    x_f, x_b = _sides(32, 32, seed=2)
    zf = np.full((2, 32, 32), 2.0, np.float32)
    zb = np.full((2, 32, 32), 3.0, np.float32)
    wf_mod, _ = eq4.apply(net["variables"], x_f, x_b, t, zf, zb, method=D.ImgDecoder.blend_weights)
    want, _ = D.eq4_blend_weights(x_f[..., 3], zf, x_b[..., 3], zb, t)
    np.testing.assert_allclose(np.asarray(wf_mod)[..., 0], np.asarray(want), rtol=1e-6)
    with pytest.raises(ValueError, match="depth_f and depth_b"):
        eq4.apply(net["variables"], x_f, x_b, t, method=D.ImgDecoder.blend_weights)


def test_time_per_frame_equals_one_frame_at_a_time(net):
    x_f, x_b = _sides(32, 32, seed=4)
    times = np.array([0.2, 0.9], np.float32)
    w_f, w_b = net["module"].apply(net["variables"], x_f, x_b, times, method=D.ImgDecoder.blend_weights)
    for i, t in enumerate(times):
        one_f, one_b = D.official_blend_weights(x_f[i], x_b[i], float(t), ALPHA)
        np.testing.assert_allclose(np.asarray(w_f[i]), np.asarray(one_f), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(w_b[i]), np.asarray(one_b), rtol=1e-6)
    with pytest.raises(ValueError, match="one per frame"):
        net["module"].apply(net["variables"], x_f, x_b, np.zeros(3), method=D.ImgDecoder.blend_weights)


def test_flops_per_call_counts_a_conv():
    """XLA counts 2 FLOPs per multiply-add that touches the image (zero-padding taps are not counted): a 3x3
    SAME conv on H x W has (3H - 2)(3W - 2) valid taps per channel pair."""
    x = jnp.zeros((1, 20, 24, 5))
    k = jnp.zeros((3, 3, 5, 7))
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops_per_call(conv, x, k) == 2 * (3 * 20 - 2) * (3 * 24 - 2) * 5 * 7


def test_normalized_disparity():
    z = np.array([[1.0, 2.0, 4.0], [0.0, 8.0, 1e9]], np.float32)
    disp = 1.0 / np.maximum(z, 1e-6)
    want = (disp - disp.min()) / (disp.max() - disp.min())
    np.testing.assert_allclose(np.asarray(D.normalized_disparity(z)), want, rtol=1e-6)
    valid = np.array([[True, True, True], [False, True, False]])
    d = 1.0 / z[valid]
    got = np.asarray(D.normalized_disparity(z, valid))
    np.testing.assert_allclose(got[valid], (d - d.min()) / (d.max() - d.min()), rtol=1e-6)
    assert np.all(got[~valid] == 0)
    assert np.all(np.asarray(D.normalized_disparity(np.full(4, 3.0))) == 0)  # zero range: 0, not NaN


def test_input_checks(net):
    x = jnp.zeros((1, 46, 63, 37))
    with pytest.raises(ValueError, match="even"):
        net["module"].apply(net["variables"], x, x, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        net["module"].apply(net["variables"], jnp.zeros((1, 32, 32, 37)), jnp.zeros((1, 32, 34, 37)), 0.5)
    with pytest.raises(ValueError, match=r"\[B, H, W, 37\]"):
        net["module"].apply(net["variables"], jnp.zeros((1, 32, 32, 36)), method=D.ImgDecoder.decode)


def test_bfloat16_blocks_close_to_float32():
    """bfloat16 params and activations on the decoder's Down, up1-style Up (crop) and OutConv blocks
    (GroupNorm statistics and the sigmoid stay float32). Tolerance: relative error <= 5e-2. (Whole-network
    bfloat16 errors at 768x768 are reported by benchmarks/nets.py.)"""

    class Block(nn.Module):
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            x1, x2 = D.Down(64, dtype=self.dtype)(x)
            up = D.Up(32, 64, dtype=self.dtype)(x2, x1, x1)  # upsampled to 2x the skips' size: cropped
            return D.OutConv(3, dtype=self.dtype)(up, x)

    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 12, 16, 32)), jnp.float32)
    variables = jax.jit(Block().init)(jax.random.key(0), x)
    want = jax.jit(Block().apply)(variables, x)
    got = jax.jit(Block(jnp.bfloat16).apply)(cast_floating(variables, jnp.bfloat16), x)
    assert got.dtype == jnp.float32
    assert _rel(got, want) <= 5e-2
