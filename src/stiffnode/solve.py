"""One entry point over `diffrax.diffeqsolve`: solvers by name or object, and statistics."""

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Int, PyTree, Real

from ._validation import positive_int
from .solvers import (
    AUTO_MAX_DIRECTIONS,
    BDF,
    AbstractSelfControlledSolver,
    AutoSwitch,
    CountingController,
    ForwardSensitivity,
    InterpolatingAdjoint,
    JumpAwareSolver,
    NonFiniteMonitor,
    Rodas3,
    Rodas5P,
    Rosenbrock23,
    SolverStepController,
    StiffnessMonitor,
    for_solve,
    forward_sensitivities,
    initial_step_size,
    solver_stats_of,
)
from .solvers.forward_sensitivity import real_size
from .solvers.self_controlled import FROM_CONTROLLER, ReportingNorm
from .solvers.stats import solver_stats

VectorField = Callable[[Real[ArrayLike, ""], PyTree[Array], PyTree[Any]], PyTree[Array]]


def _zero_field(t, y, args):
    return jtu.tree_map(jnp.zeros_like, y)


def _newton_root_finder():
    return diffrax.with_stepsize_controller_tols(optx.Newton)()


def _with_newton(solver_class):
    """The named implicit solvers use full Newton for their stage equations.

    diffrax's default, VeryChord (Jacobian frozen at the step's start), stalls KenCarp
    (steps shrink towards zero on y' = -y) and makes Kvaerno5 reject about half its steps;
    measured in `benchmarks/solve_overhead.py`: van der Pol mu = 1e3, 582 steps with Newton
    against 3,449 with VeryChord, 3.8x less time.
    """
    return lambda: solver_class(root_finder=_newton_root_finder())


_SOLVER_FACTORIES: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "implicit_euler": _with_newton(diffrax.ImplicitEuler),
    "kvaerno3": _with_newton(diffrax.Kvaerno3),
    "kvaerno4": _with_newton(diffrax.Kvaerno4),
    "kvaerno5": _with_newton(diffrax.Kvaerno5),
    "kencarp3": _with_newton(diffrax.KenCarp3),
    "kencarp4": _with_newton(diffrax.KenCarp4),
    "kencarp5": _with_newton(diffrax.KenCarp5),
    "bdf": BDF,
    "ndf": lambda: BDF(ndf=True),
    "rodas3": Rodas3,
    "rodas5p": Rodas5P,
    "rosenbrock23": Rosenbrock23,
    "auto": AutoSwitch,
}

SOLVERS: tuple[str, ...] = tuple(_SOLVER_FACTORIES)
"""The solver names `solve` accepts (case-insensitive)."""

SELF_CONTROLLED: tuple[str, ...] = tuple(
    name for name, make in _SOLVER_FACTORIES.items()
    if isinstance(make(), AbstractSelfControlledSolver)
)  # fmt: skip
"""The names of the solvers that can choose their own steps (`stepsize_controller="solver"`)
and report them to any controller: `solvers.AbstractSelfControlledSolver`'s."""

_ADJOINTS: dict[str, Callable[[], diffrax.AbstractAdjoint]] = {
    "recursive": diffrax.RecursiveCheckpointAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
    "direct": diffrax.DirectAdjoint,
    "forward": diffrax.ForwardMode,
    "interpolating": InterpolatingAdjoint,
    "sensitivity": ForwardSensitivity,
}


