"""four_d/priors/video.py: the video SDS step (per-frame VAE latents, one t per clip, CFG 100, loss summed over
frames) with a tiny UNet3D-layout Flax module and its torch twin, against the official sd_utils.py video path in
torch (SD VAE + CLIP text from the tiny pipeline saved by diffusers). The real UNet3D port has its own tests
(tests/test_priors_unet3d.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common, video  # noqa: E402

TOL = 1e-4
FRAMES = 4
SHAPE = (1, FRAMES, 24, 28, 3)  # one clip (official batch 1) of odd-sized frames, resized to 32 (latents 4x4)


def sinusoid(t, dim, xp):
    half = dim // 2
    freqs = xp.exp(-np.log(10000.0) * xp.arange(half) / half)
    ang = t[:, None] * freqs[None]
    return xp.concatenate([xp.sin(ang), xp.cos(ang)], -1)


class TinyVideoUNet(nn.Module):
    """A stand-in with the UNet3D call layout: [B, C, F, H, W], t [B], context [B, L, D] -> [B, C, F, H, W].
    Temporal 3x3x3 convolutions, a time embedding and the context mean, so every input matters."""

    channels: int = 4
    features: int = 8

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states):
        x = jnp.transpose(sample, (0, 2, 3, 4, 1))
        h = nn.Conv(self.features, (3, 3, 3), padding=1, name="conv_in")(x)
        temb = sinusoid(jnp.asarray(timesteps, jnp.float32), self.features, jnp)
        ctx = nn.Dense(self.features, name="ctx")(jnp.mean(encoder_hidden_states, 1))
        h = jax.nn.silu(h + (temb + ctx)[:, None, None, None, :])
        out = nn.Conv(self.channels, (3, 3, 3), padding=1, name="conv_out")(h)
        return jnp.transpose(out, (0, 4, 1, 2, 3))


def torch_twin(p):
    """TinyVideoUNet in torch with the same weights."""
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731

    def run(sample, timesteps, ctx):
        h = F.conv3d(sample, t(p["conv_in"]["kernel"]).permute(4, 3, 0, 1, 2), t(p["conv_in"]["bias"]), padding=1)
        temb = sinusoid(timesteps.float(), 8, torch)
        c = ctx.mean(1) @ t(p["ctx"]["kernel"]) + t(p["ctx"]["bias"])
        h = F.silu(h + (temb + c)[:, :, None, None, None])
        return F.conv3d(h, t(p["conv_out"]["kernel"]).permute(4, 3, 0, 1, 2), t(p["conv_out"]["bias"]), padding=1)

    return run


@pytest.fixture(scope="module")
def prior():
    sd, sd_params = tiny.loaded_sd()
    unet = TinyVideoUNet()
    shapes = jax.eval_shape(unet.init, jax.random.key(0), jnp.zeros((1, 4, FRAMES, 4, 4)), jnp.zeros(1),
                            jnp.zeros((1, 3, tiny.HIDDEN)))["params"]
    rng = np.random.default_rng(7)
    unet_p = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)
    model = video.VideoPrior(unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.alphas_cumprod)
    params = dict(unet=unet_p, vae=sd_params["vae"], text_encoder=sd_params["text_encoder"])
    cfg = get_config("tiny").video
    fn = video.make_video_sds(model, cfg)
    emb = model.prompt_embeddings(params, "a panda")

    def loss(clips, key, azimuth, use_view, knobs):
        return fn.function.jitted(params, key, clips, emb, azimuth, use_view, knobs)

    return dict(model=model, params=params, cfg=cfg, sds=fn, emb=emb,
                vg=jax.jit(jax.value_and_grad(loss, has_aux=True)))


def torch_official_video(prior, clips, draws, cfg):
    """sd_utils.StableDiffusion.train_step for a [B, F, C, H, W] clip ('ms' key: 256 px; --new_sds, mean_frame off)."""
    tm = tiny.torch_sd(True)
    unet = torch_twin(prior["params"]["unet"])
    b, f = clips.shape[:2]
    x = torch.tensor(np.asarray(clips).transpose(0, 1, 4, 2, 3), requires_grad=True)  # b f c h w
    flat = x.reshape(b * f, *x.shape[2:])
    xs = F.interpolate(flat, (cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    post = tm["vae"].encode(2 * xs - 1).latent_dist
    z = (post.mean + post.std * torch.tensor(np.asarray(draws["latent_eps"]))) * tm["vae"].config.scaling_factor
    latents = z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # (b f) c h w -> b c f h w
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.long)
    noise = torch.tensor(np.asarray(draws["noise"]))
    emb = {k: torch.tensor(np.asarray(v)) for k, v in prior["emb"].items()}
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        eps = unet(torch.cat([noisy] * 2), torch.cat([t] * 2), torch.stack([emb["uncond"], emb["default"]]))
        eps_u, eps_c = eps.chunk(2)
        eps_hat = eps_c + cfg.guidance_scale * (eps_c - eps_u)
    w = (1 - tm["scheduler"].alphas_cumprod[t])[:, None, None, None]
    grad = torch.nan_to_num(cfg.lambda_guidance * w * (eps_hat - noise))
    loss = 0.5 * F.mse_loss(latents.float(), (latents - grad).detach(), reduction="sum") / latents.shape[0]
    loss.backward()
    return loss.item(), x.grad.numpy().transpose(0, 1, 3, 4, 2)


def test_video_step_matches_the_official_torch_step(prior, rng):
    m, cfg, fn = prior["model"], prior["cfg"], prior["sds"]
    clips = rng.uniform(size=SHAPE).astype(np.float32)
    key, knobs = jax.random.key(12), fn.function.knobs()
    (val, aux), grad = prior["vg"](clips, key, jnp.zeros(1), jnp.asarray(False), knobs)
    draws = video.video_draws(key, m.vae, 1, FRAMES, cfg.image_size, knobs["min_step"], knobs["max_step"])
    assert aux["t"].shape == (1,) and 20 <= int(aux["t"][0]) <= 980  # one t per clip, U{20..980}
    ref_val, ref_grad = torch_official_video(prior, clips, draws, cfg)
    assert abs(float(val) - ref_val) <= TOL * abs(ref_val)
    assert tiny.rel_err(grad, ref_grad) <= TOL
    # the loss is summed over frames: a clip of the first two frames has about half the loss
    assert float(aux["normaliser"]) == 1.0
    for step in range(2):
        (v, _), g = prior["vg"](clips, jax.random.key(30 + step), jnp.array([45.0]), jnp.asarray(True),
                                fn.function.knobs(guidance_scale=50.0, min_step=100 * (step + 1)))
        assert np.isfinite(float(v)) and np.all(np.isfinite(g)) and np.abs(g).max() > 0
    assert fn.function.traces == 1
    with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\]"):
        fn(prior["params"], key, clips[0, 0], prior["emb"])


def test_mean_frame_divides_by_the_frame_count():
    """--mean_frame: the divisor becomes B x F (the sum over frames is the default); the core applies it
    (tests/test_priors_sds.py checks the normaliser arithmetic)."""
    cfg = get_config("tiny").video
    assert video.video_normaliser(cfg, 1, FRAMES) is None  # official default: / B
    cfg.mean_frame = True
    assert video.video_normaliser(cfg, 2, FRAMES) == 2 * FRAMES


def test_sharded_frames_equal_one_device(prior, rng):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices")
    mesh = Mesh(np.array(jax.devices()[:4]), (common.DATA_AXIS,))
    sharded = video.make_video_sds(prior["model"], prior["cfg"], mesh=mesh)
    clips = jnp.asarray(rng.uniform(size=SHAPE).astype(np.float32))
    key, knobs, az = jax.random.key(13), sharded.function.knobs(), jnp.zeros(1)
    (l1, _), g1 = prior["vg"](clips, key, az, jnp.asarray(False), knobs)
    rep = common.replicate(prior["params"], mesh)
    (l4, _), g4 = jax.jit(jax.value_and_grad(lambda x: sharded.function.jitted(
        rep, key, x, prior["emb"], az, jnp.asarray(False), knobs), has_aux=True))(clips)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    assert tiny.rel_err(g4, g1) <= 1e-3  # same math, another reduction order on 4 devices


def test_loader_needs_the_unet3d_port(tmp_path):
    try:
        import four_d.priors.unet3d  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="unet3d"):
            video.load_video_prior(tiny.sd_folder(True))
    else:  # the port is present: a folder without unet/ still fails clearly
        with pytest.raises(ValueError, match="folder not found"):
            video.load_video_prior(str(tmp_path))
