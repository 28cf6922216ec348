"""`StiffProblem` and plain-numpy right-hand sides and Jacobians for scipy/SUNDIALS baselines."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

NumpyRhs = Callable[[float, np.ndarray, Any], np.ndarray]
"""`(t, y, args) -> dy/dt`, numpy in, numpy out."""

NumpyJac = Callable[[float, np.ndarray, Any], Any]
"""`(t, y, args) -> df/dy`, a dense ndarray or a scipy.sparse matrix."""


class StiffProblem(eqx.Module):
    """A stiff initial value problem `y' = f(t, y, args)`, `y(t0) = y0`, on `[t0, t1]`.

    - `vector_field`: `f(t, y, args)`, jax, diffrax's `ODETerm` convention; jit/vmap/grad-able.
    - `y0`: numpy float64, shape `(n,)`; `args`: the parameters (numpy; `None` if fixed), the
      pytree to perturb or `vmap` over.
    - `rtol`, `atol`: the tolerances the literature uses for the problem (see each constructor).
    - `reference`: the published state at `t1` where one exists, else `None`.
    - `numpy_rhs`, `numpy_jac`: hand-written numpy `f(t, y, args)` and `df/dy(t, y, args)`; use
      `rhs_numpy(problem)`, `jac_numpy(problem)`, which bind `args`.
    """

    name: str = eqx.field(static=True)
    vector_field: Callable[[Any, Float[Array, " n"], PyTree], Float[Array, " n"]]
    y0: Float[np.ndarray, " n"]
    t0: float
    t1: float
    args: PyTree
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    reference: Float[np.ndarray, " n"] | None = None
    numpy_rhs: NumpyRhs | None = eqx.field(default=None, static=True)
    numpy_jac: NumpyJac | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        y0 = np.asarray(self.y0)
        if y0.ndim != 1 or y0.dtype != np.float64:
            raise ValueError(f"y0 must be a 1-D float64 array, got {y0.dtype}{y0.shape}")
        if self.reference is not None and np.shape(self.reference) != y0.shape:
            raise ValueError(f"reference has shape {np.shape(self.reference)}, y0 {y0.shape}")

    @property
    def n(self) -> int:
        """The number of states."""
        return int(self.y0.shape[0])


def _jitted_jax(problem: StiffProblem, jacobian: bool):
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "the jax fallback needs float64: jax.config.update('jax_enable_x64', True)"
        )
    fn = jax.jacfwd(problem.vector_field, argnums=1) if jacobian else problem.vector_field
    jitted = jax.jit(fn)
    args = problem.args
    return lambda t, y: np.asarray(jitted(jnp.float64(t), jnp.asarray(y, jnp.float64), args))


def rhs_numpy(
    problem: StiffProblem, *, via_jax: bool = False
) -> Callable[[float, np.ndarray], np.ndarray]:
    """`(t, y) -> f(t, y, problem.args)` on numpy arrays, for scipy/CVODE.

    The problem's hand-written numpy function; with `via_jax=True` (or where none is written)
    the jax field under `jax.jit`, converted to numpy (needs `jax_enable_x64`).
    """
    if via_jax or problem.numpy_rhs is None:
        return _jitted_jax(problem, jacobian=False)
    fn, args = problem.numpy_rhs, problem.args
    return lambda t, y: fn(t, np.asarray(y, np.float64), args)


def jac_numpy(
    problem: StiffProblem, *, via_jax: bool = False
) -> Callable[[float, np.ndarray], Any]:
    """`(t, y) -> df/dy(t, y, problem.args)`: a dense ndarray, or scipy.sparse CSR (Brusselator).

    The problem's hand-written Jacobian; with `via_jax=True` (or where none is written)
    `jax.jacfwd` of the field under `jax.jit`, dense (needs `jax_enable_x64`).
    """
    if via_jax or problem.numpy_jac is None:
        return _jitted_jax(problem, jacobian=True)
    fn, args = problem.numpy_jac, problem.args
    return lambda t, y: fn(t, np.asarray(y, np.float64), args)
