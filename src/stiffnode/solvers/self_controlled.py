"""The extension point for solvers that can choose their own steps (BDF, Rosenbrock).

Such a solver is an ordinary diffrax adaptive solver: under any diffrax controller
(`PIDController`, `ConstantStepSize`, `StepTo`, `ClipStepSizeController`) its `step` returns
an error estimate shaped like `y`, and the controller decides. Paired with a *reporting*
controller (`solvers.SolverStepController`, `solvers.CountingController`) it returns a
`StepReport` instead: the same error estimate, its own accept/next-step decision and the
work it did (function, Jacobian, JVP and LU counts), which the controller accumulates.

The channel is diffrax's own: `diffeqsolve` copies the controller's `rtol`, `atol` and
`norm` into every field of `solver.root_finder` that holds `FROM_CONTROLLER`. A reporting
controller's `norm` is a `ReportingNorm`, and that is how the solver knows who reads its
reports.
"""

import dataclasses
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree

STAT_KEYS = (
    "num_vf_evals",
    "num_jac_evals",
    "num_jvp_evals",
    "num_lu_decompositions",
    "num_newton_iters",
    "num_newton_failures",
    "num_error_test_failures",
)

FROM_CONTROLLER = diffrax.with_stepsize_controller_tols(optx.Newton)().rtol
"""diffrax's marker for "take this tolerance from the step-size controller"."""


class ControllerTolerances(eqx.Module):
    """A `root_finder` holding only tolerances: `rtol`, `atol`, `norm`. By default all three
    are taken from the adaptive step-size controller; under fixed steps give them here
    (or pass any object with these fields, e.g. `diffrax.VeryChord(rtol=..., atol=...)`)."""

    rtol: object = FROM_CONTROLLER
    atol: object = FROM_CONTROLLER
    norm: object = FROM_CONTROLLER


class ReportingNorm(eqx.Module):
    """`norm`, as handed to a solver by a reporting controller: calling it is calling `norm`;
    its type tells the solver to return a `StepReport`. `solver_steps`: the controller
    follows the solver's own step decisions (`SolverStepController`)."""

    norm: Callable
    solver_steps: bool = eqx.field(static=True)

    def __call__(self, x):
        return self.norm(x)


class StepReport(eqx.Module):
    """What a self-controlled solver tells a reporting controller about one step attempt.

    `error` is the error estimate (shaped like `y`); the other leaves are real floats of the
    time dtype (diffrax passes error estimates through `jnp.where(isnan(x), inf, x)`).
    """

    error: PyTree[Array]
    accepted: Float[Array, ""]  # the solver's own decision (1.0 accept, 0.0 reject)
    next_dt: Float[Array, ""]  # the step the solver proposes next
    order: Float[Array, ""]  # the order of the method used for this attempt
    counts: Float[Array, "7"]  # this attempt's work, in the order of STAT_KEYS
    setup_vf_evals: Float[Array, ""]  # evaluations made by `solver.init` (counted once)

    @property
    def newton_failure(self) -> Bool[Array, ""]:
        return self.counts[STAT_KEYS.index("num_newton_failures")] > 0.5


