"""`four-d` command line.

  four-d make-scene DIR [--scene orbiting-spheres] [--views 8] [--test-views 2] [--times 5] [--size 32]
  four-d fit DATA_DIR --out DIR [--config tiny|paper] [--resume] [--devices N] [--no-video]
             [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]]
             [--config.section.key=value ...]

`fit` prints the results JSON (held-out PSNR/SSIM, initial PSNR, video path) on stdout (process 0 only).
Errors (clitools): a bad dataset, output folder, option or config value ends with exit code 2 and one line
naming the file (or key) and the problem; `--debug` shows the traceback. An output folder that already holds
files is refused unless `--overwrite` (make-scene, fit) or `--resume` (fit) is given.
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
    return p


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

    try:
        config = get_config(args.config)
    except ValueError as e:
        raise errors.InputError(f"--config: {e}") from None
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
    return errors.run(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
