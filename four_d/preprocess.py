"""The reference view of `four-d animate`: RGBA (object mask), depth, recentred on a square canvas.

    ref = preprocess_reference("panda.jpg", mask_path=None, depth_path=None, size=256, border_ratio=0.2)
    ref["rgba"]   [S, S, 4] float32 in [0, 1] (alpha = the object mask, 0 outside)
    ref["mask"]   [S, S] bool
    ref["depth"]  [S, S] float32: z-depth min-max normalised to [0, 1] inside the mask, 0 outside
    write_reference(out_dir, ref)   # rgba.png, mask.png, depth.npy, depth.png (a picture), atomically

Object mask, first that applies:
  1. `mask_path`: a mask image (any channel count; > 127 of its first channel, or > 0.5 of a float .npy) of the
     image's size;
  2. the image's own alpha channel when it has one that is not all opaque (official: mask = alpha > 0);
  3. OpenCV GrabCut (official: CarveKit / backgroundremover, networks not available here): initialised with the
     rectangle inset by `grabcut_margin` (5%) of each side, i.e. the object is assumed to lie inside the frame
     and not to touch its border; `grabcut_iterations` (5) rounds; foreground = GC_FGD | GC_PR_FGD; the largest
     connected component is kept. Deterministic (cv2.setRNGSeed(seed)).
Depth, first that applies:
  1. `depth_path`: .npy (float z-depth, or disparity with depth_kind="disparity") or a 8/16-bit PNG
     (values in the same units), of the image's size, finite, not all zero (zeros outside the object are
     allowed: the official depth.png is 0 outside the mask; it must be > 0 inside it);
  2. a cine_jax depth estimator (`estimate_depth`, the documented bridge: any DepthEstimator, by default the
     weight-free cine_jax.depth.HeuristicDepth; a learned DPT through cine_jax.depth.get_estimator("dpt", ...)).
Only the ordering inside the object matters to the stages (the reference depth loss is 1 - Pearson
correlation, invariant to scale and shift), hence the normalisation inside the mask.

Recentring (official image_preprocess.py, --recenter default True, --size 256, --border_ratio 0.2): the mask's
bounding box is cut out, scaled (cv2.INTER_AREA) so its longer side is int(size (1 - border_ratio)) and pasted
with its top-left corner at ((size - h') // 2, (size - w') // 2) on a transparent square canvas, so the object's
box is centred and the border is border_ratio of the canvas on the longer side. (The official slices
[min:max), dropping the box's last row and column; here the box is inclusive.) recenter=False pads the whole
image to a square instead (zero padding, centred), as the original Magic123 preprocessing did.
"""

import os

import cv2
import numpy as np

SIZE = 256  # official image_preprocess.py --size 256
BORDER_RATIO = 0.2  # official --border_ratio 0.2
GRABCUT_MARGIN = 0.05  # fraction of each side outside the GrabCut init rectangle (not official: no GrabCut there)
GRABCUT_ITERATIONS = 5
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ---- reading ------------------------------------------------------------------------------------------------


def _imread(path, what):
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} file not found")
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None or data.size == 0:
        raise ValueError(f"{path}: cannot read the {what} (not an image file OpenCV can decode)")
    return data


def _to_unit(arr, path):
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: image contains NaN or inf")
        return np.clip(arr, 0.0, 1.0)
    raise ValueError(f"{path}: unsupported image dtype {arr.dtype}")


def load_image(path):
    """(rgb [H, W, 3], alpha [H, W] or None) float32 in [0, 1] from an image file (8/16-bit, gray, RGB, RGBA)."""
    data = _imread(path, "image")
    if data.ndim == 2:
        data = cv2.cvtColor(data, cv2.COLOR_GRAY2BGR)
    if data.ndim != 3 or data.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected a gray, RGB or RGBA image, got shape {data.shape}")
    if min(data.shape[:2]) < 8:
        raise ValueError(f"{path}: image is {data.shape[1]}x{data.shape[0]}, too small (at least 8x8)")
    img = _to_unit(data, path)
    rgb = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_BGR2RGB)
    alpha = img[..., 3] if img.shape[2] == 4 else None
    return rgb, alpha


