"""`adjoint="interpolating"` (`solvers.InterpolatingAdjoint`): gradients against closed
forms and against central differences of a tight scipy Radau solve on a stiff problem."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

import stiffnode as sn
from helpers import LinearClosedForm, central_difference_jacobian
from stiffnode.problems import robertson

A = np.array([[-2.0, 1.0, 0.0], [0.5, -30.0, 2.0], [0.0, 1.0, -1.0]])
Y0 = np.array([1.0, 0.5, -0.25])
TS = np.array([0.3, 0.7, 1.0])

LINEAR = LinearClosedForm(A, TS)
linear = LINEAR.field
exact_gradients = LINEAR.exact_gradients


@pytest.mark.x64
def test_gradient_matches_the_closed_form_across_checkpoints_and_under_vmap():
    # checkpoint_every=4: the ~30-60 steps are replayed from several checkpoints inside
    # each save interval, not only from the save times.
    adjoint = sn.solvers.InterpolatingAdjoint(rtol=1e-10, atol=1e-12, checkpoint_every=4)

    def loss(y0, scale):
        sol = sn.solve(linear, y0, 0.0, 1.0, solver="rodas5p", args=scale, saveat=TS,
                       rtol=1e-10, atol=1e-12, adjoint=adjoint, max_steps=1024)  # fmt: skip
        return jnp.sum(sol.ys)

    y0s = jnp.stack([jnp.asarray(Y0), -2.0 * jnp.asarray(Y0)])
    g_y0, g_s = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(y0s, 1.3)
    for i, y0 in enumerate(np.asarray(y0s)):
        want_y0, want_s = exact_gradients(y0, 1.3)
        # Tolerances 1e-10 (forward, replay and adjoint): errors ~1e-9; bound 100x that.
        np.testing.assert_allclose(g_y0[i], want_y0, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(g_s[i], want_s, rtol=1e-7)


@pytest.mark.x64
def test_reverse_time_and_parameters_in_the_vector_field_module():
    """Integrating from t0 = 1 down to 0, with the parameters inside an equinox module
    (the terms, not `args`): `dL/dW` against central differences of `expm`."""
    w = jnp.asarray([[-1.0, 0.4], [0.2, -3.0]])
    y0 = jnp.asarray([0.3, 1.0])

    class Field(eqx.Module):
        w: jax.Array

        def __call__(self, t, y, args):
            return self.w @ y

    def loss(field):
        sol = sn.solve(field, y0, 1.0, 0.0, solver="rodas5p", saveat=[0.5, 0.0],
                       rtol=1e-10, atol=1e-12, adjoint="interpolating", max_steps=1024)  # fmt: skip
        return jnp.sum(sol.ys**2)

    def exact(w_):
        return sum(np.sum((scipy.linalg.expm(-w_ * d) @ np.asarray(y0)) ** 2) for d in (0.5, 1.0))

    grad = jax.grad(loss)(Field(w)).w
    eps = 1e-6
    fd = central_difference_jacobian(exact, np.asarray(w), eps)
    # Central differences of expm: error ~eps^2 ~1e-12; the solves' ~1e-9 relative to the
    # gradient's size; bound 1e-7.
    assert np.linalg.norm(grad - fd) / np.linalg.norm(fd) < 1e-7


@pytest.mark.x64
def test_stiff_robertson_rates_against_radau_differences():
    """Robertson's log rate constants (stiff: eigenvalues to -1e4 against a slow -1e-2;
    `backsolve` gives inf here) through BDF (the replays too; the adjoint by Rodas5P) at
    rtol 1e-8: the gradient against central differences of scipy Radau at rtol 1e-12."""
    problem = robertson()
    times = np.array([1e-3, 0.1, 3.0, 40.0])
    weights = np.array([1.0, 1e9, 1.0])  # y2 peaks at 3.6e-5
    log_k = np.log(np.asarray(problem.args)) + np.log([1.1, 0.9, 1.1])

    def field(t, y, lk):
        return problem.vector_field(t, y, jnp.exp(lk))

    def loss(lk):
        sol = sn.solve(field, jnp.asarray(problem.y0), 0.0, 40.0, solver="bdf", args=lk,
                       saveat=times, rtol=1e-8, atol=1e-12, adjoint="interpolating",
                       max_steps=1024)  # fmt: skip
        return jnp.sum(sol.ys**2 * weights)

    def radau_loss(lk):
        k = np.exp(lk)
        sol = solve_ivp(lambda t, y: problem.numpy_rhs(t, y, k), (0, 40.0), problem.y0,
                        method="Radau", t_eval=times, rtol=1e-12, atol=1e-18,
                        jac=lambda t, y: problem.numpy_jac(t, y, k))  # fmt: skip
        return np.sum(sol.y.T**2 * weights)

    eye = 1e-5 * np.eye(3)
    reference = np.array([(radau_loss(log_k + e) - radau_loss(log_k - e)) / 2e-5 for e in eye])
    grad = np.asarray(jax.grad(loss)(jnp.asarray(log_k)))
    # The bound; measured 2e-8 (recursive through the same solver: 7e-8).
    assert np.linalg.norm(grad - reference) / np.linalg.norm(reference) < 1e-5


def test_float32_gradient_stays_float32():
    # An adjoint object without tolerances: `solve` gives it its own.
    adjoint = sn.solvers.InterpolatingAdjoint(checkpoint_every=8)

    def loss(y0):
        sol = sn.solve(linear, y0, 0.0, 1.0, solver="rodas5p", args=jnp.float32(1.0),
                       saveat=TS, rtol=1e-5, atol=1e-6, adjoint=adjoint,
                       max_steps=256)  # fmt: skip
        return jnp.sum(sol.ys)

    g = jax.grad(loss)(jnp.asarray(Y0, jnp.float32))
    assert g.dtype == jnp.float32
    # Tolerances 1e-5 in float32 (eps 1.2e-7): 1e-3 leaves 100x.
    np.testing.assert_allclose(g, exact_gradients(Y0, 1.0)[0], rtol=1e-3)


def test_what_it_cannot_serve_is_a_clear_error():
    y0 = jnp.asarray(Y0, jnp.float32)

    def grad_with(**kwargs):
        def loss(y):
            return jnp.sum(sn.solve(linear, y, 0.0, 1.0, args=1.0, **kwargs).ys)

        return jax.grad(loss)(y0)

    with pytest.raises(ValueError, match="adaptive step-size controller"):
        grad_with(adjoint="interpolating", stepsize_controller="constant", dt0=0.1)
    with pytest.raises(NotImplementedError, match="steps=...|SaveAt"):
        grad_with(adjoint="interpolating", saveat=diffrax.SaveAt(steps=True))
    with pytest.raises(ValueError, match="one-step method"):
        sn.solvers.InterpolatingAdjoint(rtol=1e-6, atol=1e-9, solver=sn.solvers.BDF())
    with pytest.raises(ValueError, match="checkpoint_every"):
        sn.solvers.InterpolatingAdjoint(rtol=1e-6, atol=1e-9, checkpoint_every=0)
    with pytest.raises(ValueError, match="rtol and atol"):
        diffrax.diffeqsolve(diffrax.ODETerm(linear), diffrax.Tsit5(), 0.0, 1.0, 0.1, y0,
                            args=1.0, stepsize_controller=diffrax.PIDController(1e-5, 1e-6),
                            adjoint=sn.solvers.InterpolatingAdjoint())  # fmt: skip
