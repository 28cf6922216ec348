"""Regularisers that make a neural ODE cheap to solve, each a term to add to any loss.

All of them come out of one solve, `regularized_solve` (or `regularized_call` for a
`stiffnode` neural ODE model), as a dict of scalars `penalties`:

- `"kinetic"`: `int_t0^t1 ||f(t, y)||^2 dt` (RNODE, Finlay et al. 2020), integrated
  alongside the state.
- `"frobenius"`: `int_t0^t1 ||df/dy||_F^2 dt` (RNODE), exactly (`frobenius="exact"`, d JVPs)
  or by Hutchinson's estimator `||J eps||^2` with one probe `eps` fixed over the solve
  (`frobenius="hutchinson"`, one JVP; `E[||J eps||^2] = ||J||_F^2` when `E[eps eps^T] = I`).
- `"error"`: `sum_j E_j |h_j|` over the accepted steps j of the solve (Pal et al. 2021), where
  `h_j` is the step and `E_j = ||e_j / (atol + rtol max(|y_j|, |y_j+1|))||_rms` is the
  step's scaled local error estimate, exactly the number the PID controller compares with 1.
- `"stiffness"`: `sum_j rho_j` over the accepted steps (Pal et al. 2021), with Shampine's
  stiffness estimate `rho_j = ||f(t1, g7) - f(t1, g6)|| / ||g7 - g6||` (2-norms) from the last
  two stages of Tsit5/Dopri5, both at `t1` (`g7 = y_j+1`): an estimate of the dominant
  eigenvalue's modulus of `df/dy`, at no extra evaluation.
- `"proxy"`: `sum_j p_j |h_j|` over the accepted steps, a stiffness proxy of `J = df/dy`
  at each step's end `(t_j+1, y_j+1)`, computed with JVPs: `proxy="frobenius"`,
  `p = ||J eps||^2` (Hutchinson, `E p = ||J||_F^2`); `proxy="spectral"`, `p = ||J v_K||`
  with `v_K` the unit vector after K power iterations `v <- J v / ||J v||` from `eps`
  (tends to the spectral radius when one real eigenvalue dominates).

Random end time (STEER, Ghosh et al. 2020): `random_end_time(key, T, b)` draws
`t1 ~ U[T - b, T + b]`; pass it as `end_time` to `regularized_call` during training.

The state's error control is unaffected: the PID controller measures only `y`, so a
regularised solve takes the same steps as the plain one. `error`, `stiffness` and `proxy`
are functions of the discrete solve: differentiate them with `adjoint="recursive"` (the
default), not `"backsolve"`. They need an explicit Runge-Kutta solver with an error
estimate, and `stiffness` one whose last two stages sit at `t1` (FSAL: Tsit5, Dopri5).
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Real, Scalar

from ..solve import get_solver, solve
from ..solvers import initial_step_size
from ..solvers.delegating import AbstractDelegatingSolver
from .cnf import probe as _probe

__all__ = [
    "TERMS",
    "Regularized",
    "SolverHeuristics",
    "penalty",
    "random_end_time",
    "regularized_call",
    "regularized_solve",
]

TERMS: tuple[str, ...] = ("kinetic", "frobenius", "error", "stiffness", "proxy")
"""The names of the regularisation terms `regularized_solve` can return (not to be confused
with `training.trials.PENALTIES`, the ResNet training penalties)."""

_INTEGRATED = ("kinetic", "frobenius")
_ACCUMULATED = ("error", "stiffness", "proxy")


def _ravel(tree) -> Array:
    return jnp.concatenate([jnp.ravel(x) for x in jtu.tree_leaves(tree)])


def _frobenius_squared_exact(f, y) -> Scalar:
    _, jvp = jax.linearize(f, y)
    basis = jnp.eye(y.size, dtype=y.dtype).reshape((y.size, *y.shape))
    return jnp.sum(jax.vmap(jvp)(basis) ** 2)


class _RegularizedField(eqx.Module):
    """`(y, r) -> (f(t, y), {kinetic: ||f||^2, frobenius: ||J||_F^2 or ||J eps||^2, ...: 0})`."""

    vector_field: Callable[..., Any]
    names: tuple[str, ...] = eqx.field(static=True)
    frobenius: str | None = eqx.field(static=True)

    def __call__(self, t, state, args):
        y, _ = state
        user_args, eps = args

        def f(z):
            return self.vector_field(t, z, user_args)

        rates = {}
        if self.frobenius == "hutchinson":
            fy, jv = jax.jvp(f, (y,), (eps,))
            rates["frobenius"] = jnp.sum(jv**2)
        else:
            fy = f(y)
            if self.frobenius == "exact":
                rates["frobenius"] = _frobenius_squared_exact(f, y)
        if "kinetic" in self.names:
            rates["kinetic"] = jnp.sum(fy**2)
        zero = jnp.zeros((), y.dtype)
        return fy, {name: rates.get(name, zero) for name in self.names}


def _shampine_weights(tableau: diffrax.ButcherTableau) -> np.ndarray | None:
    """`w` with `g7 - g6 = sum_j w_j k_j` (`k_j = h f_j`), or None if the last two stages do
    not both sit at the step's end."""
    c = np.asarray(tableau.c)
    if not (tableau.fsal and c.size >= 2 and c[-1] == 1 and c[-2] == 1):
        return None
    last, before = np.asarray(tableau.a_lower[-1]), np.asarray(tableau.a_lower[-2])
    w = last.astype(float)  # g7 = y1 = y0 + sum_{j<7} a_7j k_j
    w[: before.size] -= before  # g6 = y0 + sum_{j<6} a_6j k_j
    return np.append(w, 0.0)  # no weight on the FSAL stage k7 = h f(t1, y1)


