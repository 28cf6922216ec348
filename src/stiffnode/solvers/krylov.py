"""Restarted GMRES that stops as soon as it has converged, counting its matrix-vector products.

lineax's GMRES always completes a whole restart cycle (`restart` products) before it checks
the residual, so a Newton correction that converges in 3 iterations still costs 32 products.
For matrix-free Newton-Krylov, where each product is a Jacobian-vector product (for a
gradient flow, a Hessian-vector product costing about three gradients), that dominates.
This GMRES (Saad & Schultz 1986; Givens rotations as in Saad, "Iterative Methods for Sparse
Linear Systems", alg. 6.9) tracks the residual norm `|g_{k+1}|` of the least-squares problem
after every product and stops there.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class KrylovSolution(NamedTuple):
    x: Float[Array, " n"]
    num_matvecs: Int[Array, ""]
    converged: Bool[Array, ""]


def _givens(a, b):
    """(c, s) with `[c s; -s c] [a; b] = [r; 0]`."""
    r = jnp.hypot(a, b)
    safe = jnp.where(r == 0, 1.0, r)
    return jnp.where(r == 0, 1.0, a / safe), jnp.where(r == 0, 0.0, b / safe)


def _cycle(matvec, x, r, tol, restart):
    """One GMRES(restart) cycle from `x` with residual `r = b - A x`; stops early at
    `||b - A x|| <= tol`. Returns `(x, products, residual_norm)`."""
    n = r.shape[0]
    dtype = r.dtype
    beta = jnp.linalg.norm(r)
    V = jnp.zeros((restart + 1, n), dtype).at[0].set(r / jnp.where(beta == 0, 1.0, beta))
    R = jnp.zeros((restart + 1, restart), dtype)  # the rotated Hessenberg matrix
    g = jnp.zeros(restart + 1, dtype).at[0].set(beta)
    cs = jnp.zeros(restart, dtype)
    sn = jnp.zeros(restart, dtype)
    rows = jnp.arange(restart + 1)

    def cond(carry):
        k, _, _, g, _, _ = carry
        return (k < restart) & (jnp.abs(g[k]) > tol)

    def body(carry):
        k, V, R, g, cs, sn = carry
        w = matvec(V[k])
        mask = (rows <= k).astype(dtype)
        # Classical Gram-Schmidt, twice (as accurate as modified GS, two matrix products).
        h = mask * (V @ w)
        w = w - V.T @ h
        h2 = mask * (V @ w)
        w = w - V.T @ h2
        h = h + h2
        h_next = jnp.linalg.norm(w)
        V = V.at[k + 1].set(w / jnp.where(h_next == 0, 1.0, h_next))
        h = h.at[k + 1].set(h_next)

        def rotate(j, h):  # the earlier rotations, applied to the new column
            c, s = cs[j], sn[j]
            hj, hj1 = h[j], h[j + 1]
            new = h.at[j].set(c * hj + s * hj1).at[j + 1].set(-s * hj + c * hj1)
            return jnp.where(j < k, new, h)

        h = jax.lax.fori_loop(0, restart, rotate, h)
        c, s = _givens(h[k], h[k + 1])
        h = h.at[k].set(c * h[k] + s * h[k + 1]).at[k + 1].set(0.0)
        g = g.at[k + 1].set(-s * g[k]).at[k].set(c * g[k])
        return k + 1, V, R.at[:, k].set(h), g, cs.at[k].set(c), sn.at[k].set(s)

    k, V, R, g, _, _ = jax.lax.while_loop(cond, body, (jnp.array(0), V, R, g, cs, sn))
    # Back substitution on the leading k x k block (the rest is padded with the identity).
    active = jnp.arange(restart) < k
    square = R[:restart]
    square = jnp.where(active[:, None] & active[None, :], square, jnp.eye(restart, dtype=dtype))
    y = jax.scipy.linalg.solve_triangular(square, jnp.where(active, g[:restart], 0.0), lower=False)
    return x + V[:restart].T @ y, k, jnp.abs(g[k])


def gmres(
    matvec: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    b: Float[Array, " n"],
    *,
    rtol: float,
    atol: float = 0.0,
    restart: int = 30,
    max_restarts: int = 10,
) -> KrylovSolution:
    """Solve `A x = b` by restarted GMRES from `x = 0`, stopping at
    `||b - A x||_2 <= max(atol, rtol ||b||_2)`.

    `num_matvecs` counts every product with `A` (the Krylov products plus one residual per
    restart). `converged` is False when `max_restarts` cycles were not enough; `x` is then
    the best iterate found, as in any truncated Krylov method.
    """
    tol = jnp.maximum(atol, rtol * jnp.linalg.norm(b))

    def cond(carry):
        i, _, _, _, res = carry
        return (i < max_restarts) & (res > tol)

    def body(carry):
        i, x, r, count, _ = carry
        x, k, _ = _cycle(matvec, x, r, tol, restart)
        r = b - matvec(x)
        return i + 1, x, r, count + k + 1, jnp.linalg.norm(r)

    # The first cycle starts from x = 0 (residual b, no product); when its least-squares
    # residual says it converged, no product is spent confirming it.
    x, k, res = _cycle(matvec, jnp.zeros_like(b), b, tol, restart)
    done = res <= tol
    r = jax.lax.cond(done, lambda: jnp.zeros_like(b), lambda: b - matvec(x))
    res = jnp.where(done, res, jnp.linalg.norm(r))
    start = (jnp.array(1), x, r, k + (~done).astype(k.dtype), res)
    _, x, _, count, res = jax.lax.while_loop(cond, body, start)
    return KrylovSolution(x, count.astype(jnp.int32), res <= tol)
