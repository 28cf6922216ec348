"""Many solves of one vector field at once: `solve` over a batch of initial states and/or
arguments, spread over the devices (of every process, under `stiffnode.distributed`), each
device stepping through its own members."""

from collections.abc import Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, PyTree

from ._validation import positive_int
from .distributed import leading_axis_sharding, on_other_processes, to_host
from .solve import Solution, VectorField, solve

_AXIS = "members"

CPU_CHUNK_SIZE = 1
"""The default chunk on CPU devices: the members one after another. Each member's solve
then compiles its step loop into one function (see `stiffnode._xla_flags`), while a
vmapped chunk's loop runs as a graph of kernels; a 1,024-member Robertson ensemble solves
1.5x faster and a POLLU one 1.8x faster one after another than in vmapped chunks of 16
(`benchmarks/stiff_solvers.py`, ensembles)."""

ACCELERATOR_CHUNK_SIZE = 16
"""The default chunk on GPU/TPU devices, where a step's kernels cost the same for one
member as for many: vmapped chunks share them."""

CPU_MULTI_DEVICE_MAX_CHUNK = 16
"""The largest vmapped chunk per device when the members are split over several CPU
devices: with jaxlib 0.10.2, 2 CPU devices each running a vmapped chunk of 32 POLLU BDF
members deadlock XLA:CPU (every thread idle, no return), while chunks of 16 return (and one
CPU device returns at any chunk size); neither `--xla_cpu_enable_concurrency_optimized_
scheduler=false`, a single-threaded Eigen pool nor synchronous dispatch avoids it."""


def _batch_size(y0, args, y0_batched, args_batched) -> int:
    sizes = set()
    for tree, batched in ((y0, y0_batched), (args, args_batched)):
        if batched:
            sizes |= {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)}
    if not sizes:
        raise ValueError("solve_ensemble needs a batch: batch_y0 and/or batch_args")
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "every batched leaf of y0/args needs the same leading (member) axis, got "
            f"leading sizes {sorted(s for s in sizes if s is not None)}"
            + (" and scalars" if None in sizes else "")
        )
    return sizes.pop()


def _pad(tree, batched: bool, size: int):
    """Repeat the last member up to `size` members."""
    if not batched:
        return tree

    def pad(x):
        extra = size - x.shape[0]
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x

    return jax.tree.map(pad, tree)


