"""One photo to a 3D cinemagraph: depth -> LDI -> point cloud -> symmetric animation -> frames.

`animate` is the Python entry point; `cine-jax animate` (cli.py) wraps it and writes the outputs.
"""

import dataclasses
import math
import os
import time as _time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from cine_jax import depth as depth_lib
from cine_jax import io, layering, learned, motion, render, scene, trajectories
from configs import cinemagraph as cinemagraph_config
from kernels import camera


@dataclasses.dataclass
class AnimateResult:
    """Frames and the intermediates of `animate`, all NumPy.

    frames [N, H, W, 3] float32 in [0, 1]; image [H, W, 3] the working-size input; depth [H, W];
    ldi (layering.LDI); flow [H, W, 2] Eulerian flow (px/frame); mask [H, W] or None;
    displacement dict(forward [N, H, W, 2], backward [N, H, W, 2]) of the input pixels (the nearest
    layer); poses [N, 4, 4]; K [N, 3, 3]; stats (counts of dropped points, timings in seconds).
    """

    frames: np.ndarray
    image: np.ndarray
    depth: np.ndarray
    ldi: object
    flow: np.ndarray
    mask: object
    hints: list
    displacement: dict
    poses: np.ndarray
    K: np.ndarray
    stats: dict


def _is_path(x):
    return isinstance(x, str | os.PathLike)


MIN_IMAGE_SIDE = 16  # smaller inputs cannot hold a layered scene; refuse rather than upsample noise


def _check_image_size(shape, name):
    if min(shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name}: image is {shape[1]}x{shape[0]} pixels; need at least {MIN_IMAGE_SIDE} "
                         "on each side")


def _as_image(image, cfg):
    if _is_path(image):
        img, info = io.load_image(image, max_side=cfg.io.max_side, multiple_of=cfg.io.multiple_of)
        _check_image_size(info["original_size"], str(image))
        return img, tuple(info["original_size"]), str(image)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image array must be [H, W, 3] (or 4), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = np.asarray(arr[..., :3], np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("image array contains NaN or inf")
    _check_image_size(arr.shape, "image array")
    original = arr.shape[:2]
    size = io.working_size(*original, max_side=cfg.io.max_side, multiple_of=cfg.io.multiple_of)
    if size != original:
        import cv2

        interp = cv2.INTER_AREA if size[0] < original[0] else cv2.INTER_CUBIC
        arr = np.clip(cv2.resize(arr, (size[1], size[0]), interpolation=interp), 0.0, 1.0)
    return arr, tuple(original), "<array>"


def _resize_array(arr, size, original, name, interp_area=True):
    """Bring a user array (mask, depth, flow) given at the image's resolution, or any resolution with the
    image's aspect ratio, to the working size."""
    import cv2

    arr = np.asarray(arr, np.float32)
    if arr.ndim < 2 or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name} array must be at least 2-D [H, W, ...], got shape {arr.shape}")
    h, w = arr.shape[:2]
    if abs((w / h) / (original[1] / original[0]) - 1.0) > io.ASPECT_TOLERANCE:
        raise ValueError(f"{name} array is {w}x{h} but the image is {original[1]}x{original[0]}: the aspect "
                         "ratios differ")
    if arr.shape[:2] == tuple(size):
        return arr
    interp = cv2.INTER_AREA if interp_area and arr.shape[0] > size[0] else cv2.INTER_LINEAR
    out = cv2.resize(arr, (size[1], size[0]), interpolation=interp)
    return out.reshape(tuple(size) + arr.shape[2:])


