"""The learned cinemagraph pipeline (cine_jax/learned.py) on tiny random weights.

Every network is written in its official on-disk layout with random weights (tests/torch_reference: the
official-width model_150000.pth, a narrow sceneflow_model.pth, narrow depth-/color-model.pth, a tiny
transformers DPT folder), converted with `cine-jax convert`, and used through `--weights` / models.dir.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cine_jax import cli, learned, pipeline, render, scene, synthetic  # noqa: E402
from configs import cinemagraph  # noqa: E402
from tests.torch_reference import torch_threads  # noqa: E402
from tests.torch_reference.cine_files import official_model, small_sceneflow  # noqa: E402

SMALL_INPAINT = (8, 16, 16, 16, 16, 16, 16)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A folder of official-layout random files converted by `cine-jax convert SRC --to DIR`."""
    from tests.test_nets_dpt import randomize_ as randomize_dpt
    from tests.test_nets_dpt import tiny_hf_config
    from tests.torch_reference.cine_inpaint import PartialConvUNetRef
    from tests.torch_reference.cine_inpaint import randomize_ as randomize_inpaint

    src = tmp_path_factory.mktemp("official")
    with torch_threads(1):
        os.symlink(official_model()[1], src / "model_150000.pth")
        os.symlink(small_sceneflow()[0], src / "sceneflow_model.pth")
        for seed, kind, fname in ((5, "depth", "depth-model.pth"), (6, "color", "color-model.pth")):
            ref = randomize_inpaint(PartialConvUNetRef(kind, widths=SMALL_INPAINT), seed)
            torch.save(ref.state_dict(), src / fname)
        torch.manual_seed(0)
        randomize_dpt(transformers.DPTForDepthEstimation(tiny_hf_config()), 1).save_pretrained(str(src / "dpt_tiny"))
    out = tmp_path_factory.mktemp("weights") / "w"
    assert cli.main(["convert", str(src), "--to", str(out)]) == 0
    return str(out)


def _hints_file(path):
    path.write_text(json.dumps({"mask": [[[0, 26], [63, 26], [63, 47], [0, 47]]],
                                "hints": [{"start": [10, 36], "end": [40, 38]}, {"start": [50, 40], "end": [58, 30]}],
                                "size": [64, 48]}))
    return str(path)


def _config(weights_dir, **kw):
    cfg = cinemagraph.get_config("tiny")
    cfg.models.dir = weights_dir
    for k, v in kw.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


@pytest.fixture(scope="module")
def image():
    return synthetic.plane_scene(48, 64, near_box=(10, 30, 12, 40)).image


