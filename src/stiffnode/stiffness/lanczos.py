"""Extreme eigenvalues of a symmetric operator from its matrix-vector products (Lanczos)."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._validation import positive_int


def _extend(matvec, V, k):
    """Lanczos step `k` on the rows of `V`: `alpha = v_k^T A v_k`, and `A v_k` orthogonalised
    (twice, fully) against rows `0..k`, normalised into row `k + 1` with its norm `beta`."""
    w = matvec(V[k])
    alpha = jnp.vdot(V[k], w)
    mask = (jnp.arange(V.shape[0]) <= k).astype(V.dtype)
    w = w - V.T @ (mask * (V @ w))
    w = w - V.T @ (mask * (V @ w))
    beta = jnp.linalg.norm(w)
    return V.at[k + 1].set(w / jnp.where(beta > 0, beta, 1.0)), alpha, beta


def lanczos_extremes(
    matvec: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    v0: Float[Array, " n"],
    num_iters: int = 30,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`(lambda_min, lambda_max)` of a symmetric `A` by `num_iters` Lanczos steps from `v0`:
    the extreme eigenvalues of the tridiagonal `T = V^T A V` on the Krylov basis `V`.

    Full reorthogonalisation keeps `V` orthonormal (no spurious copies). The Ritz values lie
    inside the spectrum and converge to its ends from within, fastest for well separated
    extremes; `num_iters >= n` gives them exactly (up to rounding). Costs `num_iters`
    products with `A`.
    """
    n = v0.shape[0]
    m = min(positive_int("num_iters", num_iters), n)
    dtype = v0.dtype
    V = jnp.zeros((m + 1, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))

    def step(carry, k):
        V, alive = carry
        V, alpha, beta = _extend(matvec, V, k)
        next_alive = alive & (beta > 1e-10 * jnp.abs(alpha) + jnp.finfo(dtype).tiny)
        return (V, next_alive), (alpha, beta, alive)

    _, (alphas, betas, alive) = jax.lax.scan(step, (V, jnp.array(True)), jnp.arange(m))
    # After an invariant subspace is found (beta ~ 0) the remaining rows carry no
    # information: they become copies of alpha_0, a Ritz value inside the spectrum already
    # bracketed by the others, decoupled from the rest.
    alphas = jnp.where(alive, alphas, alphas[0])
    betas = jnp.where(alive[1:], betas[:-1], 0.0)
    T = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    ritz = jnp.linalg.eigvalsh(T)
    return ritz[0], ritz[-1]


class KrylovBasis(NamedTuple):
    """`k` Lanczos steps on a symmetric `A` from `b`: the orthonormal basis `V` (rows
    `0..k-1` in use), the tridiagonal `T = V A V^T` as its diagonal `alphas` and
    off-diagonal `betas` (`betas[i]` couples `i` and `i + 1`; entries past `k` are
    identity padding) and `||b||`. On this space `A + s I` is solved for every shift `s`
    with no further product (the Krylov space is shift invariant)."""

    V: Float[Array, "m n"]
    alphas: Float[Array, " m"]
    betas: Float[Array, " m"]
    norm_b: Float[Array, ""]
    num_iters: Int[Array, ""]

    def quadratic_form(self, y: Float[Array, " m"]) -> Float[Array, ""]:
        """`y^T T y` (for `y` zero past `num_iters`)."""
        return jnp.vdot(y, self.alphas * y) + 2.0 * jnp.vdot(y[:-1], self.betas[:-1] * y[1:])


def _padded(alphas, betas, k):
    """`T`'s leading `k x k` block, the identity after it."""
    index = jnp.arange(alphas.shape[0])
    return jnp.where(index < k, alphas, 1.0), jnp.where(index + 1 < k, betas, 0.0)


def shifted_solve(basis: KrylovBasis, shift: Float[Array, ""]) -> Float[Array, " m"]:
    """Coefficients `y` of `x = V^T y`, the Galerkin solution of `(A + shift I) x = b` on
    the basis (conjugate gradients' iterate for that shift), by a tridiagonal solve."""
    m = basis.alphas.shape[0]
    active = jnp.arange(m) < basis.num_iters
    diagonal = basis.alphas + jnp.where(active, shift, 0.0)
    lower = jnp.concatenate([jnp.zeros(1, diagonal.dtype), basis.betas[:-1]])
    upper = jnp.concatenate([basis.betas[:-1], jnp.zeros(1, diagonal.dtype)])
    rhs = jnp.zeros((m, 1), diagonal.dtype).at[0, 0].set(basis.norm_b)
    y = jax.lax.linalg.tridiagonal_solve(lower, diagonal, upper, rhs)[:, 0]
    return jnp.where(active, y, 0.0)


def lanczos_basis(
    matvec: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    b: Float[Array, " n"],
    *,
    shift: Float[Array, ""],
    rtol: float | Float[Array, ""],
    max_iters: int,
) -> KrylovBasis:
    """Lanczos on `A` from `b`, fully reorthogonalised, until the solution of
    `(A + shift I) x = b` on the basis has residual `||b - (A + shift I) x|| <= rtol ||b||`
    (conjugate gradients' test: the residual is `beta_{k+1} |y_k|`), `max_iters` products,
    or an invariant subspace."""
    n = b.shape[0]
    m = min(positive_int("max_iters", max_iters), n)
    dtype = b.dtype
    norm_b = jnp.linalg.norm(b)
    V = jnp.zeros((m + 1, n), dtype).at[0].set(b / jnp.where(norm_b > 0, norm_b, 1.0))
    zeros = jnp.zeros(m, dtype)
    tol = rtol * norm_b

    def cond(carry):
        k, _, _, _, residual = carry
        return (k < m) & (residual > tol)

    def body(carry):
        k, V, alphas, betas, _ = carry
        V, alpha, beta = _extend(matvec, V, k)
        alphas, betas = alphas.at[k].set(alpha), betas.at[k].set(beta)
        basis = KrylovBasis(V, *_padded(alphas, betas, k + 1), norm_b, k + 1)
        y = shifted_solve(basis, shift)
        residual = beta * jnp.abs(y[k])
        breakdown = beta <= 1e-12 * (jnp.abs(alpha) + norm_b) + jnp.finfo(dtype).tiny
        return k + 1, V, alphas, betas, jnp.where(breakdown, 0.0, residual)

    start = (jnp.array(0, jnp.int32), V, zeros, zeros, norm_b)
    k, V, alphas, betas, _ = jax.lax.while_loop(cond, body, start)
    return KrylovBasis(V[:m], *_padded(alphas, betas, k), norm_b, k)
