"""Solver statistics that diffrax does not report.

`solve(...).stats` holds int arrays:

- `num_steps`: step attempts, accepted plus rejected.
- `num_accepted_steps`, `num_rejected_steps`.
- `num_vf_evals`: evaluations of the vector field in the forward solve, with rejected steps
  and the automatic initial-step selection (two evaluations, `solvers.initial_step_size`);
  a backsolve adjoint's backward solve is not included.
- `num_jac_evals`: Jacobian evaluations (autodiff; each costs about n evaluations of the
  vector field in forward mode, not included in `num_vf_evals`).
- `num_jvp_evals`: Jacobian-vector products of matrix-free Krylov solves (BDF and Rodas3
  with `linear_solver="gmres"`; Rodas3's `df/dt` too; each costs about one or two
  evaluations of the vector field, not included in `num_vf_evals`).
- `num_lu_decompositions`: LU factorisations of the Newton iteration matrix.
- `num_newton_iters`: Newton iterations (one vector-field evaluation each).
- `num_newton_failures`: step attempts rejected because Newton did not converge.
- `num_error_test_failures`: step attempts rejected by the local error test.
- `num_steps_per_order` (BDF and Rodas3): accepted steps taken at orders 1..5 (Rodas3:
  all at order 3).

Who counts what:

- `stiffnode.solvers.BDF` and `Rodas3` count all of these themselves, rejected attempts
  included, under any adaptive controller (`solve` pairs them with
  `solvers.SolverStepController` or wraps another in `solvers.CountingController`). Rodas3:
  with dense linear algebra, `f(t0, y0)` once and three evaluations per attempt (stages 3
  and 4, and `f(t1, y1)`, the next step's first stage), one Jacobian and LU per attempt;
  matrix-free, four per attempt (its linearisation evaluates `f(t0, y0)`) and every
  Jacobian-vector product; never a Newton iteration.
- Euler and explicit Runge--Kutta methods: `num_vf_evals` from the tableau: every step
  attempt costs the tableau's stages, one fewer for first-same-as-last (FSAL) methods, which
  evaluate their first stage afresh only on the first step and after each jump in
  `jump_ts`. One case is invisible from outside diffrax: a step rejected right after the
  start or a jump makes an FSAL method evaluate its first stage again; those few
  evaluations are missing, the count is otherwise exact. They use no Jacobian, LU or
  Newton (zeros), and every rejection is an error-test failure.
- diffrax's implicit solvers (Kvaerno, KenCarp, ImplicitEuler) run their Newton iterations
  inside diffrax, where they cannot be counted from outside, and BDF under fixed steps has
  no controller to count for it: there the uncounted values are -1 (`NOT_COUNTED`), never
  a guess.
"""

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Int

from .controllers import SolverStats
from .self_controlled import STAT_KEYS

NOT_COUNTED = -1


def _evals_per_step_and_init(solver: diffrax.AbstractSolver) -> tuple[int, int] | None:
    """(evaluations per step attempt, extra evaluations at a (re)start), or None if unknown."""
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if isinstance(solver, diffrax.AbstractERK) and isinstance(tableau, diffrax.ButcherTableau):
        if tableau.fsal:
            return tableau.num_stages - 1, 1
        return tableau.num_stages, 0
    return None


def count_vf_evals(
    solver: diffrax.AbstractSolver,
    terms: diffrax.AbstractTerm,
    num_steps: Int[Array, ""],
    adaptive_start: bool,
    num_jumps: Int[Array, ""] | int = 0,
) -> Int[Array, ""]:
    """Vector-field evaluations of a solve with `num_steps` step attempts.

    `adaptive_start`: the initial step was chosen by `solve._initial_step` (two evaluations).
    `num_jumps`: discontinuities stepped onto (each restarts an FSAL method's first stage).
    """
    per_step = _evals_per_step_and_init(solver)
    if per_step is None or not isinstance(terms, diffrax.ODETerm):
        return jnp.full_like(num_steps, NOT_COUNTED)
    per_attempt, restart = per_step
    return num_steps * per_attempt + restart * (1 + num_jumps) + (2 if adaptive_start else 0)


def solver_stats(
    solver: diffrax.AbstractSolver,
    terms: diffrax.AbstractTerm,
    diffrax_stats: dict[str, Int[Array, ""]],
    adaptive_start: bool,
    num_jumps: Int[Array, ""] | int = 0,
    solver_counts: SolverStats | None = None,
) -> dict[str, Int[Array, ""]]:
    """All the statistics above for a solve, from diffrax's step counts and, for BDF, the
    counts its controller collected (`solver_counts`)."""
    num_steps = diffrax_stats["num_steps"]
    stats = {
        "num_steps": num_steps,
        "num_accepted_steps": diffrax_stats["num_accepted_steps"],
        "num_rejected_steps": diffrax_stats["num_rejected_steps"],
    }
    if solver_counts is not None:
        counted = solver_counts.as_dict()
        # The first step chosen by `solve` (two evaluations) is outside the solver's counts.
        counted["num_vf_evals"] = counted["num_vf_evals"] + (2 if adaptive_start else 0)
        return stats | counted
    num_vf_evals = count_vf_evals(solver, terms, num_steps, adaptive_start, num_jumps)
    stats["num_vf_evals"] = num_vf_evals
    explicit = _evals_per_step_and_init(solver) is not None
    for key in STAT_KEYS[1:-1]:
        stats[key] = (
            jnp.zeros_like(num_steps) if explicit else jnp.full_like(num_steps, NOT_COUNTED)
        )
    stats["num_error_test_failures"] = (
        diffrax_stats["num_rejected_steps"] if explicit else jnp.full_like(num_steps, NOT_COUNTED)
    )
    return stats
