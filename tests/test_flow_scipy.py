"""stiffnode.flow.scipy_baseline: scipy's solvers on the gradient flow against the closed form
of a quadratic loss, pytree parameters, work counts, the wall-time stop and argument errors."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from stiffnode.flow.scipy_baseline import ScipyFlowResult, scipy_gradient_flow

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def _quadratic(n=5, eigenvalues=None, seed=0):
    """`L = 0.5 (theta - theta*)^T H (theta - theta*)` with SPD `H` (eigenvalues 0.1..100)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.geomspace(0.1, 100.0, n) if eigenvalues is None else np.asarray(eigenvalues)
    h = q @ np.diag(lam) @ q.T
    h = 0.5 * (h + h.T)
    target = rng.standard_normal(n)
    theta0 = rng.standard_normal(n)
    hj, tj = jnp.asarray(h), jnp.asarray(target)

    def loss(p):
        return 0.5 * (p - tj) @ hj @ (p - tj)

    def exact(t):
        return target + expm(-h * t) @ (theta0 - target)

    return loss, theta0, exact


@pytest.mark.parametrize("method", ["LSODA", "BDF", "Radau", "vode", "zvode"])
def test_quadratic_against_closed_form(method):
    """`theta* + expm(-H t)(theta0 - theta*)` at t1 = 2 for both Jacobians, and the saved
    states and losses at `t_eval` as well."""
    loss, theta0, exact = _quadratic()
    t_eval = np.array([0.0, 0.5, 1.0, 2.0])
    results = {}
    for jacobian in ("fd", "autodiff"):
        r = scipy_gradient_flow(
            loss, jnp.asarray(theta0), 2.0, method=method, jacobian=jacobian, t_eval=t_eval
        )
        results[jacobian] = r
        assert isinstance(r, ScipyFlowResult)
        assert r.finished and r.t == 2.0 and r.message == "reached t1"
        np.testing.assert_allclose(np.asarray(r.params), exact(2.0), rtol=1e-4)
        np.testing.assert_allclose(r.ts, t_eval)
        assert r.thetas.shape == (4, 5)
        for t, theta in zip(r.ts, r.thetas, strict=True):
            np.testing.assert_allclose(theta, exact(t), rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(r.thetas[-1], np.asarray(r.params))
        np.testing.assert_allclose(r.losses, [float(loss(jnp.asarray(x))) for x in r.thetas])
        assert np.all(np.diff(r.losses) <= 0)
        assert r.num_grad_evals > 0 and r.num_steps > 0 and r.num_jac_evals > 0
        assert r.num_lu >= 1 and r.wall_time > 0
        stats = json.loads(json.dumps(r.stats()))
        assert stats["method"] == method and stats["jacobian"] == jacobian
        assert stats["num_grad_evals"] == r.num_grad_evals
    # A finite-difference Jacobian costs gradient evaluations that autodiff does not spend
    # (n per Jacobian, but the Newton iterations differ too: LSODA saves fewer than n per).
    assert results["autodiff"].num_grad_evals < results["fd"].num_grad_evals


def test_bdf_autodiff_spends_fewer_gradients():
    """BDF on the same trajectory: exactly the finite-difference columns are saved."""
    loss, theta0, _ = _quadratic()
    fd = scipy_gradient_flow(loss, jnp.asarray(theta0), 2.0, method="BDF", jacobian="fd")
    ad = scipy_gradient_flow(loss, jnp.asarray(theta0), 2.0, method="BDF", jacobian="autodiff")
    assert ad.num_grad_evals < fd.num_grad_evals
    assert fd.num_steps == ad.num_steps and fd.num_jac_evals == ad.num_jac_evals
    assert fd.num_grad_evals - ad.num_grad_evals >= 5 * fd.num_jac_evals


def test_rk45_runs_without_jacobian():
    loss, theta0, exact = _quadratic(eigenvalues=[0.1, 0.5, 1.0, 2.0, 5.0])
    r = scipy_gradient_flow(loss, jnp.asarray(theta0), 2.0, method="RK45")
    assert r.finished and r.num_jac_evals == 0 and r.num_lu == -1
    np.testing.assert_allclose(np.asarray(r.params), exact(2.0), rtol=1e-4)


def _logistic():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((40, 3)))
    y = jnp.asarray((rng.standard_normal(40) + x[:, 0] - 0.5 * x[:, 2] > 0).astype(float))

    def loss(p, x, y):
        z = x @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.05 * jnp.sum(p["w"] ** 2)

    params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(1.0)}
    return loss, params, (x, y)


