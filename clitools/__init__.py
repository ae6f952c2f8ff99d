"""What both command lines (`cine-jax`, `four-d`) share: one error path, safe outputs, graceful stops.

* errors.py   -- `InputError`, a one-line argparse, and `run`: every problem with an input file, an output
                 folder or a config value ends with exit code 2 and one line naming the file (or key) and the
                 problem; `--debug` shows the traceback.
* outputs.py  -- output folders refused when they already hold files (unless --overwrite / --resume),
                 checked before any compute; results written under a temporary name and renamed when complete.
* signals.py  -- SIGINT/SIGTERM during a training loop: finish the step, checkpoint, exit (resume continues).
* checkpoints.py -- the Orbax checkpoint helpers and the collective stop decision of both training loops.
* mesh.py      -- the data-parallel device Mesh of both training loops.
* xla_cpu.py   -- XLA:CPU thread pools sized for several CPU devices (PJRT_NPROC), set before the backend starts.

The package imports neither cine_jax nor four_d (both import it); jax / orbax are imported only inside
checkpoints.py's functions, so importing clitools stays light.
"""
