"""`cine-jax`: command line for 3D cinemagraphs.

    cine-jax sample DIR                      write the offline sample photo, its motion mask and hints
    cine-jax animate IMAGE --out DIR [...]   animate a photo: DIR/cinemagraph.mp4, .gif, preview.png

Config overrides: `--config.section.key=value` (e.g. `--config.io.max_side=512`); unknown keys fail.
Errors (clitools): a bad input file, output folder, option or config value ends with exit code 2 and one line
naming the file (or key) and the problem, before any compute where it can be checked first; `--debug` shows
the traceback. An output folder that already holds files is refused unless `--overwrite` is given.
"""

import os
import sys

from clitools import errors
from clitools import outputs as safe_out
from configs import cinemagraph as cinemagraph_config
from configs.overrides import apply_overrides, split_overrides
from configs.validate import check_config

PROG = "cine-jax"


def _parser():
    ap = errors.ArgumentParser(prog=PROG, description="3D cinemagraphs from a single image (JAX).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=errors.ArgumentParser)

    s = sub.add_parser("sample", help="write the offline sample photo (china.jpg), its mask and hints")
    s.add_argument("out", help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace files in a folder that already holds some")
    errors.add_common_flags(s)

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
    a.add_argument("--overwrite", action="store_true", help="replace the results in an output folder that holds files")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    errors.add_common_flags(a)
    return ap


def cmd_sample(args):
    from cine_jax import sample

    out = safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, flag="sample DIR")
    paths = sample.write_sample(out)
    for k, v in paths.items():
        print(f"{k}: {v}")
    img = paths.get("image")
    motion = paths.get("annotations")
    print(f"\nnext: {PROG} animate {img} --hints {motion} --out {os.path.join(args.out, 'out')}")
    return 0


def _animate_config(args, overrides):
    """The resolved, range-checked config of `animate` (every check here runs before any compute)."""
    from cine_jax import trajectories

    try:
        cfg = cinemagraph_config.get_config(args.config or None)
    except ValueError as e:
        raise errors.InputError(f"--config: {e}") from None
    apply_overrides(cfg, overrides)
    if args.fps is not None:
        cfg.output.fps = args.fps
    if args.frames is not None:
        if args.frames < 2:
            raise errors.InputError(f"--frames: a loop needs at least 2 frames, got {args.frames}")
        cfg.trajectory.num_frames = args.frames
    if args.trajectory is not None:
        cfg.trajectory.name = args.trajectory
    if args.poses is None and cfg.trajectory.name not in trajectories.TRAJECTORIES:
        raise errors.InputError(
            f"--trajectory: unknown camera path {cfg.trajectory.name!r}; choose one of "
            + ", ".join(trajectories.TRAJECTORIES)
        )
    return check_config(cfg, cinemagraph_config.RANGES)


def cmd_animate(args, overrides):
    cfg = _animate_config(args, overrides)
    for flag in ("image", "mask", "hints", "depth", "flow", "poses"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            name = "IMAGE" if flag == "image" else f"--{flag}"
            raise errors.InputError(f"{path}: file not found ({name})")
    out = safe_out.prepare_output_dir(args.out, overwrite=args.overwrite)

    from cine_jax import outputs, pipeline

    result = pipeline.animate(
        args.image,
        depth=args.depth,
        flow=args.flow,
        mask=args.mask,
        hints=args.hints,
        trajectory=cfg.trajectory.name,
        poses=args.poses,
        num_frames=cfg.trajectory.num_frames or None,
        config=cfg,
        seed=cfg.seed,
        progress=not args.quiet,
    )
    paths = outputs.write_outputs(result, out, cfg, save_frames=args.save_frames)
    paths["config"] = safe_out.write_text(os.path.join(out, "config.json"), cfg.to_json_best_effort(indent=2))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def _main(argv):
    known, overrides = split_overrides(argv)
    args = _parser().parse_args(known)
    if args.command == "sample":
        return cmd_sample(args)
    return cmd_animate(args, overrides)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return errors.run(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
