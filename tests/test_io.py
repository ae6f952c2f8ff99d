"""Tests of cine_jax.io (and the sample job in cine_jax.sample).

References: closed forms (shoelace polygon area, hint scaling, block means of INTER_AREA at integer
factors), hand-packed bytes for PFM/FLO, scipy.ndimage.median_filter for the disparity conversion,
np.rot90 for EXIF orientation, PIL/imageio/cv2 for reading written files back.
"""

import json
import os
import struct

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from cine_jax import io, sample
from cine_jax.io import InputError


def _block_mean(a, f):
    h, w = a.shape[:2]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def _shoelace(p):
    x, y = np.asarray(p, np.float64).T
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


# ----------------------------------------------------------------------------------------------
# sizes and images
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, max_side, mult, expected",
    [
        (427, 640, 768, 8, (512, 768)),  # 427 * 1.2 = 512.4
        (640, 427, 768, 8, (768, 512)),
        (720, 1280, 768, 8, (432, 768)),
        (1000, 10, 64, 8, (64, 8)),  # short side clamps to multiple_of
        (100, 100, 60, 16, (64, 64)),  # max_side itself rounds to a multiple
        (427, 641, 0, 1, (427, 641)),  # max_side 0: the input size (official --ds_factor 1)
        (427, 641, 0, 8, (424, 640)),
    ],
)
def test_working_size(h, w, max_side, mult, expected):
    assert io.working_size(h, w, max_side, mult) == expected


def test_working_size_rejects_bad_args():
    with pytest.raises(InputError, match="max_side"):
        io.working_size(10, 10, max_side=-1)
    with pytest.raises(InputError, match="multiple_of"):
        io.working_size(10, 10, multiple_of=0)


def test_load_image_png_grayscale_rgba_16bit(tmp_path, rng):
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img, info = io.load_image(tmp_path / "rgb.png", max_side=64)
    assert img.dtype == np.float32 and img.shape == (48, 64, 3)
    assert info["original_size"] == (48, 64) and info["size"] == (48, 64)
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)

    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    img, _ = io.load_image(tmp_path / "gray.png", max_side=64)
    np.testing.assert_allclose(img, np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-6)

    alpha = rng.integers(0, 256, (48, 64, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1)).save(tmp_path / "rgba.png")
    img, _ = io.load_image(tmp_path / "rgba.png", max_side=64)
    a = alpha / 255.0
    np.testing.assert_allclose(img, rgb / 255.0 * a + (1 - a), atol=1e-6)  # composited over white

    g16 = rng.integers(0, 65536, (48, 64), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    img, _ = io.load_image(tmp_path / "g16.png", max_side=64)
    np.testing.assert_allclose(img[..., 1], g16 / 65535.0, atol=1e-6)

    c16 = rng.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), c16[..., ::-1])  # cv2 writes BGR
    img, _ = io.load_image(tmp_path / "c16.png", max_side=64)
    np.testing.assert_allclose(img, c16 / 65535.0, atol=1e-6)  # 16-bit precision kept


def test_load_image_resizes_area_down_cubic_up(tmp_path, rng):
    rgb = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    small, info = io.load_image(tmp_path / "a.png", max_side=32, multiple_of=4)
    assert info["size"] == (20, 32)
    np.testing.assert_allclose(small, _block_mean(rgb / 255.0, 2), atol=1e-5)  # INTER_AREA = 2x2 mean
    big, info = io.load_image(tmp_path / "a.png", max_side=128, multiple_of=8)
    assert info["size"] == (80, 128)
    ref = np.clip(
        cv2.resize((rgb / 255.0).astype(np.float32), (128, 80), interpolation=cv2.INTER_CUBIC), 0, 1
    )
    np.testing.assert_allclose(big, ref, atol=1e-6)
    assert big.min() >= 0.0 and big.max() <= 1.0


