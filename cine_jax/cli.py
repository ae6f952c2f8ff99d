"""`cine-jax`: command line for 3D cinemagraphs.

    cine-jax sample DIR                      write the offline sample photo, its motion mask and hints
    cine-jax animate IMAGE --out DIR [...]   animate a photo: DIR/cinemagraph.mp4, .gif, preview.png

Config overrides: `--config.section.key=value` (e.g. `--config.io.max_side=512`); unknown keys fail.
"""

import argparse
import os
import sys

from configs import cinemagraph as cinemagraph_config
from configs.overrides import apply_overrides, split_overrides


def _parser():
    ap = argparse.ArgumentParser(prog="cine-jax", description="3D cinemagraphs from a single image (JAX).")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="write the offline sample photo (china.jpg), its mask and hints")
    s.add_argument("out", help="output folder")

    a = sub.add_parser("animate", help="animate a photo into a looping 3D cinemagraph")
    a.add_argument("image", help="input photo (PNG/JPG)")
    a.add_argument("--mask", help="motion mask PNG (non-zero = moving)")
    a.add_argument("--hints", help="labelme JSON or cine-jax JSON with motion polygons and hint lines")
    a.add_argument("--depth", help="depth: .npy z-depth, .pfm or 16-bit PNG disparity")
    a.add_argument("--flow", help="dense Eulerian flow: .npy [H,W,2] or .flo, pixels per frame")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--trajectory", default=None, help="camera path name (default: config trajectory.name)")
    g.add_argument("--poses", help='cameras JSON {"K": 3x3, "poses": [4x4 world-to-camera, ...]}')
    a.add_argument("--frames", type=int, default=None, help="number of frames of the loop")
    a.add_argument("--fps", type=float, default=None, help="video frame rate (default 25)")
    a.add_argument("--save-frames", action="store_true", help="also write every frame as PNG")
    a.add_argument("--config", default="", help="config variant: '' (default), 'paper' or 'tiny'")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def cmd_sample(args):
    from cine_jax import sample

    paths = sample.write_sample(args.out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    img = paths.get("image")
    motion = paths.get("annotations")
    print(f"\nnext: cine-jax animate {img} --hints {motion} --out {os.path.join(args.out, 'out')}")
    return 0


def cmd_animate(args, overrides):
    from cine_jax import outputs, pipeline

    cfg = cinemagraph_config.get_config(args.config or None)
    try:
        apply_overrides(cfg, overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.fps is not None:
        if args.fps <= 0:
            raise SystemExit("error: --fps must be positive")
        cfg.output.fps = args.fps
    if args.frames is not None and args.frames < 2:
        raise SystemExit("error: --frames must be at least 2")
    trajectory = args.trajectory or cfg.trajectory.name
    num_frames = args.frames if args.frames is not None else (cfg.trajectory.num_frames or None)
    try:
        result = pipeline.animate(
            args.image,
            depth=args.depth,
            flow=args.flow,
            mask=args.mask,
            hints=args.hints,
            trajectory=trajectory,
            poses=args.poses,
            num_frames=num_frames,
            config=cfg,
            seed=cfg.seed,
            progress=not args.quiet,
        )
    except (ValueError, OSError) as e:
        print(f"cine-jax: error: {e}", file=sys.stderr)
        return 2
    paths = outputs.write_outputs(result, args.out, cfg, save_frames=args.save_frames)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    known, overrides = split_overrides(argv)
    args = _parser().parse_args(known)
    if args.command == "sample":
        return cmd_sample(args)
    return cmd_animate(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
