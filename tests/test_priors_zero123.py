"""four_d/priors/zero123.py: a tiny zero123 folder saved by diffusers/transformers (PyTorch) in both conversion
layouts, loaded by our loader, against the official zero123_diffusers_utils.py conditioning and SDS step in torch."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import cv2  # noqa: E402
import priors_tiny as tiny  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common  # noqa: E402
from four_d.priors import zero123 as z123  # noqa: E402

TOL = 1e-4  # relative error bound of the float32 parity checks
SHAPE = (2, 24, 20, 3)  # odd renders, resized to the tiny image_size 32
D_POLAR = np.array([-20.0, 35.0], np.float32)  # official deltas to the reference view (degrees)
D_AZIMUTH = np.array([120.0, 200.0], np.float32)  # 200 > 180: wrapped by the official code
D_RADIUS = np.array([0.0, 0.1], np.float32)


def rgba_image(rng, size=48):
    """An RGBA uint8 image: a coloured disc with soft alpha on a transparent background."""
    yy, xx = np.mgrid[:size, :size]
    alpha = np.clip(1.2 - np.hypot(yy - size / 2, xx - size / 2) / (size / 3), 0, 1)
    rgb = rng.uniform(0, 255, size=(size, size, 3))
    return np.concatenate([rgb, 255 * alpha[..., None]], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def prior():
    model, params = z123.load_zero123(tiny.zero123_folder("cc_projection"))
    cfg = get_config("tiny").zero123
    fn = z123.make_zero123_sds(model, cfg)

    def loss(images, key, reference, camera, knobs):
        return fn.function.jitted(params, key, images, reference, camera, knobs)

    return dict(model=model, params=params, cfg=cfg, sds=fn, torch=tiny.torch_zero123("cc_projection"),
                vg=jax.jit(jax.value_and_grad(loss, has_aux=True)))


def official_reference(tm, rgba, size, eps):
    """prepare_embeddings (cv2 INTER_AREA, white composite) + get_img_embeds in torch."""
    rgba_s = cv2.resize(rgba, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    rgb = rgba_s[..., :3] * rgba_s[..., 3:] + (1 - rgba_s[..., 3:])
    x = torch.tensor(rgb).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        pix = tm["feature_extractor"](images=(x * 255).int(), return_tensors="pt").pixel_values
        clip = tm["image_encoder"](pix).image_embeds.unsqueeze(1)
        post = tm["vae"].encode(x * 2 - 1).latent_dist
        latent = post.mean + post.std * torch.tensor(np.asarray(eps))
    return rgb, clip, latent


def official_angles(polar, azimuth, radius, ref_p=90.0, ref_a=0.0, ref_r=1.8):
    """zero123_diffusers_utils.angle_between with one reference view, in torch (degrees)."""
    def sph2cart(sv):
        r, theta, phi = sv[0], sv[1], sv[2]
        return torch.tensor([r * torch.sin(theta) * torch.cos(phi), r * torch.sin(theta) * torch.sin(phi),
                             r * torch.cos(theta)])

    v1 = torch.stack([radius + ref_r, torch.deg2rad(polar + ref_p), torch.deg2rad(azimuth + ref_a)], -1)
    v2 = torch.tensor([ref_r, np.deg2rad(ref_p), np.deg2rad(ref_a)], dtype=torch.float32)
    out = []
    for sv in v1:
        a, b = sph2cart(sv), sph2cart(v2)
        out.append(torch.arccos(torch.clip(torch.dot(a / a.norm(), b / b.norm()), -1, 1)))
    return torch.rad2deg(torch.stack(out))


def torch_official_sds(tm, images, clip, ref_latent, draws, cfg):
    """zero123_diffusers_utils.Zero123.train_step (--new_sds, one reference) with the given draws."""
    polar, azimuth, radius = (torch.tensor(v) for v in (D_POLAR, D_AZIMUTH, D_RADIUS))
    grad_scale = official_angles(polar, azimuth, radius) / 180 * cfg.lambda_guidance
    x = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2), requires_grad=True)
    xs = F.interpolate(x, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    post = tm["vae"].encode(xs * 2 - 1).latent_dist
    latents = (post.mean + post.std * torch.tensor(np.asarray(draws["latent_eps"]))) * tm["vae"].config.scaling_factor
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.long)
    noise = torch.tensor(np.asarray(draws["noise"]))
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        a = azimuth.clone()
        a[a > 180] -= 360
        T = torch.stack([torch.deg2rad(polar), torch.sin(torch.deg2rad(-a)), torch.cos(torch.deg2rad(a)),
                         radius], -1)[:, None, :]
        clip_emb = tm["cc_projection"](torch.cat([clip.repeat(len(T), 1, 1), T], -1))
        cross = torch.cat([torch.zeros_like(clip_emb), clip_emb])
        concat = torch.cat([torch.zeros_like(ref_latent).repeat(len(T), 1, 1, 1), ref_latent.repeat(len(T), 1, 1, 1)])
        inp = torch.cat([torch.cat([noisy] * 2), concat], 1)
        eps = tm["unet"](inp, torch.cat([t] * 2), encoder_hidden_states=cross).sample
        eps_u, eps_c = eps.chunk(2)
        eps_hat = eps_u + cfg.guidance_scale * (eps_c - eps_u)
    w = 1 - tm["scheduler"].alphas_cumprod[t]
    grad = torch.nan_to_num((grad_scale * w)[:, None, None, None] * (eps_hat - noise))
    loss = 0.5 * F.mse_loss(latents.float(), (latents - grad).detach(), reduction="sum") / latents.shape[0]
    loss.backward()
    return loss.item(), x.grad.numpy().transpose(0, 2, 3, 1)


def test_conditioning_and_step_match_the_official_torch_code(prior, rng):
    m, p, cfg, fn = prior["model"], prior["params"], prior["cfg"], prior["sds"]
    rgba = rgba_image(rng)
    ref_eps = jax.random.normal(jax.random.key(1), common.latent_shape(m.vae, 1, cfg.reference_size))
    image = z123.reference_image(rgba, cfg.reference_size)
    ref = z123.encode_reference(m, p, image, eps=ref_eps)
    rgb_ref, clip_ref, latent_ref = official_reference(prior["torch"], rgba, cfg.reference_size, ref_eps)
    np.testing.assert_allclose(image, rgb_ref, atol=1e-6)
    assert tiny.rel_err(ref["clip"], clip_ref.numpy()) <= TOL
    assert tiny.rel_err(ref["latent"], latent_ref.numpy()) <= TOL

    images = rng.uniform(size=SHAPE).astype(np.float32)
    camera = z123.zero123_camera(D_POLAR, D_AZIMUTH, D_RADIUS, cfg.reference_polar, cfg.reference_azimuth,
                                 cfg.reference_radius)
    key, knobs = jax.random.key(4), fn.function.knobs()
    (val, aux), grad = prior["vg"](images, key, ref, camera, knobs)
    draws = common.draw(key, common.latent_shape(m.vae, 2, cfg.image_size), 2, knobs["min_step"], knobs["max_step"])
    ref_val, ref_grad = torch_official_sds(prior["torch"], images, clip_ref, latent_ref, draws, cfg)
    assert abs(float(val) - ref_val) <= TOL * abs(ref_val)
    assert tiny.rel_err(grad, ref_grad) <= TOL
    # jit once: other keys, cameras and knobs reuse the compiled step
    for step in range(2):
        cam = z123.zero123_camera(rng.uniform(-45, 45, 2), rng.uniform(-180, 180, 2), 0.0)
        (v, _), g = prior["vg"](images, jax.random.key(10 + step), ref, cam,
                                fn.function.knobs(guidance_scale=3.0 + step, min_step=250))
        assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    assert fn.function.traces == 1


def test_camera_token_and_angle_weight_as_official():
    token = np.asarray(z123.camera_token(D_POLAR, D_AZIMUTH, D_RADIUS))
    a = np.where(D_AZIMUTH > 180, D_AZIMUTH - 360, D_AZIMUTH)
    expect = np.stack([np.deg2rad(D_POLAR), np.sin(np.deg2rad(-a)), np.cos(np.deg2rad(a)), D_RADIUS], -1)
    np.testing.assert_allclose(token, expect, rtol=1e-6, atol=1e-7)
    angle = np.asarray(z123.angle_to_reference(D_POLAR, D_AZIMUTH, D_RADIUS))
    ref = official_angles(torch.tensor(D_POLAR), torch.tensor(D_AZIMUTH), torch.tensor(D_RADIUS)).numpy()
    np.testing.assert_allclose(angle, ref, atol=1e-3)
    # behind the object the weight is largest, at the reference view it is 0
    np.testing.assert_allclose(z123.angle_to_reference([0.0, 0.0, 0.0], [0.0, 180.0, 90.0], 0.0), [0, 180, 90],
                               atol=1e-2)
    # a caller-supplied token gives back the same angle
    cam = z123.camera_from_token(token)
    np.testing.assert_allclose(cam["angle"], angle, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        z123.camera_from_token(np.zeros((2, 3)))


def test_both_projection_layouts_and_bad_layouts(prior, tmp_path):
    model_b, params_b = z123.load_zero123(tiny.zero123_folder("clip_camera_projection"))
    assert model_b.projection_folder == "clip_camera_projection"
    jax.tree.map(np.testing.assert_array_equal, params_b["cc_projection"], prior["params"]["cc_projection"])
    bad = tmp_path / "z"
    shutil.copytree(tiny.zero123_folder("cc_projection"), bad)
    shutil.rmtree(bad / "cc_projection")
    with pytest.raises(ValueError, match="no camera projection"):
        z123.load_zero123(str(bad))
    shutil.copytree(os.path.join(tiny.zero123_folder("cc_projection"), "unet"), bad / "cc_projection")
    with pytest.raises(ValueError, match="one Linear layer"):
        z123.load_zero123(str(bad))
    idx = json.loads((bad / "model_index.json").read_text())
    assert "cc_projection" in idx
    with pytest.raises(ValueError, match=r"\[S, S, 3\]"):
        z123.encode_reference(prior["model"], prior["params"], np.zeros((8, 8, 4)), jax.random.key(0))
