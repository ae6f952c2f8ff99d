"""four_d/stage_priors.py: the weights-folder check and the (params, fn) priors of the stages.

Tiny real-architecture models saved by diffusers/transformers (PyTorch) in the real layouts (tests/priors_tiny.py)
are linked into a --weights folder. Each Prior's fn runs under jax.jit with its params as an argument, and its loss
and gradient w.r.t. the images equal the existing make_*_sds called directly with the same key (the wrapper does
not change the math). The zero123 camera is checked against a token and angle computed by hand in NumPy for a
non-default reference camera.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d import stage_priors as sp  # noqa: E402
from four_d.priors import controlnet as cn_lib  # noqa: E402
from four_d.priors import sd as sd_lib  # noqa: E402
from four_d.priors import video as video_lib  # noqa: E402
from four_d.priors import zero123 as z_lib  # noqa: E402
from four_d.priors.textual_inversion import save_learned_embeds  # noqa: E402

TOKEN = "_cat_"
TOL = 1e-5  # relative: the wrapper and the direct call run the same float32 ops (measured 0 .. 1e-7)
ALL = ("static", "coarse", "fine")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def rgba_image(size=40):
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:size, :size]
    alpha = np.clip(1.2 - np.hypot(yy - size / 2, xx - size / 2) / (size / 3), 0, 1)
    rgb = rng.uniform(0, 255, size=(size, size, 3))
    return np.concatenate([rgb, 255 * alpha[..., None]], -1).astype(np.uint8)


def make_weights(root, embeds=True):
    """A --weights folder: symlinks to the tiny model folders plus a learned_embeds.safetensors."""
    os.makedirs(root, exist_ok=True)
    for name, folder in (("sd15", tiny.sd_folder(True)), ("zero123-xl", tiny.zero123_folder("cc_projection")),
                         ("modelscope", tiny.video_folder()), ("controlnet-tile", tiny.controlnet_folder())):
        os.symlink(folder, os.path.join(root, name))
    if embeds:
        vec = np.random.default_rng(7).normal(0, 0.5, tiny.HIDDEN).astype(np.float32)
        save_learned_embeds(os.path.join(root, "learned_embeds.safetensors"), TOKEN, vec)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(str(tmp_path_factory.mktemp("weights") / "w"))


@pytest.fixture(scope="module")
def priors(weights):
    cfg = get_config("tiny")
    return sp.load_stage_priors(weights, "a cat", "a cat is dancing", "a <token> is dancing", rgba_image(), cfg, ALL)


def _vg(fn, argnum):
    """jit(value_and_grad) of fn's loss w.r.t. input `argnum`, params passed as an argument."""
    return jax.jit(jax.value_and_grad(lambda *a: fn(*a)[0], argnums=argnum))


# ---- the weights folder ------------------------------------------------------------------------------------


def test_needed_folders_per_stage():
    assert sp.needed_folders(["static"]) == ("sd15", "zero123-xl")
    assert sp.needed_folders(["coarse"]) == ("zero123-xl", "modelscope")
    assert sp.needed_folders(["fine"]) == ("sd15", "zero123-xl", "modelscope", "controlnet-tile")
    assert sp.check_stages("fine,static") == ("static", "fine")
    with pytest.raises(ValueError, match="--stages"):
        sp.check_stages("static,medium")


