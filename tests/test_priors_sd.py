"""four_d/priors/sd.py: a tiny random SD pipeline saved by diffusers/transformers (PyTorch) in the real layout,
loaded by our loader, against the PyTorch modules and the official sd_utils.py SDS step written in torch."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common, loading  # noqa: E402
from four_d.priors import sd as sdm  # noqa: E402

TOL = 1e-4  # relative error bound of every float32 parity check here
PROMPT = "a panda"


@pytest.fixture(scope="module")
def prior():
    model, params = tiny.loaded_sd()
    cfg = get_config("tiny").sd
    fn = sdm.make_sd_sds(model, cfg)
    emb = model.prompt_embeddings(params, PROMPT)

    def loss(images, key, azimuth, use_view, knobs):
        return fn.function.jitted(params, key, images, emb, azimuth, use_view, knobs)

    # one compiled value-and-grad of the jitted SDS step, shared by the tests below (same shapes)
    return dict(model=model, params=params, cfg=cfg, sds=fn, torch=tiny.torch_sd(True), emb=emb,
                vg=jax.jit(jax.value_and_grad(loss, has_aux=True)))


SHAPE = (2, 48, 40, 3)  # odd, non-square renders: resized to the tiny image_size 64


def official_text_z(emb, azimuth):
    """nerf/utils.py train_step's loop, verbatim in NumPy: r-blend of front/side/back by azimuth."""
    out = []
    for az in azimuth:
        if -90 <= az < 90:
            r = 1 - az / 90 if az >= 0 else 1 + az / 90
            start, end = emb["front"], emb["side"]
        else:
            r = 1 - (az - 90) / 90 if az >= 0 else 1 + (az + 90) / 90
            start, end = emb["side"], emb["back"]
        out.append(r * start + (1 - r) * end)
    return np.stack(out)


def torch_official_sds(tm, images, uncond, cond, draws, cfg):
    """guidance/sd_utils.py train_step (--new_sds) in torch with the given draws; returns (loss, d loss / d images)."""
    x = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2), requires_grad=True)
    xs = F.interpolate(x, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    post = tm["vae"].encode(2 * xs - 1).latent_dist
    latents = (post.mean + post.std * torch.tensor(np.asarray(draws["latent_eps"]))) * tm["vae"].config.scaling_factor
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.long)
    noise = torch.tensor(np.asarray(draws["noise"]))
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        eps = tm["unet"](torch.cat([noisy] * 2), torch.cat([t] * 2),
                         encoder_hidden_states=torch.tensor(np.concatenate([uncond, cond]))).sample
    eps_u, eps_c = eps.chunk(2)
    eps_hat = eps_c + cfg.guidance_scale * (eps_c - eps_u)
    w = (1 - tm["scheduler"].alphas_cumprod[t])[:, None, None, None]
    grad = torch.nan_to_num(cfg.lambda_guidance * w * (eps_hat - noise))
    loss = 0.5 * F.mse_loss(latents.float(), (latents - grad).detach(), reduction="sum") / latents.shape[0]
    loss.backward()
    return loss.item(), x.grad.numpy().transpose(0, 2, 3, 1)


