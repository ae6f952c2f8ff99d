"""clitools/xla_cpu.py: XLA:CPU thread pools sized for several CPU devices.

The regression case is the deadlock that aborted a CI worker: 4 CPU devices, a collective-permute inside a
fori_loop (a roll of a sharded array), the step dispatched asynchronously many times in a row. With XLA's default
pools (max(cores, devices) threads) it aborts after XLA's 40 s rendezvous timeout in most runs on this 2-core
machine; with size_cpu_pools it completes."""

import os
import subprocess
import sys
import textwrap

from clitools.xla_cpu import POOL_THREADS_PER_DEVICE, cpu_device_count, size_cpu_pools


def test_device_count_from_flags_or_jax_variable():
    assert cpu_device_count({}) == 1
    flags = "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=6"
    assert cpu_device_count({"XLA_FLAGS": flags}) == 6
    assert cpu_device_count({"JAX_NUM_CPU_DEVICES": "3"}) == 3
    assert cpu_device_count({"JAX_NUM_CPU_DEVICES": "zero"}) == 1


def test_pool_size_set_only_for_several_devices_and_never_over_a_user_value():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert size_cpu_pools(env) == str(max(POOL_THREADS_PER_DEVICE * 4, os.cpu_count() or 1))
    assert env["PJRT_NPROC"] == str(max(16, os.cpu_count() or 1))
    one = {}
    assert size_cpu_pools(one) is None and "PJRT_NPROC" not in one
    mine = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PJRT_NPROC": "5"}
    assert size_cpu_pools(mine) == "5" and mine["PJRT_NPROC"] == "5"
    ci = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "NPROC": "3"}
    assert size_cpu_pools(ci) == "3" and "PJRT_NPROC" not in ci


_PROGRAM = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("d",))
    assert len(mesh.devices) == 4
    sh = NamedSharding(mesh, P("d"))

    def f(x, w):
        def body(i, x):
            y = jnp.roll(jnp.tanh(x @ w), 3, axis=0)  # rows cross device boundaries: collective-permute
            return jax.lax.with_sharding_constraint(y, sh)
        return jax.lax.fori_loop(0, 30, body, x)

    g = jax.jit(f, in_shardings=(sh, NamedSharding(mesh, P())), out_shardings=sh)
    x = jax.device_put(jnp.ones((512, 64)), sh)
    w = jnp.eye(64) * 0.9
    for _ in range(300):  # dispatched asynchronously, one after the other, as a training loop does
        x = g(x, w)
    print("ok", float(jax.block_until_ready(x)[0, 0]))
""")


def test_collectives_in_loops_dispatched_back_to_back_complete():
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
    # 20 s instead of XLA's 40 s before a stuck rendezvous aborts: a regression fails sooner
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=20")
    env["JAX_PLATFORMS"] = "cpu"
    assert size_cpu_pools(env) is not None
    res = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")
