"""cine_jax.nets.motion against a PyTorch reference written from the official facts.

Reference: tests/torch_reference/cine_motion.py (torch.nn.utils.spectral_norm, nn.InstanceNorm2d and
F.interpolate are PyTorch's own). The network test uses a narrow copy (8 filters, SPADE hidden 16, the
official layout otherwise) saved as sceneflow_model.pth and converted through cine_jax.convert; the
official widths are checked key by key and shape by shape without running them.
Tolerances: float32 relative error (max |diff| / max |reference|) <= 1e-4; bfloat16 blocks <= 5e-2.
"""

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cine_jax.convert import convert  # noqa: E402
from cine_jax.nets import cast_floating, upsample2x  # noqa: E402
from cine_jax.nets import checkpoints as ck  # noqa: E402
from cine_jax.nets import motion as M  # noqa: E402
from tests.torch_reference import cine_motion as ref_motion  # noqa: E402
from tests.torch_reference import torch_threads  # noqa: E402
from tests.torch_reference.cine_files import small_sceneflow  # noqa: E402

SIZE = 256  # the smallest size the network accepts (the official runs at 768)


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """Random narrow weights -> sceneflow_model.pth -> cine_jax.convert -> load_converted."""
    src, ref = small_sceneflow()
    d = tmp_path_factory.mktemp("motion")
    written = convert(src, str(d / "out"))
    module, variables = ck.load_converted(d / "out" / "motion", expected_class="SPADEUnet4MaskMotion")
    return dict(ref=ref, module=module, variables=variables, apply=jax.jit(module.apply), written=written)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:45, 0:61]
    image = np.stack([128 + 100 * np.sin(xx / 5.0), 128 + 100 * np.cos(yy / 4.0), 3 * xx + yy], -1)
    image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((45, 61), np.uint8)
    mask[10:40, 5:50] = 255
    starts = np.array([[20.7, 15.2], [40.0, 30.9]])
    vectors = np.array([[1.5, -0.4], [0.3, 0.9]])
    return image, mask, starts, vectors, 12


def test_converted_files_and_config(net):
    assert sorted(p.rsplit("/", 1)[-1] for p in net["written"]) == ["motion.json", "motion.safetensors"]
    m = net["module"]
    assert (m.num_filters, m.spade_hidden, m.channels_in, m.channels_out) == (8, 16, 6, 2)
    assert m.power_iteration and m.div_flow == 1.0


def test_network_matches_torch_with_one_power_iteration(net):
    """Official inference: the train-mode spectral-norm hook runs one power iteration from the stored u."""
    x = np.random.default_rng(0).uniform(-1, 1, (1, SIZE, SIZE, 6)).astype(np.float32)
    x[..., 3] = (x[..., 3] > 0).astype(np.float32)
    ref = copy.deepcopy(net["ref"]).train()
    with torch.no_grad():
        want = ref.forward_flow(_nchw(x[..., :3]), _nchw(x[..., 3:4]), _nchw(x[..., 4:])).numpy()
        stale = copy.deepcopy(net["ref"]).eval().forward_flow(_nchw(x[..., :3]), _nchw(x[..., 3:4]), _nchw(x[..., 4:]))
    got = np.asarray(net["apply"](net["variables"], jnp.asarray(x))).transpose(0, 3, 1, 2)
    assert got.shape == (1, 2, SIZE, SIZE)
    assert _rel(got, want) <= 1e-4
    # the power iteration matters with these (unconverged) u, v, so the comparison above is discriminating
    assert _rel(stale.numpy(), want) > 0.1


