"""The sample job: a real photo that is available offline, with hand-authored motion annotations.

The photo is scikit-learn's ``china.jpg`` (427x640, the Tower of Buddhist Incense at the Summer
Palace above Kunming Lake; CC-BY 2.0, danielbuechele on Flickr, see ``assets/README.md``). The
annotations ``assets/china_motion.json`` (our JSON format, 640x427 frame, see ``cine_jax.io``) mark the
lake (two polygons) and the sky (one polygon) and carry six short hints: the water flows gently to
the right and the sky drifts slowly to the right.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from cine_jax import io, viz

__all__ = ["ASSETS_DIR", "MOTION_JSON", "load_sample_photo", "write_sample"]

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MOTION_JSON = os.path.join(ASSETS_DIR, "china_motion.json")
JPEG_QUALITY = 95


def load_sample_photo():
    """scikit-learn's ``china.jpg`` as uint8 ``[427, 640, 3]`` RGB (bundled with scikit-learn)."""
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as e:  # pragma: no cover - scikit-learn is an install requirement
        raise io.InputError("the sample photo needs scikit-learn (pip install scikit-learn)") from e
    return np.asarray(load_sample_image("china.jpg"), np.uint8)


def write_sample(out_dir, max_side=768, multiple_of=8):
    """Writes the sample job to ``out_dir``.

    Files: ``china.jpg`` (re-encoded from scikit-learn's array, JPEG quality 95),
    ``china_motion.json`` (a copy of the asset) and ``china_preview.png`` (the working-size image
    with the motion mask and hint arrows drawn by :func:`cine_jax.viz.draw_hints`).

    Returns:
      ``{"image": path, "annotations": path, "preview": path}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    image_path = os.path.join(out_dir, "china.jpg")
    Image.fromarray(load_sample_photo()).save(image_path, format="JPEG", quality=JPEG_QUALITY)
    ann_path = os.path.join(out_dir, "china_motion.json")
    shutil.copyfile(MOTION_JSON, ann_path)

    image, info = io.load_image(image_path, max_side=max_side, multiple_of=multiple_of)
    ann = io.load_annotations(ann_path, info["original_size"], info["size"])
    preview = viz.draw_hints(image, ann.hints, ann.mask)
    preview_path = io.write_png(os.path.join(out_dir, "china_preview.png"), preview)
    return {"image": image_path, "annotations": ann_path, "preview": preview_path}
