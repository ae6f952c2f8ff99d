"""Shared benchmark harness: warm-up, block_until_ready, median of repeats, compile time reported apart.

Usage:
    bench = Bench("kernels")
    bench.time("splat 768x768", jitted_fn, *args, repeats=5, torch_fn=None)
    bench.report()   # prints a table and writes benchmarks/results/kernels.json
"""

import json
import os
import platform
import resource
import statistics
import time

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def peak_rss_gib():
    """Peak resident memory of this process so far, GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_callable(fn, *args, repeats=5, warmup=1):
    """Median wall time (s) of fn(*args) over `repeats` calls after `warmup` calls; results blocked."""
    for _ in range(warmup):
        _block(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def compile_time(jitted, *args):
    """Seconds to lower and compile a jitted function for these arguments (AOT), and the executable."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t0, compiled


class Bench:
    def __init__(self, name):
        self.name = name
        self.rows = []
        self.meta = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": jax.device_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def add(self, name, **fields):
        row = {"name": name, **fields}
        self.rows.append(row)
        return row

    def time(self, name, jitted, *args, repeats=5, **extra):
        """Compile (timed separately), then the median of `repeats` runs of the compiled executable."""
        ctime, compiled = compile_time(jitted, *args)
        median, _ = time_callable(compiled, *args, repeats=repeats)
        return self.add(name, compile_s=round(ctime, 3), median_s=round(median, 4), **extra)

    def report(self, path=None):
        cols = []
        for row in self.rows:
            for k in row:
                if k not in cols:
                    cols.append(k)
        cells = [[_fmt(r.get(c, "")) for c in cols] for r in self.rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
        print(f"\n== {self.name} ({self.meta['backend']}, {self.meta['cpus']} cpus, jax {self.meta['jax']}) ==")
        print(line)
        print("-" * len(line))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = path or os.path.join(RESULTS_DIR, f"{self.name}.json")
        with open(path, "w") as f:
            json.dump({"meta": self.meta, "rows": self.rows}, f, indent=2)
        print(f"\nwrote {path}")
        return path


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