def get_solver(solver: str | diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """The diffrax solver named `solver` (one of `SOLVERS`), or `solver` itself."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    if isinstance(solver, str):
        factory = _SOLVER_FACTORIES.get(solver.lower())
        if factory is not None:
            return factory()
        raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(SOLVERS)}")
    raise TypeError(f"solver must be a name or a diffrax.AbstractSolver, got {type(solver)}")


class Solution(eqx.Module):
    """What `solve` returns.

    - `ts`, `ys`: the save times and the states there (`ys` has a leading time axis).
    - `stats`: a dict of int arrays, see `stiffnode.stats`.
    - `result`: diffrax's result code; always `successful` when `throw=True`.
    - `solution`: the underlying `diffrax.Solution` (dense output via `.evaluate`).
    """

    ts: Array
    ys: PyTree[Array]
    stats: dict[str, Int[Array, ""]]
    result: diffrax.RESULTS
    solution: diffrax.Solution

    def evaluate(self, t0, t1=None, left: bool = True):
        """Dense output (needs `saveat=diffrax.SaveAt(dense=True)`)."""
        return self.solution.evaluate(t0, t1, left)


def _is_traced(x) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(x))


def _check_tolerance(name: str, value):
    """A tolerance: finite and positive (checked at run time under `jit`)."""
    if _is_traced(value):
        value = jnp.asarray(value)
        bad = jnp.any(~jnp.isfinite(value) | (value <= 0))
        return eqx.error_if(value, bad, f"{name} must be finite and positive")
    arr = np.asarray(value)
    if arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{name} must be finite and positive, got {value!r}")
    return value


def _check_times(t0, t1, dt0):
    """`t0`, `t1` finite; `dt0` (when given) finite, non-zero and pointing from t0 to t1."""
    checks = [("t0", t0, "finite"), ("t1", t1, "finite")]
    if dt0 is not None:
        checks.append(("dt0", dt0, "finite and non-zero"))
    out = []
    for name, value, what in checks:
        xp = jnp if _is_traced(value) else np
        arr = xp.asarray(value)
        bad = ~xp.isfinite(arr) if name != "dt0" else ~xp.isfinite(arr) | (arr == 0)
        if _is_traced(value):
            out.append(eqx.error_if(value, bad, f"{name} must be {what}"))
            continue
        if bool(bad):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        out.append(value)
    if dt0 is not None and not _is_traced((t0, t1, dt0)):
        if float(t1) != float(t0) and (float(t1) - float(t0)) * float(dt0) < 0:
            raise ValueError(f"dt0={dt0} must point from t0={t0} to t1={t1}")
    return (*out, None) if dt0 is None else tuple(out)


def _times_like_state(y0, t0, t1, dt0):
    """Python-number times take the state's precision (diffrax would promote a float32 state
    to float64 times under x64)."""
    dtype = jnp.result_type(*(jnp.real(jnp.asarray(x)) for x in jtu.tree_leaves(y0)))
    if not jnp.issubdtype(dtype, jnp.floating):
        return t0, t1, dt0

    def cast(t):
        return jnp.asarray(t, dtype) if isinstance(t, int | float) else t

    return cast(t0), cast(t1), None if dt0 is None else cast(dt0)


def _check_y0(terms, t0, y0, args):
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError("y0 is empty")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(f"y0 must be floating point, got dtype {dtype}")
    want = jtu.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x)), y0)
    for term in terms.terms if isinstance(terms, diffrax.MultiTerm) else (terms,):
        try:
            out = jax.eval_shape(lambda term=term: term.vf(t0, y0, args))
        except Exception as e:  # noqa: BLE001 - re-raised with the shape that caused it
            raise ValueError(
                f"the vector field cannot be evaluated at y0 of shape/dtype {want}: {e}"
            ) from e
        got = jtu.tree_map(lambda x: (x.shape, x.dtype), out)
        if jtu.tree_structure(want) != jtu.tree_structure(got) or want != got:
            raise ValueError(
                f"the vector field maps y0 of shape/dtype {want} to {got}; they must match "
                "(check y0's shape, and its dtype against the model's parameters)"
            )
    if _is_traced(y0):
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
        return eqx.error_if(y0, ~finite, "y0 contains NaN or inf")
    if not all(np.all(np.isfinite(x)) for x in leaves):
        raise ValueError("y0 contains NaN or inf")
    return y0


def _terms(vector_field, solver):
    """An ODETerm; for IMEX (KenCarp) solvers the pair (explicit, implicit).

    A single field given to an IMEX solver is treated as wholly implicit (zero explicit part);
    a pair `(explicit_field, implicit_field)` is split as given.
    """
    imex = isinstance(getattr(solver, "tableau", None), diffrax.MultiButcherTableau)
    if isinstance(vector_field, tuple):
        if not imex:
            raise ValueError(
                f"a pair of vector fields (explicit, implicit) needs an IMEX solver "
                f"(kencarp3/4/5), not {type(solver).__name__}"
            )
        explicit, implicit = vector_field
        return diffrax.MultiTerm(diffrax.ODETerm(explicit), diffrax.ODETerm(implicit))
    if imex:
        return diffrax.MultiTerm(diffrax.ODETerm(_zero_field), diffrax.ODETerm(vector_field))
    return diffrax.ODETerm(vector_field)


def _initial_step(terms, solver, t0, t1, y0, args, rtol, atol):
    """The first step by Hairer, Norsett & Wanner's rule (`solvers.initial_step_size`).

    diffrax 0.7.2's own selection is bypassed inside `diffeqsolve`, which then starts with a
    fixed 0.01 whatever the problem's scale.
    """

    def f(t, y):
        out = terms.vf(t, y, args)
        if isinstance(terms, diffrax.MultiTerm):
            out = jtu.tree_map(lambda *parts: sum(parts), *out)
        return out

    # (a solver that starts with one of its methods, `AutoSwitch`, sizes it for that one)
    error_order = getattr(solver, "first_error_order", solver.error_order)(terms)
    return initial_step_size(f, t0, t1, y0, rtol, atol, error_order)


def _forward_in_time(t0, t1) -> bool:
    try:
        return float(t1) > float(t0)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def _fixed_step_grid(t0, t1, dt0, dtype, max_steps):
    """`t0, t0 + dt0, t0 + 2 dt0, ..., t1` for concrete times, else None.

    The grid is computed in float64 and then rounded to the time dtype, exactly as jump times
    and layer boundaries are (`models.weights`), so steps land on them bit for bit; diffrax's
    own constant steps accumulate `t + dt` and drift off them by a few ulps.
    """
    try:
        t0, t1, dt0 = float(t0), float(t1), float(dt0)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    if t0 == t1:
        return None  # no step: diffrax's constant steps return y0 (StepTo cannot express it)
    ratio = (t1 - t0) / dt0
    nearest = round(ratio)
    num_steps = nearest if abs(ratio - nearest) <= 1e-9 * ratio else int(np.ceil(ratio))
    num_steps = max(1, num_steps)
    if num_steps > max_steps:
        raise ValueError(
            f"step budget exhausted: fixed steps of dt0={dt0} from t0={t0} to t1={t1} need "
            f"{num_steps} steps, max_steps={max_steps}"
        )
    grid = np.append(t0 + dt0 * np.arange(num_steps), t1)
    return jnp.asarray(grid, dtype)


def _reports(controller) -> bool:
    """The controller reads a self-controlled solver's step reports (and counts its work)."""
    return isinstance(getattr(controller, "norm", None), ReportingNorm)


