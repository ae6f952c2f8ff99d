"""Depth bins, inpainting and the layered depth image (LDI) of 3D cinemagraphy (stages 1-2).

Follows the official implementation (xingyi-li/3d-cinemagraphy, lib/model/inpaint/depth_layering.py
get_depth_bins and lib/model/inpaint/inpainter.py sequential_inpainting; facts in
shared/reference/cinemagraphy.md §2), with OpenCV inpainting standing in for the 3D-Photo networks
behind the `Inpainter` interface. Host-side NumPy/OpenCV/scikit-learn preprocessing, run once per image;
`LDI.pad_to` gives the static shapes the jitted stages need.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from cine_jax.depth import validate_depth, validate_image
from cine_jax.registry import Registry

__all__ = [
    "LDI",
    "Inpainter",
    "OpenCVInpainter",
    "bin_indices",
    "build_ldi",
    "depth_bins",
    "across_depth_edge",
    "depth_edge_masks",
    "occlusion_fronts",
    "get_inpainter",
    "layer_previews",
    "refine_near_depth_discontinuity",
    "register_inpainter",
]


# ---------------------------------------------------------------------------------------------------
# Depth bins
# ---------------------------------------------------------------------------------------------------


def _cut_tree(children, n_leaves, n_clusters):
    """Cluster labels [n_leaves] of a merge tree cut at `n_clusters` (first n_leaves - k merges applied).

    `children` [n_leaves - 1, 2] is scikit-learn's `children_` (node n_leaves + m is merge m); Ward
    merge heights increase with m, so applying the first merges equals sklearn's own cut.
    """
    parent = np.arange(2 * n_leaves - 1)
    for m in range(n_leaves - n_clusters):
        parent[children[m]] = n_leaves + m
    # Follow parents to the root of each leaf (depth <= n merges; vectorised pointer jumping).
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    _, labels = np.unique(root[:n_leaves], return_inverse=True)
    return labels


def depth_bins(depth, distance_threshold=5.0, subsample=10, max_layers=None):
    """Ascending depth edges [L + 1] (float64) splitting `depth` [H, W] into L layers, as the official
    get_depth_bins.

    Recipe: disparity = 1 / depth subsampled [::s, ::s], min-max normalised to [0, 1]; scikit-learn
    AgglomerativeClustering(n_clusters=None, distance_threshold=t) with Ward linkage on the values;
    each cluster's edge is 1 / (min disparity of the cluster) de-normalised, i.e. the cluster's farthest
    depth; edges = sorted([depth.min()] + cluster edges), then the first and last are replaced by
    depth.min() - 1e-6 and depth.max() + 1e-6 so every pixel falls in a bin
    (edge_i < z <= edge_i+1, see `bin_indices`).

    The Ward merge height of two clusters grows like sqrt(n1 n2 / (n1 + n2)) times their centroid
    gap, so the number of layers grows with the image size (for a fixed subsample): the same scene
    at twice the resolution usually gets more layers. A constant depth map gives one layer. Edges come
    from the subsample only (as official), so a full-resolution pixel deeper than its cluster's
    subsampled maximum falls into the next bin (a few pixels per cluster on noisy depth).

    max_layers: if the threshold gives more than `max_layers` clusters, the same Ward tree is cut at
    `max_layers` clusters instead (the last merges are undone up to that count, so the closest
    clusters by Ward distance are merged and the remaining edges are a subset of the unmerged ones).
    """
    from sklearn.cluster import AgglomerativeClustering

    z = validate_depth(depth, "depth").astype(np.float64)
    if subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    if max_layers is not None and max_layers < 1:
        raise ValueError(f"max_layers must be >= 1 or None, got {max_layers}")
    zmin, zmax = z.min(), z.max()
    disp = 1.0 / z[::subsample, ::subsample].reshape(-1)
    lo, hi = disp.min(), disp.max()
    if hi <= lo or disp.size < 2:
        return np.array([zmin - 1e-6, zmax + 1e-6])
    x = ((disp - lo) / (hi - lo))[:, None]
    model = AgglomerativeClustering(n_clusters=None, distance_threshold=distance_threshold).fit(x)
    labels = model.labels_
    if max_layers is not None and labels.max() + 1 > max_layers:
        labels = _cut_tree(model.children_, x.shape[0], max_layers)
    k = labels.max() + 1
    mins = np.full(k, np.inf)
    np.minimum.at(mins, labels, x[:, 0])
    cluster_edges = 1.0 / (mins * (hi - lo) + lo)
    edges = np.sort(np.concatenate([[zmin], cluster_edges]))
    edges[0] = zmin - 1e-6
    edges[-1] = zmax + 1e-6
    return edges


def bin_indices(depth, edges):
    """Layer index [H, W] int32 of each pixel: i with edges[i] < depth <= edges[i+1], clipped to bins.

    Bins are right-closed because a cluster's edge is its farthest depth: the pixels at exactly that
    depth belong to the cluster (the official half-open test sends them to the next bin; this only
    differs for pixels exactly on an edge, e.g. a constant-depth plane).
    """
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e, np.asarray(depth, dtype=np.float64), side="left") - 1
    return np.clip(idx, 0, len(e) - 2).astype(np.int32)


def _validate_edges(edges):
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"edges: expected a 1-D array of at least 2 depth edges, got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError("edges: contains NaN or inf")
    if np.any(np.diff(e) <= 0):
        raise ValueError(f"edges: must be strictly increasing, got {e}")
    return e


# ---------------------------------------------------------------------------------------------------
# Inpainting
# ---------------------------------------------------------------------------------------------------


@runtime_checkable
class Inpainter(Protocol):
    """Fills `holes` of an RGB-D layer from its `context` pixels.

    __call__(rgb [H, W, 3] float32 in [0, 1], depth [H, W] float32 > 0, context [H, W] bool,
             holes [H, W] bool) -> (rgb [H, W, 3], depth [H, W]).
    Hole pixels get values derived from context pixels only (never from pixels in neither mask);
    context pixels are returned unchanged; other pixels are unspecified (callers ignore them).
    """

    def __call__(self, rgb: np.ndarray, depth: np.ndarray, context: np.ndarray,
                 holes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class OpenCVInpainter:
    """Classical inpainting with cv2.inpaint (Telea 2004 fast marching, or Navier-Stokes).

    Colour: cv2.inpaint on the 8-bit RGB (quantisation error <= 0.5/255). Depth: cv2.inpaint on the
    log-depth (the official depth net also works on log depth), min-max normalised over the context
    and quantised to uint16 (step (range of log z) / 65535, i.e. a relative depth error < 1e-4 for a
    1000:1 range), so filled depth interpolates depth ratios, stays inside the context's depth range and
    positive. uint16 rather than float32 because OpenCV 5.0's float32 Telea is unstable (measured: a
    linear log-depth ramp in [1.70, 1.97] filled with values from 0.49 to 3.25).
    Every non-context pixel is marked unknown for OpenCV (which treats all unmasked pixels as sources),
    so foreground pixels outside the holes never leak into the fill: a hidden background region takes
    the BACKGROUND's colour and depth.
    """

    def __init__(self, radius=5, method="telea"):
        methods = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
        if method not in methods:
            raise ValueError(f"OpenCVInpainter: unknown method {method!r}; use one of {sorted(methods)}")
        if radius < 1:
            raise ValueError(f"OpenCVInpainter: radius must be >= 1, got {radius}")
        self.radius, self.method, self._flag = radius, method, methods[method]

    @classmethod
    def from_config(cls, config, seed=0):
        """From the `layering` section of configs/cinemagraph.py (inpaint_radius). Deterministic."""
        del seed
        return cls(radius=config.inpaint_radius)

    def __call__(self, rgb, depth, context, holes):
        rgb = validate_image(rgb, "rgb")
        depth = validate_depth(depth, "depth", shape=rgb.shape[:2])
        context = _as_mask(context, "context", rgb.shape[:2])
        holes = _as_mask(holes, "holes", rgb.shape[:2])
        out_rgb, out_depth = rgb.copy(), depth.copy()
        if not holes.any():
            return out_rgb, out_depth
        if not context.any():
            raise ValueError("OpenCVInpainter: context is empty, nothing to fill the holes from")
        # Crop to the holes' bounding box grown by a margin: Telea only propagates from the hole
        # boundary, so far-away context does not change the fill (but the crop saves a lot of time).
        r0, r1, c0, c1 = _bbox(holes, margin=4 * self.radius + 2, shape=holes.shape)
        if not context[r0:r1, c0:c1].any():
            r0, r1, c0, c1 = 0, holes.shape[0], 0, holes.shape[1]
        ctx = context[r0:r1, c0:c1]
        hol = holes[r0:r1, c0:c1]
        unknown = (~ctx).astype(np.uint8)
        rgb8 = np.round(rgb[r0:r1, c0:c1] * 255.0).astype(np.uint8)
        fill = cv2.inpaint(rgb8, unknown, self.radius, self._flag).astype(np.float32) / 255.0
        logd = np.log(depth[r0:r1, c0:c1].astype(np.float64))
        lo, hi = logd[ctx].min(), logd[ctx].max()
        scale = (hi - lo) / 65535.0 if hi > lo else 1.0
        # Unknown pixels' own values are ignored by OpenCV; zero them so nothing depends on them.
        q = np.where(ctx, np.round((logd - lo) / scale), 0.0).astype(np.uint16)
        fill_d = np.exp(cv2.inpaint(q, unknown, self.radius, self._flag).astype(np.float64) * scale + lo)
        sub_rgb = out_rgb[r0:r1, c0:c1]
        sub_rgb[hol] = fill[hol]
        sub_d = out_depth[r0:r1, c0:c1]
        sub_d[hol] = fill_d[hol].astype(np.float32)
        return out_rgb, out_depth


INPAINTERS = Registry("inpainter")
INPAINTERS.register("opencv", OpenCVInpainter.from_config)


def _partialconv_from_config(**kwargs):
    from cine_jax import learned

    return learned.partialconv_inpainter(**kwargs)


# learned 3D-Photo inpainting nets; the factory takes the `models` section (cine_jax/learned.py)
INPAINTERS.register("partialconv", _partialconv_from_config)
# register_inpainter(name, factory) / get_inpainter(name, config=..., seed=...): a factory takes the
# `layering` section of configs/cinemagraph.py and a seed and returns an Inpainter (e.g. the 3D-Photo
# networks from local weights later); select it with config layering.inpainter.
register_inpainter = INPAINTERS.register
get_inpainter = INPAINTERS.get


# ---------------------------------------------------------------------------------------------------
# Morphology helpers and depth-discontinuity refinement
# ---------------------------------------------------------------------------------------------------


def _as_mask(mask, name, shape):
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {m.shape}")
    return m.astype(bool)


def _bbox(mask, margin, shape):
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = shape
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h),
            max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w))


def _erode(mask, k):
    """Binary erosion with a k x k square (OpenCV anchor; pixels outside the image count as set)."""
    if k <= 1:
        return mask.astype(bool)
    return cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def _open3(mask):
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


def refine_near_depth_discontinuity(depth, alpha, ksize=11, chunk=65536):
    """Official refinement of a layer's depth near its silhouette (3D Moments / 3D Cinemagraphy).

    In the band where the ksize x ksize eroded alpha is 0, depth is replaced by the masked median of
    the depths of the alpha pixels (alpha > 0.5) in the ksize x ksize window around the pixel (window
    clipped to the image; for an even count the lower median, as torch.median). Pixels whose window
    holds no alpha pixel keep their depth. Returns float32 depth [H, W].
    """
    z = validate_depth(depth, "depth")
    a = np.asarray(alpha)
    if a.shape != z.shape:
        raise ValueError(f"alpha: expected shape {z.shape}, got {a.shape}")
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"ksize must be odd and >= 1, got {ksize}")
    m = a > 0.5
    # Only pixels with an alpha pixel in their window can change: the band ring around the silhouette.
    band = ~_erode(m, ksize) & cv2.dilate(m.astype(np.uint8), np.ones((ksize, ksize), np.uint8)).astype(bool)
    out = z.copy()
    r = ksize // 2
    if not band.any() or not m.any():
        return out
    # Pad with +inf / False so windows are clipped to the image; sort valid values to the front.
    zp = np.pad(np.where(m, z, np.inf), r, constant_values=np.inf)
    win = np.lib.stride_tricks.sliding_window_view(zp, (ksize, ksize))  # [H, W, k, k] view
    rows, cols = np.nonzero(band)
    for s in range(0, rows.size, chunk):
        rr, cc = rows[s:s + chunk], cols[s:s + chunk]
        vals = np.sort(win[rr, cc].reshape(rr.size, -1), axis=1)
        count = np.isfinite(vals).sum(axis=1)
        has = count > 0
        med = vals[np.arange(rr.size), np.maximum(count - 1, 0) // 2]
        out[rr[has], cc[has]] = med[has]
    return out


# ---------------------------------------------------------------------------------------------------
# LDI
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LDI:
    """Layered depth image, near to far, as NumPy arrays.

    rgba    [L, H, W, 4] float32: RGB (not premultiplied) and alpha in [0, 1].
    depth   [L, H, W] float32 z-depth > 0 everywhere (where alpha is 0 it holds the inpainted depth,
            clamped into the layer's bin, so unprojection never sees 0 or inf).
    visible [L, H, W] bool: pixels of the input image belonging to this layer (a partition of the
            image: every pixel is visible in exactly one layer).
    edges   [L + 1] float64 ascending depth bin edges (layer i covers edges[i] < z <= edges[i+1]).
    """

    rgba: np.ndarray
    depth: np.ndarray
    visible: np.ndarray
    edges: np.ndarray

    def __post_init__(self):
        L = self.rgba.shape[0]
        if self.rgba.ndim != 4 or self.rgba.shape[-1] != 4:
            raise ValueError(f"LDI.rgba: expected [L, H, W, 4], got {self.rgba.shape}")
        if self.depth.shape != self.rgba.shape[:3] or self.visible.shape != self.rgba.shape[:3]:
            raise ValueError(f"LDI: depth {self.depth.shape} and visible {self.visible.shape} must be "
                             f"{self.rgba.shape[:3]}")
        if self.edges.shape != (L + 1,):
            raise ValueError(f"LDI.edges: expected shape ({L + 1},), got {self.edges.shape}")

    @property
    def num_layers(self):
        return self.rgba.shape[0]

    @property
    def shape(self):
        """(H, W) of the image."""
        return self.rgba.shape[1:3]

    def pad_to(self, max_layers):
        """A new LDI with exactly `max_layers` layers for static shapes: appended layers are empty
        (alpha 0, RGB 0, visible False, depth = the far edge) and repeat the last edge (empty bins).
        Raises ValueError if the LDI already has more layers (merge bins with depth_bins(max_layers=)).
        """
        L = self.num_layers
        if max_layers < L:
            raise ValueError(f"LDI.pad_to: the LDI has {L} layers, more than max_layers={max_layers}")
        n = max_layers - L
        h, w = self.shape
        far = np.float32(self.edges[-1])
        return LDI(
            rgba=np.concatenate([self.rgba, np.zeros((n, h, w, 4), np.float32)]),
            depth=np.concatenate([self.depth, np.full((n, h, w), far, np.float32)]),
            visible=np.concatenate([self.visible, np.zeros((n, h, w), bool)]),
            edges=np.concatenate([self.edges, np.full(n, self.edges[-1])]),
        )


def _merge_small_bins(idx, edges, context_erode, min_layer_pixels):
    """Official: a layer i > 0 whose k x k eroded membership has < min_layer_pixels pixels is skipped.

    Skipping would lose its pixels, so instead the bin is merged into the nearer one (its near edge
    is removed). Returns the surviving edges.
    """
    keep = [0]
    for i in range(1, len(edges) - 1):
        if _erode(idx == i, context_erode).sum() >= min_layer_pixels:
            keep.append(i)
    keep.append(len(edges) - 1)
    return edges[keep]


def depth_edge_masks(depth, threshold, disparity_range=None):
    """Depth discontinuities between 4-neighbours: (right [H, W-1], down [H-1, W]) bool.

    Two neighbours are across an edge when their disparities (1 / z) differ by more than `threshold` x
    the disparity range (`disparity_range`, default max - min of 1 / depth), as 3D Photo Inpainting's
    depth edges (argument.yml depth_threshold 0.04). A continuous surface, however slanted, has none (a
    ground plane's disparity changes by a constant, small step per row); an occluding contour has.
    """
    disp = 1.0 / np.asarray(depth, np.float64)
    rng = float(disp.max() - disp.min()) if disparity_range is None else float(disparity_range)
    tol = threshold * max(rng, 1e-12)
    return np.abs(np.diff(disp, axis=1)) > tol, np.abs(np.diff(disp, axis=0)) > tol


def _surface_distance(region, edges, sources):
    """Steps [H, W] from the nearest `sources` pixel, walking between 4-neighbours of `region` that are not
    across a depth edge (inf where unreachable): a breadth-first search on the surface (scipy.sparse.csgraph)."""
    import scipy.sparse
    import scipy.sparse.csgraph

    right, down = edges
    h, w = region.shape
    idx = np.arange(h * w).reshape(h, w)
    link_r = region[:, :-1] & region[:, 1:] & ~right
    link_d = region[:-1, :] & region[1:, :] & ~down
    src = idx[sources]
    rows = np.concatenate([idx[:, :-1][link_r], idx[:-1, :][link_d], np.full(src.size, h * w)])
    cols = np.concatenate([idx[:, 1:][link_r], idx[1:, :][link_d], src])
    graph = scipy.sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(h * w + 1, h * w + 1)).tocsr()
    dist = scipy.sparse.csgraph.shortest_path(graph, directed=False, unweighted=True, indices=h * w)
    return dist[: h * w].reshape(h, w)


def across_depth_edge(inside, edges, min_pixels=10):
    """For the pixels outside `inside` [H, W] bool: True where they belong to a surface separated from
    `inside` by an occluding contour, False where their surface continues into `inside` (one surface cut
    by a depth bin) and inside `inside`.

    The pixels touching `inside` are its contacts, continuous or across a depth edge (`edges` =
    depth_edge_masks(...)). Walking on the surface (between neighbours not across a depth edge), a pixel
    is separated when its nearest contact is an edge one: a disc's pixels can only reach its silhouette;
    the water just below the disc reaches the continuous cut first.
    Components of `inside` with fewer than `min_pixels` pixels are ignored (speckle: a few pixels of a
    noisy surface that fall into the next depth bin would otherwise make their surroundings continuous)."""
    inside = np.asarray(inside, bool)
    if min_pixels > 1 and inside.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=4)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_pixels)
        small = small[small > 0]
        if small.size:
            inside = inside & ~np.isin(labels, small)
    outside = ~inside
    right, down = edges
    disc = np.zeros(inside.shape, bool)
    cont = np.zeros(inside.shape, bool)
    for edge, a, b in ((right, (slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                       (down, (slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        for src, dst in ((a, b), (b, a)):
            touch = outside[src] & inside[dst]
            disc[src] |= touch & edge
            cont[src] |= touch & ~edge
    cont &= ~disc  # a pixel touching both counts as a contour pixel
    if not disc.any():
        return np.zeros(inside.shape, bool)
    d_disc = _surface_distance(outside, edges, disc)
    d_cont = _surface_distance(outside, edges, cont) if cont.any() else np.full(inside.shape, np.inf)
    return outside & (d_disc < d_cont)


def occlusion_fronts(depth, front, back, threshold, disparity_range=None):
    """Pixels of `front` [H, W] bool next (4-neighbours) to a pixel of `back` across a depth edge: the
    silhouettes behind which a moving camera can reveal `back` content. Returns (mask [H, W] bool,
    back_depth [H, W]: the nearest such back neighbour's depth, 0 elsewhere)."""
    z = np.asarray(depth, np.float64)
    right, down = depth_edge_masks(z, threshold, disparity_range)
    mask = np.zeros(z.shape, bool)
    zb = np.full(z.shape, np.inf)
    for edge, a, b in (
        (right, (slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        (down, (slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        for src, dst in ((a, b), (b, a)):
            hit = edge & front[src] & back[dst]
            mask[src] |= hit
            zb[src] = np.where(hit, np.minimum(zb[src], z[dst]), zb[src])
    return mask, np.where(mask, zb, 0.0)


def build_ldi(image, depth, edges, inpainter, *, context_erode=10, hole_margin=40, min_layer_pixels=10,
              discontinuity_ksize=11, edge_threshold=0.04, reveal_width=None):
    """Near-to-far layering; each layer inpaints only what a moving camera can reveal behind it.

    image [H, W, 3] float32 in [0, 1]; depth [H, W] z-depth > 0; edges [L + 1] from `depth_bins`;
    inpainter: an `Inpainter`. Per bin i (near to far):
      layer 0: RGB = image, alpha = membership of bin 0;
      layer i > 0: its visible pixels (bin i) keep their colour and depth with alpha 1; its hidden
        pixels are the holes: pixels of the nearer bins within `band` pixels of an occlusion front, a
        nearer pixel next to a pixel of bin >= i across a depth edge (`occlusion_fronts`, threshold
        `edge_threshold`; 3D Photo Inpainting inpaints the same way, only behind depth edges), and
        themselves separated from bin >= i by a depth edge (`across_depth_edge`: occluders, not the
        nearer part of a continuous surface). Colour
        and depth are inpainted from context = erode_{context_erode}(depth > edge_i) (official: this
        bin and everything behind it); inpainted depth in front of the original is pushed behind it
        (official: original x 1.01), then clamped to >= 0.9 edge_i; for all but the last layer only
        hidden pixels with depth <= edge_{i+1} are kept (farther content belongs to a farther layer);
        a depth not behind the nearer layers' is pushed to theirs x 1.05.
    band = min(hole_margin, ceil(reveal_width(i, uv, z_front, z_back))) where reveal_width is a callable
    giving the largest displacement (pixels) between front and back content at the front pixels uv [E, 2]
    over the rendered cameras and the animation (pipeline.reveal_width), or a number; None -> hole_margin
    (official: holes within 40 px of the context's bounding box).
    Consequences (issue 7 item 3): a continuous surface cut into several depth bins gets no hidden
    content at all (no depth edge), so nothing of a back layer exists where the front surface is; a
    static camera with a static scene inpaints nothing.
    Depth near the silhouettes is refined as official (refine_near_depth_discontinuity, 11 x 11 masked
    median) only within discontinuity_ksize // 2 of a depth edge, never at a continuous cut (the median
    of a one-sided window would bend a slanted surface there).
    Deviations from the official, so that the LDI reproduces the input image exactly and loses no pixel:
      - a bin i > 0 whose eroded membership has < `min_layer_pixels` pixels is merged into the nearer
        bin (official: skipped, its pixels lost); the returned LDI.edges reflect the merge;
      - the pixels of bin i keep their original colour and depth with alpha 1 and are the layer's
        `visible` mask (official: a 10 px band of each far layer at depth edges is inpainted).
    Where alpha is 0, depth is clamped into [edge_i, edge_{i+1}] (a sane value > 0).
    """
    img = validate_image(image, "image")
    z = validate_depth(depth, "depth")
    if z.shape != img.shape[:2]:
        raise ValueError(f"depth: shape {z.shape} does not match image shape {img.shape[:2]}")
    e = _validate_edges(edges)
    if not isinstance(inpainter, Inpainter):
        raise ValueError(f"inpainter: expected a callable Inpainter, got {type(inpainter).__name__}")
    if not edge_threshold > 0:
        raise ValueError(f"edge_threshold must be > 0, got {edge_threshold}")
    h, w = z.shape
    e = _merge_small_bins(bin_indices(z, e), e, context_erode, min_layer_pixels)
    idx = bin_indices(z, e)
    L = len(e) - 1
    rgba = np.zeros((L, h, w, 4), np.float32)
    depth_out = np.zeros((L, h, w), np.float32)
    visible = np.zeros((L, h, w), bool)
    prev_far = np.zeros((h, w), np.float32)  # farthest depth of the nearer layers' alpha > 0 pixels
    z64 = z.astype(np.float64)
    disp = 1.0 / z64
    drange = float(disp.max() - disp.min())
    # refine depth only near depth edges (all of them), as the official refinement targets blurry edges
    right, down = depth_edge_masks(z64, edge_threshold, drange)
    near_edge = np.zeros((h, w), bool)
    near_edge[:, :-1] |= right
    near_edge[:, 1:] |= right
    near_edge[:-1] |= down
    near_edge[1:] |= down
    near_edge = cv2.dilate(near_edge.astype(np.uint8), np.ones((discontinuity_ksize,) * 2, np.uint8)).astype(bool)

    def refined(d, alpha):
        return np.where(near_edge, refine_near_depth_discontinuity(d, alpha, discontinuity_ksize), d)

    for i in range(L):
        member = idx == i
        lo, hi = e[i], e[i + 1]
        d = refined(z, member).astype(np.float64)
        rgb = img
        alpha = member.astype(np.float32)
        if i > 0:
            front, zback = occlusion_fronts(z64, idx < i, idx >= i, edge_threshold, drange)
            band = 0
            if front.any():
                if reveal_width is None:
                    band = hole_margin
                elif callable(reveal_width):
                    fi, fj = np.nonzero(front)
                    uv = np.stack([fj, fi], -1).astype(np.float64)
                    band = float(reveal_width(i, uv, z64[fi, fj], zback[fi, fj]))
                else:
                    band = float(reveal_width)
                band = int(min(hole_margin, math.ceil(max(band, 0.0))))
            holes = np.zeros((h, w), bool)
            if band > 0:
                k = 2 * band + 1
                reach = cv2.dilate(front.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
                # only occluders: nearer pixels separated from this bin by a depth edge (never a nearer
                # part of a continuous surface that merely falls into another bin)
                occluders = across_depth_edge(idx >= i, (right, down), min_layer_pixels) & (idx < i)
                holes = reach.astype(bool) & occluders
            if holes.any():
                context = _erode(z64 > lo, context_erode)
                if not context.any():  # cannot happen after _merge_small_bins; fall back to the bin itself
                    context = member.copy()
                hole_rgb, hole_d = inpainter(img, z, context, holes)
                hole_rgb = np.clip(np.asarray(hole_rgb, np.float32), 0.0, 1.0)
                hole_d = np.asarray(hole_d, np.float64)
                # Official: inpainted depth in front of the original surface is pushed just behind it.
                hole_d = np.where(hole_d < z64, z64 * 1.01, hole_d)
                hole_d = np.maximum(hole_d, 0.9 * lo)
                keep = holes.copy()
                if i < L - 1:
                    keep &= hole_d <= hi
                hole_d = np.where(keep & (prev_far > 0) & (hole_d <= prev_far), prev_far * 1.05, hole_d)
                d = np.where(keep, hole_d, d)
                rgb = np.where(keep[..., None], hole_rgb, img)
                alpha = (member | keep).astype(np.float32)
        d = np.where(alpha > 0, d, np.clip(d, max(lo, 1e-6), hi))
        rgba[i, ..., :3] = rgb
        rgba[i, ..., 3] = alpha
        depth_out[i] = np.asarray(d, np.float32)
        visible[i] = member
        prev_far = np.where(alpha > 0, np.maximum(prev_far, depth_out[i]), prev_far)

    return LDI(rgba=rgba, depth=validate_depth(depth_out, "LDI depth"), visible=visible, edges=e)


# ---------------------------------------------------------------------------------------------------
# Previews
# ---------------------------------------------------------------------------------------------------


def layer_previews(ldi):
    """One preview [H, 2W, 3] float32 in [0, 1] per layer: RGBA over a checkerboard | depth colour.

    Uses cine_jax.viz: `checkerboard_rgba` (RGB not premultiplied) and `depth_to_color` (inferno on
    disparity, normalised over the layer's alpha > 0.5 pixels; other pixels black).
    """
    from cine_jax import viz

    out = []
    for i in range(ldi.num_layers):
        over = viz.checkerboard_rgba(ldi.rgba[i], premultiplied=False)
        dcol = viz.depth_to_color(ldi.depth[i], mask=ldi.rgba[i, ..., 3])
        out.append(np.concatenate([over, dcol], axis=1).astype(np.float32))
    return out
