"""Continuous normalizing flows against closed forms and statistics; toy densities."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import stiffnode as sn
from stiffnode import cnf, toy_densities

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


TIGHT = dict(rtol=1e-10, atol=1e-10)
FIXED = dict(solver="heun", dt0=0.25, stepsize_controller="constant", max_steps=4)


class Affine(eqx.Module):
    """`f(z) = A z + b`."""

    A: jax.Array
    b: jax.Array

    def __call__(self, t, z, args=None):
        return self.A @ z + self.b


def _affine_problem(d=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    b = rng.normal(size=d)
    return A, b


def _affine_log_prob(A, b, T, x):
    """Change of variables: `x = M z0 + c` with `[[M, c], [0, 1]] = expm(T [[A, b], [0, 0]])`,
    so `log p(x) = log N(M^{-1}(x - c)) - log det M`, `log det M = T tr A`."""
    d = A.shape[0]
    G = np.zeros((d + 1, d + 1))
    G[:d, :d], G[:d, d] = A, b
    E = scipy.linalg.expm(T * G)
    M, c = E[:d, :d], E[:d, d]
    z0 = np.linalg.solve(M, (np.asarray(x) - c).T).T
    log_base = -0.5 * (np.sum(z0**2, axis=-1) + d * np.log(2 * np.pi))
    return log_base - np.linalg.slogdet(M)[1]


def test_affine_flow_log_density_is_the_change_of_variables_with_expm():
    A, b = _affine_problem()
    flow = cnf.CNF(Affine(jnp.asarray(A), jnp.asarray(b)), T=1.5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))
    np.testing.assert_allclose(
        flow.log_prob(x, **TIGHT), _affine_log_prob(A, b, 1.5, x), rtol=1e-8, atol=1e-8
    )
    # Samples come with their log-densities, forwards in time: the same closed form.
    samples, log_p = flow.sample(jax.random.key(0), 5, dim=3, dtype=jnp.float64, **TIGHT)
    np.testing.assert_allclose(log_p, _affine_log_prob(A, b, 1.5, samples), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", cnf.PROBES)
def test_hutchinson_probe_is_fixed_along_one_solve(kind):
    # For f = A z + b, the probe eps held over the solve integrates eps^T A eps exactly:
    # log p = log N(z0) - T eps^T A eps, with z0 the exact inverse flow.
    A, b = _affine_problem(seed=2)
    field = Affine(jnp.asarray(A), jnp.asarray(b))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)))
    key = jax.random.key(7)
    got = cnf.CNF(field, trace="hutchinson", probe=kind).log_prob(x, key=key, **TIGHT)
    eps = np.asarray(cnf.probe(key, x.shape, kind, jnp.float64))
    exact = _affine_log_prob(A, b, 1.0, x)
    want = exact + np.trace(A) - np.einsum("ni,ij,nj->n", eps, A, eps)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", cnf.PROBES)
def test_hutchinson_agrees_with_exact_trace_in_expectation(kind):
    field = sn.MLPVectorField(2, 16, 2, key=jax.random.key(0), dtype=jnp.float64)
    x = jnp.array([0.3, -0.7])
    exact = cnf.CNF(field).log_prob(x, rtol=1e-7, atol=1e-7)
    n = 1000  # the same point n times: one solve, n independent probes
    estimates = cnf.CNF(field, trace="hutchinson", probe=kind).log_prob(
        jnp.broadcast_to(x, (n, 2)), key=jax.random.key(1), rtol=1e-7, atol=1e-7
    )
    mean, sem = float(jnp.mean(estimates)), float(jnp.std(estimates) / np.sqrt(n))
    assert sem > 0  # the estimator is noisy for a nonlinear field...
    assert abs(mean - float(exact)) < 4.5 * sem + 1e-5  # ...and unbiased (solve error 1e-7)


def test_exact_trace_and_hutchinson_trace_primitives():
    A = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)))
    z = jnp.ones(4)
    fz, tr = cnf.exact_trace(lambda y: jnp.tanh(A @ y), z)
    J = jax.jacfwd(lambda y: jnp.tanh(A @ y))(z)
    np.testing.assert_allclose(tr, jnp.trace(J), rtol=1e-12)
    np.testing.assert_allclose(fz, jnp.tanh(A @ z), rtol=1e-12)
    eps = jnp.arange(4.0)
    _, est = cnf.hutchinson_trace(lambda y: jnp.tanh(A @ y), z, eps)
    np.testing.assert_allclose(est, eps @ J @ eps, rtol=1e-12)


def test_maximum_likelihood_training_beats_the_base_density():
    field = sn.MLPVectorField(2, 32, 2, key=jax.random.key(0), dtype=jnp.float32)
    flow = cnf.CNF(field, trace="hutchinson", probe="rademacher")
    test = toy_densities.eight_gaussians(jax.random.key(9), 500).astype(jnp.float32)
    base_nll = -float(jnp.mean(cnf.standard_normal_log_prob(test)))
    trained, losses = cnf.fit(
        flow,
        toy_densities.eight_gaussians,
        steps=30,
        batch_size=128,
        key=jax.random.key(1),
        optimizer=optax.adam(1e-2),
        **FIXED,
    )
    assert losses.shape == (30,) and np.all(np.isfinite(losses))
    exact = cnf.CNF(trained.vector_field)
    test_nll = float(cnf.nll(exact, test, **FIXED))
    assert test_nll < base_nll - 1.0, (test_nll, base_nll)


def test_toy_densities_have_their_shapes():
    key = jax.random.key(0)
    for name in toy_densities.TOY_DENSITIES:
        x = toy_densities.sample(name, key, 2000)
        assert x.shape == (2000, 2) and bool(jnp.all(jnp.isfinite(x)))
    g = toy_densities.eight_gaussians(key, 4000)
    np.testing.assert_allclose(jnp.mean(jnp.linalg.norm(g, axis=1)), 2 * np.sqrt(2), rtol=0.05)
    c = np.asarray(toy_densities.checkerboard(key, 4000))
    assert np.all(np.abs(c) <= 4)
    # The occupied 2x2 squares are the black ones: (i + j) even for i, j = floor(x / 2).
    assert np.all((np.floor(c[:, 0] / 2) + np.floor(c[:, 1] / 2)) % 2 == 0)
    m = np.asarray(toy_densities.two_moons(key, 4000, noise=0.0))
    # Noise-free moons lie on the two unit circles centred at (-1, -1/2) and (1, 1/2) (x2).
    r_upper = np.hypot(m[:, 0] / 2 + 0.5, m[:, 1] / 2 + 0.25)
    r_lower = np.hypot(m[:, 0] / 2 - 0.5, m[:, 1] / 2 - 0.25)
    assert np.all(np.minimum(np.abs(r_upper - 1), np.abs(r_lower - 1)) < 1e-5)


def test_bad_input_is_named():
    field = sn.MLPVectorField(2, 4, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="unknown trace"):
        cnf.CNF(field, trace="det")
    with pytest.raises(ValueError, match="unknown probe"):
        cnf.CNF(field, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="PRNG key"):
        cnf.CNF(field, trace="hutchinson").log_prob(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        cnf.CNF(field).log_prob(jnp.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="unknown toy density"):
        toy_densities.sample("swiss_roll", jax.random.key(0), 3)
