"""Stiffness proxies of square matrices, each acting on the last two axes of a stack.

All are pure jax functions: they jit, vmap and differentiate (the eigenvalue ones through
JAX's eigenvalue derivative `d lambda = (u^H dJ v) / (u^H v)`, which is CPU-only, as
`jnp.linalg.eig` is; it is undefined where eigenvalues coincide).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._validation import positive_int


def check_square_stack(J, name: str = "J") -> Array:
    """`J` as an array of shape `(..., n, n)`; clear errors for other shapes or NaN/inf."""
    J = jnp.asarray(J)
    if J.ndim < 2 or J.shape[-1] != J.shape[-2] or J.shape[-1] == 0:
        raise ValueError(
            f"{name} must be a stack of square matrices (..., n, n), got shape {J.shape}"
        )
    if not jnp.issubdtype(J.dtype, jnp.floating):
        raise TypeError(f"{name} must be real floating point, got dtype {J.dtype}")
    if not isinstance(J, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(J))):
        raise ValueError(f"{name} contains NaN or inf")
    return J


def _eigvals(J):
    return jnp.linalg.eigvals(check_square_stack(J))


def stiffness_ratio(J: Float[Array, "... n n"]) -> Float[Array, "..."]:
    """`r(J) = max_i |Re lambda_i| / min_i |Re lambda_i|`, the seed's `Re(lambda_1)/Re(lambda_n)`.

    For `Re lambda_1 <= ... <= Re lambda_n < 0` (a stable, decaying system) this is exactly
    the classical stiffness ratio (`diag(-1, -100)` gives 100). Otherwise it is still the
    spread of the real parts' magnitudes, blind to their sign: a growing mode counts like a
    decaying one of the same rate. An eigenvalue with zero real part (a zero eigenvalue, or a
    purely imaginary pair) gives `inf` (`nan` if all real parts are zero). Differentiable on
    CPU wherever the extreme real parts are simple and nonzero.
    """
    re = jnp.abs(jnp.real(_eigvals(J)))
    return jnp.max(re, axis=-1) / jnp.min(re, axis=-1)


def modulus_ratio(J: Float[Array, "... n n"]) -> Float[Array, "..."]:
    """`|lambda|_max / |lambda|_min`, the seed's `|lambda_1| / |lambda_n|`.

    `inf` when `J` is singular (a zero eigenvalue), `nan` when `J` is nilpotent.
    """
    mod = jnp.abs(_eigvals(J))
    return jnp.max(mod, axis=-1) / jnp.min(mod, axis=-1)


def singular_ratio(J: Float[Array, "... n n"]) -> Float[Array, "..."]:
    """`sigma_1 / sigma_n`, the 2-norm condition number (`inf` when `J` is singular).

    It bounds the modulus ratio from above: `sigma_1 >= |lambda|_max`, `|lambda|_min >= sigma_n`.
    Singular means numerically: `sigma_n <= n eps sigma_1` (numpy's `matrix_rank` rule); an
    exactly singular matrix's computed `sigma_n` is rounding noise, 0 with one LAPACK build
    and 1e-17 with another.
    """
    J = check_square_stack(J)
    s = jnp.linalg.svd(J, compute_uv=False)
    n = J.shape[-1]
    singular = s[..., -1] <= n * jnp.finfo(s.dtype).eps * s[..., 0]
    return jnp.where(singular, jnp.inf, s[..., 0] / jnp.where(singular, 1.0, s[..., -1]))


def frobenius(J: Float[Array, "... n n"]) -> Float[Array, "..."]:
    """`||J||_F = sqrt(sum_ij J_ij^2)`, an upper bound on the spectral radius."""
    J = check_square_stack(J)
    return jnp.sqrt(jnp.sum(J * J, axis=(-2, -1)))


def _normalise(v):
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    return v * jax.lax.rsqrt(jnp.maximum(sq, jnp.finfo(v.dtype).tiny))


def orthonormalise_pair(Z: Float[Array, "... 2 n"]) -> Float[Array, "... 2 n"]:
    """Gram-Schmidt on the two rows of `Z` (a tiny floor keeps zero rows finite).

    The pair is stored as rows, contiguous in memory: XLA's CPU loops are several times
    faster over a long last axis than over one of size 2.
    """
    a = _normalise(Z[..., 0, :])
    b = Z[..., 1, :]
    b = _normalise(b - a * jnp.sum(a * b, axis=-1, keepdims=True))
    return jnp.stack([a, b], axis=-2)


def ritz_radius(Q: Float[Array, "... 2 n"], JQ: Float[Array, "... 2 n"]) -> Float[Array, "..."]:
    """`max |mu|` over the eigenvalues `mu` of `H = Q J Q^T` (2x2, closed form).

    `Q` holds two orthonormal rows `q_a` and `JQ` their images `J q_a` (as rows);
    `H_ab = q_a . J q_b`. With `Q` spanning the dominant invariant subspace of a real `J`,
    `mu` are its dominant eigenvalues, real or a complex-conjugate pair: the spectral radius.
    For `H = [[a, b], [c, d]]`, `mu = tr/2 +- sqrt(tr^2/4 - det)`; a complex pair has
    `|mu| = sqrt(det)`, a real pair `max |mu| = |tr|/2 + sqrt(tr^2/4 - det)`.
    """
    q0, q1, z0, z1 = Q[..., 0, :], Q[..., 1, :], JQ[..., 0, :], JQ[..., 1, :]
    h00, h01 = jnp.sum(q0 * z0, -1), jnp.sum(q0 * z1, -1)
    h10, h11 = jnp.sum(q1 * z0, -1), jnp.sum(q1 * z1, -1)
    tr = h00 + h11
    det = h00 * h11 - h01 * h10
    disc = tr * tr / 4 - det
    tiny = jnp.finfo(tr.dtype).tiny
    real = jnp.abs(tr) / 2 + jnp.sqrt(jnp.maximum(disc, tiny))
    pair = jnp.sqrt(jnp.maximum(det, tiny))
    return jnp.where(disc >= 0, real, pair)


def start_vectors(n: int, dtype, key=None) -> Float[Array, "2 n"]:
    """Two orthonormal start vectors (rows) for power iteration (deterministic unless `key`)."""
    key = jax.random.key(0) if key is None else key
    return orthonormalise_pair(jax.random.normal(key, (2, n), dtype))


def spectral_radius_power(
    J: Float[Array, "... n n"], iters: int = 50, *, key=None
) -> Float[Array, "..."]:
    """`rho(J) = max |lambda_i|` by power iteration on two vectors, `Q <- orth(J Q)`.

    Complex-safe: the two vectors span the dominant invariant subspace, whether its
    eigenvalues are one real, a real `+-` pair or a complex-conjugate pair (one vector alone
    would never settle on the latter), and the estimate is the largest Ritz value modulus of
    `Q^T J Q` (`ritz_radius`). Converges like `|lambda_3 / lambda_1|^iters` when the
    dominant eigenvalue(s) stand apart in modulus from the rest; random matrices, whose
    eigenvalues crowd the spectral circle, need hundreds of iterations (Gelfand's formula
    does not). Differentiable (through every iteration). Starts from `start_vectors(n, key)`.
    """
    J = check_square_stack(J)
    iters = positive_int("iters", iters)
    n = J.shape[-1]
    Q = jnp.broadcast_to(start_vectors(n, J.dtype, key), (*J.shape[:-2], 2, n))
    Jt = jnp.swapaxes(J, -1, -2)
    # fori_loop with static bounds lowers to a scan: reverse-mode differentiable, and the
    # program does not grow with iters.
    Q = jax.lax.fori_loop(0, iters - 1, lambda _, Q: orthonormalise_pair(Q @ Jt), Q)
    return ritz_radius(Q, Q @ Jt)


def spectral_radius_gelfand(J: Float[Array, "... n n"], squarings: int = 10) -> Float[Array, "..."]:
    """`rho(J) ~ ||J^k||_F^(1/k)` with `k = 2^squarings` (Gelfand's formula), by squaring.

    Each squaring is normalised, `A <- A^2 / ||A^2||_F`, and the logs of the norms are
    accumulated, so nothing overflows: `log ||J^k|| = sum_m 2^(squarings - m) log ||A_m^2||`.
    The estimate is never below `rho`, and for diagonalisable `J = V diag(lambda) V^-1` it
    exceeds `rho` by at most a factor `(sqrt(n) cond(V))^(1/k)` (0.5% at k = 1024 for
    cond(V) ~ 50); Jordan blocks converge more slowly. A nilpotent or zero `J` gives (close
    to) 0: the norms are floored at the dtype's smallest normal number.
    """
    J = check_square_stack(J)
    if isinstance(squarings, bool) or not isinstance(squarings, int) or squarings < 0:
        raise ValueError(f"squarings must be a non-negative int, got {squarings!r}")
    tiny = jnp.finfo(J.dtype).tiny
    norm = jnp.sqrt(jnp.maximum(jnp.sum(J * J, axis=(-2, -1), keepdims=True), tiny))
    A = J / norm
    log_norm = jnp.log(norm[..., 0, 0])  # log ||J^(2^m)|| / 2^m after m squarings
    for m in range(1, squarings + 1):
        A = A @ A
        norm = jnp.sqrt(jnp.maximum(jnp.sum(A * A, axis=(-2, -1), keepdims=True), tiny))
        A = A / norm
        log_norm = log_norm + jnp.log(norm[..., 0, 0]) / 2**m
    return jnp.exp(log_norm)


PROXIES: dict[str, Callable[[Array], Array]] = {
    "stiffness_ratio": stiffness_ratio,
    "modulus_ratio": modulus_ratio,
    "singular_ratio": singular_ratio,
    "spectral_radius_power": spectral_radius_power,
    "spectral_radius_gelfand": spectral_radius_gelfand,
    "frobenius": frobenius,
}
"""The dense proxies by name, each `(..., n, n) -> (...)`."""


def get_proxy(name: str) -> Callable[[Array], Array]:
    """The proxy called `name` (a key of `PROXIES`), or a clear error naming the known ones."""
    try:
        return PROXIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown stiffness proxy {name!r}; known proxies: {', '.join(PROXIES)}"
        ) from None


_AGGREGATES = {"sum": jnp.sum, "mean": jnp.mean, "max": jnp.max}


def aggregate(values: Float[Array, "..."], how: str = "sum", axis=None) -> Float[Array, "..."]:
    """`sum`, `mean` or `max` of per-layer/per-sample proxy values over `axis` (all: None).

    The seed's total stiffness is the sum over layers and samples, `sum_{i,n} s_{n,i}`.
    """
    try:
        fn = _AGGREGATES[how]
    except (KeyError, TypeError):
        raise ValueError(f"unknown aggregation {how!r}; use one of {sorted(_AGGREGATES)}") from None
    return fn(values, axis=axis)
