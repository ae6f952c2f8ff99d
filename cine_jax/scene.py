"""The animated 3D scene: a feature point cloud from the LDI, 2D motion lifted to 3D scene flow.

Follows section 3.4 of the paper and the official `compute_scene_flow_for_motion` (see
../shared/reference/cinemagraphy.md section 4):

* every LDI pixel with alpha > 0.5 becomes a point at its layer depth, carrying features (RGBA by
  default; a learned feature net plugs in through `features=`);
* each layer gets its own Eulerian flow, the motion of its surface (`layer_flows`): the image flow
  where the image shows that surface (its visible pixels and continuous neighbours), its flow extended
  by masked diffusion behind occluding contours, so inpainted pixels move with the surface they belong to;
* the displacement of each point is Euler-integrated from its source pixel (Eq. 3) for M and -M
  (3D symmetric animation, motion.symmetric_displacements); a moved point keeps its source z-depth, as
  the official code does, and only its pixel position changes (`displaced_points`);
* points whose tracked position leaves the image are dropped from that frame on.

Static shapes: the cloud has a fixed capacity (config `scene.capacity_factor` x H x W); points beyond it
are counted in `num_dropped`, never silently lost.
"""

import dataclasses
import math

import cv2
import jax.numpy as jnp
import numpy as np

from cine_jax import layering, motion
from cine_jax.registry import Registry
from kernels import camera


class RGBAFeatures:
    """The default per-point features: the LDI's own RGBA ([L, H, W, 4]).

    Feature extractors map an LDI to per-layer feature maps [L, H, W, C] whose first four channels are
    RGBA (the identity decoder reads RGB, the blend reads A; a learned extractor appends its features,
    as the official splats [RGB, A, feat32]). Registered in FEATURES, selected by config scene.features.
    """

    @classmethod
    def from_config(cls, config, seed=0):
        del config, seed
        return cls()

    def __call__(self, ldi):
        return np.asarray(ldi.rgba, np.float32)


FEATURES = Registry("feature extractor")
FEATURES.register("rgba", RGBAFeatures.from_config)


def _resunet_from_config(**kwargs):
    from cine_jax import learned

    return learned.ResUNetFeatures.from_config(**kwargs)


# learned feature net; the factory takes the `models` section and section=the `scene` section (learned.py)
FEATURES.register("resunet", _resunet_from_config)
# register_features(name, factory) / get_features(name, config=..., seed=...): a factory takes the `scene`
# section of configs/cinemagraph.py and a seed and returns f(ldi) -> [L, H, W, C] (RGBA first).
register_features = FEATURES.register
get_features = FEATURES.get


@dataclasses.dataclass(frozen=True)
class PointCloud:
    """A feature point cloud anchored at source pixels of the reference view.

    uv [P, 2] source pixel (u, v); z [P] z-depth; features [P, C]; layer [P] int32 LDI layer index;
    slope [P] the depth change of the point's surface per source pixel (max |z - z_q| over its 4
    neighbours q of the same layer that are not across a depth edge; depth units), which makes the
    renderer's soft z-test surface aware; valid [P] bool (False marks padding up to the static
    capacity); num_points real points; num_dropped points lost to the capacity.
    """

    uv: np.ndarray
    z: np.ndarray
    features: np.ndarray
    layer: np.ndarray
    valid: np.ndarray
    num_points: int
    num_dropped: int
    slope: np.ndarray = None


def _capacity(num, capacity, multiple=16384):
    """Static point count: the real count rounded up to `multiple` (so similar images share a compiled
    renderer), at most `capacity` (the configured maximum; points beyond it are dropped and counted)."""
    fit = max(multiple, int(math.ceil(num / multiple)) * multiple)
    return fit if capacity is None else min(fit, int(capacity))


