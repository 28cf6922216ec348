"""`solvers.dense_lu` (unrolled up to `UNROLLED_MAX_N`, looped up to `LOOPED_MAX_N`, LAPACK
above) against numpy's LAPACK solve and determinant, with gradients against the closed form
`d(A^{-1} b)/dA = -A^{-T} w x^T` for the cotangent `w`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiffnode.solvers.dense_lu import (
    LOOPED_MAX_N,
    UNROLLED_MAX_N,
    determinant_is_positive,
    factored_solve,
    lu_factor,
    lu_solve,
    lu_solve_transposed,
)
from stiffnode.solvers.unrolled import rows_sum, set_row, small_matmul

SIZES = [1, 2, 3, 8, UNROLLED_MAX_N, UNROLLED_MAX_N + 1, LOOPED_MAX_N, LOOPED_MAX_N + 1]


pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def _system(n, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) + np.diag(rng.uniform(-2, 2, n))
    return a.astype(dtype), rng.normal(size=n).astype(dtype)


@pytest.mark.parametrize("n", SIZES)
def test_solve_and_determinant_sign_against_numpy(n):
    for seed in range(6):
        a, b = _system(n, seed)
        factors = lu_factor(jnp.asarray(a))
        x = np.asarray(lu_solve(factors, jnp.asarray(b)))
        expected = np.linalg.solve(a, b)
        # Backward-stable LU: error <= cond(A) * n * eps, with a factor 10 to spare.
        bound = 10 * n * np.linalg.cond(a) * np.finfo(np.float64).eps
        assert np.max(np.abs(x - expected)) <= bound * np.max(np.abs(expected)), seed
        assert bool(determinant_is_positive(factors)) == (np.linalg.det(a) > 0), seed
        lu = np.asarray(factors.lu)
        lower, upper = np.tril(lu, -1) + np.eye(n), np.triu(lu)
        np.testing.assert_allclose(lower @ upper, a[np.asarray(factors.perm)], atol=1e-12)


def test_pivoting_on_a_zero_leading_entry():
    a = jnp.array([[0.0, 2.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    x = lu_solve(lu_factor(a), jnp.array([3.0, 1.0, 4.0]))
    np.testing.assert_allclose(x, [1.0, 1.0, 1.0], rtol=1e-14)


def test_float32_stays_float32():
    a, b = _system(5, 0, np.float32)
    x = lu_solve(lu_factor(jnp.asarray(a)), jnp.asarray(b))
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [3, UNROLLED_MAX_N + 1])
def test_gradient_and_vmap(n):
    a, b = _system(n, 1)
    w = np.random.default_rng(2).normal(size=n)
    grad = jax.grad(lambda a: jnp.dot(w, lu_solve(lu_factor(a), jnp.asarray(b))))(jnp.asarray(a))
    x = np.linalg.solve(a, b)
    np.testing.assert_allclose(grad, -np.outer(np.linalg.solve(a.T, w), x), rtol=1e-9, atol=1e-12)
    stacked = jnp.stack([jnp.asarray(a), 2 * jnp.asarray(a)])
    xs = jax.vmap(lambda m: lu_solve(lu_factor(m), jnp.asarray(b)))(stacked)
    np.testing.assert_allclose(xs, [x, x / 2], rtol=1e-10)


@pytest.mark.parametrize("n", [1, 3, UNROLLED_MAX_N, UNROLLED_MAX_N + 1, LOOPED_MAX_N + 1])
def test_transposed_solve_and_the_solve_differentiated_as_a_solve(n):
    """`A^{-T} b` against numpy; `factored_solve`'s reverse-mode gradients against the
    closed forms `-A^{-T} w x^T` (matrix) and `A^{-T} w` (right-hand side), its forward mode
    against `A^{-1} (db - dA x)`, all from factors the derivative does not go through."""
    a, b = _system(n, 4)
    w = np.random.default_rng(5).normal(size=n)
    bound = 10 * n * np.linalg.cond(a) * np.finfo(np.float64).eps  # as above
    lam = np.linalg.solve(a.T, w)
    got = np.asarray(lu_solve_transposed(lu_factor(jnp.asarray(a)), jnp.asarray(w)))
    assert np.max(np.abs(got - lam)) <= bound * np.max(np.abs(lam))
    x = np.linalg.solve(a, b)

    def solve(a, b):
        return factored_solve(a, lu_factor(a), b)

    grad_a, grad_b = jax.grad(lambda a, b: jnp.dot(w, solve(a, b)), argnums=(0, 1))(
        jnp.asarray(a), jnp.asarray(b)
    )
    np.testing.assert_allclose(grad_a, -np.outer(lam, x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_b, lam, rtol=1e-9, atol=1e-12)
    da, db = np.outer(w, w), w
    tangent = jax.jvp(solve, (jnp.asarray(a), jnp.asarray(b)), (jnp.asarray(da), jnp.asarray(db)))
    np.testing.assert_allclose(tangent[1], np.linalg.solve(a, db - da @ x), rtol=1e-9,
                               atol=1e-12)  # fmt: skip


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="square"):
        lu_factor(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="right-hand side"):
        lu_solve(lu_factor(jnp.eye(3)), jnp.ones(2))


def test_unrolled_helpers_against_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 4))
    np.testing.assert_allclose(small_matmul(jnp.asarray(a), jnp.asarray(b)), a @ b, rtol=1e-13)
    np.testing.assert_allclose(rows_sum(jnp.asarray(b)), b.sum(axis=0), rtol=1e-13)
    expected = b.copy()
    expected[2] = 7.0
    np.testing.assert_array_equal(set_row(jnp.asarray(b), jnp.array(2), 7.0), expected)
