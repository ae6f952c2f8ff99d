"""Analytic dynamic scenes with exact ground truth, for testing 4D reconstruction.

A scene is a few coloured spheres moving on known paths over t in [0, 1] in front of a constant
background colour. Every sphere centre follows

    c(t) = origin + a cos(2 pi f t + phi) + b sin(2 pi f t + phi) + v t,

which covers circles (a, b orthogonal with equal length), ellipses, lines (a = b = 0) and rest (all 0).
Rendering is closed-form ray-sphere intersection, so rgb, z-depth, ray distance and the alpha mask are
exact for any camera (pose, K, h, w) and any time. World frame: y up (as four_d/cameras.py); poses are
world-to-camera 4x4 in the OpenCV convention (ARCHITECTURE.md).
"""

import dataclasses
import json
import math
import os

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

from kernels.camera import camera_rays, intrinsics_from_fov, look_at, transform_points
from kernels.mathx import safe_normalize

SCENE_NAMES = ("orbiting-spheres", "single-sphere")
SHADING_MODES = ("lambertian", "flat")


@dataclasses.dataclass(frozen=True)
class SphereScene:
    """K spheres; all arrays are NumPy float32 (so the scene is a hashable, static description).

    origin, axis_a, axis_b, velocity: [K, 3] world units; freq [K] cycles per unit time; phase [K]
    radians; radius [K]; color [K, 3] in [0, 1]; background [3]; light_dir [3] (towards the light);
    ambient in [0, 1]; shading "lambertian" (albedo * (ambient + (1 - ambient) max(0, n.l))) or "flat".
    """

    origin: np.ndarray
    axis_a: np.ndarray
    axis_b: np.ndarray
    velocity: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    radius: np.ndarray
    color: np.ndarray
    background: np.ndarray
    light_dir: np.ndarray
    ambient: float = 0.5
    shading: str = "lambertian"

    def __hash__(self):
        return id(self)

    @property
    def num_spheres(self):
        return int(self.radius.shape[0])


def _f32(x):
    return np.asarray(x, np.float32)


def make_scene(name="orbiting-spheres", seed=0, shading="lambertian"):
    """A named analytic scene. `seed` perturbs phases and colours slightly (deterministic).

    "orbiting-spheres": two spheres circling the y axis (radius 0.35, one full turn over t in [0, 1],
    opposite phases) and one sphere moving up along a line through the origin; all inside |x| < 0.6 so
    the scene fills a fovy-40 camera at the official radius 1.8 (animate124.md section 3).
    "single-sphere": one static sphere of radius 0.4 at the origin.
    """
    if name not in SCENE_NAMES:
        raise ValueError(f"four_d/scenes.py make_scene: unknown scene {name!r}; choose one of {SCENE_NAMES}")
    if shading not in SHADING_MODES:
        raise ValueError(f"four_d/scenes.py make_scene: shading must be one of {SHADING_MODES}, got {shading!r}")
    rs = np.random.default_rng(seed)
    if name == "orbiting-spheres":
        dphi = rs.uniform(-0.3, 0.3, size=3)
        origin = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -0.25, 0.0]]
        axis_a = [[0.35, 0.0, 0.0], [0.35, 0.0, 0.0], [0.0, 0.0, 0.0]]
        axis_b = [[0.0, 0.0, 0.35], [0.0, 0.0, 0.35], [0.0, 0.0, 0.0]]
        velocity = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]
        freq = [1.0, 1.0, 0.0]
        phase = [0.0 + dphi[0], math.pi + dphi[1], 0.0]
        radius = [0.2, 0.16, 0.14]
        base = np.array([[0.9, 0.2, 0.15], [0.15, 0.6, 0.9], [0.2, 0.8, 0.25]])
        color = np.clip(base + rs.uniform(-0.05, 0.05, (3, 3)), 0, 1)
    else:
        origin, axis_a, axis_b, velocity = [[0.0] * 3], [[0.0] * 3], [[0.0] * 3], [[0.0] * 3]
        freq, phase, radius = [0.0], [0.0], [0.4]
        color = [[0.8, 0.4, 0.2]]
    light = np.array([0.3, 1.0, 0.6])
    return SphereScene(
        origin=_f32(origin), axis_a=_f32(axis_a), axis_b=_f32(axis_b), velocity=_f32(velocity),
        freq=_f32(freq), phase=_f32(phase), radius=_f32(radius), color=_f32(color),
        background=_f32([1.0, 1.0, 1.0]), light_dir=_f32(light / np.linalg.norm(light)),
        ambient=0.5, shading=shading,
    )


