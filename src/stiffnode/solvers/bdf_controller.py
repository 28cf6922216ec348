"""The step-size controller of `BDF`: it follows the solver's own step and order choices,
supplies the tolerances and the first step, and counts all the work."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, Int

from .initial_step import initial_step_size

STAT_KEYS = (
    "num_vf_evals",
    "num_jac_evals",
    "num_jvp_evals",
    "num_lu_decompositions",
    "num_newton_iters",
    "num_newton_failures",
    "num_error_test_failures",
)


class BDFStepReport(eqx.Module):
    """What a `BDF` step tells its controller, in place of diffrax's error estimate.

    Every leaf is a float scalar (diffrax passes error estimates through `jnp.where`).
    """

    accepted: Float[Array, ""]
    next_dt: Float[Array, ""]
    order: Float[Array, ""]
    counts: Float[Array, "7"]  # this attempt's work, in the order of STAT_KEYS

    @classmethod
    def of(
        cls,
        *,
        accepted,
        next_dt,
        order,
        num_vf_evals,
        num_jac_evals,
        num_jvp_evals,
        num_lu_decompositions,
        num_newton_iters,
        newton_failure,
        error_test_failure,
    ):
        dtype = jnp.result_type(next_dt)
        counts = jnp.stack(
            [
                num_vf_evals,
                num_jac_evals,
                num_jvp_evals,
                num_lu_decompositions,
                num_newton_iters,
                newton_failure,
                error_test_failure,
            ]
        ).astype(dtype)
        return cls(jnp.asarray(accepted, dtype), next_dt, jnp.asarray(order, dtype), counts)

    def _misuse(self, *_):
        raise TypeError(
            "stiffnode.solvers.BDF chooses its own step sizes and orders: use it with "
            "stepsize_controller=stiffnode.solvers.BDFController(rtol=..., atol=...) "
            "(stiffnode.solve(..., solver='bdf') does this), not with another controller"
        )

    __truediv__ = __rtruediv__ = __mul__ = __rmul__ = __abs__ = _misuse


class BDFStats(eqx.Module):
    """Work of a BDF solve, rejected attempts included (int32 scalars)."""

    counts: Int[Array, "7"]  # STAT_KEYS
    steps_per_order: Int[Array, "6"]  # accepted steps taken with order k, k = 0..5

    def as_dict(self) -> dict[str, Array]:
        out = {key: self.counts[..., i] for i, key in enumerate(STAT_KEYS)}
        out["num_steps_per_order"] = self.steps_per_order[..., 1:]
        return out


class BDFController(diffrax.AbstractAdaptiveStepSizeController):
    """Accepts or rejects each `BDF` step as the solver decided and moves to the step size it
    chose; `rtol`/`atol` (and `norm`) are handed to the solver by `diffeqsolve`.

    Args:
        rtol, atol: tolerances of the local error test (see `BDF`).
        norm: the norm of the scaled error (RMS by default, as scipy and CVODE use).
        dtmax: largest step size allowed (None: no limit).
        dtmin: smallest; a step the solver wants below it ends the solve with
            `RESULTS.dt_min_reached`. The solve also ends there when the step underflows
            (below ten times the spacing of floating-point times at `t`).
    """

    rtol: float
    atol: float
    norm: Callable = optx.rms_norm
    dtmax: float | None = None
    dtmin: float | None = None

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
        stats = BDFStats(
            counts=jnp.zeros(len(STAT_KEYS), jnp.int32).at[0].set(evals),
            steps_per_order=jnp.zeros(6, jnp.int32),
        )
        return t0 + dt0, stats

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        if not isinstance(y_error, BDFStepReport):
            raise TypeError(
                "BDFController only works with stiffnode.solvers.BDF (got an error estimate "
                f"of type {type(y_error).__name__})"
            )
        report = jax.lax.stop_gradient(y_error)
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
        counts = controller_state.counts + jnp.round(report.counts).astype(jnp.int32)
        order = jnp.round(report.order).astype(jnp.int32)
        per_order = controller_state.steps_per_order.at[order].add(accept.astype(jnp.int32))
        return accept, tprev, tnext, False, BDFStats(counts, per_order), result