def test_pytree_params_lsoda_fd_and_bdf_autodiff_agree():
    loss, params, args = _logistic()
    t_eval = np.linspace(0.5, 5.0, 6)
    a = scipy_gradient_flow(loss, params, 5.0, method="LSODA", t_eval=t_eval, loss_args=args)
    b = scipy_gradient_flow(
        loss, params, 5.0, method="BDF", jacobian="autodiff", t_eval=t_eval, loss_args=args
    )
    for r in (a, b):
        assert r.finished
        assert set(r.params) == {"w", "b"} and r.params["w"].shape == (3,)
        assert r.params["b"].shape == () and r.params["w"].dtype == jnp.float64
        assert np.all(np.diff(r.losses) <= 0)
        assert r.losses[-1] < float(loss(params, *args))
        np.testing.assert_allclose(r.loss, r.losses[-1])
    np.testing.assert_allclose(a.ts, t_eval)
    np.testing.assert_allclose(a.thetas, b.thetas, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4)


def test_equinox_model_params():
    """A whole equinox model: its float arrays evolve, the rest (activations) stays fixed."""
    model = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((16, 2)))
    y = jnp.sin(x[:, :1])

    def loss(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    r = scipy_gradient_flow(loss, model, 1.0, method="LSODA", loss_args=(x, y))
    assert r.finished and isinstance(r.params, eqx.nn.MLP)
    assert r.num_params == sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    assert r.loss < float(loss(model, x, y))


@pytest.mark.parametrize("method", ["LSODA", "BDF", "vode", "zvode"])
def test_tiny_wall_time_stops_cleanly(method):
    loss, theta0, _ = _quadratic()
    r = scipy_gradient_flow(loss, jnp.asarray(theta0), 2.0, method=method, max_wall_time=1e-9)
    assert not r.finished and r.t < 2.0
    assert "max_wall_time" in r.message
    np.testing.assert_allclose(np.asarray(r.params), theta0)  # stopped before the first step


def test_wall_time_stop_returns_an_accepted_state():
    """RK45 on a stiff quadratic (eigenvalue 1e6) cannot reach t1 in 0.2 s; what comes back is
    a state the solver accepted, i.e. the closed form at the time reported."""
    loss, theta0, exact = _quadratic(n=2, eigenvalues=[1.0, 1e6])
    r = scipy_gradient_flow(loss, jnp.asarray(theta0), 10.0, method="RK45", max_wall_time=0.2)
    assert not r.finished and 0.0 <= r.t < 10.0
    assert r.wall_time < 2.0
    np.testing.assert_allclose(np.asarray(r.params), exact(r.t), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "dopri5"}, "unknown method 'dopri5'.*LSODA"),
        ({"jacobian": "exact"}, "unknown jacobian 'exact'"),
        ({"method": "RK45", "jacobian": "autodiff"}, "RK45 is explicit"),
        ({"rtol": 0.0}, "rtol must be positive"),
        ({"atol": -1e-8}, "atol must be positive"),
        ({"t1": 0.0}, "t1 must be positive"),
        ({"t1": float("inf")}, "t1 must be positive and finite"),
        ({"max_wall_time": 0.0}, "max_wall_time must be positive"),
        ({"t_eval": [0.5, 3.0]}, r"t_eval must lie in \[0, t1\]"),
        ({"t_eval": [1.0, 0.5]}, "t_eval must be strictly increasing"),
        ({"theta0": [1.0, np.nan, 0.0]}, "params contain NaN"),
        ({"theta0": np.arange(3)}, "no floating-point array leaves"),
    ],
)
def test_errors(kwargs, match):
    kwargs = dict(kwargs)
    theta0 = jnp.asarray(kwargs.pop("theta0", [1.0, 2.0, 3.0]))
    t1 = kwargs.pop("t1", 1.0)
    with pytest.raises(ValueError, match=match):
        scipy_gradient_flow(lambda p: jnp.sum(p**2), theta0, t1, **kwargs)


def test_non_scalar_loss_is_an_error():
    with pytest.raises(ValueError, match="scalar"):
        scipy_gradient_flow(lambda p: p**2, jnp.ones(3), 1.0)