def sphere_centers(scene, t):
    """Centres [K, 3] of the spheres at time t (scalar, in [0, 1])."""
    ang = 2.0 * jnp.pi * jnp.asarray(scene.freq) * t + jnp.asarray(scene.phase)
    return (
        jnp.asarray(scene.origin)
        + jnp.asarray(scene.axis_a) * jnp.cos(ang)[:, None]
        + jnp.asarray(scene.axis_b) * jnp.sin(ang)[:, None]
        + jnp.asarray(scene.velocity) * t
    )


def intersect_rays(scene, origins, directions, t):
    """Closed-form nearest ray-sphere hit for rays [..., 3] (unit directions) at time t.

    Returns dict(distance [...] (ray parameter of the nearest hit in front of the origin, 0 on a miss),
    hit [...] bool, index [...] int (sphere id, 0 on a miss), normal [..., 3] (outward unit normal)).
    """
    centers = sphere_centers(scene, t)  # [K, 3]
    radius = jnp.asarray(scene.radius)
    oc = origins[..., None, :] - centers  # [..., K, 3]
    b = jnp.sum(directions[..., None, :] * oc, -1)
    c = jnp.sum(oc * oc, -1) - radius**2
    disc = b * b - c
    root = jnp.sqrt(jnp.maximum(disc, 0.0))
    t0 = -b - root
    t1 = -b + root
    # The nearer root if it is in front of the camera, else the far one (origin inside the sphere).
    tk = jnp.where(t0 > 0, t0, t1)
    valid = (disc >= 0) & (tk > 0)
    tk = jnp.where(valid, tk, jnp.inf)
    index = jnp.argmin(tk, axis=-1)
    dist = jnp.take_along_axis(tk, index[..., None], -1)[..., 0]
    hit = jnp.isfinite(dist)
    dist = jnp.where(hit, dist, 0.0)
    point = origins + directions * dist[..., None]
    normal = safe_normalize(point - centers[index])
    return {"distance": dist, "hit": hit, "index": jnp.where(hit, index, 0), "normal": normal}


def render(scene, pose, K, h, w, t):
    """Render the scene exactly from a camera at time t.

    pose: world-to-camera [4, 4]; K [3, 3]; h, w static ints; t scalar in [0, 1].
    Returns dict(rgb [H, W, 3] in [0, 1] (over the background), depth [H, W] (z-depth, 0 where empty),
    distance [H, W] (along the unit ray, 0 where empty), alpha [H, W] in {0, 1}, normal [H, W, 3]).
    """
    origins, directions = camera_rays(pose, K, h, w)
    hit = intersect_rays(scene, origins, directions, t)
    albedo = jnp.asarray(scene.color)[hit["index"]]
    if scene.shading == "lambertian":
        lam = jnp.maximum(0.0, jnp.sum(hit["normal"] * jnp.asarray(scene.light_dir), -1))
        col = albedo * (scene.ambient + (1.0 - scene.ambient) * lam)[..., None]
    else:
        col = albedo
    mask = hit["hit"]
    rgb = jnp.where(mask[..., None], col, jnp.asarray(scene.background))
    point_cam = transform_points(pose, origins + directions * hit["distance"][..., None])
    depth = jnp.where(mask, point_cam[..., 2], 0.0)
    return {
        "rgb": rgb.astype(jnp.float32),
        "depth": depth,
        "distance": hit["distance"],
        "alpha": mask.astype(jnp.float32),
        "normal": jnp.where(mask[..., None], hit["normal"], 0.0),
    }


