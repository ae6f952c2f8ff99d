"""Camera trajectories for rendering a cinemagraph (official demo.py / render_utils.define_camera_path).

All official trajectories are translation-only: a frame's pose is the world-to-camera matrix
kernels.camera.translation_pose(t), i.e. t is ADDED to the scene points (x_cam = x_world + t). The
official magnitudes are in units where the nearest scene depth is 1 (its depth = 1 / normalised
disparity); pass the scene's nearest depth as `scene_depth` to use them with another depth scale.
Signs follow that convention: t_z < 0 brings the points closer, i.e. the camera moves forward.

Official paths (shared/reference/cinemagraphy.md section 6), frame k of N:
  up-down     N=60  double-straight-line, v = (0, -0.08, 0): quadratic interpolation through the corner
              points -v, 0, v at parameters 0, 1/2, 1, evaluated at np.linspace(0, 1, N). The corners are
              collinear and evenly spaced, so the quadratic is the line t_k = v * (2 k / (N - 1) - 1):
              it starts at -v and ends exactly at v.
  zoom-in     N=60  straight-line, v = (0, 0, -0.24): t_k = v * k / (N - 1), 0 -> v (the same
              quadratic-through-collinear-points construction with corners 0, v/2, v).
  side        N=60  double-straight-line, v = (-0.09, 0, 0): -v -> v as up-down.
  circle      N=90  (x, y, z) = (-0.04, -0.04, -0.09), s_k = -2 + 4 k / N:
              t_k = (cos(pi s) x, sin(pi s) y, cos(pi s / 2) z). The official writes
              s = np.arange(-2, 2, 4 / N), which in floating point yields N + 1 values for some N
              (49, 98, 103, ...); we always give N frames. Frame N would equal frame 0 (a closed loop).
Ours (the official make_swing/dolly_zoom helpers exist but are unused, so these are our own design):
  swing       N=60  phase p = 2 pi k / N: t_k = (sin(p) x, 0, sin(p)^2 z) with (x, z) = (-0.09, -0.03):
              a horizontal back-and-forth arc whose ends bend slightly forward (like a camera swinging
              on an arc around a point ahead); periodic, frame N equals frame 0.
  dolly-zoom  N=60  the camera moves forward d_k = 0.24 * k / (N - 1) (t_z = -d_k) while the focal length
              is scaled by focal_scale_k = (ref - d_k) / ref, so the plane at depth `ref` keeps its size
              in the image while nearer/farther content changes size.
  static      N=60  identity poses.
"""

import math

import jax.numpy as jnp
import numpy as np

from cine_jax import io

__all__ = ["OFFICIAL_FRAMES", "TRAJECTORIES", "cameras_from_json", "make_trajectory"]

TRAJECTORIES = ("up-down", "zoom-in", "side", "circle", "swing", "dolly-zoom", "static")

# Frame counts: official demo.py for the first four; ours for the rest.
OFFICIAL_FRAMES = {
    "up-down": 60,
    "zoom-in": 60,
    "side": 60,
    "circle": 90,
    "swing": 60,
    "dolly-zoom": 60,
    "static": 60,
}

# Official magnitudes (demo.py), nearest depth = 1.
_UP_DOWN = (0.0, -0.08, 0.0)
_ZOOM_IN = (0.0, 0.0, -0.24)
_SIDE = (-0.09, 0.0, 0.0)
_CIRCLE = (-0.04, -0.04, -0.09)
# Ours: swing amplitude matches "side" sideways, with a third of it forward at the arc ends.
_SWING = (-0.09, 0.0, -0.03)
# Ours: dolly-zoom forward travel matches "zoom-in".
_DOLLY = 0.24


def _line(v, n, double):
    """Translations [n, 3] along a straight line: -v -> v (double) or 0 -> v, at linspace(0, 1, n)."""
    s = np.linspace(0.0, 1.0, n)
    if double:
        s = 2.0 * s - 1.0
    return s[:, None] * np.asarray(v, np.float64)


def _circle(v, n):
    s = -2.0 + 4.0 * np.arange(n) / n
    x, y, z = v
    return np.stack([np.cos(np.pi * s) * x, np.sin(np.pi * s) * y, np.cos(np.pi * s / 2.0) * z], axis=-1)


def _swing(v, n):
    p = 2.0 * np.pi * np.arange(n) / n
    x, y, z = v
    return np.stack([np.sin(p) * x, np.sin(p) * y, np.sin(p) ** 2 * z], axis=-1)


def _poses(translations):
    n = translations.shape[0]
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, 3] = translations
    return poses


