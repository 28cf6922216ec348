"""`adjoint="sensitivity"` / `"auto"` (`solvers.ForwardSensitivity`): forward sensitivities
serving `jax.grad` and `jax.jacfwd`, against closed forms."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import stiffnode as sn
from helpers import LinearClosedForm
from stiffnode.solve import _adjoint

A = np.array([[-2.0, 1.0, 0.0], [0.5, -300.0, 2.0], [0.0, 1.0, -1.0]])  # stiff: -300
Y0 = np.array([1.0, 0.5, -0.25])
TS = np.array([0.3, 0.7, 1.0])

LINEAR = LinearClosedForm(A, TS)
linear = LINEAR.field
exact_gradients = LINEAR.exact_gradients


def loss_of(solver, adjoint, rtol=1e-10, atol=1e-12):
    def loss(y0, scale):
        sol = sn.solve(linear, y0, 0.0, 1.0, solver=solver, args=scale, saveat=TS,
                       rtol=rtol, atol=atol, adjoint=adjoint, max_steps=1024)  # fmt: skip
        return jnp.sum(sol.ys)

    return loss


@pytest.mark.x64
def test_grad_and_jacfwd_match_the_closed_form_under_vmap():
    loss = loss_of("rodas5p", "sensitivity")
    y0s = jnp.stack([jnp.asarray(Y0), -2.0 * jnp.asarray(Y0)])
    g_y0, g_s = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))(y0s, 1.3)
    f_y0, f_s = jax.jit(jax.jacfwd(loss, argnums=(0, 1)))(y0s[0], 1.3)
    for i, y0 in enumerate(np.asarray(y0s)):
        want_y0, want_s = exact_gradients(y0, 1.3)
        # The derivative of the discrete solve at rtol 1e-10: its error is the solve's
        # (~1e-9 relative, the step sizes' own dependence not followed); bound 100x that.
        np.testing.assert_allclose(g_y0[i], want_y0, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(g_s[i], want_s, rtol=1e-7)
    want_y0, want_s = exact_gradients(Y0, 1.3)
    np.testing.assert_allclose(f_y0, want_y0, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(f_s, want_s, rtol=1e-7)


@pytest.mark.x64
def test_parameters_in_a_module_and_closed_over_complex_state():
    """Parameters inside an equinox vector field (the terms) and a rate closed over by a
    lambda: `y' = (i w - k) y`, `|y(T)|^2 = |y0|^2 exp(-2 k T)` (no dependence on `w`)."""

    class Field(eqx.Module):
        w: jax.Array

        def __call__(self, t, y, k):
            return (1j * self.w - k) * y

    y0 = jnp.asarray([0.6 + 0.8j, 0.1 - 0.2j])

    def loss(field, k, rate):
        def vf(t, y, args):
            return field(t, y, k) - rate * y

        sol = sn.solve(vf, y0, 0.0, 2.0, solver="bdf", saveat=[2.0], rtol=1e-10,
                       atol=1e-12, adjoint="sensitivity")  # fmt: skip
        return jnp.sum(jnp.abs(sol.ys) ** 2)

    g_field, g_k, g_rate = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        Field(jnp.asarray(3.0)), 0.5, 0.25
    )
    norm2 = float(jnp.sum(jnp.abs(y0) ** 2))
    want = -2 * 2.0 * norm2 * np.exp(-2 * 0.75 * 2.0)
    np.testing.assert_allclose(g_k, want, rtol=1e-7)
    np.testing.assert_allclose(g_rate, want, rtol=1e-7)  # closed over: still differentiated
    np.testing.assert_allclose(g_field.w, 0.0, atol=1e-8)


def test_float32_gradient_under_strict_promotion():
    loss = loss_of("auto", "auto", rtol=1e-5, atol=1e-7)
    y0 = jnp.asarray(Y0, jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        g_y0, g_s = jax.jit(jax.grad(loss, argnums=(0, 1)))(y0, jnp.float32(1.3))
    assert g_y0.dtype == jnp.float32 and g_s.dtype == jnp.float32
    want_y0, want_s = exact_gradients(Y0, 1.3)
    # rtol 1e-5 in float32: the solve's error ~1e-5; bound 30x that.
    np.testing.assert_allclose(g_y0, want_y0, rtol=3e-4, atol=3e-4)
    np.testing.assert_allclose(g_s, want_s, rtol=3e-4)


def test_auto_chooses_by_the_number_of_differentiable_inputs():
    few = _adjoint("auto", jnp.zeros(3), jnp.zeros(5), None, 100, 1e-6, 1e-9)
    many = _adjoint("auto", jnp.zeros(3), jnp.zeros(sn.solvers.AUTO_MAX_DIRECTIONS), None,
                    100, 1e-6, 1e-9)  # fmt: skip
    assert isinstance(few, sn.solvers.ForwardSensitivity)
    assert type(many).__name__ == "RecursiveCheckpointAdjoint"


def test_gradients_drop_autoswitch_substeps():
    """Under forward mode, or when the caller asks for gradients (`adjoint="auto"`),
    `AutoSwitch` takes one explicit step per diffrax step: its sub-step loop, replayed
    inside the backward loop, made a Robertson gradient 10x dearer."""
    auto = sn.solvers.AutoSwitch.for_states(3)
    assert auto.substeps > 1
    recursive = diffrax.RecursiveCheckpointAdjoint()
    setups = [(recursive, False), (recursive, True), (diffrax.ForwardMode(), False),
              (sn.solvers.ForwardSensitivity(), False)]  # fmt: skip
    got = [sn.solvers.for_solve(auto, adjoint=a, fixed_steps=False, dense=False,
                                differentiated=d).substeps for a, d in setups]  # fmt: skip
    assert got == [auto.substeps, 1, 1, 1]


@pytest.mark.x64
def test_reverse_time_gradient_matches_the_closed_form():
    """`y' = -s A y` from t = 1 down to 0 (in reverse time its stiff mode decays):
    `y(0) = expm(s A) y(1)`, `d sum(y(0)) / ds = 1^T A expm(s A) y(1)`."""
    a_neg = -A

    def loss(scale):
        field = lambda t, y, s: s * (jnp.asarray(a_neg, y.dtype) @ y)  # noqa: E731
        sol = sn.solve(field, jnp.asarray(Y0), 1.0, 0.0, solver="rodas5p", args=scale,
                       saveat=[0.0], rtol=1e-10, atol=1e-12, adjoint="sensitivity")  # fmt: skip
        return jnp.sum(sol.ys)

    prop = scipy.linalg.expm(-1.3 * a_neg)
    want = np.ones(3) @ (-a_neg) @ prop @ Y0
    # rtol 1e-10: the solve's relative error ~1e-9; bound 100x that.
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(1.3), want, rtol=1e-7)
