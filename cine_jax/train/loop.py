"""The training loop both stages of 3D Cinemagraphy share (`cine-jax train motion|render DATA --out DIR`).

A stage (motion.make_stage, render.make_stage) is a `Stage` of pure functions; `run` does everything else:

- Mesh: one `jax.sharding.Mesh` with axis "data"; every batch array is sharded on its leading (batch) axis
  (NamedSharding P("data")), the stage state is replicated (P()); the step is `jax.jit` with these explicit
  shardings and donates the state (never pmap). The global batch is built on every host from (seed, step)
  and each process fills its own devices (make_array_from_callback), so multi-host runs need no gather.
- Determinism: step s gets the key `step_key(seed, s)` = fold_in(PRNGKey(seed), s) and the batch
  `stage.batches(..., seed, start_step)` yields for s; both are functions of (seed, s) only, so a resumed run
  replays exactly the steps of an uninterrupted one (bit-identical on the same machine and device count).
- Checkpoints: orbax CheckpointManager in OUT/checkpoints with items "state" (StandardSave of
  {"stage": state, "step": int32}) and "config" (JSON); every loop.checkpoint_every steps, at the end and
  when stopped; loop.keep are kept.
- Outputs (process 0 only): OUT/config.json, OUT/metrics.jsonl (one JSON row per loop.log_every steps:
  step, every metric of the step as a float, wall time), OUT/samples/step_NNNNNNN_NAME.png every
  loop.sample_every steps, OUT/weights/ (stage.export at the end: `cine-jax animate --weights OUT/weights`).
  Files are written atomically (clitools.outputs); weights/ is written to a temporary folder and renamed.
- Fresh start vs resume: without `resume` an output folder holding files is refused unless `overwrite`, and
  then the earlier run's checkpoints, metrics, samples and weights are removed first (a later --resume never
  continues someone else's run). With `resume` the run continues from the last checkpoint (none: fresh).
- Stops: `stop` (clitools.signals.GracefulStop or anything with `.requested`): the loop finishes the step,
  writes its checkpoint and returns {"stopped": step, ...}; the CLI exits 128 + signal. With several
  processes they agree (a signal to any one stops all after the same step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clitools import checkpoints
from clitools import outputs as safe_out
from clitools.mesh import make_mesh  # noqa: F401  (part of this module's interface)

__all__ = ["Stage", "make_mesh", "run", "shard_batch", "step_key", "replicate"]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage as pure functions (see the module docstring for how `run` uses them).

    name:    "motion" | "render"
    init:    (key, batch) -> state: pytree of params + optimiser states (+ frozen params if any)
    step:    (state, batch, key) -> (state, metrics: dict[str, scalar]); pure; jitted by the loop with the
             batch sharded over the mesh's "data" axis and the state replicated
    samples: (state, batch) -> dict[str, np.ndarray uint8 HxWx3], written every config.loop.sample_every
    export:  (state, out_dir) -> None: writes files `cine-jax animate --weights` loads
    batches: (data_dir, config, split, seed, start_step) -> iterator of host numpy batch dicts (every array
             [batch_size, ...]), deterministic in (seed, step) so a resumed run sees the same batches
    """

    name: str
    init: Callable
    step: Callable
    samples: Callable
    export: Callable
    batches: Callable


def step_key(seed, step):
    """The PRNG key of one training step: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), int(step))


def init_key(seed):
    """The key `stage.init` gets (a stream apart from every step's key: steps use fold_in with step >= 0)."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), -1 % 2**32)


def replicate(tree, sharding):
    """Every leaf as a global array replicated on `sharding` (P()), filled from the host value by each
    process (works when the mesh spans several processes)."""

    def one(a):
        host = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def shard_batch(batch, sharding):
    """Host batch dict -> global arrays sharded on the leading axis by `sharding` (P("data"))."""
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx]), batch)


def check_batch(batch, batch_size, ndev, where):
    """A host batch dict: every leaf a numeric numpy array [batch_size, ...]; batch_size % devices == 0."""
    if not isinstance(batch, dict) or not batch:
        raise ValueError(f"{where}: a batch must be a non-empty dict of arrays, got {type(batch).__name__}")
    out = {}
    for k, v in batch.items():
        a = np.asarray(v)
        if a.ndim == 0 or a.shape[0] != batch_size:
            raise ValueError(f"{where}: batch[{k!r}] must be [batch_size={batch_size}, ...], got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{where}: batch[{k!r}] must be numeric, got dtype {a.dtype}")
        out[k] = a
    if batch_size % ndev:
        raise ValueError(f"config key 'loop.batch_size' = {batch_size}: must be a multiple of the {ndev} devices")
    return out


def is_main_process():
    return jax.process_index() == 0


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def checkpoint_manager(out_dir, keep):
    return checkpoints.checkpoint_manager(os.path.join(out_dir, "checkpoints"), keep)


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples", "weights", "config.json", "results.json")


