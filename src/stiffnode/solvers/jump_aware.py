"""Keep a solver's stage times on the near side of the next discontinuity in t."""

import diffrax
import equinox.internal as eqxi
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from .delegating import AbstractDelegatingSolver


class _ClampedTimeTerm(diffrax.AbstractTerm):
    """`term` with the time of its vector field clamped to at most `t_max`."""

    term: diffrax.AbstractTerm
    t_max: Array

    def vf(self, t, y, args):
        return self.term.vf(jnp.minimum(t, self.t_max), y, args)

    def vf_prod(self, t, y, args, control):
        return self.term.vf_prod(jnp.minimum(t, self.t_max), y, args, control)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)

    def is_vf_expensive(self, t0, t1, y, args):
        return self.term.is_vf_expensive(t0, t1, y, args)


def _clamp_terms(terms, t_max):
    def is_leaf(x):
        return isinstance(x, diffrax.AbstractTerm) and not isinstance(x, diffrax.MultiTerm)

    return jtu.tree_map(lambda term: _ClampedTimeTerm(term, t_max), terms, is_leaf=is_leaf)


class JumpAwareSolver(AbstractDelegatingSolver):
    """`solver`, with every stage time of a step from `t0` kept below the next jump after `t0`.

    Some methods evaluate stages past the step's end: Kvaerno4 at `t0 + 1.146 h`, Kvaerno5 at
    `t0 + 1.230 h`. When a step ends just before a jump in the vector field (a layer boundary
    of piecewise-constant weights), those stages see the next piece, the error estimate
    blows up and the solver creeps towards the jump in ever smaller steps. Clamping the
    stage times to just before the jump extends the current piece smoothly instead, which
    is what the method's order conditions assume. Steps that do not end at a jump are
    unchanged. Forward-in-time solves only (`t1 > t0`).
    """

    solver: diffrax.AbstractSolver
    jump_ts: Float[Array, " jumps"]

    def __check_init__(self):
        if isinstance(self.solver, diffrax.AbstractWrappedSolver):
            raise TypeError("JumpAwareSolver wraps an unwrapped diffrax solver")

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        jump_ts = self.jump_ts.astype(jnp.result_type(t0))
        index = jnp.searchsorted(jump_ts, t0, side="right")
        next_jump = jnp.where(
            index < jump_ts.size, jump_ts[jnp.minimum(index, jump_ts.size - 1)], jnp.inf
        )
        clamped = _clamp_terms(terms, eqxi.prevbefore(next_jump))
        return self.solver.step(clamped, t0, t1, y0, args, solver_state, made_jump)
