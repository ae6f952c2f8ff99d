"""CLIP evaluation of 4D results: CLIP-I, CLIP-T, CLIP-R and CLIP-F (Animate124, Table 1).

No official evaluation code of Animate124 exists (reference/animate124.md section 7), so the definitions used
here are written down exactly; the paper's protocol (views, frames, backbone) is unknown. The official repo's
CLIP helper uses openai/clip-vit-large-patch14; give that folder (or any CLIP folder) with `--clip`.

Frames are the renders at the reference view over time (what `four-d animate` produces), N >= 1 of them.
With e(.) the L2-normalised CLIP projection (image: visual_projection(pooled vision output); text:
text_projection(pooled text output at the end-of-text token)) and cos(a, b) = e(a) . e(b):

  CLIP-I = (1/N)     sum_n cos(reference image, frame_n)
  CLIP-T = (1/N)     sum_n cos(frame_n, caption)
  CLIP-R = (1/N)     sum_n [argmax_m cos(frame_n, caption_m) == caption]   (top-1 R-precision; ties: lowest m)
           the retrieval set is the 24 benchmark captions (BENCHMARK_CAPTIONS); a caption that is not one of
           them (exact string) is appended as a 25th candidate
  CLIP-F = (1/(N-1)) sum_{n=0}^{N-2} cos(frame_n, frame_{n+1})            (undefined, None, for N = 1)

Preprocessing is CLIPImageProcessor's, reimplemented in NumPy so that it runs without PIL in the loop and is
bit-exact: uint8 RGB -> resize the shorter side to `shortest_edge` (the longer to int(size * long / short)) with
Pillow's 8-bit bicubic (a = -0.5, antialiased when downscaling, 22-bit fixed point, horizontal pass first,
rounded to uint8 after each pass), centre crop (top = (h - crop) // 2), / 255, (x - mean) / std. Float
images in [0, 1] are quantised with round(x * 255); an RGBA image is composited over white first (the renders
and the reference losses of Animate124 use a white background).
"""

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from four_d.priors import loading

# Animate124 benchmark (official repo, benchmark/benchmark.json; reference/animate124.md section 7): the 24
# captions, in the file's order. CLIP-R retrieves the caption among these.
BENCHMARK_CAPTIONS = (
    "an astronaut, helmet in hand, rides a white horse",
    "a cat singing in front of a microphone",
    "a full-bodied cat is waving its paw",
    "a chimpanzee playing accordion",
    "a crab raises its crawls",
    "a crocodile enthusiastically drumming on a drum set",
    "an eagle is flying",
    "Chinese flag attached to a flagpole, waving with a smooth, gentle curve",
    "a fox maneuvering a game controller with its paws",
    "a kangaroo sitting, playing an accordion with its front paws",
    "a lighting candle",
    "a lion is roaring",
    "lionel messi wearing a white and light blue striped soccer jersey, raising his fist",
    "a monkey riding a bike",
    "a panda is dancing",
    "a sleek, futuristic humanoid robot with a shiny silver finish, using a laptop",
    "a rose in a flowerpot sway in the wind",
    "a complete human skeleton in a relaxed position, enjoying a glass of rich red wine",
    "a space shuttle launching",
    "a squirrel eating nut",
    "a squirrel playing saxophone",
    "a tiger elegantly playing a violin",
    "a full-bodied tiger standing on its hind legs, confidently playing an acoustic guitar",
    "a Clownfish is swimming",
)

