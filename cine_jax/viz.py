"""Pictures a person wants to look at: flow, depth, alpha, contact sheets, annotated hints.

Host-side NumPy/OpenCV; every function returns float32 RGB ``[H, W, 3]`` in [0, 1] (write it with
``cine_jax.io.write_png``). Inputs may be NumPy or JAX arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["checkerboard_rgba", "contact_sheet", "depth_to_color", "draw_hints", "flow_to_color", "to_rgb"]


def to_rgb(image):
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (float [0, 1] or uint8) -> float32
    ``[H, W, 3]``; RGBA is shown over a checkerboard."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"to_rgb: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[2] == 4:
        a = checkerboard_rgba(a)
    return np.clip(a, 0.0, 1.0)


def flow_to_color(flow, max_mag=None):
    """Colour-codes flow ``[H, W, 2]`` (dx, dy) on the Baker/Middlebury-style colour wheel.

    Hue is the direction, ``atan2(dy, dx)`` in image coordinates (y down): right = red (0 deg),
    down = 90 deg (chartreuse), left = cyan (180 deg), up = 270 deg (violet). Saturation is the
    magnitude ``|flow| / max_mag`` clipped to 1, value is 1. So ZERO FLOW IS WHITE, and opposite
    directions at full saturation have complementary colours (``c(v) + c(-v) = 1``). Non-finite
    vectors are black.

    Args:
      flow: ``[H, W, 2]``.
      max_mag: magnitude shown fully saturated; None = the largest finite magnitude in ``flow``.
    Returns:
      ``[H, W, 3]`` float32 in [0, 1].
    """
    f = np.asarray(flow, np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow_to_color: flow must be [H, W, 2], got shape {f.shape}")
    finite = np.all(np.isfinite(f), axis=-1)
    f = np.where(finite[..., None], f, 0.0)
    mag = np.hypot(f[..., 0], f[..., 1])
    if max_mag is None:
        max_mag = float(mag.max()) if mag.size else 0.0
    if not max_mag > 0:
        max_mag = 1.0
    hue = np.degrees(np.arctan2(f[..., 1], f[..., 0])) % 360.0
    sat = np.clip(mag / max_mag, 0.0, 1.0)
    hsv = np.stack([hue, sat, np.ones_like(sat)], axis=-1).astype(np.float32)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)  # float HSV: H in [0, 360), S and V in [0, 1]
    rgb = np.where(finite[..., None], rgb, 0.0)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def depth_to_color(depth, mask=None, colormap=cv2.COLORMAP_INFERNO, disparity_range=None):
    """Colour-codes z-depth ``[H, W]``: disparity ``1 / depth`` min-max normalised over the valid
    pixels and mapped with an OpenCV colormap (inferno: near = bright yellow, far = dark).

    Args:
      depth: ``[H, W]`` positive z-depth.
      mask: optional ``[H, W]``; pixels with mask <= 0.5 (and non-finite or non-positive depth) are
        invalid and drawn black.
      disparity_range: optional ``(lo, hi)`` disparity mapped to the colormap's ends instead of this
        image's own min / max (one range over the frames of a video, so it does not flicker).
    Returns:
      ``[H, W, 3]`` float32 in [0, 1].
    """
    d = np.asarray(depth, np.float32)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"depth_to_color: depth must be [H, W], got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    if mask is not None:
        m = np.asarray(mask, np.float32)
        if m.shape[:2] != d.shape:
            raise ValueError(f"depth_to_color: mask shape {m.shape} does not match depth {d.shape}")
        valid &= m.reshape(d.shape) > 0.5
    disp = np.where(valid, 1.0 / np.where(valid, d, 1.0), 0.0)
    if disparity_range is not None or valid.any():
        lo, hi = disparity_range if disparity_range is not None else (disp[valid].min(), disp[valid].max())
        norm = (disp - lo) / (hi - lo) if hi > lo else np.ones_like(disp)
    else:
        norm = np.zeros_like(disp)
    u8 = np.round(np.clip(norm, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(u8, colormap), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return np.where(valid[..., None], rgb, 0.0).astype(np.float32)


def checkerboard_rgba(rgba, square=8, premultiplied=False, light=0.8, dark=0.6):
    """Composites ``[H, W, 4]`` RGBA over a grey checkerboard (``square`` px) to show transparency.

    ``premultiplied=True`` for colours already multiplied by alpha (the official LDI layers store
    ``(rgb * alpha, alpha)``).
    """
    a = np.asarray(rgba)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.ndim != 3 or a.shape[2] != 4:
        raise ValueError(f"checkerboard_rgba: expected [H, W, 4], got shape {a.shape}")
    h, w = a.shape[:2]
    ii, jj = np.meshgrid(np.arange(h) // square, np.arange(w) // square, indexing="ij")
    board = np.where((ii + jj) % 2 == 0, light, dark).astype(np.float32)[..., None]
    alpha = np.clip(a[..., 3:4], 0.0, 1.0)
    fg = a[..., :3] if premultiplied else a[..., :3] * alpha
    return np.clip(fg + board * (1.0 - alpha), 0.0, 1.0).astype(np.float32)


def _fit(image, tile_h, tile_w, background):
    """Resizes keeping the aspect ratio into a ``tile_h x tile_w`` tile, centred (letterboxed)."""
    h, w = image.shape[:2]
    s = min(tile_h / h, tile_w / w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST  # nearest keeps enlarged pixels crisp
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    tile = np.full((tile_h, tile_w, 3), background, np.float32)
    y0, x0 = (tile_h - nh) // 2, (tile_w - nw) // 2
    tile[y0 : y0 + nh, x0 : x0 + nw] = small
    return tile


def contact_sheet(tiles, columns=4, tile_size=(192, 256), pad=4, title_height=20, background=1.0):
    """Lays out titled images in a grid.

    Args:
      tiles: list of ``(title, image)``; images as in :func:`to_rgb` (any size, letterboxed).
      columns: tiles per row (fewer if there are fewer tiles).
      tile_size: ``(height, width)`` of each image cell, or one int for square cells.
      pad: pixels between and around cells; title_height: band above each cell for its title.
    Returns:
      ``[rows * (title_height + th) + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3]`` float32,
      with ``rows = ceil(len(tiles) / cols)`` and ``cols = min(columns, len(tiles))``.
    """
    if not tiles:
        raise ValueError("contact_sheet: no tiles")
    th, tw = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_h = title_height + th
    sheet = np.full(
        (rows * cell_h + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), background, np.float32
    )
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k, (title, image) in enumerate(tiles):
        r, c = divmod(k, cols)
        y = pad + r * (cell_h + pad)
        x = pad + c * (tw + pad)
        sheet[y + title_height : y + cell_h, x : x + tw] = _fit(to_rgb(image), th, tw, background)
        if title_height > 0 and title:
            # OpenCV 5 draws text on 8-bit images only.
            band = np.round(sheet[y : y + title_height, x : x + tw] * 255.0).astype(np.uint8)
            scale = max(0.3, min(0.5, title_height / 40.0))
            text = str(title)
            # Shorten titles that do not fit the cell width.
            while len(text) > 1 and cv2.getTextSize(text, font, scale, 1)[0][0] > tw - 4:
                text = text[:-2] + "~"
            baseline_y = title_height - max(3, title_height // 4)
            cv2.putText(band, text, (2, baseline_y), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
            sheet[y : y + title_height, x : x + tw] = band.astype(np.float32) / 255.0
    return np.clip(sheet, 0.0, 1.0)


def _hint_points(hint):
    if hasattr(hint, "start") and hasattr(hint, "end"):
        return np.asarray(hint.start, np.float64), np.asarray(hint.end, np.float64)
    if isinstance(hint, dict):
        return np.asarray(hint["start"], np.float64), np.asarray(hint["end"], np.float64)
    p = np.asarray(hint, np.float64)
    if p.shape != (2, 2):
        raise ValueError(f"draw_hints: a hint must have start/end or be [[x0, y0], [x1, y1]], got {p.shape}")
    return p[0], p[1]


def draw_hints(
    image,
    hints,
    mask=None,
    mask_color=(0.0, 0.8, 1.0),
    mask_opacity=0.45,
    arrow_color=(1.0, 0.1, 0.1),
    thickness=None,
):
    """Overlays a motion mask (tinted, with its outline) and hint arrows on an image.

    Args:
      image: ``[H, W, 3]`` (or anything :func:`to_rgb` takes).
      hints: sequence of hints in the image's pixel coordinates: objects with ``.start``/``.end``
        (``cine_jax.io.Hint``), dicts ``{"start", "end"}`` or ``[[x0, y0], [x1, y1]]``. Arrows point
        from start to end.
      mask: optional ``[H, W]`` in [0, 1].
    Returns:
      ``[H, W, 3]`` float32 in [0, 1].
    """
    out = np.ascontiguousarray(to_rgb(image).copy())
    h, w = out.shape[:2]
    if mask is not None:
        m = np.asarray(mask, np.float32)
        if m.shape != (h, w):
            raise ValueError(f"draw_hints: mask shape {m.shape} does not match image {(h, w)}")
        a = (np.clip(m, 0.0, 1.0) * mask_opacity)[..., None]
        out = (out * (1.0 - a) + np.asarray(mask_color, np.float32) * a).astype(np.float32)
        contours, _ = cv2.findContours((m > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, tuple(float(c) for c in mask_color), 1, cv2.LINE_AA)
    t = thickness or max(1, int(round(max(h, w) / 320)))
    shift = 4  # sub-pixel arrow end points
    for hint in hints:
        s, e = _hint_points(hint)
        p0 = tuple(int(v) for v in np.round(s * (1 << shift)))
        p1 = tuple(int(v) for v in np.round(e * (1 << shift)))
        length = float(np.hypot(*(e - s)))
        tip = min(0.5, 8.0 * t / max(length, 1e-6))
        cv2.circle(out, p0, (t + 1) << shift, (1.0, 1.0, 1.0), -1, cv2.LINE_AA, shift)
        cv2.arrowedLine(out, p0, p1, tuple(float(c) for c in arrow_color), t, cv2.LINE_AA, shift, tip)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