class SolverHeuristics(AbstractDelegatingSolver):
    """An explicit Runge-Kutta solver that also sums its own step heuristics into the state.

    The state is `(y, r)` with `r` a dict of scalars; the wrapped solver steps it as usual
    (the vector field gives `r`'s accumulated entries zero rate), then, on each step,
    `r["error"] += E |h|`, `r["stiffness"] += rho`, `r["proxy"] += p |h|` (see the module
    docstring). A rejected step is discarded with its increments, so the sums run over the
    accepted steps. The step-size controller should measure `y` only (`y_norm`).
    """

    solver: diffrax.AbstractSolver
    rtol: float
    atol: float
    names: tuple[str, ...] = eqx.field(static=True)
    proxy: str | None = eqx.field(static=True, default=None)
    power_iterations: int = eqx.field(static=True, default=8)

    def __check_init__(self):
        tableau = getattr(self.solver, "tableau", None)
        if not (
            isinstance(self.solver, diffrax.AbstractERK)
            and isinstance(tableau, diffrax.ButcherTableau)
            and tableau.b_error is not None
        ):
            raise ValueError(
                "solver heuristics need an explicit Runge-Kutta solver with an error "
                f"estimate (tsit5, dopri5, ...), got {type(self.solver).__name__}"
            )
        if "stiffness" in self.names and _shampine_weights(tableau) is None:
            raise ValueError(
                "the stiffness estimate needs an FSAL method whose last two stages are at "
                f"the step's end (tsit5, dopri5), got {type(self.solver).__name__}"
            )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        (y_start, _), (y_end, sums) = y0, y1
        h = jnp.abs(t1 - t0)
        sums = dict(sums)
        if "error" in self.names:
            scale = jtu.tree_map(
                lambda a, b: self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)),
                y_start,
                y_end,
            )
            ratio = _ravel(jtu.tree_map(jnp.divide, y_error[0], scale))
            sums["error"] = sums["error"] + jnp.sqrt(jnp.mean(ratio**2)) * h
        if "stiffness" in self.names:
            w = jnp.asarray(_shampine_weights(self.solver.tableau), h.dtype)
            ks = dense_info["k"][0]  # (stages, *y.shape), k_j = h f_j
            dg = jnp.tensordot(w, ks, axes=1)  # g7 - g6
            dk = ks[-1] - ks[-2]  # h (f(t1, g7) - f(t1, g6))
            num, den = jnp.linalg.norm(jnp.ravel(dk)), h * jnp.linalg.norm(jnp.ravel(dg))
            sums["stiffness"] = sums["stiffness"] + jnp.where(
                den > 0, num / jnp.where(den > 0, den, 1), 0.0
            )
        if "proxy" in self.names:
            eps = args[1]

            def f(z):
                return terms.vf(t1, (z, sums), args)[0]

            sums["proxy"] = sums["proxy"] + self._proxy(f, y_end, eps) * h
        return (y_end, sums), y_error, dense_info, solver_state, result

    def _proxy(self, f, y, eps):
        if self.proxy == "frobenius":
            return jnp.sum(jax.jvp(f, (y,), (eps,))[1] ** 2)
        _, jvp = jax.linearize(f, y)
        v = eps / jnp.linalg.norm(eps)
        for _ in range(self.power_iterations):
            u = jvp(v)
            v = u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(u.dtype).tiny)
        return jnp.linalg.norm(jvp(v))