# Written into every results JSON: the paper's protocol is unknown, these are the definitions computed here.
PROTOCOL = {
    "frames": "renders at the reference view over time (four-d animate), in time order; the paper's exact "
              "protocol (views, frames, backbone) is unknown: no official evaluation code exists",
    "embedding": "L2-normalised CLIP projections (visual_projection of the pooled vision output, text_projection "
                 "at the end-of-text token); CLIPImageProcessor preprocessing (bicubic shorter side, centre crop)",
    "clip_i": "mean over frames of cos(reference image, frame); an RGBA reference is composited over white",
    "clip_t": "mean over frames of cos(frame, caption)",
    "clip_r": "mean over frames of [the caption is the top-1 of the 24 Animate124 benchmark captions by cosine "
              "(the caption appended as a 25th when it is not one of them); ties go to the lower index]",
    "clip_f": "mean of cos(frame n, frame n+1), n = 0..N-2 (null for a single frame)",
}

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (CLIPImageProcessor defaults, the official OpenAI CLIP values)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, CLIPImageProcessor's default resample
_PRECISION_BITS = 32 - 8 - 2  # Pillow Resample.c, 8-bit images
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


# --------------------------------------------------------------------------------------------------- metrics
def normalize(emb):
    """emb [..., D] / ||emb|| (L2 over the last axis)."""
    emb = jnp.asarray(emb, jnp.float32)
    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def cosine(a, b):
    """Cosine similarity of a [..., D] and b [..., D] (broadcast) -> [...]."""
    return jnp.sum(normalize(a) * normalize(b), axis=-1)


def clip_i(reference_emb, frame_embs):
    """CLIP-I: mean over frames of cos(reference [D], frame [N, D])."""
    return jnp.mean(cosine(frame_embs, reference_emb[None]))


def clip_t(frame_embs, text_emb):
    """CLIP-T: mean over frames of cos(frame [N, D], caption [D])."""
    return jnp.mean(cosine(frame_embs, text_emb[None]))


def retrieval_hits(frame_embs, caption_embs, target):
    """[N] bool: the caption with the highest cosine to frame n ([M, D] candidates; ties: lowest index) is
    candidate `target`."""
    sims = normalize(frame_embs) @ normalize(caption_embs).T  # [N, M]
    return jnp.argmax(sims, axis=-1) == target


def clip_r(frame_embs, caption_embs, target):
    """CLIP-R: top-1 R-precision of caption `target` among caption_embs [M, D], per frame, averaged."""
    return jnp.mean(retrieval_hits(frame_embs, caption_embs, target).astype(jnp.float32))


def clip_f(frame_embs):
    """CLIP-F: mean cos of consecutive frames (n, n + 1) of frame_embs [N, D]; N >= 2."""
    if frame_embs.shape[0] < 2:
        raise ValueError(f"CLIP-F needs at least 2 frames, got {frame_embs.shape[0]}")
    return jnp.mean(cosine(frame_embs[:-1], frame_embs[1:]))


# ------------------------------------------------------------------------------------------- preprocessing
def _bicubic(x):
    a = -0.5  # Pillow's bicubic_filter
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


@functools.lru_cache(maxsize=64)
def _pil_bicubic_matrix(in_size, out_size):
    """[out, in] int64 fixed-point weights of Pillow's 8-bit bicubic resampling along one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    mat = np.zeros((out_size, in_size), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C truncation, as Pillow
        xmax = min(int(center + support + 0.5), in_size)
        w = _bicubic((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        w = w * (1 << _PRECISION_BITS)
        mat[xx, xmin:xmax] = np.trunc(np.where(w < 0, w - 0.5, w + 0.5)).astype(np.int64)
    return mat


def _resample_axis(img, out_size, axis):
    mat = _pil_bicubic_matrix(img.shape[axis], out_size)
    moved = np.moveaxis(img.astype(np.int64), axis, -1)  # [..., in]
    acc = moved @ mat.T + (1 << (_PRECISION_BITS - 1))
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def pil_bicubic_resize(img, height, width):
    """uint8 [H, W, C] -> uint8 [height, width, C], equal to PIL Image.resize((width, height), BICUBIC)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"pil_bicubic_resize: expected uint8 [H, W, C], got {img.dtype} {img.shape}")
    if width != img.shape[1]:  # Pillow: horizontal pass first, each pass only if that size changes
        img = _resample_axis(img, width, 1)
    if height != img.shape[0]:
        img = _resample_axis(img, height, 0)
    return img


