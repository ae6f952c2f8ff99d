"""four_d/priors/video.py: the video SDS step (per-frame VAE latents, one t per clip, CFG 100, loss summed over
frames) on a tiny ModelScope pipeline made with the diffusers / transformers PyTorch classes (UNet3DConditionModel,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler) and saved with TextToVideoSDPipeline.save_pretrained,
loaded by build_video_prior (the UNet3D through the Flax port's load_unet3d), against the official sd_utils.py
video path computed in PyTorch with the same modules and the same draws."""

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
from four_d.priors.unet3d import FlaxUNet3DConditionModel  # noqa: E402

TOL = 1e-4  # relative error of the loss and of the gradient w.r.t. the frames (max |diff| / max |ref|), float32
FRAMES = 4
SHAPE = (1, FRAMES, 24, 28, 3)  # one clip (official batch 1) of odd-sized frames, resized to 32 (latents 4x4)
# XLA's CPU backend at optimisation level 0 compiles the UNet3D ~2.5x faster; the math is unchanged (parity).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def prior():
    cfg = get_config("tiny").video
    model, params, fn = video.build_video_prior(tiny.video_folder(), cfg)
    emb = model.prompt_embeddings(params, "a panda")

    def loss(clips, key, azimuth, use_view, knobs):
        return fn.function.jitted(params, key, clips, emb, azimuth, use_view, knobs)

    return dict(model=model, params=params, cfg=cfg, sds=fn, emb=emb,
                vg=jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE))


def torch_official_video(prior, clips, draws, cfg, cond=None, guidance_scale=None):
    """sd_utils.StableDiffusion.train_step for a [B, F, C, H, W] clip ('ms' key: 256 px; --new_sds, mean_frame off)
    with diffusers' PyTorch UNet3DConditionModel / AutoencoderKL loaded from the same folder."""
    tm = tiny.torch_video()
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
        eps = tm["unet"](torch.cat([noisy] * 2), torch.cat([t] * 2),
                         encoder_hidden_states=torch.stack([emb["uncond"], emb["default"] if cond is None
                                                            else torch.tensor(np.asarray(cond))])).sample
        eps_u, eps_c = eps.chunk(2)
        eps_hat = eps_c + (guidance_scale or cfg.guidance_scale) * (eps_c - eps_u)
    w = (1 - tm["scheduler"].alphas_cumprod[t])[:, None, None, None, None]
    grad = torch.nan_to_num(cfg.lambda_guidance * w * (eps_hat - noise))
    loss = 0.5 * F.mse_loss(latents.float(), (latents - grad).detach(), reduction="sum") / latents.shape[0]
    loss.backward()
    return loss.item(), x.grad.numpy().transpose(0, 1, 3, 4, 2)


def test_video_step_matches_the_official_torch_step(prior, rng):
    m, cfg, fn = prior["model"], prior["cfg"], prior["sds"]
    assert isinstance(m.unet, FlaxUNet3DConditionModel) and m.unet.block_out_channels == (16, 32)  # the real port
    clips = rng.uniform(size=SHAPE).astype(np.float32)
    key, knobs = jax.random.key(12), fn.function.knobs()
    (val, aux), grad = prior["vg"](clips, key, jnp.zeros(1), jnp.asarray(False), knobs)
    draws = video.video_draws(key, m.vae, 1, FRAMES, cfg.image_size, knobs["min_step"], knobs["max_step"])
    assert draws["noise"].shape == (1, 4, FRAMES, 4, 4) and draws["latent_eps"].shape == (FRAMES, 4, 4, 4)
    assert aux["t"].shape == (1,) and 20 <= int(aux["t"][0]) <= 980  # one t per clip, U{20..980}
    ref_val, ref_grad = torch_official_video(prior, clips, draws, cfg)
    assert abs(float(val) - ref_val) <= TOL * abs(ref_val)
    assert tiny.rel_err(grad, ref_grad) <= TOL
    assert float(aux["normaliser"]) == 1.0  # summed over the frames, divided by B = 1 (--mean_frame off)
    # the static-camera steps: view-blended prompt at azimuth 45 (0.5 front + 0.5 side), other knobs
    key2 = jax.random.key(30)
    knobs2 = fn.function.knobs(guidance_scale=50.0, min_step=300, max_step=300)
    (v2, aux2), g2 = prior["vg"](clips, key2, jnp.array([45.0]), jnp.asarray(True), knobs2)
    assert int(aux2["t"][0]) == 300
    draws2 = video.video_draws(key2, m.vae, 1, FRAMES, cfg.image_size, 300, 300)
    blend = 0.5 * np.asarray(prior["emb"]["front"]) + 0.5 * np.asarray(prior["emb"]["side"])
    ref_v2, ref_g2 = torch_official_video(prior, clips, draws2, cfg, cond=blend, guidance_scale=50.0)
    assert abs(float(v2) - ref_v2) <= TOL * abs(ref_v2)
    assert tiny.rel_err(g2, ref_g2) <= TOL
    assert fn.function.traces == 1  # knobs, azimuth and use_view changed without a recompile
    with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\]"):
        fn(prior["params"], key, clips[0, 0], prior["emb"])


