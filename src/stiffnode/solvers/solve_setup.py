"""A solver that adapts itself to how a solve is set up (its adjoint, fixed or adaptive
steps, dense output): `stiffnode.solve` asks every solver through `for_solve`."""

import diffrax


def for_solve(
    solver: diffrax.AbstractSolver,
    *,
    adjoint: diffrax.AbstractAdjoint,
    fixed_steps: bool,
    dense: bool,
    differentiated: bool = False,
) -> diffrax.AbstractSolver:
    """`solver.for_solve(adjoint=..., fixed_steps=..., dense=..., differentiated=...)` where
    the solver defines it, else `solver` unchanged. `AutoSwitch` defines it: diffrax adapts
    the loops of a Runge-Kutta solver it can see to `ForwardMode` and `DirectAdjoint`, not
    those inside another solver; and sub-steps suit neither fixed steps,
    `SaveAt(dense=True)` nor gradients (`differentiated`: the caller asked for them, e.g. by
    `adjoint="auto"`; forward mode always). `stiffnode.solve` calls it; a direct
    `diffrax.diffeqsolve` call should too."""
    method = getattr(solver, "for_solve", None)
    if method is None:
        return solver
    return method(
        adjoint=adjoint, fixed_steps=fixed_steps, dense=dense, differentiated=differentiated
    )
