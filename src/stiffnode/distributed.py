"""Beyond one process: JAX's multi-controller runtime (`jax.distributed`), as clusters and
TPU pods run it, and on one machine as several processes.

Every process runs the same program on its share of a global device mesh; results that
live on other processes' devices are gathered with `to_host`, and decisions taken from
files (which trials are finished) are made by process 0 and shared with `agree`, so that
all processes run the same compiled programs. Output files are written by every process
atomically with identical content, so the output directory must be on a file system the
processes share (one machine, or a cluster's shared file system).

Data parallelism: `shard_batch` splits a batch over the devices; the gradient flow and any
jitted loss then run on every device's share.

Launch: `initialize` (the arguments of `jax.distributed.initialize`, or none to let JAX
detect SLURM, Open MPI or a cloud TPU), or `stiffnode launch -n P -- study ...` for P
local processes.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from ._validation import positive_int


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
) -> None:
    """`jax.distributed.initialize`, with the gloo collectives on CPU (XLA:CPU has no other
    cross-process collectives). Call before any other use of JAX. `timeout_s`: how long
    processes wait for each other to start (a missing process is then an error naming the
    coordinator, not a hang); `heartbeat_timeout_s`: after how long without a heartbeat a
    process counts as lost (the others then stop with an error naming it, `Task I
    heartbeat timeout`)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # (CPU devices only)
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give coordinator, num_processes and process_id together, or none")
    if all(given):
        num_processes = positive_int("num_processes", num_processes)
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    jax.distributed.initialize(
        coordinator,
        num_processes,
        process_id,
        initialization_timeout=timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )


_LOST_PEER_MESSAGES = ("Gloo", "Connection closed", "heartbeat", "UNAVAILABLE")


class ProcessLost(ValueError):
    """Another process of this multi-process run stopped or failed. This process should
    then leave without JAX's shutdown barrier, which would wait for the lost process until
    its heartbeat times out (`exit_now`)."""


def exit_now(status: int, message: str = "") -> None:
    """Write `message` to stderr and end this process with `status` at once: no exit
    handlers, so no `jax.distributed.shutdown` barrier waiting for a lost process (the
    files written are complete: they are written atomically)."""
    sys.stdout.flush()
    sys.stderr.write(message)
    sys.stderr.flush()
    os._exit(status)


@contextlib.contextmanager
def naming_lost_processes():
    """A collective that fails because another process of the run stopped becomes a
    `ProcessLost` naming this process and saying how to resume (the coordination service
    names the lost process, `Task I heartbeat timeout`, after `heartbeat_timeout_s`)."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as e:
        # (gloo's failures arrive as ValueError "UNKNOWN: Gloo AllGather failed: ...
        # Connection closed by peer"; the coordination service's as UNAVAILABLE)
        if not is_multiprocess() or not any(m in str(e) for m in _LOST_PEER_MESSAGES):
            raise
        first = str(e).strip().splitlines()[0][:300]
        raise ProcessLost(
            f"process {jax.process_index()} of {jax.process_count()}: another process of "
            f"this run stopped or failed ({first}); rerun the same command to resume from "
            "the files written"
        ) from None


def is_multiprocess() -> bool:
    """More than one JAX process takes part."""
    return jax.process_count() > 1


def is_main() -> bool:
    """This is process 0 (the one that reports)."""
    return jax.process_index() == 0


def to_host(tree):
    """Every array leaf as a numpy array on every process, gathered from all processes'
    devices when they are spread over several (`process_allgather`)."""
    if is_multiprocess():
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def agree(tree):
    """Process 0's value of `tree` (numpy arrays / scalars) on every process."""
    if is_multiprocess():
        return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))
    return tree


def spans_processes(tree) -> bool:
    """Some array leaf of `tree` lives partly on other processes' devices."""
    return any(
        isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


def same_on_every_process(value) -> bool:
    """`value` (a numpy scalar or array) is equal on every process (a collective: every
    process must call it)."""
    if not is_multiprocess():
        return True
    values = multihost_utils.process_allgather(np.asarray(value), tiled=False)
    return bool(np.all(values == values[:1]))


def on_other_processes(devices: Sequence[jax.Device]) -> bool:
    """Some of `devices` belong to another process."""
    return any(d.process_index != jax.process_index() for d in devices)


def leading_axis_sharding(devices: Sequence[jax.Device], axis: str):
    """A 1-D mesh over `devices`, the leading axis of an array split over it."""
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


# -- Arrays of rows (trials, members) split over devices of several processes --------------


def spread_rows(tree, devices: Sequence[jax.Device], num: int, axis: str):
    """`tree`'s `num` rows (leading axis) padded (repeating the last) to a multiple of
    `len(devices)` and split over them along `axis`. From the host (the same values on every
    process): the devices may belong to several processes, and each puts its share."""
    pad = -num % len(devices)
    tree = jax.tree.map(
        lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]), jax.device_get(tree)
    )
    return jax.device_put(tree, leading_axis_sharding(devices, axis))