class AbstractSelfControlledSolver(diffrax.AbstractImplicitSolver, diffrax.AbstractAdaptiveSolver):
    """A diffrax solver that works under any controller and can also choose its own steps.

    Subclasses implement `step` and finish it with `self.error_output(...)`, which returns
    a plain error estimate or a `StepReport`, depending on the controller.

    Tolerances (`self.tolerances()`): from the controller when it is adaptive; else from
    `root_finder` (any object with `rtol`, `atol` and `norm`).
    """

    root_finder: eqx.AbstractVar[object]

    def tolerances(self, dtype) -> tuple[Array, Array, Callable]:
        """`(rtol, atol, norm)`, tolerances cast to the real `dtype` of the state."""
        tols = self.root_finder
        missing = [getattr(tols, k, None) for k in ("rtol", "atol")]
        if any(x is None or x is FROM_CONTROLLER for x in missing):
            raise ValueError(
                f"stiffnode.solvers.{type(self).__name__} has no tolerances: use an adaptive "
                "stepsize_controller (e.g. diffrax.PIDController(rtol=..., atol=...) or "
                "stiffnode.solvers.SolverStepController(rtol=..., atol=...)), or under fixed "
                "steps pass root_finder=stiffnode.solvers.ControllerTolerances(rtol=..., "
                "atol=..., norm=optimistix.rms_norm)"
            )
        norm = tols.norm if callable(tols.norm) else optx.rms_norm
        return jnp.asarray(tols.rtol, dtype), jnp.asarray(tols.atol, dtype), norm

    @property
    def reports(self) -> bool:
        """A reporting controller reads this solver's steps (static)."""
        return isinstance(getattr(self.root_finder, "norm", None), ReportingNorm)

    @property
    def follows_own_steps(self) -> bool:
        """The controller takes the solver's own step decisions (static)."""
        return self.reports and self.root_finder.norm.solver_steps

    def error_output(
        self,
        error: PyTree[Array],
        *,
        failed: Bool[Array, ""],
        accepted,
        next_dt,
        order,
        counts,
        tdtype,
        setup_vf_evals=0,
    ):
        """The `y_error` that `step` returns: `error` (inf where `failed`: any controller
        then rejects), or a `StepReport` for a reporting controller. `counts`: the attempt's
        work in the order of `STAT_KEYS` (ints or int arrays)."""
        error = jax.tree.map(lambda e: jnp.where(failed, jnp.inf, e), error)
        if not self.reports:
            return error

        def real(x):
            return jnp.asarray(x).astype(tdtype)

        return StepReport(
            error=error,
            accepted=real(accepted),
            next_dt=jax.lax.stop_gradient(real(next_dt)),
            order=real(order),
            counts=jnp.stack([real(c) for c in counts]),
            setup_vf_evals=real(setup_vf_evals),
        )


class FlatField(eqx.Module):
    """The vector field on a flat real vector, in the solver's (forward) time.

    diffrax runs a reverse-time solve forward in `s = -t` with its terms wrapped
    (`WrapTerm`); the field in `s` is `direction * f(direction s, y)`, read here off the
    sign of the term's control. Complex states are split into real and imaginary parts
    (2n real unknowns), so that Jacobians, LU and Newton are real even for vector fields
    that are not holomorphic.
    """

    terms: diffrax.AbstractTerm
    args: PyTree
    direction: Array
    unravel: Callable = eqx.field(static=True)
    complex_state: bool = eqx.field(static=True)

    @classmethod
    def of(cls, terms, t0, t1, y0, args):
        """`(field, flat_y0)` for a step from `t0` to `t1 > t0` (solver time)."""
        flat, unravel = ravel_pytree(y0)
        control = jnp.real(jnp.asarray(terms.contr(t0, t1)))
        direction = jnp.where(control < 0, -1, 1).astype(jnp.real(flat).dtype)
        complex_state = jnp.iscomplexobj(flat)
        field = cls(terms, args, direction, unravel, complex_state)
        return field, field.to_real(flat)

    def to_real(self, flat):
        if self.complex_state:
            return jnp.concatenate([jnp.real(flat), jnp.imag(flat)])
        return flat

    def to_tree(self, x):
        if self.complex_state:
            n = x.shape[0] // 2
            return self.unravel(jax.lax.complex(x[:n], x[n:]))
        return self.unravel(x)

    def __call__(self, t, x):
        out = ravel_pytree(self.terms.vf(t, self.to_tree(x), self.args))[0]
        out = self.to_real(out)
        if out.dtype != x.dtype:
            raise TypeError(
                f"the vector field returned dtype {out.dtype} for a state of dtype "
                f"{x.dtype}; they must match"
            )
        return self.direction * out

    def without_gradients(self):
        """The same field with every inexact array of terms and args under stop_gradient."""
        dynamic, static = eqx.partition((self.terms, self.args), eqx.is_inexact_array)
        terms, args = eqx.combine(jax.lax.stop_gradient(dynamic), static)
        return dataclasses.replace(self, terms=terms, args=args)