def _controller(stepsize_controller, solver, rtol, atol, times, jump_ts, max_steps):
    """The diffrax step-size controller, and the jump times it steps onto (or None).

    `times`: `(t0, t1, dt0)` as the caller gave them and the time dtype. An adaptive
    controller of a self-controlled solver (`SELF_CONTROLLED`) is wrapped so that it counts the
    solver's work (`solvers.CountingController`), unless it does already.
    """
    t0, t1, dt0, dtype = times
    self_controlled = isinstance(solver, AbstractSelfControlledSolver)
    adaptive_solver = isinstance(solver, diffrax.AbstractAdaptiveSolver)

    def counted(controller):
        adaptive = isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
        if self_controlled and adaptive and not _reports(controller):
            return CountingController(controller)
        return controller

    if isinstance(stepsize_controller, diffrax.AbstractStepSizeController):
        if _reports(stepsize_controller) and not self_controlled:
            raise ValueError(
                f"{type(stepsize_controller).__name__} reads the step reports of stiffnode's "
                f"self-controlled solvers ({', '.join(SELF_CONTROLLED)}), not "
                f"{type(solver).__name__}: use a "
                "diffrax controller such as diffrax.PIDController"
            )
        return counted(stepsize_controller), getattr(stepsize_controller, "jump_ts", None)
    if stepsize_controller is None:
        stepsize_controller = (
            "solver" if self_controlled else "pid" if adaptive_solver else "constant"
        )
    if stepsize_controller == "constant":
        if dt0 is None:
            raise ValueError(
                f"fixed steps need dt0 ({type(solver).__name__} has no error estimate "
                "for adaptive stepping); e.g. dt0=(t1 - t0) / num_steps"
            )
        grid = _fixed_step_grid(t0, t1, dt0, dtype, max_steps)
        return (diffrax.ConstantStepSize() if grid is None else diffrax.StepTo(grid)), None
    if stepsize_controller == "solver":
        if not self_controlled:
            raise ValueError(
                f"stepsize_controller='solver' needs a solver that chooses its own steps "
                f"({', '.join(SELF_CONTROLLED)}), not {type(solver).__name__}: use 'pid' or "
                "'constant'"
            )
        controller = SolverStepController(rtol=rtol, atol=atol)
    elif stepsize_controller == "pid":
        if not adaptive_solver:
            raise ValueError(
                f"{type(solver).__name__} has no error estimate: use "
                "stepsize_controller='constant' with dt0"
            )
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
    else:
        raise ValueError(
            f"unknown stepsize_controller {stepsize_controller!r}; use 'pid', 'constant', "
            f"'solver' ({', '.join(SELF_CONTROLLED)}) or a diffrax.AbstractStepSizeController"
        )
    if jump_ts is None or np.size(jump_ts) == 0:
        return counted(controller), None
    jump_ts = jnp.asarray(jump_ts, dtype)
    clipped = diffrax.ClipStepSizeController(controller, jump_ts=jump_ts)
    return counted(clipped), clipped.jump_ts