def test_text_path_and_schedule_match_pytorch(prior):
    m, p, tm = prior["model"], prior["params"], prior["torch"]
    prompts = ["", PROMPT, f"{PROMPT}, side view"]
    ids = tm["tokenizer"](prompts, padding="max_length", max_length=tm["tokenizer"].model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        te = tm["text_encoder"](ids)[0].numpy()
    assert tiny.rel_err(m.encode_text(p, prompts), te) <= TOL
    np.testing.assert_allclose(prior["emb"]["side"], te[2], rtol=TOL, atol=1e-6)
    np.testing.assert_allclose(m.alphas_cumprod, tm["scheduler"].alphas_cumprod.numpy(), rtol=1e-5)


def test_view_blending_exactly_as_official(prior):
    emb = {k: np.asarray(v) for k, v in prior["emb"].items()}
    az = np.array([-180.0, -135.0, -90.0, -60.0, -0.5, 0.0, 30.0, 89.9, 90.0, 120.0, 179.0, 180.0])
    uncond, cond = common.view_embeddings(prior["emb"], az)
    np.testing.assert_allclose(cond, official_text_z(emb, az), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(uncond, np.broadcast_to(emb["uncond"], cond.shape))
    _, plain = common.view_embeddings(prior["emb"], az, use_view=False)
    np.testing.assert_allclose(plain, np.broadcast_to(emb["default"], cond.shape))


def test_sds_step_matches_the_official_torch_step(prior, rng):
    """The whole step (resize, sampled latent, UNet on the CFG pair, CFG 100, w, loss): loss and d loss / d render
    equal the official torch step given the same draws (UNet + VAE + CLIP text path in float32)."""
    m, cfg, fn = prior["model"], prior["cfg"], prior["sds"]
    images = rng.uniform(size=SHAPE).astype(np.float32)
    azimuth = np.array([30.0, -150.0], np.float32)
    key, knobs = jax.random.key(3), fn.function.knobs()
    (val, aux), grad = prior["vg"](images, key, azimuth, jnp.asarray(True), knobs)
    # the draws the jitted step made from this key (common.draw is deterministic)
    draws = common.draw(key, common.latent_shape(m.vae, 2, cfg.image_size), 2, knobs["min_step"],
                        knobs["max_step"])
    np.testing.assert_array_equal(aux["t"], draws["t"])
    emb = {k: np.asarray(v) for k, v in prior["emb"].items()}
    cond = official_text_z(emb, azimuth).astype(np.float32)
    ref_val, ref_grad = torch_official_sds(prior["torch"], images, np.stack([emb["uncond"]] * 2), cond, draws, cfg)
    assert abs(float(val) - ref_val) <= TOL * abs(ref_val)
    assert tiny.rel_err(grad, ref_grad) <= TOL
    assert np.abs(grad).max() > 0


def test_sds_compiles_once_over_steps_with_changing_knobs(prior, rng):
    fn = prior["sds"]
    images = jnp.asarray(rng.uniform(size=SHAPE).astype(np.float32))
    for step in range(3):
        knobs = fn.function.knobs(min_step=200 + 50 * step, max_step=600 - 50 * step, guidance_scale=100.0 - step)
        (loss, aux), g = prior["vg"](images, jax.random.key(step), jnp.array([10.0 * step, -170.0]),
                                     jnp.asarray(bool(step % 2)), knobs)
        assert np.isfinite(float(loss)) and np.all(np.isfinite(g)) and np.abs(g).max() > 0
        t = np.asarray(aux["t"])
        assert np.all((t >= 200 + 50 * step) & (t <= 600 - 50 * step))
    assert fn.function.traces == 1, f"SD SDS traced {fn.function.traces} times"
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        fn(prior["params"], jax.random.key(0), images[0], prior["emb"], 0.0)
    with pytest.raises(ValueError, match="unknown knob"):
        fn(prior["params"], jax.random.key(0), images, prior["emb"], 0.0, guidance=3.0)
    with pytest.raises(ValueError, match="embeddings lack"):
        fn(prior["params"], jax.random.key(0), images, {"uncond": 0}, 0.0)


def test_sharded_cfg_pair_equals_one_device(prior, rng):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices")
    m, p, cfg, emb = prior["model"], prior["params"], prior["cfg"], prior["emb"]
    mesh = Mesh(np.array(jax.devices()[:4]), (common.DATA_AXIS,))
    sharded = sdm.make_sd_sds(m, cfg, mesh=mesh)
    images = jnp.asarray(rng.uniform(size=SHAPE).astype(np.float32))
    az, key, knobs = jnp.array([15.0, 100.0]), jax.random.key(5), sharded.function.knobs()
    (l1, _), g1 = prior["vg"](images, key, az, jnp.asarray(True), knobs)
    rep = common.replicate(p, mesh)
    (l4, _), g4 = jax.jit(jax.value_and_grad(
        lambda x: sharded.function.jitted(rep, key, x, emb, az, jnp.asarray(True), knobs), has_aux=True))(images)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    # same math, different reduction order on 4 devices (GroupNorm statistics of the VAE backward): float32 noise
    assert tiny.rel_err(g4, g1) <= 1e-3, tiny.rel_err(g4, g1)


def test_bin_folder_loads_the_same_weights(prior):
    _, params_bin = sdm.load_stable_diffusion(tiny.sd_folder(False))
    assert os.path.isfile(os.path.join(tiny.sd_folder(False), "unet", "diffusion_pytorch_model.bin"))
    for part in ("unet", "vae", "text_encoder"):
        jax.tree.map(np.testing.assert_array_equal, params_bin[part], prior["params"][part])


def test_bad_folders_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="folder not found"):
        sdm.load_stable_diffusion(str(tmp_path / "nope"))
    bad = tmp_path / "sd"
    shutil.copytree(tiny.sd_folder(True), bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["class_embed_type"] = "timestep"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="class_embed_type"):
        loading.load_unet2d(str(bad / "unet"))
    cfg["class_embed_type"] = None
    cfg["cross_attention_dim"] = 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape"):
        loading.load_unet2d(str(bad / "unet"))
    cfg["cross_attention_dim"] = tiny.HIDDEN
    cfg["block_out_channels"] = [32, 32]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="inconsistent"):
        loading.load_unet2d(str(bad / "unet"))
    os.remove(bad / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="no weights file"):
        loading.load_vae(str(bad / "vae"))
