"""Extreme eigenvalues of a symmetric operator from its matrix-vector products (Lanczos)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import positive_int


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
    rows = jnp.arange(m + 1)

    def step(carry, k):
        V, alive = carry
        w = matvec(V[k])
        alpha = jnp.vdot(V[k], w)
        mask = (rows <= k).astype(dtype)
        w = w - V.T @ (mask * (V @ w))  # full reorthogonalisation, twice
        w = w - V.T @ (mask * (V @ w))
        beta = jnp.linalg.norm(w)
        V = V.at[k + 1].set(w / jnp.where(beta > 0, beta, 1.0))
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