def _load_npy(path, what):
    """The array of a .npy file; ValueError naming the file when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} file not found")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e})") from None


def load_mask(path, shape):
    """bool [H, W] from a mask image (first channel > 127 of 255, > 32767 of 16-bit) or .npy (> 0.5); the size
    must be `shape` and the mask must not be empty."""
    if path.lower().endswith(".npy"):
        m = _load_npy(path, "mask")
        if m.dtype == bool:
            m = m.astype(np.float32)
        if not np.issubdtype(m.dtype, np.number):
            raise ValueError(f"{path}: mask must be numeric, got dtype {m.dtype}")
        if m.ndim == 3:
            m = m[..., 0]
        mask = np.nan_to_num(m.astype(np.float32)) > 0.5
    else:
        data = _imread(path, "mask")
        if data.ndim == 3:
            data = data[..., 0] if data.shape[2] < 4 else data[..., 3]  # RGBA mask: its alpha
        mask = _to_unit(data, path) > 0.5
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be [H, W], got shape {mask.shape}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}")
    if not mask.any():
        raise ValueError(f"{path}: mask is empty (no pixel selects the object)")
    return mask


def load_depth(path, shape, depth_kind="depth"):
    """float32 z-depth [H, W] from .npy or an 8/16-bit PNG; validated: readable, 2-D, `shape`, finite, not all
    zero, no negative values. depth_kind "disparity" inverts (zeros stay zero: outside the object)."""
    if depth_kind not in ("depth", "disparity"):
        raise ValueError(f"depth_kind: must be 'depth' or 'disparity', got {depth_kind!r}")
    if path.lower().endswith(".npy"):
        d = _load_npy(path, "depth")
        if not np.issubdtype(np.asarray(d).dtype, np.number):
            raise ValueError(f"{path}: depth must be numeric, got dtype {np.asarray(d).dtype}")
    else:
        d = _imread(path, "depth")
        if d.ndim == 3:
            d = d[..., 0]
    d = np.asarray(d, np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"{path}: depth must be [H, W], got shape {d.shape}")
    if d.shape != tuple(shape):
        raise ValueError(f"{path}: depth is {d.shape[1]}x{d.shape[0]} but the image is {shape[1]}x{shape[0]}")
    if np.isnan(d).any():
        raise ValueError(f"{path}: depth contains NaN ({int(np.isnan(d).sum())} pixels)")
    if np.isinf(d).any():
        raise ValueError(f"{path}: depth contains inf ({int(np.isinf(d).sum())} pixels)")
    if d.min() < 0:
        raise ValueError(f"{path}: depth has negative values (min {d.min():.4g})")
    if not (d > 0).any():
        raise ValueError(f"{path}: depth is zero everywhere")
    if depth_kind == "disparity":
        d = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    return d.astype(np.float32)


# ---- mask and depth estimation -----------------------------------------------------------------------------


def grabcut_mask(rgb, margin=GRABCUT_MARGIN, iterations=GRABCUT_ITERATIONS, seed=0):
    """bool [H, W] object mask by OpenCV GrabCut initialised with the image rectangle inset by `margin` x each
    side (module docstring); the largest connected foreground component is kept."""
    rgb = np.asarray(rgb, np.float32)
    h, w = rgb.shape[:2]
    if not 0.0 < margin < 0.5:
        raise ValueError(f"grabcut margin: must be in (0, 0.5), got {margin}")
    if int(iterations) < 1:
        raise ValueError(f"grabcut iterations: must be >= 1, got {iterations}")
    mx, my = max(1, int(round(margin * w))), max(1, int(round(margin * h)))
    rect = (mx, my, w - 2 * mx, h - 2 * my)
    img = np.ascontiguousarray(cv2.cvtColor(np.round(rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    gc = np.zeros((h, w), np.uint8)
    cv2.setRNGSeed(int(seed))
    cv2.grabCut(img, gc, rect, np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64), int(iterations),
                cv2.GC_INIT_WITH_RECT)
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        raise ValueError("GrabCut found no object (give a mask file or an image with an alpha channel)")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def estimate_depth(rgb, estimator=None):
    """Bridge to cine_jax's depth estimators: z-depth [H, W] > 0 of an RGB image [H, W, 3] in [0, 1].

    estimator: any cine_jax.depth.DepthEstimator (callable image -> depth), e.g.
    cine_jax.depth.get_estimator("dpt", config=..., seed=...) for the learned DPT-Hybrid; None uses the
    weight-free cine_jax.depth.HeuristicDepth() (a landscape prior: for an object photo it gives a smooth,
    plausible ordering, not a measurement).
    """
    from cine_jax.depth import HeuristicDepth, validate_depth, validate_image

    rgb = validate_image(np.asarray(rgb, np.float32), "reference image")
    est = HeuristicDepth() if estimator is None else estimator
    return validate_depth(est(rgb), "estimated depth", rgb.shape[:2])


# ---- recentring ---------------------------------------------------------------------------------------------


def recenter(rgba, depth, mask, size=SIZE, border_ratio=BORDER_RATIO):
    """(rgba [S, S, 4], depth [S, S], mask [S, S]) with the mask's box centred, its longer side
    int(size (1 - border_ratio)) (official image_preprocess.py; module docstring). rgba's alpha is the mask."""
    if int(size) != size or size < 8:
        raise ValueError(f"size: must be an integer >= 8, got {size}")
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio: must be in [0, 1), got {border_ratio}")
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = r1 - r0, c1 - c0
    desired = int(size * (1 - border_ratio))
    scale = desired / max(h, w)
    h2, w2 = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    y0, x0 = (size - h2) // 2, (size - w2) // 2
    out_rgba = np.zeros((size, size, 4), np.float32)
    out_depth = np.zeros((size, size), np.float32)
    crop = rgba[r0:r1, c0:c1]
    out_rgba[y0:y0 + h2, x0:x0 + w2] = cv2.resize(crop, (w2, h2), interpolation=cv2.INTER_AREA).reshape(h2, w2, 4)
    # depth: nearest inside the mask (area averaging would mix in the zeros outside the object)
    out_depth[y0:y0 + h2, x0:x0 + w2] = cv2.resize(depth[r0:r1, c0:c1], (w2, h2), interpolation=cv2.INTER_NEAREST)
    m = out_rgba[..., 3] > 0.5
    out_rgba[..., 3] = np.where(m, out_rgba[..., 3], 0.0)
    return out_rgba, out_depth, m


