"""Preview videos and a contact sheet of a stage's 4D field on the official test orbit.

    paths = stage_previews(render, params, "out/static", config, "static", size=128)
    # out/static/static_rgb.mp4, static_normal.mp4, static_depth.mp4, static_opacity.mp4, static_sheet.png

The official test (dnerf/utils.py test, one_video_save): num_test_frames (64) cameras on a circle at the test
polar (90) and radius (1.8), fovy 40; frame k is seen from view k at time t = k / num_test_frames; one video per
channel at 25 fps. Channels (pictures for people):
  rgb      the render, clipped to [0, 1];
  normal   (n + 1) / 2 of the composited normal, over white where the opacity is low;
  depth    disparity 1 / depth, normalised over ALL frames (so the video does not flicker) and mapped with
           OpenCV's inferno colormap (near = bright); black where the opacity is < 0.5;
  opacity  accumulated alpha, grey levels.
The contact sheet is a grid with one row per channel and `sheet_frames` evenly spaced frames per row.
Videos are mp4 (imageio + imageio-ffmpeg), or GIF when imageio-ffmpeg is not installed; every file is written
atomically (clitools.outputs.atomic_path), by process 0 only (every process renders: a sharded renderer is
collective).

The renderer is passed in: render(params, pose [4, 4], K [3, 3], t) -> dict with rgb [H, W, 3], normal [H, W, 3]
(or "normal_image", four_d.render's name), depth [H, W] (z-depth) and opacity [H, W], e.g. four_d.fit.make_renderer
or the analytic four_d.scenes.render.
"""

import os
import warnings

import cv2
import numpy as np

CHANNELS = ("rgb", "normal", "depth", "opacity")
FPS = 25  # official one_video_save fps 25


def video_format():
    """"mp4" when imageio-ffmpeg is installed, else "gif"."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "gif"
    return "mp4"


def _channel(out, names, where):
    for n in names:
        if n in out:
            return np.asarray(out[n], np.float32)
    raise ValueError(f"{where}: the renderer's output has no {' / '.join(names)} (keys: {sorted(out)})")


def normal_picture(normal, opacity):
    """(n + 1) / 2 of a composited normal image (sum of w n), over white where nothing is hit."""
    op = np.clip(opacity, 0, 1)[..., None]
    return np.clip((normal + op) / 2.0 + (1.0 - op), 0.0, 1.0)


def depth_pictures(depths, opacities, threshold=0.5):
    """Colour pictures [N, H, W, 3] of z-depths [N, H, W] with one disparity range over all frames
    (cine_jax.viz.depth_to_color per frame; black where the opacity is below `threshold`)."""
    from cine_jax.viz import depth_to_color

    depths = np.asarray(depths, np.float32)
    valid = (np.asarray(opacities) >= threshold) & np.isfinite(depths) & (depths > 0)
    disp = 1.0 / np.where(valid, depths, 1.0)
    rng = (float(disp[valid].min()), float(disp[valid].max())) if valid.any() else None
    return np.stack([depth_to_color(d, v.astype(np.float32), disparity_range=rng) for d, v in zip(depths, valid)])


def render_orbit(render, params, config, size):
    """dict channel -> [N, size, size, 3] float pictures of the test orbit (module docstring), and times [N]."""
    from tqdm.auto import tqdm

    from four_d.cameras import orbit_cameras

    cc = config.cameras
    n = int(cc.num_test_frames)
    cams = orbit_cameras(n, polar=float(cc.test_polar), radius=float(cc.radius), fovy=float(cc.fovy), size=int(size))
    raw = {c: [] for c in CHANNELS}
    where = "four_d/previews.py renderer"
    for k in tqdm(range(n), desc="preview orbit", leave=False):
        out = render(params, cams["poses"][k], cams["K"], k / n)
        raw["rgb"].append(np.clip(_channel(out, ("rgb",), where), 0, 1))
        raw["normal"].append(_channel(out, ("normal", "normal_image"), where))
        raw["depth"].append(_channel(out, ("depth",), where))
        raw["opacity"].append(np.clip(_channel(out, ("opacity",), where), 0, 1))
    op = np.stack(raw["opacity"])
    pics = dict(rgb=np.stack(raw["rgb"]),
                normal=np.stack([normal_picture(nm, o) for nm, o in zip(raw["normal"], op)]),
                depth=depth_pictures(np.stack(raw["depth"]), op),
                opacity=np.repeat(op[..., None], 3, -1))
    return pics, np.arange(n) / n


def _to_u8(frames):
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)


def write_video(path, frames, fps=FPS):
    """Frames [N, H, W, 3] in [0, 1] to an mp4 / gif, atomically."""
    import imageio.v2 as iio2

    from clitools.outputs import atomic_path

    frames = list(_to_u8(frames))
    with warnings.catch_warnings():
        # imageio-ffmpeg forks only to exec ffmpeg; JAX's generic fork warning does not apply
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        with atomic_path(path) as tmp:
            if path.endswith(".mp4"):
                iio2.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
            else:
                iio2.mimwrite(tmp, frames, duration=1.0 / fps, loop=0)
    return path


def contact_sheet(pictures, times, sheet_frames=8, tile=128):
    """One row per channel, `sheet_frames` evenly spaced frames per row: [H, W, 3] float in [0, 1]."""
    from cine_jax.viz import contact_sheet as grid

    n = len(times)
    idx = np.unique(np.linspace(0, n - 1, min(int(sheet_frames), n)).round().astype(int))
    tiles = [(f"{c} t={times[i]:.2f}", pictures[c][i]) for c in CHANNELS for i in idx]
    return grid(tiles, columns=len(idx), tile_size=(tile, tile), title_height=16)


def stage_previews(renderer_fn, params, out_dir, config, stage, *, size=128, fps=FPS, sheet_frames=8, fmt=None):
    """Render the test orbit of a stage and write its videos and contact sheet (module docstring).

    config: configs/four_d.py's ConfigDict (cameras.num_test_frames, test_polar, radius, fovy); size: the square
    render size (official test renders are 400 x 400; default 128 keeps CPU previews quick); fmt: "mp4" | "gif"
    (default: mp4 when imageio-ffmpeg is installed). Returns dict channel -> path plus "sheet".
    """
    import jax

    from clitools.outputs import atomic_path

    if not isinstance(stage, str) or not stage or os.sep in stage:
        raise ValueError(f"four_d/previews.py: stage must be a plain name such as 'static', got {stage!r}")
    if int(size) < 8:
        raise ValueError(f"four_d/previews.py: size must be >= 8, got {size}")
    fmt = fmt or video_format()
    if fmt not in ("mp4", "gif"):
        raise ValueError(f"four_d/previews.py: fmt must be 'mp4' or 'gif', got {fmt!r}")
    pictures, times = render_orbit(renderer_fn, params, config, size)
    paths = {c: os.path.join(out_dir, f"{stage}_{c}.{fmt}") for c in CHANNELS}
    paths["sheet"] = os.path.join(out_dir, f"{stage}_sheet.png")
    if jax.process_index() != 0:
        return paths
    os.makedirs(out_dir, exist_ok=True)
    for c in CHANNELS:
        write_video(paths[c], pictures[c], fps)
    sheet = _to_u8(contact_sheet(pictures, times, sheet_frames, min(int(size), 160)))
    with atomic_path(paths["sheet"]) as tmp:
        if not cv2.imwrite(tmp, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{paths['sheet']}: cannot write the contact sheet")
    return paths
