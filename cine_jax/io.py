"""Inputs and outputs of a cinemagraph: image, motion mask, motion hints, depth, flow, cameras, videos.

Everything here is host-side NumPy/OpenCV/PIL code that runs once per job; nothing is jitted. Every
loader validates what it reads and raises :class:`InputError` (a ``ValueError``) whose message starts
with the offending file and says what is wrong, so a bad input never surfaces as a raw cv2/PIL/NumPy
traceback.

Conventions (see ARCHITECTURE.md): images ``[H, W, 3]`` float32 in [0, 1]; pixel (row i, column j)
has its centre at ``(x, y) = (j, i)``; flow ``[H, W, 2]`` = (dx, dy) in pixels per frame; depth is
positive z-depth. The *working size* ``(H, W)`` is the image resized so its longer side is
``max_side`` (official: 768), both sides rounded to a multiple of ``multiple_of``.

Coordinates given at one resolution are mapped to another with the pixel-centre rule
``x' = (x + 0.5) * W / w - 0.5`` (the same geometry as ``cv2.resize``); displacements (hint vectors,
flow) are scaled by ``W / w`` and ``H / h``.

Motion annotation formats (:func:`load_annotations`)
----------------------------------------------------
(a) labelme JSON, as in the official workflow (``labelme image.png``)::

        {"imageHeight": h, "imageWidth": w,
         "shapes": [{"label": "motion", "shape_type": "polygon", "points": [[x, y], ...]},
                    {"label": "hint1", "shape_type": "line", "points": [[x0, y0], [x1, y1]]}, ...]}

    * shapes whose label starts with ``"motion"`` (polygons, or 2-point rectangles) form the motion
      mask: rasterised with ``cv2.fillPoly`` on a 4-16x supersampled working grid and area-averaged
      down, so edges are fractional (official: ``mask.png`` resized with area interpolation);
    * shapes whose label starts with ``"hint"`` are 2-point lines from start to end; official
      ``demo.py``: a hint is a motion of ``(end - start) / 50`` px per frame at the original size;
    * other labels are ignored (listed in ``Annotations.ignored_labels``);
    * ``imageHeight``/``imageWidth`` must equal the image's size after EXIF orientation.

(b) our own JSON::

        {"mask": [[[x, y], ...], ...],                    # polygons (optional)
         "hints": [{"start": [x, y], "end": [x, y]}, ...],  # lines (optional)
         "size": [w, h],                                  # frame of the coordinates (optional;
                                                          #   default: the original image size)
         "frames": 50}                                    # hint length / frames = px per frame

In both formats a hint whose start or end lies outside the image, or whose length is zero, is an
error. A point is inside when ``-0.5 <= x <= w`` and ``-0.5 <= y <= h``: the union of the
pixel-centre convention (image spans [-0.5, w - 0.5]) and the corner convention of annotation tools
(image spans [0, w]).

Depth files (:func:`load_depth`)
--------------------------------
``kind="auto"`` treats ``.npy`` as z-depth and ``.pfm``/``.png`` as *disparity* (official: DPT writes
inverse depth to ``dpt_depth/image.{pfm,png}``). Disparity is converted as the official ``demo.py``
does: ``disp = png / 65535`` (PNG) or the raw values (PFM), a 5x5 median filter, ``depth = 1 /
max(disp, 1e-6)``, then scaled so the nearest pixel has depth 1.
"""

from __future__ import annotations

import dataclasses
import io as _pyio
import json
import math
import os
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "Annotations",
    "Hint",
    "InputError",
    "hints_to_arrays",
    "load_annotations",
    "load_cameras",
    "load_depth",
    "load_flow",
    "load_image",
    "load_mask",
    "rescale_points",
    "read_flo",
    "read_pfm",
    "working_size",
    "write_flo",
    "write_frames",
    "write_gif",
    "write_pfm",
    "write_png",
    "write_video",
]

HINT_FRAMES = 50  # official demo.py: a hint line from start to end moves (end - start) / 50 px per frame
FLO_MAGIC = 202021.25  # Middlebury .flo magic number ("PIEH" read as a little-endian float32)
DISPARITY_FLOOR = 1e-6  # official demo.py: depth = 1 / max(disp, 1e-6)
DISPARITY_MEDIAN_KSIZE = 5  # official remove_noise_in_dpt_disparity: 5x5 median filter
ROTATION_TOL = 1e-3  # |R R^T - I| tolerance of camera poses


class InputError(ValueError):
    """A user-supplied input file or argument is missing, unreadable or inconsistent."""


def _fail(path, problem):
    raise InputError(f"{os.fspath(path)}: {problem}")


def _check_file(path):
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"expected a file path, got {type(path).__name__}")
    if not os.path.exists(path):
        _fail(path, "file not found")
    if not os.path.isfile(path):
        _fail(path, "not a regular file")
    return os.fspath(path)


