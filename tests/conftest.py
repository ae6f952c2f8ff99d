"""Test harness: 4 fake CPU devices, a persistent compilation cache, no hub access, quiet diffusers.

Everything here must run before jax is imported anywhere, which is why it sits at the top of conftest.
"""

import os

# Four fake CPU devices so sharded code paths are exercised and compared with the 1-device result.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU's thread pools sized for the 4 devices (clitools/xla_cpu.py: with the default size, asynchronously
# dispatched steps with collectives inside loops deadlock, and XLA aborts the worker after 40 s).
from clitools.xla_cpu import size_cpu_pools  # noqa: E402

size_cpu_pools()
# A hub lookup retries for ~25 s before failing when offline; fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Many small jit calls: the persistent cache makes a second run (and other xdist workers) much faster.
_cache = os.environ.get("CINE_JAX_TEST_CACHE", os.path.expanduser("~/.cache/cine-jax/jax-test-cache"))

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, so every test is reproducible."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def num_devices():
    return jax.device_count()