def pad_square(rgba, depth):
    """Zero-pad to a square canvas, image centred (recenter=False)."""
    h, w = rgba.shape[:2]
    s = max(h, w)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out_rgba = np.zeros((s, s, 4), np.float32)
    out_depth = np.zeros((s, s), np.float32)
    out_rgba[y0:y0 + h, x0:x0 + w] = rgba
    out_depth[y0:y0 + h, x0:x0 + w] = depth
    return out_rgba, out_depth


def normalize_depth(depth, mask):
    """Min-max normalise z-depth to [0, 1] inside the mask (0 outside); a constant depth maps to 0.5."""
    d = np.where(mask, depth, 0.0).astype(np.float32)
    inside = d[mask]
    if inside.size == 0:
        raise ValueError("reference: the object vanished when resized (mask too small for the output size)")
    lo, hi = inside.min(), inside.max()
    out = (d - lo) / (hi - lo) if hi > lo else np.full_like(d, 0.5)
    return np.where(mask, out, 0.0).astype(np.float32)


def preprocess_reference(image_path, mask_path=None, depth_path=None, *, size=SIZE, border_ratio=BORDER_RATIO,
                         recenter_object=True, depth_kind="depth", estimator=None, grabcut_margin=GRABCUT_MARGIN,
                         grabcut_iterations=GRABCUT_ITERATIONS, seed=0):
    """The reference view (module docstring): dict(rgba, mask, depth, mask_source, depth_source).

    Every input is read and validated before the depth estimator runs. size / border_ratio: the square output
    (official 256 / 0.2; `four-d animate` passes its config values).
    """
    rgb, alpha = load_image(image_path)
    shape = rgb.shape[:2]
    mask = None
    if mask_path is not None:
        mask, source = load_mask(mask_path, shape), "mask"
    depth = load_depth(depth_path, shape, depth_kind) if depth_path is not None else None
    if mask is None and alpha is not None and alpha.min() < 1.0:
        mask, source = alpha > 0, "alpha"  # official: carved_image[..., -1] > 0
        if not mask.any():
            raise ValueError(f"{image_path}: the alpha channel is zero everywhere (no object)")
    if mask is None:
        try:
            mask, source = grabcut_mask(rgb, grabcut_margin, grabcut_iterations, seed), "grabcut"
        except ValueError as e:
            raise ValueError(f"{image_path}: {e}") from None
    if depth is None:
        depth, depth_source = estimate_depth(rgb, estimator), "estimated"
    else:
        depth_source = "file"
        if not (depth[mask] > 0).any():
            where = depth_path
            raise ValueError(f"{where}: depth is zero everywhere inside the object mask")
    a = mask.astype(np.float32) if source != "alpha" else np.where(mask, alpha, 0.0).astype(np.float32)
    rgba = np.concatenate([rgb * (a[..., None] > 0), a[..., None]], -1).astype(np.float32)
    if recenter_object:
        rgba, depth, mask = recenter(rgba, depth, mask, size, border_ratio)
    else:
        rgba, depth = pad_square(rgba, depth)
        if rgba.shape[0] != size:
            rgba = cv2.resize(rgba, (size, size), interpolation=cv2.INTER_AREA)
            depth = cv2.resize(depth, (size, size), interpolation=cv2.INTER_NEAREST)
        mask = rgba[..., 3] > 0.5
    depth = normalize_depth(depth, mask & (depth > 0))
    return dict(rgba=rgba, mask=mask, depth=depth, mask_source=source, depth_source=depth_source)


def write_reference(out_dir, ref):
    """rgba.png (8-bit RGBA), mask.png, depth.npy (float32) and depth.png (colour picture: near bright) in
    out_dir, each written atomically (clitools.outputs). Returns the paths."""
    from cine_jax.viz import depth_to_color
    from clitools.outputs import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    rgba8 = np.round(np.clip(ref["rgba"], 0, 1) * 255).astype(np.uint8)
    pictures = {"rgba.png": cv2.cvtColor(rgba8, cv2.COLOR_RGBA2BGRA),
                "mask.png": ref["mask"].astype(np.uint8) * 255}
    # 1 + normalised depth is a positive z-depth with the same ordering (depth_to_color: near = bright)
    vis = depth_to_color(1.0 + ref["depth"], ref["mask"])
    pictures["depth.png"] = cv2.cvtColor(np.round(vis * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    for name, img in pictures.items():
        path = os.path.join(out_dir, name)
        with atomic_path(path) as tmp:
            if not cv2.imwrite(tmp, img):
                raise OSError(f"{path}: cannot write the image")
        paths[name] = path
    path = os.path.join(out_dir, "depth.npy")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, ref["depth"].astype(np.float32))
    paths["depth.npy"] = path
    return paths
