"""cine_jax.train.clips: real clips -> average Eulerian flow, motion mask, K-means hints.

Synthetic clips are made by advecting a smooth random texture with cv2.remap under a known flow
(frame t samples the texture at the point that the motion carries onto each pixel), so the true
per-frame Eulerian flow is known exactly. Tolerances are stated per test (DIS on these 97x131
clips: ~0.03 px mean error, < 0.15 px max in the interior).
"""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans

from cine_jax import io as cio
from cine_jax.motion import hints_to_flow, parse_hints
from cine_jax.train.clips import eulerian_flow, hints_to_json, motion_mask, read_clip, sample_hints

H, W = 97, 131  # odd, non-square
BORDER = 12  # interior margin: DIS has no data beyond the frame edge, flow there is extrapolated


def _texture(h, w, seed, pad=40):
    t = np.random.default_rng(seed).random((h + 2 * pad, w + 2 * pad, 3)).astype(np.float32)
    t = cv2.GaussianBlur(t, (0, 0), 2.5)
    return (t - t.min()) / (t.max() - t.min()), pad


def _advect(num_frames, source_fn, seed=0):
    """Frame t = texture sampled at source_fn(x, y, t) (where the content now at (x, y) was at t = 0)."""
    tex, pad = _texture(H, W, seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    out = []
    for t in range(num_frames):
        sx, sy = source_fn(xs, ys, t)
        out.append(
            cv2.remap(
                tex,
                (sx + pad).astype(np.float32),
                (sy + pad).astype(np.float32),
                cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_REFLECT,
            )
        )
    return (np.clip(np.stack(out), 0, 1) * 255 + 0.5).astype(np.uint8)


D = np.array([1.5, -0.75])  # constant flow (dx, dy) px/frame


def _constant_clip(num_frames=6, seed=0):
    return _advect(num_frames, lambda x, y, t: (x - t * D[0], y - t * D[1]), seed)


OMEGA = 0.02  # rad/frame, counter-clockwise in image coordinates (y down)
CX, CY = 57.0, 44.0  # off-centre rotation centre


def _rotation_clip(num_frames=6):
    def src(x, y, t):
        c, s = np.cos(-OMEGA * t), np.sin(-OMEGA * t)
        return c * (x - CX) - s * (y - CY) + CX, s * (x - CX) + c * (y - CY) + CY

    return _advect(num_frames, src)


def _rotation_truth():
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    c, s = np.cos(OMEGA), np.sin(OMEGA)
    return np.stack([c * (xs - CX) - s * (ys - CY) + CX - xs, s * (xs - CX) + c * (ys - CY) + CY - ys], -1)


def _interior(a):
    return a[BORDER:-BORDER, BORDER:-BORDER]


# ------------------------------------------------------------------------------------------------
# eulerian_flow


def test_constant_flow_is_recovered():
    flow = eulerian_flow(_constant_clip())
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    err = np.linalg.norm(_interior(flow) - D, axis=-1)
    assert err.max() < 0.15, err.max()  # tolerance: 0.15 px (10% of |D|), measured ~0.06
    assert err.mean() < 0.06, err.mean()


def test_rotational_flow_is_recovered():
    flow = eulerian_flow(_rotation_clip())
    truth = _rotation_truth()
    err = np.linalg.norm(_interior(flow) - _interior(truth), axis=-1)
    # speeds up to ~1.5 px/frame; tolerance 0.25 px max, 0.06 px mean (measured ~0.13 / 0.03)
    assert err.max() < 0.25, err.max()
    assert err.mean() < 0.06, err.mean()


def test_median_ignores_an_outlier_frame():
    # 9 frames; frame 4 is a "flash" (an unrelated texture): pairs (3, 4) and (4, 5) are garbage.
    clip = _constant_clip(num_frames=9)
    clip[4] = _advect(1, lambda x, y, t: (x, y), seed=7)[0]
    flow, pairs = eulerian_flow(clip, return_pairs=True)
    assert pairs.shape == (8, H, W, 2)
    err = np.linalg.norm(_interior(flow) - D, axis=-1)
    assert err.mean() < 0.08, err.mean()
    # the mean over pairs would be visibly wrong here (so this test can tell median from mean)
    mean_err = np.linalg.norm(_interior(pairs.mean(0)) - D, axis=-1).mean()
    assert mean_err > 3 * err.mean(), (mean_err, err.mean())


def test_flow_accepts_float_frames_and_presets():
    clip = _constant_clip(num_frames=3)
    f_uint8 = eulerian_flow(clip)
    np.testing.assert_array_equal(eulerian_flow(clip.astype(np.float32) / 255.0), f_uint8)
    fast = eulerian_flow(clip, preset="fast")
    assert np.linalg.norm(_interior(fast) - D, axis=-1).mean() < 0.2
    with pytest.raises(ValueError, match="preset must be one of"):
        eulerian_flow(clip, preset="slow")
    with pytest.raises(ValueError, match="at least 2 frames"):
        eulerian_flow(clip[:1])
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        eulerian_flow(clip[0])


# ------------------------------------------------------------------------------------------------
# motion_mask


def test_motion_mask_threshold_is_exact():
    # speeds laid out by hand, all binary fractions so the mean and threshold are exact: sum 40 over
    # 20 pixels -> mean 2.0; ratio 0.5 -> threshold exactly 1.0 (pixels at speed 1 move, 0.5 does not)
    flow = np.zeros((4, 5, 2), np.float32)
    flow[0, :, 0] = [0.0, 0.5, 1.0, 8.0, 16.0]
    flow[1, :, 1] = [-13.5, 0.0, 0.0, 0.0, 0.0]
    flow[2, 0] = [0.0, -1.0]
    m = motion_mask(flow, ratio=0.5)
    expected = np.zeros((4, 5), bool)
    expected[0, 2:] = True
    expected[1, 0] = True
    expected[2, 0] = True
    np.testing.assert_array_equal(m, expected)
    # default ratio 0.1: threshold 0.2, so every pixel with speed > 0 moves
    np.testing.assert_array_equal(motion_mask(flow), np.linalg.norm(flow, axis=-1) > 0)


def test_motion_mask_on_a_clip_where_only_a_region_moves():
    moving = _constant_clip(num_frames=6, seed=1)
    static = _advect(1, lambda x, y, t: (x, y), seed=2)[0]
    region = np.zeros((H, W), bool)
    region[30:70, 40:100] = True
    clip = np.where(region[None, :, :, None], moving, static[None])
    flow = eulerian_flow(clip)
    mask = motion_mask(flow)
    # every moving pixel is in the mask; outside, DIS's coarse-to-fine pyramid bleeds motion into
    # the static surround (measured median speed 0.46 px/frame 1 px out, 0.026 at 12 px, 0.006 at
    # 16 px, against a threshold of 0.1 x mean speed = 0.027): beyond 16 px the mask is exact
    np.testing.assert_array_equal(mask[region], True)
    dist = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 5)
    far = dist > 16
    np.testing.assert_array_equal(mask[far], False)
    assert far.sum() > 0.4 * H * W
    # the region's flow is the true one 14+ px from its outline (DIS smooths across motion
    # boundaries: measured median error 0.85 px at 2 px in, 0.35 at 6, 0.14 at 14); tolerance 0.25 px
    inner = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5) >= 14
    assert np.linalg.norm(flow[inner] - D, axis=-1).max() < 0.25