def test_load_image_honours_exif_orientation(tmp_path):
    # 20 rows x 30 columns with a red top-left block and a blue top-right block.
    arr = np.full((20, 30, 3), 128, np.uint8)
    arr[:8, :8] = (255, 0, 0)
    arr[:8, -8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the viewer must rotate the stored pixels 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    img, info = io.load_image(tmp_path / "rot.jpg", max_side=30, multiple_of=2)
    assert info["original_size"] == (30, 20) and img.shape == (30, 20, 3)
    expected = np.rot90(arr, k=-1) / 255.0  # clockwise
    assert np.abs(img - expected).mean() < 0.03
    # After a clockwise turn the red block sits at the top-right, the blue one at the bottom-right.
    np.testing.assert_allclose(img[2, -3], [1, 0, 0], atol=0.1)
    np.testing.assert_allclose(img[-3, -3], [0, 0, 1], atol=0.1)


def test_load_mask_any_nonzero_and_area_resize(tmp_path):
    label = np.zeros((40, 60), np.uint8)
    label[4:20, 10:30] = 1  # labelme label.png indices: any non-zero is motion
    label[30:38, 40:44] = 7
    Image.fromarray(label, mode="L").convert("P").save(tmp_path / "label.png")
    m = io.load_mask(tmp_path / "label.png", (20, 30))
    np.testing.assert_allclose(m, _block_mean((label > 0).astype(np.float64), 2), atol=1e-6)
    label[5, 11] = 0
    label[3, 10] = 1  # half-covered 2x2 block -> fractional edge
    Image.fromarray(label).save(tmp_path / "label2.png")
    m = io.load_mask(tmp_path / "label2.png", (20, 30))
    assert m[1, 5] == pytest.approx(0.25) and m[2, 5] == pytest.approx(0.75)


# ----------------------------------------------------------------------------------------------
# PFM / FLO / depth / flow
# ----------------------------------------------------------------------------------------------


def test_pfm_round_trip_and_reference_bytes(tmp_path, rng):
    for shape in [(5, 7), (6, 4, 3)]:
        a = rng.standard_normal(shape).astype(np.float32)
        io.write_pfm(tmp_path / "a.pfm", a)
        np.testing.assert_array_equal(io.read_pfm(tmp_path / "a.pfm"), a)
    # A big-endian file packed by hand: rows are stored bottom to top.
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = b"Pf\n3 2\n1.0\n" + np.flipud(a).astype(">f4").tobytes()
    (tmp_path / "be.pfm").write_bytes(data)
    np.testing.assert_array_equal(io.read_pfm(tmp_path / "be.pfm"), a)


def test_flo_round_trip_and_reference_bytes(tmp_path, rng):
    f = rng.standard_normal((5, 7, 2)).astype(np.float32)
    io.write_flo(tmp_path / "a.flo", f)
    raw = (tmp_path / "a.flo").read_bytes()
    assert raw[:4] == b"PIEH" and struct.unpack("<ii", raw[4:12]) == (7, 5)
    assert struct.unpack("<2f", raw[12:20]) == tuple(f[0, 0])  # (u, v) of pixel (0, 0) first
    np.testing.assert_array_equal(io.read_flo(tmp_path / "a.flo"), f)
    np.testing.assert_array_equal(io.load_flow(tmp_path / "a.flo"), f)


def test_depth_npy_round_trip_and_area_resize(tmp_path, rng):
    d = rng.uniform(1.0, 10.0, (20, 30)).astype(np.float32)
    np.save(tmp_path / "d.npy", d)
    np.testing.assert_array_equal(io.load_depth(tmp_path / "d.npy", (20, 30)), d)
    np.testing.assert_allclose(io.load_depth(tmp_path / "d.npy", (10, 15)), _block_mean(d, 2), rtol=1e-5)
    up = io.load_depth(tmp_path / "d.npy", (40, 60))
    np.testing.assert_allclose(up, cv2.resize(d, (60, 40), interpolation=cv2.INTER_LINEAR), rtol=1e-6)


def test_depth_16bit_png_and_pfm_disparity(tmp_path, rng):
    disp16 = rng.integers(0, 65536, (16, 24), dtype=np.uint16)
    disp16[3, 4] = 0  # zero disparity -> the official 1e-6 floor
    cv2.imwrite(str(tmp_path / "image.png"), disp16)
    # Official demo: png / 65535, 5x5 median, 1 / max(disp, 1e-6); nearest pixel at depth 1.
    ref = ndi.median_filter(disp16 / 65535.0, size=5, mode="nearest")
    ref = 1.0 / np.maximum(ref, 1e-6)
    ref = ref / ref.min()
    np.testing.assert_allclose(io.load_depth(tmp_path / "image.png", (16, 24)), ref, rtol=1e-5)

    disp = rng.uniform(0.5, 4.0, (16, 24)).astype(np.float32)
    io.write_pfm(tmp_path / "image.pfm", disp)
    ref = 1.0 / ndi.median_filter(disp, size=5, mode="nearest")
    np.testing.assert_allclose(io.load_depth(tmp_path / "image.pfm", (16, 24)), ref / ref.min(), rtol=1e-5)
    # kind="depth" reads the same file as z-depth.
    np.testing.assert_allclose(io.load_depth(tmp_path / "image.pfm", (16, 24), kind="depth"), disp, rtol=1e-6)


def test_flow_resize_scales_vectors(tmp_path, rng):
    f = np.broadcast_to(np.array([1.5, -2.0], np.float32), (10, 20, 2)).copy()
    np.save(tmp_path / "f.npy", f)
    out = io.load_flow(tmp_path / "f.npy", (30, 40))  # x2 horizontally, x3 vertically
    assert out.shape == (30, 40, 2)
    np.testing.assert_allclose(out[..., 0], 3.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], -6.0, atol=1e-5)
    g = rng.standard_normal((10, 20, 2)).astype(np.float32)
    io.write_flo(tmp_path / "g.flo", g)
    np.testing.assert_allclose(io.load_flow(tmp_path / "g.flo", (5, 10)), _block_mean(g, 2) * 0.5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# annotations
# ----------------------------------------------------------------------------------------------

POLY = [[8.0, 6.0], [70.0, 10.0], [64.0, 52.0], [30.0, 44.0], [12.0, 50.0]]


def _labelme(h=60, w=80, hint=((10.0, 20.0), (35.0, 30.0))):
    return {
        "version": "5.2.1",
        "imageHeight": h,
        "imageWidth": w,
        "imagePath": "image.png",
        "shapes": [
            {"label": "motion", "points": POLY, "shape_type": "polygon", "group_id": None, "flags": {}},
            {"label": "hint1", "points": [list(hint[0]), list(hint[1])], "shape_type": "line", "flags": {}},
            {"label": "tree", "points": [[1, 1], [5, 1], [5, 5]], "shape_type": "polygon", "flags": {}},
        ],
    }


def test_labelme_polygon_area_and_hint_scaling(tmp_path):
    path = _write_json(tmp_path / "image.json", _labelme())
    ann = io.load_annotations(path, (60, 80), (30, 40))
    assert ann.size == (30, 40) and ann.ignored_labels == ("tree",)
    area = ann.mask.sum() * (80 / 40) * (60 / 30)  # back to original-size pixels
    assert abs(area / _shoelace(POLY) - 1.0) < 0.02
    assert ann.mask.min() >= 0.0 and ann.mask.max() <= 1.0
    assert 0 < np.sum((ann.mask > 0) & (ann.mask < 1))  # area interpolation -> fractional edges
    (hint,) = ann.hints
    # Official: (end - start) / 50 px/frame at the original size, then x 40/80 and x 30/60.
    assert hint.vector == pytest.approx(((35 - 10) / 50 * 0.5, (30 - 20) / 50 * 0.5), abs=1e-12)
    assert hint.start == pytest.approx(((10 + 0.5) * 0.5 - 0.5, (20 + 0.5) * 0.5 - 0.5), abs=1e-12)
    assert hint.end == pytest.approx(((35 + 0.5) * 0.5 - 0.5, (30 + 0.5) * 0.5 - 0.5), abs=1e-12)
    pos, vec = io.hints_to_arrays(ann.hints)
    np.testing.assert_allclose(vec, [[0.25, 0.1]], atol=1e-7)
    np.testing.assert_allclose(pos, [[4.75, 9.75]], atol=1e-7)


def test_our_json_matches_labelme_and_honours_size_and_frames(tmp_path):
    ref = io.load_annotations(_write_json(tmp_path / "l.json", _labelme()), (60, 80), (30, 40))
    # The same annotations drawn on a 2x larger copy of the image, with a 25-frame rule.
    doc = {
        "size": [160, 120],
        "frames": 25,
        "mask": [[[2 * x + 0.5, 2 * y + 0.5] for x, y in POLY]],  # pixel-centre rule at 2x
        "hints": [{"start": [20.5, 40.5], "end": [70.5, 60.5]}],
    }
    ann = io.load_annotations(_write_json(tmp_path / "ours.json", doc), (60, 80), (30, 40))
    assert ann.hints[0].start == pytest.approx(ref.hints[0].start, abs=1e-9)
    # Twice the length in a 2x frame is the same line; half the frames doubles the speed.
    assert ann.hints[0].vector == pytest.approx(tuple(2 * v for v in ref.hints[0].vector), abs=1e-9)
    assert abs(ann.mask.sum() / ref.mask.sum() - 1) < 0.02


BAD_ANNOTATIONS = {
    "not_json.json": ("{not json", "not valid JSON"),
    "list.json": ("[1, 2]", "JSON object"),
    "schema.json": ('{"foo": 1}', "unrecognised"),
    "size_mismatch.json": (json.dumps(_labelme(h=61, w=80)), "61x80"),
    "outside.json": (json.dumps(_labelme(hint=((10, 20), (95, 30)))), "outside"),
    "zero.json": (json.dumps(_labelme(hint=((10, 20), (10, 20)))), "zero length"),
    "hint3.json": (json.dumps({"hints": [{"start": [1, 2, 3], "end": [4, 5]}]}), "hints[0]"),
    "empty.json": (json.dumps({"mask": [], "hints": []}), "no motion polygon"),
    "aspect.json": (json.dumps({"size": [100, 100], "hints": [{"start": [1, 2], "end": [4, 5]}]}), "aspect"),
}


@pytest.mark.parametrize("name", sorted(BAD_ANNOTATIONS))
def test_annotation_errors_name_the_file(tmp_path, name):
    text, problem = BAD_ANNOTATIONS[name]
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as e:
        io.load_annotations(tmp_path / name, (60, 80), (30, 40))
    assert name in str(e.value) and problem in str(e.value)
    if name == "size_mismatch.json":
        assert "60x80" in str(e.value)  # names both sizes


# ----------------------------------------------------------------------------------------------
# error paths of the other loaders
# ----------------------------------------------------------------------------------------------


def _bad_files(tmp_path):
    """(file name, writer, loader, expected message fragment)."""
    nan = np.ones((8, 8), np.float32)
    nan[2, 3] = np.nan
    neg = np.ones((8, 8), np.float32)
    neg[1, 1] = -1.0
    return [
        ("missing.png", None, lambda p: io.load_image(p), "not found"),
        ("text.png", lambda p: p.write_text("hello"), lambda p: io.load_image(p), "not an image"),
        ("trunc.png", "truncated_png", lambda p: io.load_image(p), "unreadable"),
        (
            "empty_mask.png",
            lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(p),
            lambda p: io.load_mask(p, (4, 4)),
            "empty",
        ),
        ("nan.npy", lambda p: np.save(p, nan), lambda p: io.load_depth(p, (8, 8)), "NaN"),
        ("neg.npy", lambda p: np.save(p, neg), lambda p: io.load_depth(p, (8, 8)), "> 0"),
        ("shape.npy", lambda p: np.save(p, np.ones(8)), lambda p: io.load_depth(p, (8, 8)), "shape"),
        ("depth.txt", lambda p: p.write_text("1"), lambda p: io.load_depth(p, (8, 8)), "unsupported"),
        ("negdisp.pfm", lambda p: io.write_pfm(p, neg), lambda p: io.load_depth(p, (8, 8)), "disparity"),
        ("badpfm.pfm", lambda p: p.write_bytes(b"P6\n2 2\n255\n"), lambda p: io.read_pfm(p), "PFM"),
        (
            "shortpfm.pfm",
            lambda p: p.write_bytes(b"Pf\n4 4\n-1.0\n" + b"\0" * 8),
            lambda p: io.read_pfm(p),
            "truncated",
        ),
        ("flow.npy", lambda p: np.save(p, np.ones((4, 4, 3))), lambda p: io.load_flow(p), "[h, w, 2]"),
        ("nanflow.npy", lambda p: np.save(p, np.full((4, 4, 2), np.inf)), lambda p: io.load_flow(p), "NaN"),
        (
            "bad.flo",
            lambda p: p.write_bytes(struct.pack("<fii", 1.0, 2, 2) + b"\0" * 32),
            lambda p: io.read_flo(p),
            "magic",
        ),
        (
            "short.flo",
            lambda p: p.write_bytes(struct.pack("<fii", 202021.25, 4, 4) + b"\0" * 8),
            lambda p: io.read_flo(p),
            "truncated",
        ),
        (
            "pickle.npy",
            lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),
            lambda p: io.load_depth(p, (8, 8)),
            "unreadable",
        ),
    ]