def _rescale_hints(hints, original, size):
    """Hints given with an image array are in its pixels: move them to the working size."""
    starts, vectors = motion.parse_hints(hints)
    st = np.asarray(starts, np.float64)
    outside = (st[:, 0] < -0.5) | (st[:, 0] > original[1] - 0.5) | (st[:, 1] < -0.5) | (st[:, 1] > original[0] - 0.5)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(f"hint {k} starts at ({st[k, 0]:g}, {st[k, 1]:g}), outside the "
                         f"{original[1]}x{original[0]} image")
    if tuple(original) == tuple(size):
        return [(tuple(map(float, s)), tuple(map(float, v))) for s, v in zip(np.asarray(starts), np.asarray(vectors))]
    starts = io.rescale_points(np.asarray(starts, np.float64), original, size)
    scale = np.array([size[1] / original[1], size[0] / original[0]])
    vectors = np.asarray(vectors, np.float64) * scale
    return [(tuple(map(float, s)), tuple(map(float, v))) for s, v in zip(starts, vectors)]


def _load_motion(mask, hints, flow, size, original, cfg, image=None, estimator=None):
    """Returns (flow [H,W,2], mask [H,W] or None, hints list). Hints become a flow through `estimator`
    (motion.MOTION_ESTIMATORS: default the weight-free "hints"; the learned motion net also reads `image`)."""
    m = None
    hint_list = []
    if mask is not None:
        if _is_path(mask):
            m = io.load_mask(mask, size, image_size=original)
        else:
            m = _resize_array(mask, size, original, "mask")
            if m.ndim != 2 or not np.all(np.isfinite(m)):
                raise ValueError(f"mask array must be a finite [H, W] array, got shape {np.shape(mask)}")
            m = np.clip(m, 0.0, 1.0)
            if m.max() <= 0:
                raise ValueError("mask array is empty: no pixel is marked as moving")
    if hints is not None:
        if _is_path(hints):
            ann = io.load_annotations(hints, original, size, frames=cfg.io.hint_frames)
            hint_list = list(ann.hints)
            if m is None and ann.mask is not None:
                m = ann.mask
        else:
            hint_list = _rescale_hints(hints, original, size)
    if flow is not None:
        if _is_path(flow):
            f = io.load_flow(flow, size, image_size=original)
        else:
            f = np.asarray(flow, np.float32)
            if f.ndim != 3 or f.shape[2] != 2:
                raise ValueError(f"flow array must be [H, W, 2], got shape {f.shape}")
            if f.shape[:2] != tuple(size):
                scale = np.array([size[1] / f.shape[1], size[0] / f.shape[0]], np.float32)
                f = _resize_array(f, size, original, "flow", interp_area=False) * scale
            if not np.all(np.isfinite(f)):
                raise ValueError("flow array contains NaN or inf")
        f = motion.prepare_flow(f, m, flow_scale=cfg.motion.flow_scale)
        return f, m, hint_list
    if hint_list:
        if m is None:
            raise ValueError("flow hints need a motion mask (a mask file, or 'motion' polygons in the hints file)")
        if estimator is None:
            estimator = motion.HintFlow.from_config(cfg.motion)
        f = estimator(image, m, hint_list, size)
        return f, m, hint_list
    if m is not None:
        raise ValueError("a motion mask needs flow hints (--hints) or a dense flow (--flow) to animate")
    return np.zeros(tuple(size) + (2,), np.float32), None, []


def _depth(depth, image, size, original, cfg, seed, components=None):
    """z-depth [H, W] at the working size and whether it was estimated.

    Units (ARCHITECTURE.md): depth the user gives keeps its units (explicit poses are in those units);
    estimated depth is relative, so it is normalised as the official code does: nearest pixel =
    cfg.depth.near (1)."""
    if depth is None:
        if components is None:
            components = learned.resolve(cfg, seed)
        est = components.build("depth")
        name = components["depth"][0]
        d = depth_lib.validate_depth(np.asarray(est(image), np.float32), f"{name} depth estimate")
        return (d / float(d.min()) * cfg.depth.near).astype(np.float32), True
    if _is_path(depth):
        d = io.load_depth(depth, size, image_size=original)
    else:
        d = _resize_array(depth, size, original, "depth")
        d = depth_lib.validate_depth(d, "depth array")
    return depth_lib.validate_depth(d, "depth").astype(np.float32), False