def orbit_pose(polar_deg, azimuth_deg, radius):
    """World-to-camera pose on a sphere around the origin looking at it, y up.

    Official provider convention (animate124.md section 3): polar from +y, azimuth 0 looks from +z, so
    eye = radius * (sin p sin a, cos p, sin p cos a).
    """
    p, a = math.radians(polar_deg), math.radians(azimuth_deg)
    eye = radius * np.array([math.sin(p) * math.sin(a), math.cos(p), math.sin(p) * math.cos(a)])
    return look_at(eye, (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))


def dataset_cameras(num_views, radius=1.8, seed=0):
    """Deterministic view set: azimuths evenly spaced (with a seeded offset), polar alternating 60/90/75."""
    rs = np.random.default_rng(seed)
    off = rs.uniform(0.0, 360.0 / max(num_views, 1))
    polars = (60.0, 90.0, 75.0)
    return [orbit_pose(polars[i % 3], off + 360.0 * i / num_views, radius) for i in range(num_views)]


def write_dataset(scene, out_dir, num_views=8, times=(0.0, 0.25, 0.5, 0.75, 1.0), size=32, *,
                  num_test_views=2, radius=1.8, fovy=40.0, seed=0, views=None, test_views=None):
    """Render every (view, time) pair to PNG and write cameras.json.

    Cameras: by default the first `num_views` of dataset_cameras are "train" and the next
    `num_test_views` (other azimuths) are "test"; or explicit `views` / `test_views`, sequences of
    (polar, azimuth) in degrees (four_d/cameras.py convention, looking at the origin from `radius`).
    cameras.json: {"K": 3x3, "height", "width", "background", "frames": [{"file", "pose" (4x4
    world-to-camera), "time", "split", "polar", "azimuth"}]}. Returns the path of cameras.json.
    """
    if views is not None or test_views is not None:
        views, test_views = list(views or []), list(test_views or [])
        if not views:
            raise ValueError("four_d/scenes.py write_dataset: `views` must list at least one (polar, azimuth)")
        for pa in views + test_views:
            if len(pa) != 2 or not 0.0 < float(pa[0]) < 180.0:
                raise ValueError(f"four_d/scenes.py write_dataset: views are (polar, azimuth) pairs with "
                                 f"0 < polar < 180 degrees, got {pa!r}")
        angles = [(float(p), float(a)) for p, a in views + test_views]
        poses = [orbit_pose(p, a, radius) for p, a in angles]
        num_views = len(views)
    else:
        if size <= 0 or num_views <= 0:
            raise ValueError(f"four_d/scenes.py write_dataset: size and num_views must be positive, "
                             f"got {size}, {num_views}")
        poses = dataset_cameras(num_views + num_test_views, radius, seed)
        angles = [None] * len(poses)
    if size <= 0:
        raise ValueError(f"four_d/scenes.py write_dataset: size must be positive, got {size}")
    os.makedirs(out_dir, exist_ok=True)
    K = intrinsics_from_fov(fovy, size, size)
    render_fn = jax.jit(lambda pose, t: render(scene, pose, K, size, size, t))
    frames = []
    for v, pose in enumerate(poses):
        split = "train" if v < num_views else "test"
        for k, t in enumerate(times):
            out = render_fn(pose, jnp.float32(t))
            name = f"v{v:03d}_t{k:03d}.png"
            img = np.asarray(jnp.round(out["rgb"] * 255.0)).astype(np.uint8)
            iio.imwrite(os.path.join(out_dir, name), img)
            frame = {"file": name, "pose": np.asarray(pose).tolist(), "time": float(t), "split": split}
            if angles[v] is not None:
                frame["polar"], frame["azimuth"] = angles[v]
            frames.append(frame)
    meta = {
        "K": np.asarray(K).tolist(),
        "height": size,
        "width": size,
        "background": scene.background.tolist(),
        "frames": frames,
    }
    path = os.path.join(out_dir, "cameras.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    return path