def solve_ensemble(
    vector_field: VectorField,
    y0: PyTree[Array],
    t0,
    t1,
    *,
    args: PyTree[Any] = None,
    batch_y0: bool = True,
    batch_args: bool = True,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    throw: bool = True,
    **solve_kwargs,
) -> Solution:
    """Solve `dy/dt = f(t, y, args_i)`, `y(t0) = y0_i` for every member `i` of a batch.

    Each member is `stiffnode.solve(vector_field, y0_i, t0, t1, args=args_i,
    **solve_kwargs)`, with its own steps, order and Jacobian reuse. The members are split
    over `devices` (by default `jax.devices()`, e.g. several GPUs, or CPU devices from
    `jax.config.update("jax_num_cpu_devices", n)`) with `shard_map`, so each device runs
    its own loop instead of stepping in lockstep with the slowest member of another device;
    on a device, `chunk_size` members are vmapped together (a vmapped adaptive solve runs
    as many steps as its slowest member, so smaller chunks waste less on spread-out
    members, larger ones vectorise more) and the chunks run one after another; a chunk of
    1 solves the members one after another, unbatched.

    Over several processes (`stiffnode.distributed.initialize`; the default `devices` are
    then every process's): every process calls `solve_ensemble` with the same members,
    each puts and solves its devices' share, and every process gets the whole `Solution`
    back (numpy arrays, gathered from all processes). Not inside `jax.jit` then.

    Args:
        y0, args: pytrees whose leaves have a leading member axis when `batch_y0` /
            `batch_args` (else shared by every member).
        chunk_size: members vmapped together on one device (at most
            `CPU_MULTI_DEVICE_MAX_CHUNK` over several CPU devices: a larger chunk deadlocks
            XLA:CPU there). Default: `CPU_CHUNK_SIZE` (1) on CPU devices, where one member's
            compiled loop is faster than a vmapped chunk's; `ACCELERATOR_CHUNK_SIZE` (16)
            on GPU/TPU.
        devices: the devices to split the members over (default `jax.devices()`: every
            device of JAX's default backend, of every process).
        throw: raise if any member's solve failed, naming the first such member; with
            `throw=False` check `Solution.result` (one per member).
        solve_kwargs: as for `stiffnode.solve` (solver, rtol, atol, saveat, ...).

    Returns:
        A `Solution` whose every array has a leading member axis.
    """
    if "throw" in solve_kwargs or "progress" in solve_kwargs:
        raise ValueError("solve_ensemble takes throw=; progress bars are per member")
    num = _batch_size(y0, args, batch_y0, batch_args)
    if num == 0:
        raise ValueError("solve_ensemble: the batch has no members (a leading axis of size 0)")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    on_cpu = all(d.platform == "cpu" for d in devices)
    if chunk_size is None:
        chunk_size = CPU_CHUNK_SIZE if on_cpu else ACCELERATOR_CHUNK_SIZE
    chunk_size = positive_int("chunk_size", chunk_size)
    per_device = -(-num // len(devices))
    if len(devices) > 1 and on_cpu:
        chunk_size = min(chunk_size, CPU_MULTI_DEVICE_MAX_CHUNK)
    chunk = min(chunk_size, per_device)
    per_device = -(-per_device // chunk) * chunk  # whole chunks on every device
    total = per_device * len(devices)
    y0_all = _pad(y0, batch_y0, total)
    args_all = _pad(args, batch_args, total)
    layout = (batch_y0, batch_args, chunk, tuple(devices))
    other_processes = on_other_processes(devices)
    if other_processes:  # each process puts its devices' shares (the same values everywhere)
        y0_all, args_all = _put_members(y0_all, args_all, batch_y0, batch_args, devices)
    sol = _solve_members(vector_field, y0_all, args_all, t0, t1, layout, solve_kwargs)
    if other_processes:  # slicing global arrays would be one more cross-process program
        arrays, static = eqx.partition(sol, eqx.is_array)
        sol = eqx.combine(jax.tree.map(lambda x: x[:num], to_host(arrays)), static)
    else:
        sol = jax.tree.map(lambda x: x[:num] if eqx.is_array(x) else x, sol)
    if throw:
        sol = _raise_on_failed_members(sol)
    return sol


def _put_members(y0, args, batch_y0: bool, batch_args: bool, devices):
    """The padded members as global arrays over `devices`, split along the member axis (or
    replicated where not batched), each process putting its own devices' shares."""
    split = leading_axis_sharding(devices, _AXIS)
    replicated = jax.sharding.NamedSharding(split.mesh, PartitionSpec())

    def put(tree, batched):
        sharding = split if batched else replicated
        return jax.tree.map(
            lambda x: jax.device_put(np.asarray(x), sharding) if eqx.is_array(x) else x, tree
        )

    return put(y0, batch_y0), put(args, batch_args)


@eqx.filter_jit
def _solve_members(vector_field, y0, args, t0, t1, layout, solve_kwargs) -> Solution:
    """The members (already padded to whole chunks on every device), one compiled program
    per vector field, shapes and settings."""
    batch_y0, batch_args, chunk, devices = layout

    def one(y0_i, args_i):
        return solve(vector_field, y0_i, t0, t1, args=args_i, throw=False, **solve_kwargs)

    if chunk == 1:  # one member after another, unbatched

        def chunks(tree, is_batched):
            return tree

        def unchunk(tree):
            return tree

        solve_chunk = one
    else:

        def chunks(tree, is_batched):
            if not is_batched:
                return tree
            return jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), tree)

        def unchunk(tree):
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)

        solve_chunk = jax.vmap(one, in_axes=(0 if batch_y0 else None, 0 if batch_args else None))

    def on_device(y0_d, args_d):
        y0_c, args_c = chunks(y0_d, batch_y0), chunks(args_d, batch_args)
        if batch_y0 and batch_args:
            out = jax.lax.map(lambda ya: solve_chunk(*ya), (y0_c, args_c))
        elif batch_y0:
            out = jax.lax.map(lambda y: solve_chunk(y, args_c), y0_c)
        else:
            out = jax.lax.map(lambda a: solve_chunk(y0_c, a), args_c)
        return unchunk(out)

    dynamic, static = eqx.partition((y0, args), eqx.is_array)
    _, static_out = eqx.partition(
        jax.eval_shape(lambda d: on_device(*eqx.combine(d, static)), dynamic), eqx.is_array
    )

    def body(dynamic):
        return eqx.filter(on_device(*eqx.combine(dynamic, static)), eqx.is_array)

    member = PartitionSpec(_AXIS)
    in_specs = (
        jax.tree.map(lambda _: member if batch_y0 else PartitionSpec(), dynamic[0]),
        jax.tree.map(lambda _: member if batch_args else PartitionSpec(), dynamic[1]),
    )
    out_specs = jax.tree.map(lambda _: member, jax.eval_shape(body, dynamic))
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    arrays = jax.shard_map(
        body, mesh=mesh, in_specs=(in_specs,), out_specs=out_specs, check_vma=False
    )(dynamic)
    return eqx.combine(arrays, static_out)


def _raise_on_failed_members(sol: Solution) -> Solution:
    failed = sol.result != diffrax.RESULTS.successful
    if isinstance(failed, jax.core.Tracer):
        return eqx.error_if(sol, jnp.any(failed), "stiffnode.solve_ensemble: a member failed")
    bad = np.flatnonzero(np.asarray(failed))
    if bad.size:
        first = int(bad[0])
        message = diffrax.RESULTS._index_to_message[int(np.asarray(sol.result._value)[first])]
        raise RuntimeError(
            f"stiffnode.solve_ensemble: {bad.size} of {failed.size} members failed, the first "
            f"is member {first}: {message} (throw=False returns them, see Solution.result)"
        )
    return sol
