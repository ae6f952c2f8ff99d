"""The data-parallel device mesh of both training loops (four_d/train_loop.py, cine_jax/train/loop.py)."""


def make_mesh(num_devices=None):
    """1-D Mesh with axis "data" over the first num_devices devices (default: all of them, on every process)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devs = jax.devices()
    n = len(devs) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devs):
        raise ValueError(f"make_mesh: num_devices must be in [1, {len(devs)}], got {num_devices!r}")
    return Mesh(np.array(devs[:n]), ("data",))
