"""cine_jax.train.procedural and `cine-jax make-data`: determinism, exact flow, exact novel views, files that
cine_jax.io loads, an end-to-end `cine-jax animate` run on a generated clip, and command-line errors.

Independent references: OpenCV (`remap` for bilinear warping, `projectPoints` + `Rodrigues` for projection)
and the analytic relation frame_t(p) = frame_0(p - t flow(p)) of an advected texture."""

import filecmp
import os

import cv2
import numpy as np
import pytest

from cine_jax import cli as cine_cli
from cine_jax import io
from cine_jax.train import procedural

SIZE = (72, 96)  # (H, W): odd aspect, multiple of 8 so `animate` works at the native size


def _psnr(a, b, valid):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64))[valid] ** 2))
    return -10.0 * np.log10(max(mse, 1e-12))


def _files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def test_same_seed_same_bytes_other_seed_other_clip(tmp_path):
    kw = dict(size=(31, 45), frames=3, views=1, progress=False)  # odd sizes
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    a = procedural.write_dataset(str(tmp_path / "a"), 2, seed=7, **kw)
    procedural.write_dataset(str(tmp_path / "b"), 2, seed=7, **kw)
    names = _files(tmp_path / "a")
    assert len(a) == 2 and names == _files(tmp_path / "b")
    assert "preview.png" in names and "clip_0001/cameras.json" in names and "clip_0000/views/000.png" in names
    _, mismatch, errs = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert mismatch == [] and errs == []
    # another seed gives another scene; clips within one dataset differ too
    c = procedural.make_clip(procedural.clip_seed(8, 0), (31, 45), 3, 1)
    a0 = procedural.make_clip(procedural.clip_seed(7, 0), (31, 45), 3, 1)
    a1 = procedural.make_clip(procedural.clip_seed(7, 1), (31, 45), 3, 1)
    assert np.abs(c["frames"] - a0["frames"]).mean() > 0.05
    assert np.abs(a1["depth"] - a0["depth"]).mean() > 0.05


