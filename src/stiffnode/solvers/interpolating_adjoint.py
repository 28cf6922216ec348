"""`InterpolatingAdjoint`: the continuous adjoint of an ODE solve, solved backward in time
by a stiff solver over a replayed dense forward solution, with the parameter gradient by
Gauss-Legendre quadrature (SciMLSensitivity's `InterpolatingAdjoint(checkpointing=true)` /
`GaussAdjoint`; CVODES's checkpointed adjoint)."""

import functools as ft
import math

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from diffrax._adjoint import (  # the helpers `BacksolveAdjoint` uses, for the same job
    _nondiff_solver_controller_state,
    _only_transpose_ys,
)
from diffrax._integrate import SaveState
from diffrax._saveat import save_y
from diffrax._term import WrapTerm

from .auto_switch import AutoSwitch
from .bdf import BDF
from .rosenbrock import Rodas5P
from .solve_setup import for_solve

# Three-point Gauss-Legendre on [0, 1]: exact for polynomials of degree 5.
_GAUSS_NODES = np.array([0.5 - math.sqrt(15) / 10, 0.5, 0.5 + math.sqrt(15) / 10])
_GAUSS_WEIGHTS = np.array([5 / 18, 8 / 18, 5 / 18])


class InterpolatingAdjoint(diffrax.AbstractAdjoint):
    """Reverse-mode gradients of an ODE solve through the continuous adjoint equations,
    stable on stiff problems and lean in memory.

    For `dy/dt = f(t, y, theta)` and a loss of the saved states, the cotangent `a` solves
    `da/dt = -(df/dy)^T a` backward from each save time (where it jumps by the loss's
    gradient there), and `dL/dtheta = int a^T df/dtheta dt`, `dL/dy0 = a(t0)`.

    - Forward: the solve as usual, storing its state every `checkpoint_every` accepted
      steps (and at the save times): `O((max_steps / checkpoint_every + saves) n)` numbers.
    - Backward, interval by interval between those checkpoints: the forward solve is
      replayed from the checkpoint with dense output (at most `interval_steps` steps,
      default `4 checkpoint_every + 16`), and the adjoint ODE solved backward by `solver`
      (a one-step method with an error estimate; Rodas5P by default, stiff where the
      forward problem is), its Jacobian `-(df/dy)^T` exact at the interpolated state, its
      error controlled at `rtol`/`atol` (RMS over components of `atol + rtol |a|`), its
      steps never crossing a replayed step's end; `dL/dtheta` accumulates by three-point
      Gauss-Legendre quadrature on each adjoint step. Peak memory: the checkpoints plus one
      interval's dense output.

    The gradient is that of the continuous problem, correct to the tolerances of the
    solves, not the exact derivative of the discrete solve (`RecursiveCheckpointAdjoint`).
    `stiffnode.solve(adjoint="interpolating")` sets `rtol`/`atol` to the solve's own; a
    looser `rtol` makes the adjoint cheaper (it resolves the fast transient each save
    time's jump in `a` excites) and, where the cotangent spans many decades, possible at
    all. Gradients flow to `y0`, `args` and the terms; not to `t0`, `t1` or closed-over
    values (JAX's `CustomVJPException`, as for `diffrax.BacksolveAdjoint`). A failure of a
    replay or of the adjoint solve raises an error (a gradient has no result code).

    Needs a single ODE term, an adaptive step-size controller, `SaveAt(t0=, t1=, ts=)` (no
    `steps`, `dense`, `fn` or `subs`), and no events; anything else is a clear error. With
    `diffrax.diffeqsolve` directly, pass `rtol` and `atol`, and set `AutoSwitch` up with
    `solvers.for_solve(..., dense=True)` (the replays need its dense output).
    """

    rtol: float | None = None
    atol: float | None = None
    solver: diffrax.AbstractSolver = Rodas5P()
    checkpoint_every: int = eqx.field(default=64, static=True)
    interval_steps: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name in ("checkpoint_every", "interval_steps"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"InterpolatingAdjoint: {name} must be a positive int")
        if isinstance(self.solver, BDF | AutoSwitch) or not callable(
            getattr(self.solver, "error_order", None)
        ):
            raise ValueError(
                "InterpolatingAdjoint: the adjoint's solver steps between the replayed "
                "steps' ends, so it must be a one-step method with an error estimate "
                f"(Rodas5P, Rosenbrock23, Kvaerno5, ...), not {type(self.solver).__name__}"
            )

    def loop(
        self,
        *,
        args,
        terms,
        solver,
        stepsize_controller,
        event,
        saveat,
        t0,
        t1,
        dt0,
        max_steps,
        throw,
        init_state,
        passed_solver_state,
        passed_controller_state,
        progress_meter,
    ):
        _check_setup(terms, stepsize_controller, event, saveat, max_steps)
        if self.rtol is None or self.atol is None:
            raise ValueError(
                "stiffnode.InterpolatingAdjoint needs the adjoint solve's rtol and atol "
                "(stiffnode.solve passes its own)"
            )
        y = init_state.y
        init_state = eqx.tree_at(lambda s: s.y, init_state, object())
        init_state = _nondiff_solver_controller_state(
            self, init_state, passed_solver_state, passed_controller_state
        )
        final_state, aux_stats = _loop_interpolating(
            (y, args, terms),
            self=self,
            solver=solver,
            stepsize_controller=stepsize_controller,
            saveat=saveat,
            t0=t0,
            t1=t1,
            dt0=dt0,
            max_steps=max_steps,
            throw=throw,
            init_state=init_state,
            progress_meter=progress_meter,
        )
        return _only_transpose_ys(final_state), aux_stats