def to_uint8_rgb(image, where="image"):
    """[H, W, 1|3|4] or [H, W] uint8 or float in [0, 1] -> uint8 [H, W, 3] (RGBA over white; float: round(x*255))."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4) or min(img.shape[:2]) < 1:
        raise ValueError(f"{where}: expected an image [H, W, 1|3|4], got shape {img.shape}")
    if img.dtype == np.uint8:
        f = img.astype(np.float64) / 255.0
    elif np.issubdtype(img.dtype, np.floating):
        f = img.astype(np.float64)
        if not np.all(np.isfinite(f)) or f.min() < 0.0 or f.max() > 1.0:
            raise ValueError(f"{where}: float image values must be finite and in [0, 1]")
    else:
        raise ValueError(f"{where}: unsupported pixel type {img.dtype} (uint8 or float in [0, 1])")
    if img.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    elif img.shape[-1] == 4:
        f = f[..., :3] * f[..., 3:] + (1.0 - f[..., 3:])
        if img.dtype == np.uint8 and np.all(img[..., 3] == 255):
            return img[..., :3].copy()
    if img.dtype == np.uint8 and img.shape[-1] == 3:
        return img.copy()
    return np.round(f * 255.0).astype(np.uint8)


class Preprocess(NamedTuple):
    """CLIPImageProcessor settings: shortest_edge (or an exact (height, width) in size_hw), crop (h, w)."""
    shortest_edge: int | None
    size_hw: tuple | None
    crop_hw: tuple | None
    mean: tuple
    std: tuple


def preprocess(image, pre, where="image"):
    """CLIP pixel values [3, crop_h, crop_w] float32 of one image (see the module docstring)."""
    img = to_uint8_rgb(image, where)
    h, w = img.shape[:2]
    if pre.shortest_edge is not None:
        short, long = min(h, w), max(h, w)
        new_short, new_long = pre.shortest_edge, int(pre.shortest_edge * long / short)
        nh, nw = (new_short, new_long) if h <= w else (new_long, new_short)
    else:
        nh, nw = pre.size_hw
    img = pil_bicubic_resize(img, nh, nw)
    if pre.crop_hw is not None:
        ch, cw = pre.crop_hw
        top, left = (nh - ch) // 2, (nw - cw) // 2
        img = img[top:top + ch, left:left + cw]
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.transpose(x, (2, 0, 1))


def _read_preprocess(folder, image_size):
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return Preprocess(image_size, None, (image_size, image_size), CLIP_MEAN, CLIP_STD)
    cfg = loading.read_json(path)

    def hw(value, key):
        if isinstance(value, int):
            return value, value
        if isinstance(value, dict) and "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        raise ValueError(f"{path}: {key}={value!r} is not supported (an int or {{height, width}})")

    if cfg.get("resample", BICUBIC) != BICUBIC:
        raise ValueError(f"{path}: resample={cfg['resample']} is not supported (CLIP uses bicubic, {BICUBIC})")
    for key in ("do_rescale", "do_normalize", "do_resize", "do_convert_rgb"):
        if cfg.get(key, True) is not True:
            raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported (CLIP preprocessing needs True)")
    if abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ValueError(f"{path}: rescale_factor={cfg['rescale_factor']} is not supported (1/255)")
    size = cfg.get("size", {"shortest_edge": image_size})
    if isinstance(size, dict) and "shortest_edge" in size:
        shortest, size_hw = int(size["shortest_edge"]), None
    else:
        shortest, size_hw = None, hw(size, "size")
    crop = hw(cfg.get("crop_size", image_size), "crop_size") if cfg.get("do_center_crop", True) else None
    out_hw = crop or size_hw
    if out_hw is None:
        raise ValueError(f"{path}: without a centre crop, size must be {{height, width}} (fixed input size)")
    if tuple(out_hw) != (image_size, image_size):
        raise ValueError(f"{path}: preprocessing gives {out_hw[0]}x{out_hw[1]} images, the model takes "
                         f"{image_size}x{image_size}")
    if crop is not None and (shortest is not None and shortest < max(crop)
                             or size_hw is not None and (size_hw[0] < crop[0] or size_hw[1] < crop[1])):
        raise ValueError(f"{path}: crop_size {crop} is larger than the resized image (padding is not supported)")
    mean, std = tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{path}: image_mean / image_std must be 3 values (std > 0), got {mean}, {std}")
    return Preprocess(shortest, size_hw, crop, mean, std)


# ------------------------------------------------------------------------------------------------- model
class Clip(NamedTuple):
    """A loaded CLIP: FlaxCLIPModel, its params, tokenizer, preprocessing and jitted feature functions."""
    model: Any
    params: Any
    tokenizer: Any
    pre: Preprocess
    max_length: int
    folder: str


def load_clip(folder, dtype=jnp.float32):
    """A Clip from a local Hugging Face CLIP folder (config.json, model.safetensors / pytorch_model.bin /
    flax_model.msgpack, tokenizer files, optional preprocessor_config.json). Never downloads; a missing or
    wrong folder is a ValueError naming it."""
    from transformers import FlaxCLIPModel

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: CLIP folder not found")
    cfg = loading.read_json(os.path.join(folder, "config.json"))
    if cfg.get("model_type") != "clip":
        raise ValueError(f"{os.path.join(folder, 'config.json')}: not a CLIP model (model_type "
                         f"{cfg.get('model_type')!r}, expected 'clip': a CLIPModel folder with both towers)")
    model, params = loading.load_transformers_model(FlaxCLIPModel, folder, dtype)
    tokenizer = loading.load_tokenizer(folder)
    pre = _read_preprocess(folder, int(model.config.vision_config.image_size))
    return Clip(model, params, tokenizer, pre, int(model.config.text_config.max_position_embeddings), folder)


def _jitted(clip, name):
    cache = clip.model.__dict__.setdefault("_cine_eval_jit", {})
    if name not in cache:
        if name == "image":
            cache[name] = jax.jit(lambda p, x: clip.model.get_image_features(x, params=p))
        else:
            cache[name] = jax.jit(lambda p, ids: clip.model.get_text_features(ids, params=p))
    return cache[name]


def _batched(fn, params, x, batch_size):
    """fn(params, x[i:i+batch]) over a fixed batch size (the last batch padded: one compile)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        chunk = x[i:i + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out.append(np.asarray(fn(params, jnp.asarray(chunk)))[:n])
    return np.concatenate(out)


def image_embeddings(clip, images, batch_size=8, where="image"):
    """[N, D] L2-normalised CLIP image embeddings of N images (each [H, W, C], sizes may differ)."""
    if len(images) == 0:
        raise ValueError(f"{where}: no images")
    pixels = np.stack([preprocess(im, clip.pre, f"{where} {i}") for i, im in enumerate(images)])
    return np.asarray(normalize(_batched(_jitted(clip, "image"), clip.params, pixels, batch_size)))


def tokenize(clip, texts):
    """[M, max_length] int32 token ids (padded to the model's length; a text that does not fit is an error)."""
    ids = []
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"prompt must be a non-empty string, got {t!r}")
        enc = clip.tokenizer(t)["input_ids"]
        if len(enc) > clip.max_length:
            raise ValueError(f"prompt {t!r}: {len(enc)} tokens, the CLIP text model takes at most {clip.max_length}")
        pad = clip.tokenizer.pad_token_id
        pad = clip.tokenizer.eos_token_id if pad is None else pad
        ids.append(enc + [pad] * (clip.max_length - len(enc)))
    return np.asarray(ids, np.int32)


