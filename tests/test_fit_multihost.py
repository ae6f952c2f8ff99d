"""MULTI-PROCESS test of `four-d fit --distributed` (real processes, not stubs; ~40-60 s on 2 cores).

Two `four-d fit` processes on this machine, 2 CPU devices each, joined by jax.distributed.initialize on a
localhost coordinator with gloo CPU collectives, train one tiny model on a 4-device global mesh:

1. the run is killed (SIGKILL, one process first, then the other, which is left hanging in a collective)
   after it has written a checkpoint;
2. the checkpoint of that 2-process run equals the parameters of a 1-process 4-device run after the same
   number of steps (tolerance 1e-6: only the cross-process all-reduce order differs);
3. two new processes with --resume continue from the last checkpoint to step K and end with the
   parameters of the 1-process run after K steps;
4. only process 0 wrote: metrics.jsonl has each logged step once, per run, and only process 0 printed
   the results JSON.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs.four_d import get_config
from configs.overrides import apply_overrides
from four_d import fit as fit_lib
from four_d import scenes
from four_d.field import field_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.fit.checkpoint_every=2", "--config.fit.log_every=1", "--config.fit.eval_every=0",
             "--config.fit.max_checkpoints=2"]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(data, out, iterations, extra=()):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cache = os.environ.get("CINE_JAX_TEST_CACHE", os.path.expanduser("~/.cache/cine-jax/jax-test-cache"))
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "four_d.cli", "fit", data, "--out", out, "--config", "tiny", "--no-video",
               "--no-progress", "--distributed", "--coordinator", f"localhost:{port}", "--num-processes", "2",
               "--process-id", str(pid), f"--config.fit.iterations={iterations}", *OVERRIDES, *extra]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _latest_step(out):
    d = os.path.join(out, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=None)


def _restore_params(out, cfg, model, opt):
    mngr = fit_lib.checkpoint_manager(out, cfg)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                            jax.eval_shape(lambda: fit_lib.init_state(cfg, model, opt)))
    state, _ = fit_lib.restore_checkpoint(mngr, abstract)
    mngr.close()
    return state


@pytest.mark.skipif(jax.device_count() < 4, reason="the 1-process reference needs 4 (fake) devices")
def test_two_processes_match_one_process_and_resume_after_a_kill(tmp_path):
    t_start = time.time()
    data = str(tmp_path / "data")
    # no held-out views: no evaluation renders to compile, the processes only train and checkpoint
    scenes.write_dataset(scenes.make_scene("orbiting-spheres", 0), data, num_views=2, times=(0.0, 1.0), size=8,
                         num_test_views=0)
    out = str(tmp_path / "run")

    # 1. a long 2-process run, killed once it has checkpointed (step >= 2)
    procs = _launch(data, out, iterations=100_000)
    deadline = time.time() + 240
    while _latest_step(out) is None and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    crashed = [p.poll() for p in procs]
    procs[1].send_signal(signal.SIGKILL)
    time.sleep(0.5)
    procs[0].send_signal(signal.SIGKILL)
    logs = [p.communicate() for p in procs]
    assert crashed == [None, None], logs
    killed_at = _latest_step(out)
    assert killed_at is not None and killed_at >= 2, logs

    # reference: one process, 4 devices, same config
    cfg = apply_overrides(get_config("tiny"), [o.removeprefix("--config.") for o in OVERRIDES])
    model = field_from_config(cfg)
    opt = fit_lib.make_optimizer(cfg)
    loaded = fit_lib.load_dataset(data)
    rays = fit_lib.frame_rays(loaded, "train")
    rays = {k: rays[k] for k in fit_lib.TRAIN_RAY_KEYS}
    mesh = fit_lib.make_mesh(4)
    step = fit_lib.make_train_step(cfg, model, opt, rays, loaded["background"], mesh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = fit_lib.replicate(fit_lib.init_state(cfg, model, opt), rep)
    ref = {}
    target = killed_at + 2
    for s in range(target):
        state, _ = step(state, rays)
        ref[s + 1] = jax.device_get(state["params"])

    print(f"killed at step {killed_at} after {time.time() - t_start:.1f} s")
    # 2. the 2-process checkpoint equals the 1-process parameters at that step
    ck = _restore_params(out, cfg, model, opt)
    assert int(ck["step"]) == killed_at
    for a, b in zip(jax.tree.leaves(jax.device_get(ck["params"])), jax.tree.leaves(ref[killed_at])):
        np.testing.assert_allclose(a, b, atol=1e-6)

    # 3. resume on two new processes to `target`
    procs = _launch(data, out, iterations=target, extra=["--resume"])
    t_resume = time.time()
    logs = [p.communicate(timeout=240) for p in procs]
    print(f"resumed run took {time.time() - t_resume:.1f} s")
    assert [p.returncode for p in procs] == [0, 0], logs
    final = _restore_params(out, cfg, model, opt)
    assert int(final["step"]) == target
    for a, b in zip(jax.tree.leaves(jax.device_get(final["params"])), jax.tree.leaves(ref[target])):
        np.testing.assert_allclose(a, b, atol=1e-6)

    # 4. only process 0 wrote and printed
    # gloo prints its connection lines to stdout; the results JSON follows them
    stdout = logs[0][0]
    res = json.loads(stdout[stdout.index("\n{\n") + 1:] if not stdout.startswith("{") else stdout)
    assert res["iterations"] == target
    assert "{" not in logs[1][0]
    steps = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))]
    # two runs appended to one file (killed, resumed), each logging every step exactly once (had both
    # processes written, the steps would read 1, 1, 2, 2, ...). The killed run may have logged a step or two
    # beyond its last checkpoint before the kill; the resumed run logs from the checkpoint on.
    assert steps[-(target - killed_at):] == list(range(killed_at + 1, target + 1)), steps
    first = steps[:len(steps) - (target - killed_at)]
    assert first == list(range(1, len(first) + 1)) and len(first) >= killed_at, steps
    assert json.load(open(os.path.join(out, "results.json")))["iterations"] == target