def reference_intrinsics(height, width):
    """Official intrinsics: fx = fy = max(h, w), principal point at the image centre."""
    return np.asarray(camera.intrinsics_from_focal(float(max(height, width)), height, width))


def _cameras(trajectory, poses, intrinsics, num_frames, size, original, scene_depth, cfg):
    """(poses [N, 4, 4], Ks [N, 3, 3] of the rendered views, K_src [3, 3] of the photo).

    A named trajectory moves in units of the nearest depth (scene_depth; the official magnitudes assume
    it is 1) and uses the reference intrinsics (official fx = fy = max(H, W)) for the photo and the
    views. Explicit poses (a cameras JSON or an [N, 4, 4] array) are in the units of the depth; the photo
    is unprojected with the cameras file's K_source (default its K), or with `intrinsics` given with
    array poses (default the reference intrinsics)."""
    h, w = size
    K0 = reference_intrinsics(h, w)
    if poses is not None:
        if _is_path(poses):
            cams = trajectories.cameras_from_json(poses, num_frames=num_frames, size=size, image_size=original)
            return (np.asarray(cams["poses"], np.float32), np.asarray(cams["K"], np.float32),
                    np.asarray(cams["K_source"], np.float32))
        P = np.asarray(poses, np.float32)
        if P.ndim != 3 or P.shape[1:] != (4, 4) or not np.all(np.isfinite(P)):
            raise ValueError(f"poses must be finite [N, 4, 4] world-to-camera matrices, got shape {P.shape}")
        if num_frames is not None and num_frames != len(P):
            raise ValueError(f"num_frames {num_frames} disagrees with the {len(P)} poses given")
        K = K0 if intrinsics is None else _intrinsics_array(intrinsics, size, original)
        return P, np.broadcast_to(K, (len(P), 3, 3)).astype(np.float32), np.asarray(K, np.float32)
    if intrinsics is not None:
        raise ValueError("intrinsics are only used with explicit poses (a named trajectory uses the reference "
                         "camera); give poses=[N, 4, 4] too, or a cameras JSON")
    traj = trajectories.make_trajectory(
        trajectory, num_frames=num_frames, scale=cfg.trajectory.scale, scene_depth=scene_depth
    )
    P = np.asarray(traj["poses"], np.float32)
    Ks = np.broadcast_to(K0, (len(P), 3, 3)).copy()
    fs = np.asarray(traj["focal_scale"], np.float32)
    Ks[:, 0, 0] *= fs
    Ks[:, 1, 1] *= fs
    return P, Ks.astype(np.float32), np.asarray(K0, np.float32)


def reveal_width(poses, Ks, K_src, flow, num_frames, pad=2.0, max_points=4096):
    """How far content behind an occluding contour can come into view, for layering.build_ldi.

    Returns f(layer, uv [E, 2], z_front [E], z_back [E]) -> pixels: the largest image distance over the
    frames between the front and the back surface points seen through the same source pixel (camera
    parallax), plus the farthest the animation moves content near the contour in the loop (num_frames x
    the largest flow magnitude within 2 px of the contour, front or back), plus `pad` pixels (splat
    footprint and rounding). Contours are subsampled to at most `max_points` pixels."""
    poses = np.asarray(poses, np.float64)
    Ks = np.asarray(Ks, np.float64)
    K_src = np.asarray(K_src, np.float64)
    speed = np.linalg.norm(np.asarray(flow, np.float64), axis=-1)
    import cv2

    speed = cv2.dilate(speed, np.ones((5, 5), np.uint8))

    def width(layer, uv, z_front, z_back):
        del layer
        if len(uv) > max_points:
            pick = np.linspace(0, len(uv) - 1, max_points).astype(np.int64)
            uv, z_front, z_back = uv[pick], z_front[pick], z_back[pick]
        ray = np.stack([(uv[:, 0] - K_src[0, 2]) / K_src[0, 0], (uv[:, 1] - K_src[1, 2]) / K_src[1, 1],
                        np.ones(len(uv))], -1)
        far = 0.0
        for pose, K in zip(poses, Ks):
            pix = []
            for z in (z_front, z_back):
                X = (ray * z[:, None]) @ pose[:3, :3].T + pose[:3, 3]
                Z = np.maximum(X[:, 2], 1e-6)
                pix.append(np.stack([K[0, 0] * X[:, 0] / Z + K[0, 2], K[1, 1] * X[:, 1] / Z + K[1, 2]], -1))
            far = max(far, float(np.max(np.linalg.norm(pix[0] - pix[1], axis=-1))))
        iu = np.clip(np.round(uv[:, 0]).astype(np.int64), 0, speed.shape[1] - 1)
        iv = np.clip(np.round(uv[:, 1]).astype(np.int64), 0, speed.shape[0] - 1)
        moved = num_frames * float(speed[iv, iu].max())
        return far + moved + pad

    return width