def text_embeddings(clip, texts, batch_size=32):
    """[M, D] L2-normalised CLIP text embeddings of M strings."""
    return np.asarray(normalize(_batched(_jitted(clip, "text"), clip.params, tokenize(clip, texts), batch_size)))


# --------------------------------------------------------------------------------------------- evaluation
def retrieval_set(prompt, captions=BENCHMARK_CAPTIONS):
    """(candidates, target index): the captions, with the prompt appended when it is not one of them."""
    captions = list(captions)
    if prompt in captions:
        return captions, captions.index(prompt)
    return captions + [prompt], len(captions)


def evaluate(clip, frames, reference, prompt, captions=BENCHMARK_CAPTIONS, batch_size=8):
    """The four metrics of frames (N images at the reference view over time) against the reference image and
    the caption. Returns a JSON-ready dict: metrics, per-frame values, and the retrieval set used."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    candidates, target = retrieval_set(prompt, captions)
    f = image_embeddings(clip, frames, batch_size, "frame")
    r = image_embeddings(clip, [reference], 1, "reference image")[0]
    c = text_embeddings(clip, candidates)
    metrics = dict(clip_i=float(clip_i(r, f)), clip_t=float(clip_t(f, c[target])),
                   clip_r=float(clip_r(f, c, target)),
                   clip_f=float(clip_f(f)) if len(frames) >= 2 else None)
    per_frame = dict(clip_i=np.asarray(cosine(f, r[None])).tolist(),
                     clip_t=np.asarray(cosine(f, c[target][None])).tolist(),
                     clip_r_hit=np.asarray(retrieval_hits(f, c, target)).astype(int).tolist(),
                     clip_f=np.asarray(cosine(f[:-1], f[1:])).tolist())
    return dict(metrics=metrics, per_frame=per_frame, num_frames=len(frames), prompt=prompt,
                retrieval_candidates=len(candidates), prompt_in_benchmark=target < len(captions))


# ------------------------------------------------------------------------------------------------- files
def read_image(path, where=None):
    """uint8 [H, W, C] of an image file (ValueError naming the file if missing or unreadable)."""
    import imageio.v3 as iio

    where = where or path
    if not os.path.isfile(path):
        raise ValueError(f"{where}: file not found")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001 - imageio's plugins raise many types for unreadable files
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{where}: not a readable image ({type(e).__name__}: {msg})") from None
    if img.ndim == 4 and img.shape[0] == 1:  # single-frame gif / tiff
        img = img[0]
    to_uint8_rgb(img, where)  # validates shape and type
    return img


def read_frames(path):
    """list of uint8 [H, W, C] frames from a video file (mp4, gif, ...) or a folder of images (sorted by name).
    ValueError naming the path when it is missing, empty or unreadable."""
    import imageio.v3 as iio

    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
        if not names:
            raise ValueError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return [read_image(os.path.join(path, n)) for n in names]
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or folder (FRAMES is a video file or a folder of images)")
    try:
        video = np.asarray(iio.imread(path, index=None))
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a readable video or image ({type(e).__name__}: {msg})") from None
    if video.ndim == 3 and not path.lower().endswith(VIDEO_EXTENSIONS):
        video = video[None]  # a single image file
    if video.ndim == 3:  # [N, H, W] grey video
        video = video[..., None]
    if video.ndim != 4 or video.shape[0] < 1:
        raise ValueError(f"{path}: expected frames [N, H, W, C], got shape {video.shape}")
    frames = list(video)
    for i, fr in enumerate(frames):
        to_uint8_rgb(fr, f"{path} frame {i}")
    return frames


def format_table(result):
    """Human-readable table of evaluate()'s metrics."""
    m = result["metrics"]
    rows = [("CLIP-I", m["clip_i"], "cos(reference image, frame), mean over frames"),
            ("CLIP-T", m["clip_t"], "cos(frame, caption), mean over frames"),
            ("CLIP-R", m["clip_r"], f"top-1 R-precision among {result['retrieval_candidates']} captions"),
            ("CLIP-F", m["clip_f"], "cos(frame n, frame n+1), mean")]
    lines = [f"{'metric':<8}{'value':>9}  definition", "-" * 72]
    for name, v, d in rows:
        lines.append(f"{name:<8}{('n/a' if v is None else f'{v:.4f}'):>9}  {d}")
    lines.append(f"{result['num_frames']} frames; prompt {json.dumps(result['prompt'])}")
    return "\n".join(lines)
