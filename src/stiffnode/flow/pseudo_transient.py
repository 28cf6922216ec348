"""The gradient flow with steps chosen by the loss: pseudo-transient continuation.

Each update is one linearly implicit (Rosenbrock-Euler) step of `dtheta/dt = -grad L`,

    (I / h + C) d = -grad L(theta),    theta <- theta + d,

with `C` the loss's curvature (Gauss-Newton for an `AbstractOutputLoss`, else the Hessian),
solved on one Lanczos (conjugate-gradient) space per update that every attempt of the
update shares. Small `h` is a gradient-descent step of length `h`; as `h` grows the step
tends to the (Gauss-)Newton step. `h` is set by how well the quadratic model predicted the
loss's decrease, `rho = (L(theta) - L(theta + d)) / (model decrease)`, as a trust region's
radius is (Kelley & Keyes 1998; Luo, Kelley, Liao & Tam 2006; Nielsen 1999): the flow's
transient is skipped wherever the model can be trusted, followed where it cannot. With the
Gauss-Newton matrix this is Levenberg-Marquardt's step with damping `1 / h`, matrix-free.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from .._validation import positive_int, positive_number
from ..stiffness.lanczos import lanczos_basis, shifted_solve
from .losses import linearize
from .state import FLOW_STAT_KEYS, GradientFlowState, accumulate_stats
from .vector_field import LossFn

GROW_ABOVE = 0.1
"""`h` triples after an accepted step with `rho` above this (Nielsen's rule would only
grow it near `rho = 1`: on the Alpine02 ResNet `rho` stays near 0.5, `h` near 0.5, and
310 updates reach Adam's loss against 191 with this rule; sinc, Poisson and digits within
5% either way)."""


class PseudoTransientState(NamedTuple):
    """The flow's bookkeeping (`flow.time` is the pseudo-time `sum h` of the accepted
    steps; `flow.stats` count attempts, gradients (`num_vf_evals`), curvature products
    (`num_jvp_evals`) and conjugate-gradient iterations (`num_newton_iters`)), the step `h`
    for the next update (0 until the first update sets it) and the factor by which `1 / h`
    grows at the next rejection."""

    flow: GradientFlowState
    step: Float[Array, ""]
    growth: Float[Array, ""]


def _stats(attempts, accepted, products, cg_iters) -> dict[str, Array]:
    counts = dict.fromkeys(FLOW_STAT_KEYS, 0) | {
        "num_steps": attempts,
        "num_accepted_steps": accepted,
        "num_rejected_steps": attempts - accepted,
        "num_vf_evals": 1,
        "num_jac_evals": 1,
        "num_jvp_evals": products,
        "num_newton_iters": cg_iters,
    }
    return {k: jnp.asarray(v, jnp.int32) for k, v in counts.items()}


def pseudo_transient(
    loss_fn: LossFn,
    *,
    initial_step: float | None = None,
    cg_rtol: float = 0.1,
    max_cg_iters: int = 50,
    max_attempts: int = 8,
    accept_ratio: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """Training as the gradient flow `dtheta/dt = -grad L`, each update one linearly
    implicit step `(I / h + C) d = -grad L` whose pseudo-time step `h` the loss chooses.

    `C` is the Gauss-Newton matrix when `loss_fn` is built by `flow.least_squares` or
    `flow.classification` (positive semi-definite: every step decreases the model), else the
    Hessian (indefinite: the shift `1 / h` is floored at 1.1 times the most negative
    eigenvalue of the Lanczos space's tridiagonal matrix, so the step's matrix stays
    positive definite on it). An attempt
    whose loss decrease is below `accept_ratio` times the model's prediction is retried
    with `h` shrunk (at most `max_attempts` per update; the update is zero if none is
    accepted).

    Use it like any optax optimizer; the incoming `updates` are ignored and `params` are
    required; keyword arguments of `update` go to `loss_fn(params, **kwargs)`:

        opt = pseudo_transient(flow.least_squares(residual_fn))
        updates, state = opt.update(grads, state, params, **batch)

    Args:
        loss_fn: `loss_fn(params, **batch) -> scalar`, or a `flow.AbstractOutputLoss`.
        initial_step: the first `h`; by default `1 / (g^T C g / g^T g)`, the step along the
            gradient `g` that minimises the quadratic model.
        cg_rtol: the linear solve stops at `||residual|| <= cg_rtol ||grad L||` (0.1: an
            inexact Newton step; 1e-3 took 15-33% fewer updates on the sinc and digits
            tasks of `studies.optimizer_race` but more wall time on all but sinc).
        max_cg_iters: at most this many curvature products per attempt.
        max_attempts: attempts per update.
        accept_ratio: the least `rho` accepted.
    """
    positive_number("initial_step", initial_step, allow_none=True)
    positive_number("cg_rtol", cg_rtol)
    positive_int("max_cg_iters", max_cg_iters)
    positive_int("max_attempts", max_attempts)
    if not 0 <= accept_ratio < 0.25:
        raise ValueError(f"accept_ratio must be in [0, 0.25), got {accept_ratio!r}")

    def init(params: PyTree[Array]) -> PseudoTransientState:
        dtype = ravel_pytree(params)[0].dtype
        zeros = {k: jnp.zeros((), jnp.int32) for k in FLOW_STAT_KEYS}
        flow = GradientFlowState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype), zeros, zeros)
        return PseudoTransientState(flow, jnp.zeros((), dtype), jnp.full((), 2.0, dtype))

    def update(
        updates: PyTree[Array],
        state: PseudoTransientState,
        params: PyTree[Array] | None = None,
        **batch: Any,
    ) -> tuple[PyTree[Array], PseudoTransientState]:
        del updates
        if params is None:
            raise ValueError(
                "pseudo_transient needs the parameters: optimizer.update(updates, state, params)"
            )
        theta, unravel = ravel_pytree(params)
        lin = linearize(loss_fn, theta, unravel, batch)
        g = lin.grad
        gg = jnp.vdot(g, g)

        def first_step():
            if initial_step is not None:
                return jnp.asarray(initial_step, theta.dtype)
            gcg = jnp.vdot(g, lin.curvature(g))
            return jnp.where(gcg > 0, gg / jnp.where(gcg > 0, gcg, 1.0), 1.0)

        h0 = jax.lax.cond(state.step > 0, lambda: state.step, first_step)
        products0 = jnp.where(state.step > 0, 0, 1 if initial_step is None else 0)

        basis = lanczos_basis(
            lin.curvature, g, shift=1.0 / h0, rtol=cg_rtol, max_iters=max_cg_iters
        )
        # A shift that keeps `C + I / h` positive definite on the basis (the Hessian may be
        # indefinite; the Gauss-Newton matrix never is).
        if lin.positive:
            floor = jnp.zeros((), theta.dtype)
        else:
            lowest = jax.scipy.linalg.eigh_tridiagonal(
                basis.alphas, basis.betas[:-1], eigvals_only=True
            )[0]
            floor = 1.1 * jnp.maximum(0.0, -lowest)

        def attempt(carry):
            tries, h, growth, *_ = carry
            damping = jnp.maximum(1.0 / h, floor)
            y = shifted_solve(basis, damping)
            d = -(basis.V.T @ y)
            # The model's decrease: -(g.d + d.C d / 2), with g = ||g|| V[0] and V C V^T = T.
            predicted = basis.norm_b * y[0] - 0.5 * basis.quadratic_form(y)
            trial = loss_fn(unravel(theta + d), **batch)
            rho = (lin.loss - trial) / jnp.where(predicted > 0, predicted, 1.0)
            ok = jnp.isfinite(trial) & (predicted > 0) & (rho >= accept_ratio)
            # h triples while the model is fair (rho > GROW_ABOVE); below, Nielsen's rule
            # shrinks it 1.5-2x; a rejection divides it by `growth`, doubled each time.
            factor = jnp.where(rho > GROW_ABOVE, 3.0, 1.0 / (1.0 - (2.0 * rho - 1.0) ** 3))
            taken = jnp.where(ok, 1.0 / damping, 0.0)
            h = jnp.where(ok, factor / damping, 1.0 / (damping * growth))
            growth = jnp.where(ok, 2.0, 2.0 * growth)
            return (
                tries + 1,
                h.astype(theta.dtype),
                growth.astype(theta.dtype),
                ok,
                taken.astype(theta.dtype),
                jnp.where(ok, d, 0.0),
            )

        stationary = basis.norm_b == 0  # (no step to take; h and growth kept)

        def not_done(carry):
            tries, _, _, ok, *_ = carry
            return (~ok) & (tries < max_attempts) & ~stationary

        start = (
            jnp.array(0, jnp.int32),
            h0,
            state.growth,
            jnp.array(False),
            jnp.zeros((), theta.dtype),
            jnp.zeros_like(theta),
        )
        tries, h, growth, ok, taken, d = jax.lax.while_loop(not_done, attempt, start)
        h = jnp.where(stationary, h0, h)
        growth = jnp.where(stationary, state.growth, growth)
        products = products0 + basis.num_iters
        window = _stats(tries, ok.astype(jnp.int32), products, basis.num_iters)
        flow = state.flow
        flow = GradientFlowState(
            flow.count + 1,
            flow.time + taken,
            accumulate_stats(flow.stats, window),
            window,
        )
        return unravel(d), PseudoTransientState(flow, h, growth)

    return optax.GradientTransformationExtraArgs(init, update)
