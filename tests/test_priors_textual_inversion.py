"""four_d/priors/textual_inversion.py: learned_embeds files round-trip with diffusers' PyTorch load_textual_inversion;
one training step (loss, gradient, AdamW update) equals the official textual_inversion.py step in torch; the
augmentations against closed forms."""

import colorsys
import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common  # noqa: E402
from four_d.priors import textual_inversion as ti  # noqa: E402
from kernels.sampling import resize  # noqa: E402

TOL = 1e-4
TOKEN = "_panda_"


@pytest.fixture(scope="module")
def sd():
    return tiny.loaded_sd()


@pytest.fixture(scope="module")
def prep(sd):
    """The prepared tiny run (token added, templates, jitted draws and step), shared by the tests below."""
    model, params = sd
    return ti.prepare_textual_inversion(model, params, TOKEN, "a", get_config("tiny").textual_inversion)


def torch_pipe():
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny.sd_folder(True), safety_checker=None,
                                                   requires_safety_checker=False)


def torch_encode(pipe, prompt):
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids.numpy(), pipe.text_encoder(ids)[0].numpy()


@pytest.mark.parametrize("ext", [".bin", ".safetensors"])
def test_learned_embeds_round_trip_with_diffusers(sd, rng, tmp_path, ext):
    model, params = sd
    vec = rng.normal(size=tiny.HIDDEN).astype(np.float32)
    path = ti.save_learned_embeds(str(tmp_path / f"learned_embeds{ext}"), TOKEN, vec)
    pipe = torch_pipe()
    pipe.load_textual_inversion(path)  # diffusers' own loader reads our file
    prompt = f"a {TOKEN} view"
    ids_ref, emb_ref = torch_encode(pipe, prompt)
    text, text_p, tok, tokens = ti.load_learned_embeds(model.text_encoder, params["text_encoder"], model.tokenizer,
                                                       path)
    assert tokens == [TOKEN] and TOKEN not in model.tokenizer.get_vocab()  # the loaded model's tokenizer is untouched
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="np").input_ids
    np.testing.assert_array_equal(ids, ids_ref)
    assert tiny.rel_err(common.encode_text(text, text_p, tok, [prompt]), emb_ref) <= TOL
    # a file written by torch.save (the official save_progress) reads back exactly
    torch.save({TOKEN: torch.tensor(vec)}, tmp_path / "official.bin")
    np.testing.assert_array_equal(ti.read_learned_embeds(str(tmp_path / "official.bin"))[TOKEN], vec)


def test_other_formats_and_errors(sd, rng, tmp_path):
    model, params = sd
    multi = rng.normal(size=(2, tiny.HIDDEN)).astype(np.float32)
    torch.save({"string_to_param": {"*": torch.tensor(multi)}, "name": "<cat>"}, tmp_path / "a1111.pt")
    _, text_p, tok, tokens = ti.load_learned_embeds(model.text_encoder, params["text_encoder"], model.tokenizer,
                                                    str(tmp_path / "a1111.pt"))
    assert tokens == ["<cat>", "<cat>_1"]
    table = text_p["text_model"]["embeddings"]["token_embedding"]["embedding"]
    np.testing.assert_array_equal(table[tok.convert_tokens_to_ids("<cat>_1")], multi[1])
    with pytest.raises(ValueError, match="already in the tokenizer"):
        ti.load_learned_embeds(model.text_encoder, params["text_encoder"], model.tokenizer, {"a": np.zeros(32)})
    with pytest.raises(ValueError, match="size"):
        ti.load_learned_embeds(model.text_encoder, params["text_encoder"], model.tokenizer, {"_x_": np.zeros(5)})
    with pytest.raises(ValueError, match="one"):
        ti.read_learned_embeds({"a": np.zeros(3), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="file not found"):
        ti.read_learned_embeds(str(tmp_path / "missing.bin"))


def torch_official_step(prep, draws, cfg):
    """textual_inversion.py's training step in torch on the same views / templates / t / noise, from the
    initialiser row; returns (loss, grad of the placeholder row, row after AdamW)."""
    tm = tiny.torch_sd(True)
    text = copy.deepcopy(tm["text_encoder"])
    text.resize_token_embeddings(len(prep["tokenizer"]))
    emb = text.get_input_embeddings()
    with torch.no_grad():
        emb.weight[prep["token_id"]] = torch.tensor(prep["init"])
    opt = torch.optim.AdamW(emb.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_b1, cfg.adam_b2),
                            weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon if hasattr(cfg, "adam_epsilon")
                            else cfg.adam_eps)
    pixel_values = torch.tensor(np.asarray(draws["views"]).transpose(0, 3, 1, 2))  # official: [0, 1], no 2x - 1
    with torch.no_grad():
        post = tm["vae"].encode(pixel_values).latent_dist
        latents = (post.mean + post.std * torch.tensor(np.asarray(draws["latent_eps"]))) * 0.18215
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(tm["scheduler"].config)
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.long)
    noise = torch.tensor(np.asarray(draws["noise"]))
    noisy = sched.add_noise(latents, noise, t)
    ids = torch.tensor(np.asarray(prep["template_ids"])[np.asarray(draws["template"])])
    pred = tm["unet"](noisy, t, text(ids)[0]).sample
    loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    loss.backward()
    grad = emb.weight.grad[prep["token_id"]].numpy().copy()
    opt.step()
    return loss.item(), grad, emb.weight[prep["token_id"]].detach().numpy()


