"""The slow tests first.

Under xdist, tests are handed out in collection order; the few long ones (notebooks,
command-line studies) would otherwise start last and leave one worker running alone at
the end. They are moved to the front, longest first (their durations as measured on a
2-core machine).
"""

import gc
import os
import tempfile
from pathlib import Path

import jax
import pytest

# XLA:CPU compiles the tests' programs without LLVM's optimisation (the same HLO, the same
# arithmetic; they are small and run briefly, and compiling them is most of the suite's
# time: 8 minutes instead of 15 on 2 cores). Inherited by the notebooks' kernels and the
# command-line tests' subprocesses; a flag already in `XLA_FLAGS` is kept, and
# `STIFFNODE_TEST_XLA_OPTIMIZE=1` compiles as users do. (Read when JAX starts its backend,
# after this.)
_FAST_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_llvm_disable_expensive_passes": "true",
    "xla_cpu_use_fusion_emitters": "false",
}
if os.environ.get("STIFFNODE_TEST_XLA_OPTIMIZE", "0") != "1":
    _flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join(
        [_flags] + [f"--{k}={v}" for k, v in _FAST_COMPILE.items() if k not in _flags]
    ).strip()

# Two CPU devices, as `stiffnode study` uses on a 2-core machine: the vmapped trials are
# spread over them (`trials.train_trials`) in the tests too. Set before JAX's first use.
jax.config.update("jax_num_cpu_devices", 2)

# One persistent compilation cache for the run's processes (both xdist workers, the
# notebooks' kernels, the command-line tests' subprocesses, through the environment): the
# suite's time is mostly compilation, and many programs are compiled by several of them.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "stiffnode-tests-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
# A size limit (far above the suite's needs) makes JAX take a file lock around every cache
# read and write (`jax._src.lru_cache`; without one a write is a plain `write_bytes`, and a
# worker can read an entry another is still writing: a warning and a recompilation).
# (Set through the environment too, for the notebooks' kernels and the subprocesses.)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 * 2**30))
jax.config.update(
    "jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
)

# Test id prefixes of the long tests, longest first.
_LONG_FIRST = (
    "test_distributed.py::test_ensemble_and_flow",
    "test_distributed.py::test_a_killed_process",
    "test_notebooks.py::",
    "test_flow_study.py::test_flow_study_cli",
    "test_study.py::test_study_cli",
    "test_time_series.py::test_neural_ode_fits",
    "test_data_train_cli.py::test_cli_demo",
    "test_study.py::test_vmapped_trials",
    "test_study.py::test_penalty_reduces",
    "test_cnf.py::test_maximum_likelihood",
    "test_readme.py::",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        nodeid = item.nodeid.split("/")[-1]
        for i, prefix in enumerate(_LONG_FIRST):
            if nodeid.startswith(prefix):
                return i
        return len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "x64: run in float64 (jax.enable_x64); unmarked tests run in float32"
    )


def _precision(request):
    """Switch x64 on (a test or module marked `x64`) or off for the duration, process-wide:
    `jax.config.update` rather than the thread-local `jax.enable_x64` context, which host
    callbacks (run on other threads) would not see."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.node.get_closest_marker("x64") is not None)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture(scope="module", autouse=True)
def _module_precision(request):
    """float64 for a module marked `pytestmark = pytest.mark.x64` (its module-scoped
    fixtures included), float32 otherwise: no test module switches x64 for the others."""
    yield from _precision(request)


@pytest.fixture(autouse=True)
def _test_precision(request):
    """The same for one test marked `@pytest.mark.x64` in an unmarked module."""
    yield from _precision(request)


# Every XLA:CPU executable a worker has loaded holds its own memory maps (a few per kernel:
# the solvers' programs have thousands), and jit keeps every executable it compiled. An
# xdist worker running half the suite reached ~26,000 maps after two test modules; at the
# kernel's limit (`vm.max_map_count`, 65,530 by default) the next mmap fails and the worker
# dies in XLA with SIGSEGV or SIGABRT, in whichever test compiles or loads a program then
# (reproduced with the limit lowered to 12,000). JAX's in-memory caches are emptied after a
# test that leaves the process above a third of the limit; a program needed again comes back
# from the persistent cache above.
_MAPS = Path("/proc/self/maps")
_MAP_LIMIT = Path("/proc/sys/vm/max_map_count")


def _map_count() -> int:
    with _MAPS.open("rb") as maps:
        return sum(1 for _ in maps)


@pytest.fixture(autouse=True)
def _release_executables():
    yield
    if _MAPS.exists() and _MAP_LIMIT.exists():
        if _map_count() > int(_MAP_LIMIT.read_text()) // 3:
            jax.clear_caches()
            gc.collect()
