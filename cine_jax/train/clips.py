"""Real clips -> motion-net training targets: average Eulerian flow, motion mask and motion hints.

The paper trains its motion network on videos whose per-clip Eulerian flow was estimated with a
pretrained optical-flow network; the official release has no training code (issue #3). We estimate
the flow with OpenCV's DIS optical flow (no weights to download) and follow the recipe the official
model and SLR-SFS describe (shared/reference/cinemagraphy.md section 1):

* ``read_clip``: a folder of frames or a video file -> ``uint8 [F, H, W, 3]``.
* ``eulerian_flow``: DIS flow between consecutive frames, then the per-pixel, per-component median
  over the F - 1 pairs. The median (not the mean) keeps one bad pair (a dropped, duplicated or
  flashed frame) from biasing the clip's flow.
* ``motion_mask``: speed >= ratio x mean speed, the mean taken over all pixels (official
  ``motion_model.py``: ``1 - (speed < speed.mean() * 0.1)``).
* ``sample_hints``: K ~ U{k_range} K-means centres of the moving pixels' (x, y) positions
  (SLR-SFS: 1-5 centres; official config ``max_hint 5``), each a :class:`cine_jax.io.Hint` whose
  start is the moving pixel nearest to the centre and whose vector is the flow at that pixel.

All of it is host-side NumPy/OpenCV/scikit-learn, run once per clip while building a dataset.
Conventions (ARCHITECTURE.md): flow ``[H, W, 2]`` = (dx, dy) in pixels per frame; pixel (row i,
column j) has its centre at (x, y) = (j, i).
"""

from __future__ import annotations

import os
import re
import warnings

import cv2
import numpy as np

from cine_jax.io import HINT_FRAMES, Hint, InputError

__all__ = [
    "DIS_PRESETS",
    "FRAME_EXTENSIONS",
    "MASK_RATIO",
    "eulerian_flow",
    "hints_to_json",
    "motion_mask",
    "read_clip",
    "sample_hints",
]

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
MASK_RATIO = 0.1  # official motion_model.py: a pixel moves when speed >= 0.1 x mean speed
HINT_K_RANGE = (1, 5)  # SLR-SFS: 1-5 K-means centres; official config data.max_hint = 5
KMEANS_N_INIT = 4  # K-means restarts (scikit-learn's default for init="k-means++" is 1; 4 is steadier)
KMEANS_MAX_POINTS = 20000  # moving pixels given to K-means at most (a uniform random subset beyond that)


# ------------------------------------------------------------------------------------------------
# reading clips
# ------------------------------------------------------------------------------------------------


def _natural_key(name):
    """Sort key comparing digit runs as numbers, so frame_2.png comes before frame_10.png."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name)]


def _frame_from_pil(path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise InputError(f"{path}: {img.mode} images are not 8-bit frames; save the clip as 8-bit RGB")
            return np.asarray(img.convert("RGB"), np.uint8)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e})") from None


def _read_folder(path, max_frames):
    names = [
        n for n in os.listdir(path) if not n.startswith(".") and os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS
    ]
    names.sort(key=_natural_key)
    if max_frames is not None:
        names = names[:max_frames]
    if len(names) < 2:
        raise InputError(
            f"{path}: a clip needs at least 2 frames, found {len(names)} image file(s) ({', '.join(FRAME_EXTENSIONS)})"
        )
    frames = []
    for n in names:
        f = _frame_from_pil(os.path.join(path, n))
        if frames and f.shape != frames[0].shape:
            raise InputError(
                f"{os.path.join(path, n)}: frame size {f.shape[1]}x{f.shape[0]} differs from the first frame's "
                f"{frames[0].shape[1]}x{frames[0].shape[0]} ({names[0]})"
            )
        frames.append(f)
    return np.stack(frames)


def _read_video(path, max_frames):
    import imageio.v2 as imageio

    frames = []
    try:
        with warnings.catch_warnings():
            # imageio-ffmpeg forks to exec ffmpeg; JAX's fork warning does not apply (see io.write_video).
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            with imageio.get_reader(path) as reader:
                for f in reader:
                    f = np.asarray(f)
                    if f.dtype != np.uint8:
                        raise InputError(f"{path}: expected 8-bit video frames, got {f.dtype}")
                    if f.ndim == 2:
                        f = np.repeat(f[..., None], 3, axis=-1)
                    f = f[..., :3]
                    if frames and f.shape != frames[0].shape:
                        raise InputError(
                            f"{path}: frame {len(frames)} has size {f.shape[1]}x{f.shape[0]}, the first frame "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}"
                        )
                    frames.append(f)
                    if max_frames is not None and len(frames) >= max_frames:
                        break
    except InputError:
        raise
    except Exception as e:  # imageio raises many types (ValueError, OSError, RuntimeError) for bad files
        raise InputError(f"{path}: cannot read the video ({type(e).__name__}: {e})") from None
    if len(frames) < 2:
        raise InputError(f"{path}: a clip needs at least 2 frames, the video has {len(frames)}")
    return np.stack(frames)


def read_clip(path, max_frames=None):
    """Reads a clip: a folder of frames or a video file.

    Args:
      path: a folder whose image files (``FRAME_EXTENSIONS``, hidden files and other files ignored)
        are the frames in natural name order (``f2.png`` before ``f10.png``; EXIF orientation applied),
        or a video/animation file imageio reads (mp4, mov, avi, gif, ...).
      max_frames: keep only the first ``max_frames`` frames (None: all).
    Returns:
      ``uint8 [F, H, W, 3]`` RGB, F >= 2.
    Raises:
      InputError (a ValueError) naming the file: missing path, unreadable file, fewer than 2 frames,
      frames of different sizes.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"read_clip: expected a folder or video path, got {type(path).__name__}")
    path = os.fspath(path)
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 2):
        raise InputError(f"read_clip: max_frames must be an integer >= 2 or None, got {max_frames!r}")
    if not os.path.exists(path):
        raise InputError(f"{path}: clip not found (expected a folder of frames or a video file)")
    if os.path.isdir(path):
        return _read_folder(path, max_frames)
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")
    return _read_video(path, max_frames)