def test_spectral_norm_modes_match_torch():
    """One layer: power_iteration=True is torch's train-mode hook, False its eval mode (stored u, v)."""
    torch.manual_seed(1)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(5, 7, 4, stride=2, padding=1))
    with torch.no_grad():
        for name in ("weight_u", "weight_v"):
            b = getattr(conv, name)
            b.copy_(torch.randn(b.shape))
            b /= b.norm()
    state = {k: v.numpy().copy() for k, v in conv.state_dict().items()}
    x = np.random.default_rng(1).normal(size=(2, 12, 10, 5)).astype(np.float32)
    outs = {}
    for train in (False, True):
        c = copy.deepcopy(conv).train(train)
        with torch.no_grad():
            outs[train] = c(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    for power in (False, True):
        layer = M.SpectralConv2d(7, 4, 2, 1, power_iteration=power)
        tpl = ck._plain(jax.eval_shape(layer.init, jax.random.key(0), jnp.asarray(x)))
        variables = ck.variables_from_state_dict(state, tpl, "conv.pth")
        got = layer.apply(variables, jnp.asarray(x))
        assert _rel(got, outs[power]) <= 1e-5
    assert _rel(outs[True], outs[False]) > 0.05
    # gradients w.r.t. weight_orig: u, v are constants (PyTorch iterates under no_grad)
    r = np.random.default_rng(2).normal(size=outs[True].shape).astype(np.float32)
    c = copy.deepcopy(conv).train()
    (c(_nchw(x)) * _nchw(r)).sum().backward()
    want = c.weight_orig.grad.numpy().transpose(2, 3, 1, 0)
    layer = M.SpectralConv2d(7, 4, 2, 1)
    loss = lambda p: jnp.sum(layer.apply({**variables, "params": p}, jnp.asarray(x)) * r)
    got = jax.grad(loss)(variables["params"])["weight_orig"]
    assert _rel(got, want) <= 1e-4


def test_official_widths_load_key_by_key():
    """The full-size reference's state dict maps onto the default module, every key and shape."""
    sd = {k: v.numpy() for k, v in ref_motion.SceneFlowEstimatorRef().state_dict().items()}
    module, variables = M.from_state_dict(sd, "sceneflow_model.pth")
    assert (module.num_filters, module.spade_hidden) == (32, 128)
    assert sum(np.size(v) for v in jax.tree_util.tree_leaves(variables)) == sum(v.size for v in sd.values())
    assert sum(v.size for v in sd.values()) == 15_613_412  # ~15.6M, shared/reference/cinemagraphy.md §7
    w = sd["motion_predictor.spade_layer8_3.mlp_gamma.weight"]
    np.testing.assert_array_equal(variables["params"]["spade_layer8_3"]["mlp_gamma"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["spectral"]["dconv5"]["weight_v"], sd["motion_predictor.dconv5.weight_v"])


def test_size_not_multiple_of_256_fails_like_the_official(net):
    """The official U-Net cannot run at 320x320 (its skips do not line up); ours says so clearly."""
    x = torch.zeros(1, 6, 320, 320)
    with torch.no_grad(), pytest.raises(RuntimeError):
        copy.deepcopy(net["ref"]).motion_predictor(x)
    with pytest.raises(ValueError, match="multiples of 256"):
        net["module"].apply(net["variables"], jnp.zeros((1, 320, 320, 6)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 6\]"):
        net["module"].apply(net["variables"], jnp.zeros((1, 256, 256, 5)))


def test_upsample_split_matches_torch():
    x = np.random.default_rng(2).normal(size=(2, 5, 7, 6)).astype(np.float32)
    want = ref_motion.up_split(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(jax.jit(M.upsample_split)(jnp.asarray(x))), want, atol=1e-6)
    # channel 3 really is nearest: a bilinear version would differ there
    bilinear = jax.jit(upsample2x, static_argnums=1)(jnp.asarray(x), False)
    assert np.abs(want[..., 3] - np.asarray(bilinear)[..., 3]).max() > 0.1


def test_resize_condition_matches_torch():
    x = np.random.default_rng(4).normal(size=(1, 32, 32, 6)).astype(np.float32)
    for size in ((8, 4), (1, 1)):
        want = ref_motion._resize_seg(_nchw(x), size).numpy().transpose(0, 2, 3, 1)
        got = jax.jit(M.resize_condition, static_argnums=1)(jnp.asarray(x), size)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_preprocessing_matches_the_official(sample):
    image, mask, starts, vectors, sigma = sample
    got = np.asarray(M.motion_net_inputs(image, mask, starts, vectors, sigma, size=SIZE))[0]
    img, m, hint = ref_motion.official_inputs(image, mask, starts, vectors, sigma, SIZE)
    np.testing.assert_allclose(got[..., :3], img[0].numpy().transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_allclose(got[..., 3], m[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(got[..., 4:], hint[0].numpy().transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
    assert 0 < got[..., 3].mean() < 1 and np.abs(got[..., 4:]).max() > 0.5
    # the PIL bicubic resize agrees with torch's antialiased bicubic (the same PIL filter, without 8-bit
    # rounding and clipping between the passes) on 99% of the values to a grey level
    t = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    aa = torch.nn.functional.interpolate(t, (SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
    diff = np.abs((got[..., :3] + 1) / 2 - aa[0].clamp(0, 1).numpy().transpose(1, 2, 0))
    assert np.percentile(diff, 99) < 1 / 255


def test_densify_hints_closed_form():
    """Two hints: every pixel is the Gaussian-weighted mean of the two vectors; far away it is 0."""
    mask = np.ones((9, 50), np.uint8)
    mask[0, 0] = 0
    dense = M.densify_hints([[2.9, 4.0], [47.0, 4.0]], [[1.0, 0.0], [0.0, 2.0]], mask, sigma=3.0)
    g1 = np.exp(-(((np.arange(50) - 2) ** 2 + 0) / 9.0))  # start truncated to x = 2
    g2 = np.exp(-(((np.arange(50) - 47) ** 2) / 9.0))
    total = g1 + g2
    safe = np.where(total == 0, 1, total)
    np.testing.assert_allclose(dense[4, :, 0], g1 / safe, atol=1e-6)
    np.testing.assert_allclose(dense[4, :, 1], 2 * g2 / safe, atol=1e-6)
    assert np.all(dense[0, 0] == 0)  # masked out
    with pytest.raises(ValueError, match="outside"):
        M.densify_hints([[60.0, 1.0]], [[1.0, 0.0]], mask, 3.0)


def test_official_hint_sigma_range():
    vals = {M.official_hint_sigma(720, 3, s) for s in range(40)}
    assert min(vals) >= 720 // 6 and max(vals) < 720 // 1.5 and len(vals) > 5
    assert M.official_hint_sigma(720, 3, 7) == M.official_hint_sigma(720, 3, 7)


def test_postprocessing_matches_the_official():
    rng = np.random.default_rng(5)
    pred = rng.normal(size=(SIZE, SIZE, 2)).astype(np.float32) * 3
    mask = np.clip(rng.uniform(-0.5, 1.5, (SIZE, SIZE)), 0, 1).astype(np.float32)
    got = np.asarray(M.motion_postprocess(pred, mask, (45, 61), flow_scale=2.0))
    want = ref_motion.official_postprocess(_nchw(pred[None]), torch.from_numpy(mask)[None, None], 45, 61, 2.0)
    np.testing.assert_allclose(got, want[0].numpy().transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="flow_scale"):
        M.motion_postprocess(pred, mask, (45, 61), flow_scale=0)


def test_predict_flow_end_to_end(net, sample):
    """Image + mask + hints -> flow at the image size, the whole official path, against torch."""
    image, mask, starts, vectors, sigma = sample
    got = np.asarray(
        M.predict_flow(net["module"], net["variables"], image, mask, starts, vectors, sigma, size=SIZE,
                       apply_fn=net["apply"])
    )
    img, m, hint = ref_motion.official_inputs(image, mask, starts, vectors, sigma, SIZE)
    with torch.no_grad():
        pred = copy.deepcopy(net["ref"]).forward_flow(img, m, hint)
    want = ref_motion.official_postprocess(pred, m, 45, 61)[0].numpy().transpose(1, 2, 0)
    assert got.shape == (45, 61, 2)
    assert _rel(got, want) <= 1e-4


def test_bfloat16_blocks_close_to_float32():
    """bfloat16 params and activations (dtype=jnp.bfloat16 + cast_floating) on the motion net's building
    blocks: a spectral-norm conv (power iteration stays float32), SPADE on a resized condition, and the split
    upsampling. Tolerance: relative error <= 5e-2. (Whole-network bfloat16 errors at 768x768 are reported by
    benchmarks/nets.py; compiling the whole network twice more is too slow for the test suite.)"""

    class Block(nn.Module):
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x, cond):
            y = M.SpectralConv2d(16, 4, 2, 1, dtype=self.dtype)(x)
            y = M.SPADE(16, hidden=32, dtype=self.dtype)(y, M.resize_condition(cond, y.shape[1:3]))
            return M.upsample_split(jax.nn.relu(y)).astype(jnp.float32)

    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(1, 32, 32, 8)), jnp.float32)
    cond = jnp.asarray(rng.uniform(-1, 1, (1, 32, 32, 6)), jnp.float32)
    variables = jax.jit(Block().init)(jax.random.key(0), x, cond)
    want = jax.jit(Block().apply)(variables, x, cond)
    got = jax.jit(Block(jnp.bfloat16).apply)(cast_floating(variables, jnp.bfloat16), x, cond)
    assert _rel(got, want) <= 5e-2
