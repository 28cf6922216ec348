"""`stiffnode.solvers.krylov.gmres` against numpy's dense solve, with its matrix-vector
products counted at run time by a callback inside the product."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import CallCounter, symmetric_with_eigenvalues
from stiffnode.solvers.krylov import gmres

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


_MATVECS = CallCounter()


@functools.partial(jax.jit, static_argnames="restart")
def _gmres_dense(A, b, rtol, restart=30, max_restarts=10):
    def matvec(v):
        jax.debug.callback(_MATVECS.bump)  # counts the products actually made
        return A @ v

    return gmres(matvec, b, rtol=rtol, restart=restart, max_restarts=max_restarts)


def _check_gmres(A, b, rtol, **kwargs):
    _MATVECS.n = 0
    sol = _gmres_dense(jnp.asarray(A), jnp.asarray(b), rtol, **kwargs)
    jax.effects_barrier()
    assert int(sol.num_matvecs) == _MATVECS.n
    return sol


def test_gmres_against_numpy_solve():
    rng = np.random.default_rng(10)
    n = 20
    nonsymmetric = 6 * np.eye(n) + rng.normal(size=(n, n))
    eigs = np.concatenate([-np.arange(1.0, 8.0), np.arange(1.0, 14.0)])
    indefinite = symmetric_with_eigenvalues(eigs, seed=11)
    for A in (nonsymmetric, indefinite):
        b = rng.normal(size=n)
        sol = _check_gmres(A, b, rtol=1e-10)
        assert bool(sol.converged)
        assert np.linalg.norm(b - A @ np.asarray(sol.x)) <= 1.01e-10 * np.linalg.norm(b)
        np.testing.assert_allclose(sol.x, np.linalg.solve(A, b), rtol=1e-8)
        assert 0 < int(sol.num_matvecs) <= n


def test_gmres_stops_early_on_easy_systems():
    rng = np.random.default_rng(12)
    n = 20
    b = rng.normal(size=n)
    sol = _check_gmres(np.eye(n), b, rtol=1e-12)
    assert int(sol.num_matvecs) == 1 and bool(sol.converged)
    np.testing.assert_allclose(sol.x, b, rtol=1e-14)
    # Identity plus rank 2: the Krylov space has dimension 3, so at most 3 products.
    U, V = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    A = np.eye(n) + 0.1 * U @ V.T
    sol = _check_gmres(A, b, rtol=1e-12)
    assert int(sol.num_matvecs) <= 3 and bool(sol.converged)
    np.testing.assert_allclose(sol.x, np.linalg.solve(A, b), rtol=1e-10)
    sol = _check_gmres(A, np.zeros(n), rtol=1e-12)
    assert int(sol.num_matvecs) == 0 and bool(sol.converged) and np.all(sol.x == 0)


def test_gmres_restarts():
    rng = np.random.default_rng(13)
    n = 20
    A = 3 * np.eye(n) + rng.normal(size=(n, n)) / np.sqrt(n)
    b = rng.normal(size=n)
    sol = _check_gmres(A, b, rtol=1e-10, restart=3, max_restarts=50)
    assert bool(sol.converged) and int(sol.num_matvecs) > 3 * 2
    assert np.linalg.norm(b - A @ np.asarray(sol.x)) <= 1e-10 * np.linalg.norm(b)
    np.testing.assert_allclose(sol.x, np.linalg.solve(A, b), rtol=1e-8)
    # Too few restarts: not converged, but better than x = 0.
    sol = _check_gmres(A, b, rtol=1e-10, restart=3, max_restarts=2)
    assert not bool(sol.converged)
    assert np.linalg.norm(b - A @ np.asarray(sol.x)) < 0.5 * np.linalg.norm(b)


def test_gmres_vmap():
    rng = np.random.default_rng(14)
    n = 20
    As = np.stack([np.eye(n), 6 * np.eye(n) + rng.normal(size=(n, n))])
    bs = rng.normal(size=(2, n))
    sols = jax.jit(jax.vmap(lambda A, b: gmres(lambda v: A @ v, b, rtol=1e-10)))(As, bs)
    for i in range(2):
        alone = _check_gmres(As[i], bs[i], rtol=1e-10)
        np.testing.assert_allclose(sols.x[i], np.linalg.solve(As[i], bs[i]), rtol=1e-8)
        assert int(sols.num_matvecs[i]) == int(alone.num_matvecs)
    assert int(sols.num_matvecs[0]) == 1 < int(sols.num_matvecs[1])
    assert np.all(np.asarray(sols.converged))