def make_trajectory(name, num_frames=None, scale=1.0, scene_depth=1.0, ref_depth=None):
    """Per-frame world-to-camera poses of a named trajectory.

    name: one of TRAJECTORIES.
    num_frames: None or 0 -> the official count (OFFICIAL_FRAMES); otherwise an int >= 1 (the paths are
      resampled: same start and end, more or fewer frames in between).
    scale: multiplies the magnitudes (config c.trajectory.scale).
    scene_depth: multiplies every translation; pass the scene's nearest depth, since the official
      magnitudes assume it is 1.
    ref_depth: dolly-zoom only: depth of the plane that keeps its image size (same units as the scene);
      None -> scene_depth (the nearest content). Must exceed the forward travel 0.24 * scale * scene_depth.
    Returns dict(poses [N, 4, 4] float32 world-to-camera (rotation = identity), focal_scale [N] float32
      (multiply fx and fy by it; 1 except dolly-zoom), name, num_frames).
    """
    if name not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {name!r}; choose one of {', '.join(TRAJECTORIES)}")
    if num_frames is None or num_frames == 0:
        num_frames = OFFICIAL_FRAMES[name]
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(
            f"num_frames must be an int >= 1 (or None / 0 for the official count), got {num_frames!r}"
        )
    n = int(num_frames)
    for arg, val in (("scale", scale), ("scene_depth", scene_depth)):
        if not math.isfinite(val):
            raise ValueError(f"{arg} must be finite, got {val!r}")
    if scene_depth <= 0:
        raise ValueError(f"scene_depth must be > 0 (the scene's nearest depth), got {scene_depth!r}")
    mult = float(scale) * float(scene_depth)

    def scaled(v):
        return tuple(mult * c for c in v)

    focal = np.ones(n)
    if name == "up-down":
        t = _line(scaled(_UP_DOWN), n, double=True)
    elif name == "side":
        t = _line(scaled(_SIDE), n, double=True)
    elif name == "zoom-in":
        t = _line(scaled(_ZOOM_IN), n, double=False)
    elif name == "circle":
        t = _circle(scaled(_CIRCLE), n)
    elif name == "swing":
        t = _swing(scaled(_SWING), n)
    elif name == "dolly-zoom":
        ref = float(scene_depth) if ref_depth is None else float(ref_depth)
        travel = _DOLLY * mult
        if not (math.isfinite(ref) and ref > 0 and ref - travel > 0):
            raise ValueError(
                f"ref_depth must be > the dolly-zoom forward travel {travel:.4g} (0.24 * scale * "
                f"scene_depth), got {ref!r}"
            )
        t = _line((0.0, 0.0, -travel), n, double=False)
        # A point at depth ref projects with size f / ref; after moving forward by d it is at ref - d, so
        # f' = f * (ref - d) / ref keeps its image size.
        focal = (ref + t[:, 2]) / ref
    else:  # static
        t = np.zeros((n, 3))
    return {
        "poses": jnp.asarray(_poses(t), jnp.float32),
        "focal_scale": jnp.asarray(focal, jnp.float32),
        "name": name,
        "num_frames": n,
    }


def cameras_from_json(path, num_frames=None, size=None, image_size=None):
    """A user camera path from JSON via cine_jax.io.load_cameras (format documented there).

    size: optional working size (H, W): every K is rescaled to it from the file's "size" (or, without
    one, from image_size (h, w), the photo's own size). num_frames: None -> all poses; otherwise the
    first num_frames (more than available is an error). Poses are in the units of the depth.
    Returns dict(poses [N, 4, 4] float32, focal_scale [N] ones, K [N, 3, 3] float32 of the views,
      K_source [3, 3] float32 of the photo, name "json:<path>", num_frames).
    """
    cams = io.load_cameras(path, size=size, image_size=image_size)
    poses, K = cams["poses"], cams["K"]
    total = poses.shape[0]
    if num_frames is not None and num_frames != 0:
        if int(num_frames) != num_frames or not 1 <= num_frames <= total:
            raise ValueError(f"{path}: num_frames must be in 1..{total} (the poses in the file), got {num_frames!r}")
        poses, K = poses[: int(num_frames)], K[: int(num_frames)]
    n = poses.shape[0]
    return {
        "poses": jnp.asarray(poses, jnp.float32),
        "focal_scale": jnp.ones((n,), jnp.float32),
        "K": jnp.asarray(K, jnp.float32),
        "K_source": jnp.asarray(cams["K_source"], jnp.float32),
        "name": f"json:{path}",
        "num_frames": n,
    }