def _intrinsics_array(K, size, original):
    """A user K [3, 3] for the photo's own pixels (original size), rescaled to the working size."""
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics must be a finite 3x3 K with positive focal lengths, got {K.tolist()}")
    if tuple(original) == tuple(size):
        return K.astype(np.float32)
    return io._rescale_K(K, (original[1], original[0]), size).astype(np.float32)


def animate(
    image,
    *,
    depth=None,
    flow=None,
    mask=None,
    hints=None,
    trajectory="circle",
    poses=None,
    intrinsics=None,
    num_frames=None,
    config=None,
    seed=None,
    mesh=None,
    progress=True,
):
    """Animate one photo into a looping 3D cinemagraph.

    image: path or [H, W, 3] array. depth: path (.npy z-depth, .pfm / 16-bit PNG disparity), [H, W]
    z-depth array, or None for the configured estimator. flow: path (.npy / .flo) or [H, W, 2] Eulerian
    flow in px/frame. mask: path (PNG) or [H, W] array of moving pixels. hints: path (labelme or our
    JSON; may also carry the mask) or a list of hints. trajectory: a name from
    trajectories.TRAJECTORIES, or poses: path to a cameras JSON (io.load_cameras) or [N, 4, 4]
    world-to-camera poses, with `intrinsics` [3, 3] (the photo's pixels; default the reference K).
    num_frames: frames of the loop (default: the trajectory's). config: configs.cinemagraph config.

    Units: depth the user gives keeps its units and explicit poses are in those units; estimated depth
    is normalised (nearest pixel = 1) and named trajectories move in units of the nearest depth, so
    their parallax does not depend on the depth's unit.

    Frame t shows the scene at time t/N from camera t; with the identity pose and zero time frame 0
    reproduces the input image. The result is deterministic for the same inputs, config and seed.
    seed: handed to every registered component (default config seed); the weight-free defaults are
    deterministic and do not use it.
    Components come from registries named by the config: depth.estimator (depth.ESTIMATORS),
    layering.inpainter (layering.INPAINTERS), scene.features (scene.FEATURES), render.decoder
    (render.DECODERS), motion (motion.MOTION_ESTIMATORS); each factory gets its config section and the
    seed. With converted weights in config models.dir, cine_jax.learned.resolve switches each component
    whose files are there to the learned network (config models.<component> forces a choice); every
    weights file is checked and loaded before any compute.
    """
    cfg = cinemagraph_config.get_config() if config is None else config
    seed = int(cfg.seed if seed is None else seed)
    components = learned.resolve(cfg, seed)
    timings = {}
    t0 = _time.perf_counter()
    stages = tqdm(total=6, desc="cinemagraph", disable=not progress, unit="stage")

    def mark(name):
        nonlocal t0
        now = _time.perf_counter()
        timings[name] = round(now - t0, 3)
        t0 = now
        stages.set_postfix_str(name)
        stages.update(1)

    img, original, _ = _as_image(image, cfg)
    size = img.shape[:2]
    h, w = size
    motion_estimator = components.build("motion") if (hints is not None and flow is None) else None
    flow_field, m, hint_list = _load_motion(mask, hints, flow, size, original, cfg, image=img,
                                            estimator=motion_estimator)
    mark("inputs")

    d, _ = _depth(depth, img, size, original, cfg, seed, components)
    scene_depth = float(d.min())  # the unit of named trajectories and of the blend's depth term
    mark("depth")

    P, Ks, K0 = _cameras(trajectory, poses, intrinsics, num_frames, size, original, scene_depth, cfg)
    n = len(P)

    lc = cfg.layering
    edges = layering.depth_bins(
        d, distance_threshold=lc.distance_threshold, subsample=lc.subsample, max_layers=lc.max_layers or None
    )
    inpainter = components.build("inpainter")
    ldi = layering.build_ldi(
        img,
        d,
        edges,
        inpainter,
        context_erode=lc.context_erode,
        hole_margin=lc.hole_margin,
        min_layer_pixels=lc.min_layer_pixels,
        discontinuity_ksize=lc.discontinuity_ksize,
        edge_threshold=lc.edge_threshold,
        reveal_width=reveal_width(P, Ks, K0, flow_field, n, pad=lc.reveal_pad),
    )
    mark("layering")

    sc = cfg.scene
    features = components.build("features")(ldi)
    cloud = scene.build_point_cloud(
        ldi,
        features=features,
        alpha_threshold=sc.alpha_threshold,
        capacity=int(math.ceil(sc.capacity_factor * h * w)),
        order_eps=sc.order_eps,
        edge_threshold=lc.edge_threshold,
    )
    fields = scene.layer_flows(
        flow_field,
        ldi,
        visible_erode=sc.visible_erode,
        diffuse_iters=sc.diffuse_iters,
        diffuse_ksize=sc.diffuse_ksize,
        edge_threshold=lc.edge_threshold,
    )
    disp = scene.symmetric_point_displacements(fields, cloud, n)
    mark("scene")

    decoder = components.build("decoder")
    frames, counts = render_frames(cloud, disp, P, Ks, K0, size, cfg, mesh=mesh, progress=progress,
                                   depth_unit=scene_depth, decoder=decoder)
    mark("render")

    # displacement of the input pixels (the point of each pixel's visible layer), for inspection
    pix = np.zeros((2, n, h, w, 2), np.float32)
    vis_layer = np.argmax(np.asarray(ldi.visible), axis=0)
    sel = np.asarray(cloud.valid) & (np.asarray(cloud.layer) == vis_layer[
        np.asarray(cloud.uv[:, 1], np.int64), np.asarray(cloud.uv[:, 0], np.int64)])
    vi = np.asarray(cloud.uv[sel, 1], np.int64)
    ui = np.asarray(cloud.uv[sel, 0], np.int64)
    pix[0][:, vi, ui] = np.asarray(disp["forward"])[:, sel]
    pix[1][:, vi, ui] = np.asarray(disp["backward"])[:, sel]
    mark("outputs")
    stages.close()

    stats = {
        "num_points": cloud.num_points,
        "points_dropped_capacity": cloud.num_dropped,
        "point_capacity": int(cloud.uv.shape[0]),
        "num_layers": int(ldi.num_layers),
        "points_behind_camera": int(counts["num_behind"]),
        "points_offscreen": int(counts["num_offscreen"]),
        "render_compile_s": round(counts["compile_s"], 3),
        # steady state: rendering time after compilation over the frames rendered (incl. padding)
        "render_s_per_frame": round(counts["render_s"] / counts["frames_rendered"], 4),
        "timings_s": timings,
        "components": {c: name for c, (name, _) in components.items()},
        "frames": n,
        "size": [h, w],
    }
    return AnimateResult(
        frames=frames,
        image=img,
        depth=d,
        ldi=ldi,
        flow=flow_field,
        mask=m,
        hints=hint_list,
        displacement={"forward": pix[0], "backward": pix[1]},
        poses=P,
        K=Ks,
        stats=stats,
    )


