"""cine_jax/evaluate.py and `cine-jax eval`: the paper's PSNR / SSIM / LPIPS on valid pixels.

Known answers: identical frames give PSNR inf, SSIM 1, LPIPS 0; a fronto-parallel plane seen by a translated camera
has an analytic visible region (the reprojection mask must match it up to the official 2 px splat radius + 3 px
max-pool dilation); PSNR of a shifted frame equals a brute-force loop over the analytic crop; PSNR / SSIM equal
scikit-image's `peak_signal_noise_ratio` / `structural_similarity` on the crop (tolerance 1e-9 dB / 1e-9).
Cameras use a non-default K (fx != fy, off-centre principal point) and odd image sizes.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cine_jax import cli, evaluate

H, W = 31, 45  # odd sizes
FX, FY, CX, CY = 40.0, 42.0, 21.3, 14.6
Z = 2.0  # plane depth (metres)
SHIFT = 6  # pixels: camera translation tx = SHIFT * Z / FX


def _K():
    return np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]], np.float64)


def _pose(tx, ty=0.0):
    p = np.eye(4)
    p[0, 3], p[1, 3] = tx, ty
    return p


def _texture(seed=0, h=H, w=W):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            f = rng.uniform(0.1, 0.5, 2)
            img[..., c] += 0.15 * np.sin(f[0] * x + f[1] * y + rng.uniform(0, 6))
    return np.clip(img + 0.5, 0, 1)


def _q(img):
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _write_traj(root, name, frames):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(_q(f)).save(os.path.join(d, f"{i:03d}.png"))
    return d


def _write_cameras(path, poses):
    with open(path, "w") as f:
        json.dump({"K": _K().tolist(), "poses": [p.tolist() for p in poses]}, f)
    return str(path)


def test_mask_of_a_pure_translation_is_the_analytic_visible_region():
    depth = np.full((H, W), Z, np.float32)
    # camera moved left by tx: x' = x + tx, so u' = u + FX tx / Z: the photo covers columns [SHIFT, W - 1 + SHIFT]
    mask = evaluate.reprojection_mask(depth, _K(), _pose(SHIFT * Z / FX), _K(), (H, W))
    valid = mask > 0.5
    analytic = np.zeros((H, W), bool)
    analytic[:, SHIFT:] = True
    assert valid[:, SHIFT:].all()  # the visible region is fully valid
    first = np.nonzero(valid.all(axis=0))[0][0]
    # dilation: splat coverage > 0 only within the 2 px radius (column SHIFT - 1), 7x7 max-pool adds 3 columns
    assert first == SHIFT - 4
    assert not valid[:, : SHIFT - 4].any()
    assert np.abs(valid.astype(int) - analytic).sum(axis=1).max() <= 4
    # vertical translation, other direction: the bottom rows are disoccluded
    shift_y = 5
    mask_y = evaluate.reprojection_mask(depth, _K(), _pose(0.0, -shift_y * Z / FY), _K(), (H, W))
    rows = np.nonzero((mask_y > 0.5).all(axis=1))[0]
    assert rows[0] == 0 and rows[-1] == H - 1 - shift_y + 4


def test_crop_and_psnr_of_a_shifted_frame_match_brute_force():
    depth = np.full((H, W), Z, np.float32)
    mask = evaluate.reprojection_mask(depth, _K(), _pose(SHIFT * Z / FX), _K(), (H, W))
    gt = _texture(1)
    pred = np.roll(gt, 2, axis=1)  # a prediction off by 2 px
    top, bottom, left, right, bad = evaluate.cropping_box(mask)
    assert (top, bottom, left, right, bad) == (0, H - 1, SHIFT - 4, W - 1, False)
    m = evaluate.frame_metrics(pred, gt, mask)
    total, count = 0.0, 0
    for i in range(H):
        for j in range(SHIFT - 4, W):  # the analytic crop; every pixel in it is valid
            for c in range(3):
                total += (float(pred[i, j, c]) - float(gt[i, j, c])) ** 2
                count += 1
    brute = 10 * np.log10(1.0 / (total / count))
    assert abs(m["psnr"] - brute) < 1e-9
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    crop = (slice(None), slice(SHIFT - 4, None))
    assert abs(m["psnr"] - peak_signal_noise_ratio(gt[crop], pred[crop], data_range=1.0)) < 1e-9
    ref = structural_similarity(pred[crop], gt[crop], channel_axis=-1, data_range=1.0)
    assert abs(m["ssim"] - ref) < 1e-9
    # the whole-frame PSNR differs (the crop excludes the disoccluded band): the mask is really used
    assert abs(evaluate.frame_metrics(pred, gt, None)["psnr"] - m["psnr"]) > 1e-3


def test_cropping_rules_of_the_official_code():
    mask = np.zeros((20, 30), np.float32)
    mask[3:18, 5:28] = 1.0
    assert evaluate.cropping_box(mask) == (3, 17, 5, 27, False)
    small = np.zeros((20, 30), np.float32)
    small[:, :10] = 1.0  # only a third of the columns: the whole image, flagged bad
    assert evaluate.cropping_box(small) == (0, 19, 0, 29, True)
    exact_half = np.ones((20, 30), np.float32)
    exact_half[:, :3] = 0.5  # column means exactly 0.5 are not > 0.5
    assert evaluate.cropping_box(exact_half) == (0, 19, 3, 29, False)


def test_masked_metrics_only_count_valid_pixels():
    gt = _texture(2)
    pred = gt.copy()
    pred[:, :10] = 0.0  # wrong where invalid
    valid = np.ones((H, W), bool)
    valid[:, :10] = False
    assert evaluate.masked_psnr(pred, gt, valid) == float("inf")
    pred[5, 20, 1] += 0.1
    expected = 10 * np.log10(1.0 / (0.1**2 / (valid.sum() * 3)))
    assert abs(evaluate.masked_psnr(pred, gt, valid) - expected) < 1e-6


def test_cli_identical_frames_and_table(tmp_path, capsys):
    gt_frames = [_texture(s) for s in range(3)]
    for root in ("pred", "gt"):
        _write_traj(tmp_path / root, "static", gt_frames)
        _write_traj(tmp_path / root, "side", gt_frames[::-1])
    cams = tmp_path / "cams"
    cams.mkdir()
    for name in ("static", "side"):
        _write_cameras(cams / f"{name}.json", [_pose(0.02 * i) for i in range(3)])
    np.save(tmp_path / "depth.npy", np.full((H, W), Z, np.float32))
    out = tmp_path / "m.json"
    code = cli.main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--source-depth",
                     str(tmp_path / "depth.npy"), "--cameras", str(cams), "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "static" in text and "side" in text and "inf" in text
    res = json.loads(out.read_text())
    for name in ("static", "side"):
        r = res["trajectories"][name]
        assert r["psnr"] == "inf" and r["identical_frames"] == 3
        assert r["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert r["lpips"] == pytest.approx(0.0, abs=1e-6)
        assert r["frames"] == 3
    # a perturbed prediction: finite PSNR, LPIPS > 0, and --overwrite is needed for the same --out
    _write_traj(tmp_path / "pred", "side", [np.clip(f + 0.05, 0, 1) for f in gt_frames[::-1]])
    assert cli.main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out), "--quiet",
                     "--overwrite"]) == 0
    r = json.loads(out.read_text())["trajectories"]["side"]
    assert 20 < r["psnr"] < 30 and r["lpips"] > 0


def _err(capsys, argv):
    assert cli.main(["eval", *argv, "--quiet", "--no-lpips"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    frames = [_texture(s) for s in range(3)]
    _write_traj(tmp_path / "gt", "a", frames)
    _write_traj(tmp_path / "p1", "a", frames[:2])
    out = str(tmp_path / "m.json")
    assert "2 frames" in _err(capsys, [str(tmp_path / "p1"), str(tmp_path / "gt"), "--out", out])
    _write_traj(tmp_path / "p2", "a", [_texture(s, h=H + 2) for s in range(3)])
    assert "45x33" in _err(capsys, [str(tmp_path / "p2"), str(tmp_path / "gt"), "--out", out])
    assert "no such folder" in _err(capsys, [str(tmp_path / "nope"), str(tmp_path / "gt"), "--out", out])
    _write_traj(tmp_path / "p3", "b", frames)
    assert "'a'" in _err(capsys, [str(tmp_path / "p3"), str(tmp_path / "gt"), "--out", out])
    assert "both" in _err(capsys, [str(tmp_path / "gt"), str(tmp_path / "gt"), "--out", out, "--cameras",
                                   str(tmp_path)])
    np.save(tmp_path / "d.npy", np.full((H, W), Z, np.float32))
    cam = _write_cameras(tmp_path / "c.json", [_pose(0.0)] * 2)
    assert "2 poses" in _err(capsys, [str(tmp_path / "gt"), str(tmp_path / "gt"), "--out", out, "--cameras", cam,
                                      "--source-depth", str(tmp_path / "d.npy")])
    assert "a.json" in _err(capsys, [str(tmp_path / "gt"), str(tmp_path / "gt"), "--out", out, "--cameras",
                                     str(tmp_path / "p1"), "--source-depth", str(tmp_path / "d.npy")])


def test_a_video_file_is_a_trajectory(tmp_path, capsys):
    import imageio.v3 as iio

    frames = [_texture(s) for s in range(3)]
    _write_traj(tmp_path / "gt", "orbit", frames)
    (tmp_path / "pred").mkdir()
    iio.imwrite(tmp_path / "pred" / "orbit.gif", np.stack([_q(f) for f in frames]), loop=0)
    out = tmp_path / "m.json"
    assert cli.main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out), "--quiet",
                     "--no-lpips"]) == 0
    r = json.loads(out.read_text())["trajectories"]["orbit"]
    assert r["frames"] == 3 and r["psnr"] > 25  # GIF palette quantisation only
    (tmp_path / "pred" / "orbit").mkdir()
    assert cli.main(["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(out), "--quiet",
                     "--no-lpips", "--overwrite"]) == 2
    assert "both a folder and a video" in capsys.readouterr().err
