"""Textual inversion: diffusers' `learned_embeds` files and a JAX trainer (Animate124's fine-stage prompt token).

Files (the format diffusers' `load_textual_inversion` reads):
  learned_embeds.bin          torch.save({token: tensor [D]}) (the official output; torch needed to read/write)
  learned_embeds.safetensors  {token: [D]} (or [n, D] for an n-vector token: token, token_1, ..., token_{n-1})
  Automatic1111 .pt/.bin      {"string_to_param": {"*": [n, D]}, "name": token} (read only)

Training (official scripts/textual_inversion/textual_inversion_sd.sh -> textual-inversion/textual_inversion.py,
the diffusers example with Magic123's augmentations): one new token initialised from a single-token word,
only its embedding row learned; per step a batch (16) of augmented 512 px views of the reference image and
prompts from the 27 "object" templates ("a photo of a {}", ...); VAE latent sample x 0.18215, t ~ U{0..999}
per image, DDPM noise, the SD UNet conditioned on the text encoder output, loss MSE(eps_pred, eps) (mean);
AdamW(lr 1e-4, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8), constant schedule, 3000 steps; every other
embedding row stays fixed (the official restores them after each step). Augmentations (all in JAX, per image,
from one key): Resize(640) + CenterCrop(640); p 0.75 [rotation U(-10, 10) degrees with white fill,
CenterCrop(426), Resize(512)]; RandomResizedCrop(512, scale (0.85, 1.15), ratio (3/4, 4/3)) with torchvision's
10-attempt rule and its whole-image fallback; p 0.75 ColorJitter(0.04 x 4) in a random order; p 0.1 grayscale;
p 0.1 GaussianBlur(5, sigma U(0.1, 2)); horizontal flip p 0.5. The geometric steps are composed into one affine
map sampled once bilinearly (torchvision resamples after each step, nearest for the rotation): the same
distribution of crops and rotations, different resampling blur. As official, the augmented images reach the
VAE in [0, 1] (config normalize_augmented=False); True maps them to [-1, 1].
"""

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np

from four_d.priors import common

