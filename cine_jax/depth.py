"""Monocular depth for 3D cinemagraphy: an estimator interface, a weight-free heuristic, normalisation.

Depth everywhere in cine_jax is z-depth along the optical axis, float32, strictly positive, [H, W].
The official pipeline (xingyi-li/3d-cinemagraphy, demo.py + third_party/DPT) predicts inverse depth with
DPT-Hybrid, min-max normalises it to [0, 1] (via a 16-bit PNG), median-filters it 5x5 and uses
depth = 1 / max(disp, 1e-6), so the nearest pixel has depth 1 (see shared/reference/cinemagraphy.md §2).
A learned estimator plugs in through `DepthEstimator` / `register_estimator`; `HeuristicDepth` is the
no-weights default.

This module is host-side NumPy/OpenCV preprocessing (run once per input image), not a jitted hot path.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from cine_jax.registry import Registry

__all__ = [
    "DepthEstimator",
    "HeuristicDepth",
    "box_mean",
    "depth_to_disparity",
    "detect_sky",
    "get_estimator",
    "ground_plane_depth",
    "local_std",
    "ground_contact_rows",
    "guided_filter",
    "normalize_disparity_to_depth",
    "register_estimator",
    "validate_depth",
    "validate_image",
]


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


def validate_image(image, name="image"):
    """Check an RGB image [H, W, 3] with finite values in [0, 1]; returns it as float32.

    Raises ValueError naming `name` and the problem.
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected an RGB image of shape [H, W, 3], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected float values in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def validate_depth(depth, name="depth", shape=None):
    """Check a z-depth map: finite and > 0 everywhere (and of `shape` if given); returns float32.

    Raises ValueError naming `name` and the problem (NaN, inf, non-positive values, wrong shape).
    """
    arr = np.asarray(depth)
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected a depth map of shape [H, W], got shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a numeric depth map, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN ({int(np.isnan(arr).sum())} pixels)")
    if np.isinf(arr).any():
        raise ValueError(f"{name}: contains inf ({int(np.isinf(arr).sum())} pixels)")
    if arr.size and arr.min() <= 0.0:
        raise ValueError(f"{name}: depth must be > 0 everywhere, got min {arr.min():.4g}")
    return arr


# ---------------------------------------------------------------------------------------------------
# Disparity <-> depth
# ---------------------------------------------------------------------------------------------------


