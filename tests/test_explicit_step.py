"""`solvers.explicit_step`: an explicit Runge-Kutta step with its stages written out gives
diffrax's own step (its stage loop) for the same tableau, up to the order of the sums."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiffnode.solvers.explicit_step import explicit_rk_step


def _pendulum(t, y, args):  # a pytree state, time-dependent
    return {"q": y["p"], "p": -jnp.sin(y["q"]) + 0.1 * t}


def _spiral(t, z, args):  # a complex state
    return (1j - 0.5) * z + z**2 / 4


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Dopri5(), diffrax.Dopri8()])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.x64)])
@pytest.mark.parametrize("t1", [0.3, -0.3])  # forward and reverse time
@pytest.mark.parametrize("kind", ["pytree", "complex"])
def test_written_out_step_is_diffrax_step(solver, dtype, t1, kind):
    real = jnp.dtype(dtype)
    if kind == "pytree":
        field = _pendulum
        y0 = {"q": jnp.array([0.7, -0.2], real), "p": jnp.array([0.1, 0.3], real)}
    else:
        field = _spiral
        cplx = jnp.complex64 if dtype == "float32" else jnp.complex128
        y0 = jnp.array([1.0 + 0.5j, -0.3j], cplx)
    terms = diffrax.ODETerm(field)
    t0, t1 = jnp.asarray(0.1, real), jnp.asarray(t1, real)
    f0 = field(t0, y0, None)
    state = solver.init(terms, t0, t1, y0, None)
    if isinstance(state, tuple):  # FSAL: (first step, f(t0, y0))
        state = (False, f0)
    expected = solver.step(terms, t0, t1, y0, None, state, False)
    y1, err, dense, f1 = explicit_rk_step(solver.tableau, terms, t0, t1, y0, None, f0)
    # The same sums of the same terms in another order: rounding only, a few ulps of
    # the largest term (|k| ~ |h f| <= 0.5 here); 1e3 eps leaves a wide margin.
    tol = 1e3 * float(jnp.finfo(real).eps)
    for got, want in ((y1, expected[0]), (err, expected[1]), (dense, expected[2])):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=tol)
    if solver.tableau.fsal:
        f_end = field(t1, y1, None)
        for g, w in zip(jax.tree.leaves(f1), jax.tree.leaves(f_end), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=tol)