def _advect(frame0, flow, k):
    """frame_0 sampled at p - k flow(p) (bilinear, OpenCV)."""
    h, w = flow.shape[:2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(frame0, u - k * flow[..., 0], v - k * flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _advect_valid(mask, flow, k, margin=2):
    """Pixels on the river whose source p - k flow lies in the river interior (away from occluders and the
    borders, where the texture is not a shifted copy)."""
    h, w = mask.shape
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    us, vs = u - k * flow[..., 0], v - k * flow[..., 1]
    inside = (us >= margin) & (us <= w - 1 - margin) & (vs >= margin) & (vs <= h - 1 - margin)
    ui = np.clip(np.round(us).astype(int), 0, w - 1)
    vi = np.clip(np.round(vs).astype(int), 0, h - 1)
    return inner & inside & inner[vi, ui]


@pytest.mark.parametrize("seed", [3, 11])
def test_flow_is_exact_eulerian_advection(seed):
    clip = procedural.make_clip(seed, SIZE, frames=5, views=1)
    frames, flow, mask = clip["frames"], clip["flow"], clip["mask"]
    speed = np.hypot(flow[..., 0], flow[..., 1])
    assert np.all(speed[~mask] == 0) and speed[mask].min() > 0.02 and speed.max() < 4.0
    for k in (1, 2, 4):
        valid = _advect_valid(mask, flow, k)
        assert valid.sum() > 300, valid.sum()
        good = _psnr(_advect(frames[0], flow, k), frames[k], valid)
        # only bilinear interpolation error of the smooth texture is left (measured 46-58 dB over 4 seeds);
        # the wrong answers below measured 15-38 dB, so 44 dB fails a flipped sign or a one-frame time shift
        assert good > 44.0, (k, good)
        # the test discriminates: the opposite flow and a time shifted by one frame are far below
        for wrong_flow, wrong_k in ((-flow, k), (flow, k + 1), (flow, k - 1)):
            bad = _psnr(_advect(frames[0], wrong_flow, wrong_k), frames[k], valid)
            assert bad < 40.0, (k, bad)


def test_novel_views_reproject_with_exact_depth_and_K(tmp_path):
    clip = procedural.make_clip(5, SIZE, frames=2, views=3)
    d = procedural.write_clip(clip, tmp_path / "clip")
    h, w = SIZE
    cams = io.load_cameras(os.path.join(d, "cameras.json"), size=SIZE, image_size=SIZE)
    depth = io.load_depth(os.path.join(d, "depth.npy"), SIZE)
    src, _ = io.load_image(os.path.join(d, "frames", "000.png"), max_side=0, multiple_of=1)
    K = cams["K_source"].astype(np.float64)
    assert not np.allclose(K[:2, 2], [(w - 1) / 2, (h - 1) / 2], atol=0.5) and K[0, 0] != max(h, w)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    X = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1).reshape(-1, 3)
    # source pixels away from surface edges (colour and depth jump there)
    surf = clip["surface"]
    edge = cv2.dilate((cv2.Laplacian(surf.astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8),
                      np.ones((3, 3), np.uint8)) > 0
    for k in range(3):
        P, Kv = cams["poses"][k].astype(np.float64), cams["K"][k].astype(np.float64)
        assert np.abs(P[:3, 3]).max() > 1e-3  # a real offset, not the identity
        rvec, _ = cv2.Rodrigues(P[:3, :3])
        q, _ = cv2.projectPoints(X, rvec, P[:3, 3], Kv, None)
        q = q.reshape(h, w, 2).astype(np.float32)
        z_view = (X @ P[:3, :3].T + P[:3, 3])[:, 2].reshape(h, w)
        view, _ = io.load_image(os.path.join(d, "views", f"{k:03d}.png"), max_side=0, multiple_of=1)
        vdepth = np.load(os.path.join(d, "views", f"{k:03d}_depth.npy"))
        sampled = cv2.remap(view, q[..., 0], q[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        zs = cv2.remap(vdepth, q[..., 0], q[..., 1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        inside = (q[..., 0] >= 1) & (q[..., 0] <= w - 2) & (q[..., 1] >= 1) & (q[..., 1] <= h - 2)
        visible = np.abs(zs - z_view) < 0.01 * z_view  # not hidden in the view
        valid = inside & visible & ~edge
        assert valid.mean() > 0.5, valid.mean()
        good = _psnr(sampled, src, valid)
        assert good > 45.0, (k, good)  # measured 52.9-53.8 dB (bilinear + 8-bit PNG)
        # the same check against the unmoved photo (identity pose) is far worse: the views do move
        assert _psnr(view, src, valid) < good - 6.0


def test_metric_depth_and_K_put_every_pixel_on_its_surface(tmp_path):
    """Unprojecting the written depth with the written K lands each pixel on the surface meta.json names:
    the ground plane y = camera_height, the backdrop z = backdrop_depth, the river band, and inside (never
    outside) each occluder (pixel centres are ray-cast, so no tolerance beyond float rounding is needed)."""
    import json

    clip = procedural.make_clip(9, SIZE, frames=2, views=1)
    d = procedural.write_clip(clip, tmp_path / "c")
    meta = json.load(open(os.path.join(d, "meta.json")))
    K = io.load_cameras(os.path.join(d, "cameras.json"), size=SIZE, image_size=SIZE)["K_source"].astype(np.float64)
    z = np.load(os.path.join(d, "depth.npy")).astype(np.float64)
    h, w = SIZE
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    X, Y = (u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z
    surf = clip["surface"]
    ground = (surf == 1) | (surf == 2)
    assert ground.any() and (surf == 0).any() and len(meta["occluders"]) >= 1
    np.testing.assert_allclose(Y[ground], meta["camera_height"], rtol=1e-5)
    np.testing.assert_allclose(z[surf == 0], meta["backdrop_depth"], rtol=1e-5)
    lo, hi = meta["river_z"]
    river = io.load_mask(os.path.join(d, "mask.png"), SIZE) > 0.5
    np.testing.assert_array_equal(river, surf == 2)
    assert np.all((z[river] >= lo * (1 - 1e-5)) & (z[river] <= hi * (1 + 1e-5)))
    eps = 1e-5
    for k, occ in enumerate(meta["occluders"]):
        on = surf == 3 + k
        if not on.any():
            continue
        np.testing.assert_allclose(z[on], occ["z"], rtol=1e-5)
        x, y = X[on], Y[on]
        if occ["kind"] == "disc":
            cx, cy, r = occ["params"]
            assert np.all((x - cx) ** 2 + (y - cy) ** 2 <= r * r * (1 + eps))
        else:
            x0, x1, y0, y1 = occ["params"]
            assert np.all((x >= x0 - eps) & (x <= x1 + eps) & (y >= y0 - eps) & (y <= y1 + eps))


def test_files_load_with_cine_jax_io(tmp_path):
    clip = procedural.make_clip(2, (40, 56), frames=3, views=2)
    d = procedural.write_clip(clip, tmp_path / "c")
    size = (40, 56)
    img, info = io.load_image(os.path.join(d, "frames", "002.png"), max_side=0, multiple_of=1)
    assert info["size"] == size and np.abs(img - clip["frames"][2]).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(io.load_depth(os.path.join(d, "depth.npy"), size, image_size=size), clip["depth"])
    np.testing.assert_array_equal(io.load_flow(os.path.join(d, "flow.npy"), size, image_size=size), clip["flow"])
    np.testing.assert_array_equal(io.load_mask(os.path.join(d, "mask.png"), size) > 0.5, clip["mask"])
    cams = io.load_cameras(os.path.join(d, "cameras.json"), size=size, image_size=size)
    np.testing.assert_allclose(cams["K_source"], clip["K"], rtol=1e-6)
    np.testing.assert_allclose(cams["poses"], clip["poses"], atol=1e-6)
    view, _ = io.load_image(os.path.join(d, "views", "001.png"), max_side=0, multiple_of=1)
    assert np.abs(view - clip["views"][1]).max() <= 0.5 / 255 + 1e-6


def test_make_data_then_animate_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    # 64x48: the tiny config's working size (io.max_side 64), so animate works at the clip's own pixels
    assert cine_cli.main(["make-data", str(data), "--clips", "1", "--size", "64x48", "--frames", "2",
                          "--views", "2", "--seed", "4", "--quiet"]) == 0
    assert "preview.png" in capsys.readouterr().out
    c = data / "clip_0000"
    out = tmp_path / "anim"
    code = cine_cli.main(["animate", str(c / "frames" / "000.png"), "--depth", str(c / "depth.npy"),
                          "--flow", str(c / "flow.npy"), "--mask", str(c / "mask.png"),
                          "--poses", str(c / "cameras.json"), "--out", str(out), "--config", "tiny",
                          "--save-frames", "--quiet"])
    assert code == 0, capsys.readouterr().err
    frames = sorted(os.listdir(out / "frames"))
    assert len(frames) == 2  # one per pose in cameras.json
    f0, _ = io.load_image(str(out / "frames" / frames[0]), max_side=0, multiple_of=1)
    view, _ = io.load_image(str(c / "views" / "000.png"), max_side=0, multiple_of=1)
    src, _ = io.load_image(str(c / "frames" / "000.png"), max_side=0, multiple_of=1)
    everywhere = np.ones(f0.shape, bool)
    # frame 0 of the loop is time 0 seen from pose 0: the exact view up to disocclusions and splatting
    to_view, to_src = _psnr(f0, view, everywhere), _psnr(f0, src, everywhere)
    assert to_view > 24.0 and to_view > to_src + 5.0, (to_view, to_src)


def _one_line_error(capsys, code, *needles):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cine-jax: error:"), err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("extra, needles", [
    (["--size", "abc"], ["--size", "WxH"]),
    (["--size", "64x"], ["--size", "WxH"]),
    (["--size", "12x40"], ["--size", ">= 16", "12x40"]),
    (["--clips", "0"], ["--clips", ">= 1"]),
    (["--frames", "1"], ["--frames", ">= 2"]),
    (["--views", "0"], ["--views", ">= 1"]),
    (["--seed", "-1"], ["--seed"]),
    (["--config.seed=3"], ["make-data takes no config overrides"]),
])
def test_make_data_bad_arguments(tmp_path, capsys, extra, needles):
    out = tmp_path / "d"
    _one_line_error(capsys, cine_cli.main(["make-data", str(out), *extra]), *needles)
    assert not out.exists()  # refused before anything is written


def test_make_data_refuses_existing_folder_without_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["make-data", str(out), "--clips", "1", "--size", "24x16", "--frames", "2", "--views", "1", "--quiet"]
    assert cine_cli.main(args) == 0
    before = (out / "clip_0000" / "depth.npy").read_bytes()
    capsys.readouterr()
    _one_line_error(capsys, cine_cli.main(args[:2] + ["--seed", "1"] + args[2:]), str(out), "--overwrite")
    assert (out / "clip_0000" / "depth.npy").read_bytes() == before
    assert cine_cli.main(args + ["--seed", "1", "--overwrite"]) == 0
    assert (out / "clip_0000" / "depth.npy").read_bytes() != before
    assert not [n for n in os.listdir(out) if "partial" in n]


def test_make_clip_argument_errors():
    with pytest.raises(ValueError, match="size"):
        procedural.make_clip(0, (8, 64))
    with pytest.raises(ValueError, match="frames"):
        procedural.make_clip(0, (32, 32), frames=1)
    with pytest.raises(ValueError, match="views"):
        procedural.make_clip(0, (32, 32), views=0)
    with pytest.raises(ValueError, match="num_clips"):
        procedural.write_dataset("/nonexistent", 0)


# ------------------------------------------------------------------------------ novel views at several times
def test_timed_view_with_zero_offset_is_frame_t():
    clip = procedural.make_clip(5, (40, 56), frames=4, views=2, view_offset=0.0, view_rotation=0.0)
    assert clip["view_times"] == [0, 1, 2, 3]
    assert clip["timed_views"].shape == (2, 4, 40, 56, 3)
    for k in range(2):
        for j, t in enumerate(clip["view_times"]):
            np.testing.assert_array_equal(clip["timed_views"][k, j], clip["frames"][t])
    assert np.abs(clip["frames"][3] - clip["frames"][0]).max() > 0.05  # the river really moved


def test_timed_views_advect_the_river_seen_from_the_offset_camera():
    # translation-only offsets: a river point moving by `speed` metres along world x at view depth z moves
    # fx speed / z pixels along u in the view, so view_t(p) = view_0(p - t fx speed / z(p)) on the river
    # (OpenCV remap, bilinear), and every pixel off the river is unchanged.
    clip = procedural.make_clip(7, SIZE, frames=5, views=2, view_rotation=0.0, view_times=[0, 4])
    scene = clip["scene"]
    fx = scene.K[0, 0]
    for k in range(2):
        r = scene.render(pose=clip["poses"][k], time=0.0)
        water = r["surface"] == 2
        v0, v4 = clip["timed_views"][k, 0], clip["timed_views"][k, 1]
        np.testing.assert_array_equal(v4[~water], v0[~water])
        shift = 4 * fx * scene.water_speed / r["depth"]
        h, w = SIZE
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        warped = cv2.remap(v0, (gx - shift).astype(np.float32), gy, cv2.INTER_LINEAR)
        src = np.round(gx - shift).astype(int)
        inside = (src >= 1) & (src < w - 1)
        src_water = np.zeros_like(water)
        src_water[inside] = water[gy.astype(int)[inside], src[inside]]
        keep = cv2.erode(((water & src_water & inside) * 255).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert keep.sum() > 200
        assert _psnr(warped, v4, keep) > 35.0


def test_view_times_do_not_change_the_scene_and_are_checked():
    a = procedural.make_clip(3, (32, 40), frames=3, views=2)
    b = procedural.make_clip(3, (32, 40), frames=3, views=2, view_times=[2])
    assert b["view_times"] == [0, 2]
    np.testing.assert_array_equal(a["poses"], b["poses"])
    np.testing.assert_array_equal(a["timed_views"][:, [0, 2]], b["timed_views"])
    for bad in ([3], [-1], [1, 1], [], [1.5], [True]):
        with pytest.raises(ValueError, match="view_times"):
            procedural.make_clip(3, (32, 40), frames=3, views=1, view_times=bad)


def test_timed_views_on_disk_and_read_clip(tmp_path):
    clip = procedural.make_clip(4, (32, 40), frames=3, views=2)
    d = procedural.write_clip(clip, tmp_path / "c")
    names = sorted(os.listdir(os.path.join(d, "views")))
    assert names == ["000.png", "000_depth.npy", "000_t001.png", "000_t002.png",
                     "001.png", "001_depth.npy", "001_t001.png", "001_t002.png"]
    got = procedural.read_clip(d)
    assert got["view_times"] == [0, 1, 2]
    assert np.abs(got["timed_views"] - clip["timed_views"]).max() <= 0.5 / 255 + 1e-6
    assert np.abs(got["frames"] - clip["frames"]).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(got["view_depth"], clip["view_depth"])
    np.testing.assert_array_equal(got["mask"], clip["mask"])
    np.testing.assert_allclose(got["poses"], clip["poses"], atol=1e-6)
    # a folder written before timed views existed (no view_times in meta.json, no _tTTT files) still reads
    import json

    meta_path = os.path.join(d, "meta.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    del meta["view_times"]
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    for n in names:
        if "_t" in n:
            os.remove(os.path.join(d, "views", n))
    old = procedural.read_clip(d)
    assert old["view_times"] == [0] and old["timed_views"].shape == (2, 1, 32, 40, 3)
    os.remove(os.path.join(d, "views", "001.png"))
    with pytest.raises(ValueError, match="001.png: file not found"):
        procedural.read_clip(d)
