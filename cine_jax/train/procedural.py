"""A procedural training / evaluation dataset with exact answers (issue 12, `cine-jax make-data DIR`).

Every clip is a random metric outdoor scene of `cine_jax.synthetic.GroundScene` (the one ray caster of the
project; nothing here renders on its own): a camera above flat textured ground, a river whose texture (a sum
of sinusoids, i.e. smooth band-limited noise) is advected by an analytic Eulerian velocity field, static
occluders (discs hovering over the river, posts standing on the ground), a backdrop, and a K of its own. The
random choices (camera height, lens, river band, flow direction and speed, occluders, textures, novel-view
offsets) are drawn from one `numpy.random.Generator` seeded by the clip's seed, so a dataset is reproducible
bit for bit.

What a clip holds, all exact (no estimation anywhere):

* frames t = 0..F-1: the source view with the river advected by t frames. The river moves along the world
  x axis at constant depth, so its image flow fx * speed / z is constant along each trajectory and
  frame_t(p) = frame_0(p - t * flow(p)) holds exactly on the river (away from occluders and borders);
* flow [H, W, 2] (dx, dy) px/frame: that constant Eulerian field, zero off the river;
* mask [H, W]: the moving (river) pixels; depth [H, W]: metric z-depth of the source view;
* views: renders at time 0 from V camera offsets (metres, world-to-camera poses, OpenCV axes) with their
  z-depth, and the cameras JSON `cine_jax.io.load_cameras` reads (K, K_source, poses, size);
* timed views (the render stage's novel-view targets): the same V cameras at the times `view_times` (frames,
  default every frame 0..F-1), the river advected by t as in frame t: exact ray casts of the scene, so view k
  at time t with a zero offset is frame t. The geometry is static (only the river's texture moves), so a view's
  z-depth is the same at every time and is stored once.

On disk (`write_dataset`), one folder per clip, written atomically:
``frames/000.png ...``, ``depth.npy``, ``flow.npy``, ``mask.png``, ``cameras.json``, ``views/000.png ...``
(time 0), ``views/000_depth.npy ...``, ``views/000_t003.png ...`` (view 0 at time 3; time 0 is ``000.png``),
``meta.json`` (``view_times``); and ``preview.png`` (a contact sheet of a few clips) at the top. Folders written
before timed views existed (no ``view_times`` in meta.json) still read: their views are at time 0 only.
"""

import json
import os

import numpy as np

from cine_jax import io, synthetic, viz
from clitools import outputs as safe_out

# Ranges of the random scene parameters. Defaults chosen so that a 64..768 px clip shows ground, river,
# occluders and backdrop, the fastest river pixels moving 0.5-2 px/frame at 128 px wide.
CAMERA_HEIGHT = (1.2, 2.2)  # metres above the ground
HORIZON = (0.22, 0.42)  # horizon row as a fraction of the height (sets cy: the lens is shifted, not tilted)
FOCAL_FACTOR = (0.7, 1.1)  # fx = fy = factor * W
PRINCIPAL_DU = (-0.04, 0.04)  # cx offset from the image centre, fraction of W
RIVER_FAR_ROW = (0.08, 0.3)  # far bank row, as a fraction of the ground's rows below the horizon
RIVER_ROWS = (0.3, 0.9)  # near bank row = far bank row + this fraction (past 1 = below the picture)
BACKDROP = (20.0, 40.0)  # metres
MAX_FLOW = (0.5, 2.0)  # px/frame at the near bank (the fastest river pixels) of a 128 px wide clip; scales with W
VIEW_OFFSET = 0.08  # metres: largest |translation| per axis of a novel view (about 3% of the nearest depth)
VIEW_ROTATION = 2.0  # degrees: largest rotation about each axis of a novel view
MAX_OCCLUDERS = 3


def _check_size(size):
    if not (isinstance(size, tuple | list) and len(size) == 2):
        raise ValueError(f"size must be (height, width), got {size!r}")
    h, w = size
    if not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size) or min(h, w) < 16:
        raise ValueError(f"size must be two integers >= 16 (height, width), got {size!r}")
    return int(h), int(w)