def test_loader_errors_name_the_file(tmp_path, rng):
    for name, write, load, problem in _bad_files(tmp_path):
        p = tmp_path / name
        if write == "truncated_png":
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
            p.write_bytes(p.read_bytes()[:200])
        elif write is not None:
            write(p)
        with pytest.raises(InputError) as e:
            load(p)
        assert name in str(e.value) and problem in str(e.value), (name, str(e.value))


# ----------------------------------------------------------------------------------------------
# cameras
# ----------------------------------------------------------------------------------------------


def _rotation(rng):
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_load_cameras_rescales_K(tmp_path, rng):
    K = [[100.0, 0.0, 31.5], [0.0, 90.0, 23.5], [0.0, 0.0, 1.0]]
    K_src = [[80.0, 0.0, 30.0], [0.0, 80.0, 20.0], [0.0, 0.0, 1.0]]
    poses = []
    for _ in range(3):
        P = np.eye(4)
        P[:3, :3] = _rotation(rng)
        P[:3, 3] = rng.standard_normal(3)
        poses.append(P.tolist())
    path = _write_json(tmp_path / "cams.json", {"K": K, "poses": poses, "size": [64, 48]})
    cams = io.load_cameras(path)
    np.testing.assert_allclose(cams["K"], np.broadcast_to(K, (3, 3, 3)), rtol=1e-6)
    np.testing.assert_allclose(cams["K_source"], K, rtol=1e-6)  # default: the views' K
    np.testing.assert_allclose(cams["poses"], poses, rtol=1e-6, atol=1e-6)
    big = io.load_cameras(path, size=(96, 128))  # 2x: f doubles, centre (c + 0.5) * 2 - 0.5
    np.testing.assert_allclose(big["K"][1], [[200, 0, 63.5], [0, 180, 47.5], [0, 0, 1]], rtol=1e-6)
    # a separate source K, rescaled the same way
    path2 = _write_json(tmp_path / "cams2.json", {"K": K, "K_source": K_src, "poses": poses, "size": [64, 48]})
    two = io.load_cameras(path2, size=(24, 32))  # 0.5x
    np.testing.assert_allclose(two["K_source"], [[40, 0, 14.75], [0, 40, 9.75], [0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(two["K"][0], [[50, 0, 15.5], [0, 45, 11.5], [0, 0, 1]], rtol=1e-6)
    # without "size" the K's are in the photo's own pixels (image_size) and rescaled from there
    path3 = _write_json(tmp_path / "cams3.json", {"K": K, "poses": poses})
    three = io.load_cameras(path3, size=(96, 128), image_size=(48, 64))
    np.testing.assert_allclose(three["K_source"], big["K_source"], rtol=1e-6)
    # one K per pose
    Ks = [K, K_src, K]
    per = io.load_cameras(_write_json(tmp_path / "cams4.json", {"K": Ks, "poses": poses}))
    np.testing.assert_allclose(per["K"], Ks, rtol=1e-6)
    np.testing.assert_allclose(per["K_source"], K, rtol=1e-6)


def test_load_cameras_size_and_key_errors(tmp_path):
    K = np.eye(3).tolist()
    path = _write_json(tmp_path / "aspect.json", {"K": K, "poses": [np.eye(4).tolist()], "size": [64, 64]})
    with pytest.raises(InputError, match="aspect.json.*aspect ratio"):
        io.load_cameras(path, size=(48, 64), image_size=(48, 64))
    path = _write_json(tmp_path / "typo.json", {"K": K, "poses": [np.eye(4).tolist()], "Ksource": K})
    with pytest.raises(InputError, match="typo.json.*unknown keys"):
        io.load_cameras(path)
    path = _write_json(tmp_path / "nk.json", {"K": [K, K], "poses": [np.eye(4).tolist()] * 3})
    with pytest.raises(InputError, match="nk.json.*one 3x3 per pose"):
        io.load_cameras(path)
    path = _write_json(tmp_path / "ks.json", {"K": K, "K_source": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                              "poses": [np.eye(4).tolist()]})
    with pytest.raises(InputError, match="ks.json.*K_source.*focal"):
        io.load_cameras(path)


@pytest.mark.parametrize(
    "name, K, pose, problem",
    [
        (
            "skew_rot.json",
            np.eye(3),
            [[1, 0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
            "orthonormal",
        ),
        ("reflect.json", np.eye(3), np.diag([1, 1, -1, 1]), "orthonormal"),
        ("focal.json", np.diag([-1.0, 1.0, 1.0]), np.eye(4), "focal"),
        ("kshape.json", np.eye(2), np.eye(4), "3x3"),
    ],
)
def test_load_cameras_errors(tmp_path, name, K, pose, problem):
    path = _write_json(tmp_path / name, {"K": np.asarray(K).tolist(), "poses": [np.asarray(pose).tolist()]})
    with pytest.raises(InputError) as e:
        io.load_cameras(path)
    assert name in str(e.value) and problem in str(e.value)


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------


def _moving_square(n, h, w):
    frames = np.full((n, h, w, 3), 0.2, np.float32)
    for t in range(n):
        frames[t, 4:14, 3 + 5 * t : 13 + 5 * t] = (1.0, 0.5, 0.0)
    return frames


def test_write_video_odd_size(tmp_path):
    frames = _moving_square(5, 33, 47)
    path = io.write_video(tmp_path / "out" / "v.mp4", frames, fps=10)
    back = iio.imread(path, plugin="pyav") if _has_pyav() else np.stack(list(_read_cv2(path)))
    assert back.shape == (5, 34, 48, 3)  # padded by one replicated row and column
    cap = cv2.VideoCapture(path)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    err = np.abs(back[:, :33, :47].astype(np.float32) / 255.0 - frames).mean()
    assert err < 0.03  # H.264 at quality 8


def _has_pyav():
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _read_cv2(path):
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        yield fr[..., ::-1]
    cap.release()


def test_write_gif_and_png(tmp_path):
    frames = _moving_square(4, 32, 48)
    path = io.write_gif(tmp_path / "a.gif", frames, fps=10, max_side=24)
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (4, 16, 24)
    ref = cv2.resize(frames[2], (24, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(back[2, ..., :3] / 255.0 - ref).mean() < 0.03  # palette quantisation

    gray = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    io.write_png(tmp_path / "g.png", gray)
    im = Image.open(tmp_path / "g.png")
    assert im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im), np.round(gray * 255).astype(np.uint8))
    paths = io.write_frames(tmp_path / "frames", frames[:3])
    assert [os.path.basename(p) for p in paths] == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(paths[1])), np.round(frames[1] * 255).astype(np.uint8)
    )


# ----------------------------------------------------------------------------------------------
# the sample job
# ----------------------------------------------------------------------------------------------


def test_write_sample(tmp_path):
    paths = sample.write_sample(tmp_path)
    img, info = io.load_image(paths["image"])
    assert info["original_size"] == (427, 640) and img.shape == (512, 768, 3)
    ref = sample.load_sample_photo() / 255.0
    assert (
        np.abs(io.load_image(paths["image"], max_side=640, multiple_of=1)[0] - ref).mean() < 0.02
    )  # JPEG q95
    ann = io.load_annotations(paths["annotations"], info["original_size"], info["size"])
    frac = float(ann.mask.mean())
    assert 0.05 <= frac <= 0.60, frac
    assert 3 <= len(ann.hints) <= 6
    for h in ann.hints:  # every hint starts and ends inside the motion mask
        for x, y in (h.start, h.end):
            assert ann.mask[int(round(y)), int(round(x))] > 0.5
        assert 0.2 < np.hypot(*h.vector) < 1.0  # gentle: under 1 px/frame at 768
    prev = np.asarray(Image.open(paths["preview"]))
    assert prev.shape == (512, 768, 3)


def test_flow_with_implausible_magnitudes_is_refused(tmp_path):
    """Found by the fuzz tests: finite but huge vectors (4e37 px/frame) overflowed to inf when rescaled."""
    path = tmp_path / "flow.npy"
    np.save(path, np.full((3, 4, 2), 4.25e37, np.float32))
    with pytest.raises(ValueError, match=r"flow\.npy: flow has a component of 4\.25e\+37 px/frame"):
        io.load_flow(str(path), (24, 32), image_size=(24, 32))
    ok = np.full((3, 4, 2), 100 * 4, np.float32)  # exactly the limit: kept, and finite after rescaling
    np.save(path, ok)
    out = io.load_flow(str(path), (24, 32), image_size=(24, 32))
    assert np.all(np.isfinite(out)) and out[..., 0].max() == pytest.approx(400 * 8)


def test_cameras_too_large_for_float32_are_refused(tmp_path):
    """Found by the fuzz tests: a translation of 3.4028235678e38 is finite in float64 and inf in float32."""
    path = tmp_path / "cams.json"
    pose = [[1, 0, 0, 3.4028235677973366e38], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    path.write_text(json.dumps({"K": [[40.0, 0, 16.0], [0, 40.0, 12.0], [0, 0, 1]], "poses": [pose]}))
    with pytest.raises(ValueError, match=r'cams\.json: "poses" has values too large for float32'):
        io.load_cameras(str(path), (24, 32), image_size=(24, 32))