def test_motion_mask_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        motion_mask(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        motion_mask(np.full((2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="ratio"):
        motion_mask(np.zeros((2, 2, 2)), ratio=-1)


# ------------------------------------------------------------------------------------------------
# sample_hints


def _two_blobs():
    ys, xs = np.mgrid[0:H, 0:W]
    a = (xs - 30) ** 2 + (ys - 25) ** 2 <= 12**2
    b = (xs - 95.5) ** 2 + (ys - 70.5) ** 2 <= 10**2  # centre between pixels
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 0.01 * xs - 0.5
    flow[..., 1] = 0.02 * ys + 0.25
    return a, b, flow


def test_hints_on_two_blobs_match_sklearn():
    a, b, flow = _two_blobs()
    mask = a | b
    hints = sample_hints(flow, mask, np.random.default_rng(3), k_range=(2, 2))
    assert len(hints) == 2
    rows, cols = np.nonzero(mask)
    ref = KMeans(n_clusters=2, n_init=4, random_state=0).fit(np.stack([cols, rows], 1).astype(float))
    centres = sorted(map(tuple, ref.cluster_centers_))
    # closed form too: each blob's pixel centroid
    for blob, c in zip((a, b), centres):
        r, q = np.nonzero(blob)
        np.testing.assert_allclose(c, (q.mean(), r.mean()), atol=1e-9)
    for h, c in zip(sorted(hints, key=lambda h: h.start), centres):
        # the start is the moving pixel nearest to the centre: within half a pixel per axis
        assert np.all(np.abs(np.subtract(h.start, c)) <= 0.5 + 1e-9), (h.start, c)
        x, y = int(h.start[0]), int(h.start[1])
        assert (x, y) == h.start and mask[y, x]
        np.testing.assert_array_equal(h.vector, flow[y, x].astype(np.float64))
        np.testing.assert_allclose(np.subtract(h.end, h.start), 50 * np.asarray(h.vector), rtol=1e-12)


def test_hints_count_in_range_inside_mask_and_deterministic():
    flow = _rotation_truth().astype(np.float32)
    ring = np.linalg.norm(flow, axis=-1)
    mask = (ring > 0.4) & (ring < 0.8)  # a non-convex (ring-shaped) moving region
    counts = set()
    for seed in range(12):
        hints = sample_hints(flow, mask, seed, k_range=(1, 5))
        assert 1 <= len(hints) <= 5
        counts.add(len(hints))
        for h in hints:
            x, y = int(h.start[0]), int(h.start[1])
            assert mask[y, x], h.start
            np.testing.assert_array_equal(h.vector, flow[y, x].astype(np.float64))
        again = sample_hints(flow, mask, np.random.default_rng(seed), k_range=(1, 5))
        assert again == hints
    assert len(counts) >= 3  # K is really drawn, not fixed
    assert sample_hints(flow, mask, 0) != sample_hints(flow, mask, 1)
    # subsampled K-means (max_points) still puts every hint in the mask
    for h in sample_hints(flow, mask, 5, k_range=(4, 4), max_points=50):
        assert mask[int(h.start[1]), int(h.start[0])]


def test_hints_are_sklearn_kmeans_with_the_seed_drawn_from_rng():
    # non-convex ring, K = 3: the K-means solution depends on the seed, so this pins the contract
    # "K, then random_state, drawn from rng; start = moving pixel nearest each centre, in cluster order"
    flow = _rotation_truth().astype(np.float32)
    speed = np.linalg.norm(flow, axis=-1)
    mask = (speed > 0.4) & (speed < 0.8)
    for seed in (0, 11):
        draw = np.random.default_rng(seed)
        k = int(draw.integers(3, 4))
        state = int(draw.integers(0, 2**31 - 1))
        rows, cols = np.nonzero(mask)
        pts = np.stack([cols, rows], 1).astype(float)
        ref = KMeans(n_clusters=k, n_init=4, random_state=state).fit(pts).cluster_centers_
        want = [tuple(pts[np.argmin(((pts - c) ** 2).sum(1))]) for c in ref]  # brute-force nearest pixel
        got = [h.start for h in sample_hints(flow, mask, np.random.default_rng(seed), k_range=(3, 3))]
        assert got == want


def test_hints_feed_motion_and_round_trip_through_the_hints_json(tmp_path):
    a, b, flow = _two_blobs()
    hints = sample_hints(flow, a | b, 0, k_range=(2, 2))
    starts, vectors = parse_hints(hints)
    np.testing.assert_array_equal(starts, [h.start for h in hints])
    dense = np.asarray(hints_to_flow(hints, None, (H, W), sigma=5.0))
    for h in hints:  # at a hint's start with a narrow kernel, the dense flow is that hint's vector
        np.testing.assert_allclose(dense[int(h.start[1]), int(h.start[0])], h.vector, atol=1e-4)
    path = tmp_path / "hints.json"
    path.write_text(json.dumps(hints_to_json(hints, (H, W), frames=10)))
    ann = cio.load_annotations(str(path), (H, W), (H, W))
    for got, want in zip(ann.hints, hints):
        np.testing.assert_allclose(got.start, want.start, atol=1e-9)
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-9)


def test_sample_hints_rejects_bad_input():
    a, b, flow = _two_blobs()
    with pytest.raises(ValueError, match="no moving pixel"):
        sample_hints(flow, np.zeros((H, W), bool), 0)
    with pytest.raises(ValueError, match="mask must have shape"):
        sample_hints(flow, a[:10], 0)
    with pytest.raises(ValueError, match="k_range"):
        sample_hints(flow, a, 0, k_range=(3, 1))
    with pytest.raises(ValueError, match="k_range"):
        sample_hints(flow, a, 0, k_range=(0, 2))
    with pytest.raises(ValueError, match="0/1"):
        sample_hints(flow, a * 0.5, 0)
    with pytest.raises(ValueError, match="rng"):
        sample_hints(flow, a, "seed")
    # K is capped at the number of moving pixels
    one = np.zeros((H, W), bool)
    one[5, 7] = True
    (h,) = sample_hints(flow, one, 0, k_range=(3, 5))
    assert h.start == (7.0, 5.0)


# ------------------------------------------------------------------------------------------------
# read_clip


def _write_frames(folder, frames, names):
    os.makedirs(folder, exist_ok=True)
    for f, n in zip(frames, names):
        Image.fromarray(f).save(os.path.join(folder, n))


def test_read_clip_folder_in_natural_order(tmp_path):
    clip = _constant_clip(num_frames=3)[:, :20, :30]
    folder = tmp_path / "clip"
    _write_frames(folder, clip, ["f10.png", "f2.png", "f9.png"])  # natural order: f2, f9, f10
    (folder / "notes.txt").write_text("not a frame")
    got = read_clip(folder)
    assert got.dtype == np.uint8 and got.shape == (3, 20, 30, 3)
    np.testing.assert_array_equal(got, clip[[1, 2, 0]])
    np.testing.assert_array_equal(read_clip(str(folder), max_frames=2), clip[[1, 2]])


def test_read_clip_video(tmp_path):
    clip = _constant_clip(num_frames=5)
    path = tmp_path / "clip.mp4"
    cio.write_video(str(path), clip, fps=10, quality=10)
    got = read_clip(path)
    # write_video pads odd sides to even (yuv420p): the file holds (H + 1) x (W + 1) frames
    assert got.shape == (5, H + 1, W + 1, 3) and got.dtype == np.uint8
    # lossy H.264 with 4:2:0 chroma on a colourful texture: measured 4.3 grey levels mean error
    assert np.abs(got[:, :H, :W].astype(float) - clip).mean() < 6.0
    flow = eulerian_flow(got[:, :H, :W])
    assert np.linalg.norm(_interior(flow) - D, axis=-1).mean() < 0.1


def test_read_clip_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope: clip not found"):
        read_clip(tmp_path / "nope")
    one = tmp_path / "one"
    _write_frames(one, np.zeros((1, 8, 8, 3), np.uint8), ["a.png"])
    with pytest.raises(ValueError, match=r"one: a clip needs at least 2 frames, found 1"):
        read_clip(one)
    mixed = tmp_path / "mixed"
    _write_frames(mixed, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], ["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"b\.png: frame size 9x8 differs from the first frame's 8x8"):
        read_clip(mixed)
    broken = tmp_path / "broken"
    _write_frames(broken, np.zeros((1, 8, 8, 3), np.uint8), ["a.png"])
    (broken / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"b\.png: not a readable image"):
        read_clip(broken)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=r"bad\.mp4: cannot read the video"):
        read_clip(bad_video)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4: the file is empty"):
        read_clip(empty)
    with pytest.raises(ValueError, match="max_frames"):
        read_clip(one, max_frames=1)
