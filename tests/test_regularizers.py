"""Regularisers against closed forms, statistics, a step-by-step recomputation, and finite
differences."""

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import stiffnode as sn
from helpers import central_difference
from stiffnode import regularizers as reg

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


class Linear(eqx.Module):
    A: jax.Array

    def __call__(self, t, y, args=None):
        return self.A @ y


def _matrix(d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(d, d)) / np.sqrt(d) - 0.5 * np.eye(d)


def test_rnode_penalties_of_a_linear_field_match_closed_forms():
    A, T = _matrix(), 1.3
    y0 = np.array([1.0, -0.5, 2.0])
    key = jax.random.key(4)
    out = reg.regularized_solve(
        Linear(jnp.asarray(A)),
        jnp.asarray(y0),
        0.0,
        T,
        kinetic=True,
        frobenius="exact",
        rtol=1e-10,
        atol=1e-12,
    )
    # Van Loan: int_0^T e^{A's} Q e^{As} ds = F22^T F12, expm(T [[-A', Q], [0, A]]).
    d = A.shape[0]
    C = np.block([[-A.T, A.T @ A], [np.zeros((d, d)), A]])
    F = scipy.linalg.expm(T * C)
    gram = F[d:, d:].T @ F[:d, d:]
    np.testing.assert_allclose(out.penalties["kinetic"], y0 @ gram @ y0, rtol=1e-8)
    np.testing.assert_allclose(out.penalties["frobenius"], T * np.sum(A**2), rtol=1e-10)
    np.testing.assert_allclose(out.ys[-1], scipy.linalg.expm(T * A) @ y0, rtol=1e-8)
    # Hutchinson with its probe fixed over the solve: exactly T ||A eps||^2.
    hutch = reg.regularized_solve(
        Linear(jnp.asarray(A)),
        jnp.asarray(y0),
        0.0,
        T,
        frobenius="hutchinson",
        key=key,
        rtol=1e-10,
        atol=1e-12,
    )
    eps = np.asarray(sn.cnf.probe(key, (d,), "gaussian", jnp.float64))
    np.testing.assert_allclose(hutch.penalties["frobenius"], T * np.sum((A @ eps) ** 2), rtol=1e-10)


def test_hutchinson_frobenius_agrees_with_exact_in_expectation():
    field = sn.MLPVectorField(3, 16, 2, key=jax.random.key(0), dtype=jnp.float64)
    y0, options = jnp.array([1.0, -1.0, 0.5]), dict(rtol=1e-8, atol=1e-8)
    exact = reg.regularized_solve(field, y0, 0.0, 1.0, frobenius="exact", **options)

    def estimate(key):
        out = reg.regularized_solve(
            field, y0, 0.0, 1.0, frobenius="hutchinson", key=key, probe="rademacher", **options
        )
        return out.penalties["frobenius"]

    n = 1000
    samples = jax.vmap(estimate)(jax.random.split(jax.random.key(1), n))
    mean, sem = float(jnp.mean(samples)), float(jnp.std(samples) / np.sqrt(n))
    assert sem > 0
    assert abs(mean - float(exact.penalties["frobenius"])) < 4.5 * sem


def test_solver_heuristics_on_a_stiff_linear_decay():
    lam, T = 50.0, 1.0
    field = lambda t, y, args: -lam * y  # noqa: E731
    y0, tol = jnp.ones(3), dict(rtol=1e-6, atol=1e-9)
    out = reg.regularized_solve(
        field,
        y0,
        0.0,
        T,
        error=True,
        stiffness=True,
        proxy="spectral",
        key=jax.random.key(0),
        **tol,
    )
    plain = sn.solve(field, y0, 0.0, T, saveat=diffrax.SaveAt(steps=True), **tol)
    # The heuristics leave the solve alone: the same steps as the plain solve.
    accepted = int(plain.stats["num_accepted_steps"])
    assert int(out.stats["num_accepted_steps"]) == accepted
    assert int(out.stats["num_steps"]) == int(plain.stats["num_steps"])
    # Shampine's estimate is exact for y' = -lam y: lam on every accepted step.
    np.testing.assert_allclose(out.penalties["stiffness"], lam * accepted, rtol=1e-6)
    # Power-iteration proxy: lam at every step end, so sum_j lam |h_j| = lam T.
    np.testing.assert_allclose(out.penalties["proxy"], lam * T, rtol=1e-10)
    # Error: recompute E_j |h_j| step by step with diffrax's Tsit5 on the accepted grid.
    ts, ys = np.asarray(plain.ts), np.asarray(plain.ys)
    keep = np.isfinite(ts)
    ts, ys = ts[keep], ys[keep]
    ts, ys = np.concatenate([[0.0], ts]), np.concatenate([y0[None], ys])
    solver, term = diffrax.Tsit5(), diffrax.ODETerm(field)

    @jax.jit
    def step(t0, t1, y):
        state = solver.init(term, t0, t1, y, None)
        return solver.step(term, t0, t1, y, None, state, False)[:2]

    total = 0.0
    for j in range(len(ts) - 1):
        t0, t1 = ts[j], ts[j + 1]
        y1, err = step(t0, t1, jnp.asarray(ys[j]))
        scale = 1e-9 + 1e-6 * np.maximum(np.abs(ys[j]), np.abs(y1))
        E = np.sqrt(np.mean((np.asarray(err) / scale) ** 2))
        assert E <= 1.0 + 1e-9  # accepted
        total += E * (t1 - t0)
    np.testing.assert_allclose(out.penalties["error"], total, rtol=1e-6)