def test_check_weights_dir_names_what_is_missing(tmp_path):
    w = make_weights(str(tmp_path / "w"))
    found = sp.check_weights_dir(w, ALL, "a <token> is dancing")
    assert set(found) == {"sd", "zero123", "video", "controlnet", "learned_embeds"}
    with pytest.raises(ValueError, match="folder not found"):
        sp.check_weights_dir(str(tmp_path / "nope"), ALL)
    # a stage that does not use a folder does not need it
    os.remove(os.path.join(w, "controlnet-tile"))
    sp.check_weights_dir(w, ("static", "coarse"))
    with pytest.raises(ValueError, match=r"controlnet-tile: folder missing \(the fine stage needs ControlNet"):
        sp.check_weights_dir(w, ALL)
    os.remove(os.path.join(w, "modelscope"))
    with pytest.raises(ValueError, match=r"modelscope: folder missing \(the coarse stage needs ModelScope"):
        sp.check_weights_dir(w, ("static", "coarse"))
    os.remove(os.path.join(w, "learned_embeds.safetensors"))
    sp.check_weights_dir(w, ("static",), "a <token> is dancing")  # the token prompt is a fine-stage input
    os.remove(os.path.join(w, "sd15"))
    with pytest.raises(ValueError, match=r"sd15: folder missing \(the static stage needs Stable Diffusion"):
        sp.check_weights_dir(w, ("static",))


def test_check_weights_dir_incomplete_folders(tmp_path):
    """Incomplete copies of the real folders: each missing piece is named by its path."""
    import shutil

    w = str(tmp_path / "w")
    os.makedirs(w)
    for name, folder in (("sd15", tiny.sd_folder(True)), ("zero123-xl", tiny.zero123_folder("cc_projection")),
                         ("modelscope", tiny.video_folder()), ("controlnet-tile", tiny.controlnet_folder())):
        shutil.copytree(folder, os.path.join(w, name))
    sp.check_weights_dir(w, ALL)
    cases = [  # (file or folder removed, stages, expected start of the message)
        ("sd15/unet/diffusion_pytorch_model.safetensors", ("static",), "sd15/unet: no weights file"),
        ("sd15/tokenizer/merges.txt", ("static",), "sd15/tokenizer/merges.txt: file missing"),
        ("zero123-xl/cc_projection", ("static",), "zero123-xl: no camera projection folder"),
        ("zero123-xl/image_encoder/config.json", ("coarse",), "zero123-xl/image_encoder/config.json: file missing"),
        ("modelscope/scheduler", ("coarse",), "modelscope/scheduler: folder missing"),
        ("controlnet-tile/config.json", ("fine",), "controlnet-tile/config.json: file missing"),
    ]
    for rel, stages, msg in cases:
        path = os.path.join(w, rel)
        backup = path + ".bak"
        os.rename(path, backup)
        try:
            with pytest.raises(ValueError) as e:
                sp.check_weights_dir(w, stages)
            assert str(e.value).startswith(os.path.join(w, msg.split(":")[0])), str(e.value)
            assert msg.split(": ")[1] in str(e.value)
        finally:
            os.rename(backup, path)
    with pytest.raises(ValueError, match="learned_embeds.safetensors: file missing"):
        sp.check_weights_dir(w, ALL, "a <token> is dancing")


def test_token_prompt_must_use_the_token():
    assert sp.token_prompt_text("a <token> is dancing", TOKEN) == "a _cat_ is dancing"
    assert sp.token_prompt_text("a _cat_ jumps", TOKEN) == "a _cat_ jumps"
    with pytest.raises(ValueError, match="--token-prompt"):
        sp.token_prompt_text("a cat is dancing", TOKEN)


def test_bad_inputs_fail_before_loading(weights, tmp_path):
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="--prompt"):
        sp.load_stage_priors(weights, "  ", "x", None, rgba_image(), cfg, ("static",))
    with pytest.raises(ValueError, match="--motion-prompt"):
        sp.load_stage_priors(weights, "a", "", None, rgba_image(), cfg, ("coarse",))
    with pytest.raises(ValueError, match="reference_rgba"):
        sp.load_stage_priors(weights, "a", "b", None, np.zeros((8, 8, 2)), cfg, ("coarse",))
    with pytest.raises(ValueError, match="config"):
        sp.load_stage_priors(weights, "a", "b", None, rgba_image(), object(), ("coarse",))


# ---- the priors equal the direct SDS calls ----------------------------------------------------------------