def render_frames(cloud, disp, poses, Ks, K_ref, size, cfg, *, mesh=None, progress=True, outputs=("rgb",),
                  depth_unit=1.0, decoder=None):
    """Render all frames in jitted chunks split over the devices of `mesh` (default: all devices).

    K_ref: intrinsics of the photo (unprojection); Ks [N, 3, 3] of the views; depth_unit: the scene's
    nearest depth (the blend's depth term and the near plane are relative to it). decoder: default the
    config's render.decoder from render.DECODERS.

    Returns (frames [N, H, W, 3] float32 NumPy, dict of summed drop counts). Extra outputs named in
    `outputs` (e.g. "alpha", "depth") are returned in the counts dict under their names.
    """
    mesh = render.make_mesh() if mesh is None else mesh
    ndev = mesh.devices.size
    n = len(poses)
    chunk = max(ndev, int(math.ceil(cfg.render.chunk / ndev)) * ndev)
    chunk = min(chunk, int(math.ceil(n / ndev)) * ndev)
    opts = render.render_options(cfg)
    scene_arrays = {
        "uv": jnp.asarray(cloud.uv),
        "z": jnp.asarray(cloud.z),
        "features": jnp.asarray(cloud.features),
        "slope": jnp.asarray(cloud.slope),
        "K_ref": jnp.asarray(K_ref, jnp.float32),
        "depth_unit": jnp.asarray(depth_unit, jnp.float32),
    }
    if decoder is None:
        decoder = render.get_decoder(cfg.render.decoder, config=cfg.render, seed=int(cfg.seed))
    if hasattr(decoder, "decode_sides") and getattr(decoder, "variables", None) is not None:
        scene_arrays["decoder_variables"] = decoder.variables  # an argument of the jitted renderer, not a constant
    fn = render.make_chunk_renderer(scene_arrays, tuple(size), opts, decoder, mesh, outputs)
    time = np.asarray(disp["time"])
    frames = {k: [] for k in outputs}
    counts = {"num_behind": 0, "num_offscreen": 0}
    bar = tqdm(total=n, desc="render", unit="frame", disable=not progress)
    compiled = None
    t_start = _time.perf_counter()

    def collect(out, real):
        out = jax.device_get(out)
        for k in outputs:
            frames[k].append(np.asarray(out[k])[real])
        counts["num_behind"] += int(np.asarray(out["num_behind"])[real].sum())
        counts["num_offscreen"] += int(np.asarray(out["num_offscreen"])[real].sum())
        bar.update(int(real.sum()))

    pending = None  # the chunk in flight: the next one is dispatched before its frames are fetched
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk)
        real = idx < n
        idx = np.minimum(idx, n - 1)  # pad the last chunk by repeating the last frame (static shape)
        args = (
            disp["forward"][idx],
            disp["backward"][idx],
            disp["forward_valid"][idx],
            disp["backward_valid"][idx],
            jnp.asarray(time[idx]),
            jnp.asarray(poses[idx]),
            jnp.asarray(Ks[idx]),
        )
        if compiled is None:  # ahead-of-time compile once, timed apart from rendering
            t0 = _time.perf_counter()
            compiled = fn.func.lower(*fn.args, *args).compile()
            counts["compile_s"] = _time.perf_counter() - t0
            t_start = _time.perf_counter()
        out = compiled(*fn.args, *args)  # asynchronous: the devices start while the host fetches the last chunk
        if pending is not None:
            collect(*pending)
        pending = (out, real)
    if pending is not None:
        collect(*pending)
    bar.close()
    counts["render_s"] = _time.perf_counter() - t_start
    counts["frames_rendered"] = int(math.ceil(n / chunk) * chunk)
    result = {k: np.concatenate(v, axis=0) for k, v in frames.items()}
    for k in outputs:
        if k != "rgb":
            counts[k] = result[k]
    return result["rgb"].astype(np.float32), counts