def _check_setup(terms, stepsize_controller, event, saveat, max_steps):
    name = "stiffnode.InterpolatingAdjoint"
    if not (isinstance(terms, WrapTerm) and isinstance(terms.term, diffrax.ODETerm)):
        raise NotImplementedError(f"{name} needs a single diffrax.ODETerm")
    if not isinstance(stepsize_controller, diffrax.AbstractAdaptiveStepSizeController):
        raise ValueError(
            f"{name} replays the forward solve between checkpoints, which needs an adaptive "
            f"step-size controller, not {type(stepsize_controller).__name__}; with fixed "
            "steps use adjoint='recursive' (the discrete adjoint, as cheap there)"
        )
    if event is not None:
        raise NotImplementedError(f"{name} is not compatible with events")
    if max_steps is None:
        raise ValueError(f"{name} needs a finite max_steps (it sizes the checkpoints)")
    sub = saveat.subs
    if not isinstance(sub, diffrax.SubSaveAt) or saveat.dense or sub.steps or sub.fn is not save_y:
        raise NotImplementedError(
            f"{name} supports SaveAt(t0=..., t1=..., ts=...) only: not SaveAt(steps=...), "
            "SaveAt(dense=True), SaveAt(fn=...) or SaveAt(subs=...)"
        )


def _field(terms, t, y, args):
    """The vector field in the solve loop's time (`diffeqsolve` solves in `direction * t`):
    `direction * f(direction * t, y, args)`."""
    direction = terms.direction
    return jtu.tree_map(lambda v: direction.astype(v.dtype) * v, terms.vf(t, y, args))


