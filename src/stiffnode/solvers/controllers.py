"""Step-size controllers that read a self-controlled solver's `StepReport`s.

- `SolverStepController`: the solver chooses its steps (and, for BDF, its order); the
  controller supplies the tolerances and the first step, and counts the work. The best
  pairing for `BDF`.
- `CountingController(controller)`: any diffrax adaptive controller (e.g. `PIDController`)
  decides from the solver's error estimate; the work is counted all the same.

Both keep a `SolverStats` as their state (`SaveAt(controller_state=True)` returns it).
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Int

from .initial_step import initial_step_size
from .self_controlled import STAT_KEYS, ReportingNorm, StepReport

_ERROR_TEST = STAT_KEYS.index("num_error_test_failures")


class SolverStats(eqx.Module):
    """Work of a solve, rejected attempts included (int32)."""

    counts: Int[Array, "7"]  # STAT_KEYS
    steps_per_order: Int[Array, "6"]  # accepted steps taken with order k, k = 0..5
    num_attempts: Int[Array, ""]

    @classmethod
    def zero(cls, vf_evals=0) -> "SolverStats":
        counts = jnp.zeros(len(STAT_KEYS), jnp.int32).at[0].set(vf_evals)
        return cls(counts, jnp.zeros(6, jnp.int32), jnp.array(0, jnp.int32))

    def add(self, report: StepReport, kept) -> "SolverStats":
        """These counts plus one attempt's (`kept`: whether the controller accepted it); an
        attempt rejected without a Newton failure is an error-test failure."""
        counts = jnp.round(jax.lax.stop_gradient(report.counts)).astype(jnp.int32)
        error_test = ~kept & ~report.newton_failure
        counts = counts.at[_ERROR_TEST].set(error_test.astype(jnp.int32))
        setup = jnp.round(jax.lax.stop_gradient(report.setup_vf_evals)).astype(jnp.int32)
        counts = counts.at[0].add(jnp.where(self.num_attempts == 0, setup, 0))
        order = jnp.round(jax.lax.stop_gradient(report.order)).astype(jnp.int32)
        per_order = self.steps_per_order.at[order].add(jnp.asarray(kept).astype(jnp.int32))
        return SolverStats(self.counts + counts, per_order, self.num_attempts + 1)

    def as_dict(self) -> dict[str, Array]:
        out = {key: self.counts[..., i] for i, key in enumerate(STAT_KEYS)}
        out["num_steps_per_order"] = self.steps_per_order[..., 1:]
        return out


def _report(y_error, controller) -> StepReport:
    if not isinstance(y_error, StepReport):
        raise TypeError(
            f"{type(controller).__name__} reads the step reports of stiffnode's "
            "self-controlled solvers (subclasses of stiffnode.solvers."
            "AbstractSelfControlledSolver: BDF, the Rosenbrock methods); with another solver "
            f"(here one returning an error estimate of type {type(y_error).__name__}) use a "
            "diffrax controller such as diffrax.PIDController"
        )
    return y_error


class SolverStepController(diffrax.AbstractAdaptiveStepSizeController):
    """Accepts or rejects each step as a self-controlled solver decided and moves to the
    step size it chose (for BDF also the order); `rtol`/`atol` (and `norm`) are handed to
    the solver by `diffeqsolve`.

        diffrax.diffeqsolve(diffrax.ODETerm(f), BDF(), t0, t1, None, y0,
                            stepsize_controller=SolverStepController(rtol=1e-6, atol=1e-9))

    Args:
        rtol, atol: tolerances of the solver's local error test (see the solver).
        norm: the norm of the scaled error (RMS by default, as scipy and CVODE use).
        dtmax: largest step size allowed (None: no limit).
        dtmin: smallest; a step the solver wants below it ends the solve with
            `RESULTS.dt_min_reached`. The solve also ends there when the step underflows
            (below ten times the spacing of floating-point times at `t`).
    """

    rtol: float
    atol: float
    norm: Callable
    dtmax: float | None
    dtmin: float | None

    def __init__(self, rtol, atol, norm=optx.rms_norm, dtmax=None, dtmin=None):
        self.rtol = rtol
        self.atol = atol
        self.norm = norm if isinstance(norm, ReportingNorm) else ReportingNorm(norm, True)
        self.dtmax = dtmax
        self.dtmin = dtmin

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        evals = 0
        if dt0 is None:
            dt0 = initial_step_size(
                lambda t, y: func(terms, t, y, args), t0, t1, y0, self.rtol, self.atol, 2
            )
            evals = 2
        if self.dtmax is not None:
            dt0 = jnp.minimum(dt0, self.dtmax)
        return t0 + dt0, SolverStats.zero(evals)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        report = jax.lax.stop_gradient(_report(y_error, self))
        accept = report.accepted > 0.5
        dt = report.next_dt
        if self.dtmax is not None:
            dt = jnp.minimum(dt, self.dtmax)
        tprev = jnp.where(accept, t1, t0)
        tnext = tprev + dt.astype(jnp.result_type(tprev))
        spacing = jnp.abs(jnp.nextafter(tprev, jnp.inf * jnp.sign(tnext - tprev + 1)) - tprev)
        too_small = (tnext - tprev) < 10 * spacing
        if self.dtmin is not None:
            too_small = too_small | (dt < self.dtmin)
        result = diffrax.RESULTS.where(
            too_small, diffrax.RESULTS.dt_min_reached, diffrax.RESULTS.successful
        )
        stats = controller_state.add(report, accept)
        return accept, tprev, tnext, False, stats, result


class _WrappingController(diffrax.AbstractAdaptiveStepSizeController):
    """`controller` seen through: its tolerances and norm; `wrap` wraps it."""

    controller: diffrax.AbstractAdaptiveStepSizeController

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return type(self)(self.controller.wrap(direction))


class CountingController(_WrappingController):
    """`controller` (any diffrax adaptive controller) deciding from a self-controlled
    solver's error estimate, with the solver's work counted in a `SolverStats`.

    State: `(controller's state, SolverStats)`.
    """

    @property
    def norm(self):
        return ReportingNorm(self.controller.norm, False)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, inner = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        # (diffrax 0.7's controllers choose a missing dt0 without evaluating f inside
        # diffeqsolve: 0.01. `stiffnode.solve` passes its own, counted there.)
        return tnext, (inner, SolverStats.zero())

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        report = _report(y_error, self)
        inner, stats = controller_state
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, report.error, error_order, inner
        )
        stats = stats.add(jax.lax.stop_gradient(report), keep)
        return keep, tprev, tnext, made_jump, (inner, stats), result


class NonFiniteMonitor(_WrappingController):
    """`controller`, also recording where a step attempt gave a non-finite candidate state
    (the vector field returned NaN or inf there): state `(controller's state, t)`, with `t`
    the start of the latest such attempt (NaN if none). The attempt itself is rejected by
    `controller` as usual (its error estimate is inf)."""

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, inner = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (inner, jnp.full((), jnp.nan, jnp.result_type(t0)))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        inner, t_bad = controller_state
        keep, tprev, tnext, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        finite = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(y1_candidate)]
        bad = ~jnp.all(jnp.stack(finite))
        t_bad = jnp.where(bad, jnp.asarray(t0, t_bad.dtype), t_bad)
        return keep, tprev, tnext, made_jump, (inner, t_bad), result


def solver_stats_of(controller_state) -> SolverStats | None:
    """The `SolverStats` inside a controller state (also through `ClipStepSizeController`,
    which nests its inner controller's state), or None."""
    for leaf in jax.tree.leaves(controller_state, is_leaf=lambda x: isinstance(x, SolverStats)):
        if isinstance(leaf, SolverStats):
            return leaf
    return None
