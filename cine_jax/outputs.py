"""Writing a cinemagraph's outputs: video, GIF, frames, and pictures of every intermediate."""

import os

import numpy as np

from cine_jax import io, viz
from clitools import outputs as safe_out


def crop_frames(frames, crop):
    """Crop `crop` pixels from every border (the official demo crops 32 px); 0 keeps the frames."""
    if crop <= 0:
        return frames
    h, w = frames.shape[1:3]
    if 2 * crop >= min(h, w):
        raise ValueError(f"crop {crop} px is too large for {h}x{w} frames")
    return frames[:, crop:-crop, crop:-crop]


def preview_sheet(result, num_frames=4, tile=256):
    """Contact sheet: input (with mask and hints), depth, each LDI layer, flow, and a few frames."""
    tiles = [("input + motion", viz.draw_hints(result.image, result.hints, result.mask))]
    tiles.append(("depth", viz.depth_to_color(result.depth)))
    ldi = result.ldi
    for i in range(ldi.num_layers):
        tiles.append((f"layer {i} rgba", viz.checkerboard_rgba(np.asarray(ldi.rgba[i]))))
    tiles.append(("flow", viz.flow_to_color(result.flow)))
    n = len(result.frames)
    picks = sorted({int(round(k * (n - 1) / max(num_frames - 1, 1))) for k in range(num_frames)})
    for k in picks:
        tiles.append((f"frame {k}", result.frames[k]))
    return viz.contact_sheet(tiles, columns=4, tile_size=tile)


def write_outputs(result, out_dir, cfg, save_frames=False):
    """Write DIR/cinemagraph.mp4, cinemagraph.gif, preview.png, depth.png, flow.png, stats.json
    (and frames/ when save_frames). Returns a dict of the written paths.

    Each file is written under a temporary name and renamed when complete (clitools.outputs), so a killed
    run leaves no truncated video or stats file that looks complete.
    """
    os.makedirs(out_dir, exist_ok=True)
    frames = crop_frames(result.frames, int(cfg.render.crop))
    writers = {
        "video": ("cinemagraph.mp4", lambda p: io.write_video(p, frames, fps=cfg.output.fps)),
        "gif": (
            "cinemagraph.gif",
            lambda p: io.write_gif(p, frames, fps=cfg.output.fps, max_side=cfg.output.gif_max_side),
        ),
        "preview": ("preview.png", lambda p: io.write_png(p, preview_sheet(result))),
        "depth": ("depth.png", lambda p: io.write_png(p, viz.depth_to_color(result.depth))),
        "flow": ("flow.png", lambda p: io.write_png(p, viz.flow_to_color(result.flow))),
    }
    paths = {}
    for key, (name, write) in writers.items():
        paths[key] = os.path.join(out_dir, name)
        with safe_out.atomic_path(paths[key]) as tmp:
            write(tmp)
    if save_frames:
        paths["frames"] = os.path.join(out_dir, "frames")
        with safe_out.atomic_dir(paths["frames"]) as tmp:
            io.write_frames(tmp, frames)
    paths["stats"] = safe_out.write_json(os.path.join(out_dir, "stats.json"), result.stats)
    return paths