def _run_loop(self, y__args__terms, *, init_state, saveat, max_steps, **kwargs):
    """The forward solve, with a second `SubSaveAt` storing the state every
    `self.checkpoint_every` accepted steps: the checkpoints. Returns the final state (with
    the caller's `saveat` only) and the checkpoints' `SaveState`."""
    y, args, terms = y__args__terms
    init_state = eqx.tree_at(lambda s: s.y, init_state, y)
    every = self.checkpoint_every
    slots = max(1, max_steps // every)
    checkpoints = SaveState(
        saveat_ts_index=0,
        ts=jnp.full(slots, jnp.inf, dtype=jnp.result_type(init_state.tprev)),
        ys=jtu.tree_map(lambda x: jnp.full((slots, *x.shape), jnp.inf, dtype=x.dtype), y),
        save_index=0,
    )
    with_checkpoints = diffrax.SaveAt(
        subs=(saveat.subs, diffrax.SubSaveAt(steps=every)),
        solver_state=saveat.solver_state,
        controller_state=saveat.controller_state,
        made_jump=saveat.made_jump,
    )
    init_state = eqx.tree_at(
        lambda s: s.save_state, init_state, (init_state.save_state, checkpoints)
    )
    final_state, aux_stats = self._loop(
        args=args,
        terms=terms,
        saveat=with_checkpoints,
        init_state=init_state,
        max_steps=max_steps,
        event=None,
        inner_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
        outer_while_loop=ft.partial(eqxi.while_loop, kind="lax"),
        **kwargs,
    )
    save_state, checkpoints = final_state.save_state
    final_state = eqx.tree_at(lambda s: s.save_state, final_state, save_state)
    return final_state, aux_stats, checkpoints


@eqx.filter_custom_vjp
def _loop_interpolating(y__args__terms, *, self, throw, init_state, **kwargs):
    del throw
    final_state, aux_stats, _ = _run_loop(self, y__args__terms, init_state=init_state, **kwargs)
    return final_state, aux_stats


@_loop_interpolating.def_fwd
def _loop_interpolating_fwd(perturbed, y__args__terms, *, self, throw, init_state, **kwargs):
    del perturbed, throw
    final_state, aux_stats, checkpoints = _run_loop(
        self, y__args__terms, init_state=init_state, **kwargs
    )
    save_state = final_state.save_state
    residuals = (save_state.ts, save_state.ys, checkpoints.ts, checkpoints.ys)
    return (final_state, aux_stats), residuals


def _materialise(y, grad_y):
    return jnp.zeros_like(y) if grad_y is None else grad_y


def _at(tree, j):
    return jtu.tree_map(lambda x: x[j], tree)


def _error_ratio(error, a0, a1, rtol, atol):
    """The RMS over components of `error / (atol + rtol max(|a0|, |a1|))` (diffrax's PID
    controller's measure)."""
    ratios = [
        jnp.ravel(jnp.abs(e) / (atol + rtol * jnp.maximum(jnp.abs(x0), jnp.abs(x1))))
        for e, x0, x1 in zip(*map(jtu.tree_leaves, (error, a0, a1)), strict=True)
    ]
    return jnp.sqrt(jnp.mean(jnp.concatenate(ratios) ** 2))


@_loop_interpolating.def_bwd
def _loop_interpolating_bwd(
    residuals,
    grad_final_state__aux_stats,
    perturbed,
    y__args__terms,
    *,
    self,
    solver,
    stepsize_controller,
    saveat,
    t0,
    t1,
    dt0,
    max_steps,
    throw,
    init_state,
    progress_meter,
):
    del perturbed, saveat, t1, dt0, throw, init_state, progress_meter
    ts, ys, checkpoint_ts, checkpoint_ys = residuals
    grad_ys = jtu.tree_map(_materialise, ys, grad_final_state__aux_stats[0].save_state.ys)
    y0, args, terms = y__args__terms
    params, static = eqx.partition((args, terms), eqx.is_inexact_array)

    def field(theta, t, y):
        args_, terms_ = eqx.combine(theta, static)
        return _field(terms_, t, y, args_)

    replay_solver = for_solve(
        solver, adjoint=diffrax.RecursiveCheckpointAdjoint(), fixed_steps=False, dense=True
    )
    adjoint_solver = self.solver
    interval_steps = self.interval_steps or 4 * self.checkpoint_every + 16
    # The adjoint resolves transients the forward solve did not have (after each jump at a
    # save time; where the interpolated state's derivative kinks at a replayed step's end):
    # up to ~12 attempts a replayed step on Robertson at rtol 1e-8 (BDF's interpolation).
    attempts = 16 * interval_steps
    nodes = jnp.asarray(_GAUSS_NODES, dtype=ts.dtype)
    weights = jnp.asarray(_GAUSS_WEIGHTS, dtype=ts.dtype)

    def interval(a, theta_bar, ta, tb, ya):
        """Across `[ta, tb]`: the replayed forward solve, then the adjoint solved backward
        in `s = -t` (`da/ds = (df/dy)^T a`), with the quadrature of `a^T df/dtheta` on
        each of its steps."""
        forward = diffrax.diffeqsolve(
            terms,
            replay_solver,
            ta,
            tb,
            None,
            ya,
            args=args,
            saveat=diffrax.SaveAt(dense=True),
            stepsize_controller=stepsize_controller,
            max_steps=interval_steps,
            throw=False,
        )
        dense = forward.interpolation
        grid = dense.ts  # the replay's step ends; `ts_size` of them valid
        last = dense.ts_size - 1

        def replayed_step(k):
            """`y(t)` on the replay's `k`-th step from the end: its own interpolation (no
            search over the steps), clipped to the step."""
            i = last - k - 1
            local = dense.interpolation_cls(
                t0=grid[i], t1=grid[i + 1], **jtu.tree_map(lambda x: x[i], dense.infos)
            )
            return lambda t: local.evaluate(jnp.clip(t, grid[i], grid[i + 1]))

        def adjoint_term(y_at):
            def adjoint_field(s, a_, _):
                _, vjp = jax.vjp(lambda y_: field(params, -s, y_), y_at(-s))
                return vjp(a_)[0]

            return diffrax.ODETerm(adjoint_field)

        def quadrature(s0, s1, a_at, y_at, theta_bar_):
            """`theta_bar_ + int_{s0}^{s1} a^T df/dtheta ds` (`dt = -ds`, the same integral
            over `[-s1, -s0]`) by three-point Gauss-Legendre."""
            s = s0 + (s1 - s0) * nodes
            y_s = jax.vmap(y_at)(-s)
            _, vjp = jax.vjp(lambda th: jax.vmap(lambda t_, y_: field(th, t_, y_))(-s, y_s), params)
            scale = (s1 - s0) * weights
            a_s = jtu.tree_map(
                lambda x: x * scale.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)),
                jax.vmap(a_at)(s),
            )
            return jtu.tree_map(jnp.add, theta_bar_, vjp(a_s)[0])

        first = adjoint_term(replayed_step(0))
        error_order = adjoint_solver.error_order(first)
        # The adjoint's steps never cross a replayed step's end, where the interpolated
        # state's derivative jumps (a kink the error estimate would pay for in rejections).
        h_first = grid[last] - grid[last - 1]
        init = (
            0,
            0,
            -tb,
            h_first,
            a,
            theta_bar,
            adjoint_solver.init(first, -tb, -tb + h_first, a, None),
            forward.result != diffrax.RESULTS.successful,
        )

        def running(carry):
            k, count, *_, failed_ = carry
            return (k < last) & (count < attempts) & ~failed_

        def attempt(carry):
            k, count, s, h, a_, theta_bar_, state_, failed_ = carry
            end = -grid[last - k - 1]
            to_end = end - s <= 1.25 * h
            s1 = jnp.where(to_end, end, s + h)
            y_at = replayed_step(k)
            a1, error, dense_info, state1, result = adjoint_solver.step(
                # At a replayed step's start `f` is evaluated afresh with that step's
                # interpolation: the previous step's end value is not the same (BDF's
                # interpolating polynomials differ between steps).
                adjoint_term(y_at),
                s,
                s1,
                a_,
                None,
                state_,
                made_jump=s == -grid[last - k],
            )
            norm = _error_ratio(error, a_, a1, self.rtol, self.atol)
            usable = (result == diffrax.RESULTS.successful) & jnp.isfinite(norm)
            accept = usable & (norm <= 1)
            # After a rejection at most 0.7: the retry is then shorter than the rejected
            # step even where that step was stretched by up to 1.25 to end at `end`.
            factor = jnp.where(usable, jnp.clip(0.9 * norm ** (-1 / error_order), 0.2, 5.0), 0.2)
            factor = jnp.where(accept, factor, jnp.minimum(factor, 0.7))
            a_at = adjoint_solver.interpolation_cls(t0=s, t1=s1, **dense_info).evaluate
            theta_bar_ = jax.lax.cond(
                accept, lambda: quadrature(s, s1, a_at, y_at, theta_bar_), lambda: theta_bar_
            )

            def keep(new, old):
                return jtu.tree_map(lambda n, o: jnp.where(accept, n, o), new, old)

            taken = s1 - s
            # A step cut short to end at a replayed step's end does not shrink the next.
            h_next = jnp.where(accept & to_end, jnp.maximum(h, taken * factor), taken * factor)
            tiny = taken <= 1e-14 * jnp.maximum(jnp.abs(s), jnp.abs(end))
            k = jnp.where(accept & to_end, k + 1, k)
            s = jnp.where(accept, s1, s)
            return (
                k,
                count + 1,
                s,
                h_next,
                keep(a1, a_),
                theta_bar_,
                keep(state1, state_),
                failed_ | (~accept & tiny),
            )

        k, count, _, _, a, theta_bar, _, failed = jax.lax.while_loop(running, attempt, init)
        return a, theta_bar, failed | (k < last)

    # Backward over the intervals between t0, the save times and the checkpoints (both
    # ascending, merged as we go, without copies): at a save time `a` jumps by the loss's
    # cotangent there; checkpoints up to the last save only (after it the cotangent is 0).
    saved = jnp.sum(jnp.isfinite(ts))
    t_end = jnp.where(saved > 0, ts[jnp.maximum(saved - 1, 0)], t0)
    minus_inf = jnp.array(-jnp.inf, ts.dtype)

    def body(carry):
        i, c, t_right, a, theta_bar, failed, _ = carry
        t_save = jnp.where(i > 0, ts[jnp.maximum(i - 1, 0)], minus_inf)
        t_check = jnp.where(c > 0, checkpoint_ts[jnp.maximum(c - 1, 0)], minus_inf)
        from_save = (i > 0) & (t_save >= t_check)
        from_check = ~from_save & (c > 0)
        t_left = jnp.where(from_save, t_save, jnp.where(from_check, t_check, t0))
        y_left = jtu.tree_map(
            lambda saved_, checked, first: jnp.where(
                from_save, saved_, jnp.where(from_check, checked, first)
            ),
            _at(ys, jnp.maximum(i - 1, 0)),
            _at(checkpoint_ys, jnp.maximum(c - 1, 0)),
            y0,
        )
        a, theta_bar, failed_here = jax.lax.cond(
            t_right > t_left,
            lambda: interval(a, theta_bar, t_left, t_right, y_left),
            lambda: (a, theta_bar, jnp.array(False)),
        )
        jump = _at(grad_ys, jnp.maximum(i - 1, 0))
        a = jtu.tree_map(lambda x, g: x + jnp.where(from_save, g, 0), a, jump)
        i = i - from_save.astype(i.dtype)
        c = c - from_check.astype(c.dtype)
        done = ~from_save & ~from_check
        return i, c, t_left, a, theta_bar, failed | failed_here, done

    last = jnp.maximum(saved - 1, 0)
    a = jtu.tree_map(lambda g: jnp.where(saved > 0, g, 0), _at(grad_ys, last))
    checks = jnp.sum(jnp.isfinite(checkpoint_ts) & (checkpoint_ts <= t_end))
    init = (
        last,
        checks,
        t_end,
        a,
        jtu.tree_map(jnp.zeros_like, params),
        jnp.array(False),
        jnp.array(False),
    )
    *_, a, theta_bar, failed, _ = jax.lax.while_loop(lambda carry: ~carry[-1], body, init)
    # Always checked: a gradient has no result code to carry a failure.
    a, theta_bar = eqx.error_if(
        (a, theta_bar),
        failed,
        "stiffnode.InterpolatingAdjoint: a replayed forward solve or the backward "
        "adjoint solve between two checkpoints failed (its step budget, interval_steps "
        "for the replay and 16 interval_steps for the adjoint, exhausted, or NaN/inf); "
        "raise interval_steps, lower checkpoint_every or loosen the adjoint's rtol",
    )
    args_bar, terms_bar = theta_bar
    return a, args_bar, terms_bar
