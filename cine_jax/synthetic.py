"""Synthetic cinemagraph scenes with exact ground truth, for tests and demos.

A scene is a stack of fronto-parallel planes seen by the reference camera: a far textured "water" plane
whose texture flows with a constant velocity, optionally a static near plane (a square) in front. The
texture is an analytic sum of sinusoids, so its value at any (sub-pixel) position is known exactly.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SmoothTexture:
    """RGB texture = 0.5 + sum_k a_k sin(2 pi (f_k . x) + phi_k) per channel, values in [0, 1].

    freqs [K, 2] cycles per pixel, amps [K, 3], phases [K, 3]."""

    freqs: np.ndarray
    amps: np.ndarray
    phases: np.ndarray

    def __call__(self, uv):
        """Texture at pixel coordinates uv [..., 2] (u = column, v = row) -> [..., 3]."""
        uv = np.asarray(uv, np.float64)
        arg = 2 * np.pi * (uv @ self.freqs.T)  # [..., K]
        val = 0.5 + np.einsum("...kc,kc->...c", np.sin(arg[..., None] + self.phases), self.amps)
        return np.clip(val, 0.0, 1.0).astype(np.float32)


def smooth_texture(seed=0, num_waves=4, min_period=24.0, max_period=64.0, amplitude=0.45):
    """A random SmoothTexture whose waves have periods in [min_period, max_period] pixels."""
    rng = np.random.default_rng(seed)
    periods = rng.uniform(min_period, max_period, size=num_waves)
    angles = rng.uniform(0, 2 * np.pi, size=num_waves)
    freqs = np.stack([np.cos(angles), np.sin(angles)], -1) / periods[:, None]
    amps = rng.uniform(0.5, 1.0, size=(num_waves, 3))
    amps = amps / amps.sum(0, keepdims=True) * amplitude
    phases = rng.uniform(0, 2 * np.pi, size=(num_waves, 3))
    return SmoothTexture(freqs, amps, phases)


def pixel_uv(height, width):
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([u, v], -1)


@dataclasses.dataclass
class PlaneScene:
    """image [H,W,3], depth [H,W], mask [H,W] (moving pixels), flow [H,W,2] (px/frame), and the ground
    truth: texture (the far plane's analytic texture), velocity (dx, dy), near_box (top, left, bottom,
    right) or None, near_depth, far_depth, near_color."""

    image: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    flow: np.ndarray
    texture: SmoothTexture
    velocity: tuple
    near_box: object
    near_depth: float
    far_depth: float
    near_color: tuple

    def far_plane_at_time(self, t):
        """Ground-truth far-plane image after t frames of forward advection: tex(p - t v)."""
        h, w = self.depth.shape
        return self.texture(pixel_uv(h, w) - t * np.asarray(self.velocity, np.float32))


def plane_scene(height=64, width=64, velocity=(0.7, 0.3), far_depth=4.0, near_box=None, near_depth=1.0,
                near_color=(0.9, 0.2, 0.1), seed=0):
    """A flowing far plane and an optional static near square. Depth is normalised so the nearest is 1
    when there is a near square (near_depth = 1) and equals far_depth on the far plane."""
    tex = smooth_texture(seed)
    uv = pixel_uv(height, width)
    image = tex(uv)
    depth = np.full((height, width), far_depth, np.float32)
    mask = np.ones((height, width), np.float32)
    if near_box is not None:
        t, l, b, r = near_box
        image[t:b, l:r] = np.asarray(near_color, np.float32)
        depth[t:b, l:r] = near_depth
        mask[t:b, l:r] = 0.0
    flow = np.zeros((height, width, 2), np.float32)
    flow[...] = np.asarray(velocity, np.float32)
    flow *= mask[..., None]
    return PlaneScene(image, depth, mask, flow, tex, tuple(velocity), near_box, near_depth, far_depth,
                      tuple(near_color))


# ---------------------------------------------------------------------------------------------------
# A metric outdoor scene rendered by ray casting: slanted ground with a river, billboards, a backdrop
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Billboard:
    """A static fronto-parallel shape at depth `z` (metres) in the world (= source camera) frame.

    kind "disc": centre (x, y) and radius; kind "rect": x0, x1, y0, y1 (a rectangle whose bottom edge
    y1 may rest on the ground, y1 = camera height). texture is a SmoothTexture in source-image pixels,
    tint multiplies it (so objects differ in colour from the ground)."""

    kind: str
    z: float
    params: tuple
    texture: SmoothTexture
    tint: tuple = (1.0, 1.0, 1.0)

    def inside(self, x, y):
        if self.kind == "disc":
            cx, cy, r = self.params
            return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        x0, x1, y0, y1 = self.params
        return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


@dataclasses.dataclass(frozen=True)
class GroundScene:
    """An outdoor scene in metres with exact answers for every camera and every time.

    World frame = the source camera's frame (OpenCV: x right, y down, z forward); the photo is taken by
    the source camera (identity pose, intrinsics `K`, `height` x `width` pixels). The scene:

    * a ground plane y = camera_height (a camera `camera_height` metres above flat ground), textured;
    * a river: the part of the ground with z in `water_z` (metres), a different texture that flows along
      +x at `water_speed` metres per frame. Seen by the source camera a river point at depth z moves
      fx * water_speed / z pixels per frame along u: the image flow is depth dependent and constant
      along each trajectory (motion along x keeps z), so Euler integration of it is exact;
    * billboards (static discs / rectangles, e.g. a disc hovering over the river or a post standing on
      the ground) in front;
    * a fronto-parallel backdrop z = backdrop_depth behind everything (it meets the ground in a crease,
      a continuous surface, no depth edge).

    Every texture is defined in source-image pixel coordinates of the surface point (the value at a
    3D point X is tex(project_source(X))), so the photo is exactly the textures sampled at pixel
    centres, and any other view samples the same analytic functions, including content the photo
    does not show (behind the billboards, beyond its borders). `render` ray-casts a view at a time.
    """

    height: int
    width: int
    K: np.ndarray
    camera_height: float
    backdrop_depth: float
    water_z: tuple
    water_speed: float
    billboards: tuple
    ground_texture: SmoothTexture
    water_texture: SmoothTexture
    backdrop_texture: SmoothTexture
    backdrop_tint: tuple = (1.0, 1.0, 1.0)

    @property
    def size(self):
        return (self.height, self.width)

    def render(self, pose=None, K=None, size=None, time=0.0):
        """Ray-cast the scene from world-to-camera `pose` [4, 4] (default identity) with intrinsics `K`
        (default the source K) at `size` (H, W) (default the photo's), with the river advected by `time`
        frames (negative = backwards). Returns dict(image [H, W, 3] float32, depth [H, W] float32
        z-depth in the view, surface [H, W] int32 (0 backdrop, 1 ground, 2 water, 3 + k billboard k),
        flow [H, W, 2] float32 the source-view image flow of the surface (px/frame; only meaningful for
        the source camera))."""
        pose = np.eye(4) if pose is None else np.asarray(pose, np.float64)
        K = self.K if K is None else np.asarray(K, np.float64)
        h, w = self.size if size is None else size
        R, tvec = pose[:3, :3], pose[:3, 3]
        origin = -R.T @ tvec
        uv = pixel_uv(h, w).astype(np.float64)
        d_cam = np.stack([(uv[..., 0] - K[0, 2]) / K[0, 0], (uv[..., 1] - K[1, 2]) / K[1, 1],
                          np.ones((h, w))], -1)
        d = d_cam @ R  # rows: R^T d_cam
        best = np.full((h, w), np.inf)
        surface = np.zeros((h, w), np.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            # backdrop
            s = (self.backdrop_depth - origin[2]) / d[..., 2]
            hit = s > 0
            best = np.where(hit, s, best)
            # ground (y down: the ground is below the camera at +camera_height)
            s = (self.camera_height - origin[1]) / d[..., 1]
            hit = (s > 0) & (s < best)
            best = np.where(hit, s, best)
            surface = np.where(hit, 1, surface)
            for k, b in enumerate(self.billboards):
                s = (b.z - origin[2]) / d[..., 2]
                p = origin + s[..., None] * d
                hit = (s > 0) & (s < best) & b.inside(p[..., 0], p[..., 1])
                best = np.where(hit, s, best)
                surface = np.where(hit, 3 + k, surface)
        if not np.all(np.isfinite(best)):
            raise ValueError("GroundScene.render: some rays hit nothing (camera behind the backdrop?)")
        X = origin + best[..., None] * d  # world points [H, W, 3]
        z_world = X[..., 2]
        on_ground = surface == 1
        water = on_ground & (z_world >= self.water_z[0]) & (z_world <= self.water_z[1])
        surface = np.where(water, 2, surface)
        # source-image coordinates of the surface points (texture coordinates)
        u0 = self.K[0, 0] * X[..., 0] / z_world + self.K[0, 2]
        v0 = self.K[1, 1] * X[..., 1] / z_world + self.K[1, 2]
        flow_u = self.K[0, 0] * self.water_speed / z_world
        img = np.zeros((h, w, 3), np.float32)
        st = np.stack([u0, v0], -1)
        img = np.where((surface == 0)[..., None], self.backdrop_texture(st) * np.float32(self.backdrop_tint), img)
        img = np.where(on_ground[..., None] & ~water[..., None], self.ground_texture(st), img)
        moved = np.stack([u0 - time * flow_u, v0], -1)
        img = np.where(water[..., None], self.water_texture(moved), img)
        for k, b in enumerate(self.billboards):
            img = np.where((surface == 3 + k)[..., None], b.texture(st) * np.float32(b.tint), img)
        depth = (X - origin) @ R.T  # camera-frame vectors
        depth = depth[..., 2]
        flow = np.zeros((h, w, 2), np.float32)
        flow[..., 0] = np.where(water, flow_u, 0.0)
        return {"image": np.clip(img, 0, 1).astype(np.float32), "depth": depth.astype(np.float32),
                "surface": surface, "flow": flow}

    def photo(self):
        """The inputs a user would give: dict(image, depth (metres), flow (px/frame), mask (river pixels,
        float32), K) of the source camera at time 0."""
        r = self.render()
        return {"image": r["image"], "depth": r["depth"], "flow": r["flow"],
                "mask": (r["surface"] == 2).astype(np.float32), "K": np.asarray(self.K, np.float64)}

    def cinemagraph_frame(self, t, num_frames, pose=None, K=None, size=None):
        """The exact symmetric-animation frame t of an N-frame loop: the river advected by t frames seen
        with weight 1 - t/N, plus advected by t - N frames with weight t/N (the ideal result of paper
        Eq. 4-5: both states have the same geometry, so the blend weight is the time weight alone)."""
        wf = 1.0 - t / num_frames
        a = self.render(pose, K, size, time=t)["image"]
        if wf == 1.0:
            return a
        b = self.render(pose, K, size, time=t - num_frames)["image"]
        return (wf * a + (1.0 - wf) * b).astype(np.float32)


def metric_intrinsics(height, width, focal_factor=0.85, principal_offset=(3.3, -2.7)):
    """A K of its own (not the reference fx = max(H, W)): fx = fy = focal_factor * W and a principal
    point off the image centre by `principal_offset` (du, dv) pixels. float64 [3, 3]."""
    f = focal_factor * width
    return np.array([[f, 0.0, (width - 1) / 2 + principal_offset[0]],
                     [0.0, f, (height - 1) / 2 + principal_offset[1]],
                     [0.0, 0.0, 1.0]])


def river_scene(height=96, width=128, *, K=None, disc=True, post=False, water_speed=0.006, seed=1):
    """The benchmark / test scene: a camera 1.6 m above flat ground looking level, with a lens shifted
    so the horizon sits at 30% of the height (principal point cy = 0.3 H: a K of its own), a river
    3.2-6.5 m ahead flowing to the right at `water_speed` m/frame (0.1-0.2 px/frame at 96 x 128, 0.2-0.4
    at 192 x 256), a textured disc hovering in front of the river (`disc`), optionally a post standing on the ground
    (`post`), and a backdrop 30 m away. Depth spans ~2.6-30 m."""
    if K is None:
        K = metric_intrinsics(height, width, principal_offset=(3.3, 0.3 * height - (height - 1) / 2))
    K = np.asarray(K, np.float64)
    boards = []
    if disc:
        boards.append(Billboard("disc", 2.6, (-0.35, 0.75, 0.45),
                                smooth_texture(seed + 10, min_period=10, max_period=30), (1.0, 0.55, 0.45)))
    if post:
        boards.append(Billboard("rect", 4.0, (0.8, 1.3, -0.6, 1.6), smooth_texture(seed + 11, min_period=10,
                                                                                 max_period=30), (0.6, 0.6, 1.0)))
    return GroundScene(
        height=height, width=width, K=K, camera_height=1.6, backdrop_depth=30.0, water_z=(3.2, 6.5),
        water_speed=water_speed, billboards=tuple(boards),
        ground_texture=smooth_texture(seed, min_period=12, max_period=40),
        water_texture=smooth_texture(seed + 1, min_period=10, max_period=28),
        backdrop_texture=smooth_texture(seed + 2, min_period=16, max_period=48),
        backdrop_tint=(0.8, 0.9, 1.1),
    )