OBJECT_TEMPLATES = (  # official imagenet_templates_small (--learnable_property object)
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (  # official imagenet_style_templates_small (--learnable_property style)
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)
_WHERE = "four_d/priors/textual_inversion.py"


# ---- files ------------------------------------------------------------------------------------------------


def read_learned_embeds(path_or_dict, token=None):
    """{token: np.ndarray [D] or [n, D]} from a learned-embeds file or dict (diffusers or A1111 format)."""
    if isinstance(path_or_dict, dict):
        state, where = path_or_dict, "learned embeddings dict"
    else:
        path = str(path_or_dict)
        where = path
        if os.path.isdir(path):
            for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
                if os.path.isfile(os.path.join(path, name)):
                    path = os.path.join(path, name)
                    break
            else:
                raise ValueError(f"{path}: no learned_embeds.safetensors or learned_embeds.bin in this folder")
            where = path
        if path.endswith(".safetensors"):
            from four_d.priors.loading import read_state_dict

            state = read_state_dict(path)
        else:
            state = _torch_load(path)
    if "string_to_param" in state:  # Automatic1111
        tok, emb = state.get("name", token), state["string_to_param"]["*"]
    elif len(state) == 1:  # diffusers
        tok, emb = next(iter(state.items()))
    else:
        raise ValueError(f"{where}: expected one {{token: embedding}} entry (diffusers) or 'string_to_param' "
                         f"(Automatic1111), found keys {sorted(state)[:5]}")
    tok = token or tok
    if not isinstance(tok, str) or not tok:
        raise ValueError(f"{where}: no token name (pass token=...)")
    emb = np.asarray(emb, np.float32)
    if emb.ndim not in (1, 2):
        raise ValueError(f"{where}: the embedding of {tok!r} must be [D] or [n, D], got shape {emb.shape}")
    return {tok: emb}


def _torch_load(path):
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict {{token: tensor}}, got {type(state).__name__}")

    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else v

    return conv(state)


def save_learned_embeds(path, token, embedding):
    """Write {token: embedding [D]} in diffusers' format: `.safetensors` (no torch) or `.bin` (torch.save)."""
    emb = np.ascontiguousarray(np.asarray(embedding, np.float32))
    if emb.ndim not in (1, 2):
        raise ValueError(f"{_WHERE}: embedding must be [D] or [n, D], got {emb.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({token: emb}, tmp)
    elif path.endswith((".bin", ".pt")):
        import torch

        torch.save({token: torch.from_numpy(emb.copy())}, tmp)
    else:
        raise ValueError(f"{path}: use a .safetensors or .bin file name")
    os.replace(tmp, path)
    return path


def _text_model_with_vocab(text_model, vocab_size):
    """A FlaxCLIPTextModel like text_model whose embedding table has vocab_size rows (no initialisation)."""
    config = copy.deepcopy(text_model.config)
    config.vocab_size = int(vocab_size)
    return type(text_model)(config, _do_init=False, dtype=text_model.dtype)


def _table(text_params):
    return text_params["text_model"]["embeddings"]["token_embedding"]["embedding"]


def _with_table(text_params, table):
    emb = dict(text_params["text_model"]["embeddings"], token_embedding={"embedding": table})
    return dict(text_params, text_model=dict(text_params["text_model"], embeddings=emb))


def add_tokens(text_model, text_params, tokenizer, tokens, vectors):
    """(text_model, text_params, tokenizer) with new tokens whose embedding rows are vectors [n, D].

    The tokenizer is copied (the given one is left unchanged); a token already in the vocabulary is an error,
    as in diffusers.
    """
    tokenizer = copy.deepcopy(tokenizer)
    vocab = tokenizer.get_vocab()
    for tok in tokens:
        if tok in vocab:
            raise ValueError(f"{_WHERE}: token {tok!r} is already in the tokenizer vocabulary")
    vectors = np.asarray(vectors, np.float32).reshape(len(tokens), -1)
    table = _table(text_params)
    if vectors.shape[1] != table.shape[1]:
        raise ValueError(f"{_WHERE}: embeddings have size {vectors.shape[1]}, the text encoder {table.shape[1]}")
    tokenizer.add_tokens(list(tokens))
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    rows = max(table.shape[0], max(ids) + 1)
    table = jnp.concatenate([table, jnp.zeros((rows - table.shape[0], table.shape[1]), table.dtype)], 0)
    table = table.at[jnp.asarray(ids)].set(jnp.asarray(vectors, table.dtype))
    return _text_model_with_vocab(text_model, rows), _with_table(text_params, table), tokenizer


def load_learned_embeds(text_model, text_params, tokenizer, path_or_dict, token=None):
    """Add a learned-embeds file's token(s) to the tokenizer and text encoder (diffusers load_textual_inversion).

    Returns (text_model, text_params, tokenizer, tokens); an [n, D] embedding adds token, token_1, ...
    """
    ((tok, emb),) = read_learned_embeds(path_or_dict, token).items()
    emb = emb.reshape(-1, emb.shape[-1])
    tokens = [tok] + [f"{tok}_{i}" for i in range(1, emb.shape[0])]
    model, params, tokenizer = add_tokens(text_model, text_params, tokenizer, tokens, emb)
    return model, params, tokenizer, tokens


# ---- augmentations ---------------------------------------------------------------------------------------


def base_image(image, resolution, resize=1.25):
    """Resize(int(resolution * 5/4)) (shorter side, PIL bilinear) + CenterCrop, as the official first two steps.

    image: a file path or an RGB array [H, W, 3] (uint8, or float in [0, 1]); an RGBA file is converted to RGB
    by dropping alpha, like PIL's convert("RGB") in the official dataset. Returns float32 [S, S, 3] in [0, 1].
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{image}: file not found")
        try:
            pil = Image.open(image).convert("RGB")
        except OSError as e:
            raise ValueError(f"{image}: not a readable image ({e})") from None
    else:
        arr = common.as_numpy_image(image, f"{_WHERE} base_image")[..., :3]
        pil = Image.fromarray(np.round(arr * 255).astype(np.uint8))
    size = int(resolution * resize)
    w, h = pil.size
    scale = size / min(w, h)
    nw, nh = (size, max(size, int(h * scale))) if w <= h else (max(size, int(w * scale)), size)
    pil = pil.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, np.float32) / 255.0


def _gray(img):
    return img[..., 0:1] * 0.299 + img[..., 1:2] * 0.587 + img[..., 2:3] * 0.114


def _rgb_to_hsv(img):
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc, minc = jnp.max(img, -1), jnp.min(img, -1)
    v = maxc
    delta = maxc - minc
    s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    d = jnp.where(delta > 0, delta, 1.0)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return h, s, v


def _hsv_to_rgb(h, s, v):
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = jnp.mod(i, 6).astype(jnp.int32)
    r = jnp.choose(i, [v, q, p, p, t, v], mode="clip")
    g = jnp.choose(i, [t, v, v, q, p, p], mode="clip")
    b = jnp.choose(i, [p, p, t, v, v, q], mode="clip")
    return jnp.stack([r, g, b], -1)


def _color_jitter(key, img, strength):
    """torchvision ColorJitter(strength x 4): brightness, contrast, saturation, hue in a random order."""
    kf, kp = jax.random.split(key)
    fb, fc, fs = jax.random.uniform(kf, (3,), minval=1 - strength, maxval=1 + strength)
    fh = jax.random.uniform(jax.random.fold_in(kf, 1), (), minval=-strength, maxval=strength)
    def hue(x):
        h, s, v = _rgb_to_hsv(x)
        return _hsv_to_rgb(jnp.mod(h + fh, 1.0), s, v)

    ops = [
        lambda x: jnp.clip(x * fb, 0, 1),
        lambda x: jnp.clip(fc * x + (1 - fc) * jnp.mean(_gray(x)), 0, 1),
        lambda x: jnp.clip(fs * x + (1 - fs) * _gray(x), 0, 1),
        hue,
    ]
    order = jax.random.permutation(kp, 4)
    # one loop body with a 4-way switch: the four orderings share one compiled copy of each op
    return jax.lax.fori_loop(0, 4, lambda k, x: jax.lax.switch(order[k], ops, x), img)


def _gaussian_blur(img, sigma, kernel=5):
    x = jnp.arange(kernel, dtype=jnp.float32) - (kernel - 1) / 2.0
    w = jnp.exp(-0.5 * (x / sigma) ** 2)
    w = w / jnp.sum(w)
    pad = kernel // 2
    p = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h = sum(w[i] * p[:, i:i + img.shape[1]] for i in range(kernel))
    return sum(w[i] * h[i:i + img.shape[0]] for i in range(kernel))


def _resized_crop_box(key, side, scale, ratio, attempts=10):
    """torchvision RandomResizedCrop.get_params on a side x side image: (top, left, h, w) floats.

    Up to 10 tries of area side^2 U(scale) and log-uniform aspect in ratio; the first that fits wins, else the
    whole image (the square image lies inside the ratio range)."""
    ka, kr, ki, kj = jax.random.split(key, 4)
    area = side * side * jax.random.uniform(ka, (attempts,), minval=scale[0], maxval=scale[1])
    log_ratio = jnp.log(jnp.asarray(ratio, jnp.float32))
    aspect = jnp.exp(jax.random.uniform(kr, (attempts,), minval=log_ratio[0], maxval=log_ratio[1]))
    w = jnp.round(jnp.sqrt(area * aspect))
    h = jnp.round(jnp.sqrt(area / aspect))
    ok = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = jnp.argmax(ok)
    any_ok = jnp.any(ok)
    w, h = jnp.where(any_ok, w[first], side), jnp.where(any_ok, h[first], side)
    top = jnp.where(any_ok, jnp.floor(jax.random.uniform(ki, ()) * (side - h + 1)), 0.0)
    left = jnp.where(any_ok, jnp.floor(jax.random.uniform(kj, ()) * (side - w + 1)), 0.0)
    return top, left, h, w


def augment_params(cfg):
    """The augmentation constants of a textual_inversion config as float32 arrays (traced, so changing them
    never recompiles augment)."""
    keys = ("aug_rotate_p", "aug_rotate_degrees", "aug_rotate_crop", "aug_jitter_p", "aug_jitter", "aug_gray_p",
            "aug_blur_p", "aug_flip_p")
    out = {k: jnp.asarray(cfg[k], jnp.float32) for k in keys}
    for k in ("aug_crop_scale", "aug_crop_ratio", "aug_blur_sigma"):
        out[k] = jnp.asarray(tuple(cfg[k]), jnp.float32)
    return out


def augment(key, base, aug, resolution, blur_kernel=5):
    """One augmented view [R, R, 3] in [0, 1] of base [S, S, 3] (base_image); aug from augment_params."""
    from kernels.sampling import sample_bilinear

    side0 = base.shape[0]
    crop = jnp.floor(resolution * aug["aug_rotate_crop"])  # official CenterCrop(int(512 * 5/6))
    ks = jax.random.split(key, 10)
    rotate = jax.random.uniform(ks[0], ()) < aug["aug_rotate_p"]
    deg = aug["aug_rotate_degrees"]
    angle = jnp.deg2rad(jax.random.uniform(ks[1], (), minval=-deg, maxval=deg))
    side1 = jnp.where(rotate, float(resolution), float(side0))  # the image RandomResizedCrop sees
    top, left, h, w = _resized_crop_box(ks[2], side1, aug["aug_crop_scale"], aug["aug_crop_ratio"])
    # output pixel centres (edge coordinates) -> the cropped image -> (rotated branch) -> the base image
    c = jnp.arange(resolution, dtype=jnp.float32) + 0.5
    x1 = left + c[None, :] * (w / resolution)
    y1 = top + c[:, None] * (h / resolution)
    off = jnp.round((side0 - crop) / 2.0)  # torchvision CenterCrop offset in the rotated side0 image
    xr, yr = x1 * (crop / resolution) + off, y1 * (crop / resolution) + off
    ctr = side0 / 2.0
    # PIL rotate(angle) (counter-clockwise on screen, y down): output samples input at ctr + R(-angle)(p - ctr)
    ca, sa = jnp.cos(angle), jnp.sin(angle)
    xin = ctr + ca * (xr - ctr) - sa * (yr - ctr)
    yin = ctr + sa * (xr - ctr) + ca * (yr - ctr)
    u = jnp.where(rotate, xin, jnp.broadcast_to(x1, xin.shape)) - 0.5
    v = jnp.where(rotate, yin, jnp.broadcast_to(y1, yin.shape)) - 0.5
    # zero border on (image - 1) then + 1: pixels rotated in from outside are white (fill=255)
    img = sample_bilinear(base - 1.0, jnp.stack([u, v], -1), border="zeros") + 1.0
    img = jnp.clip(img, 0.0, 1.0)
    img = jnp.where(jax.random.uniform(ks[3], ()) < aug["aug_jitter_p"],
                    _color_jitter(ks[4], img, aug["aug_jitter"]), img)
    img = jnp.where(jax.random.uniform(ks[5], ()) < aug["aug_gray_p"], jnp.broadcast_to(_gray(img), img.shape), img)
    sig = aug["aug_blur_sigma"]
    sigma = jax.random.uniform(ks[6], (), minval=sig[0], maxval=sig[1])
    img = jnp.where(jax.random.uniform(ks[7], ()) < aug["aug_blur_p"], _gaussian_blur(img, sigma, blur_kernel), img)
    img = jnp.where(jax.random.uniform(ks[8], ()) < aug["aug_flip_p"], img[:, ::-1], img)
    return img


# ---- training ---------------------------------------------------------------------------------------------


def _single_token_id(tokenizer, word):
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{_WHERE}: the initializer token must be a single token, {word!r} is {len(ids)} tokens")
    return ids[0]


def make_train_step(model, frozen, cfg, text_model, token_id, templates_ids):
    """Jitted pieces of one textual-inversion step learning the embedding row `token_id`.

    Returns dict(step, draws, loss_given, tx):
      draws(key, base, aug_params=None) -> dict(views [B, R, R, 3], template [B], latent_eps, t [B], noise)
                                      (the random part; aug_params from augment_params, default the config's)
      step(vector, opt_state, draws) -> (vector, opt_state, loss, grad)   (grad: d loss / d vector)
      loss_given(vector, draws) -> loss  (the deterministic loss)
    Two jitted calls per step: the augmentations compile once, apart from the model.
    frozen: dict(unet, vae, text_encoder) params, the text encoder already holding the new row.
    """
    import optax

    from four_d.priors import sds
    from four_d.priors.sd import unet_eps

    tx = optax.adamw(cfg.learning_rate, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                     weight_decay=cfg.weight_decay)
    alphas = jnp.asarray(model.alphas_cumprod)
    templates_ids = jnp.asarray(templates_ids, jnp.int32)
    b, res = int(cfg.batch_size), int(cfg.resolution)
    shape = common.latent_shape(model.vae, b, res)
    table0 = _table(frozen["text_encoder"])
    aug = augment_params(cfg)

    def draws(key, base, aug):
        k_aug, k_tpl, k_lat, k_t, k_noise = jax.random.split(key, 5)
        views = jax.vmap(lambda k: augment(k, base, aug, res, int(cfg.aug_blur_kernel)))(jax.random.split(k_aug, b))
        return dict(views=views, template=jax.random.randint(k_tpl, (b,), 0, templates_ids.shape[0]),
                    latent_eps=jax.random.normal(k_lat, shape), t=jax.random.randint(k_t, (b,), 0, alphas.shape[0]),
                    noise=jax.random.normal(k_noise, shape))

    def loss_given(vector, d):
        # official quirk: augmented views are in [0, 1] and reach the VAE as is (see normalize_augmented)
        x01 = d["views"] if cfg.normalize_augmented else (d["views"] + 1.0) / 2.0
        latents = jax.lax.stop_gradient(common.vae_encode(model.vae, frozen["vae"], x01, d["latent_eps"]))
        noisy = sds.add_noise(latents, d["noise"], sds.gather_alphas(alphas, d["t"]))
        table = table0.at[token_id].set(vector.astype(table0.dtype))
        context = text_model(templates_ids[d["template"]], params=_with_table(frozen["text_encoder"], table))
        eps = unet_eps(model.unet, frozen["unet"], noisy, d["t"], context.last_hidden_state.astype(jnp.float32))
        return jnp.mean((eps - d["noise"]) ** 2)

    @jax.jit
    def step(vector, opt_state, d):
        loss, grad = jax.value_and_grad(loss_given)(vector, d)
        updates, opt_state = tx.update(grad, opt_state, vector)
        return optax.apply_updates(vector, updates), opt_state, loss, grad

    draws_jit = jax.jit(draws)

    def draws_fn(key, base, aug_params=None):
        return draws_jit(key, base, aug if aug_params is None else aug_params)

    return dict(step=step, draws=draws_fn, loss_given=loss_given, tx=tx)


def prepare_textual_inversion(model, params, placeholder_token, initializer_token, config):
    """Everything a textual-inversion run needs before its loop: the tokenizer and text encoder with the new
    token (initialised from the single-token initializer word, official), the tokenised templates and the
    jitted step (make_train_step). Returns a dict (also accepted by train_textual_inversion(prepared=...))."""
    cfg = config
    if cfg.templates not in ("object", "style"):
        raise ValueError(f"{_WHERE}: templates must be 'object' or 'style', got {cfg.templates!r}")
    init_id = _single_token_id(model.tokenizer, initializer_token)
    init = np.asarray(_table(params["text_encoder"])[init_id], np.float32)
    text_model, text_params, tokenizer = add_tokens(model.text_encoder, params["text_encoder"], model.tokenizer,
                                                    [placeholder_token], init[None])
    token_id = tokenizer.convert_tokens_to_ids(placeholder_token)
    templates = OBJECT_TEMPLATES if cfg.templates == "object" else STYLE_TEMPLATES
    ids = tokenizer([t.format(placeholder_token) for t in templates], padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="np").input_ids
    frozen = dict(unet=params["unet"], vae=params["vae"], text_encoder=text_params)
    trainer = make_train_step(model, frozen, cfg, text_model, token_id, ids)
    return dict(trainer=trainer, text_model=text_model, text_params=text_params, tokenizer=tokenizer,
                token_id=token_id, token=placeholder_token, init=init, template_ids=ids, config=cfg)


def train_textual_inversion(sd_folder, image, placeholder_token, initializer_token, out_dir, config=None, seed=0,
                            progress=True, prepared=None, checkpoint_dir=None, resume=False, stop=None, hook=None):
    """Learn `placeholder_token` from a reference image; writes learned_embeds.safetensors (and .bin when torch
    is installed) in out_dir, plus learned_embeds-steps-{N} files every config.save_steps steps.

    sd_folder: a local SD 1.5 folder (or a (StableDiffusion, params) pair already loaded); image: a path or an
    RGB array; prepared: the output of prepare_textual_inversion (reuses its compiled step). Step i uses the
    key fold_in(key(seed), i), so a resumed run replays exactly the steps of an uninterrupted one.

    With checkpoint_dir (`four-d invert` passes OUT/checkpoints), Orbax checkpoints (clitools.checkpoints) of
    dict(vector, opt_state, step) go there every save_steps steps, at the last step, and when `stop` (a
    clitools.signals.GracefulStop, or anything with `.requested`) asks to stop after the current step; without
    it nothing is checkpointed (a stop still ends the loop). resume=True continues from the latest checkpoint
    in checkpoint_dir (bit-identical to the uninterrupted run on the same machine); a finished run is not
    trained again; without resume an existing checkpoint_dir is cleared first. hook(step, vector) is called
    after every step. Returns dict(embedding [D], losses (of the steps run by this call), paths, token_id,
    step (the last step done), stopped (the step a stop happened after, or None)).
    """
    from tqdm.auto import tqdm

    from clitools import checkpoints as ckpt
    from configs.priors import get_config
    from four_d.priors import sd as sd_lib

    if prepared is None:
        cfg = config or get_config().textual_inversion
        model, params = sd_folder if isinstance(sd_folder, tuple) else sd_lib.load_stable_diffusion(sd_folder,
                                                                                                     cfg.dtype)
        prepared = prepare_textual_inversion(model, params, placeholder_token, initializer_token, cfg)
    cfg, trainer = prepared["config"], prepared["trainer"]
    base = jnp.asarray(base_image(image, int(cfg.resolution), float(cfg.aug_resize)))
    vector = jnp.asarray(prepared["init"])
    state = dict(vector=vector, opt_state=trainer["tx"].init(vector), step=jnp.zeros((), jnp.int32))
    key = jax.random.key(seed)
    os.makedirs(out_dir, exist_ok=True)
    if resume and checkpoint_dir is None:
        raise ValueError(f"{_WHERE}: resume needs the checkpoint_dir of the run to continue")
    if checkpoint_dir is not None and not resume and os.path.isdir(checkpoint_dir):
        import shutil

        shutil.rmtree(checkpoint_dir)  # a fresh run: no stale checkpoint to resume later
    mngr = None if checkpoint_dir is None else ckpt.checkpoint_manager(checkpoint_dir, max_to_keep=1)
    try:
        if resume:
            restored, saved_cfg = ckpt.restore_checkpoint(mngr, jax.eval_shape(lambda: state))
            if restored is not None:
                if saved_cfg is not None and int(saved_cfg.get("steps", -1)) > int(cfg.steps):
                    raise ValueError(f"{checkpoint_dir}: the checkpoint is at step "
                                     f"{int(restored['step'])} of a {saved_cfg['steps']}-step run, more than the "
                                     f"{int(cfg.steps)} steps asked for")
                state = restored
        first = int(state["step"]) + 1
        vector, opt_state = state["vector"], state["opt_state"]
        losses, paths, stopped, i = [], [], None, first - 1
        bar = tqdm(range(first, int(cfg.steps) + 1), desc="textual inversion", disable=not progress,
                   initial=first - 1, total=int(cfg.steps))
        for i in bar:
            draws = trainer["draws"](jax.random.fold_in(key, i), base)
            vector, opt_state, loss, _ = trainer["step"](vector, opt_state, draws)
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if hook is not None:
                hook(i, vector)
            halt = stop is not None and ckpt.stop_requested(stop)
            if mngr is not None and ((cfg.save_steps and i % int(cfg.save_steps) == 0) or halt
                                     or i == int(cfg.steps)):
                ckpt.save_checkpoint(mngr, dict(vector=vector, opt_state=opt_state, step=jnp.asarray(i, jnp.int32)),
                                     cfg)
            if cfg.save_steps and i % int(cfg.save_steps) == 0:
                paths += _save_all(out_dir, f"learned_embeds-steps-{i}", prepared["token"], vector)
            if halt and i < int(cfg.steps):
                stopped = i
                break
        bar.close()
    finally:
        if mngr is not None:
            mngr.close()
    if stopped is None:
        paths += _save_all(out_dir, "learned_embeds", prepared["token"], vector)
    return dict(embedding=np.asarray(vector), losses=np.asarray(losses), paths=paths, token_id=prepared["token_id"],
                step=int(i), stopped=stopped)


def _save_all(out_dir, stem, token, vector):
    paths = [save_learned_embeds(os.path.join(out_dir, stem + ".safetensors"), token, np.asarray(vector))]
    try:
        import torch  # noqa: F401 - the official .bin needs torch
    except ImportError:
        return paths
    paths.append(save_learned_embeds(os.path.join(out_dir, stem + ".bin"), token, np.asarray(vector)))
    return paths