def test_every_component_is_learned_deterministic_and_sharding_invariant(weights, image, tmp_path):
    names = sorted(os.listdir(weights))
    assert names == sorted(f"{n}.{e}" for n in ("dpt", "feature_net", "img_decoder", "inpaint_color", "inpaint_depth",
                                                "motion") for e in ("json", "safetensors"))
    hints = _hints_file(tmp_path / "hints.json")
    kw = dict(hints=hints, trajectory="circle", num_frames=4, progress=False)
    one = render.make_mesh(jax.devices()[:1])
    a = pipeline.animate(image, config=_config(weights), mesh=one, **kw)
    assert a.stats["components"] == {"depth": "dpt", "inpainter": "partialconv", "motion": "net",
                                     "features": "resunet", "decoder": "imgdecoder"}
    assert a.frames.shape == (4, 48, 64, 3) and np.all(np.isfinite(a.frames))
    assert a.frames.std() > 1e-3 and np.abs(a.flow).max() > 0  # the networks produce something
    assert np.all(a.flow[np.asarray(a.mask) == 0] == 0)  # official: flow * mask
    b = pipeline.animate(image, config=_config(weights), mesh=one, **kw)
    np.testing.assert_array_equal(a.frames, b.frames)  # bit-identical rerun
    assert jax.device_count() == 4
    c = pipeline.animate(image, config=_config(weights), mesh=render.make_mesh(), **kw)
    # 4 devices (one frame each) = 1 device (lax.map over the chunk) up to float32 reassociation in XLA's
    # convolutions (measured max |diff| 5e-7)
    np.testing.assert_allclose(a.frames, c.frames, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(a.flow, c.flow)
    np.testing.assert_array_equal(a.depth, c.depth)


def test_explicit_keys_force_components_and_learned_flow_follows_the_net(weights, image, tmp_path):
    hints = _hints_file(tmp_path / "hints.json")
    cfg = _config(weights, **{"models.depth": "heuristic", "models.inpainter": "opencv", "models.motion": "hints",
                              "models.decoder": "identity"})
    sel = learned.resolve(cfg)
    assert {c: n for c, (n, _) in sel.items()} == {"depth": "heuristic", "inpainter": "opencv", "motion": "hints",
                                                   "features": "resunet", "decoder": "identity"}
    # the motion component alone: the net's flow equals nets.motion.predict_flow (official pre/post-processing)
    from cine_jax import io
    from cine_jax.nets import motion as motion_net

    ann = io.load_annotations(hints, (48, 64), (48, 64), frames=cfg.io.hint_frames)
    flow = learned.resolve(_config(weights)).build("motion")(image, ann.mask, list(ann.hints), (48, 64))
    module, variables = learned.load(weights, "motion", cfg.models)
    from cine_jax import motion

    starts, vectors = (np.asarray(a) for a in motion.parse_hints(list(ann.hints)))
    want = motion_net.predict_flow(module, variables, image, ann.mask, starts, vectors, 48 / 2, size=256)
    np.testing.assert_allclose(flow, np.asarray(want), atol=1e-6)


def test_decoder_output_is_imgdecoder_on_the_splatted_sides(weights):
    """render_frame with the learned decoder = a direct ImgDecoder call on the two sides splatted with
    [RGBA, features, D] (D = 1/z min-max over the valid points of both sides, computed here in NumPy),
    premultiplied by coverage: fails if the sides, the disparity channel, the coverage or time are wired
    wrong."""
    cfg = _config(weights)
    dec = learned.ImgDecoderRenderer.from_config(cfg.models, section=cfg.render)
    rng = np.random.default_rng(0)
    h, w = 32, 40
    vv, uu = np.mgrid[0:h, 0:w]
    uv = np.stack([uu.ravel(), vv.ravel()], -1).astype(np.float32)
    n = len(uv)
    z = (1.0 + 2.0 * rng.random(n)).astype(np.float32)
    feats = rng.random((n, 36)).astype(np.float32)
    feats[:, 3] = 1.0
    disp_f = rng.normal(0, 1.0, (n, 2)).astype(np.float32)
    disp_b = rng.normal(0, 1.0, (n, 2)).astype(np.float32)
    valid_f = rng.random(n) > 0.1
    valid_b = (rng.random(n) > 0.1) & (z > 1.6)  # the near points only on the forward side: D spans both sides
    K = np.array([[40.0, 0, 19.5], [0, 40.0, 15.5], [0, 0, 1]], np.float32)
    pose = np.eye(4, dtype=np.float32)
    pose[:3, 3] = [0.05, -0.02, 0.1]
    t = 0.3
    opts = render.render_options(cfg)
    sc = {"uv": jnp.asarray(uv), "z": jnp.asarray(z), "features": jnp.asarray(feats), "K_ref": jnp.asarray(K),
          "slope": jnp.zeros(n), "decoder_variables": dec.variables}
    got = jax.jit(lambda s, *a: render.render_frame(s, *a, (h, w), opts, dec)["rgb"])(
        sc, disp_f, disp_b, valid_f, valid_b, t, pose, K)

    pts = [np.asarray(scene.displaced_points(uv, z, d, K)) for d in (disp_f, disp_b)]
    zc = [p[:, 2] + pose[2, 3] for p in pts]  # pose has R = I
    ok = np.concatenate([valid_f & (zc[0] > opts["near"]), valid_b & (zc[1] > opts["near"])])
    inv = 1.0 / np.concatenate(zc)
    lo, hi = inv[ok].min(), inv[ok].max()
    dnorm = np.where(ok, (inv - lo) / (hi - lo), 0.0).astype(np.float32)
    sides = []
    for p, d, v in ((pts[0], dnorm[:n], valid_f), (pts[1], dnorm[n:], valid_b)):
        f37 = np.concatenate([feats, d[:, None]], -1)
        s = render._splat_side(jnp.asarray(p), jnp.asarray(f37), jnp.zeros(n), jnp.asarray(v), jnp.asarray(pose),
                               jnp.asarray(K), jnp.asarray(K), (h, w), opts)
        sides.append(np.asarray(s["features"]) * np.asarray(s["alpha"])[..., None])
    want = jax.jit(dec.module.apply)(dec.variables, sides[0][None], sides[1][None], t)[0]
    assert float(jnp.std(want)) > 1e-3
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_feature_rule_matches_torch_area_and_align_corners_resampling():
    """composite_visible_features = sum_l F_l area(M_l) / sum_l area(M_l), upsampled (align_corners=True),
    against torch F.interpolate on a non-integer ratio (features 7 x 9 for 26 x 35 masks)."""
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 7, 9, 5)).astype(np.float32)
    m = (rng.random((3, 26, 35)) > 0.5).astype(np.float32)
    got = learned.composite_visible_features(f, m, (26, 35))
    ft = torch.from_numpy(f).permute(0, 3, 1, 2)
    md = F.interpolate(torch.from_numpy(m)[:, None], size=(7, 9), mode="area")
    num = (ft * md).sum(0, keepdim=True)
    den = md.sum(0, keepdim=True)
    up = lambda x: F.interpolate(x, size=(26, 35), mode="bilinear", align_corners=True)  # noqa: E731
    want = (up(num) / up(den).clamp(min=1e-6))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resunet_features_keep_own_features_where_visible_and_composite_elsewhere(weights):
    from cine_jax.layering import LDI
    from cine_jax.nets import features as feats_lib

    cfg = _config(weights)
    fx = learned.ResUNetFeatures.from_config(cfg.models, section=cfg.scene)
    rng = np.random.default_rng(2)
    h, w = 40, 48
    vis = np.zeros((2, h, w), bool)
    vis[0, :, :20] = True
    vis[1] = ~vis[0]
    rgba = rng.random((2, h, w, 4)).astype(np.float32)
    rgba[..., 3] = 1.0
    ldi = LDI(rgba=rgba, depth=np.ones((2, h, w), np.float32) * np.array([1.0, 3.0])[:, None, None],
              visible=vis, edges=np.array([0.5, 2.0, 4.0]))
    out = fx(ldi)
    assert out.shape == (2, h, w, 36)
    np.testing.assert_array_equal(out[..., :4], rgba)
    small = np.asarray(fx._apply(fx.variables, jnp.asarray(rgba)))  # the network itself is tested elsewhere
    own = np.asarray(feats_lib.upsample_features(small, (h, w)))
    comp = learned.composite_visible_features(small, vis, (h, w))
    np.testing.assert_allclose(out[0, 10, 5, 4:], own[0, 10, 5], atol=1e-6)  # deep inside layer 0's visible part
    np.testing.assert_allclose(out[0, 10, 40, 4:], comp[10, 40], atol=1e-6)  # layer 0 where layer 1 is seen
    np.testing.assert_allclose(out[1, 10, 40, 4:], own[1, 10, 40], atol=1e-6)
    np.testing.assert_allclose(out[1, 10, 19, 4:], comp[10, 19], atol=1e-6)  # inside the 5x5 erosion band
    assert np.abs(own[0, 10, 40] - comp[10, 40]).max() > 1e-3