def _check_size(size, name="size"):
    """Validates a working size ``(H, W)`` of positive ints."""
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (H, W) with two positive integers, got {size!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(size):
        raise InputError(f"{name} must be (H, W) with two positive integers, got {size!r}")
    return h, w


# ------------------------------------------------------------------------------------------------
# sizes and resizing
# ------------------------------------------------------------------------------------------------


def working_size(h, w, max_side=768, multiple_of=8):
    """Working size ``(H, W)`` of an ``h x w`` image.

    The aspect ratio is kept, the longer side becomes ``max_side`` (official: 768; 0 keeps the input
    size, as the official renderer with ``--ds_factor 1``) and each side is rounded to the nearest
    multiple of ``multiple_of`` (at least ``multiple_of``).
    """
    for name, v in (("h", h), ("w", w), ("max_side", max_side), ("multiple_of", multiple_of)):
        if not isinstance(v, (int, np.integer)) or v < 0 or (v == 0 and name != "max_side"):
            raise InputError(f"working_size: {name} must be a positive integer, got {v!r}")
    scale = 1.0 if max_side == 0 else max_side / max(h, w)

    def _round(x):
        return max(multiple_of, int(round(x / multiple_of)) * multiple_of)

    return _round(h * scale), _round(w * scale)


def rescale_points(points, from_size, to_size):
    """Maps ``points [..., 2]`` (x, y) from an image of ``from_size (h, w)`` to ``to_size (H, W)``.

    Uses the pixel-centre rule ``x' = (x + 0.5) * W / w - 0.5`` (the geometry of ``cv2.resize``).
    """
    points = np.asarray(points, np.float64)
    (h, w), (H, W) = from_size, to_size
    s = np.array([W / w, H / h])
    return (points + 0.5) * s - 0.5


ASPECT_TOLERANCE = 0.02  # a map may differ from its image in resolution, not in shape (2% slack)


def _check_aspect(path, shape, image_size, what):
    """A mask/depth/flow map must have the image's aspect ratio (any resolution): a map drawn for a
    different picture would otherwise be stretched over this one without a word."""
    if image_size is None:
        return
    h, w = shape[:2]
    ih, iw = image_size
    if abs((w / h) / (iw / ih) - 1.0) > ASPECT_TOLERANCE:
        _fail(path, f"{what} is {w}x{h} but the image is {iw}x{ih}: the aspect ratios differ, so it does "
                    "not belong to this image")


def _resize(array, size, shrink=cv2.INTER_AREA, enlarge=cv2.INTER_LINEAR):
    """cv2.resize of ``[h, w]`` or ``[h, w, C]`` float32 to ``size (H, W)``; ``shrink`` when neither
    side grows, ``enlarge`` otherwise. Any channel count is handled (cv2 limits channels to 512)."""
    H, W = size
    h, w = array.shape[:2]
    if (h, w) == (H, W):
        return np.array(array, np.float32)
    interp = shrink if (H <= h and W <= w) else enlarge
    out = cv2.resize(np.ascontiguousarray(array, np.float32), (W, H), interpolation=interp)
    if array.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing singleton channel
        out = out[..., None]
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# images and masks
# ------------------------------------------------------------------------------------------------


def _open_pil(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
        img = Image.open(_pyio.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        _fail(path, "not an image file PIL can read")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # corrupt or huge
        _fail(path, f"unreadable image ({e})")
    return img, data


def _pil_to_float(img, path, data):
    """PIL image -> float32 ``[h, w, 3]`` in [0, 1]; transparency is composited over WHITE."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img).astype(np.float32) / 65535.0  # PIL holds 16-bit PNGs in these modes
        rgb = np.repeat(a[..., None], 3, axis=-1)
    elif mode == "F":
        a = np.asarray(img).astype(np.float32)
        if not np.all(np.isfinite(a)):
            _fail(path, "float image contains NaN or inf")
        rgb = np.repeat(a[..., None], 3, axis=-1)
    else:
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        elif mode == "LA" or mode == "PA":
            img = img.convert("RGBA")
        elif mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA")
        arr = np.asarray(img).astype(np.float32) / 255.0
        if getattr(img, "format", None) == "PNG" or data[:8] == b"\x89PNG\r\n\x1a\n":
            # PIL reduces 48/64-bit colour PNGs to 8 bits: take the full precision from OpenCV.
            cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if cv is not None and cv.dtype == np.uint16 and cv.ndim == 3 and cv.shape[:2] == arr.shape[:2]:
                conv = cv2.COLOR_BGRA2RGBA if cv.shape[2] == 4 else cv2.COLOR_BGR2RGB
                arr = cv2.cvtColor(cv, conv).astype(np.float32) / 65535.0
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4]
            rgb = arr[..., :3] * alpha + (1.0 - alpha)  # over white
        else:
            rgb = arr
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def load_image(path, max_side=768, multiple_of=8):
    """Loads an image and resizes it to the working size.

    Anything PIL reads is accepted (PNG, JPEG, WebP, TIFF, ...). EXIF orientation is applied
    (``PIL.ImageOps.exif_transpose``); grayscale is replicated to RGB; 16-bit images keep their
    precision; transparent images (RGBA, LA, palette with transparency) are composited over WHITE.
    Shrinking uses ``cv2.INTER_AREA``, enlarging ``cv2.INTER_CUBIC`` (result clipped to [0, 1]).

    Args:
      path: image file.
      max_side, multiple_of: working size rule, see :func:`working_size`.
    Returns:
      ``(image [H, W, 3] float32 in [0, 1], info)`` with ``info = {"path", "original_size": (h, w),
      "size": (H, W), "mode"}``; ``original_size`` is after EXIF orientation.
    """
    path = _check_file(path)
    img, data = _open_pil(path)
    mode = img.mode
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a malformed EXIF block must not hide the image
        _fail(path, f"malformed EXIF orientation ({e})")
    rgb = _pil_to_float(img, path, data)
    h, w = rgb.shape[:2]
    if h < 2 or w < 2:
        _fail(path, f"image is too small ({h}x{w} pixels)")
    H, W = working_size(h, w, max_side, multiple_of)
    out = np.clip(_resize(rgb, (H, W), cv2.INTER_AREA, cv2.INTER_CUBIC), 0.0, 1.0)
    info = {"path": path, "original_size": (h, w), "size": (H, W), "mode": mode}
    return out, info


def load_mask(path, size, image_size=None):
    """Loads a motion mask and resizes it to ``size (H, W)``.

    image_size: optional ``(h, w)`` of the image the mask belongs to; a mask of another aspect ratio is
    an error (any resolution is accepted).

    Any non-zero pixel is motion (official ``scripts/generate_mask.py``); with an alpha channel a
    pixel must also be non-transparent. Resizing uses ``cv2.INTER_AREA`` (official: area
    interpolation), so edges become fractional.

    Returns:
      ``[H, W]`` float32 in [0, 1].
    """
    path = _check_file(path)
    H, W = _check_size(size)
    img, _ = _open_pil(path)
    arr = np.asarray(img)
    if img.mode in ("RGBA", "LA", "PA"):
        binary = np.any(arr[..., :-1] != 0, axis=-1) & (arr[..., -1] != 0)
    elif arr.ndim == 3:
        binary = np.any(arr != 0, axis=-1)
    else:
        binary = arr != 0
    if not binary.any():
        _fail(path, "mask is empty (no non-zero pixel)")
    _check_aspect(path, binary.shape, image_size, "the mask")
    out = cv2.resize(binary.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# motion annotations
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hint:
    """A motion hint in working-size pixel coordinates.

    ``start``/``end`` are the drawn line's end points (x, y); ``vector`` (dx, dy) is the per-frame
    displacement in px/frame at the working size, ``(end - start) / frames``.
    """

    start: tuple[float, float]
    end: tuple[float, float]
    vector: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Motion annotations at the working size.

    mask: ``[H, W]`` float32 in [0, 1] rasterised from the polygons, or None without polygons.
    hints: list of :class:`Hint`.
    size: working size ``(H, W)``.
    ignored_labels: labelme labels that were neither ``motion*`` nor ``hint*``.
    """

    mask: np.ndarray | None
    hints: list
    size: tuple[int, int]
    ignored_labels: tuple = ()


def hints_to_arrays(hints):
    """``(positions [K, 2], vectors [K, 2])`` float32: start points (x, y) and px/frame vectors."""
    if not hints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    return (np.array([h.start for h in hints], np.float32), np.array([h.vector for h in hints], np.float32))


def _as_points(value, path, what, min_points):
    try:
        pts = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        _fail(path, f"{what}: points must be a list of [x, y] numbers")
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < min_points:
        _fail(path, f"{what}: expected at least {min_points} [x, y] points, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        _fail(path, f"{what}: points contain NaN or inf")
    return pts


def _rasterise(polygons, frame_size, size):
    """Coverage ``[H, W]`` in [0, 1] of the union of polygons given in a ``frame_size (h, w)`` frame.

    ``cv2.fillPoly`` (like labelme's PIL rasteriser) fills every pixel the outline touches, which
    overstates the area by about half a pixel times the perimeter (4% for a 50 px blob). So the
    polygons are filled on a grid ``s`` times finer than the working size (s in [4, 16], fine grid
    <= ~8M pixels) and area-averaged down: fractional edges, bias <= 1/(2s) px along the outline.
    """
    H, W = size
    s = int(max(4, min(16, math.sqrt(8e6 / (H * W)))))
    canvas = np.zeros((s * H, s * W), np.uint8)
    shift = 8  # sub-pixel vertex precision: cv2.fillPoly takes fixed-point coordinates
    polys = []
    for p in polygons:
        fine = rescale_points(p, frame_size, (s * H, s * W))
        polys.append(np.round(fine * (1 << shift)).astype(np.int32).reshape(-1, 1, 2))
    cv2.fillPoly(canvas, polys, 1, lineType=cv2.LINE_8, shift=shift)
    out = cv2.resize(canvas.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _make_hints(lines, frames, frame_size, size, path):
    h, w = frame_size
    hints = []
    for what, pts in lines:
        for x, y in pts:
            if not (-0.5 <= x <= w and -0.5 <= y <= h):
                _fail(path, f"{what}: point ({x:g}, {y:g}) is outside the {w}x{h} image")
        if np.allclose(pts[0], pts[1]):
            _fail(path, f"{what}: hint has zero length")
        start, end = rescale_points(pts, frame_size, size)
        vector = (end - start) / frames
        hints.append(
            Hint(
                start=(float(start[0]), float(start[1])),
                end=(float(end[0]), float(end[1])),
                vector=(float(vector[0]), float(vector[1])),
            )
        )
    return hints


def load_annotations(path, original_size, size, frames=HINT_FRAMES):
    """Loads motion polygons and hints (labelme or our JSON, see the module docstring).

    Args:
      path: JSON file.
      original_size: ``(h, w)`` of the image after EXIF orientation (``info["original_size"]``).
      size: working size ``(H, W)``.
      frames: default hint divisor for labelme files (official 50); our JSON may set "frames".
    Returns:
      :class:`Annotations` with the mask at the working size and hints in working-size pixels.
    """
    path = _check_file(path)
    h, w = _check_size(original_size, "original_size")
    H, W = _check_size(size, "size")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(path, f"not valid JSON ({e})")
    if not isinstance(doc, dict):
        _fail(path, "expected a JSON object at the top level")

    polygons, lines, ignored = [], [], []
    if "shapes" in doc:  # labelme
        ih, iw = doc.get("imageHeight"), doc.get("imageWidth")
        if ih is not None or iw is not None:
            if (ih, iw) != (h, w):
                _fail(
                    path,
                    f"labelme imageHeight x imageWidth = {ih}x{iw} does not match the image size {h}x{w}",
                )
        frame = (h, w)
        shapes = doc["shapes"]
        if not isinstance(shapes, list):
            _fail(path, '"shapes" must be a list')
        for k, shape in enumerate(shapes):
            if not isinstance(shape, dict) or "label" not in shape or "points" not in shape:
                _fail(path, f"shapes[{k}] needs a 'label' and 'points'")
            label = str(shape["label"])
            what = f"shapes[{k}] ({label!r})"
            stype = shape.get("shape_type", "polygon")
            if label.startswith("hint"):
                pts = _as_points(shape["points"], path, what, 2)
                if pts.shape[0] != 2:
                    _fail(path, f"{what}: a hint must be a 2-point line, got {pts.shape[0]} points")
                lines.append((what, pts))
            elif label.startswith("motion"):
                if stype == "rectangle":
                    (x0, y0), (x1, y1) = _as_points(shape["points"], path, what, 2)[:2]
                    polygons.append(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
                elif stype == "polygon":
                    polygons.append(_as_points(shape["points"], path, what, 3))
                else:
                    _fail(path, f"{what}: motion shapes must be polygons or rectangles, got {stype!r}")
            else:
                ignored.append(label)
    elif "mask" in doc or "hints" in doc:  # our format
        unknown = set(doc) - {"mask", "hints", "size", "frames", "comment", "license", "source"}
        if unknown:
            _fail(path, f"unknown keys {sorted(unknown)}")
        frame = (h, w)
        if "size" in doc:
            sz = doc["size"]
            if not (isinstance(sz, list) and len(sz) == 2 and all(isinstance(s, int) and s > 0 for s in sz)):
                _fail(path, f'"size" must be [w, h] with positive integers, got {sz!r}')
            frame = (sz[1], sz[0])
            if abs(frame[1] / frame[0] - w / h) > 0.01 * (w / h):
                _fail(path, f'"size" {sz[0]}x{sz[1]} (w x h) differs in aspect ratio from the {w}x{h} image')
        frames = doc.get("frames", frames)
        if not isinstance(frames, (int, float)) or isinstance(frames, bool) or not frames > 0:
            _fail(path, f'"frames" must be a positive number, got {frames!r}')
        polys = doc.get("mask", [])
        if not isinstance(polys, list):
            _fail(path, '"mask" must be a list of polygons')
        for k, poly in enumerate(polys):
            polygons.append(_as_points(poly, path, f"mask[{k}]", 3))
        hint_docs = doc.get("hints", [])
        if not isinstance(hint_docs, list):
            _fail(path, '"hints" must be a list of {"start": [x, y], "end": [x, y]}')
        for k, hd in enumerate(hint_docs):
            if not isinstance(hd, dict) or "start" not in hd or "end" not in hd:
                _fail(path, f'hints[{k}] must be {{"start": [x, y], "end": [x, y]}}')
            lines.append((f"hints[{k}]", _as_points([hd["start"], hd["end"]], path, f"hints[{k}]", 2)))
    else:
        _fail(path, 'unrecognised annotation JSON: expected labelme "shapes" or our "mask"/"hints" keys')

    if not polygons and not lines:
        _fail(path, "no motion polygon and no hint found")
    mask = None
    if polygons:
        mask = _rasterise(polygons, frame, (H, W))
        if not mask.any():
            _fail(path, "motion polygons cover no pixel")
    hints = _make_hints(lines, float(frames), frame, (H, W), path)
    return Annotations(mask=mask, hints=hints, size=(H, W), ignored_labels=tuple(ignored))


# ------------------------------------------------------------------------------------------------
# PFM and FLO
# ------------------------------------------------------------------------------------------------


def read_pfm(path):
    """Reads a PFM file: ``[H, W]`` ("Pf") or ``[H, W, 3]`` ("PF") float32, top row first.

    Format: ASCII header "PF"/"Pf", "width height", scale (negative = little-endian), then float32
    rows stored bottom to top.
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        parts = []
        pos = 0
        while len(parts) < 4:  # magic, width, height, scale: whitespace-separated tokens
            while pos < len(data) and data[pos : pos + 1].isspace():
                pos += 1
            end = pos
            while end < len(data) and not data[end : end + 1].isspace():
                end += 1
            parts.append(data[pos:end].decode("ascii"))
            pos = end
        pos += 1  # the single whitespace character after the scale
        magic, width, height, scale = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
    except (UnicodeDecodeError, ValueError, IndexError):
        _fail(path, "not a PFM file (bad header)")
    if magic not in ("PF", "Pf"):
        _fail(path, f"not a PFM file (magic {magic!r})")
    if width <= 0 or height <= 0 or scale == 0:
        _fail(path, f"bad PFM header (width {width}, height {height}, scale {scale})")
    channels = 3 if magic == "PF" else 1
    count = width * height * channels
    if len(data) - pos < 4 * count:
        _fail(path, f"truncated PFM: expected {4 * count} data bytes, found {len(data) - pos}")
    dtype = "<f4" if scale < 0 else ">f4"
    arr = np.frombuffer(data, dtype, count=count, offset=pos).astype(np.float32)
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.ascontiguousarray(np.flipud(arr.reshape(shape)))


def write_pfm(path, array, scale=1.0):
    """Writes ``[H, W]`` or ``[H, W, 3]`` float32 as little-endian PFM (rows bottom to top)."""
    a = np.asarray(array, np.float32)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
        raise ValueError(f"{os.fspath(path)}: PFM needs [H, W] or [H, W, 3], got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    magic = b"PF" if a.ndim == 3 else b"Pf"
    _makedirs_for(path)
    with open(path, "wb") as f:
        f.write(magic + b"\n%d %d\n" % (a.shape[1], a.shape[0]) + b"%r\n" % (-abs(float(scale))))
        f.write(np.flipud(a).astype("<f4").tobytes())
    return os.fspath(path)


def read_flo(path):
    """Reads a Middlebury ``.flo`` file -> ``[H, W, 2]`` float32 (dx, dy).

    Format: float32 magic 202021.25, int32 width, int32 height, then ``H * W * 2`` float32 in row
    order with (u, v) interleaved; all little-endian.
    """
    path = _check_file(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12:
        _fail(path, "truncated .flo header")
    magic, w, h = struct.unpack("<fii", data[:12])
    if magic != np.float32(FLO_MAGIC):
        _fail(path, f"not a Middlebury .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    if w <= 0 or h <= 0 or w * h > 1 << 30:
        _fail(path, f"bad .flo size {w}x{h}")
    need = 12 + 4 * 2 * w * h
    if len(data) < need:
        _fail(path, f"truncated .flo: expected {need} bytes for {w}x{h}, found {len(data)}")
    return np.frombuffer(data, "<f4", count=2 * w * h, offset=12).reshape(h, w, 2).astype(np.float32)


def write_flo(path, flow):
    """Writes ``[H, W, 2]`` flow as a Middlebury ``.flo`` file."""
    f = np.asarray(flow, np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"{os.fspath(path)}: flow must be [H, W, 2], got shape {f.shape}")
    _makedirs_for(path)
    with open(path, "wb") as out:
        out.write(struct.pack("<fii", FLO_MAGIC, f.shape[1], f.shape[0]))
        out.write(f.astype("<f4").tobytes())
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------
# depth, flow, cameras
# ------------------------------------------------------------------------------------------------


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        _fail(path, f"unreadable .npy ({e})")
    except OSError as e:
        _fail(path, f"unreadable .npy ({e})")


def _read_png_disparity(path):
    with open(path, "rb") as f:
        data = f.read()
    arr = None
    if data:
        try:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            arr = None
    if arr is None:
        _fail(path, "unreadable PNG" if data else "empty file")
    if arr.ndim == 3:
        if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])):
            _fail(path, f"disparity PNG must be single-channel, got {arr.shape[2]} distinct channels")
        arr = arr[..., 0]
    if arr.dtype not in (np.uint8, np.uint16):
        _fail(path, f"disparity PNG must be 8- or 16-bit, got {arr.dtype}")
    # Official: the 16-bit PNG holds min-max normalised disparity, read back as png / 65535.
    return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)


def load_depth(path, size, kind="auto", image_size=None):
    """Loads a depth or disparity map and returns z-depth at ``size (H, W)``.

    Args:
      path: ``.npy`` (``[h, w]`` or ``[h, w, 1]``), ``.pfm`` or ``.png`` (8/16-bit).
      size: working size ``(H, W)``.
      kind: "depth" (values are z-depth), "disparity" (inverse depth, converted as the official
        demo: 5x5 median filter, ``1 / max(disp, 1e-6)``, scaled so the nearest pixel is 1) or
        "auto": ``.npy`` is depth, ``.pfm`` and ``.png`` are disparity (official DPT outputs).
      image_size: optional ``(h, w)`` of the image; a map of another aspect ratio is an error.
    Returns:
      ``[H, W]`` float32 z-depth > 0. Resized with INTER_AREA when shrinking and INTER_LINEAR when
      enlarging (official ``resize_img``).
    """
    path = _check_file(path)
    size = _check_size(size)
    if kind not in ("auto", "depth", "disparity"):
        raise InputError(f"{path}: kind must be 'auto', 'depth' or 'disparity', got {kind!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = _load_npy(path)
    elif ext == ".pfm":
        arr = read_pfm(path)
    elif ext == ".png":
        arr = _read_png_disparity(path)
    else:
        _fail(path, f"unsupported depth file type {ext!r} (use .npy, .pfm or .png)")
    if kind == "auto":
        kind = "depth" if ext == ".npy" else "disparity"
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        _fail(path, f"depth must be real numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or min(arr.shape) < 2:
        _fail(path, f"depth must be a 2-D map [h, w], got shape {arr.shape}")
    _check_aspect(path, arr.shape, image_size, "the depth map")
    if not np.all(np.isfinite(arr)):
        _fail(path, f"{kind} contains {int(np.sum(~np.isfinite(arr)))} NaN/inf values")
    if kind == "depth":
        if np.any(arr <= 0):
            _fail(path, f"depth must be > 0 everywhere; {int(np.sum(arr <= 0))} pixels are <= 0")
        depth = arr
    else:
        if np.any(arr < 0):
            _fail(path, f"disparity must be >= 0; {int(np.sum(arr < 0))} pixels are negative")
        if not np.any(arr > 0):
            _fail(path, "disparity is zero everywhere")
        disp = cv2.medianBlur(np.ascontiguousarray(arr), DISPARITY_MEDIAN_KSIZE)
        depth = 1.0 / np.maximum(disp, DISPARITY_FLOOR)
        depth = depth / depth.min()
    out = _resize(depth, size, cv2.INTER_AREA, cv2.INTER_LINEAR)
    if not (np.all(np.isfinite(out)) and np.all(out > 0)):  # e.g. float32 overflow of huge depths
        _fail(path, "depth is not finite and positive after resizing")
    return out


# A flow component longer than this many image sides per frame is refused (no fluid crosses the picture
# 100 times in one frame; such values are a wrong unit or garbage, and would overflow when rescaled).
FLOW_LIMIT_SIDES = 100


def load_flow(path, size=None, image_size=None):
    """Loads optical flow ``[h, w, 2]`` (dx, dy) px/frame from ``.npy`` or Middlebury ``.flo``.

    When ``size (H, W)`` differs from ``(h, w)`` the field is resized bilinearly (INTER_LINEAR; area
    when shrinking) and the vectors are scaled by ``(W / w, H / h)`` so they stay in pixels of the
    new size. Returns ``[H, W, 2]`` float32.
    """
    path = _check_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        arr = _load_npy(path)
    elif ext == ".flo":
        arr = read_flo(path)
    else:
        _fail(path, f"unsupported flow file type {ext!r} (use .npy or .flo)")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        _fail(path, f"flow must be real numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, np.float32)
    if arr.ndim != 3 or arr.shape[2] != 2 or min(arr.shape[:2]) < 1:
        _fail(path, f"flow must be [h, w, 2], got shape {arr.shape}")
    _check_aspect(path, arr.shape, image_size, "the flow")
    if not np.all(np.isfinite(arr)):
        _fail(path, f"flow contains {int(np.sum(~np.isfinite(arr)))} NaN/inf values")
    h, w = arr.shape[:2]
    limit = FLOW_LIMIT_SIDES * max(h, w)
    biggest = float(np.max(np.abs(arr)))
    if biggest > limit:
        _fail(path, f"flow has a component of {biggest:.3g} px/frame, more than {FLOW_LIMIT_SIDES} image sides "
                    f"({limit} px): not a per-frame flow in pixels")
    if size is None:
        return arr
    H, W = _check_size(size)
    out = _resize(arr, (H, W), cv2.INTER_AREA, cv2.INTER_LINEAR)
    return (out * np.array([W / w, H / h], np.float32)).astype(np.float32)


def _check_K(path, K, what):
    if not np.all(np.isfinite(K)):
        _fail(path, f"{what} contains NaN/inf")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        _fail(path, f"{what}: focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6) or K[1, 0] != 0:
        _fail(path, f"{what} must have the form [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")


def _rescale_K(K, from_wh, to_hw):
    """K for an image of ``from_wh (w, h)`` -> the same camera for ``to_hw (H, W)`` pixels (pixel-centre
    rule: ``fx' = fx W / w``, ``cx' = (cx + 0.5) W / w - 0.5``, likewise y)."""
    (w, h), (H, W) = from_wh, to_hw
    sx, sy = W / w, H / h
    K = np.array(K, np.float64)
    K[..., 0, 0] *= sx
    K[..., 0, 1] *= sx
    K[..., 1, 1] *= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def load_cameras(path, size=None, image_size=None):
    """Loads a camera path: ``{"K": 3x3 or [3x3 per pose], "poses": [4x4 world-to-camera, ...],
    "K_source": 3x3 (optional), "size": [w, h] (optional)}``.

    * ``poses``: world-to-camera matrices; the world is the frame of the camera that took the photo
      (identity = the photo's viewpoint). Translations are in the units of the depth (ARCHITECTURE.md).
    * ``K``: the intrinsics of the rendered views (one for all, or one per pose).
    * ``K_source``: the intrinsics of the camera that took the photo, used to unproject it; default
      ``K`` (the first one when given per pose). Give it when the photo and the rendered views differ.
    * ``size``: ``[w, h]``, the image size the K's are expressed for; default ``image_size`` (the
      photo's own pixels). It must have the photo's aspect ratio.

    Validation: every K finite with positive focal lengths and last row (0, 0, 1); each pose finite
    with last row (0, 0, 0, 1) and an orthonormal rotation (``|R R^T - I| <= 1e-3``, det > 0). When
    ``size (H, W)`` (the working size) is given, every K is rescaled from the file's frame to it with
    the pixel-centre rule (``fx' = fx W / w``, ``cx' = (cx + 0.5) W / w - 0.5``, likewise y).

    Returns:
      dict(K [N, 3, 3] float32, K_source [3, 3] float32, poses [N, 4, 4] float32).
    """
    path = _check_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(path, f"not valid JSON ({e})")
    if not isinstance(doc, dict) or "K" not in doc or "poses" not in doc:
        _fail(path, 'expected a JSON object with "K" and "poses"')
    unknown = sorted(set(doc) - {"K", "K_source", "poses", "size"})
    if unknown:
        _fail(path, f'unknown keys {unknown}; expected "K", "poses", "K_source" (optional), "size" (optional)')
    try:
        K = np.asarray(doc["K"], np.float64)
        poses = np.asarray(doc["poses"], np.float64)
        K_src = np.asarray(doc["K_source"], np.float64) if "K_source" in doc else None
    except (TypeError, ValueError):
        _fail(path, '"K", "K_source" and "poses" must be nested lists of numbers')
    if poses.ndim == 2:
        poses = poses[None]
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] < 1:
        _fail(path, f'"poses" must be a list of 4x4 matrices, got shape {poses.shape}')
    n = poses.shape[0]
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3)).copy()
    elif K.shape != (n, 3, 3):
        _fail(path, f'"K" must be 3x3 or one 3x3 per pose ({n} x 3x3), got shape {K.shape}')
    for k in range(n):
        _check_K(path, K[k], '"K"' if n == 1 else f'"K"[{k}]')
    if K_src is None:
        K_src = K[0].copy()
    elif K_src.shape != (3, 3):
        _fail(path, f'"K_source" must be 3x3, got shape {K_src.shape}')
    else:
        _check_K(path, K_src, '"K_source"')
    if not np.all(np.isfinite(poses)):
        _fail(path, "poses contain NaN/inf")
    for k, P in enumerate(poses):
        if not np.allclose(P[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
            _fail(path, f"poses[{k}]: last row must be [0, 0, 0, 1], got {P[3].tolist()}")
        R = P[:3, :3]
        err = np.abs(R @ R.T - np.eye(3)).max()
        if err > ROTATION_TOL or np.linalg.det(R) <= 0:
            _fail(path, f"poses[{k}]: rotation is not orthonormal with det +1 (|RR^T - I| = {err:.2e})")
    frame = None
    if "size" in doc:
        sz = doc["size"]
        if not (isinstance(sz, list) and len(sz) == 2 and all(isinstance(s, int) and s > 0 for s in sz)):
            _fail(path, f'"size" must be [w, h] with positive integers, got {sz!r}')
        frame = tuple(sz)
        if image_size is not None:
            ih, iw = image_size
            if abs((sz[0] / sz[1]) / (iw / ih) - 1.0) > ASPECT_TOLERANCE:
                _fail(path, f'"size" {sz[0]}x{sz[1]} has another aspect ratio than the {iw}x{ih} image')
    elif image_size is not None:
        frame = (int(image_size[1]), int(image_size[0]))
    if size is not None and frame is not None:
        H, W = _check_size(size)
        K = _rescale_K(K, frame, (H, W))
        K_src = _rescale_K(K_src, frame, (H, W))
    out = {"K": K.astype(np.float32), "K_source": K_src.astype(np.float32), "poses": poses.astype(np.float32)}
    for name, value in out.items():
        if not np.all(np.isfinite(value)):  # finite in float64, too large for float32 (e.g. 3.4e38)
            _fail(path, f'"{name}" has values too large for float32 (|x| > 3.4e38)')
    return out


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------


def _makedirs_for(path):
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def _to_uint8(array, path):
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{os.fspath(path)}: image contains NaN/inf")
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _frames_uint8(frames, path):
    f = _to_uint8(frames, path)
    if f.ndim == 3:  # grayscale frames
        f = np.repeat(f[..., None], 3, axis=-1)
    if f.ndim != 4 or f.shape[-1] not in (1, 3) or f.shape[0] < 1:
        raise ValueError(f"{os.fspath(path)}: frames must be [N, H, W, 3], got shape {np.shape(frames)}")
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    return f


def write_png(path, image):
    """Writes an image as PNG: float in [0, 1] (rounded to uint8) or uint8.

    ``[H, W]`` or ``[H, W, 1]`` -> grayscale, ``[H, W, 3]`` -> RGB, ``[H, W, 4]`` -> RGBA.
    """
    a = _to_uint8(image, path)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"{os.fspath(path)}: image must be [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    _makedirs_for(path)
    Image.fromarray(a).save(path, format="PNG")
    return os.fspath(path)


def write_frames(directory, frames):
    """Writes frames ``[N, H, W, C]`` as ``directory/frame_0000.png``, ...; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    return [write_png(os.path.join(directory, f"frame_{n:04d}.png"), fr) for n, fr in enumerate(frames)]


def write_video(path, frames, fps=25, quality=8):
    """Writes ``[N, H, W, 3]`` frames (float in [0, 1] or uint8) as an H.264 mp4.

    Official: ``imageio.mimwrite(..., fps=25, quality=8)``. yuv420p needs even sides, so an odd
    height/width is padded by one replicated row/column at the bottom/right (nothing is lost and
    imageio's own 16-px macro-block resize is disabled).
    """
    import imageio.v2 as imageio

    f = _frames_uint8(frames, path)
    pad_h, pad_w = f.shape[1] % 2, f.shape[2] % 2
    if pad_h or pad_w:
        f = np.pad(f, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    _makedirs_for(path)
    with warnings.catch_warnings():
        # imageio-ffmpeg starts ffmpeg with subprocess (fork + exec); JAX warns about any fork, but the
        # child only execs ffmpeg, so the warning's deadlock cannot happen here.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        imageio.mimwrite(
            path, list(f), fps=fps, quality=quality, codec="libx264", pixelformat="yuv420p", macro_block_size=1
        )
    return os.fspath(path)


def write_gif(path, frames, fps=25, max_side=384):
    """Writes frames as a looping GIF, shrunk (INTER_AREA) so the longer side is at most ``max_side``.

    GIF stores durations in 1/100 s, so the frame time is rounded to 10 ms. Note: Pillow merges
    identical consecutive frames (adding their durations).
    """
    import imageio.v3 as iio

    f = _frames_uint8(frames, path)
    n, h, w = f.shape[:3]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
        f = np.stack([cv2.resize(fr, size, interpolation=cv2.INTER_AREA) for fr in f])
    _makedirs_for(path)
    duration = int(round(100.0 / fps)) * 10  # ms, multiple of 10
    iio.imwrite(path, f, extension=".gif", duration=max(duration, 10), loop=0)
    return os.fspath(path)
