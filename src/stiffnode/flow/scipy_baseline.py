"""Gradient-flow training with scipy's ODE solvers, the baseline the JAX solvers are compared to.

`dtheta/dt = -grad L(theta)`, `theta(0) = theta_0`, solved on `[0, t1]` by `scipy.integrate`
(LSODA, BDF, Radau or RK45 as `solve_ivp` runs them, or VODE/ZVODE through `scipy.integrate.ode`)
with the gradient, and optionally the Hessian, from jitted JAX functions. `jacobian="fd"` leaves
the ODE Jacobian to scipy's finite differences, the setting (with `rtol=1e-6`, `atol=1e-8`) of
the experiment this baseline re-creates.

Precision: the gradient is evaluated in the dtype of the flattened parameters, so the flow is
float64 only when `jax_enable_x64` is on and the parameters are float64. This module sets no JAX
configuration. scipy's finite-difference Jacobians perturb by about `1e-8 |theta_j|`, below
float32 resolution: use float64 for `jacobian="fd"`.
"""

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Float, PyTree

from .._validation import positive_number
from .vector_field import dense_hessian

SOLVE_IVP_METHODS = ("LSODA", "BDF", "Radau", "RK45")
ODE_METHODS = ("vode", "zvode")
METHODS = SOLVE_IVP_METHODS + ODE_METHODS
JACOBIANS = ("fd", "autodiff")


@dataclasses.dataclass(frozen=True, eq=False)
class ScipyFlowResult:
    """What `scipy_gradient_flow` reached, what it saved and what it spent.

    Attributes:
        params: the parameters at time `t`, as a pytree like the input.
        t: the time reached: `t1` when `finished`, else the last accepted step.
        finished: whether the solve reached `t1`.
        ts, thetas, losses: the requested `t_eval` times reached, the flat parameters there
            (`(len(ts), num_params)`) and the loss there (evaluated after the timed solve).
        loss: the loss at `params` (evaluated after the timed solve).
        num_params: length of the flat parameter vector.
        num_grad_evals: calls of the right-hand side `-grad L`, including those scipy spends on
            finite-difference Jacobians.
        num_jac_evals: Jacobian evaluations (autodiff Hessians or finite-difference Jacobians).
        num_lu: LU factorisations, -1 where the solver does not report them.
        num_steps: accepted steps.
        wall_time: seconds spent in the solve (perf_counter), JIT compilation excluded.
        wall_time_to_t: seconds until the step that reached `t` was accepted (`wall_time`
            when finished): a stopped run's time to the point it reached.
        method, jacobian: as passed.
        message: how the solve ended.
    """

    params: PyTree
    t: float
    finished: bool
    ts: Float[np.ndarray, " k"]
    thetas: Float[np.ndarray, "k n"]
    losses: Float[np.ndarray, " k"]
    loss: float
    num_params: int
    num_grad_evals: int
    num_jac_evals: int
    num_lu: int
    num_steps: int
    wall_time: float
    wall_time_to_t: float
    method: str
    jacobian: str
    message: str

    def stats(self) -> dict[str, Any]:
        """The scalar fields as a JSON-ready dict (Python ints, floats, bools and strings)."""
        return {
            "method": self.method,
            "jacobian": self.jacobian,
            "finished": bool(self.finished),
            "t": float(self.t),
            "loss": float(self.loss),
            "num_params": int(self.num_params),
            "num_grad_evals": int(self.num_grad_evals),
            "num_jac_evals": int(self.num_jac_evals),
            "num_lu": int(self.num_lu),
            "num_steps": int(self.num_steps),
            "wall_time": float(self.wall_time),
            "wall_time_to_t": float(self.wall_time_to_t),
            "message": str(self.message),
        }


class _WallTimeExceeded(Exception):
    """Raised inside the right-hand side once `max_wall_time` has passed."""


