"""`cine-jax`: command line for 3D cinemagraphs.

    cine-jax sample DIR                      write the offline sample photo, its motion mask and hints
    cine-jax animate IMAGE --out DIR [...]   animate a photo: DIR/cinemagraph.mp4, .gif, preview.png
                                             (--weights W: the learned networks converted into W)
    cine-jax convert SRC --to DIR            official checkpoints (a file or a folder) -> converted weights
    cine-jax make-data DIR [--clips N ...]   procedural training clips with exact flow, depth, novel views
    cine-jax train motion|render DATA --out DIR [--config tiny|paper] [--resume] [--overwrite] [--steps N]
                                             train a network (OUT/weights is loadable by animate --weights)
    cine-jax eval PRED GT --out JSON [...]   PSNR / SSIM / LPIPS per trajectory on valid pixels (paper protocol)

Config overrides: `--config.section.key=value` (e.g. `--config.io.max_side=512`); unknown keys fail.
Errors (clitools): a bad input file, output folder, option or config value ends with exit code 2 and one line
naming the file (or key) and the problem, before any compute where it can be checked first; `--debug` shows
the traceback. An output folder that already holds files is refused unless `--overwrite` is given.
"""

import os
import sys

from clitools import errors
from clitools import outputs as safe_out
from clitools.xla_cpu import size_cpu_pools
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
    a.add_argument("--weights", default=None,
                   help="folder of converted weights (cine-jax convert): every network found there is used "
                        "(config models.dir; models.<component> forces a choice)")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--overwrite", action="store_true", help="replace the results in an output folder that holds files")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    errors.add_common_flags(a)

    c = sub.add_parser("convert", help="convert official checkpoints into weights for --weights")
    c.add_argument("src", help="an official file (model_150000.pth, sceneflow_model.pth, depth-model.pth, "
                               "color-model.pth, dpt_hybrid-midas-501f0c75.pt), a transformers DPT folder, or a "
                               "folder of them")
    c.add_argument("--to", required=True, help="output folder of the converted NAME.safetensors + NAME.json")
    c.add_argument("--kind", default=None, help="force a converter (see python -m cine_jax.convert --help)")
    c.add_argument("--overwrite", action="store_true", help="replace converted files in a folder that holds files")
    errors.add_common_flags(c)

    m = sub.add_parser("make-data", help="write procedural clips with exact flow, depth and novel views")
    m.add_argument("out", help="output folder (one sub-folder per clip, and preview.png)")
    m.add_argument("--clips", type=int, default=8, help="number of clips (default 8)")
    m.add_argument("--size", default="128x96", help="clip size WxH in pixels, each >= 16 (default 128x96)")
    m.add_argument("--frames", type=int, default=8, help="frames per clip, >= 2 (default 8)")
    m.add_argument("--views", type=int, default=3, help="novel views per clip, >= 1 (default 3)")
    m.add_argument("--seed", type=int, default=0, help="dataset seed: same seed, same bytes (default 0)")
    m.add_argument("--overwrite", action="store_true", help="replace clips in a folder that already holds files")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    errors.add_common_flags(m)

    t = sub.add_parser("train", help="train the motion net (stage 1) or the feature net + decoder (stage 2)")
    t.add_argument("stage", help="motion | render")
    t.add_argument("data", help="data folder: clips of `cine-jax make-data`, folders of frames or videos "
                                "(DATA/train and DATA/test when present)")
    t.add_argument("--out", required=True, help="output folder (checkpoints, metrics.jsonl, samples/, weights/)")
    t.add_argument("--config", default="", help="config variant: '' (= paper), 'paper' or 'tiny'")
    t.add_argument("--steps", type=int, default=None, help="training steps (config loop.steps)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds an earlier run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    errors.add_common_flags(t)
    e = sub.add_parser("eval", help="PSNR / SSIM / LPIPS of predicted videos against ground truth, valid pixels")
    e.add_argument("pred", help="folder of predictions: one sub-folder of frames (or one video) per trajectory")
    e.add_argument("gt", help="folder of ground truth, the same trajectory names and frame counts")
    e.add_argument("--source-depth", default=None,
                   help="depth of the source photo (.npy z-depth, .pfm/.png disparity): with --cameras, only pixels "
                        "the photo reprojects to count (official reprojection mask and crop)")
    e.add_argument("--cameras", default=None,
                   help="cameras JSON (animate --poses format, one pose per frame) for every trajectory, or a folder "
                        "of NAME.json per trajectory")
    e.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    e.add_argument("--out", required=True, help="JSON file of the per-trajectory and per-frame metrics")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    errors.add_common_flags(e)
    return ap


def parse_size(text, flag="--size"):
    """'WxH' -> (H, W); both integers >= 16."""
    parts = str(text).lower().split("x")
    try:
        w, h = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        w = h = None
    if w is None:
        raise errors.InputError(f"{flag}: expected WxH with two integers (e.g. 128x96), got {text!r}")
    if min(w, h) < 16:
        raise errors.InputError(f"{flag}: width and height must be >= 16 pixels, got {w}x{h}")
    return h, w


def cmd_make_data(args, overrides):
    if overrides:
        raise errors.InputError(f"{overrides[0]}: make-data takes no config overrides")
    size = parse_size(args.size)
    for flag, value, low in (("--clips", args.clips, 1), ("--frames", args.frames, 2), ("--views", args.views, 1)):
        if value < low:
            raise errors.InputError(f"{flag}: must be >= {low}, got {value}")
    if args.seed < 0:
        raise errors.InputError(f"--seed: must be >= 0, got {args.seed}")
    out = safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, flag="make-data DIR")
    from cine_jax.train import procedural

    paths = procedural.write_dataset(out, args.clips, size=size, frames=args.frames, views=args.views,
                                     seed=args.seed, progress=not args.quiet)
    print(f"{len(paths)} clips in {out}")
    print(f"preview: {os.path.join(out, 'preview.png')}")
    c0 = paths[0]
    print(f"\ntry: {PROG} animate {c0}/frames/000.png --depth {c0}/depth.npy --flow {c0}/flow.npy "
          f"--mask {c0}/mask.png --poses {c0}/cameras.json --out {out.rstrip(os.sep)}-animated")
    return 0


