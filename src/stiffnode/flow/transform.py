"""Gradient-flow training as an optax optimizer: each update solves the flow over a window."""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree

from .._validation import positive_int, positive_number
from ..solve import get_solver, solve
from ..solvers import BDF, AutoSwitch, Rodas3, Rodas5P, Rosenbrock23
from .pseudo_transient import pseudo_transient
from .state import FLOW_STAT_KEYS, GradientFlowState, accumulate_stats
from .vector_field import GradientFlowField, LossFn

STIFF_SOLVERS = (
    "kvaerno3", "kvaerno4", "kvaerno5", "implicit_euler", "bdf", "ndf", "rodas3", "rodas5p",
    "rosenbrock23",
)  # fmt: skip

Schedule = Callable[[Int[Array, ""]], Float[Array, ""]]

MAX_DENSE_PARAMS = 1000
"""`linear_solver="auto"` uses dense Hessians up to this many parameters."""

FLOW_GMRES_RTOL = 0.1
"""GMRES residual tolerance of BDF/NDF and Rodas3 by name (Rodas3 uses at most the flow's
rtol). Measured for BDF (inexact Newton) on the digits MLP flow (1,210 parameters, rtol =
atol = 0.1): 0.1 needs 962 Hessian-vector products to Adam's loss, BDF's default 1e-3 needs
2,789, with the same steps and gradients."""


def _value(name: str, x: float | Schedule, count) -> Array:
    """`x`, or the schedule `x` at `count`, checked to be finite and positive when used (at
    run time, also under `jit`: a negative window would run the flow backwards, i.e.
    gradient ascent)."""
    if not callable(x):
        return jnp.asarray(x)
    value = jnp.asarray(x(count))
    return eqx.error_if(
        value,
        ~jnp.all(jnp.isfinite(value) & (value > 0)),
        f"gradient_flow: the {name} schedule returned a value that is not finite and positive",
    )


def _check_positive(name: str, x):
    if not callable(x):
        positive_number(f"{name} (a number, or a schedule)", x)


def flow_solver(
    solver: str | diffrax.AbstractSolver, num_params: int, linear_solver: str = "auto"
) -> diffrax.AbstractSolver:
    """The diffrax solver for a flow over `num_params` parameters.

    `linear_solver` applies to BDF/NDF, Rodas3 and Rodas5P by name (and to the BDF that
    `"auto"` switches to when the flow turns stiff): `"lu"` (dense Hessian; BDF
    reuses its LU over steps, Rodas3 factorises once per step), `"gmres"` (Hessian-vector
    products, no matrix, residual tolerance `FLOW_GMRES_RTOL`), `"auto"` (dense up to
    `MAX_DENSE_PARAMS` parameters). Rodas3 is told the flow is autonomous (no `d/dt` term).
    Pass a `stiffnode.solvers.BDF(...)` or `Rodas3(...)` object for other settings. The
    ESDIRK solvers (Kvaerno) always use the dense Hessian.
    """
    if linear_solver not in ("auto", "lu", "gmres"):
        raise ValueError(f"linear_solver must be 'auto', 'lu' or 'gmres', got {linear_solver!r}")
    if not isinstance(solver, str):
        return get_solver(solver)
    name = solver.lower()
    if linear_solver == "auto":
        linear_solver = "lu" if num_params <= MAX_DENSE_PARAMS else "gmres"
    if name in ("bdf", "ndf"):
        return BDF(ndf=name == "ndf", linear_solver=linear_solver, gmres_rtol=FLOW_GMRES_RTOL)
    if name in ("rodas3", "rodas5p", "rosenbrock23"):
        rosenbrock = {"rodas3": Rodas3, "rodas5p": Rodas5P, "rosenbrock23": Rosenbrock23}[name]
        return rosenbrock(linear_solver=linear_solver, gmres_rtol=FLOW_GMRES_RTOL, autonomous=True)
    if name == "auto":  # Tsit5 while the flow is not stiff, then BDF as above
        return AutoSwitch(stiff=flow_solver("bdf", num_params, linear_solver))
    return get_solver(name)


