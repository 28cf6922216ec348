"""Dense LU with partial pivoting, unrolled for small systems.

XLA:CPU runs `jax.scipy.linalg.lu_factor`/`lu_solve` as LAPACK calls, one matrix after
another under `vmap`: for the 3 to 20 states of a typical stiff chemistry problem, the call
overhead is most of the cost, and a vmapped ensemble pays it for every member on every
Newton iteration. Up to `UNROLLED_MAX_N` states the factorisation and the triangular solves
are written out row operation by row operation on whole arrays (no dynamic slicing), which
XLA fuses and, under `vmap`, vectorises across the members. Up to `LOOPED_MAX_N` the same
row operations run in `fori_loop`s (written out at 20 states, POLLU's forward Rodas5P solve
took 1.9x LAPACK's time; looped, BDF's forward solve of POLLU takes 0.6x LAPACK's, as no
custom call keeps the solver's loop from compiling into one function), except under `vmap`,
where LAPACK's batched calls are as fast (a 256-member POLLU ensemble: 290-310 ms against
246-316 ms; the loops vmapped: 339-370 ms). Larger systems use LAPACK.

Both paths return the same `LUFactors` (LAPACK's convention: `A[perm] = L U`, `L` unit
lower triangular, `pivots[k]` the row swapped with row `k` at step `k`), are
differentiable, and give inf/NaN for a singular matrix, as LAPACK's do.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import custom_batching
from jaxtyping import Array, Bool, Float, Int

from .unrolled import rows_sum

UNROLLED_MAX_N = 16
"""Systems up to this size are factorised and solved unrolled."""

LOOPED_MAX_N = 32
"""Systems up to this size (above `UNROLLED_MAX_N`) by the same row operations in
`fori_loop`s; larger ones by LAPACK."""


class LUFactors(eqx.Module):
    """`A[perm] = L U` packed in `lu` (unit `L` below the diagonal, `U` on and above it)."""

    lu: Float[Array, "n n"]
    pivots: Int[Array, " n"]
    perm: Int[Array, " n"]

    @classmethod
    def empty(cls, n: int, dtype) -> "LUFactors":
        """Placeholder factors (zeros, identity permutation) of an `n x n` matrix."""
        rows = jnp.arange(n, dtype=jnp.int32)
        return cls(jnp.zeros((n, n), dtype), rows, rows)


def _factor_unrolled(a: Array) -> LUFactors:
    n = a.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    perm = rows
    pivots = []
    for k in range(n):
        p = jnp.argmax(jnp.where(rows >= k, jnp.abs(a[:, k]), -1.0)).astype(jnp.int32)
        pivots.append(p)
        at_p, at_k = (rows == p)[:, None], (rows == k)[:, None]
        row_p = a[p]
        a = jnp.where(at_k, row_p[None], jnp.where(at_p, a[k][None], a))
        perm_p = perm[p]
        perm = jnp.where(rows == k, perm_p, jnp.where(rows == p, perm[k], perm))
        below = rows > k
        multipliers = jnp.where(below, a[:, k] / a[k, k], 0)
        a = a - multipliers[:, None] * jnp.where(below, a[k], 0)[None, :]
        a = jnp.where((rows == k)[None, :] & below[:, None], multipliers[:, None], a)
    return LUFactors(a, jnp.asarray(pivots, dtype=jnp.int32).reshape(n), perm)


def _factor_looped(a: Array) -> tuple[Array, Array, Array]:
    """`_factor_unrolled`'s row operations, one elimination step per `fori_loop` iteration."""
    n = a.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)

    def eliminate(k, carry):
        a, perm, pivots = carry
        p = jnp.argmax(jnp.where(rows >= k, jnp.abs(a[:, k]), -1.0)).astype(jnp.int32)
        at_p, at_k = (rows == p)[:, None], (rows == k)[:, None]
        row_p, row_k = a[p], a[k]
        a = jnp.where(at_k, row_p[None], jnp.where(at_p, row_k[None], a))
        perm_p, perm_k = perm[p], perm[k]
        perm = jnp.where(rows == k, perm_p, jnp.where(rows == p, perm_k, perm))
        pivots = jnp.where(rows == k, p, pivots)
        below = rows > k
        multipliers = jnp.where(below, a[:, k] / a[k, k], 0)
        a = a - multipliers[:, None] * jnp.where(below, a[k], 0)[None, :]
        a = jnp.where((rows == k)[None, :] & below[:, None], multipliers[:, None], a)
        return a, perm, pivots

    a, perm, pivots = jax.lax.fori_loop(0, n, eliminate, (a, rows, rows))
    return a, pivots, perm