def _with_tolerances(solver, controller, rtol, atol):
    """`solver` with every `FROM_CONTROLLER` tolerance of its root finder filled in, as
    `diffeqsolve` would do (here, before the solver is wrapped): from an adaptive
    controller, or under fixed steps from `rtol`/`atol` and the RMS norm."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    if isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        given = {"rtol": controller.rtol, "atol": controller.atol, "norm": controller.norm}
    else:
        given = {"rtol": rtol, "atol": atol, "norm": optx.rms_norm}
    names = [k for k in given if getattr(solver.root_finder, k, None) is FROM_CONTROLLER]
    if not names:
        return solver
    return eqx.tree_at(
        lambda s: tuple(getattr(s.root_finder, k) for k in names),
        solver,
        tuple(given[k] for k in names),
    )


def _raise_if_nonfinite(sol, monitored: bool, t0, t1):
    """An error naming the vector field when a solve that could not go on (step budget
    exhausted, step size underflow) had produced NaN or inf (`NonFiniteMonitor`); with the
    time where it happened when the solve ran outside `jit`."""
    if not monitored:
        return sol
    t_bad = sol.controller_state[1]
    stuck = (sol.result == diffrax.RESULTS.max_steps_reached) | (
        sol.result == diffrax.RESULTS.dt_min_reached
    )
    where = ""
    if not _is_traced((t_bad, t0, t1)):
        direction = -1.0 if float(t1) < float(t0) else 1.0
        where = f" at t = {direction * float(t_bad):.6g}"
    return eqx.error_if(
        sol,
        stuck & jnp.isfinite(t_bad),
        f"stiffnode.solve: the vector field returned NaN or inf{where}, and the solver "
        "could not step past it (every smaller step gave NaN or inf too)",
    )


def _saveat(saveat):
    if saveat is None:
        return diffrax.SaveAt(t1=True)
    if isinstance(saveat, diffrax.SaveAt):
        return saveat
    return diffrax.SaveAt(ts=jnp.asarray(saveat))


CHECKPOINT_BYTES = 4 * 2**20
"""The memory (per solve; a vmapped solve: per member) within which `adjoint="recursive"`
checkpoints every one of its `max_steps` steps, estimated at `2 n^2 + 10 n + 24` numbers a
step for `n` states (above what BDF's state measures: 50 numbers on Robertson, 980 on
POLLU). Then the backward pass recomputes nothing and skips diffrax's online checkpoint
schedule: Robertson's gradient through Rodas5P at `max_steps=4096` takes half the time.
Beyond it, diffrax's default (`~sqrt(2 max_steps)` checkpoints: 2.8 MB for POLLU's BDF at
the default `max_steps`, the same order)."""


def _recursive_checkpoints(y0, max_steps: int) -> int | None:
    leaves = jax.tree.leaves(y0)
    n = sum(np.size(x) for x in leaves)
    itemsize = max((np.dtype(jnp.result_type(x)).itemsize for x in leaves), default=8)
    every_step = max_steps * itemsize * (2 * n * n + 10 * n + 24) <= CHECKPOINT_BYTES
    return max_steps if every_step else None


def _differentiable_size(tree) -> int:
    """Real numbers in the inexact arrays of `tree` (a complex number counts twice)."""
    return sum(map(real_size, jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))))


def _adjoint(adjoint, y0, args, terms, max_steps: int, rtol, atol):
    if isinstance(adjoint, str) and adjoint == "auto":
        few = _differentiable_size((y0, args, terms)) <= AUTO_MAX_DIRECTIONS
        adjoint = "sensitivity" if few else "recursive"
    if isinstance(adjoint, str) and adjoint == "recursive":
        return diffrax.RecursiveCheckpointAdjoint(_recursive_checkpoints(y0, max_steps))
    if not isinstance(adjoint, diffrax.AbstractAdjoint):
        try:
            adjoint = _ADJOINTS[adjoint]()
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown adjoint {adjoint!r}; use one of {sorted(_ADJOINTS)} or a "
                "diffrax.AbstractAdjoint"
            ) from None
    if isinstance(adjoint, InterpolatingAdjoint) and None in (adjoint.rtol, adjoint.atol):
        # The adjoint ODE at the forward solve's tolerances, unless given.
        adjoint = dataclasses.replace(
            adjoint,
            rtol=rtol if adjoint.rtol is None else adjoint.rtol,
            atol=atol if adjoint.atol is None else adjoint.atol,
        )
    return adjoint


def solve(
    vector_field: VectorField | tuple[VectorField, VectorField],
    y0: PyTree[ArrayLike],
    t0: Real[ArrayLike, ""],
    t1: Real[ArrayLike, ""],
    *,
    solver: str | diffrax.AbstractSolver = "tsit5",
    rtol: Real[ArrayLike, "..."] = 1e-6,
    atol: Real[ArrayLike, "..."] = 1e-9,
    dt0: Real[ArrayLike, ""] | None = None,
    saveat: diffrax.SaveAt | Sequence[float] | Array | None = None,
    args: PyTree[Any] = None,
    max_steps: int = 16**4,
    stepsize_controller: Literal["pid", "constant", "solver"]
    | diffrax.AbstractStepSizeController
    | None = None,
    adjoint: Literal[
        "recursive", "auto", "sensitivity", "interpolating", "backsolve", "direct", "forward"
    ]
    | diffrax.AbstractAdjoint = "recursive",
    jump_ts: Sequence[float] | Array | None = None,
    throw: bool = True,
    progress: bool = False,
    estimate_stiffness: bool = False,
) -> Solution:
    """Solve `dy/dt = vector_field(t, y, args)`, `y(t0) = y0`, from `t0` to `t1`.

    Tolerances: the adaptive (PID) controller accepts a step when the solver's local error
    estimate `e` satisfies `||e_i / (atol + rtol * max(|y0_i|, |y1_i|))||_rms <= 1`; the
    global error is typically a small multiple of that, not bounded by it.

    Speed on CPU: for a system of a few states most of a step is XLA:CPU's dispatch of small
    kernels unless the step loop is compiled into one function, which `import stiffnode`
    arranges by raising XLA's small-loop threshold before JAX starts (`stiffnode._xla_flags`;
    a warning if JAX had already started, `STIFFNODE_XLA_DEFAULTS=0` to opt out). Loops
    holding a dot or a LAPACK call stay a graph of kernels.

    Args:
        vector_field: `f(t, y, args)` as in diffrax (any callable or equinox module); for
            the IMEX solvers `kencarp*`, optionally a pair `(explicit, implicit)`.
        solver: a name from `SOLVERS` or any `diffrax.AbstractSolver`. `"auto"` switches
            between Tsit5 and a stiff method as the problem's stiffness changes
            (`solvers.AutoSwitch.for_states`: Rodas5P for small systems, matrix-free BDF for
            large ones); its statistics join `Solution.stats`.
        rtol, atol: relative and absolute tolerances (positive) of the PID controller.
        dt0: initial step; `None` picks one automatically (adaptive stepping only). With
            fixed steps, the step: the grid `t0 + k dt0` (last step shortened to end at t1).
        saveat: `None` (final state only), an array of times, or a `diffrax.SaveAt`.
        max_steps: step budget (accepted plus rejected); exhausting it is an error.
        stepsize_controller: `"pid"` (default when the solver has an error estimate),
            `"constant"` (fixed steps of `dt0`; default otherwise), `"solver"` (the solver
            chooses its steps: `solvers.SolverStepController`, the default for the
            `SELF_CONTROLLED` solvers), or a diffrax controller. Those work with any of
            them; their work is counted under every adaptive one.
        adjoint: how gradients are taken; for gradients pass `"auto"` (below).
            `"recursive"` (backprop through the solver, recursive checkpointing: the
            exact gradient of the discrete solve; every step checkpointed when
            `max_steps` of them fit in `CHECKPOINT_BYTES`, so a `max_steps` near the
            steps needed makes the gradient faster), `"interpolating"`
            (`solvers.InterpolatingAdjoint`: the continuous adjoint solved backward by
            Rodas5P over the forward solve replayed from checkpoints, at this solve's
            tolerances; stable on stiff problems, memory flat in `max_steps`; adaptive
            steps only), `"sensitivity"` (`solvers.ForwardSensitivity`: forward
            sensitivities over every differentiated real number, for `jax.grad` as well
            as `jax.jacfwd`; the exact derivative of the discrete solve, memory flat in
            `max_steps`, cheapest when inputs are few), `"auto"` (`"sensitivity"` when
            `y0`, `args` and the vector field's arrays hold at most
            `solvers.AUTO_MAX_DIRECTIONS` real numbers, else `"recursive"`; and
            `solver="auto"` without explicit sub-steps, which make gradients 2-10x
            dearer),
            `"backsolve"` (continuous adjoint, O(1) memory, gradient of the continuous
            problem up to the backward solve's error; it re-solves the state
            backward in time, unstable on stiff problems: inf or no gradient on Robertson),
            `"direct"`, `"forward"` (`diffrax.ForwardMode`: forward-mode autodiff, for
            `jax.jvp`/`jax.jacfwd`; the cheaper way when states and parameters are few),
            or a `diffrax.AbstractAdjoint`. Reverse-mode adjoints cannot be
            forward-differentiated: `jax.jacfwd` traced through `solve` with one raises a
            `TypeError` that says to use `adjoint="forward"` (through a `jax.jit`-compiled
            wrapper of `solve`, JAX's own message).
        jump_ts: times where the vector field is discontinuous in t (adaptive stepping):
            steps end just before each and restart just after, and no stage of a step looks
            past the next jump (`solvers.JumpAwareSolver`; forward-in-time solves).
        throw: raise (at run time, also under `jit`) if the solve fails, e.g. when the step
            budget is exhausted; with `throw=False` check `Solution.result` yourself.
        progress: show a tqdm progress bar.
        estimate_stiffness: add `Solution.stats["stiffness_max"]`, the largest estimate of
            the Jacobian's dominant `|lambda|` over the accepted steps
            (`solvers.StiffnessMonitor`: free for Tsit5/Dopri5, one JVP per step else;
            `solver="auto"` reports it always).

    Returns:
        A `Solution` with `.ts`, `.ys`, `.stats` (see `stiffnode.stats`) and `.result`.
    """
    by_size = isinstance(solver, str) and solver.lower() == "auto"
    solver = get_solver(solver)
    max_steps = positive_int("max_steps", max_steps)
    # As arrays, so that a new tolerance does not recompile the solve.
    rtol = jnp.asarray(_check_tolerance("rtol", rtol))
    atol = jnp.asarray(_check_tolerance("atol", atol))
    terms = _terms(vector_field, solver)
    t0, t1, dt0 = _check_times(t0, t1, dt0)
    given_times = (t0, t1, dt0)
    t0, t1, dt0 = _times_like_state(y0, t0, t1, dt0)
    y0 = _check_y0(terms, t0, y0, args)
    if by_size:  # the stiff method of "auto" depends on the number of states
        solver = AutoSwitch.for_states(sum(np.size(x) for x in jax.tree.leaves(y0)))
    controller, jump_ts = _controller(
        stepsize_controller,
        solver,
        rtol,
        atol,
        (*given_times, jnp.result_type(t0, t1)),
        jump_ts,
        max_steps,
    )
    differentiated = isinstance(adjoint, str) and adjoint == "auto"
    adjoint = _adjoint(adjoint, y0, args, terms, max_steps, rtol, atol)
    if isinstance(adjoint, diffrax.BacksolveAdjoint) and isinstance(
        solver, diffrax.AbstractImplicitSolver | AutoSwitch
    ):
        warnings.warn(
            f"stiffnode.solve: adjoint='backsolve' with the stiff solver {type(solver).__name__}: "
            "backsolve re-solves the state backward in time, which is unstable where the "
            "problem is stiff (Robertson's gradient: 1e257, no error); use 'recursive', "
            "'sensitivity' or 'interpolating'",
            stacklevel=2,
        )
    if isinstance(controller, diffrax.StepTo):
        dt0 = None
        if isinstance(adjoint, diffrax.BacksolveAdjoint) and (
            "stepsize_controller" not in adjoint.kwargs
        ):
            # The backward solve retraces the same grid, from t1 to t0.
            backward = diffrax.StepTo(controller.ts[::-1])
            adjoint = diffrax.BacksolveAdjoint(**adjoint.kwargs, stepsize_controller=backward)
    fixed_steps = isinstance(controller, diffrax.ConstantStepSize | diffrax.StepTo)
    saveat = _saveat(saveat)
    # The interpolating adjoint replays the steps with dense output: the same steps here.
    replayed = isinstance(adjoint, InterpolatingAdjoint)
    solver = for_solve(
        solver,
        adjoint=adjoint,
        fixed_steps=fixed_steps,
        dense=saveat.dense or replayed,
        differentiated=differentiated,
    )
    solver = _with_tolerances(solver, controller, rtol, atol)
    stepping_solver = solver
    if jump_ts is not None and _forward_in_time(*given_times[:2]):
        stepping_solver = JumpAwareSolver(solver, jump_ts)
    counting = _reports(controller)
    monitored = isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
    if monitored:
        controller = NonFiniteMonitor(controller)
    # The first step is chosen here (two evaluations), except by SolverStepController.
    adaptive_start = (
        dt0 is None and not fixed_steps and not (counting and controller.norm.solver_steps)
    )
    if adaptive_start:
        dt0 = _initial_step(terms, solver, t0, t1, y0, args, rtol, atol)
    # A solver with statistics of its own (`AutoSwitch`, `StiffnessMonitor`) keeps them in
    # its state.
    reporter = solver if hasattr(solver, "solve_stats") else None
    if estimate_stiffness and reporter is None:
        stepping_solver = reporter = StiffnessMonitor(stepping_solver)
    solver_reports = reporter is not None
    if monitored or solver_reports:
        # The controller's state holds where f was not finite, and the solver's work counts.
        saveat = diffrax.SaveAt(
            subs=saveat.subs,
            dense=saveat.dense,
            solver_state=saveat.solver_state or solver_reports,
            controller_state=saveat.controller_state or monitored,
            made_jump=saveat.made_jump,
        )

    def integrate(y0__args__terms):
        y0_, args_, terms_ = y0__args__terms
        return diffrax.diffeqsolve(
            terms_,
            stepping_solver,
            t0,
            t1,
            dt0,
            y0_,
            args=args_,
            saveat=saveat,
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=False,
            progress_meter=diffrax.TqdmProgressMeter() if progress else diffrax.NoProgressMeter(),
        )

    if isinstance(adjoint, ForwardSensitivity):
        integrate = forward_sensitivities(integrate, lambda sol: sol.ys)
    try:
        sol = integrate((y0, args, terms))
    except TypeError as error:
        if "forward-mode" not in str(error) or isinstance(adjoint, diffrax.ForwardMode):
            raise
        raise TypeError(
            f"stiffnode.solve: forward-mode autodiff (jax.jvp, jax.jacfwd) through the "
            f'reverse-mode adjoint {type(adjoint).__name__}; pass adjoint="forward"'
        ) from error
    if throw:
        sol = _raise_if_nonfinite(sol, monitored, t0, t1)
        sol = eqx.error_if(
            sol,
            sol.result == diffrax.RESULTS.max_steps_reached,
            f"stiffnode.solve: step budget exhausted: max_steps={max_steps} steps were taken "
            "before reaching t1; raise max_steps or loosen rtol/atol",
        )
        sol = eqx.error_if(
            sol,
            sol.result == diffrax.RESULTS.dt_min_reached,
            "stiffnode.solve: step size underflow: the solver's step fell below the spacing "
            "of floating-point times (or dtmin); the problem may blow up or be singular",
        )
        sol = sol.result.error_if(sol, sol.result != diffrax.RESULTS.successful)
    num_jumps = 0
    if jump_ts is not None:
        lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
        num_jumps = jnp.sum((jump_ts > lo) & (jump_ts < hi))
    counts = solver_stats_of(sol.controller_state) if counting else None
    stats = solver_stats(solver, terms, sol.stats, adaptive_start, num_jumps, counts)
    if solver_reports:
        stats = stats | reporter.solve_stats(sol.solver_state)
    return Solution(ts=sol.ts, ys=sol.ys, stats=stats, result=sol.result, solution=sol)
