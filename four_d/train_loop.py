"""The one training loop of four_d: `four-d fit` (four_d/fit.py) and the Animate124 stages (four_d/stages.py).

What lives here: the device Mesh (clitools.mesh, shared with cine_jax/train/loop.py), replication of host
values onto it, the optimiser (Adam per official settings, grid / MLP learning rates, optional value
clipping), the per-step PRNG key,
the Orbax checkpoint manager (named items "state" and "config"), fresh-start clearing of an output folder,
the stop agreement of several processes, and the loop itself (`run_loop`: JSON-lines metrics, periodic
checkpoints, tqdm progress, graceful stop). The callers own their state layout and their jitted step.

Multi-host: every process runs the same steps and the (collective) checkpoint saves; metrics files are
written by process 0 only.
"""

import contextlib
import json
import os
import shutil
import time

import jax
import numpy as np
import optax
from flax import traverse_util

# the Orbax helpers, the collective stop decision and the mesh are shared with cine_jax/train/loop.py
from clitools.checkpoints import (  # noqa: F401  (part of this module's interface)
    checkpoint_manager,
    restore_checkpoint,
    save_checkpoint,
    stop_requested,
)
from clitools.mesh import make_mesh  # noqa: F401  (part of this module's interface)


def replicate(tree, sharding):
    """Every leaf as a global array replicated on `sharding` (a NamedSharding with spec P()).

    Built from the host value with make_array_from_callback, which also works when the mesh spans
    several processes (every process holds the same value and fills its own devices); device_put of
    a process-local array onto devices of other processes does not.
    """
    def one(a):
        host = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def is_main_process():
    """True on the process that writes files (metrics, config/results JSON, videos): process 0."""
    return jax.process_index() == 0


def step_key(seed, step):
    """The PRNG key of one training step: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def _param_label(path, _leaf):
    return "grid" if "tables" in path else "mlp"


def make_optimizer(optim, grad_clip=None):
    """Adam per official settings: grid tables optim.lr_grid, everything else optim.lr_mlp (multi_transform).

    optim: a configs/four_d.py `optim` section. grad_clip (default optim.grad_clip): > 0 clips every
    gradient value to [-c, c] before Adam (official torch.nn.utils.clip_grad_value_), 0 disables.
    """
    o = optim

    def adam(lr):
        return optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)

    tx = optax.multi_transform(
        {"grid": adam(o.lr_grid), "mlp": adam(o.lr_mlp)},
        lambda params: traverse_util.path_aware_map(_param_label, params),
    )
    clip = float(o.get("grad_clip", 0.0) if grad_clip is None else grad_clip)
    if clip > 0:
        tx = optax.chain(optax.clip(clip), tx)
    return tx


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def clear_previous_run(out_dir, files=("metrics.jsonl", "results.json"), dirs=("checkpoints",)):
    """Remove the checkpoints and metrics of an earlier run in `out_dir` (a fresh start, not a resume)."""
    for name in dirs:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
    for name in files:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def run_loop(step_fn, state, *, first, last, log_path, log_every, checkpoint_every, save, stop=None,
             progress=True, desc="train", hook=None, extra_row=None, postfix=("loss", "psnr")):
    """Run steps first .. last - 1 of `step_fn(state) -> (state, metrics dict of scalars)`.

    After each step (done = step + 1):
      - every log_every steps and at `last`: one JSON line {"step": done, **metrics, **extra_row, "time"}
        appended to log_path (process 0 only);
      - hook(done, state, write_row) if given (write_row(dict) appends a line: evaluation curves);
      - every checkpoint_every steps and at `last`: save(state) (collective on every process);
      - a stop request (`stop.requested`, agreed over processes) ends the loop after the current step,
        saving it first when the periodic save did not.
    Returns (state, stopped_at): stopped_at is the step reached on a stop, else None.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=last, initial=first, desc=desc, leave=False)
    t0 = time.perf_counter()
    stopped_at = None
    extra_row = dict(extra_row or {})
    # metrics are written by process 0 only (the file is opened there only)
    with open(log_path, "a") if is_main_process() else contextlib.nullcontext() as log:

        def write_row(row):
            if is_main_process():
                log.write(json.dumps(row) + "\n")
                log.flush()

        for step in range(first, last):
            state, m = step_fn(state)
            done = step + 1
            if done % int(log_every) == 0 or done == last:
                row = {"step": done, **{k: float(v) for k, v in m.items()}, **extra_row,
                       "time": time.perf_counter() - t0}
                write_row(row)
                if bar is not None:
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in postfix if k in row})
            if hook is not None:
                hook(done, state, write_row)
            if done % int(checkpoint_every) == 0 or done == last:
                save(state)
            if bar is not None:
                bar.update(1)
            if stop is not None and done != last and stop_requested(stop):
                if done % int(checkpoint_every) != 0:
                    save(state)
                stopped_at = done
                break
    if bar is not None:
        bar.close()
    return state, stopped_at