def test_weights_errors_are_one_line_before_any_compute(weights, image, tmp_path, capsys):
    img = tmp_path / "photo.png"
    import imageio.v3 as iio

    iio.imwrite(img, (image * 255).astype(np.uint8))
    hints = _hints_file(tmp_path / "hints.json")
    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    os.remove(broken / "inpaint_color.safetensors")
    base = ["animate", str(img), "--hints", hints, "--config", "tiny", "--frames", "2", "--quiet"]
    assert cli.main([*base, "--weights", str(broken), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "inpaint_color.safetensors: file not found" in err and err.count("\n") == 1
    os.remove(broken / "inpaint_color.json")
    assert cli.main([*base, "--weights", str(broken), "--out", str(tmp_path / "o1")]) == 2
    assert "inpaint_color.json: file not found (the learned inpainter needs" in capsys.readouterr().err
    for e in ("json", "safetensors"):
        os.remove(broken / f"inpaint_depth.{e}")
    with open(broken / "img_decoder.safetensors", "r+b") as f:  # a truncated file
        f.truncate(100)
    assert cli.main([*base, "--weights", str(broken), "--out", str(tmp_path / "o2")]) == 2
    assert "img_decoder.safetensors: cannot read safetensors file" in capsys.readouterr().err
    assert cli.main([*base, "--config.models.depth=dpt", "--out", str(tmp_path / "o3")]) == 2
    assert "'models.depth' = 'dpt' needs converted weights" in capsys.readouterr().err
    assert cli.main([*base, "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "o4")]) == 2
    assert "nope: weights folder not found" in capsys.readouterr().err
    only_decoder = tmp_path / "only_decoder"
    only_decoder.mkdir()
    for e in ("json", "safetensors"):
        shutil.copy(os.path.join(weights, f"img_decoder.{e}"), only_decoder)
    assert cli.main([*base, "--weights", str(only_decoder), "--out", str(tmp_path / "o5")]) == 2
    assert "needs the learned features" in capsys.readouterr().err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_bfloat16_option_close_to_float32(weights):
    """models.dtype = bfloat16 (params and activations; a GPU/TPU option) against float32 on the learned
    decoder: max |bf16 - f32| <= 5e-2 (sigmoid output in [0, 1])."""
    rng = np.random.default_rng(3)
    sides = [{"features": jnp.asarray(rng.random((32, 32, 37)), jnp.float32),
              "alpha": jnp.asarray(rng.random((32, 32)), jnp.float32)} for _ in range(2)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = _config(weights, **{"models.dtype": dtype})
        dec = learned.resolve(cfg).build("decoder")
        assert jax.tree_util.tree_leaves(dec.variables)[0].dtype == jnp.dtype(dtype)
        out[dtype] = np.asarray(jax.jit(dec.decode_sides)(sides[0], sides[1], 0.4, dec.variables))
    err = np.abs(out["bfloat16"] - out["float32"]).max()
    assert 0 < err <= 5e-2, err
