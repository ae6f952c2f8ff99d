"""four_d/preprocess.py: the reference view from synthetic images with known answers."""

import os

import cv2
import numpy as np
import pytest

from four_d import preprocess as pp


def disc_scene(h=90, w=130, centre=(50, 75), radius=22):
    """A flat red disc on a flat blue-grey background (with mild noise), its exact mask, and a depth map."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    rgb = np.where(disc[..., None], [0.85, 0.2, 0.15], [0.3, 0.4, 0.55]) + rng.normal(0, 0.02, (h, w, 3))
    depth = np.where(disc, 2.0 + 0.01 * (yy - centre[0]), 5.0).astype(np.float32)
    return np.clip(rgb, 0, 1).astype(np.float32), disc, depth


def write_rgb(path, rgb, alpha=None):
    img = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        img = np.concatenate([img, np.round(alpha * 255).astype(np.uint8)[..., None]], -1)
    assert cv2.imwrite(path, img)
    return path


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_recovers_a_disc():
    rgb, disc, _ = disc_scene()
    mask = pp.grabcut_mask(rgb)
    assert iou(mask, disc) > 0.9, iou(mask, disc)


@pytest.mark.parametrize("size,border", [(64, 0.2), (97, 0.35)])
def test_recentre_centres_the_box_with_the_border_ratio(tmp_path, size, border):
    rgb, disc, depth = disc_scene()
    path = write_rgb(str(tmp_path / "disc.png"), rgb, alpha=disc.astype(np.float32))
    np.save(str(tmp_path / "depth.npy"), depth)
    ref = pp.preprocess_reference(path, depth_path=str(tmp_path / "depth.npy"), size=size, border_ratio=border)
    assert ref["mask_source"] == "alpha" and ref["depth_source"] == "file"
    assert ref["rgba"].shape == (size, size, 4) and ref["depth"].shape == (size, size)
    rows, cols = np.nonzero(ref["mask"])
    centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    np.testing.assert_allclose(centre, ((size - 1) / 2, (size - 1) / 2), atol=1.0)
    longest = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    assert abs(longest - int(size * (1 - border))) <= 1, (longest, int(size * (1 - border)))
    # the disc stays a disc (aspect kept) and its colour survives; alpha 0 outside
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    np.testing.assert_allclose(ref["rgba"][size // 2, size // 2, :3], [0.85, 0.2, 0.15], atol=0.08)
    assert ref["rgba"][0, 0, 3] == 0 and ref["depth"][0, 0] == 0
    # depth: normalised in the mask, increasing downwards as the given depth does
    d = ref["depth"]
    assert d[ref["mask"]].min() == 0 and d[ref["mask"]].max() == 1
    col = d[:, size // 2][ref["mask"][:, size // 2]]
    assert np.all(np.diff(col) >= 0) and col[-1] > col[0]


def test_pad_square_without_recentre(tmp_path):
    rgb, disc, depth = disc_scene(h=40, w=60, centre=(20, 30), radius=10)
    path = write_rgb(str(tmp_path / "disc.png"), rgb, alpha=disc.astype(np.float32))
    np.save(str(tmp_path / "d.npy"), depth)
    ref = pp.preprocess_reference(path, depth_path=str(tmp_path / "d.npy"), size=60, recenter_object=False)
    assert ref["rgba"].shape == (60, 60, 4)
    # zero padding of 10 rows above and below; the image is unchanged inside
    assert np.all(ref["rgba"][:10] == 0) and np.all(ref["rgba"][50:] == 0)
    np.testing.assert_array_equal(ref["mask"][10:50], disc)


def test_mask_file_and_grabcut_default(tmp_path):
    rgb, disc, depth = disc_scene()
    path = write_rgb(str(tmp_path / "disc.jpg"), rgb)
    mpath = str(tmp_path / "m.png")
    cv2.imwrite(mpath, disc.astype(np.uint8) * 255)
    calls = []

    def estimator(image):
        calls.append(image.shape)
        return depth

    ref = pp.preprocess_reference(path, mask_path=mpath, size=48, estimator=estimator)
    assert ref["mask_source"] == "mask" and ref["depth_source"] == "estimated" and calls == [(90, 130, 3)]
    ref2 = pp.preprocess_reference(path, size=48, estimator=estimator)
    assert ref2["mask_source"] == "grabcut"
    assert iou(ref["mask"], ref2["mask"]) > 0.9
    # the default estimator (cine_jax HeuristicDepth) needs no weights
    ref3 = pp.preprocess_reference(path, mask_path=mpath, size=48)
    assert np.isfinite(ref3["depth"]).all() and ref3["depth"][ref3["mask"]].max() == 1


def test_depth_png_and_disparity(tmp_path):
    rgb, disc, depth = disc_scene()
    path = write_rgb(str(tmp_path / "disc.png"), rgb, alpha=disc.astype(np.float32))
    png = str(tmp_path / "d.png")
    cv2.imwrite(png, np.round(depth * 1000).astype(np.uint16))
    a = pp.preprocess_reference(path, depth_path=png, size=48)
    np.save(str(tmp_path / "disp.npy"), 1.0 / depth)
    b = pp.preprocess_reference(path, depth_path=str(tmp_path / "disp.npy"), depth_kind="disparity", size=48)
    np.testing.assert_allclose(a["depth"], b["depth"], atol=1e-3)


def test_errors_name_the_file(tmp_path):
    rgb, disc, depth = disc_scene()
    path = write_rgb(str(tmp_path / "disc.png"), rgb)
    bad = str(tmp_path / "bad.png")
    with open(bad, "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(ValueError, match=f"{bad}: cannot read the image"):
        pp.preprocess_reference(bad)
    with pytest.raises(ValueError, match="nope.png: image file not found"):
        pp.preprocess_reference(str(tmp_path / "nope.png"))
    empty = str(tmp_path / "empty.png")
    cv2.imwrite(empty, np.zeros((90, 130), np.uint8))
    with pytest.raises(ValueError, match=f"{empty}: mask is empty"):
        pp.preprocess_reference(path, mask_path=empty)
    small = str(tmp_path / "small.png")
    cv2.imwrite(small, np.full((45, 65), 255, np.uint8))
    with pytest.raises(ValueError, match=f"{small}: mask is 65x45 but the image is 130x90"):
        pp.preprocess_reference(path, mask_path=small)
    nan = str(tmp_path / "nan.npy")
    d = depth.copy()
    d[3, 4] = np.nan
    np.save(nan, d)
    with pytest.raises(ValueError, match=f"{nan}: depth contains NaN"):
        pp.preprocess_reference(path, depth_path=nan)
    zero = str(tmp_path / "zero.npy")
    np.save(zero, np.zeros_like(depth))
    with pytest.raises(ValueError, match=f"{zero}: depth is zero everywhere"):
        pp.preprocess_reference(path, depth_path=zero)
    wrong = str(tmp_path / "wrong.npy")
    np.save(wrong, depth[:-1])
    with pytest.raises(ValueError, match=f"{wrong}: depth is 130x89 but the image is 130x90"):
        pp.preprocess_reference(path, depth_path=wrong)
    clear = write_rgb(str(tmp_path / "clear.png"), rgb, alpha=np.zeros(disc.shape, np.float32))
    with pytest.raises(ValueError, match="alpha channel is zero everywhere"):
        pp.preprocess_reference(clear)


def test_write_reference(tmp_path):
    rgb, disc, depth = disc_scene()
    path = write_rgb(str(tmp_path / "disc.png"), rgb, alpha=disc.astype(np.float32))
    np.save(str(tmp_path / "d.npy"), depth)
    ref = pp.preprocess_reference(path, depth_path=str(tmp_path / "d.npy"), size=64)
    paths = pp.write_reference(str(tmp_path / "out"), ref)
    assert sorted(os.listdir(tmp_path / "out")) == ["depth.npy", "depth.png", "mask.png", "rgba.png"]
    back = cv2.imread(paths["rgba.png"], cv2.IMREAD_UNCHANGED)
    assert back.shape == (64, 64, 4)
    np.testing.assert_array_equal(back[..., 3] > 127, ref["mask"])
    np.testing.assert_array_equal(np.load(paths["depth.npy"]), ref["depth"])
