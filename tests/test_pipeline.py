"""cine_jax.pipeline.animate end to end on tiny inputs, and the `cine-jax` CLI."""

import json
import os

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from cine_jax import cli, io, pipeline, synthetic
from configs import cinemagraph


def _cfg(**overrides):
    c = cinemagraph.get_config("tiny")
    for k, v in overrides.items():
        node = c
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return c


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@pytest.fixture(scope="module")
def plane():
    return synthetic.plane_scene(48, 64, velocity=(0.5, 0.0), near_box=(16, 20, 36, 40), far_depth=3.0)


def test_static_camera_frame_zero_reproduces_input(plane):
    res = pipeline.animate(plane.image, depth=plane.depth, flow=plane.flow, trajectory="static", num_frames=6,
                           config=_cfg(), progress=False)
    assert res.frames.shape == (6, 48, 64, 3) and res.frames.dtype == np.float32
    assert res.frames.min() >= 0.0 and res.frames.max() <= 1.0
    assert _psnr(res.frames[0], plane.image) >= 40.0
    # the static near square never moves: every frame shows it unchanged
    sq = (slice(18, 34), slice(22, 38))
    for f in res.frames:
        np.testing.assert_allclose(f[sq], plane.image[sq], atol=2e-3)
    # the water moves: frame 3 of 6 is the even blend of the texture advected by +3v and -3v
    uv = synthetic.pixel_uv(48, 64)
    v = np.asarray(plane.velocity, np.float32)
    expected = 0.5 * plane.texture(uv - 3 * v) + 0.5 * plane.texture(uv + 3 * v)
    water = (slice(4, 44), slice(46, 58))
    assert _psnr(res.frames[3][water], expected[water]) >= 35.0
    assert _psnr(res.frames[3][water], expected[water]) > _psnr(res.frames[3][water], plane.image[water]) + 5
    assert res.stats["points_dropped_capacity"] == 0
    assert res.displacement["forward"].shape == (6, 48, 64, 2)
    np.testing.assert_allclose(res.displacement["forward"][2][5, 50], [1.0, 0.0], atol=1e-5)


def test_same_inputs_same_output_bit_for_bit(plane):
    kw = dict(depth=plane.depth, flow=plane.flow, trajectory="circle", num_frames=4, config=_cfg(), progress=False)
    a = pipeline.animate(plane.image, seed=3, **kw).frames
    b = pipeline.animate(plane.image, seed=3, **kw).frames
    np.testing.assert_array_equal(a, b)


def test_mask_and_hints_from_arrays_and_default_depth(rng):
    img = synthetic.plane_scene(48, 64).image  # already the tiny working size (max side 64)
    mask = np.zeros((48, 64), np.float32)
    mask[24:, :] = 1.0
    hints = [((10.0, 30.0), (0.8, 0.0))]
    res = pipeline.animate(img, mask=mask, hints=hints, trajectory="zoom-in", num_frames=4, config=_cfg(),
                           progress=False)
    assert np.all(np.isfinite(res.frames)) and res.frames.shape == (4, 48, 64, 3)
    assert np.all(res.depth >= 1.0 - 1e-6) and abs(float(res.depth.min()) - 1.0) < 1e-6
    assert np.abs(res.flow[:20]).max() == 0.0  # no motion outside the mask
    np.testing.assert_allclose(res.flow[40, 10], [0.8, 0.0], atol=1e-3)


def test_bad_inputs_give_clear_errors(tmp_path, plane):
    with pytest.raises(ValueError, match="NaN"):
        d = plane.depth.copy()
        d[3, 3] = np.nan
        pipeline.animate(plane.image, depth=d, flow=plane.flow, num_frames=2, config=_cfg(), progress=False)
    missing = str(tmp_path / "nope.png")
    with pytest.raises(io.InputError, match="nope.png"):
        pipeline.animate(missing, num_frames=2, config=_cfg(), progress=False)
    empty = tmp_path / "empty_mask.png"
    cv2.imwrite(str(empty), np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="empty_mask.png"):
        pipeline.animate(plane.image, mask=str(empty), hints=[((5.0, 5.0), (1.0, 0.0))], num_frames=2,
                         config=_cfg(), progress=False)
    with pytest.raises(ValueError, match="hints"):
        pipeline.animate(plane.image, mask=plane.mask, num_frames=2, config=_cfg(), progress=False)
    wrong = tmp_path / "wrong_aspect_mask.png"
    cv2.imwrite(str(wrong), np.full((10, 10), 255, np.uint8))
    with pytest.raises(ValueError, match="wrong_aspect_mask.png.*aspect"):
        pipeline.animate(plane.image, mask=str(wrong), hints=[((5.0, 5.0), (1.0, 0.0))], num_frames=2,
                         config=_cfg(), progress=False)
    with pytest.raises(ValueError, match="aspect"):
        pipeline.animate(plane.image, depth=np.ones((20, 20), np.float32), num_frames=2, config=_cfg(),
                         progress=False)
    with pytest.raises(ValueError, match="outside"):
        pipeline.animate(plane.image, mask=plane.mask, hints=[((500.0, 5.0), (1.0, 0.0))], num_frames=2,
                         config=_cfg(), progress=False)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((3, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="tiny.png.*at least"):
        pipeline.animate(str(tiny), num_frames=2, config=_cfg(), progress=False)
    with pytest.raises(ValueError, match="trajector"):
        pipeline.animate(plane.image, depth=plane.depth, trajectory="loop-de-loop", config=_cfg(), progress=False)


def test_cli_sample_and_animate(tmp_path):
    sample_dir = tmp_path / "sample"
    assert cli.main(["sample", str(sample_dir)]) == 0
    image = sample_dir / "china.jpg"
    motion = sample_dir / "china_motion.json"
    assert image.exists() and motion.exists()
    out = tmp_path / "out"
    rc = cli.main(["animate", str(image), "--hints", str(motion), "--frames", "4", "--config", "tiny",
                   "--save-frames", "--quiet", "--out", str(out), "--config.io.max_side=48", "--fps", "10"])
    assert rc == 0
    cap = cv2.VideoCapture(str(out / "cinemagraph.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4
    assert len(os.listdir(out / "frames")) == 4
    gif = iio.imread(out / "cinemagraph.gif", index=None)
    assert gif.shape[0] >= 2
    preview = iio.imread(out / "preview.png")
    assert preview.ndim == 3 and preview.shape[0] > 100
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames"] == 4 and stats["size"][1] == 48
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["io"]["max_side"] == 48


def test_explicit_cameras_json(tmp_path, plane):
    K = pipeline.reference_intrinsics(48, 64)
    poses = [np.eye(4).tolist()] + [
        [[1, 0, 0, 0.02 * i], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] for i in (1, 2)
    ]
    path = tmp_path / "cams.json"
    path.write_text(json.dumps({"K": np.asarray(K).tolist(), "poses": poses}))
    res = pipeline.animate(plane.image, depth=plane.depth, flow=plane.flow, poses=str(path), config=_cfg(),
                           progress=False)
    assert res.frames.shape[0] == 3
    np.testing.assert_allclose(res.poses[2][0, 3], 0.04, rtol=1e-6)
    assert _psnr(res.frames[0], plane.image) >= 40.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"K": np.asarray(K).tolist(), "poses": [[[1, 0, 0], [0, 1, 0]]]}))
    with pytest.raises(ValueError, match="bad.json"):
        pipeline.animate(plane.image, depth=plane.depth, poses=str(bad), config=_cfg(), progress=False)
