"""Tests for cine_jax/layering.py: depth bins, OpenCV inpainting, discontinuity refinement, LDI."""

import cv2
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering

from cine_jax import layering as ly

# ------------------------------------------------------------------------------------- references


def recipe_edges(depth, threshold=5.0, s=10, n_clusters=None):
    """The documented official recipe, written out directly with scikit-learn."""
    depth = depth.astype(np.float64)
    disp = 1.0 / depth[::s, ::s].ravel()
    lo, hi = disp.min(), disp.max()
    x = (disp - lo) / (hi - lo)
    kw = dict(n_clusters=n_clusters) if n_clusters else dict(n_clusters=None, distance_threshold=threshold)
    labels = AgglomerativeClustering(**kw).fit(x[:, None]).labels_
    edges = [depth.min()] + [1.0 / (x[labels == k].min() * (hi - lo) + lo) for k in np.unique(labels)]
    edges = np.sort(edges)
    edges[0], edges[-1] = depth.min() - 1e-6, depth.max() + 1e-6
    return edges


def brute_masked_median(depth, alpha, k):
    """Loop reference: in the band where the k x k (clipped) window is not all alpha, the lower median
    of the alpha pixels' depths in the window; unchanged if the window holds no alpha pixel."""
    h, w = depth.shape
    r = k // 2
    out = depth.astype(np.float32).copy()
    for i in range(h):
        for j in range(w):
            win = (slice(max(i - r, 0), i + r + 1), slice(max(j - r, 0), j + r + 1))
            m = alpha[win] > 0.5
            if m.all() or not m.any():
                continue
            vals = np.sort(depth[win][m])
            out[i, j] = vals[(len(vals) - 1) // 2]
    return out


def two_plane_scene(h=64, w=64):
    """A near red square (depth 2) in front of a far plane (depth 10) with a smooth colour gradient."""
    yy, xx = np.mgrid[0:h, 0:w] / (w - 1.0)
    far_rgb = np.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * xx * yy], -1).astype(np.float32)
    img = far_rgb.copy()
    depth = np.full((h, w), 10.0, np.float32)
    sq = (slice(h * 11 // 32, h * 21 // 32), slice(w * 11 // 32, w * 21 // 32))  # 22:42 at 64 x 64
    img[sq] = [0.9, 0.1, 0.1]
    depth[sq] = 2.0
    return img, depth, far_rgb, sq


def three_cluster_depth(rng, h=40, w=60):
    """Depth with three well separated clusters (1-1.2, 3-3.5, 30-32) in vertical bands."""
    depth = np.empty((h, w))
    depth[:, :20] = rng.uniform(1.0, 1.2, (h, 20))
    depth[:, 20:40] = rng.uniform(3.0, 3.5, (h, 20))
    depth[:, 40:] = rng.uniform(30.0, 32.0, (h, 20))
    return depth.astype(np.float32)


# ------------------------------------------------------------------------------------- depth bins


def test_depth_bins_matches_sklearn_recipe_on_three_clusters(rng):
    depth = three_cluster_depth(rng)
    edges = ly.depth_bins(depth, distance_threshold=5.0, subsample=1)
    np.testing.assert_allclose(edges, recipe_edges(depth, 5.0, 1), rtol=1e-12)
    assert len(edges) == 4  # 3 layers
    idx = ly.bin_indices(depth, edges)
    np.testing.assert_array_equal(idx[:, :20], 0)
    np.testing.assert_array_equal(idx[:, 20:40], 1)
    np.testing.assert_array_equal(idx[:, 40:], 2)
    assert depth[:, :20].max() <= edges[1] < depth[:, 20:40].min()  # edges separate the clusters
    assert depth[:, 20:40].max() <= edges[2] < depth[:, 40:].min()


def test_depth_bins_max_layers_cuts_the_same_ward_tree(rng):
    yy = np.linspace(0, 1, 40)[:, None] * np.ones((1, 40))
    depth = (1.0 / (1.0 - 0.9 * yy) + 0.01 * rng.uniform(size=(40, 40))).astype(np.float32)
    full = ly.depth_bins(depth, subsample=1)
    assert len(full) - 1 == 3  # measured: a 40 x 40 disparity ramp gives 3 Ward clusters at t = 5
    cut = ly.depth_bins(depth, subsample=1, max_layers=2)
    np.testing.assert_allclose(cut, recipe_edges(depth, s=1, n_clusters=2), rtol=1e-12)
    assert len(cut) == 3 and set(np.round(cut, 9)) <= set(np.round(full, 9))
    np.testing.assert_array_equal(ly.depth_bins(depth, subsample=1, max_layers=8), full)


def test_ward_layer_count_grows_with_image_size():
    counts = []
    for n in (20, 40, 80):
        yy = np.linspace(0, 1, n)[:, None] * np.ones((1, n))
        counts.append(len(ly.depth_bins(1.0 / (1.0 - 0.9 * yy), subsample=1)) - 1)
    assert counts == [2, 3, 4], counts  # same scene, more pixels -> larger Ward distances -> more bins


def test_depth_bins_constant_and_errors():
    np.testing.assert_allclose(ly.depth_bins(np.full((8, 8), 3.0)), [3.0 - 1e-6, 3.0 + 1e-6])
    with pytest.raises(ValueError, match="depth: contains NaN"):
        ly.depth_bins(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="subsample"):
        ly.depth_bins(np.ones((4, 4)), subsample=0)


# ------------------------------------------------------------------------------------- inpainting


def test_opencv_inpainter_matches_cv2_and_ignores_non_context_pixels(rng):
    img, depth, far_rgb, sq = two_plane_scene()
    context = depth > 5.0
    holes = np.zeros_like(context)
    holes[20:44, 20:44] = True
    holes &= ~context  # the square; context = far plane
    from configs import cinemagraph

    lc = cinemagraph.get_config().layering
    lc.inpaint_radius = 5
    inp = ly.get_inpainter("opencv", config=lc, seed=0)
    assert inp.radius == 5
    rgb_f, d_f = inp(img, depth, context, holes)
    ref = cv2.inpaint(np.round(img * 255).astype(np.uint8), (~context).astype(np.uint8), 5,
                      cv2.INPAINT_TELEA).astype(np.float32) / 255
    np.testing.assert_allclose(rgb_f[holes], ref[holes], atol=1.5 / 255)
    np.testing.assert_array_equal(rgb_f[context], img[context])
    np.testing.assert_allclose(d_f[holes], 10.0, rtol=1e-4)  # background depth, never the square's 2
    # Pixels in neither mask (here a ring of "foreground" around the hole) must not leak into the fill.
    ring = np.zeros_like(context)
    ring[16:48, 16:48] = True
    ring &= ~holes
    ctx2 = context & ~ring
    img_a, img_b = img.copy(), img.copy()
    img_a[ring], img_b[ring] = 0.0, 1.0
    d_a, d_b = depth.copy(), depth.copy()
    d_a[ring], d_b[ring] = 0.5, 50.0
    fa, da = inp(img_a, d_a, ctx2, holes)
    fb, db = inp(img_b, d_b, ctx2, holes)
    np.testing.assert_array_equal(fa[holes], fb[holes])
    np.testing.assert_array_equal(da[holes], db[holes])
    np.testing.assert_allclose(da[holes], 10.0, rtol=1e-4)


def test_inpainter_registry_and_errors():
    with pytest.raises(ValueError, match="unknown inpainter 'lama'.*opencv"):
        ly.get_inpainter("lama")
    with pytest.raises(ValueError, match="unknown method"):
        ly.OpenCVInpainter(method="magic")
    inp = ly.OpenCVInpainter(method="ns")
    assert isinstance(inp, ly.Inpainter)
    img, depth, _, _ = two_plane_scene(16, 16)
    with pytest.raises(ValueError, match="context is empty"):
        inp(img, depth, np.zeros((16, 16), bool), np.ones((16, 16), bool))
    with pytest.raises(ValueError, match="holes: expected shape"):
        inp(img, depth, np.ones((16, 16), bool), np.ones((8, 8), bool))


# ------------------------------------------------------------------------------------- refinement


@pytest.mark.parametrize("k", [3, 5])
def test_refine_near_depth_discontinuity_matches_brute_force(rng, k):
    depth = rng.uniform(1.0, 9.0, (9, 12)).astype(np.float32)
    alpha = (rng.uniform(size=(9, 12)) > 0.4).astype(np.float32)
    alpha[:4, :5] = 1.0  # a solid block so the erosion is not empty
    alpha[6:, 8:] = 0.0  # and an empty one so some windows hold no alpha pixel
    got = ly.refine_near_depth_discontinuity(depth, alpha, ksize=k, chunk=7)
    np.testing.assert_array_equal(got, brute_masked_median(depth, alpha, k))
    assert np.sum(got != depth) > 10  # the refinement actually changed pixels


def test_refine_errors():
    with pytest.raises(ValueError, match="alpha: expected shape"):
        ly.refine_near_depth_discontinuity(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="ksize"):
        ly.refine_near_depth_discontinuity(np.ones((4, 4)), np.ones((4, 4)), ksize=4)


# ------------------------------------------------------------------------------------- LDI


def test_build_ldi_two_plane_scene():
    img, depth, far_rgb, sq = two_plane_scene()
    edges = ly.depth_bins(depth, subsample=2)
    ldi = ly.build_ldi(img, depth, edges, ly.OpenCVInpainter(radius=5))
    assert ldi.num_layers == 2 and ldi.rgba.shape == (2, 64, 64, 4) and ldi.edges.shape == (3,)
    # Visibility partitions the image; layer 0 is exactly the square.
    np.testing.assert_array_equal(ldi.visible.sum(0), 1)
    expected0 = np.zeros((64, 64), bool)
    expected0[sq] = True
    np.testing.assert_array_equal(ldi.visible[0], expected0)
    np.testing.assert_array_equal(ldi.rgba[0, ..., 3], expected0)
    # The far layer is complete behind the square, with the far texture and the far depth.
    assert ldi.rgba[1, ..., 3].min() == 1.0
    err = np.abs(ldi.rgba[1][sq][..., :3] - far_rgb[sq])
    assert err.mean() < 0.05, err.mean()  # measured 0.024 (max 0.095)
    np.testing.assert_allclose(ldi.depth[1][sq], 10.0, rtol=0.05)
    # Visible pixels keep the input colour: compositing the visible layers gives back the image.
    recon = np.einsum("lhw,lhwc->hwc", ldi.visible.astype(np.float32), ldi.rgba[..., :3])
    np.testing.assert_array_equal(recon, img)
    assert np.all(np.isfinite(ldi.depth)) and ldi.depth.min() > 0


def test_build_ldi_three_planes_orders_layers_and_partitions(rng):
    h, w = 72, 72
    img = np.clip(0.5 + 0.1 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)
    img = cv2.GaussianBlur(img, (5, 5), 1.5)
    img[26:46, 26:46] = [0.9, 0.1, 0.1]
    depth = np.full((h, w), 20.0, np.float32)
    depth[8:64, 8:64] = 3.0  # mid plane, far enough from 20 in disparity for Ward at this size
    depth[26:46, 26:46] = 1.5  # near block entirely in front of the mid plane
    depth[60:70, 2:12] = 1.5  # and a second near block straddling the mid plane's corner
    depth += 0.01 * rng.uniform(size=(h, w)).astype(np.float32)
    edges = ly.depth_bins(depth, subsample=2)
    ldi = ly.build_ldi(img, depth, edges, ly.OpenCVInpainter())
    assert ldi.num_layers == 3
    np.testing.assert_array_equal(ldi.visible.sum(0), 1)
    np.testing.assert_array_equal(ldi.visible.argmax(0), ly.bin_indices(depth, ldi.edges))
    # Where two layers both have alpha, the farther layer is strictly behind.
    a = ldi.rgba[..., 3] > 0
    for i in range(3):
        for j in range(i + 1, 3):
            both = a[i] & a[j]
            assert np.all(ldi.depth[j][both] > ldi.depth[i][both])
    # The mid layer is complete behind the central near block, at the mid plane's depth ...
    assert ldi.rgba[1, 26:46, 26:46, 3].min() == 1.0
    # (Edges come from the [::2, ::2] subsample, as in the official code, so the few block pixels
    # deeper than the subsampled cluster maximum fall into bin 1 and are visible there: skip them.)
    hidden = ~ldi.visible[1, 26:46, 26:46]
    assert hidden.sum() > 390
    np.testing.assert_allclose(ldi.depth[1, 26:46, 26:46][hidden], 3.0, rtol=0.01)
    # ... and the far layer is complete behind the mid plane (every pixel within the 40 px band of its
    # outline), except behind the central block: that block touches only the mid plane, so the far plane
    # there is hidden twice over (the mid layer's hidden content covers it) and is not inpainted.
    far = ldi.rgba[2, ..., 3] == 1.0
    block = np.zeros((h, w), bool)
    block[26:46, 26:46] = True
    assert far[~block].all() and not far[block].any()
    assert np.all(ldi.depth[2] >= 0.9 * ldi.edges[2])
    # Colour behind the near block is the mid plane's (smooth noise around 0.5), not the block's.
    assert np.abs(ldi.rgba[1, 26:46, 26:46, :3][hidden] - 0.5).max() < 0.1


def test_small_bins_are_merged_not_lost():
    img, depth, _, _ = two_plane_scene(32, 32)
    depth = depth.copy()
    depth[2, 2] = 5.0  # a single mid-depth pixel: its own bin is too small after erosion
    edges = np.array([1.9, 2.5, 6.0, 10.5])
    ldi = ly.build_ldi(img, depth, edges, ly.OpenCVInpainter())
    np.testing.assert_allclose(ldi.edges, [1.9, 6.0, 10.5])  # edge 2.5 between bins 0 and 1 removed
    assert ldi.visible[0, 2, 2] and ldi.rgba[0, 2, 2, 3] == 1.0  # merged into the nearer layer
    np.testing.assert_array_equal(ldi.visible.sum(0), 1)


def test_build_ldi_errors():
    img, depth, _, _ = two_plane_scene(16, 16)
    inp = ly.OpenCVInpainter()
    edges = np.array([1.0, 5.0, 11.0])
    with pytest.raises(ValueError, match="depth: shape .* does not match image"):
        ly.build_ldi(img, depth[:8], edges, inp)
    bad = depth.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="depth: contains NaN"):
        ly.build_ldi(img, bad, edges, inp)
    with pytest.raises(ValueError, match="edges: must be strictly increasing"):
        ly.build_ldi(img, depth, edges[::-1], inp)
    with pytest.raises(ValueError, match="inpainter"):
        ly.build_ldi(img, depth, edges, "opencv")


def test_pad_to_and_previews():
    img, depth, _, _ = two_plane_scene(24, 24)
    ldi = ly.build_ldi(img, depth, ly.depth_bins(depth, subsample=1), ly.OpenCVInpainter())
    padded = ldi.pad_to(4)
    assert padded.num_layers == 4 and padded.edges.shape == (5,)
    np.testing.assert_array_equal(padded.rgba[:2], ldi.rgba)
    assert np.all(padded.rgba[2:] == 0) and not padded.visible[2:].any()
    assert np.all(padded.depth[2:] == np.float32(ldi.edges[-1])) and padded.depth.min() > 0
    with pytest.raises(ValueError, match="more than max_layers=1"):
        ldi.pad_to(1)
    previews = ly.layer_previews(ldi)
    assert len(previews) == 2 and previews[0].shape == (24, 48, 3)
    # Where alpha is 1 the left half is exactly the layer colour.
    on = ldi.rgba[0, ..., 3] == 1
    np.testing.assert_allclose(previews[0][:, :24][on], ldi.rgba[0, ..., :3][on], atol=1e-6)
    assert np.all(previews[0][:, 24:][~on] == 0)  # depth colour is black outside the layer


# ------------------------------------------------------------------------------------- issue 7 item 3


def slanted_ground(h=64, w=80):
    """A ground plane seen by a level camera (disparity linear in the row: z from 1.2 to ~12), textured;
    Ward cuts it into several bins although it is one continuous surface."""
    v = np.arange(h, dtype=np.float64)[:, None]
    z = np.broadcast_to(1.0 / (0.08 + 0.75 * v / h), (h, w)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([0.5 + 0.3 * np.sin(xx / 5.0), 0.5 + 0.3 * np.cos(yy / 4.0), 0.4 + 0.0 * xx], -1)
    return img.astype(np.float32), z


def test_continuous_surface_cut_into_bins_gets_no_hidden_content():
    img, z = slanted_ground()
    edges = ly.depth_bins(z, subsample=2)
    assert len(edges) - 1 >= 2  # the ground is cut into several bins
    ldi = ly.build_ldi(img, z, edges, ly.OpenCVInpainter())
    assert ldi.num_layers >= 2
    # no depth edge anywhere: every layer holds exactly its visible pixels, so nothing of a back layer
    # exists where the front surface is (before: a 40 px band of each far layer was inpainted under it)
    np.testing.assert_array_equal(ldi.rgba[..., 3] > 0.5, ldi.visible)
    np.testing.assert_array_equal(ldi.depth[ldi.visible], np.broadcast_to(z, ldi.visible.shape)[ldi.visible])
    assert not ly.depth_edge_masks(z, 0.04)[1].any()


def test_band_behind_occluder_is_what_the_camera_reveals():
    # a near square (depth 2) on a far plane (10); the far layer is inpainted only in a band of
    # `reveal_width` pixels inside the square's silhouette, and the square's interior stays empty
    img, depth, far_rgb, sq = two_plane_scene(64, 64)  # square rows/cols 22..41
    edges = np.array([1.9, 6.0, 10.5])
    calls = []

    def reveal(layer, uv, z_front, z_back):
        calls.append((layer, len(uv), float(z_front.min()), float(z_back.max())))
        return 5.0

    ldi = ly.build_ldi(img, depth, edges, ly.OpenCVInpainter(), reveal_width=reveal)
    assert calls == [(1, 4 * 20 - 4, 2.0, 10.0)]  # one call: the square's outline pixels, depths 2 and 10
    hidden = (ldi.rgba[1, ..., 3] > 0.5) & ~ldi.visible[1]
    ii, jj = np.mgrid[0:64, 0:64]
    # Euclidean distance to the outline (pixels of the square next to the far plane)
    inner = np.minimum.reduce([ii - 22, 41 - ii, jj - 22, 41 - jj])
    in_sq = np.zeros((64, 64), bool)
    in_sq[sq] = True
    np.testing.assert_array_equal(hidden[in_sq & (inner <= 4)], True)
    np.testing.assert_array_equal(hidden[in_sq & (inner >= 6)], False)
    assert not hidden[~in_sq].any()
    # hidden content is behind the front and has the far plane's colour and depth
    np.testing.assert_allclose(ldi.depth[1][hidden], 10.0, rtol=0.05)
    assert np.abs(ldi.rgba[1][hidden][:, :3] - far_rgb[hidden]).mean() < 0.06
    # a static camera over a static scene reveals nothing: no hidden pixel at all
    still = ly.build_ldi(img, depth, edges, ly.OpenCVInpainter(), reveal_width=0.0)
    np.testing.assert_array_equal(still.rgba[..., 3] > 0.5, still.visible)


def test_hidden_content_only_behind_occluders_in_a_metric_scene():
    # River scene (exact depth): the ground and river form one continuous surface from 2.6 m to the
    # backdrop, cut into several depth bins; a disc and a post occlude it. Hidden (inpainted) pixels may
    # only lie on the occluders, never on the nearer part of the ground next to a contour.
    from cine_jax import synthetic

    r = synthetic.river_scene(72, 96, disc=True, post=True).render()
    edges = ly.depth_bins(r["depth"], subsample=2)
    ldi = ly.build_ldi(r["image"], r["depth"], edges, ly.OpenCVInpainter(), reveal_width=12.0)
    assert ldi.num_layers >= 3
    hidden = ((ldi.rgba[..., 3] > 0.5) & ~ldi.visible).any(0)
    occluder = r["surface"] >= 3
    assert hidden.sum() > 100
    assert not (hidden & ~occluder).any(), int((hidden & ~occluder).sum())
