"""Tests for cine_jax/nets/inpaint.py: the 3D-Photo partial-convolution U-Nets and their pre/post-processing.

Parity reference: tests/torch_reference/cine_inpaint.py, a PyTorch module written from the official facts
with the official state-dict names (it convolves the full per-channel mask with the all-ones mask kernel, as
the official code; cine_jax counts valid channels per pixel instead). Random weights and random BatchNorm
running statistics are saved with torch.save as the official plain state-dict files (depth-model.pth,
color-model.pth), read back with torch.load(weights_only=True) and converted. Tolerance: relative error
max|jax - torch| / max|torch| <= 1e-4 in float32.
"""

import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cine_jax import layering
from cine_jax.nets import inpaint as ip

torch = pytest.importorskip("torch")
from tests.torch_reference.cine_inpaint import PartialConvUNetRef, randomize_  # noqa: E402

SMALL_WIDTHS = (8, 16, 16, 16, 16, 16, 16)
# 3 levels (pad to a multiple of 8): module mechanics (precision, sharding, padding) at a fraction of the
# compile time of the 7-level nets.
MINI = ip.PartialConvUNetConfig(widths=(8, 16, 16), enc_kernels=(7, 5, 5), enc_bias=(True, True, False),
                                dec_names=("dec_3", "dec_2", "dec_1"), pad_multiple=8)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


def load_pth(path):
    """Tiny local loader: an official plain state dict -> {name: numpy array}."""
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