def normalize_disparity_to_depth(disp, eps=1e-6):
    """Official normalisation: min-max normalise disparity [H, W] to [0, 1], depth = 1 / max(disp, eps).

    The nearest pixel gets depth 1, the farthest 1 / eps (1e6 with the official eps, demo.py). A constant
    disparity map (no range to normalise) maps to depth 1 everywhere. Returns float32 depth [H, W].
    """
    d = np.asarray(disp, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"disp: expected shape [H, W], got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("disp: contains NaN or inf")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    lo, hi = d.min(), d.max()
    d = (d - lo) / (hi - lo) if hi > lo else np.ones_like(d)
    return (1.0 / np.maximum(d, eps)).astype(np.float32)


def depth_to_disparity(depth, name="depth"):
    """Disparity (inverse depth, 1/units) [H, W] of a z-depth map; validates the depth first."""
    return (1.0 / validate_depth(depth, name).astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Guided filter (He, Sun, Tang, "Guided Image Filtering", ECCV 2010)
# ---------------------------------------------------------------------------------------------------


def box_mean(x, radius):
    """Mean over the (2r+1)^2 window clipped to the image (as in He et al.), float64, per channel.

    x: [H, W] or [H, W, C]. Clipped windows are exact: an unnormalised zero-padded box sum divided by
    the number of in-image pixels, so no border reflection enters the statistics.
    """
    x = np.asarray(x, dtype=np.float64)
    k = (2 * radius + 1, 2 * radius + 1)
    s = cv2.boxFilter(x, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    n = cv2.boxFilter(np.ones(x.shape[:2]), -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    return s / (n[..., None] if s.ndim == 3 else n)


def guided_filter(guide, src, radius, eps):
    """Edge-preserving smoothing of `src` [H, W] guided by `guide` [H, W] (grey) or [H, W, 3] (colour).

    q_i = mean_k(a_k)^T I_i + mean_k(b_k) with, per window w_k of radius `radius` (pixels):
      grey:   a_k = cov(I, p) / (var(I) + eps),            b_k = mean(p) - a_k mean(I)
      colour: a_k = (Sigma_k + eps U)^-1 cov(I, p) [3],    b_k = mean(p) - a_k . mean(I)
    `eps` is in squared guide units (guide in [0, 1]). Windows are clipped at the border. Computed in
    float64 (the statistics are differences of means), returned as float32 [H, W].
    """
    I = np.asarray(guide, dtype=np.float64)
    p = np.asarray(src, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"guided_filter src: expected shape [H, W], got {p.shape}")
    if I.shape[:2] != p.shape or I.ndim not in (2, 3):
        raise ValueError(f"guided_filter guide: expected [H, W] or [H, W, C] with H, W = {p.shape}, "
                         f"got {I.shape}")
    if radius < 0 or eps <= 0:
        raise ValueError(f"guided_filter: need radius >= 0 and eps > 0, got radius={radius}, eps={eps}")
    mean_p = box_mean(p, radius)
    if I.ndim == 2:
        mean_i = box_mean(I, radius)
        var_i = box_mean(I * I, radius) - mean_i**2
        cov_ip = box_mean(I * p, radius) - mean_i * mean_p
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        return (box_mean(a, radius) * I + box_mean(b, radius)).astype(np.float32)
    c = I.shape[-1]
    mean_i = box_mean(I, radius)  # [H, W, C]
    cov_ip = box_mean(I * p[..., None], radius) - mean_i * mean_p[..., None]
    outer = I[..., :, None] * I[..., None, :]  # [H, W, C, C]
    sigma = box_mean(outer.reshape(*p.shape, c * c), radius).reshape(*p.shape, c, c)
    sigma = sigma - mean_i[..., :, None] * mean_i[..., None, :] + eps * np.eye(c)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]  # [H, W, C]
    b = mean_p - np.sum(a * mean_i, axis=-1)
    return (np.sum(box_mean(a, radius) * I, axis=-1) + box_mean(b, radius)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Heuristic depth
# ---------------------------------------------------------------------------------------------------


def ground_plane_depth(height, width, near=1.0, far=20.0, horizon=0.5):
    """Depth [H, W] of a flat ground plane seen by a level camera, clipped to `far`.

    With the horizon at row r_h = horizon * H, a ground point imaged at row v > r_h has depth
    proportional to 1 / (v - r_h) (pinhole + flat ground); scaled so the bottom edge (v = H) is `near`:
    z(v) = near * (H - r_h) / (v - r_h), clipped to [near, far]. Rows at or above the horizon get `far`.
    """
    if not 0.0 <= horizon < 1.0:
        raise ValueError(f"horizon must be a fraction of the height in [0, 1), got {horizon}")
    if not 0.0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    r_h = horizon * height
    rows = np.arange(height, dtype=np.float64)
    below = rows > r_h
    z = np.full(height, far, dtype=np.float64)
    z[below] = near * (height - r_h) / (rows[below] - r_h)
    z = np.clip(z, near, far)
    return np.broadcast_to(z[:, None], (height, width)).astype(np.float32)


def detect_sky(image, brightness=0.45, max_saturation=0.25, blue_margin=0.03, max_local_std=0.035,
               window=7):
    """Boolean sky mask [H, W] of an RGB image [H, W, 3] in [0, 1].

    A pixel is a sky candidate when it is bright (max(R, G, B) > `brightness`), either grey/white
    (HSV saturation < `max_saturation`) or blue (B > R + `blue_margin` and B >= G), and smooth (the
    standard deviation of grey values in a `window` x `window` neighbourhood < `max_local_std`). The
    candidates are cleaned by a 3x3 opening; the sky is the union of 8-connected candidate components
    touching the top border, grown by window // 2 + 1 px into sky-coloured pixels (the smoothness
    test rejects the rows next to the skyline), and in each column only the unbroken run from the top
    row down is kept (sky lies above everything else in its column). Limits: textured clouds, sunsets
    (saturated, non-blue), night skies, and smooth bright surfaces connected to the top border (a white wall
    filling the top of the frame) are misclassified.
    """
    img = validate_image(image)
    mx = img.max(axis=-1)
    mn = img.min(axis=-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    smooth = local_std(img, window) < max_local_std
    colour = (mx > brightness) & ((sat < max_saturation) | ((b > r + blue_margin) & (b >= g)))
    cand = (colour & smooth).astype(np.uint8)
    cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels = cv2.connectedComponents(cand, connectivity=8)
    top = np.unique(labels[0][cand[0] > 0])
    sky = np.isin(labels, top[top > 0])
    # The smoothness window rejects the last window // 2 rows of sky above any edge; win them back by
    # growing the sky one pixel at a time into sky-coloured pixels.
    colour8 = colour.astype(np.uint8)
    for _ in range(window // 2 + 1):
        sky = (cv2.dilate(sky.astype(np.uint8), np.ones((3, 3), np.uint8)) & colour8).astype(bool)
    # Keep the run from the top in each column: the first non-sky row ends the sky of that column.
    run = np.cumprod(sky, axis=0).astype(bool)
    return run


def local_std(image, window=7):
    """Standard deviation [H, W] float64 of the grey values in a window x window neighbourhood (clipped at
    the border): how textured the image is around each pixel (sky and water are smooth)."""
    grey = cv2.cvtColor(validate_image(image), cv2.COLOR_RGB2GRAY).astype(np.float64)
    var = box_mean(grey * grey, window // 2) - box_mean(grey, window // 2) ** 2
    return np.sqrt(np.maximum(var, 0.0))


def ground_contact_rows(standing, horizon_row, gap=1, smooth_cols=0, min_rise=1):
    """Per column, the row [W] float where things standing at the horizon meet the ground.

    standing [H, W] bool marks pixels of standing (vertical) things. A column where a standing thing
    rises at least `min_rise` rows above the horizon row (a contiguous standing run ending at it) is
    followed down from the horizon while it stays standing (gaps of up to `gap` rows are bridged); the
    contact is the row after the run (the image height if the run reaches the bottom: the thing's foot
    is below the frame). Other columns get the horizon row (nothing stands there). `smooth_cols` > 1
    applies a running median over columns."""
    h, w = standing.shape
    r0 = int(np.clip(np.floor(horizon_row), 0, h - 1))
    col = standing.astype(np.uint8)
    if gap > 0:  # bridge short gaps along the column
        col = cv2.morphologyEx(col, cv2.MORPH_CLOSE, np.ones((2 * gap + 1, 1), np.uint8))
        col = col & standing.any(axis=0, keepdims=True).astype(np.uint8)
    rise = np.cumprod(col[:r0 + 1][::-1], axis=0).sum(axis=0)  # run length upwards from the horizon row
    run = np.cumprod(col[r0:], axis=0).sum(axis=0)  # run length downwards from the horizon row
    contact = np.where(rise >= max(min_rise, 1), r0 + run, horizon_row).astype(np.float64)
    if smooth_cols > 1:
        import scipy.ndimage

        contact = scipy.ndimage.median_filter(contact, size=smooth_cols, mode="nearest")
    return contact


class HeuristicDepth:
    """Weight-free depth for landscape photos: ground plane + standing objects (pop-up) + sky.

    Steps (all deterministic, NumPy/OpenCV/scikit-learn):
      1. Ground-plane prior `ground_plane_depth`: depth grows towards the horizon row r_h
         (z = near * (H - r_h) / (v - r_h) below it, clipped to `far`; `far` above it).
      2. Sky (`detect_sky`: bright, grey or blue, smooth, connected to the top border) gets `sky_depth`.
      3. Pop-up (`popup`, after Hoiem et al.'s "Automatic Photo Pop-up"): things standing on the ground
         take the depth of their ground contact. A non-sky pixel above the horizon stands (the ground
         cannot be above the horizon); below it the ground is taken to be smooth (water, fields seen at
         a grazing angle), so a textured pixel (`local_std` > `texture_std`) continues a standing thing.
         In each column where a standing thing rises at least `contact_rise` x H above the horizon
         (ground seen just above a misplaced horizon does not), the standing run is followed down from
         the horizon; the contact row is where it ends (`ground_contact_rows`: smooth gaps up to
         `contact_gap` x H are bridged (plain walls, windows); the image bottom if the thing's foot is
         out of frame; running median over `contact_smooth` x W columns), and every non-sky pixel of
         the column above the contact gets the ground depth of the contact row: a tower whose base is
         hidden by the trees in front stands near the camera instead of at the horizon's depth.
      4. The prior disparity (1 / z) is smoothed by a colour guided filter (He et al. 2010, radius
         `guided_radius`, eps `guided_eps`) with the image as guide, so depth discontinuities snap to
         image edges; the result is clipped to the prior's disparity range so it stays positive.
      5. A `median_ksize` median filter removes speckle (official remove_noise_in_dpt_disparity, 5x5).
      6. Disparity is scaled so its maximum is 1 / near and depth = 1 / disparity: the nearest pixel
         has depth exactly `near` (official: depth = 1 / disp with disp max 1).

    Limits: this is a prior, not an estimator. The horizon is a fixed fraction of the height, so tilted
    cameras, aerial views, close-ups and indoor scenes get wrong depth; things that stand entirely below
    the horizon stay on the ground plane; textured ground (grass, gravel) next to a standing thing is
    taken as part of it down to where the texture ends; sky detection fails as documented in
    `detect_sky` (set `popup` False when the pop-up misleads). It gives plausible, smooth parallax (near bottom,
    standing things at their foot's depth, sky farthest) for typical landscape photos.
    """

    def __init__(self, near=1.0, far=20.0, sky_depth=60.0, horizon=0.5, guided_radius=8, guided_eps=1e-3,
                 median_ksize=5, popup=True, texture_std=0.03, contact_rise=0.05, contact_gap=0.04,
                 contact_smooth=0.02):
        if not 0.0 < near < far <= sky_depth:
            raise ValueError(f"HeuristicDepth: need 0 < near < far <= sky_depth, got near={near}, "
                             f"far={far}, sky_depth={sky_depth}")
        if not 0.0 <= horizon < 1.0:
            raise ValueError(f"HeuristicDepth: horizon must be in [0, 1), got {horizon}")
        if guided_radius < 0 or guided_eps <= 0:
            raise ValueError(f"HeuristicDepth: need guided_radius >= 0 and guided_eps > 0, got "
                             f"{guided_radius}, {guided_eps}")
        if median_ksize < 1 or median_ksize % 2 == 0:
            raise ValueError(f"HeuristicDepth: median_ksize must be odd and >= 1, got {median_ksize}")
        fractions = (contact_rise, contact_gap, contact_smooth)
        if texture_std < 0 or not all(0.0 <= f < 1.0 for f in fractions):
            raise ValueError(f"HeuristicDepth: need texture_std >= 0 and contact_rise, contact_gap, contact_smooth "
                             f"in [0, 1), got {texture_std}, {fractions}")
        self.near, self.far, self.sky_depth, self.horizon = near, far, sky_depth, horizon
        self.guided_radius, self.guided_eps, self.median_ksize = guided_radius, guided_eps, median_ksize
        self.popup, self.texture_std = popup, texture_std
        self.contact_rise, self.contact_gap, self.contact_smooth = contact_rise, contact_gap, contact_smooth

    @classmethod
    def from_config(cls, config, seed=0):
        """From the `depth` section of configs/cinemagraph.py: near, and the heuristic's own section
        `heuristic` (far, sky_depth, horizon, guided_radius, guided_eps, median_ksize, popup,
        texture_std, contact_rise, contact_gap, contact_smooth). Deterministic: the seed is not used."""
        del seed
        hc = config.heuristic
        return cls(near=config.near, far=hc.far, sky_depth=hc.sky_depth, horizon=hc.horizon,
                   guided_radius=hc.guided_radius, guided_eps=hc.guided_eps, median_ksize=hc.median_ksize,
                   popup=hc.popup, texture_std=hc.texture_std, contact_rise=hc.contact_rise,
                   contact_gap=hc.contact_gap, contact_smooth=hc.contact_smooth)

    def prior(self, image):
        """(prior depth [H, W] float32, sky mask [H, W] bool) before smoothing and normalisation."""
        img = validate_image(image)
        h, w = img.shape[:2]
        z = ground_plane_depth(h, w, self.near, self.far, self.horizon).copy()
        sky = detect_sky(img)
        if self.popup:
            r_h = self.horizon * h
            above = np.arange(h)[:, None] < r_h
            standing = ~sky & (above | (local_std(img) > self.texture_std))
            contact = ground_contact_rows(standing, r_h, gap=max(1, int(round(self.contact_gap * h))),
                                          smooth_cols=int(round(self.contact_smooth * w)) | 1,
                                          min_rise=int(round(self.contact_rise * h)))
            # the ground plane's depth at each column's contact row (`ground_plane_depth`'s formula; the
            # bottom edge of the frame, row H, is `near`)
            zc = np.clip(self.near * (h - r_h) / np.maximum(contact - r_h, 1e-9), self.near, self.far)
            stands = (np.arange(h)[:, None] < contact[None, :]) & (contact[None, :] > r_h) & ~sky
            z = np.where(stands, zc[None, :], z).astype(np.float32)
        z[sky] = self.sky_depth
        return z, sky

    def __call__(self, image):
        """z-depth [H, W] float32 > 0 of an RGB image [H, W, 3] in [0, 1]; min depth == near."""
        img = validate_image(image)
        z, _ = self.prior(img)
        disp = 1.0 / z.astype(np.float64)
        lo, hi = disp.min(), disp.max()
        if self.guided_radius > 0:
            disp = guided_filter(img, disp, self.guided_radius, self.guided_eps).astype(np.float64)
            disp = np.clip(disp, lo, hi)
        if self.median_ksize > 1:
            disp = _median_filter(disp.astype(np.float32), self.median_ksize).astype(np.float64)
        disp = disp / disp.max() / self.near
        depth = (1.0 / disp).astype(np.float32)
        # float32 rounding of 1 / (1 / near) can land an ulp away from near; pin the nearest pixel.
        depth[depth == depth.min()] = self.near
        return validate_depth(depth, "HeuristicDepth output")


def _median_filter(x, ksize):
    """Median filter with replicated borders; OpenCV handles float32 only for ksize 3 and 5."""
    if ksize <= 5:
        return cv2.medianBlur(np.ascontiguousarray(x, dtype=np.float32), ksize)
    import scipy.ndimage

    return scipy.ndimage.median_filter(x, size=ksize, mode="nearest")


# ---------------------------------------------------------------------------------------------------
# Estimator interface and registry
# ---------------------------------------------------------------------------------------------------


@runtime_checkable
class DepthEstimator(Protocol):
    """Anything mapping an RGB image [H, W, 3] float32 in [0, 1] to z-depth [H, W] float32 > 0."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


ESTIMATORS = Registry("depth estimator")
ESTIMATORS.register("heuristic", HeuristicDepth.from_config)


def _dpt_from_config(**kwargs):
    from cine_jax import learned

    return learned.dpt_estimator(**kwargs)


# learned DPT-Hybrid from converted weights; its factory takes the `models` section (cine_jax/learned.py)
ESTIMATORS.register("dpt", _dpt_from_config)
# register_estimator(name, factory) / get_estimator(name, config=..., seed=...): a factory takes the
# `depth` section of configs/cinemagraph.py (its own settings, e.g. a local weights path, live in a
# sub-section it adds) and a seed, and returns a DepthEstimator; select it with config depth.estimator.
register_estimator = ESTIMATORS.register
get_estimator = ESTIMATORS.get