def cmd_eval(args, overrides):
    if overrides:
        raise errors.InputError(f"{overrides[0]}: eval takes no config overrides")
    if os.path.exists(args.out) and not args.overwrite:
        raise errors.InputError(f"{args.out}: already exists (--out); give --overwrite to replace it")
    if os.path.isdir(args.out):
        raise errors.InputError(f"{args.out}: is a folder (--out is a JSON file)")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise errors.InputError(f"{args.out}: folder {parent} does not exist (--out)")
    from cine_jax import evaluate

    result = evaluate.evaluate(args.pred, args.gt, source_depth=args.source_depth, cameras=args.cameras,
                               lpips=not args.no_lpips, progress=not args.quiet)
    print(evaluate.format_table(result))
    safe_out.write_text(args.out, evaluate.to_json(result))
    print(f"json: {args.out}")
    return 0


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

    cfg = errors.config_variant(cinemagraph_config.get_config, args.config or None)
    apply_overrides(cfg, overrides)
    if args.fps is not None:
        cfg.output.fps = args.fps
    if args.frames is not None:
        if args.frames < 2:
            raise errors.InputError(f"--frames: a loop needs at least 2 frames, got {args.frames}")
        cfg.trajectory.num_frames = args.frames
    if args.trajectory is not None:
        cfg.trajectory.name = args.trajectory
    if args.weights is not None:
        cfg.models.dir = args.weights
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
    from cine_jax import learned

    learned.resolve(cfg)  # every weights file the config asks for exists and loads, before any compute
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


def cmd_convert(args, overrides):
    if overrides:
        raise errors.InputError(f"{overrides[0]}: convert takes no config overrides")
    from cine_jax import convert

    if not os.path.exists(args.src):
        raise errors.InputError(f"{args.src}: no such file or folder (SRC)")
    if args.kind is not None and args.kind not in convert.converters():
        raise errors.InputError(f"--kind: unknown converter {args.kind!r}; choose one of "
                                + ", ".join(sorted(convert.converters())))
    out = safe_out.prepare_output_dir(args.to, overwrite=args.overwrite, flag="--to")
    for path in convert.convert(args.src, out, args.kind):
        print(path)
    return 0


TRAIN_STAGES = ("motion", "render")


def _train_stage(name, cfg):
    """make_stage of cine_jax.train.<name> (render is imported lazily: it may be absent)."""
    import importlib

    if name not in TRAIN_STAGES:
        raise errors.InputError(f"train STAGE: unknown stage {name!r}; choose one of {', '.join(TRAIN_STAGES)}")
    try:
        mod = importlib.import_module(f"cine_jax.train.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"cine_jax.train.{name}":
            raise
        raise errors.InputError(f"train {name}: this cine-jax has no {name} stage (cine_jax/train/{name}.py is "
                                "not installed)") from None
    return mod.make_stage(cfg)


def cmd_train(args, overrides):
    from configs import cine_train

    cfg = errors.config_variant(cine_train.get_config, args.config or None)
    apply_overrides(cfg, overrides)
    if args.steps is not None:
        if args.steps < 1:
            raise errors.InputError(f"--steps: must be >= 1, got {args.steps}")
        cfg.loop.steps = args.steps
    check_config(cfg, cine_train.RANGES)
    if not os.path.isdir(args.data):
        raise errors.InputError(f"{args.data}: data folder not found (DATA)")
    stage = _train_stage(args.stage, cfg)
    out = safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    # read the data before any compute: a bad clip is a one-line error naming its file
    next(iter(stage.batches(args.data, cfg, "train", int(cfg.loop.seed), 0)))
    from cine_jax.train import loop
    from clitools.signals import GracefulStop

    with GracefulStop() as stop:
        res = loop.run(stage, args.data, out, cfg, resume=args.resume, overwrite=args.overwrite, stop=stop,
                       progress=not args.quiet)
    if "stopped" in res:
        print(f"{PROG} train {args.stage}: stopped by {stop.name} after step {res['stopped']} of {res['steps']}; "
              f"continue with --resume", file=sys.stderr)
        return stop.exit_code
    print(f"weights: {res['weights']}")
    print(f"metrics: {os.path.join(out, 'metrics.jsonl')}")
    print(f"\ntry: {PROG} animate IMAGE --hints HINTS --weights {res['weights']} --out {out.rstrip(os.sep)}-animated")
    return 0


def _main(argv):
    known, overrides = split_overrides(argv)
    args = _parser().parse_args(known)
    if args.command == "sample":
        return cmd_sample(args)
    if args.command == "convert":
        return cmd_convert(args, overrides)
    if args.command == "make-data":
        return cmd_make_data(args, overrides)
    if args.command == "train":
        # before the CPU backend starts: training steps run collectives, which need larger XLA pools on
        # several CPU devices (clitools/xla_cpu.py); the other commands run none and keep XLA's default
        size_cpu_pools()
        return cmd_train(args, overrides)
    if args.command == "eval":
        return cmd_eval(args, overrides)
    return cmd_animate(args, overrides)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return errors.run(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
