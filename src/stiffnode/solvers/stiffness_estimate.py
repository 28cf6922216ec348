"""Estimates of the stiffness of an ODE along a solve: the dominant eigenvalue `|lambda|`
of the Jacobian, from what a step already computed or one JVP per step.

- explicit Runge-Kutta pairs whose last two stages are both at `t1` (Tsit5, Dopri5, FSAL):
  `h |lambda| ~ ||k_s - k_{s-1}|| / ||Y_s - Y_{s-1}||` from the stage increments and stage
  values (Shampine's test for Dormand-Prince; Hairer & Wanner II, IV.2), no evaluation;
- any other solver: one power iteration per step on the Jacobian at `(t1, y1)` (a JVP), its
  vector carried from step to step.

`StiffnessMonitor` adds either to any diffrax solver (`stiffnode.solve(...,
estimate_stiffness=True)`); `AutoSwitch` switches methods on them.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from .delegating import AbstractDelegatingSolver
from .self_controlled import FlatField
from .unrolled import rows_sum


def stability_boundary(tableau: diffrax.ButcherTableau) -> float:
    """The largest `x` with `|R(-s)| <= 1` for all `0 <= s <= x`, `R` the stability
    polynomial `1 + z b^T (I - z A)^{-1} 1` of an explicit Runge-Kutta tableau."""
    s = len(tableau.b_sol)
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a_lower):
        a[i + 1, : len(row)] = row
    # R(z) = sum_k z^k b^T A^(k-1) 1 (A is nilpotent: a polynomial of degree s).
    coeffs = [1.0]
    power = np.ones(s)
    for _ in range(s):
        coeffs.append(float(tableau.b_sol @ power))
        power = a @ power
    x = np.linspace(0.0, 20.0, 200_001)
    values = np.abs(np.polyval(coeffs[::-1], -x))
    unstable = np.nonzero(values > 1 + 1e-12)[0]
    return float(x[unstable[0] - 1]) if unstable.size else float(x[-1])


def _norm(tree, scale) -> Array:
    flat = ravel_pytree(tree)[0]
    return jnp.sqrt(jnp.sum((jnp.abs(flat) / scale) ** 2))


def stage_differences(
    tableau: diffrax.ButcherTableau, ks: PyTree[Array]
) -> tuple[PyTree[Array], PyTree[Array]]:
    """`(Y_s - Y_{s-1}, k_s - k_{s-1})` from the stage increments `ks` (leading axis:
    stages) of an explicit step whose last two stages are at `t1` (`explicit_stiffness`)."""
    weights = np.asarray(tableau.b_sol, float).copy()  # Y_s = y0 + sum b_j k_j (FSAL)
    weights[: len(tableau.a_lower[-2])] -= tableau.a_lower[-2]  # minus Y_{s-1}'s row
    # (written out: a `dot` over 7 stages is a library call per step on XLA:CPU)
    d_y = jax.tree.map(
        lambda k: rows_sum(jnp.stack([float(w) * k[i] for i, w in enumerate(weights) if w])),
        ks,
    )
    return d_y, jax.tree.map(lambda k: k[-1] - k[-2], ks)


def explicit_stiffness(
    tableau: diffrax.ButcherTableau, ks: PyTree[Array], scale: Array | float = 1.0
) -> Array:
    """`h |lambda|` from the stage increments `ks` (leading axis: stages) of an explicit
    step whose last two stages are at `t1`: `||k_s - k_{s-1}|| / ||Y_s - Y_{s-1}||`, in
    the norm `||x / scale||_2` (`scale`: flat, e.g. `atol + rtol |y|`, so that components
    far below the others still count, as the error control sees them; exact for a linear
    field in any norm when the difference lies along one eigenvector)."""
    d_y, d_k = stage_differences(tableau, ks)
    size = _norm(d_y, scale)
    return jnp.where(size > 0, _norm(d_k, scale) / jnp.where(size > 0, size, 1), 0.0)


def power_iteration_start(terms, t0, t1, y0, args) -> Float[Array, " n"]:
    """A unit start vector with no special structure (flat and real, as `FlatField`'s state;
    any fixed vector works unless orthogonal to the dominant eigenvector): `v_i = (1 +
    u_i / 2) / c`, `u_i = (i m mod 2^32) / 2^32` for `i = 1..n` with Knuth's multiplier `m =
    2654435761` (`m / 2^32` the golden ratio's fractional part: a Weyl sequence,
    equidistributed in [0, 1)), exact in uint32 arithmetic, and `c` its norm, computed
    when tracing. One fused kernel (a `sin` and a norm on the device cost a Tsit5 step's
    worth on a 512-state neural ODE)."""
    _, flat = FlatField.of(terms, t0, t1, y0, args)
    n = flat.shape[0]
    m = 2654435761
    u = (np.arange(1, n + 1, dtype=np.uint64) * m) % 2**32
    c = float(np.linalg.norm(1.0 + 0.5 * u / 2.0**32))
    u = jnp.arange(1, n + 1, dtype=jnp.uint32) * jnp.uint32(m)  # (wraps mod 2^32)
    return (1.0 + (0.5 / 2.0**32) * u.astype(flat.dtype)) * (1.0 / c)


def power_iteration_step(terms, t0, t1, y1, args, v) -> tuple[Array, Array]:
    """One power iteration at `(t1, y1)`: `w = J v` (a JVP), returns `(w / ||w||, ||w||)`;
    `||w||` tends to `|lambda|` of the dominant eigenvalue (for a complex pair, oscillates
    about it). No gradient flows through."""
    field, flat_y1 = FlatField.of(terms, t0, t1, y1, args)
    field = field.without_gradients()
    jv = jax.jvp(lambda x: field(t1, x), (jax.lax.stop_gradient(flat_y1),), (v,))[1]
    size = jnp.linalg.norm(jv)
    ok = jnp.isfinite(size) & (size > 0)
    return jnp.where(ok, jv / jnp.where(ok, size, 1), v), jnp.where(ok, size, 0.0)


def _innermost(solver):
    while isinstance(solver, diffrax.AbstractWrappedSolver):
        solver = solver.solver
    return solver


def has_stage_estimate(solver) -> bool:
    """The solver is an explicit Runge-Kutta method whose last two stages are at `t1` and
    whose last stage is `f(t1, y1)`: its stages give `explicit_stiffness` for free."""
    inner = _innermost(solver)
    tableau = getattr(inner, "tableau", None)
    return (
        isinstance(inner, diffrax.AbstractERK)
        and isinstance(tableau, diffrax.ButcherTableau)
        and tableau.fsal
        and tableau.c[-1] == tableau.c[-2] == 1
    )


class StiffnessMonitor(AbstractDelegatingSolver):
    """`solver`, with the largest `|lambda|` estimate over its accepted steps in its state
    (`stiffnode.solve(..., estimate_stiffness=True)` reports it as
    `Solution.stats["stiffness_max"]`): from the stages of Tsit5/Dopri5 at no cost, else one
    JVP per step attempt (not counted in `num_vf_evals`)."""

    solver: diffrax.AbstractSolver

    def init(self, terms, t0, t1, y0, args):
        inner = self.solver.init(terms, t0, t1, y0, args)
        v = power_iteration_start(terms, t0, t1, y0, args)
        return inner, v, jnp.zeros((), v.dtype)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, v, lam_max = solver_state
        y1, err, dense, inner, result = self.solver.step(terms, t0, t1, y0, args, inner, made_jump)
        h = jnp.asarray(t1 - t0, jnp.result_type(t0, t1))
        if has_stage_estimate(self.solver):
            lam = explicit_stiffness(_innermost(self.solver).tableau, dense["k"]) / h
        else:
            v, lam = power_iteration_step(terms, t0, t1, y1, args, v)
        lam = jax.lax.stop_gradient(lam).astype(lam_max.dtype)
        return y1, err, dense, (inner, v, jnp.maximum(lam_max, lam)), result

    def solve_stats(self, final_state) -> dict[str, Array]:
        """The statistics `stiffnode.solve` adds to `Solution.stats`."""
        return {"stiffness_max": final_state[2]}
