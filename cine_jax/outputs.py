"""Writing a cinemagraph's outputs: video, GIF, frames, and pictures of every intermediate."""

import json
import os

import numpy as np

from cine_jax import io, viz


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
    (and frames/ when save_frames). Returns a dict of the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    frames = crop_frames(result.frames, int(cfg.render.crop))
    paths = {}
    paths["video"] = os.path.join(out_dir, "cinemagraph.mp4")
    io.write_video(paths["video"], frames, fps=cfg.output.fps)
    paths["gif"] = os.path.join(out_dir, "cinemagraph.gif")
    io.write_gif(paths["gif"], frames, fps=cfg.output.fps, max_side=cfg.output.gif_max_side)
    paths["preview"] = os.path.join(out_dir, "preview.png")
    io.write_png(paths["preview"], preview_sheet(result))
    paths["depth"] = os.path.join(out_dir, "depth.png")
    io.write_png(paths["depth"], viz.depth_to_color(result.depth))
    paths["flow"] = os.path.join(out_dir, "flow.png")
    io.write_png(paths["flow"], viz.flow_to_color(result.flow))
    if save_frames:
        paths["frames"] = os.path.join(out_dir, "frames")
        io.write_frames(paths["frames"], frames)
    paths["stats"] = os.path.join(out_dir, "stats.json")
    with open(paths["stats"], "w") as f:
        json.dump(result.stats, f, indent=2)
    return paths