def test_kinds_per_stage(priors):
    assert set(priors) == {"sd", "zero123", "video", "controlnet"}
    for params, fn in priors.values():
        assert callable(fn)
        assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
        assert "text_encoder" not in params and "image_encoder" not in params  # not needed in the step


def test_sd_prior_equals_make_sd_sds(priors):
    cfg = get_config("tiny").sd
    model, params = sd_lib.load_stable_diffusion(tiny.sd_folder(True))
    emb = model.prompt_embeddings(params, "a cat" + sp.STATIC_SUFFIX)
    direct = sd_lib.make_sd_sds(model, cfg)
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 24, 20, 3)), jnp.float32)
    az = jnp.array([30.0, -140.0])
    key = jax.random.key(3)
    p, fn = priors["sd"]
    loss, grad = _vg(fn, 2)(p, key, images, az)
    loss0, grad0 = jax.value_and_grad(lambda x: direct(params, key, x, emb, az, True)[0])(images)
    assert np.isfinite(float(loss)) and float(jnp.abs(grad).max()) > 0
    assert _rel(loss, loss0) <= TOL and _rel(grad, grad0) <= TOL


def _unit(polar, azimuth):
    t, f = np.deg2rad(polar), np.deg2rad(azimuth)
    return np.array([np.sin(t) * np.sin(f), np.cos(t), np.sin(t) * np.cos(f)])


def test_zero123_prior_equals_make_zero123_sds(priors):
    """Default reference: our camera (polar, az, r) is the official camera with deltas (polar - 90, -az, r - 1.8)
    (four_d/cameras.py, mirrored convention), so zero123.zero123_camera of those deltas is the reference.
    Non-default reference camera (75, 30, 2.0): the token is [rad(dp), sin(da), cos(da), dr] of our deltas and the
    weight uses the true angle between the two view directions (NumPy, from the camera positions)."""
    cfg = get_config("tiny").zero123
    model, params = z_lib.load_zero123(tiny.zero123_folder("cc_projection"))
    ref = z_lib.prepare_reference(model, params, rgba_image(), jax.random.key(0), cfg)
    direct = z_lib.make_zero123_sds(model, cfg)
    direct_vg = jax.jit(jax.value_and_grad(lambda x, k, c: direct(params, k, x, ref, c)[0]))
    images = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 24, 20, 3)), jnp.float32)
    polar, az, radius = np.array([60.0, 110.0]), np.array([40.0, -150.0]), np.array([1.8, 2.0])
    key = jax.random.key(4)
    p, fn = priors["zero123"]
    vg = _vg(fn, 2)
    loss, grad = vg(p, key, images, polar, az, radius)
    loss0, grad0 = direct_vg(images, key, z_lib.zero123_camera(polar - 90.0, -az, radius - 1.8))
    assert np.isfinite(float(loss)) and float(jnp.abs(grad).max()) > 0
    assert _rel(loss, loss0) <= TOL and _rel(grad, grad0) <= 1e-4
    # a non-default reference camera
    p2 = dict(p, reference_camera=jnp.array([75.0, 30.0, 2.0]))
    polar, az, radius = np.array([50.0, 120.0]), np.array([100.0, -100.0]), np.array([2.3, 1.5])
    dp, da, dr = polar - 75.0, np.deg2rad(az - 30.0), radius - 2.0
    token = np.stack([np.deg2rad(dp), np.sin(da), np.cos(da), dr], -1).astype(np.float32)
    angle = np.array([np.rad2deg(np.arccos(np.clip(_unit(pp, aa) @ _unit(75.0, 30.0), -1, 1)))
                      for pp, aa in zip(polar, az)], np.float32)
    loss, grad = vg(p2, key, images, polar, az, radius)
    loss0, grad0 = direct_vg(images, key, dict(token=jnp.asarray(token), angle=jnp.asarray(angle)))
    assert _rel(loss, loss0) <= 1e-4 and _rel(grad, grad0) <= 1e-4
    # at the reference camera the weight 40 x angle / 180 is zero: no gradient
    _, g_ref = vg(p2, key, images, np.full(2, 75.0), np.full(2, 30.0), np.full(2, 2.0))
    assert float(jnp.abs(g_ref).max()) == 0.0


