"""`stiffnode.stiffness.lanczos.lanczos_extremes` against numpy's `eigvalsh`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import symmetric_with_eigenvalues
from stiffnode.stiffness.lanczos import lanczos_extremes

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


@functools.partial(jax.jit, static_argnames="num_iters")
def _lanczos_dense(A, v0, num_iters):
    return lanczos_extremes(lambda v: A @ v, v0, num_iters)


def test_lanczos_extremes_against_eigvalsh():
    n = 30
    eigs = np.concatenate([[-4.0], np.linspace(-1.0, 1.0, n - 2), [6.0]])
    A = jnp.asarray(symmetric_with_eigenvalues(eigs, seed=8))
    ref = np.linalg.eigvalsh(A)
    v0 = jnp.asarray(np.random.default_rng(9).normal(size=n))
    # n products or more (here 2n, capped at n): exact.
    np.testing.assert_allclose(_lanczos_dense(A, v0, 2 * n), [ref[0], ref[-1]], rtol=1e-10)
    # Fewer products: Ritz values inside the spectrum, converging from within.
    errors = []
    for m in (4, 12):
        lo, hi = _lanczos_dense(A, v0, m)
        assert ref[0] - 1e-12 <= lo <= hi <= ref[-1] + 1e-12
        errors.append(max(lo - ref[0], ref[-1] - hi))
    assert errors[0] > errors[1] and errors[1] < 1e-4, errors
    # A start vector in a 2-dimensional invariant subspace: Lanczos stops after 2 steps
    # and reports that subspace's eigenvalues, not spurious ones.
    D = jnp.diag(jnp.arange(1.0, 9.0))
    lo, hi = _lanczos_dense(D, jnp.zeros(8).at[2].set(1).at[5].set(2), 8)
    np.testing.assert_allclose([lo, hi], [3.0, 6.0], rtol=1e-12)
    with pytest.raises(ValueError, match="num_iters"):
        lanczos_extremes(lambda v: v, v0, num_iters=0)
