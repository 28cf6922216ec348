"""Shared by the benchmark scripts: timing after compilation, and the environment record."""

import os
import platform
import statistics
import sys
import time
from importlib.metadata import version

import jax

# `benchmarks/all.py` points a run elsewhere (a GPU run, a quick run) through the environment.
RESULTS = os.environ.get("STIFFNODE_RESULTS") or os.path.join(os.path.dirname(__file__), "results")


def time_compiled(fn, *args, repeats: int = 7):
    """(compile seconds, median run seconds after compilation) of `jax.jit(fn)(*args)`."""
    jitted = jax.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs)


def matmul_rate(n: int = 2048, repeats: int = 7) -> float:
    """flop/s of an `n x n` float32 product on the default device (all cores), after
    compilation, median of `repeats`: the "large-matmul rate" that flop rates are quoted
    against."""
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    _, run_s = time_compiled(lambda a: a @ a, a, repeats=repeats)
    return 2 * n**3 / run_s


def environment() -> dict:
    """Package versions and the machine, for the JSON record."""
    names = ["stiffnode", "jax", "jaxlib", "diffrax", "equinox", "optax"]
    return {
        "versions": {name: version(name) for name in names} | {"python": sys.version.split()[0]},
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