def gradient_flow(
    loss_fn: LossFn,
    solver: str | diffrax.AbstractSolver | None = None,
    window: float | Schedule | None = None,
    rtol: float | Schedule | None = None,
    atol: float | Schedule | None = None,
    *,
    linear_solver: str = "auto",
    max_steps: int = 4096,
) -> optax.GradientTransformationExtraArgs:
    """Training as an ODE: the gradient flow `dtheta/dt = -grad L(theta)` as an optax
    optimizer, in one of two modes.

    **Steps chosen by the loss** (`solver=None`, the default, and the fast way to train):
    `pseudo_transient(loss_fn)`, one linearly implicit step per update whose pseudo-time
    step grows while the loss falls as its quadratic model predicts (towards the
    Gauss-Newton step for `flow.least_squares` / `flow.classification` losses, the Newton
    step otherwise). The transient of the flow is skipped, not followed.

    **The flow followed to a tolerance** (a `solver` given): each update moves the
    parameters along the flow for flow time `window`, `updates = theta(t + window) -
    theta(t)`, solved by `solver` with `stiffnode.solve` (the seed's setting, and what the
    scipy comparison measures).

    Gradient descent with learning rate `eta` is explicit Euler on this flow with step
    `eta`; here an adaptive (and, for stiff solvers, implicit) method picks the steps. The
    stiff solvers' Jacobian is `-Hessian(L)` from autodiff: dense, or as Hessian-vector
    products (`linear_solver`).

    Use it like any optax optimizer; `params` are required (the flow evaluates gradients
    itself), and the incoming `updates` (usually the gradient) are ignored:

        opt = gradient_flow(flow.least_squares(residual_fn))      # or any loss_fn
        opt = gradient_flow(loss_fn, solver="bdf", window=1.0)    # the flow followed
        state = opt.init(params)
        updates, state = opt.update(grads, state, params, batch=batch)
        params = optax.apply_updates(params, updates)

    Keyword arguments given to `update` are passed to `loss_fn(params, **kwargs)`. With a
    new minibatch at each update this integrates a different (stochastic) loss's flow per
    window: a minibatch gradient flow, not the flow of the full loss.

    Args:
        loss_fn: `loss_fn(params, **loss_kwargs) -> scalar`, or a loss built by
            `flow.least_squares` / `flow.classification` (positive curvature).
        solver: None (steps chosen by the loss), or a name (`"tsit5"`, `"dopri5"`,
            `"kvaerno5"`, `"bdf"`, `"rodas3"`, any of `stiffnode.SOLVERS`) or a diffrax
            solver for the flow followed to a tolerance.
        window: flow time per update, a number or a schedule `count -> window` (e.g. an
            optax schedule, to lengthen windows as training proceeds).
        rtol, atol: the solver's local error tolerances per parameter, `atol + rtol
            |theta_i|` (see `stiffnode.solve`); numbers or schedules `count -> value`, e.g.
            loose at first and tighter later. They bound how closely the steps follow the
            flow, not the loss reached.
        linear_solver: `"auto"`, `"lu"` or `"gmres"` (BDF/NDF/Rodas3 by name; see
            `flow_solver`).
        max_steps: step budget per window; exhausting it is an error.

    The state (`GradientFlowState`, inside a `PseudoTransientState` for the default) counts
    the updates, the flow time and the solver work.
    """
    if solver is None:
        given = [
            name
            for name, value, default in (
                ("window", window, None),
                ("rtol", rtol, None),
                ("atol", atol, None),
                ("linear_solver", linear_solver, "auto"),
                ("max_steps", max_steps, 4096),
            )
            if value != default
        ]
        if given:
            raise ValueError(
                f"gradient_flow: {', '.join(given)} set the error-controlled flow, which needs "
                "a solver (e.g. solver='bdf'); without one the loss chooses the steps "
                "(see flow.pseudo_transient for its settings)"
            )
        return pseudo_transient(loss_fn)
    window = 1.0 if window is None else window
    rtol = 1e-3 if rtol is None else rtol
    atol = 1e-6 if atol is None else atol
    for name, x in (("window", window), ("rtol", rtol), ("atol", atol)):
        _check_positive(name, x)
    positive_int("max_steps", max_steps)
    # Unknown names and solvers without an error estimate fail here, not at the first update.
    if not isinstance(flow_solver(solver, 1, linear_solver), diffrax.AbstractAdaptiveSolver):
        raise ValueError(
            f"gradient_flow needs an adaptive solver (one with an error estimate): {solver!r} "
            "takes fixed steps only; use e.g. 'bdf', 'rodas3' or 'tsit5'"
        )
    field = GradientFlowField(loss_fn)

    def init(params: PyTree[Array]) -> GradientFlowState:
        dtype = ravel_pytree(params)[0].dtype
        zeros = {k: jnp.zeros((), jnp.int32) for k in FLOW_STAT_KEYS}
        return GradientFlowState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype), zeros, zeros)

    def update(
        updates: PyTree[Array],
        state: GradientFlowState,
        params: PyTree[Array] | None = None,
        **loss_kwargs: Any,
    ) -> tuple[PyTree[Array], GradientFlowState]:
        if params is None:
            raise ValueError(
                "gradient_flow needs the parameters: optimizer.update(updates, state, params)"
            )
        num_params = ravel_pytree(params)[0].size
        stepper = flow_solver(solver, num_params, linear_solver)
        t0 = state.time
        t1 = t0 + _value("window", window, state.count).astype(t0.dtype)
        sol = solve(
            field,
            params,
            t0,
            t1,
            solver=stepper,
            rtol=_value("rtol", rtol, state.count),
            atol=_value("atol", atol, state.count),
            args=loss_kwargs,
            max_steps=max_steps,
        )
        end = jtu.tree_map(lambda y: y[-1], sol.ys)
        new_updates = jtu.tree_map(jnp.subtract, end, params)
        window_stats = {k: sol.stats[k].astype(jnp.int32) for k in FLOW_STAT_KEYS}
        return new_updates, GradientFlowState(
            state.count + 1, t1, accumulate_stats(state.stats, window_stats), window_stats
        )

    return optax.GradientTransformationExtraArgs(init, update)