def test_mean_frame_divides_by_the_frame_count():
    """--mean_frame: the divisor becomes B x F (the sum over frames is the default); the core applies it
    (tests/test_priors_sds.py checks the normaliser arithmetic)."""
    cfg = get_config("tiny").video
    assert video.video_normaliser(cfg, 1, FRAMES) is None  # official default: / B
    cfg.mean_frame = True
    assert video.video_normaliser(cfg, 2, FRAMES) == 2 * FRAMES


def test_sharded_and_chunked_frames_equal_one_device(prior, rng):
    """The frames split over a 4-device mesh, and encoded 2 at a time under jax.checkpoint (vae_frames_per_chunk),
    give the 1-device, all-frames-at-once loss and gradient."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (fake) devices")
    mesh = Mesh(np.array(jax.devices()[:4]), (common.DATA_AXIS,))
    cfg = get_config("tiny").video
    cfg.vae_frames_per_chunk = 2
    sharded = video.make_video_sds(prior["model"], cfg, mesh=mesh)
    clips = jnp.asarray(rng.uniform(size=SHAPE).astype(np.float32))
    key, knobs, az = jax.random.key(13), sharded.function.knobs(), jnp.zeros(1)
    (l1, _), g1 = prior["vg"](clips, key, az, jnp.asarray(False), knobs)
    rep = common.replicate(prior["params"], mesh)
    (l4, _), g4 = jax.jit(jax.value_and_grad(lambda x: sharded.function.jitted(
        rep, key, x, prior["emb"], az, jnp.asarray(False), knobs), has_aux=True),
        compiler_options=FAST_COMPILE)(clips)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    assert tiny.rel_err(g4, g1) <= 1e-4  # same math, another reduction order on 4 devices
    cfg.vae_frames_per_chunk = 3
    with pytest.raises(ValueError, match="vae_frames_per_chunk 3"):
        video.make_video_sds(prior["model"], cfg)(prior["params"], key, clips, prior["emb"])


def test_loader_dtype_and_attention_reach_the_port():
    model, params = video.load_video_prior(tiny.video_folder(), "bfloat16", use_memory_efficient_attention=True)
    assert model.unet.dtype == jnp.bfloat16 and model.unet.use_memory_efficient_attention
    assert {x.dtype for x in jax.tree.leaves(params["unet"])} == {jnp.dtype(jnp.bfloat16)}
    assert model.num_train_timesteps == 1000 and model.folder.endswith("text-to-video")


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="unet.*folder not found"):  # no unet/
        video.load_video_prior(str(tmp_path))
    with pytest.raises(ValueError, match="unet"):  # an SD folder: unet/ holds a UNet2DConditionModel
        video.load_video_prior(tiny.sd_folder(True))
    with pytest.raises(ValueError, match="dtype"):
        video.load_video_prior(tiny.video_folder(), dtype="float8")
