"""Small-array operations written out element by element, for the per-step work of solvers.

On XLA:CPU a reduction, a `dot` or a scatter with a traced index over a few rows runs as a
library call or a thread-pool task of its own, and under `vmap` once per member: for the
handful of rows a solver touches per step that dominates the step. Written out over the
(static) rows, the same work is elementwise, which XLA fuses into a few loops and
vectorises across members. Measured on 1,024 vmapped Robertson BDF solves
(`benchmarks/step_floor.py` has the kernel counts): 0.53 s with `dot`, reductions and
scatters, 0.22 s written out; a gather (`x[i]`) is as fast as anything written out, and is
kept."""

import jax.numpy as jnp
from jaxtyping import Array, Int, Shaped


def rows_sum(x: Shaped[Array, "r ..."]) -> Shaped[Array, "..."]:
    """`sum_i x[i]`, as `r - 1` additions."""
    out = x[0]
    for i in range(1, x.shape[0]):
        out = out + x[i]
    return out


def set_row(x: Shaped[Array, "r ..."], i: Int[Array, ""], value) -> Shaped[Array, "r ..."]:
    """`x.at[i].set(value)` for a traced `i`, without a scatter."""
    rows = jnp.arange(x.shape[0], dtype=jnp.result_type(i))
    return jnp.where((rows == i).reshape((-1,) + (1,) * (x.ndim - 1)), value, x)


def small_matmul(a: Shaped[Array, "m k"], b: Shaped[Array, "k n"]) -> Shaped[Array, "m n"]:
    """`a @ b` as `k` outer products."""
    out = a[:, 0, None] * b[None, 0, :]
    for k in range(1, a.shape[1]):
        out = out + a[:, k, None] * b[None, k, :]
    return out