def _rotation(rx, ry, rz):
    """R = Rz Ry Rx for angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _texture(rng, min_period, max_period, num_waves=6):
    return synthetic.smooth_texture(int(rng.integers(2**31)), num_waves=num_waves, min_period=min_period,
                                    max_period=max_period)


def random_scene(rng, size):
    """A random GroundScene of `size` (H, W) drawn from `rng` (numpy Generator). Textures are in source
    pixels, so their periods scale with the width (the same scene at another size looks the same)."""
    h, w = _check_size(size)
    s = w / 128.0  # texture periods below are for a 128 px wide clip
    cam_h = rng.uniform(*CAMERA_HEIGHT)
    f = rng.uniform(*FOCAL_FACTOR) * w
    cx = (w - 1) / 2 + rng.uniform(*PRINCIPAL_DU) * w
    cy = rng.uniform(*HORIZON) * h
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    # river banks chosen by image row, so the river is always in the picture: a ground point at row v has
    # z = f * camera_height / (v - cy)
    far_frac = rng.uniform(*RIVER_FAR_ROW)
    near_frac = far_frac + rng.uniform(*RIVER_ROWS)
    far = f * cam_h / (far_frac * (h - cy))
    near = f * cam_h / (near_frac * (h - cy))
    backdrop = rng.uniform(*BACKDROP)
    # speed (m/frame) so the near bank moves MAX_FLOW px/frame (scaled with the width); random direction
    speed = rng.uniform(*MAX_FLOW) * s * near / f * rng.choice([-1.0, 1.0])
    boards = []
    for _ in range(int(rng.integers(1, MAX_OCCLUDERS + 1))):
        z = rng.uniform(0.7 * near, near + 0.5 * (far - near))
        # x within the view at depth z (a margin of 10% each side)
        half_x = (w / 2) / f * z * 0.8
        x = rng.uniform(-half_x, half_x)
        tint = tuple(float(t) for t in rng.uniform(0.45, 1.1, 3))
        tex = _texture(rng, 8 * s, 24 * s)
        if rng.random() < 0.5:  # a disc hovering above the ground
            r = rng.uniform(0.15, 0.45) * z / 3.0
            y = cam_h - r - rng.uniform(0.1, 0.8)
            boards.append(synthetic.Billboard("disc", float(z), (float(x), float(y), float(r)), tex, tint))
        else:  # a post standing on the ground (bottom edge at y = camera height)
            half = rng.uniform(0.08, 0.3) * z / 3.0
            top = cam_h - rng.uniform(0.8, 2.5)
            boards.append(synthetic.Billboard("rect", float(z), (float(x - half), float(x + half), float(top),
                                                                 float(cam_h)), tex, tint))
    return synthetic.GroundScene(
        height=h, width=w, K=K, camera_height=float(cam_h), backdrop_depth=float(backdrop),
        water_z=(float(near), float(far)), water_speed=float(speed), billboards=tuple(boards),
        ground_texture=_texture(rng, 12 * s, 40 * s), water_texture=_texture(rng, 9 * s, 26 * s),
        backdrop_texture=_texture(rng, 16 * s, 48 * s),
        backdrop_tint=tuple(float(t) for t in rng.uniform(0.7, 1.1, 3)),
    )


def random_view_pose(rng, offset=VIEW_OFFSET, rotation_deg=VIEW_ROTATION):
    """A world-to-camera [4, 4] near the source camera: translation uniform in [-offset, offset]^3 metres,
    rotation Rz Ry Rx with angles uniform in [-rotation_deg, rotation_deg]."""
    ang = np.radians(rng.uniform(-rotation_deg, rotation_deg, 3))
    P = np.eye(4)
    P[:3, :3] = _rotation(*ang)
    P[:3, 3] = rng.uniform(-offset, offset, 3)
    return P


def _check_view_times(view_times, frames):
    if view_times is None:
        return list(range(frames))
    times = list(view_times)
    if not times or any(not isinstance(t, int | np.integer) or isinstance(t, bool) or not 0 <= t < frames
                        for t in times) or len(set(times)) != len(times):
        raise ValueError(f"view_times must be distinct integers in [0, {frames - 1}] (frames), got {view_times!r}")
    if 0 not in times:
        times = [0] + times  # the time-0 views are always written (views/NNN.png)
    return sorted(int(t) for t in times)


def make_clip(seed, size=(96, 128), frames=8, views=3, *, view_offset=VIEW_OFFSET, view_rotation=VIEW_ROTATION,
              view_times=None):
    """One procedural clip, a pure function of `seed` (an int or a sequence of ints for numpy's
    `default_rng`).

    size: (H, W) pixels (>= 16 each); frames: F >= 2 frames; views: V >= 1 novel views.
    Returns dict:
      frames [F, H, W, 3] float32 in [0, 1] (frame t = river advected by t frames, source camera);
      depth [H, W] float32 z-depth in metres; flow [H, W, 2] float32 (dx, dy) px/frame, exact and constant
      in time; mask [H, W] bool (river pixels); surface [H, W] int32 (synthetic.GroundScene.render codes);
      K [3, 3] float64 (the source camera's, also used by the views);
      poses [V, 4, 4] float64 world-to-camera (world = source camera frame, metres);
      views [V, H, W, 3] float32 renders at time 0; view_depth [V, H, W] float32 (the same at every time);
      view_times [T] ints (sorted, holds 0; default every frame); timed_views [V, T, H, W, 3] float32: view k at
      time view_times[j] (the river advected by that many frames, as in the frames);
      scene: the GroundScene (exact answers at any time / camera); seed.
    The random draws do not depend on view_times: the same seed gives the same scene and cameras.
    """
    h, w = _check_size(size)
    if not (isinstance(frames, int | np.integer) and frames >= 2):
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    if not (isinstance(views, int | np.integer) and views >= 1):
        raise ValueError(f"views must be an integer >= 1, got {views!r}")
    times = _check_view_times(view_times, frames)
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, (h, w))
    poses = np.stack([random_view_pose(rng, view_offset, view_rotation) for _ in range(views)])
    first = scene.render(time=0.0)
    imgs = [first["image"]] + [scene.render(time=float(t))["image"] for t in range(1, frames)]
    rendered = [scene.render(pose=P, time=0.0) for P in poses]
    timed = np.stack([np.stack([r["image"] if t == 0 else scene.render(pose=P, time=float(t))["image"]
                                for t in times]) for P, r in zip(poses, rendered)])
    return {
        "frames": np.stack(imgs),
        "depth": first["depth"],
        "flow": first["flow"],
        "mask": first["surface"] == 2,
        "surface": first["surface"],
        "K": np.asarray(scene.K, np.float64),
        "poses": poses,
        "views": np.stack([r["image"] for r in rendered]),
        "view_depth": np.stack([r["depth"] for r in rendered]),
        "view_times": times,
        "timed_views": timed,
        "scene": scene,
        "seed": seed,
    }


def clip_seed(seed, index):
    """The seed of clip `index` of a dataset with seed `seed` (independent streams per clip)."""
    return [int(seed), int(index)]


def _meta(clip, size, frames):
    sc = clip["scene"]
    flow_mag = np.hypot(clip["flow"][..., 0], clip["flow"][..., 1])
    return {
        "seed": clip["seed"], "size": [size[1], size[0]], "frames": frames, "views": len(clip["poses"]),
        "units": "metres (depth, poses); flow in pixels per frame",
        "K": np.asarray(clip["K"]).tolist(),
        "camera_height": sc.camera_height, "backdrop_depth": sc.backdrop_depth,
        "river_z": list(sc.water_z), "river_speed_m_per_frame": sc.water_speed,
        "flow_px_per_frame": {"min": float(flow_mag[clip["mask"]].min()), "max": float(flow_mag.max())},
        "moving_fraction": float(clip["mask"].mean()),
        "occluders": [{"kind": b.kind, "z": b.z, "params": list(b.params)} for b in sc.billboards],
        "view_time": 0,
        "view_times": [int(t) for t in clip.get("view_times", [0])],
        "files": {"frames": "frames/NNN.png (time t = NNN frames)", "depth": "depth.npy (z-depth, metres)",
                  "flow": "flow.npy [H, W, 2] (dx, dy) px/frame", "mask": "mask.png (255 = moving)",
                  "cameras": "cameras.json (cine_jax.io.load_cameras)",
                  "views": "views/NNN.png + views/NNN_depth.npy at time 0 from cameras.json poses[NNN]",
                  "timed_views": "views/NNN_tTTT.png: view NNN at time TTT frames (view_times; depth as time 0)"},
    }


def write_clip(clip, directory):
    """Writes one clip into folder `directory` (created atomically: a killed run leaves no half clip).
    Returns the folder."""
    f, h, w = clip["frames"].shape[:3]
    with safe_out.atomic_dir(directory) as tmp:
        os.makedirs(os.path.join(tmp, "frames"))
        os.makedirs(os.path.join(tmp, "views"))
        for t, fr in enumerate(clip["frames"]):
            io.write_png(os.path.join(tmp, "frames", f"{t:03d}.png"), fr)
        np.save(os.path.join(tmp, "depth.npy"), clip["depth"].astype(np.float32))
        np.save(os.path.join(tmp, "flow.npy"), clip["flow"].astype(np.float32))
        io.write_png(os.path.join(tmp, "mask.png"), clip["mask"].astype(np.uint8) * 255)
        for k, (img, d) in enumerate(zip(clip["views"], clip["view_depth"])):
            io.write_png(os.path.join(tmp, "views", f"{k:03d}.png"), img)
            np.save(os.path.join(tmp, "views", f"{k:03d}_depth.npy"), d.astype(np.float32))
        for k, per_time in enumerate(clip.get("timed_views", ())):
            for t, img in zip(clip["view_times"], per_time):
                if t != 0:  # time 0 is views/NNN.png
                    io.write_png(os.path.join(tmp, "views", f"{k:03d}_t{t:03d}.png"), img)
        K = np.asarray(clip["K"]).tolist()
        cams = {"K": K, "K_source": K, "size": [w, h], "poses": np.asarray(clip["poses"]).tolist()}
        with open(os.path.join(tmp, "cameras.json"), "w") as fh:
            json.dump(cams, fh, indent=1)
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(_meta(clip, (h, w), f), fh, indent=2)
    return os.fspath(directory)


def _read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255.0


def read_clip(directory):
    """Reads a clip folder written by `write_clip` (as 8-bit PNG values in [0, 1]). Returns dict(frames
    [F, H, W, 3], depth [H, W], flow [H, W, 2], mask [H, W] bool, K [3, 3], poses [V, 4, 4], view_depth
    [V, H, W], view_times [T], timed_views [V, T, H, W, 3]). Clips written before timed views existed have
    view_times [0]. ValueError naming the file when one is missing or inconsistent."""
    directory = os.fspath(directory)

    def need(*parts):
        p = os.path.join(directory, *parts)
        if not os.path.isfile(p):
            raise ValueError(f"{p}: file not found (a make-data clip folder holds it)")
        return p

    with open(need("meta.json")) as fh:
        meta = json.load(fh)
    n_frames, n_views = int(meta["frames"]), int(meta["views"])
    times = [int(t) for t in meta.get("view_times", [0])]
    cams = io.load_cameras(need("cameras.json"))
    frames = np.stack([_read_png(need("frames", f"{t:03d}.png")) for t in range(n_frames)])
    if len(cams["poses"]) != n_views:
        raise ValueError(f"{need('cameras.json')}: {len(cams['poses'])} poses, meta.json says {n_views} views")
    timed = np.stack([np.stack([_read_png(need("views", f"{k:03d}.png" if t == 0 else f"{k:03d}_t{t:03d}.png"))
                                for t in times]) for k in range(n_views)])
    return {
        "frames": frames,
        "depth": np.load(need("depth.npy")),
        "flow": np.load(need("flow.npy")),
        "mask": _read_png(need("mask.png"))[..., 0] > 0.5,
        "K": np.asarray(cams["K_source"], np.float64),
        "poses": np.asarray(cams["poses"], np.float64),
        "view_depth": np.stack([np.load(need("views", f"{k:03d}_depth.npy")) for k in range(n_views)]),
        "view_times": times,
        "timed_views": timed,
    }


def preview_tiles(clip, name):
    """Contact-sheet tiles of one clip: frame 0, depth, flow (colour wheel), mask, novel view 0."""
    return [
        (f"{name} frame 0", clip["frames"][0]),
        ("depth", viz.depth_to_color(clip["depth"])),
        ("flow", viz.flow_to_color(clip["flow"])),
        ("mask", clip["mask"].astype(np.float32)),
        ("view 0", clip["views"][0]),
    ]


def write_dataset(directory, num_clips, size=(96, 128), frames=8, views=3, seed=0, *, preview_clips=4,
                  progress=True):
    """Writes `num_clips` clips (`clip_0000`, ...) into `directory` (which must exist; the CLI checks it
    with clitools.prepare_output_dir) and `preview.png`. Clip i uses seed `clip_seed(seed, i)`, so a dataset
    is the same bit for bit for the same arguments. Returns the list of clip folders."""
    if not (isinstance(num_clips, int | np.integer) and num_clips >= 1):
        raise ValueError(f"num_clips must be an integer >= 1, got {num_clips!r}")
    from tqdm.auto import tqdm

    paths, tiles = [], []
    for i in tqdm(range(num_clips), desc="make-data", unit="clip", disable=not progress):
        clip = make_clip(clip_seed(seed, i), size, frames, views)
        name = f"clip_{i:04d}"
        paths.append(write_clip(clip, os.path.join(directory, name)))
        if i < preview_clips:
            tiles += preview_tiles(clip, name)
    h, w = _check_size(size)
    th = 160
    sheet = viz.contact_sheet(tiles, columns=5, tile_size=(th, max(1, round(th * w / h))))
    with safe_out.atomic_path(os.path.join(directory, "preview.png")) as tmp:
        io.write_png(tmp, sheet)
    return paths
