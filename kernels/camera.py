"""Pinhole cameras in the OpenCV convention.

x right, y down, z forward. Pixel (row i, column j) has its centre at u = j, v = i.
K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. A pose is a 4x4 world-to-camera matrix: x_cam = R x_world + t.
Depth is z-depth along the optical axis (positive in front of the camera).
"""

import math

import jax.numpy as jnp

from kernels.mathx import safe_normalize


def intrinsics(fx, fy, cx, cy, dtype=jnp.float32):
    """K [3, 3] from focal lengths and principal point, all in pixels."""
    return jnp.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def intrinsics_from_focal(focal, height, width, cx=None, cy=None):
    """K [3, 3] with fx = fy = focal (pixels); the principal point defaults to the image centre.

    The centre of an H x W image under the pixel-centre convention is ((W - 1) / 2, (H - 1) / 2).
    """
    cx = (width - 1) / 2.0 if cx is None else cx
    cy = (height - 1) / 2.0 if cy is None else cy
    return intrinsics(focal, focal, cx, cy)


def intrinsics_from_fov(fov_y_degrees, height, width):
    """K [3, 3] from the vertical field of view (degrees), square pixels, centred principal point."""
    focal = 0.5 * height / math.tan(0.5 * math.radians(fov_y_degrees))
    return intrinsics_from_focal(focal, height, width)


def pixel_grid(height, width, dtype=jnp.float32):
    """[H, W, 2] pixel-centre coordinates (u, v) = (column, row)."""
    v, u = jnp.meshgrid(jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij")
    return jnp.stack([u, v], axis=-1)


def unproject_points(uv, z, K):
    """Camera-space points [..., 3] from pixel coordinates uv [..., 2] and z-depth z [...]."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x = (uv[..., 0] - cx) / fx * z
    y = (uv[..., 1] - cy) / fy * z
    return jnp.stack([x, y, z], axis=-1)


def unproject(depth, K):
    """Camera-space points [H, W, 3] of a z-depth map [H, W] seen through K."""
    h, w = depth.shape[-2:]
    return unproject_points(pixel_grid(h, w, depth.dtype), depth, K)


def project(points, K, eps=1e-8):
    """Project camera-space points [..., 3] to pixels.

    Returns (uv [..., 2], z [...]). Points with z <= eps get uv computed with z clamped to eps; callers
    decide what to do with them using the returned z.
    """
    z = points[..., 2]
    zs = jnp.where(jnp.abs(z) < eps, eps, z)
    u = K[0, 0] * points[..., 0] / zs + K[0, 2]
    v = K[1, 1] * points[..., 1] / zs + K[1, 2]
    return jnp.stack([u, v], axis=-1), z


def transform_points(pose, points):
    """Apply a 4x4 rigid transform to points [..., 3]: R p + t.

    Written as three broadcast multiply-adds, not a [..., 3] x [3, 3] matmul: a contraction of length 3
    gains nothing from a matrix unit, and on the CPU XLA hands the matmul to a GEMM library call that took
    ~5x the time of the elementwise form on 671k points (one cinemagraph frame, benchmarks/cinemagraph.py).
    """
    rot, t = pose[:3, :3], pose[:3, 3]
    return points[..., 0:1] * rot[:, 0] + points[..., 1:2] * rot[:, 1] + points[..., 2:3] * rot[:, 2] + t


def compose(a, b):
    """The pose that applies b first, then a (a @ b)."""
    return a @ b


def invert_pose(pose):
    """Inverse of a rigid 4x4 transform, using R^T rather than a general matrix inverse."""
    r = pose[..., :3, :3]
    t = pose[..., :3, 3:]
    rt = jnp.swapaxes(r, -1, -2)
    top = jnp.concatenate([rt, -rt @ t], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], pose.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def translation_pose(t, dtype=jnp.float32):
    """World-to-camera pose with identity rotation and translation t [3]."""
    return jnp.eye(4, dtype=dtype).at[:3, 3].set(jnp.asarray(t, dtype))


def look_at(eye, target, up=(0.0, -1.0, 0.0)):
    """World-to-camera pose [4, 4] of a camera at `eye` looking at `target`.

    OpenCV axes: the camera z axis points to the target, y points down. `up` is the world direction
    that should appear up in the image (default -y, matching a y-down world); it must not be parallel
    to the viewing direction.
    """
    eye = jnp.asarray(eye, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    up = jnp.asarray(up, jnp.float32)
    z = safe_normalize(target - eye)
    x = safe_normalize(jnp.cross(-up, z))
    y = jnp.cross(z, x)
    r = jnp.stack([x, y, z], axis=0)  # rows are the camera axes in world coordinates
    t = -r @ eye
    return jnp.concatenate(
        [jnp.concatenate([r, t[:, None]], axis=1), jnp.array([[0.0, 0.0, 0.0, 1.0]])], axis=0
    )


def camera_rays(pose, K, height, width):
    """World-space rays through every pixel centre of a camera.

    pose: world-to-camera [4, 4]; K [3, 3]. Returns (origins [H, W, 3], directions [H, W, 3]) with unit
    directions; the ray through pixel (i, j) passes through the camera-space point unproject((j, i), z=1).
    """
    c2w = invert_pose(pose)
    d_cam = unproject_points(pixel_grid(height, width), jnp.ones((height, width), jnp.float32), K)
    d_world = safe_normalize(d_cam @ c2w[:3, :3].T)
    origins = jnp.broadcast_to(c2w[:3, 3], d_world.shape)
    return origins, d_world
