"""XLA:CPU's small-loop threshold, raised when stiffnode is imported.

XLA:CPU compiles a `while` loop into one function only when one iteration touches fewer
than `xla_cpu_small_while_loop_byte_threshold` bytes (default 1024) and holds no dot,
custom call or scatter; any other loop runs as a graph of kernels at ~30 ns of dispatch
each, which is most of a small stiff system's step. The threshold belongs to the process
and is read when JAX starts its CPU backend, so `import stiffnode` raises it to
`SMALL_LOOP_BYTES` in `XLA_FLAGS` if that has not happened yet, unless `XLA_FLAGS` already
names the option (the user's value is kept) or `STIFFNODE_XLA_DEFAULTS=0`. If the backend
has already started, a warning says how to get it. Measured in
`benchmarks/xla_defaults.py` (docs: "Speed on CPU").
"""

import os
import warnings

SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"
SMALL_LOOP_BYTES = 262144
OPT_OUT = "STIFFNODE_XLA_DEFAULTS"
_EXTRA = "--xla_backend_extra_options="


def with_small_loop_threshold(flags: str, threshold: int = SMALL_LOOP_BYTES) -> str:
    """`flags` (an `XLA_FLAGS` value) with `SMALL_LOOP_OPTION=threshold` added to its
    `--xla_backend_extra_options` (created if absent); unchanged if it names the option."""
    if SMALL_LOOP_OPTION in flags:
        return flags
    option = f"{SMALL_LOOP_OPTION}={threshold}"
    words = flags.split()
    for i, word in enumerate(words):
        if word.startswith(_EXTRA):
            existing = word[len(_EXTRA) :]
            words[i] = _EXTRA + (f"{existing},{option}" if existing else option)
            return " ".join(words)
    return " ".join([*words, _EXTRA + option])


def apply_defaults() -> None:
    """At import: raise the threshold in `os.environ["XLA_FLAGS"]` (see the module)."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if SMALL_LOOP_OPTION in flags:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(
            "stiffnode was imported after JAX started its backends, so XLA:CPU's small-loop "
            "threshold stays at its default and solves of small systems run 2-7x slower on "
            "CPU; import stiffnode before any JAX computation, or set XLA_FLAGS="
            f"'{with_small_loop_threshold('')}' (set {OPT_OUT}=0 to silence this)",
            stacklevel=4,
        )
        return
    os.environ["XLA_FLAGS"] = with_small_loop_threshold(flags)


apply_defaults()