class _StateNorm(eqx.Module):
    """The RMS norm of the `y` part of a `(y, penalties)` state (for the PID controller)."""

    def __call__(self, state):
        return optx.rms_norm(state[0])


class Regularized(NamedTuple):
    """What `regularized_solve` returns: the saved states `ys` (leading time axis), the
    `penalties` (a dict of scalars, at the final time) and the solve's `stats`."""

    ys: PyTree[Array]
    penalties: dict[str, Scalar]
    stats: dict[str, Int[Array, ""]]


def _names(kinetic, frobenius, error, stiffness, proxy):
    if frobenius not in (None, "exact", "hutchinson"):
        raise ValueError(f"frobenius must be None, 'exact' or 'hutchinson', got {frobenius!r}")
    if proxy not in (None, "frobenius", "spectral"):
        raise ValueError(f"proxy must be None, 'frobenius' or 'spectral', got {proxy!r}")
    wanted = dict(
        kinetic=kinetic,
        frobenius=frobenius is not None,
        error=error,
        stiffness=stiffness,
        proxy=proxy is not None,
    )
    return tuple(name for name in TERMS if wanted[name])


def regularized_solve(
    vector_field: Callable[..., Any],
    y0: Float[Array, "*shape"],
    t0: Real[Any, ""],
    t1: Real[Any, ""],
    *,
    kinetic: bool = False,
    frobenius: Literal["exact", "hutchinson"] | None = None,
    error: bool = False,
    stiffness: bool = False,
    proxy: Literal["frobenius", "spectral"] | None = None,
    key: PRNGKeyArray | None = None,
    probe: Literal["gaussian", "rademacher"] = "gaussian",
    power_iterations: int = 8,
    solver: str | diffrax.AbstractSolver = "tsit5",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    args: PyTree[Any] = None,
    stepsize_controller=None,
    **solve_options,
) -> Regularized:
    """Solve `dy/dt = f(t, y, args)` and return the requested penalties along it.

    `kinetic`: `int ||f||^2 dt`; `frobenius`: `int ||df/dy||_F^2 dt`; `error`:
    `sum_j E_j |h_j|`; `stiffness`: `sum_j rho_j`; `proxy`: `sum_j p_j |h_j|` (see the module
    docstring for each). `key` draws the probe `eps` (fixed over the solve) that the
    Hutchinson Frobenius estimate and the proxies use; `probe` is its distribution.
    `solve_options` go to `stiffnode.solve` (dt0, saveat, adjoint, max_steps, ...); the
    default PID controller measures `y` only.
    """
    names = _names(kinetic, frobenius, error, stiffness, proxy)
    y0 = jnp.asarray(y0)
    needs_probe = frobenius == "hutchinson" or proxy is not None
    if needs_probe and key is None:
        raise ValueError("the Hutchinson/JVP estimates need a PRNG key for their probe: key=...")
    eps = _probe(key, y0.shape, probe, y0.dtype) if needs_probe else jnp.zeros_like(y0)
    heuristics = tuple(n for n in names if n in _ACCUMULATED)
    solver = get_solver(solver)
    if heuristics:
        solver = SolverHeuristics(
            solver, float(rtol), float(atol), heuristics, proxy, int(power_iterations)
        )
    if stepsize_controller is None and isinstance(solver, diffrax.AbstractAdaptiveSolver):
        stepsize_controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_StateNorm())
    elif (
        heuristics
        and "error" in heuristics
        and not isinstance(solver, diffrax.AbstractAdaptiveSolver)
    ):
        raise ValueError("the error heuristic needs an adaptive solver")
    state = (y0, {name: jnp.zeros((), y0.dtype) for name in names})
    field = _RegularizedField(vector_field, names, frobenius)
    stats_extra = 0
    if solve_options.get("dt0") is None and isinstance(stepsize_controller, diffrax.PIDController):
        # The first step of the plain solve (Hairer's rule on y alone), so that the
        # regularised solve takes exactly the plain solve's steps.
        error_order = solver.error_order(diffrax.ODETerm(vector_field))
        t0_, t1_ = jnp.asarray(t0, y0.dtype), jnp.asarray(t1, y0.dtype)
        solve_options["dt0"] = initial_step_size(
            lambda t, y: vector_field(t, y, args), t0_, t1_, y0, rtol, atol, error_order
        )
        stats_extra = 2
    sol = solve(
        field,
        state,
        t0,
        t1,
        solver=solver,
        rtol=rtol,
        atol=atol,
        args=(args, eps),
        stepsize_controller=stepsize_controller,
        **solve_options,
    )
    ys, sums = sol.ys
    stats = dict(sol.stats)
    if "num_vf_evals" in stats:
        counted = stats["num_vf_evals"] >= 0
        stats["num_vf_evals"] = jnp.where(counted, stats["num_vf_evals"] + stats_extra, -1)
    return Regularized(ys, {name: value[-1] for name, value in sums.items()}, stats)


