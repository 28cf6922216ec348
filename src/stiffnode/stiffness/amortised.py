"""Structured and amortised proxies of ResNet layer Jacobians `J_n = diag(s_n) W_n`.

- `layer_frobenius`: `||diag(s) W||_F^2 = sum_i s_i^2 ||W_i||^2` (row norms), no product formed.
- `amortised_spectral_radius`: power iteration whose vectors persist from one training step
  to the next, one iteration per step, as spectral normalisation (Miyato et al. 2018) does
  for weight matrices. The estimate is the Ritz value `max |mu(Q^T J Q)|` at the stored
  (constant) vectors `Q`, so its gradient costs two Jacobian-vector products, not a
  differentiated iteration. With the weights changing slowly, `Q` tracks the dominant
  invariant subspace and the estimate tracks `rho(J_n)` (checked against the dense Gelfand
  value in the tests and the benchmark).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._validation import positive_int
from .jacobians import layer_matvec
from .proxies import orthonormalise_pair, ritz_radius


def layer_frobenius(
    slopes: Float[Array, "*batch width"], weights: Float[Array, "*batch width width"]
) -> Float[Array, "*batch"]:
    """`||diag(s) W||_F = sqrt(sum_i s_i^2 ||W_i||^2)`, from the row norms of `W`."""
    row_sq = jnp.sum(weights * weights, axis=-1)
    return jnp.sqrt(jnp.sum(slopes * slopes * row_sq, axis=-1))


class PowerVectors(NamedTuple):
    """The amortised power iteration's state: two orthonormal vectors per sample and layer."""

    vectors: Float[Array, "n_samples N 2 width"]


def amortised_power_init(
    n_samples: int, depth: int, width: int, *, key: PRNGKeyArray, dtype=None
) -> PowerVectors:
    """Random orthonormal pairs, one per training sample and layer."""
    for name, value in (("n_samples", n_samples), ("depth", depth), ("width", width)):
        positive_int(name, value)
    kwargs = {} if dtype is None else {"dtype": dtype}
    Z = jax.random.normal(key, (n_samples, depth, 2, width), **kwargs)
    return PowerVectors(orthonormalise_pair(Z))


def amortised_spectral_radius(
    slopes: Float[Array, "*batch width"],
    weights: Float[Array, "*batch width width"],
    vectors: Float[Array, "*batch 2 width"],
    iters: int = 1,
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch 2 width"]]:
    """`(rho_hat, Q_next)`: `rho_hat = max |mu(Q J Q^T)|` after `iters` steps `Q <- orth(J Q)`.

    The two vectors of each sample and layer are the rows of `vectors`.

    `J = diag(slopes) W`, applied matrix-free. The stored `vectors` and the iterations are
    constants to autodiff (`stop_gradient`); the gradient flows through the final `J Q` only.
    `Q_next` (to store for the next step) is `orth(J Q)` of the last iteration.
    """
    iters = positive_int("iters", iters)
    Q = jax.lax.stop_gradient(vectors)
    const_slopes, const_weights = jax.lax.stop_gradient((slopes, weights))
    for _ in range(iters - 1):
        Q = orthonormalise_pair(layer_matvec(const_slopes, const_weights, Q))
    JQ = layer_matvec(slopes, weights, Q)
    rho = ritz_radius(Q, JQ)
    return rho, jax.lax.stop_gradient(orthonormalise_pair(JQ))
