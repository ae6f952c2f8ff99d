"""The animated 3D scene: a feature point cloud from the LDI, 2D motion lifted to 3D scene flow.

Follows section 3.4 of the paper and the official `compute_scene_flow_for_motion` (see
../shared/reference/cinemagraphy.md section 4):

* every LDI pixel with alpha > 0.5 becomes a point at its layer depth, carrying features (RGBA by
  default; a learned feature net plugs in through `features=`);
* each layer gets its own Eulerian flow: the flow on its (eroded) visible pixels, extended outward by
  masked diffusion so inpainted pixels hidden behind nearer layers move with their neighbours;
* the displacement of each point is Euler-integrated from its source pixel (Eq. 3) for M and -M
  (3D symmetric animation); a moved point keeps its source z-depth, as the official code does, and only
  its pixel position changes;
* points whose tracked position leaves the image are dropped from that frame on.

Static shapes: the cloud has a fixed capacity (config `scene.capacity_factor` x H x W); points beyond it
are counted in `num_dropped`, never silently lost.
"""

import dataclasses
import functools
import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from cine_jax import motion
from kernels import camera, sampling


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


def depth_edges(depth, threshold, disparity_range=None):
    """Depth discontinuities between 4-neighbours (3D Photo Inpainting's depth edges).

    Two neighbouring pixels are across an edge when their disparities (1 / z) differ by more than
    `threshold` x the disparity range (`disparity_range`, default max - min of 1 / depth): a continuous
    surface, however slanted (a ground plane to the horizon has a constant disparity step per row), has
    no edges, an occluding contour has. Returns (right [H, W-1], down [H-1, W]) bool: edge between
    (i, j) and (i, j+1), and between (i, j) and (i+1, j).
    """
    disp = 1.0 / np.asarray(depth, np.float64)
    rng = float(disp.max() - disp.min()) if disparity_range is None else float(disparity_range)
    tol = threshold * max(rng, 1e-12)
    return np.abs(np.diff(disp, axis=1)) > tol, np.abs(np.diff(disp, axis=0)) > tol


def surface_slope(depth, keep, threshold, disparity_range):
    """Per-pixel depth change of the surface [H, W]: max |z - z_q| over the 4-neighbours q that are kept
    (`keep` [H, W] bool) and not across a depth edge (`depth_edges`). 0 where no neighbour qualifies."""
    z = np.asarray(depth, np.float64)
    right, down = depth_edges(z, threshold, disparity_range)
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
    feature maps (default: the RGBA itself). capacity: the maximum static number of points; the cloud
    is padded to its point count rounded up to a multiple of 16384 (invalid padding), at most capacity.

    Layer ordering (official fix): a point of layer i > 0 that is not behind every nearer layer's point
    at the same pixel is pushed to that depth times `order_eps`. Each point's `slope` is measured on its
    layer's depth with `surface_slope` (depth edges at `edge_threshold`, see `depth_edges`).
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


def layer_flows(flow, ldi, *, visible_erode=5, diffuse_iters=7, diffuse_ksize=15):
    """Per-layer Eulerian flow [L, H, W, 2] (official compute_scene_flow_for_motion).

    Each layer keeps the flow on its visible pixels eroded by `visible_erode` (so a layer never takes
    motion from across a depth edge) and extends it outward by `diffuse_iters` passes of normalised
    `diffuse_ksize` box filtering, reaching its inpainted pixels behind nearer layers.
    """
    flow = np.asarray(flow, np.float32)
    visible = np.asarray(ldi.visible, bool)
    kernel = np.ones((visible_erode, visible_erode), np.uint8)
    out = np.zeros(visible.shape + (2,), np.float32)
    for i in range(visible.shape[0]):
        m = cv2.erode(visible[i].astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        if not m.any():
            m = visible[i]
        if not m.any():
            continue
        out[i] = motion.masked_diffuse(flow * m[..., None], m, iters=diffuse_iters, ksize=diffuse_ksize)
    return out


@functools.partial(jax.jit, static_argnames=("num_steps", "border"))
def integrate_points(fields, uv, layer, num_steps, border="clamp"):
    """Euler-integrate Eq. 3 for points that start at pixel positions uv [P, 2].

    fields [L, H, W, 2]: per-layer Eulerian flow (pixels per frame); layer [P] selects each point's
    field. F_{0->t} = F_{0->t-1} + M(x0 + F_{0->t-1}) with bilinear sampling of M, all steps in one
    lax.scan (O(N)). A point whose position leaves the image is invalid from then on and stops.
    border="clamp" extends the flow to the edge of the image footprint (a pixel half a pixel beyond the
    last centre moves like that centre); "zeros" fades it out as motion.euler_integrate's default.
    Returns dict(displacement [num_steps + 1, P, 2], valid [num_steps + 1, P]); index 0 is zero.
    """
    fields = jnp.asarray(fields, jnp.float32)
    num_layers, h, w, _ = fields.shape
    stacked = jnp.moveaxis(fields, 0, 2).reshape(h, w, num_layers * 2)
    uv = jnp.asarray(uv, jnp.float32)
    layer = jnp.asarray(layer, jnp.int32)
    cols = jnp.stack([2 * layer, 2 * layer + 1], axis=-1)

    def step(carry, _):
        disp, ok = carry
        m = jnp.take_along_axis(sampling.sample_bilinear(stacked, uv + disp, border=border), cols, axis=-1)
        # same semantics as motion.euler_integrate: the step that leaves the image is applied, then the
        # point is invalid and frozen
        disp = jnp.where(ok[:, None], disp + m, disp)
        ok = ok & motion.inside_image(uv + disp, h, w)
        return (disp, ok), (disp, ok)

    init = (jnp.zeros_like(uv), jnp.ones(uv.shape[:1], bool))
    _, (disp, ok) = jax.lax.scan(step, init, None, length=num_steps)
    disp = jnp.concatenate([init[0][None], disp], axis=0)
    ok = jnp.concatenate([init[1][None], ok], axis=0)
    return {"displacement": disp, "valid": ok}


def symmetric_point_displacements(fields, cloud, num_frames):
    """3D symmetric animation: forward F(0->t) of M and backward F(0->t-N) of -M for t = 0..N-1.

    Returns dict(forward [N, P, 2], backward [N, P, 2], forward_valid [N, P], backward_valid [N, P],
    time [N] = t / N) following ARCHITECTURE.md's time convention.
    """
    fields = jnp.asarray(fields, jnp.float32)
    fwd = integrate_points(fields, cloud.uv, cloud.layer, num_frames)
    bwd = integrate_points(-fields, cloud.uv, cloud.layer, num_frames)
    t = jnp.arange(num_frames)
    valid = jnp.asarray(cloud.valid)
    return {
        "forward": fwd["displacement"][t],
        "backward": bwd["displacement"][num_frames - t],
        "forward_valid": fwd["valid"][t] & valid,
        "backward_valid": bwd["valid"][num_frames - t] & valid,
        "time": t.astype(jnp.float32) / num_frames,
    }


def displaced_points(uv, z, displacement, K):
    """Reference-camera 3D points after a 2D displacement, keeping each point's source z-depth.

    uv [P, 2], z [P], displacement [P, 2] pixels, K [3, 3] -> [P, 3]. This lifts the 2D displacement
    to 3D scene flow exactly as the official code does (the moved point stays on its depth plane).
    """
    return camera.unproject_points(uv + displacement, z, K)
