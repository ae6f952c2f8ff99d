"""cine_jax.nets.features (ResUNet) against a PyTorch reference written from the official facts.

Reference: tests/torch_reference/cine_features.py (official widths, BatchNorm2d with
track_running_stats=False), saved in the official model_XXXXXX.pth layout and converted through
cine_jax.convert. Tolerance: float32 relative error (max |diff| / max |reference|) <= 1e-4; bfloat16
blocks <= 5e-2.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")

from cine_jax.nets import cast_floating  # noqa: E402
from cine_jax.nets import checkpoints as ck  # noqa: E402
from cine_jax.nets import features as FT  # noqa: E402
from tests.torch_reference import torch_threads  # noqa: E402
from tests.torch_reference.cine_files import official_model  # noqa: E402


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def net():
    """Random official-width weights -> model_150000.pth -> cine_jax.convert -> load_converted."""
    _, _, out, ref, _ = official_model()
    module, variables = ck.load_converted(f"{out}/feature_net", expected_class="ResUNet")
    return dict(ref=ref, module=module, variables=variables, apply=jax.jit(module.apply))


@pytest.fixture(scope="module")
def layers():
    """Three RGBA layers at 50 x 37 (not multiples of 16: the decoder's skip padding is exercised)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 50, 37, 4)).astype(np.float32)
    x[1, ..., 3] = (x[1, ..., 3] > 0.5).astype(np.float32)
    return x


def test_matches_torch_at_a_size_that_is_not_a_multiple_of_16(net, layers):
    with torch.no_grad():
        want = net["ref"](_nchw(layers)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(net["apply"](net["variables"], jnp.asarray(layers)))
    # 50 -> 25 -> 13 -> 7 -> 4 at H/16, so 16 rows (not 50 // 4 = 12); 37 -> 12 columns
    assert got.shape == want.shape == (3, 16, 12, 32) and FT.feature_size(50, 37) == (16, 12)
    assert _rel(got, want) <= 1e-4


def test_batch_statistics_couple_the_layers(net, layers):
    """track_running_stats=False: changing layer 2 changes the features of layer 0 (torch and ours)."""
    other = layers.copy()
    other[2] = 1.0 - other[2]
    a = np.asarray(net["apply"](net["variables"], jnp.asarray(layers)))
    b = np.asarray(net["apply"](net["variables"], jnp.asarray(other)))
    with torch.no_grad():
        tb = net["ref"](_nchw(other)).numpy().transpose(0, 2, 3, 1)
    assert _rel(b, tb) <= 1e-4
    assert np.abs(a[0] - b[0]).max() > 1e-2


def test_feature_size_matches_torch_output_shapes(net):
    for h, w in ((17, 17), (32, 48), (33, 63), (64, 20)):
        with torch.no_grad():
            shape = net["ref"](torch.zeros(2, 4, h, w) + torch.rand(2, 4, h, w)).shape
        assert FT.feature_size(h, w) == tuple(shape[2:])
    with pytest.raises(ValueError, match="too small"):
        net["module"].apply(net["variables"], jnp.zeros((2, 16, 40, 4)))
    with pytest.raises(ValueError, match=r"\[layers, H, W, 4\]"):
        net["module"].apply(net["variables"], jnp.zeros((2, 40, 40, 3)))


def test_upsample_features_matches_the_renderer():
    f = np.random.default_rng(1).normal(size=(2, 16, 12, 5)).astype(np.float32)
    want = torch.nn.functional.interpolate(_nchw(f), size=(50, 37), mode="bilinear", align_corners=True)
    got = jax.jit(FT.upsample_features, static_argnums=1)(jnp.asarray(f), (50, 37))
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_batchnorm_sharded_over_layers_equals_one_device(num_devices):
    """The BN statistics are global even when the layer axis is split over devices."""
    x = np.random.default_rng(2).normal(size=(4, 6, 5, 8)).astype(np.float32) * 3 + 1
    bn = FT.BatchNormBatchStats()
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 8), "bias": jnp.linspace(-1, 1, 8)}}
    one = jax.jit(bn.apply)(variables, jnp.asarray(x))
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    many = jax.jit(bn.apply, out_shardings=NamedSharding(mesh, P("data")))(variables, xs)
    assert num_devices >= 4 and len(many.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(many), np.asarray(one), atol=1e-6)
    want = torch.nn.functional.batch_norm(_nchw(x), None, None, torch.linspace(0.5, 2, 8), torch.linspace(-1, 1, 8),
                                          training=True, eps=1e-5)
    np.testing.assert_allclose(np.asarray(one), want.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_bfloat16_blocks_close_to_float32():
    """bfloat16 params and activations on a strided BasicBlock with its downsample branch and a
    conv/BN/ELU block (statistics stay float32). Tolerance: relative error <= 5e-2. (Whole-network bfloat16
    errors at 768x768 are reported by benchmarks/nets.py.)"""

    class Block(nn.Module):
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x):
            y = FT.BasicBlock(32, 2, True, dtype=self.dtype)(x)
            return FT._ConvBNELU(16, 3, dtype=self.dtype)(y).astype(jnp.float32)

    x = jnp.asarray(np.random.default_rng(7).uniform(0, 1, (3, 20, 18, 16)), jnp.float32)
    variables = jax.jit(Block().init)(jax.random.key(0), x)
    want = jax.jit(Block().apply)(variables, x)
    got = jax.jit(Block(jnp.bfloat16).apply)(cast_floating(variables, jnp.bfloat16), x)
    assert _rel(got, want) <= 5e-2