def test_zero123_reference_camera_from_config(weights):
    """config zero123 reference_* set the Prior's reference camera."""
    cfg = get_config("tiny")
    cfg.zero123.reference_polar, cfg.zero123.reference_azimuth, cfg.zero123.reference_radius = 75.0, 30.0, 2.0
    p, _ = sp.load_stage_priors(weights, "a cat", "a cat is dancing", None, rgba_image(), cfg, ("coarse",))["zero123"]
    np.testing.assert_array_equal(p["reference_camera"], [75.0, 30.0, 2.0])


def test_video_prior_equals_make_video_sds(priors):
    cfg = get_config("tiny").video
    model, params = video_lib.load_video_prior(tiny.video_folder())
    emb = model.prompt_embeddings(params, "a cat is dancing" + sp.MOTION_SUFFIX)
    direct = video_lib.make_video_sds(model, cfg)
    clips = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (1, 3, 20, 24, 3)), jnp.float32)
    az = jnp.array([70.0])
    key = jax.random.key(6)
    p, fn = priors["video"]
    loss, grad = _vg(lambda *a: fn(*a, use_view=True), 2)(p, key, clips, az)
    loss0, grad0 = jax.value_and_grad(lambda x: direct(params, key, x, emb, az, True)[0])(clips)
    assert np.isfinite(float(loss)) and float(jnp.abs(grad).max()) > 0
    assert _rel(loss, loss0) <= TOL and _rel(grad, grad0) <= TOL


def test_controlnet_prior_equals_make_controlnet_sds(priors, weights):
    """The token prompt's "<token>" becomes the learned token; the official frames {0, F/2} are selected."""
    cfg = get_config("tiny").controlnet
    model, params = cn_lib.load_controlnet_tile(tiny.sd_folder(True), tiny.controlnet_folder(),
                                                learned_embeds=os.path.join(weights, "learned_embeds.safetensors"))
    emb = model.sd.prompt_embeddings(params, "a _cat_ is dancing" + sp.MOTION_SUFFIX)
    cn_emb = model.controlnet_embeddings(params, cfg)
    direct = cn_lib.make_controlnet_sds(model, cfg)
    rng = np.random.default_rng(4)
    frames = jnp.asarray(rng.uniform(0, 1, (1, 4, 24, 24, 3)), jnp.float32)
    cond = jnp.asarray(rng.uniform(0, 1, (1, 4, 24, 24, 3)), jnp.float32)
    az = jnp.array([-20.0])
    key = jax.random.key(7)
    p, fn = priors["controlnet"]
    loss, grad = _vg(fn, 2)(p, key, frames, cond, az)
    idx = np.array([0, 2])
    loss0, grad0 = jax.value_and_grad(lambda x: direct(params, key, x, cond[0][idx], emb, az, cn_emb, False)[0])(
        frames[0][idx])
    assert np.isfinite(float(loss)) and float(jnp.abs(grad0).max()) > 0
    assert _rel(loss, loss0) <= TOL and _rel(grad[0][idx], grad0) <= TOL
    assert float(jnp.abs(grad[0][np.array([1, 3])]).max()) == 0.0  # frames the ControlNet does not see
    # the learned token is in the prompt: the plain motion prompt gives other embeddings
    plain = model.sd.prompt_embeddings(params, "a cat is dancing" + sp.MOTION_SUFFIX)
    assert float(jnp.abs(p["embeddings"]["default"] - plain["default"]).max()) > 1e-3
    np.testing.assert_allclose(p["embeddings"]["default"], emb["default"], rtol=1e-6, atol=1e-6)