PENALTY_OPTIONS = dict(
    kinetic=True, frobenius="hutchinson", error=True, stiffness=True, proxy="frobenius"
)


def test_penalty_gradients_match_finite_differences():
    field = sn.MLPVectorField(2, 4, 1, key=jax.random.key(2), dtype=jnp.float64)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    y0 = jnp.array([0.7, -0.3])
    # Each term contributes about equally to the directional derivative below.
    weights = {"kinetic": 1.0, "frobenius": 10.0, "error": 1e3, "stiffness": 0.1, "proxy": 50.0}

    def loss(theta):
        f = eqx.combine(unravel(theta), static)
        out = reg.regularized_solve(
            f,
            y0,
            0.0,
            1.0,
            key=jax.random.key(0),
            solver="tsit5",
            dt0=0.125,
            stepsize_controller="constant",
            **PENALTY_OPTIONS,
        )
        return reg.penalty(out.penalties, weights)

    grad = jax.grad(loss)(flat)
    direction = jax.random.normal(jax.random.key(5), flat.shape, flat.dtype)
    h = 1e-4  # the error estimates lose digits to cancellation below this
    fd = central_difference(loss, flat, h, direction)
    np.testing.assert_allclose(grad @ direction, fd, rtol=1e-4)
    assert float(jnp.linalg.norm(grad)) > 0


def test_random_end_time_and_regularized_call():
    model = sn.NeuralODE(
        sn.MLPVectorField(2, 4, 1, key=jax.random.key(0), dtype=jnp.float64), T=1.0
    )
    ends = jax.vmap(lambda k: reg.random_end_time(k, 1.0, 0.5, jnp.float64))(
        jax.random.split(jax.random.key(0), 2000)
    )
    assert float(ends.min()) >= 0.5 and float(ends.max()) <= 1.5
    np.testing.assert_allclose(float(ends.mean()), 1.0, atol=0.03)  # U[0.5, 1.5]
    x, t1 = jnp.array([0.2, 0.4]), ends[0]
    out, penalties, _ = reg.regularized_call(
        model, x, end_time=t1, kinetic=True, rtol=1e-10, atol=1e-10
    )
    want = sn.solve(model.vector_field, x, 0.0, float(t1), rtol=1e-10, atol=1e-10).ys[-1]
    np.testing.assert_allclose(out, want, rtol=1e-8)
    assert set(penalties) == {"kinetic"}


def test_bad_input_is_named():
    field = lambda t, y, args: -y  # noqa: E731
    with pytest.raises(ValueError, match="frobenius must be"):
        reg.regularized_solve(field, jnp.ones(2), 0.0, 1.0, frobenius="trace")
    with pytest.raises(ValueError, match="PRNG key"):
        reg.regularized_solve(field, jnp.ones(2), 0.0, 1.0, frobenius="hutchinson")
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        reg.regularized_solve(field, jnp.ones(2), 0.0, 1.0, error=True, solver="kvaerno5")
    with pytest.raises(ValueError, match="last two stages"):
        reg.regularized_solve(field, jnp.ones(2), 0.0, 1.0, stiffness=True, solver="heun", dt0=0.1)
    with pytest.raises(ValueError, match="half_width"):
        reg.random_end_time(jax.random.key(0), 1.0, 1.0)
    with pytest.raises(ValueError, match="no penalty named"):
        reg.penalty({"kinetic": 1.0}, {"error": 1.0})