def surface_slope(depth, keep, threshold, disparity_range):
    """Per-pixel depth change of the surface [H, W]: max |z - z_q| over the 4-neighbours q that are kept
    (`keep` [H, W] bool) and not across a depth edge (layering.depth_edge_masks). 0 where no neighbour
    qualifies."""
    z = np.asarray(depth, np.float64)
    right, down = layering.depth_edge_masks(z, threshold, disparity_range)
    slope = np.zeros_like(z)
    dx = np.abs(np.diff(z, axis=1))
    okx = keep[:, 1:] & keep[:, :-1] & ~right
    dy = np.abs(np.diff(z, axis=0))
    oky = keep[1:, :] & keep[:-1, :] & ~down
    vx = np.where(okx, dx, 0.0)
    vy = np.where(oky, dy, 0.0)
    slope[:, :-1] = np.maximum(slope[:, :-1], vx)
    slope[:, 1:] = np.maximum(slope[:, 1:], vx)
    slope[:-1, :] = np.maximum(slope[:-1, :], vy)
    slope[1:, :] = np.maximum(slope[1:, :], vy)
    return slope


def build_point_cloud(ldi, *, features=None, alpha_threshold=0.5, capacity=None, order_eps=1.01,
                      edge_threshold=0.04):
    """Points from every LDI pixel with alpha > alpha_threshold (official: 0.5, inpainted pixels too).

    ldi: an LDI with rgba [L, H, W, 4], depth [L, H, W]. features: optional [L, H, W, C] per-layer
    feature maps, RGBA first (default: the RGBA itself; see FEATURES). capacity: the maximum static
    number of points; the cloud is padded to its point count rounded up to a multiple of 16384 (invalid
    padding), at most capacity.

    Layer ordering (official fix): a point of layer i > 0 that is not behind every nearer layer's point
    at the same pixel is pushed to that depth times `order_eps`. Each point's `slope` is measured on its
    layer's depth with `surface_slope` (depth edges at `edge_threshold`, layering.depth_edge_masks).
    """
    rgba = np.asarray(ldi.rgba, np.float32)
    depth = np.asarray(ldi.depth, np.float32).copy()
    num_layers, h, w = depth.shape
    feats = rgba if features is None else np.asarray(features, np.float32)
    if feats.shape[:3] != (num_layers, h, w):
        raise ValueError(f"features must be [L, H, W, C] = [{num_layers}, {h}, {w}, C], got {feats.shape}")
    keep = rgba[..., 3] > alpha_threshold
    nearest = np.full((h, w), 0.0, np.float32)
    for i in range(num_layers):
        if i > 0:
            occluded = keep[i] & (nearest > 0) & (depth[i] <= nearest)
            depth[i] = np.where(occluded, nearest * order_eps, depth[i])
        nearest = np.where(keep[i], np.maximum(nearest, depth[i]), nearest)
    disp_all = 1.0 / depth[keep] if keep.any() else np.ones(1)
    drange = float(disp_all.max() - disp_all.min())
    slopes = np.stack([surface_slope(depth[i], keep[i], edge_threshold, drange) for i in range(num_layers)])
    li, vi, ui = np.nonzero(keep)
    num = int(li.size)
    cap = _capacity(num, capacity)
    n = min(num, cap)
    uv = np.zeros((cap, 2), np.float32)
    z = np.ones((cap,), np.float32)
    f = np.zeros((cap, feats.shape[-1]), np.float32)
    layer = np.zeros((cap,), np.int32)
    slope = np.zeros((cap,), np.float32)
    valid = np.zeros((cap,), bool)
    uv[:n, 0], uv[:n, 1] = ui[:n], vi[:n]
    z[:n] = depth[li[:n], vi[:n], ui[:n]]
    f[:n] = feats[li[:n], vi[:n], ui[:n]]
    layer[:n] = li[:n]
    slope[:n] = slopes[li[:n], vi[:n], ui[:n]]
    valid[:n] = True
    if not np.all(np.isfinite(z[:n])) or np.any(z[:n] <= 0):
        raise ValueError("LDI depth must be finite and positive at every kept pixel")
    return PointCloud(uv, z, f, layer, valid, num_points=n, num_dropped=num - n, slope=slope)