def _own_shards(a: jax.Array) -> list:
    """This process's shards of `a` (split along its leading axis), in row order."""
    return sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)


def local_rows(tree):
    """This process's rows of every leaf (its devices' shards, in order), as numpy."""
    return jax.tree.map(
        lambda a: np.concatenate([np.asarray(s.data) for s in _own_shards(a)]), tree
    )


def from_local_rows(host, devices: Sequence[jax.Device], like, axis: str):
    """`local_rows`' inverse: global arrays shaped and split like `like`."""
    sharding = leading_axis_sharding(devices, axis)
    return jax.tree.map(
        lambda h, a: jax.make_array_from_process_local_data(sharding, h, a.shape), host, like
    )


def local_row_indices(tree) -> np.ndarray:
    """The row indices of this process's devices' shards, in the order `local_rows` returns
    them."""
    shards = _own_shards(jax.tree.leaves(tree)[0])
    return np.concatenate([np.arange(s.index[0].start or 0, s.index[0].stop) for s in shards])


def gather_rows(own: dict[str, np.ndarray], devices, total: int, axis: str) -> dict:
    """Every process's `own` rows of `total` (float64, carried bit for bit as pairs of
    uint32) put together in row order on every process."""
    like = {k: np.empty((total, 2), np.uint32) for k in own}
    local = {k: np.asarray(v, np.float64).view(np.uint32).reshape(-1, 2) for k, v in own.items()}
    gathered = to_host(from_local_rows(local, devices, like, axis))
    return {k: np.ascontiguousarray(v).view(np.float64).reshape(-1) for k, v in gathered.items()}


def first_rows_on_host(tree, num: int):
    """The first `num` rows of every array leaf (dropping `spread_rows`' padding), as numpy
    arrays gathered from every process: slicing the spread arrays on the devices would be a
    cross-device program, which hangs XLA:CPU (jaxlib 0.10.2) at the study's sizes."""
    return jax.tree.map(lambda a: a[:num], to_host(tree))


def shard_batch(batch, devices=None):
    """`batch` (a pytree of arrays with a leading sample axis) split along that axis over
    `devices` (default every device of every process): data parallelism. A jitted loss or
    gradient of it (`flow.run(..., batches=...)`, `flow.gradient_flow`) then runs on every
    device on its share, and XLA reduces the results across devices and processes; the
    trajectory equals the one-device one to round-off. Every process passes the same
    `batch`. The sample count must be a multiple of the number of devices."""
    devices = list(jax.devices() if devices is None else devices)
    sharding = leading_axis_sharding(devices, "batch")

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % len(devices):
            raise ValueError(
                f"a batch array of shape {x.shape} cannot be split over {len(devices)} "
                "devices: its leading (sample) axis must be a multiple of their number"
            )
        return jax.device_put(x, sharding)

    return jax.tree.map(put, batch)


def free_port() -> int:
    """A TCP port free on this machine now (for a local coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, argv: Sequence[str], *, port: int | None = None) -> int:
    """Run `stiffnode <argv>` as `num_processes` local processes of one JAX program (one CPU
    device each unless `argv` says otherwise); returns 0, or the first failure's exit status
    (128 + the signal for a killed process; the other processes are then stopped, and a
    rerun of the same command resumes from the files written)."""
    num_processes = positive_int("num_processes", num_processes)
    port = free_port() if port is None else port
    common = [sys.executable, "-m", "stiffnode", *argv, "--coordinator", f"127.0.0.1:{port}",
              "--num-processes", str(num_processes)]  # fmt: skip
    if "--cpu-devices" not in argv:
        common += ["--cpu-devices", "1"]
    processes = [
        subprocess.Popen([*common, "--process-id", str(i)], env=os.environ.copy())
        for i in range(num_processes)
    ]
    try:
        while True:  # a failed process stops the others (they would wait for it)
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):  # a signal -s as a shell says it: 128 + s
                return (failed[0] if failed[0] > 0 else 128 - failed[0]) if failed else 0
            time.sleep(0.05)
    finally:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
