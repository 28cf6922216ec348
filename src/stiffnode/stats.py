"""Solver statistics that diffrax does not report.

`solve(...).stats` holds int arrays:

- `num_steps`: step attempts, accepted plus rejected.
- `num_accepted_steps`, `num_rejected_steps`.
- `num_vf_evals`: evaluations of the vector field in the forward solve, with rejected steps
  and the automatic initial-step selection (two evaluations, `solve._initial_step`); a
  backsolve adjoint's backward solve is not included.

  Counted for Euler and explicit Runge--Kutta methods: every step attempt costs the
  tableau's stages, one fewer for first-same-as-last (FSAL) methods, which evaluate their
  first stage afresh only on the first step and after each jump in `jump_ts`. One case is
  invisible from outside diffrax: a step rejected right after the start or a jump makes an
  FSAL method evaluate its first stage again; those few evaluations are missing, the count
  is otherwise exact. For diffrax's implicit solvers the Newton iterations run inside
  diffrax and cannot be counted from outside: there the value is -1 (`NOT_COUNTED`),
  never a guess.
"""

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Int

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