def layer_flows(flow, ldi, *, visible_erode=5, diffuse_iters=7, diffuse_ksize=15, edge_threshold=0.04):
    """Per-layer Eulerian flow [L, H, W, 2]: at every position, the motion of the surface a layer's
    points belong to.

    The flow M describes the surface visible at each pixel. A point of layer i takes M where the image
    shows its own surface: its own visible pixels, and pixels of other layers continuous with it (no
    depth edge between them, e.g. a ground plane split into two depth bins). Behind occluding contours
    (the layer's hidden, inpainted pixels and beyond) M belongs to another surface, so there the layer
    takes its own flow extended by masked diffusion (official masked_diffuse: `diffuse_iters` passes of
    a normalised `diffuse_ksize` box filter) from its visible pixels eroded by `visible_erode` (the
    official mask_i = erode5x5(mask_layer_i), so the extension never starts from a pixel straddling the
    contour). Depth edges: layering.depth_edge_masks at `edge_threshold` on the visible depth.

    Order (issue 7 item 7; README "flow lifting order"): flows are made per layer and integrated per
    point (motion.euler_integrate), not integrated on the image first and the displacement diffused per
    layer (official). Paper Sec. 3.4 lifts the motion to 3D scene flow, "a function of time t and the
    coordinates of a 3D point", and moves each 3D point by it; Eq. 1-2 say a point moves by the flow of
    the content at its position. A point of the water layer that passes behind a static bar stays on the
    water surface, so it keeps the water's motion; integrating on the image would make it sample the
    bar's (zero) flow and stop at the bar's edge, a motion of the water decided by a different surface
    at another depth, piling the water up at the bar forever.
    """
    flow = np.asarray(flow, np.float32)
    visible = np.asarray(ldi.visible, bool)
    depth = np.asarray(ldi.depth, np.float64)
    vis_depth = np.where(visible, depth, 0.0).sum(0)
    vis_depth = np.where(visible.any(0), vis_depth, depth.min(0))
    disp = 1.0 / vis_depth
    drange = float(disp.max() - disp.min())
    kernel = np.ones((visible_erode, visible_erode), np.uint8)
    out = np.zeros(visible.shape + (2,), np.float32)
    for i in range(visible.shape[0]):
        own = visible[i]
        if not own.any():
            continue
        m = cv2.erode(own.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        if not m.any():
            m = own
        ext = np.asarray(motion.masked_diffuse(flow * m[..., None], m, iters=diffuse_iters, ksize=diffuse_ksize))
        edges = layering.depth_edge_masks(vis_depth, edge_threshold, drange)
        same_surface = ~layering.across_depth_edge(own, edges)
        out[i] = np.where(same_surface[..., None], flow, ext)
    return out


def symmetric_point_displacements(fields, cloud, num_frames, border="clamp"):
    """3D symmetric animation of the cloud: forward F(0->t) of M and backward F(0->t-N) of -M for
    t = 0..N-1, each point following its own layer's field (motion.symmetric_displacements).

    border="clamp" extends the flow to the edge of the image footprint (a point half a pixel beyond the
    last centre moves like that centre). Returns dict(forward [N, P, 2], backward [N, P, 2],
    forward_valid [N, P], backward_valid [N, P], time [N] = t / N), padding points invalid.
    """
    d = motion.symmetric_displacements(fields, cloud.uv, num_frames, layer=cloud.layer, border=border)
    valid = jnp.asarray(cloud.valid)
    d["forward_valid"] = d["forward_valid"] & valid
    d["backward_valid"] = d["backward_valid"] & valid
    return d


def displaced_points(uv, z, displacement, K):
    """Reference-camera 3D points after a 2D displacement, keeping each point's source z-depth.

    uv [P, 2], z [P], displacement [P, 2] pixels, K [3, 3] -> [P, 3]. This lifts the 2D displacement
    to 3D scene flow exactly as the official code does (the moved point stays on its depth plane).
    """
    return camera.unproject_points(uv + displacement, z, K)