def test_training_step_matches_the_official_torch_step_and_writes_files(prep, rng, tmp_path):
    cfg = prep["config"]
    image = rng.uniform(size=(50, 70, 3)).astype(np.float32)  # not square: shorter side resized, centre-cropped
    base = jnp.asarray(ti.base_image(image, cfg.resolution))
    assert base.shape == (80, 80, 3)  # int(64 * 5/4)
    trainer = prep["trainer"]
    draws = trainer["draws"](jax.random.key(11), base)
    vec1, _, loss, grad = trainer["step"](jnp.asarray(prep["init"]), trainer["tx"].init(jnp.asarray(prep["init"])),
                                          draws)
    assert draws["views"].shape == (2, 64, 64, 3) and float(draws["views"].min()) >= 0
    ids = np.asarray(prep["template_ids"])[np.asarray(draws["template"])]
    assert np.all(np.any(ids == prep["token_id"], axis=1))  # the token is in every sampled prompt (not truncated)
    assert np.abs(np.asarray(grad)).max() > 1e-6
    ref_loss, ref_grad, ref_vec = torch_official_step(prep, draws, cfg)
    assert abs(float(loss) - ref_loss) <= TOL * ref_loss
    assert tiny.rel_err(grad, ref_grad) <= TOL
    # the AdamW update itself (first step ~ lr sign(g), weight decay 1e-2 x lr x row on top): float32 rounding
    # of the row (~1e-8) against an update of ~1e-4 allows 1e-3 relative
    np.testing.assert_allclose(np.asarray(vec1) - prep["init"], ref_vec - prep["init"], rtol=1e-3, atol=1e-9)
    # the loop: progress, checkpoints every save_steps, final files readable by diffusers
    out = ti.train_textual_inversion(None, image, TOKEN, "a", str(tmp_path), prepared=prep, progress=False)
    assert out["losses"].shape == (cfg.steps,) and np.all(np.isfinite(out["losses"]))
    names = sorted(os.listdir(tmp_path))
    assert names == ["learned_embeds-steps-2.bin", "learned_embeds-steps-2.safetensors", "learned_embeds.bin",
                     "learned_embeds.safetensors"]
    assert not np.allclose(out["embedding"], prep["init"])
    pipe = torch_pipe()
    pipe.load_textual_inversion(str(tmp_path / "learned_embeds.bin"))
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(TOKEN)]
    np.testing.assert_allclose(row.detach().numpy(), out["embedding"], rtol=1e-6)


def _aug(**kw):
    c = get_config().textual_inversion
    off = dict(aug_rotate_p=0.0, aug_jitter_p=0.0, aug_gray_p=0.0, aug_blur_p=0.0, aug_flip_p=0.0,
               aug_crop_scale=(1.0, 1.0), aug_crop_ratio=(1.0, 1.0))
    for k, v in {**off, **kw}.items():
        c[k] = v
    return ti.augment_params(c)