def small_config(kind):
    base = ip.DEPTH_NET if kind == "depth" else ip.COLOR_NET
    return ip.PartialConvUNetConfig(**{**base.to_dict(), "widths": SMALL_WIDTHS})


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def random_input(rng, h, w, cin):
    """Random values; context = random half of the right two thirds; holes = left third (below the top
    quarter); everything else in neither mask."""
    x = rng.normal(size=(1, h, w, cin)).astype(np.float32)
    ctx = (rng.random((h, w)) > 0.5).astype(np.float32)
    ctx[:, : w // 3] = 0
    hol = np.zeros((h, w), np.float32)
    hol[h // 4:, : w // 3] = 1
    x[..., -2], x[..., -1] = ctx, hol
    return x


@pytest.fixture(scope="module")
def official_nets(tmp_path_factory):
    """{kind: (torch reference, converted variables, state dict)} with official widths, via the official
    file names."""
    out = {}
    d = tmp_path_factory.mktemp("inpaint_ckpt")
    for seed, (kind, fname, convert) in enumerate([
            ("depth", "depth-model.pth", ip.inpaint_depth_net_params_from_torch_state_dict),
            ("color", "color-model.pth", ip.inpaint_color_net_params_from_torch_state_dict)]):
        ref = randomize_(PartialConvUNetRef(kind), seed)
        path = os.path.join(d, fname)
        torch.save(ref.state_dict(), path)
        sd = load_pth(path)
        out[kind] = (ref, convert(sd, source=path), sd)
    return out


# ------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("kind,size", [("depth", (64, 96)), ("color", (131, 69))])
def test_official_net_matches_torch_reference(official_nets, kind, size):
    """Official widths. Depth net at 64 x 96 (padded to 128 x 128), colour net at 131 x 69 (padded to
    256 x 128; odd residuals 125 / 59, so the anchors 62 / 29 leave the extra row / column below / right):
    the padding and its mask 0 change the result (see the next test), so a wrong anchor or pad value fails
    here."""
    ref, variables, _ = official_nets[kind]
    cfg = ip.DEPTH_NET if kind == "depth" else ip.COLOR_NET
    net = ip.PartialConvUNet(cfg)
    h, w = size
    x = random_input(np.random.default_rng(1), h, w, cfg.in_channels)
    with torch.no_grad():
        want = ref.forward_3p(to_nchw(x)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(jax.jit(lambda v, x: ip.forward_3p(net, v, x))(variables, x))
    assert got.shape == (1, h, w, cfg.out_channels)
    assert want.std() > 1e-2  # a non-trivial output
    assert rel_err(got, want) <= 1e-4, rel_err(got, want)


def test_padding_anchor_changes_the_output():
    """The same input placed elsewhere in the padded canvas gives a different output (the partial-conv mask
    of the padding and the receptive field see the border), so a wrong pad anchor or size would fail the
    parity test above."""
    net, variables = random_small_variables(MINI, 7)
    x = random_input(np.random.default_rng(2), 20, 28, 4)
    centred, box = ip.pad_to_multiple(jnp.asarray(x), MINI.pad_multiple)
    assert centred.shape == (1, 24, 32, 4) and box == (2, 2, 20, 28)
    top_left = np.zeros(centred.shape, np.float32)
    top_left[:, :20, :28] = x
    out = np.asarray(jax.jit(net.apply)(variables, np.concatenate([np.asarray(centred), top_left])))
    via_3p = np.asarray(jax.jit(lambda v, x: ip.forward_3p(net, v, x))(variables, x))
    np.testing.assert_allclose(via_3p, out[:1, 2:22, 2:30], rtol=1e-5, atol=1e-5)
    assert rel_err(out[1, :20, :28], out[0, 2:22, 2:30]) > 1e-3


def test_pad_to_multiple_is_centred():
    x = jnp.arange(131 * 69, dtype=jnp.float32).reshape(1, 131, 69, 1) + 1
    padded, box = ip.pad_to_multiple(x, 128)
    assert padded.shape == (1, 256, 128, 1) and box == (62, 29, 131, 69)  # residuals 125, 59: extra below/right
    p = np.asarray(padded)[0, ..., 0]
    assert p[:62].sum() == 0 and p[193:].sum() == 0 and p[:, :29].sum() == 0 and p[:, 98:].sum() == 0
    assert p[62:193, 29:98].min() > 0
    np.testing.assert_array_equal(np.asarray(ip.crop_from_multiple(padded, box)), np.asarray(x))
    same, box2 = ip.pad_to_multiple(x[:, :128, :64], 64)
    assert same.shape == (1, 128, 64, 1) and box2 == (0, 0, 128, 64)


# ------------------------------------------------------------------------------------------ converter


def test_converter_layout_matches_module(official_nets):
    """Converted variables have exactly the tree and shapes the module initialises."""
    for kind, cfg in (("depth", ip.DEPTH_NET), ("color", ip.COLOR_NET)):
        shapes = jax.eval_shape(ip.PartialConvUNet(cfg).init, jax.random.PRNGKey(0),
                                jnp.zeros((1, 128, 128, cfg.in_channels)))
        got = official_nets[kind][1]
        assert jax.tree.structure(shapes) == jax.tree.structure(got)
        assert all(jax.tree.leaves(jax.tree.map(lambda s, a: s.shape == a.shape, shapes, got)))


def test_converter_errors_name_file_key_and_shape(official_nets):
    sd = dict(official_nets["color"][2])
    src = "/ckpts/color-model.pth"
    truncated = dict(sd)
    del truncated["dec_4A.bn.running_var"]
    with pytest.raises(ValueError, match=r"color-model\.pth.*missing.*dec_4A\.bn\.running_var \(256,\)"):
        ip.inpaint_color_net_params_from_torch_state_dict(truncated, source=src)
    wrong = dict(sd)
    wrong["enc_3.conv.input_conv.weight"] = np.zeros((256, 128, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"color-model\.pth.*enc_3\.conv\.input_conv\.weight has shape "
                                         r"\(256, 128, 3, 3\), expected \(256, 128, 5, 5\)"):
        ip.inpaint_color_net_params_from_torch_state_dict(wrong, source=src)
    extra = dict(sd)
    extra["dec_5B.conv.input_conv.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError, match=r"unexpected.*dec_5B\.conv\.input_conv\.weight"):
        ip.inpaint_color_net_params_from_torch_state_dict(extra, source=src)
    mask = dict(sd)
    mask["dec_2A.conv.mask_conv.weight"] = sd["dec_2A.conv.mask_conv.weight"] * 0.5
    with pytest.raises(ValueError, match=r"dec_2A\.conv\.mask_conv\.weight must be all ones"):
        ip.inpaint_color_net_params_from_torch_state_dict(mask, source=src)
    # the depth net file is not a colour net: enc_1 has a bias and 4 input channels
    with pytest.raises(ValueError, match=r"depth-model\.pth.*unexpected.*enc_1\.conv\.input_conv\.weight has "
                                         r"shape \(64, 4, 7, 7\), expected \(64, 6, 7, 7\)"):
        ip.inpaint_color_net_params_from_torch_state_dict(official_nets["depth"][2], source="depth-model.pth")
    # num_batches_tracked is optional (unused in eval mode), everything else is required
    no_nbt = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    ip.inpaint_color_net_params_from_torch_state_dict(no_nbt, source=src)


# ------------------------------------------------------------------------------- pre/post-processing


def test_zero_mean_log_depth_and_postprocessing(rng):
    h, w = 23, 31
    depth = rng.uniform(1.0, 50.0, (h, w)).astype(np.float32)
    ctx = rng.random((h, w)) > 0.4
    zm, mean = ip.zero_mean_log_depth(depth, ctx)
    logd = np.log(depth.astype(np.float64) + 1e-8)
    np.testing.assert_allclose(float(mean), logd[ctx].mean(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(zm), np.where(ctx, logd - logd[ctx].mean(), 0.0), atol=1e-5)

    blur = np.asarray(ip.gaussian_blur3x3(depth, 1.5))
    want = cv2.GaussianBlur(depth, (3, 3), 1.5, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(blur, want, rtol=1e-5)

    out = rng.normal(size=(h, w)).astype(np.float32)
    post = np.asarray(ip.postprocess_inpainted_depth(out, mean, depth, ctx))
    d = np.where(ctx, depth, np.exp(out + float(mean))).astype(np.float32)
    d = np.where(ctx, depth, cv2.GaussianBlur(d, (3, 3), 1.5, borderType=cv2.BORDER_REFLECT_101))
    np.testing.assert_allclose(post, d, rtol=1e-5)
    assert np.array_equal(post[ctx], depth[ctx])

    inp = rng.uniform(0.5, 60.0, (h, w)).astype(np.float32)
    clamped = np.asarray(ip.clamp_inpainted_depth(inp, depth, near_edge=20.0))
    want = np.maximum(np.where(inp < depth, depth * 1.01, inp), 18.0)
    np.testing.assert_allclose(clamped, want, rtol=1e-6)

    rgb = rng.random((h, w, 3)).astype(np.float32)
    net_rgb = rng.random((h, w, 3)).astype(np.float32)
    holes = ~ctx & (rng.random((h, w)) > 0.5)
    comp = np.asarray(ip.compose_inpainted_color(net_rgb, rgb, ctx, holes))
    np.testing.assert_allclose(comp, np.where(holes[..., None], net_rgb, np.where(ctx[..., None], rgb, 0.0)))


def official_pipeline_torch(ref_d, ref_c, rgb, depth, ctx, holes):
    """Official Inpainter.inpaint_depth (without the bin clamps) and inpaint_rgb, written in PyTorch."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))
    d = t(depth)[None, None]
    c = t(ctx)[None, None]
    hl = t(holes)[None, None]
    img = t(rgb).permute(2, 0, 1)[None]
    edge = torch.zeros_like(c)
    logd = torch.log(d + 1e-8) * c
    mean = logd[c > 0].mean()
    with torch.no_grad():
        out = ref_d.forward_3p(torch.cat([(logd - mean) * c, edge, c, hl], 1))
        rgb_out = ref_c.forward_3p(torch.cat([img * c, edge, c, hl], 1))
    dd = torch.exp(out + mean)
    dd[c > 0.5] = d[c > 0.5]
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * 1.5**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]
    dd = torch.nn.functional.conv2d(torch.nn.functional.pad(dd, (1, 1, 1, 1), mode="reflect"), k)
    dd[c > 0.5] = d[c > 0.5]
    return (rgb_out * hl + img * c)[0].permute(1, 2, 0).numpy(), dd[0, 0].numpy()


def small_pair(seed):
    refs, variables = [], []
    for kind in ("depth", "color"):
        ref = randomize_(PartialConvUNetRef(kind, SMALL_WIDTHS), seed)
        sd = {k: v.numpy() for k, v in ref.state_dict().items()}
        variables.append(ip.partial_conv_unet_params_from_torch_state_dict(sd, source=f"{kind}.pth",
                                                                            config=small_config(kind)))
        refs.append(ref)
    return refs, variables


def two_plane_scene(h=48, w=70):
    yy, xx = np.mgrid[0:h, 0:w] / (w - 1.0)
    img = np.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * xx * yy], -1).astype(np.float32)
    depth = np.full((h, w), 10.0, np.float32) + 2.0 * xx.astype(np.float32)
    img[15:33, 20:45] = [0.9, 0.1, 0.1]
    depth[15:33, 20:45] = 2.0
    return img, depth


def test_inpainter_matches_official_pipeline_and_interface():
    (ref_d, ref_c), (var_d, var_c) = small_pair(3)
    inp = ip.PartialConvInpainter(var_d, var_c, depth_config=small_config("depth"),
                                  color_config=small_config("color"))
    assert isinstance(inp, layering.Inpainter)
    img, depth = two_plane_scene()
    ctx = cv2.erode((depth > 5).astype(np.uint8), np.ones((10, 10), np.uint8)).astype(bool)
    holes = ~ctx
    holes[:2] = False
    rgb_out, d_out = inp(img, depth, ctx, holes)
    want_rgb, want_d = official_pipeline_torch(ref_d, ref_c, img, depth, ctx, holes)
    assert rel_err(rgb_out, want_rgb) <= 1e-4 and rel_err(d_out, want_d) <= 1e-4
    assert np.array_equal(rgb_out[ctx], img[ctx]) and np.array_equal(d_out[ctx], depth[ctx])
    assert np.all(d_out > 0) and np.all(np.isfinite(rgb_out))
    again = inp(img, depth, ctx, holes)
    assert np.array_equal(again[0], rgb_out) and np.array_equal(again[1], d_out)
    # behind the interface in the layering stage
    ldi = layering.build_ldi(img, depth, np.array([1.9, 5.0, 12.1]), inp)
    assert ldi.num_layers == 2 and np.all(ldi.depth > 0)
    with pytest.raises(ValueError, match="context is empty"):
        inp(img, depth, np.zeros_like(ctx), holes)
    with pytest.raises(ValueError, match="holes: expected shape"):
        inp(img, depth, ctx, holes[:-1])


# ------------------------------------------------------------------------------ precision, sharding


def random_small_variables(cfg, seed):
    net = ip.PartialConvUNet(cfg)
    unit = cfg.pad_multiple
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, unit, unit, cfg.in_channels)))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
        if "kernel" in name:
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:3])), jnp.float32)
        return jnp.asarray(rng.normal(size=s.shape) * 0.1 + ("scale" in name), jnp.float32)

    return net, jax.tree_util.tree_map_with_path(leaf, shapes)


def test_bfloat16_close_to_float32():
    """bfloat16 compute (params float32) vs float32 on the raw (depth-net style) output: relative error
    <= 3e-2 of the output range."""
    net, variables = random_small_variables(MINI, 5)
    x = random_input(np.random.default_rng(4), 40, 56, 4)
    f32 = np.asarray(jax.jit(lambda v, x: ip.forward_3p(net, v, x))(variables, x))
    net16 = ip.PartialConvUNet(MINI, dtype=jnp.bfloat16)
    bf16 = np.asarray(jax.jit(lambda v, x: ip.forward_3p(net16, v, x))(variables, x), np.float32)
    assert 0 < rel_err(bf16, f32) <= 3e-2, rel_err(bf16, f32)


def test_sharded_batch_equals_single_device(num_devices):
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    net, variables = random_small_variables(MINI, 6)
    x = np.concatenate([random_input(np.random.default_rng(i), 32, 40, 4) for i in range(4)])
    single = np.asarray(jax.jit(net.apply)(variables, x))
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    rep = jax.device_put(variables, NamedSharding(mesh, P()))
    sharded = jax.jit(net.apply, out_shardings=NamedSharding(mesh, P("data")))(rep, xs)
    assert len(sharded.addressable_shards) == min(4, num_devices)
    np.testing.assert_allclose(np.asarray(sharded), single, rtol=1e-5, atol=1e-5 * np.abs(single).max())


def test_importing_cine_jax_nets_does_not_import_torch():
    code = ("import sys, cine_jax, cine_jax.nets.inpaint, cine_jax.nets.dpt; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