# ------------------------------------------------------------------------------------------------
# flow, mask, hints
# ------------------------------------------------------------------------------------------------


def _check_frames(frames):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must have shape [F, H, W, 3] (or [F, H, W, 1]), got {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"frames: a clip needs at least 2 frames, got {frames.shape[0]}")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
        if not np.all(np.isfinite(frames)):
            raise ValueError("frames contain NaN or inf")
        frames = np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
    return frames


def _gray(frame):
    return frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def eulerian_flow(frames, preset="medium", return_pairs=False):
    """The clip's average Eulerian flow: the per-pixel median of DIS optical flow over consecutive pairs.

    The flow of pair (t, t+1) is ``cv2.DISOpticalFlow.calc(gray_t, gray_{t+1})``: frame t's pixel
    (x, y) is found at (x + dx, y + dy) in frame t + 1, i.e. a forward displacement in frame t's
    coordinates, which is what an Eulerian field M (paper Eq. 1) is. The median is taken per pixel and
    per component over the F - 1 pairs (robust to a few bad pairs; for an even number of pairs it is
    the mean of the two middle values, as np.median).

    Args:
      frames: ``[F, H, W, 3]`` uint8 (or float in [0, 1]), F >= 2.
      preset: DIS preset, one of ``DIS_PRESETS`` ("ultrafast", "fast", "medium"). "medium" (finest
        scale 1, 8 px patches with stride 3, 25 gradient-descent iterations) is the most accurate;
        the paper used a pretrained flow network instead, which is not available offline.
      return_pairs: also return the per-pair flows ``[F - 1, H, W, 2]``.
    Returns:
      flow ``[H, W, 2]`` float32 (dx, dy) in px/frame (and the pairs if asked).
    """
    frames = _check_frames(frames)
    if preset not in DIS_PRESETS:
        raise ValueError(f"preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    gray = [_gray(np.ascontiguousarray(f)) for f in frames]
    pairs = np.stack([dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]).astype(np.float32)
    flow = np.median(pairs, axis=0).astype(np.float32)
    return (flow, pairs) if return_pairs else flow


def _check_flow(flow):
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape [H, W, 2] (dx, dy), got {flow.shape}")
    if not np.all(np.isfinite(flow)):
        raise ValueError("flow contains NaN or inf")
    return flow


def motion_mask(flow, ratio=MASK_RATIO):
    """Moving pixels: ``speed >= ratio * mean(speed)`` over all pixels; bool ``[H, W]``.

    Official (``motion_model.py``): ``moving = 1 - (speed < 0.1 * speed.mean())``, so a pixel exactly
    at the threshold moves. A flow that is zero everywhere gives an all-True mask there too (0 >= 0);
    callers that need motion should check ``flow`` is not static first (``sample_hints`` refuses an
    all-static mask, not an all-moving one).
    """
    flow = _check_flow(flow)
    if not (np.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio!r}")
    speed = np.sqrt(np.sum(flow.astype(np.float64) ** 2, axis=-1))
    return speed >= ratio * speed.mean()


def _as_generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def sample_hints(flow, mask, rng, k_range=HINT_K_RANGE, n_init=KMEANS_N_INIT, max_points=KMEANS_MAX_POINTS):
    """Draws training hints: K-means centres of the moving pixels, each with the flow there.

    K is drawn uniformly from ``k_range`` (inclusive), capped at the number of moving pixels. K-means
    (scikit-learn, k-means++ init, ``n_init`` restarts, ``random_state`` drawn from ``rng``) clusters
    the moving pixels' (x, y) positions (a random subset of ``max_points`` of them when there are
    more). Each centre is snapped to the nearest moving pixel, which becomes the hint's start, and the
    hint's vector is the flow at that pixel.

    Why the flow at a pixel, not the cluster's mean flow: a hint tells the motion net what moves at
    that spot; the mean over a cluster cancels where the flow turns (a vortex, water parting around a
    rock) and would give near-zero hints that exist nowhere in the clip. Why snapped: a centre of a
    non-convex region (a ring, two streams) can fall on a static pixel; the snapped start always lies
    in the mask.

    Args:
      flow: ``[H, W, 2]`` Eulerian flow (px/frame).
      mask: ``[H, W]`` bool (or 0/1) moving pixels, e.g. ``motion_mask(flow)``.
      rng: ``np.random.Generator`` or int seed; the same rng state gives the same hints.
      k_range: (k_min, k_max), 1 <= k_min <= k_max (SLR-SFS / official: 1-5).
      n_init: K-means restarts.
      max_points: at most this many moving pixels go into K-means.
    Returns:
      list of :class:`cine_jax.io.Hint` (start (x, y) = the pixel centre (column, row), vector = flow,
      end = start + HINT_FRAMES * vector, the convention of ``io.load_annotations``), ordered by
      K-means cluster index. ``motion.hints_to_flow`` / ``parse_hints`` consume the list directly.
    """
    from sklearn.cluster import KMeans

    flow = _check_flow(flow)
    mask = np.asarray(mask)
    if mask.shape != flow.shape[:2]:
        raise ValueError(f"mask must have shape {flow.shape[:2]} (the flow's H, W), got {mask.shape}")
    if mask.dtype != bool:
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must be boolean or 0/1 (threshold a fractional mask first)")
        mask = mask.astype(bool)
    try:
        k_min, k_max = (int(k) for k in k_range)
    except (TypeError, ValueError):
        raise ValueError(f"k_range must be (k_min, k_max) integers, got {k_range!r}") from None
    if not 1 <= k_min <= k_max or (k_min, k_max) != tuple(k_range):
        raise ValueError(f"k_range must be integers with 1 <= k_min <= k_max, got {k_range!r}")
    if int(n_init) != n_init or n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    if int(max_points) != max_points or max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    rng = _as_generator(rng)

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask has no moving pixel: cannot place hints")
    points = np.stack([cols, rows], axis=1).astype(np.float64)  # (x, y) = (column, row)
    k = int(min(rng.integers(k_min, k_max + 1), len(points)))
    seed = int(rng.integers(0, 2**31 - 1))
    fit_points = points
    if len(points) > max_points:
        fit_points = points[rng.choice(len(points), size=int(max_points), replace=False)]
    km = KMeans(n_clusters=k, n_init=int(n_init), random_state=seed).fit(fit_points)
    # nearest moving pixel to each centre (over all moving pixels, not only the fitted subset)
    d2 = ((points[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(-1)  # [P, K]
    nearest = np.argmin(d2, axis=0)
    hints = []
    for idx in nearest:
        x, y = points[idx]
        v = flow[int(y), int(x)].astype(np.float64)
        hints.append(
            Hint(
                start=(float(x), float(y)),
                end=(float(x + HINT_FRAMES * v[0]), float(y + HINT_FRAMES * v[1])),
                vector=(float(v[0]), float(v[1])),
            )
        )
    return hints


def hints_to_json(hints, size, frames=HINT_FRAMES):
    """Hints as the annotation JSON ``cine-jax animate --hints`` reads (``io.load_annotations``, format b).

    size: ``(H, W)`` of the frame the hints are in (written as ``"size": [W, H]``); the hint line runs
    from start to ``start + frames * vector`` with ``"frames": frames``, so loading it back at the same
    size gives the same start and vector (the end may lie outside the image for fast hints near the
    border, which ``load_annotations`` refuses: pick a smaller ``frames`` then).
    """
    h, w = (int(s) for s in size)
    if not (h > 0 and w > 0 and frames > 0):
        raise ValueError(f"size must be (H, W) > 0 and frames > 0, got size {size!r}, frames {frames!r}")
    doc = []
    for k, hint in enumerate(hints):
        sx, sy = hint.start
        vx, vy = hint.vector
        if vx == 0 and vy == 0:
            raise ValueError(f"hints[{k}] at ({sx:g}, {sy:g}) has a zero vector; a hint line needs a length")
        doc.append({"start": [sx, sy], "end": [sx + frames * vx, sy + frames * vy]})
    return {"hints": doc, "size": [w, h], "frames": frames}
