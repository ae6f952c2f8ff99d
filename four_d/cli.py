"""`four-d` command line.

  four-d make-scene DIR [--scene orbiting-spheres] [--views 8] [--test-views 2] [--times 5] [--size 32]
  four-d fit DATA_DIR --out DIR [--config tiny|paper] [--resume] [--devices N] [--no-video]
             [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]]
             [--config.section.key=value ...]

  four-d animate IMAGE --prompt "a panda" --motion-prompt "a panda is dancing" --weights DIR --out OUT
                 [--token-prompt "a <token> is dancing"] [--mask M] [--depth D] [--config tiny|paper]
                 [--stages static,coarse,fine] [--resume | --overwrite] [--devices N] [--preview-size S]
                 [--config.section.key=value ...] [--config.priors.section.key=value ...]

  four-d eval FRAMES|OUT --prompt "a panda is dancing" --image IMAGE --clip DIR [--out results.json] [--overwrite]

  four-d invert IMAGE --token _panda_ --init-word panda --sd DIR --out OUT [--config tiny|paper] [--steps N]
                [--seed S] [--overwrite | --resume] [--config.textual_inversion.key=value ...]

`invert` learns the textual-inversion token of the fine stage from the reference image (official
scripts/textual_inversion/textual_inversion_sd.sh: 3000 steps, batch 16, 512 px, on SD 1.5; four_d/priors/
textual_inversion.py) and writes OUT/learned_embeds.safetensors (and .bin when torch is installed) plus the
learned_embeds-steps-N files every save_steps, in the format `four-d animate --weights` reads: write into the
weights folder (`--out WEIGHTS --overwrite`) or copy the file there. An RGBA image is put over white. Orbax
checkpoints go to OUT/checkpoints every save_steps; SIGINT/SIGTERM: the current step finishes, its checkpoint is
written, exit 130/143; `--resume` continues bit-identically.

`animate` runs Animate124 (four_d/animate.py): the reference is preprocessed into OUT/reference/, the --weights
folder (sd15/, zero123-xl/, modelscope/, controlnet-tile/, learned_embeds.* for --token-prompt; only the folders
the requested stages read) is checked before any compute, then the stages run into OUT/<stage>/ (Orbax
checkpoints, metrics.jsonl) and every finished stage gets preview videos on the test orbit, a contact sheet and
its reference-view frames (OUT/<stage>/reference_view/, what `four-d eval OUT` scores). SIGINT/SIGTERM: the
current step finishes, its checkpoint is written, exit 130/143; `--resume` continues exactly.

`eval` scores frames at the reference view over time (a video file or a folder of images) with CLIP-I, CLIP-T,
CLIP-R and CLIP-F (definitions: four_d/evaluate.py), prints a table and writes the JSON atomically to --out.
`fit` prints the results JSON (held-out PSNR/SSIM, initial PSNR, video path) on stdout (process 0 only).
Errors (clitools): a bad dataset, output folder, option or config value ends with exit code 2 and one line
naming the file (or key) and the problem; `--debug` shows the traceback. An output folder that already holds
files is refused unless `--overwrite` (make-scene, fit) or `--resume` (fit, animate, invert) is given.
--distributed: multi-host run; jax.distributed.initialize() is called before any device is touched
(coordinator/process ids from --coordinator/--num-processes/--process-id, or detected from the
cluster environment, e.g. SLURM/TPU pods; CPU collectives use gloo), the mesh spans all hosts'
devices, and metrics/config/results/video files are written by process 0 only. On one machine:
  four-d fit DATA --out OUT --distributed --coordinator localhost:12355 --num-processes 2 --process-id 0 &
  four-d fit DATA --out OUT --distributed --coordinator localhost:12355 --num-processes 2 --process-id 1
"""

import json
import sys

from clitools import errors
from clitools import outputs as safe_out
from clitools.xla_cpu import size_cpu_pools
from configs.overrides import apply_overrides, split_overrides

PROG = "four-d"