def regularized_call(
    model: eqx.Module,
    x: Float[Array, " in_size"],
    *,
    end_time: Real[Any, ""] | None = None,
    **options,
) -> tuple[Float[Array, " out_size"], dict[str, Scalar], dict[str, Int[Array, ""]]]:
    """`(readout(y(t1)), penalties, stats)` for a `stiffnode` neural ODE model.

    `end_time`: `t1` (default the model's `T`), e.g. `random_end_time(key, model.T, b)` for
    STEER. `options` go to `regularized_solve` (kinetic, frobenius, error, stiffness, proxy,
    key, solver, rtol, atol, ...).
    """
    t1 = model.T if end_time is None else end_time
    out = regularized_solve(model.vector_field, model.initial_state(x), 0.0, t1, **options)
    return model.readout(out.ys[-1]), out.penalties, out.stats


def random_end_time(key: PRNGKeyArray, T: float, half_width: float, dtype=None) -> Real[Array, ""]:
    """STEER's end time `t1 ~ U[T - b, T + b]` with `b = half_width`, `0 <= b < T`."""
    if not 0 <= half_width < T:
        raise ValueError(f"half_width must be in [0, T) = [0, {T}), got {half_width!r}")
    return jax.random.uniform(key, (), jnp.zeros((), dtype).dtype, T - half_width, T + half_width)


def penalty(penalties: dict[str, Scalar], weights: dict[str, float]) -> Scalar:
    """`sum_k weights[k] * penalties[k]`, the term to add to a loss."""
    missing = set(weights) - set(penalties)
    if missing:
        raise ValueError(f"no penalty named {sorted(missing)}; computed: {sorted(penalties)}")
    return sum(w * penalties[name] for name, w in weights.items())
