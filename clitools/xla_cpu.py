"""Thread pools of XLA:CPU large enough for several (fake) CPU devices.

With N CPU devices in one process (``--xla_force_host_platform_device_count=N``, how the tests and
``benchmarks/cinemagraph.py --host-devices`` shard on a CPU), every collective is an in-process rendezvous of N
device threads. XLA sizes its CPU thread pools as max(cores, N). When steps are dispatched asynchronously one
after the other (the normal training loop), a device thread of the next step can take a pool thread that a
device of the current step still needs; the current step's rendezvous then never completes and XLA aborts the
process after 40 s ("Termination timeout for `collective permute ...` ... only 3 of 4 arrived"). Measured with
jax 0.10.2 on 2 cores, 4 fake devices, a collective-permute inside a fori_loop dispatched 100-300 times: 10 of
11 runs aborted with pools of 2 or 4 threads, 0 of 7 with 8 or 16 (tests/test_xla_cpu.py keeps that case).

Only processes whose jitted steps run collectives need the larger pools, and they cost time where there are
none: the cinemagraph renderer shards independent frames over the devices (no collective), and its
768x768 frame took 0.30 s with 8 pool threads against 0.25 s with XLA's default 2 on 2 cores and 2 devices
(median of 6 chunks each, 2026-11-30). So `cine-jax train` and the four_d CLI size the pools, `cine-jax
animate` and `benchmarks/cinemagraph.py` do not.

XLA reads the pool size from the environment variable PJRT_NPROC when the CPU backend starts, so
`size_cpu_pools` must run before the first device is touched (the CLIs call it first thing; tests/conftest.py
before jax is imported). It changes nothing on GPU / TPU backends and nothing with one CPU device.
"""

import os
import re

POOL_THREADS_PER_DEVICE = 4  # 2 per device was enough in the measurement above; 4 leaves room


def cpu_device_count(environ=None):
    """Number of CPU devices XLA will create, from XLA_FLAGS (--xla_force_host_platform_device_count) or
    JAX_NUM_CPU_DEVICES; 1 when neither is set."""
    env = os.environ if environ is None else environ
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    if m:
        return int(m.group(1))
    value = env.get("JAX_NUM_CPU_DEVICES", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def size_cpu_pools(environ=None):
    """Set PJRT_NPROC to POOL_THREADS_PER_DEVICE x (CPU devices) when there are several CPU devices and neither
    PJRT_NPROC nor NPROC is set (a user's own value wins). Returns the value in effect, or None."""
    env = os.environ if environ is None else environ
    for name in ("PJRT_NPROC", "NPROC"):
        if env.get(name):
            return env[name]
    n = cpu_device_count(env)
    if n <= 1:
        return None
    env["PJRT_NPROC"] = str(max(POOL_THREADS_PER_DEVICE * n, os.cpu_count() or 1))
    return env["PJRT_NPROC"]