def clear_previous_run(out_dir):
    """Remove what an earlier run wrote into `out_dir` (RUN_OUTPUTS); other files are left alone."""
    for name in RUN_OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def write_samples(out_dir, step, images):
    """images {name: uint8 [H, W, 3]} -> OUT/samples/step_NNNNNNN_NAME.png (atomic). Returns the paths."""
    from cine_jax import io

    folder = os.path.join(out_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, img in images.items():
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"stage samples: {name!r} must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
        path = os.path.join(folder, f"step_{step:07d}_{name}.png")
        with safe_out.atomic_path(path) as tmp:
            io.write_png(tmp, img)
        paths.append(path)
    return paths


def export_weights(stage, state, out_dir):
    """stage.export into OUT/weights through a temporary folder (a killed run leaves no half weights)."""
    dest = os.path.join(out_dir, "weights")
    with safe_out.atomic_dir(dest) as tmp:
        stage.export(state, tmp)
    return dest


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def run(stage, data_dir, out_dir, config, *, resume=False, overwrite=False, stop=None, mesh=None, progress=True):
    """Train `stage` on DATA_DIR for config.loop.steps steps; write OUT_DIR (see the module docstring).

    Returns dict(step: the last step done, steps: config.loop.steps, stopped: the step reached when a stop
    was requested (else absent), metrics: the last step's metrics (floats), state: the final stage state,
    weights: OUT/weights (absent when stopped), seconds: wall time of the steps).
    """
    from configs.cine_train import RANGES
    from configs.validate import check_config

    check_config(config, RANGES)
    lc = config.loop
    out_dir = safe_out.prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir}: data folder not found")
    if not resume and is_main_process():
        clear_previous_run(out_dir)
    mesh = make_mesh() if mesh is None else mesh
    ndev = int(mesh.devices.size)
    rep = NamedSharding(mesh, P())
    data_sh = NamedSharding(mesh, P("data"))
    steps, seed, bs = int(lc.steps), int(lc.seed), int(lc.batch_size)

    mngr = checkpoint_manager(out_dir, lc.keep)
    full = None
    if resume:
        # the abstract state comes from the batch of step 0 (shapes only; no compute)
        probe = check_batch(next(iter(stage.batches(data_dir, config, "train", seed, 0))), bs, ndev, data_dir)
        key0 = init_key(seed)  # concrete: an init may draw host-side numbers from the key
        abstract = jax.eval_shape(lambda: {"stage": stage.init(key0, probe), "step": jnp.zeros((), jnp.int32)})
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
        full, _ = checkpoints.restore_checkpoint(mngr, abstract)
    first = 0 if full is None else int(full["step"])
    batches = iter(stage.batches(data_dir, config, "train", seed, first))
    if full is None:
        probe = check_batch(next(iter(stage.batches(data_dir, config, "train", seed, 0))), bs, ndev, data_dir)
        full = {"stage": stage.init(init_key(seed), probe), "step": jnp.zeros((), jnp.int32)}
    full = replicate(full, rep)
    if is_main_process():
        safe_out.write_text(os.path.join(out_dir, "config.json"), config.to_json_best_effort(indent=1))

    def full_step(full, batch, key):
        new, metrics = stage.step(full["stage"], batch, key)
        return {"stage": new, "step": full["step"] + 1}, metrics

    step_fn = jax.jit(full_step, in_shardings=(rep, data_sh, rep), out_shardings=(rep, rep), donate_argnums=(0,))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=first, desc=f"cine-jax train {stage.name}", unit="step", leave=False)
    t0 = time.perf_counter()
    stopped_at = None
    last = {}
    done = first
    log_path = os.path.join(out_dir, "metrics.jsonl")
    with open(log_path, "a") if is_main_process() else contextlib.nullcontext() as log:
        for step in range(first, steps):
            try:
                host = next(batches)
            except StopIteration:
                raise ValueError(f"{data_dir}: the {stage.name} stage's batches ran out at step {step}") from None
            host = check_batch(host, bs, ndev, data_dir)
            key = replicate(step_key(seed, step), rep)
            full, metrics = step_fn(full, shard_batch(host, data_sh), key)
            done = step + 1
            if done % int(lc.log_every) == 0 or done == steps:
                last = {k: float(v) for k, v in metrics.items()}
                row = {"step": done, **last, "time": time.perf_counter() - t0}
                if is_main_process():
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if bar is not None and "loss" in last:
                    bar.set_postfix(loss=f"{last['loss']:.4g}")
            if int(lc.sample_every) > 0 and done % int(lc.sample_every) == 0 and is_main_process():
                write_samples(out_dir, done, stage.samples(full["stage"], host))
            if done % int(lc.checkpoint_every) == 0 or done == steps:
                checkpoints.save_checkpoint(mngr, full, config)  # collective: orbax writes from the primary host
            if bar is not None:
                bar.update(1)
            if stop is not None and done != steps and checkpoints.stop_requested(stop):
                if done % int(lc.checkpoint_every) != 0:
                    checkpoints.save_checkpoint(mngr, full, config)
                stopped_at = done
                break
    if bar is not None:
        bar.close()
    mngr.close()
    result = {"step": done, "steps": steps, "metrics": last, "state": full["stage"],
              "seconds": time.perf_counter() - t0}
    if stopped_at is not None:
        result["stopped"] = stopped_at
        return result
    if is_main_process():
        result["weights"] = export_weights(stage, full["stage"], out_dir)
        safe_out.write_json(os.path.join(out_dir, "results.json"),
                            {"stage": stage.name, "steps": steps, "final_metrics": last,
                             "weights": result["weights"]}, indent=1)
    return result