def _check_t_eval(t_eval, t1: float) -> np.ndarray:
    if t_eval is None:
        return np.zeros(0)
    ts = np.asarray(t_eval, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"t_eval must be one-dimensional, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise ValueError("t_eval contains NaN or inf")
    if ts.size and (ts[0] < 0 or ts[-1] > t1):
        raise ValueError(f"t_eval must lie in [0, t1] = [0, {t1}], got [{ts[0]}, {ts[-1]}]")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("t_eval must be strictly increasing")
    return ts


class _Counted:
    """The numpy-facing ODE right-hand side `-g(y)` and Jacobian `-H(y)`, counting calls and
    raising `_WallTimeExceeded` once `deadline` (perf_counter seconds) has passed."""

    def __init__(self, grad, hess, dtype, is_complex: bool):
        self.grad, self.hess, self.dtype, self.is_complex = grad, hess, dtype, is_complex
        self.num_grad_evals = 0
        self.num_jac_evals = 0
        self.deadline: float | None = None
        # VODE/ZVODE (Fortran through f2py) cannot be unwound from inside a callback: an
        # exception raised in their finite-difference Jacobian loop killed the interpreter
        # (4,281 parameters). They check the deadline between steps only.
        self.check_in_callbacks = True
        self.accepted_at: float | None = None  # perf_counter when the last step was accepted

    def _check_time(self):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _WallTimeExceeded

    def _check_time_in_callback(self):
        if self.check_in_callbacks:
            self._check_time()

    def _jax_in(self, y):
        # A numpy array of the parameters' dtype goes to the jitted function as is: same
        # result as `jnp.asarray(y, dtype)`, at a sixth of the per-call cost (25 us, not 160).
        return np.asarray(np.real(y) if self.is_complex else y, dtype=self.dtype)

    def _out(self, a) -> np.ndarray:
        return -np.asarray(a, dtype=np.complex128 if self.is_complex else np.float64)

    def rhs(self, t, y):
        self._check_time_in_callback()
        self.num_grad_evals += 1
        return self._out(self.grad(self._jax_in(y)))

    def jac(self, t, y):
        self._check_time_in_callback()
        self.num_jac_evals += 1
        return self._out(self.hess(self._jax_in(y)))


def scipy_gradient_flow(
    loss_fn: Callable[..., Any],
    params: PyTree,
    t1: float,
    *,
    method: str = "LSODA",
    jacobian: str = "fd",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    t_eval=None,
    max_wall_time: float | None = None,
    loss_args: tuple = (),
) -> ScipyFlowResult:
    """Solve the gradient flow `dtheta/dt = -grad L(theta)` from `params` to `t1` with scipy.

    Parameters
    ----------
    loss_fn
        `loss_fn(params, *loss_args) -> scalar`, a JAX function.
    params
        The initial parameters, any pytree. Its floating-point array leaves (e.g. an equinox
        model's weights) are the state, raveled into one vector; other leaves stay fixed.
    t1
        The final time, > 0 (the flow starts at 0).
    method
        "LSODA", "BDF", "Radau", "RK45" (scipy's `solve_ivp` classes, stepped one step at a
        time as `solve_ivp` does), "vode" or "zvode" (`scipy.integrate.ode` with
        `method="bdf"`; zvode integrates the complexified state). Measured with scipy 1.17.1:
        its C translation of real VODE takes steps of about `1 / lambda_max` on stiff
        systems (n >= 2), as if explicit; ZVODE does not.
    jacobian
        "fd": no Jacobian is passed, scipy forms it by finite differences of the right-hand
        side. "autodiff": the Jacobian `-H` from a jitted dense Hessian of the loss
        (`dense_hessian`, `n x n`, for small models). RK45 uses no Jacobian and accepts only "fd".
    rtol, atol
        scipy's local error control, per parameter (not on the loss): a weighted norm (RMS;
        the max norm in LSODA) of each step's error estimate `e_i / (atol + rtol |theta_i|)`
        must be <= 1.
    t_eval
        Increasing times in [0, t1] at which to save the flat parameters and the loss (scipy's
        dense output, or VODE's interpolation).
    max_wall_time
        Seconds after which to stop (checked at every right-hand side call and every step;
        vode/zvode at every step only, so they may overrun by one step); the result then has
        `finished=False` and the last accepted step's time and state.
    loss_args
        Extra arguments of `loss_fn`; their arrays are traced, the rest held fixed.

    Returns
    -------
    ScipyFlowResult
        The parameters reached, the saved states and losses, and the work counts:
        `num_grad_evals` counts every right-hand side call (the ones spent on finite-difference
        Jacobians included); `num_jac_evals` is scipy's `njev` for the `solve_ivp` methods, the
        Hessian calls for vode/zvode with "autodiff" and VODE's `NJE` with "fd"; `num_lu` is
        scipy's `nlu` (for LSODA equal to `njev`) or VODE's `NLU` (-1 for RK45);
        `num_steps` counts accepted steps. `wall_time` covers the solver only: the functions
        are compiled before the clock starts and the losses computed after it stops.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
    if jacobian not in JACOBIANS:
        raise ValueError(f"unknown jacobian {jacobian!r}; use one of {list(JACOBIANS)}")
    if method == "RK45" and jacobian != "fd":
        raise ValueError('RK45 is explicit and uses no Jacobian; use jacobian="fd"')
    t1 = positive_number("t1", t1)
    rtol = positive_number("rtol", rtol)
    atol = positive_number("atol", atol)
    if max_wall_time is not None:
        max_wall_time = positive_number("max_wall_time", max_wall_time)
    ts_req = _check_t_eval(t_eval, t1)
    if not isinstance(loss_args, tuple):
        raise TypeError(f"loss_args must be a tuple, got {type(loss_args).__name__}")

    dynamic, static = eqx.partition(params, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(dynamic)
    if flat.size == 0:
        raise ValueError("params has no floating-point array leaves to evolve")
    theta0 = np.asarray(flat, dtype=np.float64)
    if not np.all(np.isfinite(theta0)):
        raise ValueError("params contain NaN or inf")
    dtype = np.dtype(flat.dtype)
    args_dyn, args_static = eqx.partition(loss_args, eqx.is_array)

    def flat_loss(x, a):
        return loss_fn(eqx.combine(unravel(x), static), *eqx.combine(a, args_static))

    loss_jit = jax.jit(flat_loss)
    grad_jit = jax.jit(jax.grad(flat_loss))
    hess_jit = (
        jax.jit(lambda x, a: dense_hessian(lambda z: flat_loss(z, a), x))
        if jacobian == "autodiff"
        else None
    )

    x0 = jnp.asarray(theta0, dtype=dtype)
    loss0 = loss_jit(x0, args_dyn)
    if jnp.shape(loss0) != ():
        raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss0)}")
    jax.block_until_ready(grad_jit(x0, args_dyn))  # compile outside the clock
    if hess_jit is not None:
        jax.block_until_ready(hess_jit(x0, args_dyn))

    fns = _Counted(
        lambda x: grad_jit(x, args_dyn),
        None if hess_jit is None else (lambda x: hess_jit(x, args_dyn)),
        dtype,
        is_complex=method == "zvode",
    )
    run = _run_solve_ivp if method in SOLVE_IVP_METHODS else _run_ode
    start = time.perf_counter()
    if max_wall_time is not None:
        fns.deadline = start + max_wall_time
    fns.accepted_at = start
    out = run(fns, method, theta0, t1, rtol, atol, ts_req)
    wall_time = time.perf_counter() - start
    wall_time_to_t = wall_time if out["finished"] else fns.accepted_at - start

    def loss_at(theta):
        return float(loss_jit(jnp.asarray(theta, dtype=dtype), args_dyn))

    thetas = np.asarray(out["thetas"], dtype=np.float64).reshape(-1, theta0.size)
    return ScipyFlowResult(
        params=eqx.combine(unravel(jnp.asarray(out["y"], dtype=dtype)), static),
        t=float(out["t"]),
        finished=bool(out["finished"]),
        ts=np.asarray(out["ts"], dtype=np.float64),
        thetas=thetas,
        losses=np.array([loss_at(th) for th in thetas], dtype=np.float64),
        loss=loss_at(out["y"]),
        num_params=int(theta0.size),
        num_grad_evals=fns.num_grad_evals,
        num_jac_evals=int(out["num_jac_evals"]),
        num_lu=int(out["num_lu"]),
        num_steps=int(out["num_steps"]),
        wall_time=wall_time,
        wall_time_to_t=wall_time_to_t,
        method=method,
        jacobian=jacobian,
        message=out["message"],
    )


def _stopped_message(t: float) -> str:
    return f"stopped: max_wall_time exceeded at t={t:.6g}"


def _saves_at_zero(ts_req, theta0) -> tuple[list, list, int]:
    """The saves requested at t = 0 (the initial state), and the index of the next one."""
    k = int(np.sum(np.asarray(ts_req) == 0.0))
    return [0.0] * k, [theta0.copy() for _ in range(k)], k


def _run_solve_ivp(fns: _Counted, method, theta0, t1, rtol, atol, ts_req) -> dict:
    """Step a `solve_ivp` solver class to `t1` exactly as `solve_ivp` does, keeping the last
    accepted `(t, y)` so that a stop inside a step returns a state the solver accepted."""
    ts, thetas, k = _saves_at_zero(ts_req, theta0)
    t, y = 0.0, theta0.copy()
    kwargs = {} if method == "RK45" else {"jac": fns.jac if fns.hess is not None else None}
    import scipy.integrate  # here, not at import time: `stiffnode` imports this module

    solver_cls = getattr(scipy.integrate, method)
    out = {"num_jac_evals": 0, "num_lu": -1 if method == "RK45" else 0, "num_steps": 0}
    finished, message = False, ""
    solver = None
    try:
        solver = solver_cls(fns.rhs, 0.0, theta0, t1, rtol=rtol, atol=atol, **kwargs)
        while True:
            fns._check_time()
            step_message = solver.step()
            if solver.status == "failed":
                message = f"{method} failed: {step_message}"
                break
            out["num_steps"] += 1
            t, y = solver.t, solver.y.copy()
            fns.accepted_at = time.perf_counter()
            if k < len(ts_req) and ts_req[k] <= t:
                dense = solver.dense_output()
                while k < len(ts_req) and ts_req[k] <= t:
                    ts.append(ts_req[k])
                    thetas.append(y.copy() if ts_req[k] == t else dense(ts_req[k]))
                    k += 1
            if solver.status == "finished":
                finished, message = True, "reached t1"
                break
    except _WallTimeExceeded:
        message = _stopped_message(t)
    if solver is not None:
        out["num_jac_evals"] = solver.njev
        if method != "RK45":
            out["num_lu"] = solver.nlu
    out.update(t=t1 if finished else t, y=y, finished=finished, message=message)
    out.update(ts=ts, thetas=thetas)
    return out


def _run_ode(fns: _Counted, method, theta0, t1, rtol, atol, ts_req) -> dict:
    """Step VODE/ZVODE (`ode.integrate(t1, step=True)`, one internal step per call, which may
    overshoot `t1`) and interpolate back to the `t_eval` points and to `t1`."""
    is_complex = method == "zvode"
    y0 = theta0.astype(np.complex128) if is_complex else theta0.copy()
    has_jac = fns.hess is not None
    fns.check_in_callbacks = False
    import scipy.integrate

    solver = scipy.integrate.ode(fns.rhs, fns.jac if has_jac else None)
    solver.set_integrator(method, method="bdf", with_jacobian=True, rtol=rtol, atol=atol)
    solver.set_initial_value(y0, 0.0)
    # Where VODE/ZVODE report NST, NJE, NLU in `iwork` (0-based; ZVODE has LENZW before NLU).
    nlu_index = 19 if is_complex else 18

    ts, thetas, k = _saves_at_zero(ts_req, theta0)
    t, y = 0.0, theta0.copy()
    out = {"num_steps": 0}
    finished, message = False, ""
    iwork = None
    with warnings.catch_warnings():
        # scipy warns on failure; the message goes into the result instead.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"scipy\.integrate")
        try:
            while True:
                fns._check_time()
                y_new = solver.integrate(t1, step=True).copy()  # later calls may reuse it
                if not solver.successful():
                    message = _ode_failure(solver, method)
                    break
                iwork = np.array(solver._integrator.iwork)
                out["num_steps"] += 1
                t_new = float(solver.t)
                while k < len(ts_req) and ts_req[k] <= t_new:
                    tk = ts_req[k]
                    yk = y_new.copy() if tk == t_new else solver.integrate(tk).copy()
                    if not solver.successful():
                        raise RuntimeError(f"{method} could not interpolate to t={tk}")
                    ts.append(tk)
                    thetas.append(np.real(yk))
                    k += 1
                if t_new >= t1:
                    y_end = y_new if t_new == t1 else solver.integrate(t1)
                    if not solver.successful():
                        raise RuntimeError(f"{method} could not interpolate to t1={t1}")
                    t, y = t1, np.real(y_end).copy()
                    finished, message = True, "reached t1"
                    break
                t, y = t_new, np.real(y_new).copy()
                fns.accepted_at = time.perf_counter()
        except _WallTimeExceeded:
            message = _stopped_message(t)
    if iwork is not None:
        out["num_jac_evals"] = fns.num_jac_evals if has_jac else int(iwork[12])
        out["num_lu"] = int(iwork[nlu_index])
    else:  # stopped before the first step: VODE's own counts were never returned
        out["num_jac_evals"] = fns.num_jac_evals if has_jac else -1
        out["num_lu"] = -1
    out.update(t=t, y=y, finished=finished, message=message, ts=ts, thetas=thetas)
    return out


def _ode_failure(solver, method: str) -> str:
    code = solver.get_return_code()
    text = getattr(solver._integrator, "messages", {}).get(code, "")
    return f"{method} failed (istate={code}): {text}".rstrip(": ")