def test_augmentations_closed_forms(prep, rng):
    """Through the trainer's own jitted draws (tiny: 2 views of 64 px from an 80 px base), with other params."""
    draws = prep["trainer"]["draws"]
    base = jnp.asarray(rng.uniform(size=(80, 80, 3)).astype(np.float32))
    key = jax.random.key(0)
    view = lambda b, k=key, **kw: draws(k, b, _aug(**kw))["views"][0]  # noqa: E731
    # nothing random on: RandomResizedCrop of the whole image = a plain bilinear resize 80 -> 64
    plain = view(base)
    np.testing.assert_allclose(plain, resize(base, (64, 64)), atol=2e-6)
    # flip p=1 mirrors the same draw; grayscale p=1 gives the 0.299/0.587/0.114 grey in all channels
    np.testing.assert_allclose(view(base, aug_flip_p=1.0), plain[:, ::-1], atol=2e-6)
    gray = view(base, aug_gray_p=1.0)
    np.testing.assert_allclose(gray[..., 0], plain @ jnp.array([0.299, 0.587, 0.114]), atol=2e-6)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    # blur p=1 of a constant image is the constant (reflect padding, normalised kernel)
    np.testing.assert_allclose(view(jnp.full((80, 80, 3), 0.3), aug_blur_p=1.0), 0.3, atol=1e-6)
    # rotating the whole (uncropped) black image brings in white corners and keeps the centre black
    outs = [np.asarray(view(jnp.zeros((80, 80, 3)), jax.random.key(s), aug_rotate_p=1.0, aug_rotate_crop=1.25))
            for s in range(4)]
    assert min(o[[0, 0, -1, -1], [0, -1, 0, -1]].mean() for o in outs) > 0.2
    assert max(float(o[24:40, 24:40].max()) for o in outs) == 0.0
    # crop boxes stay inside the image; an impossible scale falls back to the whole image
    box = jax.jit(jax.vmap(lambda k, s: jnp.stack(ti._resized_crop_box(k, 640.0, s, jnp.array([0.75, 4 / 3]))),
                           in_axes=(0, None)))
    top, left, h, w = np.asarray(box(jax.random.split(jax.random.key(1), 256), jnp.array([0.85, 1.15]))).T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 640) & (left + w <= 640) & (h > 0) & (w > 0))
    assert np.all((h * w >= 0.85 * 640**2 * 0.99) | ((h == 640) & (w == 640)))
    assert np.all(np.asarray(box(jax.random.split(jax.random.key(2), 4), jnp.array([2.0, 2.0]))) ==
                  [0, 0, 640, 640])


def test_hsv_and_jitter_against_colorsys(rng):
    px = rng.uniform(size=(64, 3)).astype(np.float32)
    h, s, v = (np.asarray(a) for a in jax.jit(ti._rgb_to_hsv)(jnp.asarray(px)))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    np.testing.assert_allclose(np.stack([h, s, v], -1), ref, atol=1e-5)
    back = np.asarray(jax.jit(ti._hsv_to_rgb)(jnp.asarray((ref[:, 0] + 0.3) % 1), jnp.asarray(ref[:, 1]),
                                              jnp.asarray(ref[:, 2])))
    np.testing.assert_allclose(back, [colorsys.hsv_to_rgb((a + 0.3) % 1, b, c) for a, b, c in ref], atol=1e-5)
    img = jnp.asarray(rng.uniform(size=(8, 8, 3)).astype(np.float32))
    jitter = jax.jit(ti._color_jitter)
    np.testing.assert_allclose(jitter(jax.random.key(0), img, 0.0), img, atol=1e-5)  # strength 0: identity
    # brightness alone (strength s, other factors ~1) keeps the order of pixel values per channel
    out = np.asarray(jitter(jax.random.key(1), img, 0.04))
    assert 0 < np.abs(out - np.asarray(img)).max() < 0.2