def _parser():
    p = errors.ArgumentParser(prog=PROG, description="image-to-4D tools (cine-jax four_d)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=errors.ArgumentParser)

    ms = sub.add_parser("make-scene", help="write an analytic dynamic test dataset")
    ms.add_argument("dir")
    ms.add_argument("--scene", default="orbiting-spheres")
    ms.add_argument("--seed", type=int, default=0)
    ms.add_argument("--views", type=int, default=8, help="training views")
    ms.add_argument("--test-views", type=int, default=2, help="held-out views")
    ms.add_argument("--times", type=int, default=5, help="frames at t = k / (times - 1)")
    ms.add_argument("--size", type=int, default=32)
    ms.add_argument("--radius", type=float, default=1.8, help="camera distance (official 1.8)")
    ms.add_argument("--fovy", type=float, default=40.0, help="vertical fov in degrees (official 40)")
    ms.add_argument("--overwrite", action="store_true", help="replace a dataset in a folder that holds files")
    errors.add_common_flags(ms)

    fit = sub.add_parser("fit", help="fit a 4D field to a dataset folder")
    fit.add_argument("data_dir")
    fit.add_argument("--out", required=True)
    fit.add_argument("--config", default=None, help="configs/four_d.py variant: tiny | paper")
    fit.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    fit.add_argument("--devices", type=int, default=None, help="devices in the data mesh (default all)")
    fit.add_argument("--no-video", action="store_true")
    fit.add_argument("--no-progress", action="store_true")
    fit.add_argument("--distributed", action="store_true",
                     help="multi-host: call jax.distributed.initialize() first (process 0 writes files)")
    fit.add_argument("--coordinator", default=None,
                     help="with --distributed: coordinator host:port (default: detected from the cluster env)")
    fit.add_argument("--num-processes", type=int, default=None, help="with --distributed: number of processes")
    fit.add_argument("--process-id", type=int, default=None, help="with --distributed: this process's index")
    fit.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that holds files")
    errors.add_common_flags(fit)

    an = sub.add_parser("animate", help="Animate124: image + prompts -> a dynamic 4D field (static, coarse, fine)")
    an.add_argument("image", help="the reference image (RGBA: its alpha is the object mask)")
    an.add_argument("--prompt", required=True, help="static prompt (SD 1.5), e.g. 'a panda'")
    an.add_argument("--motion-prompt", required=True, help="video prompt, e.g. 'a panda is dancing'")
    an.add_argument("--token-prompt", default=None, help="fine-stage prompt with the textual-inversion token, "
                    "e.g. 'a <token> is dancing' (needs WEIGHTS/learned_embeds.*; four-d invert)")
    an.add_argument("--weights", required=True, help="folder with sd15/, zero123-xl/, modelscope/, controlnet-tile/")
    an.add_argument("--out", required=True)
    an.add_argument("--mask", default=None, help="object mask image (default: the image's alpha, else GrabCut)")
    an.add_argument("--depth", default=None, help="reference depth (.npy / .png; default: cine_jax depth estimate)")
    an.add_argument("--config", default=None, help="configs/four_d.py (and configs/priors.py) variant: tiny | paper")
    an.add_argument("--stages", default="static,coarse,fine", help="comma-separated subset, in order")
    an.add_argument("--size", type=int, default=256, help="square reference size (official --size 256)")
    an.add_argument("--border-ratio", type=float, default=0.2, help="object border (official --border_ratio 0.2)")
    an.add_argument("--preview-size", type=int, default=None, help="preview render size (default stages.render_size)")
    an.add_argument("--devices", type=int, default=None, help="devices in the data mesh (default all)")
    an.add_argument("--seed", type=int, default=0, help="GrabCut and zero123 reference-latent seed")
    an.add_argument("--resume", action="store_true", help="continue every stage from its last checkpoint in --out")
    an.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that holds files")
    an.add_argument("--no-progress", action="store_true")
    errors.add_common_flags(an)

    ev = sub.add_parser("eval", help="CLIP-I / CLIP-T / CLIP-R / CLIP-F of frames at the reference view")
    ev.add_argument("frames", help="video file (mp4, gif, ...), folder of images in time order, or an animate OUT "
                    "folder (its last finished stage's reference-view frames)")
    ev.add_argument("--prompt", required=True, help="the caption (CLIP-T, CLIP-R)")
    ev.add_argument("--image", required=True, help="the reference image (CLIP-I); RGBA is put over white")
    ev.add_argument("--clip", required=True, help="local CLIP folder (e.g. openai/clip-vit-large-patch14)")
    ev.add_argument("--out", default=None, help="results JSON file (written atomically)")
    ev.add_argument("--batch-size", type=int, default=8, help="frames per CLIP forward pass")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    errors.add_common_flags(ev)

    inv = sub.add_parser("invert", help="textual inversion: learn a token for the reference image (SD 1.5)")
    inv.add_argument("image", help="the reference image (RGBA is put over white)")
    inv.add_argument("--token", required=True, help="the new token, e.g. _panda_ (used as <token> in prompts)")
    inv.add_argument("--init-word", required=True, help="a single-token word that initialises it, e.g. panda")
    inv.add_argument("--sd", required=True, help="local Stable Diffusion 1.5 folder (diffusers layout)")
    inv.add_argument("--out", required=True, help="output folder for learned_embeds.*")
    inv.add_argument("--config", default=None, help="configs/priors.py variant: tiny | paper")
    inv.add_argument("--steps", type=int, default=None, help="training steps (default: config, official 3000)")
    inv.add_argument("--seed", type=int, default=0)
    inv.add_argument("--no-progress", action="store_true")
    inv.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")
    inv.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    errors.add_common_flags(inv)
    return p


def _invert(args, overrides):
    """four-d invert: image, token, init word, SD folder, config and output folder are checked before training."""
    import os

    import numpy as np

    from clitools.signals import GracefulStop
    from configs.priors import RANGES, get_config
    from configs.validate import check_config
    from four_d import preprocess
    from four_d.stage_priors import _check_model_folder

    config = errors.config_variant(get_config, args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise errors.InputError(f"--steps: must be >= 1, got {args.steps}")
        overrides = list(overrides) + [f"textual_inversion.steps={args.steps}"]
    config = check_config(apply_overrides(config, overrides), RANGES)
    if args.resume and args.overwrite:
        raise errors.InputError("--resume continues the run in --out; --overwrite starts afresh: give one")
    token = args.token
    if not token or any(c.isspace() for c in token):
        raise errors.InputError(f"--token: must be one word without spaces, got {token!r}")
    if not args.init_word.strip():
        raise errors.InputError("--init-word: must be a word such as 'panda'")
    rgb, alpha = preprocess.load_image(args.image)
    if alpha is not None:  # over white, as zero123's reference
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
    if not os.path.isdir(args.sd):
        raise errors.InputError(f"--sd {args.sd}: folder not found")
    _check_model_folder(args.sd, "sd", ("fine",))
    from four_d.priors import loading
    from four_d.priors.textual_inversion import _single_token_id

    tokenizer = loading.load_tokenizer(os.path.join(args.sd, "tokenizer"))
    if token in tokenizer.get_vocab() or len(tokenizer.encode(token, add_special_tokens=False)) == 1:
        raise errors.InputError(f"--token: {token!r} is already a token of {args.sd}/tokenizer (pick a new word, "
                                "e.g. _panda_)")
    try:
        _single_token_id(tokenizer, args.init_word)
    except ValueError:
        n = len(tokenizer.encode(args.init_word, add_special_tokens=False))
        raise errors.InputError(f"--init-word: {args.init_word!r} is {n} tokens of {args.sd}/tokenizer, it must be "
                                "one") from None
    out = safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    if args.resume and not os.path.isdir(os.path.join(out, "checkpoints")):
        raise errors.InputError(f"--resume: {os.path.join(out, 'checkpoints')} not found (no run to continue)")
    from four_d.priors.textual_inversion import train_textual_inversion

    # SIGINT / SIGTERM: finish the current step, write its checkpoint, exit 130 / 143 (--resume continues)
    with GracefulStop() as stop:
        res = train_textual_inversion(args.sd, np.clip(rgb, 0.0, 1.0).astype(np.float32), token, args.init_word,
                                      out, config.textual_inversion, seed=args.seed, progress=not args.no_progress,
                                      checkpoint_dir=os.path.join(out, "checkpoints"), resume=args.resume, stop=stop)
    if res["stopped"] is not None:
        print(f"{PROG} invert: stopped by {stop.name} after step {res['stopped']} of "
              f"{config.textual_inversion.steps}; checkpoint written, continue with the same command and --resume",
              file=sys.stderr)
        return stop.exit_code
    final = os.path.join(out, "learned_embeds.safetensors")
    print(json.dumps(dict(token=token, init_word=args.init_word, steps=int(config.textual_inversion.steps),
                          final_loss=float(res["losses"][-1]) if len(res["losses"]) else None, learned_embeds=final,
                          files=[os.path.basename(p) for p in res["paths"]]), indent=1))
    return 0


def _animate(args, overrides):
    """four-d animate: options, config, reference files and the weights folder are checked before any compute."""
    import os

    from clitools.signals import GracefulStop
    from configs import four_d as four_d_cfg
    from configs import priors as priors_cfg
    from configs.validate import check_config
    from four_d import animate as animate_lib
    from four_d import preprocess, stage_priors, train_loop

    if args.resume and args.overwrite:
        raise errors.InputError("--resume continues the run in --out; --overwrite starts afresh: give one")
    for flag, value in (("--size", args.size), ("--preview-size", args.preview_size), ("--devices", args.devices)):
        if value is not None and value < (8 if "size" in flag else 1):
            raise errors.InputError(f"{flag}: must be >= {8 if 'size' in flag else 1}, got {value}")
    if not 0.0 <= args.border_ratio < 1.0:
        raise errors.InputError(f"--border-ratio: must be in [0, 1), got {args.border_ratio}")
    stages = animate_lib.parse_stages(args.stages)
    for flag, text in (("--prompt", args.prompt), ("--motion-prompt", args.motion_prompt)):
        if not text.strip():
            raise errors.InputError(f"{flag}: must be a non-empty prompt")
    config = errors.config_variant(four_d_cfg.get_config, args.config)
    pconfig = errors.config_variant(priors_cfg.get_config, args.config)
    mine = [o for o in overrides if not o.startswith("priors.")]
    theirs = [o[len("priors."):] for o in overrides if o.startswith("priors.")]
    config = check_config(apply_overrides(config, mine), four_d_cfg.RANGES)
    pconfig = check_config(apply_overrides(pconfig, theirs), priors_cfg.RANGES)
    # cheap checks of every input file before the output folder is touched or a model is read
    preprocess.load_image(args.image)
    stage_priors.check_weights_dir(args.weights, stages, args.token_prompt if "fine" in stages else None)
    safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    mesh = train_loop.make_mesh(args.devices)
    with GracefulStop() as stop:
        res = animate_lib.animate(args.image, args.prompt, args.motion_prompt, args.weights, args.out, config,
                                  pconfig, token_prompt=args.token_prompt, stages=stages, mask=args.mask,
                                  depth=args.depth, resume=args.resume, stop=stop, mesh=mesh,
                                  progress=not args.no_progress, preview_size=args.preview_size, size=args.size,
                                  border_ratio=args.border_ratio, seed=args.seed)
    if res["stopped"] is not None:
        if train_loop.is_main_process():
            print(f"{PROG} animate: stopped by {stop.name} after global step {res['stopped']}; checkpoint written, "
                  f"continue with the same command and --resume", file=sys.stderr)
        return stop.exit_code
    if train_loop.is_main_process():
        print(os.path.join(os.path.abspath(args.out), "animate.json"))
    return 0


def _eval(args):
    """four-d eval: every input is read and checked before any model compute."""
    import os

    from four_d import evaluate

    if not args.prompt.strip():
        raise errors.InputError("--prompt: must be a non-empty caption")
    if args.batch_size < 1:
        raise errors.InputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    out = None
    if args.out:
        out = os.path.abspath(args.out)
        if os.path.isdir(out):
            raise errors.InputError(f"{args.out}: --out is a folder, expected a JSON file name")
        if os.path.exists(out) and not args.overwrite:
            raise errors.InputError(f"{args.out}: exists; pass --overwrite to replace it")
        parent = os.path.dirname(out)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise errors.InputError(f"{args.out}: folder {parent} does not exist or is not writable")
    from four_d.animate import latest_reference_view

    source = args.frames
    if os.path.isdir(source):
        source = latest_reference_view(source) or source
    frames = evaluate.read_frames(source)
    reference = evaluate.read_image(args.image, f"--image {args.image}")
    if not os.path.isdir(args.clip):
        raise errors.InputError(f"--clip {args.clip}: CLIP folder not found")
    clip = evaluate.load_clip(args.clip)
    evaluate.tokenize(clip, [args.prompt])  # a prompt too long for CLIP fails here, before the image tower runs
    res = evaluate.evaluate(clip, frames, reference, args.prompt, batch_size=args.batch_size)
    res.update(frames=os.path.abspath(source), image=os.path.abspath(args.image),
               clip=os.path.abspath(args.clip), protocol=evaluate.PROTOCOL)
    print(evaluate.format_table(res))
    if out:
        safe_out.write_json(out, res)
        print(out)
    return 0


def _main(argv):
    # --config.a.b=value overrides are pulled out before argparse sees them.
    argv, overrides = split_overrides(argv)
    args = _parser().parse_args(argv)

    if args.command == "make-scene":
        from four_d import scenes

        for flag, value, low in (("--times", args.times, 1), ("--views", args.views, 1),
                                 ("--test-views", args.test_views, 0), ("--size", args.size, 4)):
            if value < low:
                raise errors.InputError(f"{flag}: must be >= {low}, got {value}")
        if not (args.radius > 0 and 0 < args.fovy < 180):
            raise errors.InputError(f"--radius must be > 0 and --fovy in (0, 180), got {args.radius}, {args.fovy}")
        safe_out.prepare_output_dir(args.dir, overwrite=args.overwrite, flag="make-scene DIR")
        times = [k / max(args.times - 1, 1) for k in range(args.times)]
        scene = scenes.make_scene(args.scene, args.seed)
        path = scenes.write_dataset(scene, args.dir, args.views, times, args.size, num_test_views=args.test_views,
                                    radius=args.radius, fovy=args.fovy, seed=args.seed)
        print(path)
        return 0

    if args.command == "animate":
        return _animate(args, overrides)

    if args.command == "invert":
        return _invert(args, overrides)

    if args.command == "eval":
        if overrides:
            raise errors.InputError(f"eval takes no --config overrides, got {overrides[0]!r}")
        return _eval(args)

    if args.distributed:
        # must run before anything touches a device (jax.devices(), device_put, jit), i.e. before the
        # fit module builds its mesh
        import os

        import jax

        if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
            # cross-process collectives of the CPU backend (no effect on GPU/TPU backends)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.coordinator or args.num_processes is not None or args.process_id is not None:
        raise errors.InputError("--coordinator/--num-processes/--process-id need --distributed")

    from clitools.signals import GracefulStop
    from configs.four_d import RANGES, get_config
    from configs.validate import check_config
    from four_d import fit as fit_lib

    config = errors.config_variant(get_config, args.config)
    config = check_config(apply_overrides(config, overrides), RANGES)
    if args.resume and args.overwrite:
        raise errors.InputError("--resume continues the run in --out; --overwrite starts afresh: give one")
    if args.devices is not None and args.devices < 1:
        raise errors.InputError(f"--devices: must be >= 1, got {args.devices}")
    # everything that can be checked is checked before the output folder is touched
    data = fit_lib.load_dataset(args.data_dir)
    safe_out.prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume)
    mesh = fit_lib.make_mesh(args.devices)
    # SIGINT / SIGTERM: finish the current step, write its checkpoint, exit 130 / 143 (--resume continues)
    with GracefulStop() as stop:
        res = fit_lib.fit(args.data_dir, args.out, config, resume=args.resume, mesh=mesh,
                          progress=not args.no_progress, video=not args.no_video, stop=stop, data=data)
    res.pop("params")
    res.pop("occupancy")
    if "stopped" in res:
        if fit_lib.is_main_process():
            print(f"{PROG} fit: stopped by {stop.name} after step {res['stopped']} of {res['iterations']}; "
                  f"checkpoint written, continue with: {PROG} fit {args.data_dir} --out {args.out} --resume",
                  file=sys.stderr)
        return stop.exit_code
    if fit_lib.is_main_process():
        print(json.dumps(res, indent=1))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    size_cpu_pools()  # before the CPU backend starts: several CPU devices need larger XLA pools (clitools/xla_cpu.py)
    return errors.run(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
