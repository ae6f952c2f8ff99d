"""four_d/priors/controlnet.py: a tiny SD + ControlNet saved by diffusers (PyTorch), loaded by our loaders, against the
official cn_utils.py step (--grad_dyn, --new_sds) written in torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common, loading  # noqa: E402
from four_d.priors import controlnet as cnm  # noqa: E402

TOL = 1e-4
SHAPE = (2, 40, 40, 3)  # the two selected frames, resized to the tiny image_size 64 (latents 8x8, condition 64)


@pytest.fixture(scope="module")
def prior():
    sd_model, sd_params = tiny.loaded_sd()  # shared with the other prior tests; load_controlnet_tile is tested below
    cn, cn_params = loading.load_controlnet(tiny.controlnet_folder())
    model, params = cnm.ControlNetTile(sd_model, cn, tiny.controlnet_folder()), dict(sd_params, controlnet=cn_params)
    cfg = get_config("tiny").controlnet
    fn = cnm.make_controlnet_sds(model, cfg)
    emb = model.sd.prompt_embeddings(params, "a panda")
    cn_emb = model.controlnet_embeddings(params, cfg, prompt="pan")

    def loss(frames, cond, key, azimuth, use_view, knobs):
        return fn.function.jitted(params, key, frames, cond, emb, azimuth, cn_emb, use_view, knobs)

    return dict(model=model, params=params, cfg=cfg, sds=fn, emb=emb, cn_emb=cn_emb,
                vg=jax.jit(jax.value_and_grad(loss, has_aux=True)))


def torch_official_cn(frames, cond, text, cn_text, draws, cfg):
    """cn_utils.ControlNetStableDiffusion.train_step with --grad_dyn --new_sds, given the draws (one t per clip)."""
    tm, cnet = tiny.torch_sd(True), tiny.torch_controlnet()
    size = cfg.image_size
    x = torch.tensor(np.asarray(frames).transpose(0, 3, 1, 2), requires_grad=True)
    xs = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
    c = F.interpolate(torch.tensor(np.asarray(cond).transpose(0, 3, 1, 2)), (size, size), mode="bilinear",
                      align_corners=False)
    c2 = torch.cat([c] * 2)
    post = tm["vae"].encode(2 * xs - 1).latent_dist
    latents = (post.mean + post.std * torch.tensor(np.asarray(draws["latent_eps"]))) * tm["vae"].config.scaling_factor
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.long)  # shape [1]
    noise = torch.tensor(np.asarray(draws["noise"]))
    alphas = tm["scheduler"].alphas_cumprod
    with torch.no_grad():
        noisy = tm["scheduler"].add_noise(latents, noise, t)
        inp = torch.cat([noisy] * 2)
        down, mid = cnet(inp, t, encoder_hidden_states=torch.tensor(cn_text), controlnet_cond=c2,
                         conditioning_scale=cfg.conditioning_scale, return_dict=False)
        eps = tm["unet"](inp, t, encoder_hidden_states=torch.tensor(text), down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        eps_u, eps_c = eps.chunk(2)
        eps_hat = eps_c + cfg.guidance_scale * (eps_c - eps_u)
        targets = (noisy - (1 - alphas[t]) ** 0.5 * eps_hat) / alphas[t] ** 0.5
    loss = 0.5 * F.mse_loss(latents.float(), targets, reduction="sum") / latents.shape[0]
    loss.backward()
    return loss.item(), x.grad.numpy().transpose(0, 2, 3, 1)


def test_step_matches_the_official_torch_step(prior, rng):
    m, cfg, fn = prior["model"], prior["cfg"], prior["sds"]
    frames = rng.uniform(size=SHAPE).astype(np.float32)
    cond = np.clip(frames + rng.normal(scale=0.1, size=SHAPE), 0, 1).astype(np.float32)
    key, knobs = jax.random.key(6), fn.function.knobs()
    (val, aux), grad = prior["vg"](frames, cond, key, jnp.zeros(2), jnp.asarray(False), knobs)
    draws = common.draw(key, common.latent_shape(m.sd.vae, 2, cfg.image_size), 1, knobs["min_step"],
                        knobs["max_step"])
    assert np.all(np.asarray(aux["t"]) == np.asarray(draws["t"])[0])  # one t for the whole clip
    emb, cn = {k: np.asarray(v) for k, v in prior["emb"].items()}, {k: np.asarray(v) for k, v in
                                                                     prior["cn_emb"].items()}
    text = np.stack([emb["uncond"]] * 2 + [emb["default"]] * 2)  # official [neg x F; pos x F]
    cn_text = np.stack([cn["uncond"]] * 2 + [cn["cond"]] * 2)
    ref_val, ref_grad = torch_official_cn(frames, cond, text, cn_text, draws, cfg)
    assert abs(float(val) - ref_val) <= TOL * abs(ref_val)
    assert tiny.rel_err(grad, ref_grad) <= TOL
    for step in range(2):
        (v, _), g = prior["vg"](frames, cond, jax.random.key(20 + step), jnp.array([10.0, 170.0]),
                                jnp.asarray(True), fn.function.knobs(guidance_scale=5.0 + step))
        assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    assert fn.function.traces == 1


def test_frame_selection_as_official():
    np.testing.assert_array_equal(cnm.config_frames(16, get_config("paper").controlnet), [0, 8])  # --cn_frames 2
    np.testing.assert_array_equal(cnm.select_frames(16, 2), [0, 8])  # official cn_frame_method 'even'
    np.testing.assert_array_equal(cnm.select_frames(16, 4), [0, 4, 8, 12])
    np.testing.assert_array_equal(cnm.select_frames(4, 8), [0, 1, 2, 3])
    r = np.asarray(cnm.select_frames(16, 3, "random", jax.random.key(0)))
    assert len(set(r.tolist())) == 3 and r.max() < 16
    with pytest.raises(ValueError, match="multiple"):
        cnm.select_frames(16, 3)


def test_loader_with_learned_embeds(prior, rng, tmp_path):
    """load_controlnet_tile: the same weights as the parts, plus the textual-inversion token (official
    pipe.load_textual_inversion(--cn_learned_embeds_path))."""
    from four_d.priors import textual_inversion as ti

    vec = rng.normal(size=tiny.HIDDEN).astype(np.float32)
    path = ti.save_learned_embeds(str(tmp_path / "learned_embeds.safetensors"), "_panda_", vec)
    model, params = cnm.load_controlnet_tile(tiny.sd_folder(True), tiny.controlnet_folder(), learned_embeds=path)
    jax.tree.map(np.testing.assert_array_equal, params["controlnet"], prior["params"]["controlnet"])
    tid = model.sd.tokenizer.convert_tokens_to_ids("_panda_")
    table = params["text_encoder"]["text_model"]["embeddings"]["token_embedding"]["embedding"]
    np.testing.assert_array_equal(table[tid], vec)
    assert "_panda_" not in prior["model"].sd.tokenizer.get_vocab()


def test_mismatched_controlnet_fails_clearly(tmp_path):
    import shutil

    bad = tmp_path / "cn"
    shutil.copytree(tiny.controlnet_folder(), bad)
    import json

    cfg = json.loads((bad / "config.json").read_text())
    cfg["cross_attention_dim"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        cnm.load_controlnet_tile(tiny.sd_folder(True), str(bad))


def test_memory_efficient_attention_switch(prior):
    """loading.controlnet_attention makes the ControlNet trace chunked attention (a scan) only inside the context."""
    cn, p = prior["model"].controlnet, prior["params"]["controlnet"]
    args = (jnp.zeros((2, 4, 8, 8)), jnp.zeros(2, jnp.int32), jnp.zeros((2, 16, tiny.HIDDEN)),
            jnp.zeros((2, 3, 64, 64)))
    texts = {}
    for flag in (False, True):
        with loading.controlnet_attention(flag):
            texts[flag] = str(jax.make_jaxpr(lambda q, *a: cn.apply({"params": q}, *a, return_dict=False))(p, *args))
    assert "scan" in texts[True] or "while" in texts[True]
    assert "scan" not in texts[False] and "while" not in texts[False]