def lu_factor(a: Float[Array, "n n"]) -> LUFactors:
    """`A[perm] = L U`, by partial pivoting (unrolled up to `UNROLLED_MAX_N`, looped up to
    `LOOPED_MAX_N`)."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"lu_factor needs a square matrix, got shape {a.shape}")
    if a.shape[0] <= UNROLLED_MAX_N:
        return _factor_unrolled(a)
    if a.shape[0] <= LOOPED_MAX_N:
        return LUFactors(*_FACTOR_LOOPED(a))
    return LUFactors(*_factor_lapack(a))


def _factor_lapack(a):
    lu, pivots, perm = jax.lax.linalg.lu(a)
    return lu, pivots.astype(jnp.int32), perm.astype(jnp.int32)


def _looped_unless_batched(looped: Callable, lapack: Callable) -> Callable:
    """`looped(*args)`; under `vmap`, `lapack` vmapped (LAPACK's batched calls; see the
    module's docstring for why)."""

    @custom_batching.custom_vmap
    def call(*args):
        return looped(*args)

    @call.def_vmap
    def rule(axis_size, in_batched, *args):
        if len(args) > 1 and not any(in_batched[:-1]):
            # One matrix, many right-hand sides (e.g. forward-mode tangents): one call.
            return lapack(*args[:-1], args[-1].T).T, True
        args = [
            x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
            for x, batched in zip(args, in_batched, strict=True)
        ]
        out = jax.vmap(lapack)(*args)
        return out, jax.tree.map(lambda _: True, out)

    # (`custom_vmap` has no derivative of its own: differentiated, it is `looped`.)
    differentiable = jax.custom_jvp(call)
    differentiable.defjvp(lambda primals, tangents: jax.jvp(looped, primals, tangents))
    return differentiable


def lu_solve(factors: LUFactors, b: Float[Array, " n"]) -> Float[Array, " n"]:
    """`x = A^{-1} b` from `A[perm] = L U`: `L z = b[perm]`, then `U x = z`."""
    lu = factors.lu
    n = lu.shape[0]
    if b.shape != (n,):
        raise ValueError(f"lu_solve needs a right-hand side of shape ({n},), got {b.shape}")
    if n > LOOPED_MAX_N:
        return _solve_lapack(lu, factors.perm, b)
    if n > UNROLLED_MAX_N:
        return _SOLVE_LOOPED(lu, factors.perm, b)
    return _solve_looped(lu, factors.perm, b, unroll=True)


def _solve_lapack(lu, perm, b):
    z = jsl.solve_triangular(lu, b[perm], lower=True, unit_diagonal=True)
    return jsl.solve_triangular(lu, z, lower=False)


def _solve_looped(lu, perm, b, unroll: bool = False):
    """The solve by row operations: in `fori_loop`s, or written out (`unroll`)."""
    n = lu.shape[0]
    rows = jnp.arange(n)

    def forward(k, x):
        return x - jnp.where(rows > k, lu[:, k], 0) * x[k]

    def backward(j, x):
        k = n - 1 - j
        xk = x[k] / lu[k, k]
        return jnp.where(rows == k, xk, x - jnp.where(rows < k, lu[:, k], 0) * xk)

    x = b[perm]
    if unroll:
        for k in range(n - 1):
            x = forward(k, x)
        for j in range(n):
            x = backward(j, x)
        return x
    x = jax.lax.fori_loop(0, n - 1, forward, x)
    return jax.lax.fori_loop(0, n, backward, x)


def lu_solve_transposed(factors: LUFactors, b: Float[Array, " n"]) -> Float[Array, " n"]:
    """`x = A^{-T} b` from `A[perm] = L U`: `A^T = U^T L^T P`, so `U^T w = b`, `L^T z = w`,
    `x[perm] = z`."""
    lu = factors.lu
    n = lu.shape[0]
    if b.shape != (n,):
        raise ValueError(
            f"lu_solve_transposed needs a right-hand side of shape ({n},), got {b.shape}"
        )
    if n == 0:
        return b
    if n > LOOPED_MAX_N:
        return _solve_transposed_lapack(lu, factors.perm, b)
    if n > UNROLLED_MAX_N:
        return _SOLVE_TRANSPOSED_LOOPED(lu, factors.perm, b)
    return _solve_transposed_looped(lu, factors.perm, b, unroll=True)


def _solve_transposed_lapack(lu, perm, b):
    w = jsl.solve_triangular(lu, b, lower=False, trans=1)
    z = jsl.solve_triangular(lu, w, lower=True, unit_diagonal=True, trans=1)
    return jnp.zeros_like(z).at[perm].set(z)


def _solve_transposed_looped(lu, perm, b, unroll: bool = False):
    """The transposed solve by row operations: in `fori_loop`s, or written out (`unroll`)."""
    n = lu.shape[0]
    rows = jnp.arange(n)

    def upper(k, z):  # U^T is lower triangular: row k of U^T is column k of U
        zk = z[k] / lu[k, k]
        return jnp.where(rows == k, zk, z - jnp.where(rows > k, lu[k, :], 0) * zk)

    def lower(j, z):  # L^T is unit upper triangular
        k = n - 1 - j
        return z - jnp.where(rows < k, lu[k, :], 0) * z[k]

    if unroll:
        z = b
        for k in range(n):
            z = upper(k, z)
        for j in range(n - 1):
            z = lower(j, z)
    else:
        z = jax.lax.fori_loop(0, n, upper, b)
        z = jax.lax.fori_loop(0, n - 1, lower, z)
    # x[perm] = z without a scatter (which would keep a solver's loop from compiling as one
    # function on XLA:CPU): x_i = sum_k [perm_k = i] z_k, written out.
    hits = perm[:, None] == rows[None, :].astype(perm.dtype)
    return rows_sum(jnp.where(hits, z[:, None], 0))


# The dispatchers, built once (each a custom_vmap under a custom_jvp).
_FACTOR_LOOPED = _looped_unless_batched(_factor_looped, _factor_lapack)
_SOLVE_LOOPED = _looped_unless_batched(_solve_looped, _solve_lapack)
_SOLVE_TRANSPOSED_LOOPED = _looped_unless_batched(
    _solve_transposed_looped, _solve_transposed_lapack
)


def factored_solve(
    a: Float[Array, "n n"], factors: LUFactors, b: Float[Array, " n"]
) -> Float[Array, " n"]:
    """`x = A^{-1} b` by `factors = lu_factor(A)` (not differentiated), differentiated as the
    linear solve it is: reverse mode solves `A^T lambda = x_bar` with the same factors and
    gives `A_bar = -lambda x^T`, `b_bar = lambda` (`jax.lax.custom_linear_solve`), instead of
    going back through the elimination."""
    factors = jax.lax.stop_gradient(factors)
    return jax.lax.custom_linear_solve(
        lambda v: a @ v,
        b,
        lambda _, r: lu_solve(factors, r),
        transpose_solve=lambda _, r: lu_solve_transposed(factors, r),
    )


def determinant_is_positive(factors: LUFactors) -> Bool[Array, ""]:
    """`det(A) > 0`: the sign of `prod(diag(U))` times the parity of the row swaps."""
    diag = jnp.diag(factors.lu)
    swaps = jnp.sum(factors.pivots != jnp.arange(diag.shape[0], dtype=factors.pivots.dtype))
    return jnp.all(diag != 0) & ((jnp.sum(diag < 0) + swaps) % 2 == 0)
