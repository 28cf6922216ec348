"""Automatic switching between a non-stiff and a stiff method, from a stiffness estimate.

A problem is stiff where an explicit method's step is limited by stability rather than
accuracy: `h |lambda| ~ B`, with `lambda` the dominant eigenvalue of the Jacobian and `B`
the method's stability boundary on the negative real axis (Hairer & Wanner II, IV.2).
`|lambda|` comes from `stiffness_estimate`: the explicit method's stages, and one power
iteration (a JVP) per step on the stiff side.

`AutoSwitch` starts with the non-stiff method, switches to the stiff one after
`stiff_after` consecutive accepted steps with `h |lambda| > stiff_ratio B`, and back after
`nonstiff_after` consecutive stiff steps with `h |lambda| < nonstiff_ratio B` (the explicit
method would be stable with room to spare), or when the stiff steps stay too short to pay
for their cost (`min_gain`: a "futile" stint, after which the evidence needed for the next
switch grows `futile_growth`-fold); at most `max_switches` switches.
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from .bdf import BDF
from .rosenbrock import Rodas5P
from .self_controlled import FROM_CONTROLLER, ControllerTolerances
from .stiffness_estimate import (
    explicit_stiffness,
    has_stage_estimate,
    power_iteration_start,
    power_iteration_step,
    stability_boundary,
)

DENSE_MAX_STATES = 64
"""`AutoSwitch.for_states`: up to this many states the stiff method is Rodas5P (a dense
Jacobian by `jacfwd` and an LU every step), above it matrix-free BDF (GMRES on JVPs, the
Jacobian never formed)."""


class SwitchStats(eqx.Module):
    """What `AutoSwitch` did over the accepted steps (a rejected step's are discarded)."""

    num_switches: Int[Array, ""]
    switch_times: Float[Array, " max_switches"]  # NaN beyond num_switches
    num_steps_nonstiff: Int[Array, ""]
    num_steps_stiff: Int[Array, ""]
    time_nonstiff: Float[Array, ""]
    time_stiff: Float[Array, ""]
    stiffness_max: Float[Array, ""]  # the largest |lambda| estimate
    # Along the accepted steps when `AutoSwitch(history=H)` (a ring of the last H; NaN and
    # False where unwritten): the step's end, |lambda|, h |lambda| / B as the switching
    # rule sees it, and whether the step was stiff.
    history_t: Float[Array, " history"]
    history_stiffness: Float[Array, " history"]
    history_h_lambda: Float[Array, " history"]
    history_stiff_mode: Bool[Array, " history"]


# The scalar counters travel packed in one int32 vector, the times in one float vector:
# updated by one fused operation per step instead of one small kernel each (measured on
# Lorenz, where a Tsit5 step is 0.5 us: 25% of the step when kept apart).
_COUNTERS = (
    "stiff_mode",  # 1 while the stiff method is in use
    "switched",  # 1: the method in use starts afresh at this step
    "streak",  # accepted steps pointing to the other method, since the last reset
    "contrary",  # consecutive accepted steps that do not
    "num_switches",
    "num_steps_nonstiff",
    "num_steps_stiff",
    "futile",  # stiff stints that ended because the stiff steps were no longer
)
_C = {name: i for i, name in enumerate(_COUNTERS)}


class AutoSwitchState(eqx.Module):
    counters: Int[Array, " 8"]  # `_COUNTERS`
    times: Float[Array, " 4"]  # time_nonstiff, time_stiff; the last explicit step before the
    # switch to the stiff method, and the longest stiff step since
    stiffness_max: Float[Array, ""]
    switch_times: Float[Array, " max_switches"]
    history: tuple[Array, Array, Array, Array]  # t, |lambda|, h |lambda| / B, stiff
    nonstiff_state: PyTree
    stiff_state: PyTree
    power_vector: Array  # the stiff side's power-iteration vector (flat, real)

    @property
    def stiff_mode(self) -> Bool[Array, ""]:
        return self.counters[_C["stiff_mode"]] == 1

    @property
    def stats(self) -> SwitchStats:
        c = self.counters
        return SwitchStats(
            num_switches=c[_C["num_switches"]],
            switch_times=self.switch_times,
            num_steps_nonstiff=c[_C["num_steps_nonstiff"]],
            num_steps_stiff=c[_C["num_steps_stiff"]],
            time_nonstiff=self.times[0],
            time_stiff=self.times[1],
            stiffness_max=self.stiffness_max,
            history_t=self.history[0],
            history_stiffness=self.history[1],
            history_h_lambda=self.history[2],
            history_stiff_mode=self.history[3],
        )


class AutoSwitchInterpolation(eqx.Module):
    """Builds the dense output of a step from either method's (`stiff_mode` selects)."""

    nonstiff_cls: Callable = eqx.field(static=True)
    stiff_cls: Callable = eqx.field(static=True)

    def __call__(self, *, t0, t1, stiff_mode, nonstiff, stiff):
        return _Selected(
            t0=t0,
            t1=t1,
            stiff_mode=stiff_mode,
            nonstiff=self.nonstiff_cls(t0=t0, t1=t1, **nonstiff),
            stiff=self.stiff_cls(t0=t0, t1=t1, **stiff),
        )


class _Selected(diffrax.AbstractLocalInterpolation):
    t0: Array
    t1: Array
    stiff_mode: Array
    nonstiff: diffrax.AbstractLocalInterpolation
    stiff: diffrax.AbstractLocalInterpolation

    def evaluate(self, t0, t1=None, left: bool = True):
        a = self.nonstiff.evaluate(t0, t1, left)
        b = self.stiff.evaluate(t0, t1, left)
        return jax.tree.map(lambda x, y: jnp.where(self.stiff_mode, y, x), a, b)


def _unset_scan_kind(solver) -> bool:
    return isinstance(solver, diffrax.AbstractRungeKutta) and solver.scan_kind is None


def _int32(x) -> Array:
    """`x` (bool or int) as int32, explicitly: strict dtype promotion mixes neither."""
    return jnp.asarray(x).astype(jnp.int32)


def _zeros_like_shapes(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


class AutoSwitch(diffrax.AbstractAdaptiveSolver, diffrax.AbstractImplicitSolver):
    """A non-stiff explicit Runge-Kutta method and a stiff method, switched automatically
    (module docstring), as one diffrax solver: `solve(..., solver="auto")` is
    `AutoSwitch(diffrax.Tsit5(), Rodas5P())` under a PID controller.

    Args:
        nonstiff: an explicit Runge-Kutta solver whose last two stages are at `t1` and whose
            last stage is `f(t1, y1)` (Tsit5, Dopri5).
        stiff: any adaptive diffrax solver (Rodas5P, Rodas3, BDF, Kvaerno5, ...).
        stiff_ratio: a non-stiff step is stability-limited when `h |lambda| > stiff_ratio B`.
        nonstiff_ratio: a stiff step could be explicit when `h |lambda| < nonstiff_ratio B`.
        stiff_after: switch to `stiff` after this many stability-limited steps.
        nonstiff_after: switch back after this many explicit-capable steps.
        min_gain: a stiff step shorter than this many times the explicit step before the
            switch counts toward switching back (the stiff method costs more per step).
        futile_growth: each stiff stint ended that way multiplies `stiff_after` by this
            for the next switch to `stiff`. 8 against 2 (`benchmarks/auto_switching.py`,
            `futile_growth` section, one run): the digits gradient flow, mildly stiff where
            BDF never pays, tries the stiff method three times with 2 (1.41x Tsit5's time,
            467 steps) and twice with 8 (1.29x, 442); HIRES 0.69x / 0.66x Rodas5P (259 /
            277 steps). 4 and 16 were tried by hand: 16 makes HIRES take 378 steps.
        reset_after: the count of steps toward a switch starts again after this many
            consecutive steps that do not point the same way (Hairer's DOPRI5: 15 and 6).
        max_switches: at most this many switches; the last is to `stiff`, which stays,
            unless the stiff steps were too short to pay (`min_gain`).
        history: keep the stiffness estimate and the method of the last `history` accepted
            steps (`Solution.stats["history_*"]`); 0 keeps none.
        root_finder: the tolerances handed to `stiff` (by default the controller's).

    `Solution.stats` (through `stiffnode.solve`) gains `num_switches`, `switch_times`
    (NaN-padded to `max_switches`), `num_steps_nonstiff`, `num_steps_stiff`,
    `time_nonstiff`, `time_stiff`, `stiffness_max` (the largest `|lambda|` estimate) and,
    with `history`, the estimate and method along the steps.
    """

    nonstiff: diffrax.AbstractRungeKutta = diffrax.Tsit5()
    stiff: diffrax.AbstractAdaptiveSolver = Rodas5P()
    stiff_ratio: float = eqx.field(default=0.6, static=True)
    nonstiff_ratio: float = eqx.field(default=0.3, static=True)
    stiff_after: int = eqx.field(default=10, static=True)
    nonstiff_after: int = eqx.field(default=3, static=True)
    reset_after: int = eqx.field(default=6, static=True)
    min_gain: float = eqx.field(default=5.0, static=True)
    futile_growth: int = eqx.field(default=8, static=True)
    max_switches: int = eqx.field(default=6, static=True)
    history: int = eqx.field(default=0, static=True)
    root_finder: object = ControllerTolerances()
    root_find_max_steps: int = eqx.field(default=0, static=True)

    term_structure: ClassVar = diffrax.AbstractTerm

    def __check_init__(self):
        if not has_stage_estimate(self.nonstiff):
            raise ValueError(
                "nonstiff must be an explicit Runge-Kutta solver whose last two stages are "
                f"at t1 and first same as last (Tsit5, Dopri5), got {self.nonstiff!r}"
            )
        if not isinstance(self.stiff, diffrax.AbstractAdaptiveSolver):
            raise ValueError(f"stiff must be an adaptive diffrax solver, got {self.stiff!r}")
        if not 0 < self.nonstiff_ratio < self.stiff_ratio:
            raise ValueError(
                f"need 0 < nonstiff_ratio < stiff_ratio, got {self.nonstiff_ratio}, "
                f"{self.stiff_ratio}"
            )
        for name in (
            "stiff_after", "nonstiff_after", "reset_after", "max_switches", "futile_growth"
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.min_gain >= 1:
            raise ValueError(f"min_gain must be at least 1, got {self.min_gain!r}")
        if not (isinstance(self.history, int) and self.history >= 0):
            raise ValueError(f"history must be a non-negative int, got {self.history!r}")

    @classmethod
    def for_states(cls, num_states: int, **kwargs) -> "AutoSwitch":
        """Tsit5 with a stiff method chosen by size: Rodas5P up to `DENSE_MAX_STATES`
        states, matrix-free BDF (`linear_solver="gmres"`) above (`solve(solver="auto")`)."""
        if num_states > DENSE_MAX_STATES:
            kwargs.setdefault("stiff", BDF(linear_solver="gmres"))
        return cls(**kwargs)

    def for_adjoint(self, adjoint: diffrax.AbstractAdjoint) -> "AutoSwitch":
        """`self` with its Runge-Kutta methods' stage loops as diffrax sets a Runge-Kutta
        solver's own under `adjoint` (diffrax cannot see inside `AutoSwitch`):
        `ForwardMode` needs a plain loop (the default stage loop is a `custom_vjp`, which
        `jax.jvp` cannot go through), `DirectAdjoint` a bounded one; `stiffnode.solve` does
        this itself, a direct `diffrax.diffeqsolve` call with those adjoints needs it."""
        if isinstance(adjoint, diffrax.ForwardMode):
            kind = "lax"
        elif isinstance(adjoint, diffrax.DirectAdjoint):
            kind = "bounded"
        else:
            return self
        methods = [m for m in ("nonstiff", "stiff") if _unset_scan_kind(getattr(self, m))]
        return eqx.tree_at(
            lambda s: [getattr(s, m).scan_kind for m in methods],
            self,
            [kind] * len(methods),
            is_leaf=lambda x: x is None,
        )

    @property
    def interpolation_cls(self):
        return AutoSwitchInterpolation(
            self.nonstiff.interpolation_cls, self.stiff.interpolation_cls
        )

    @property
    def _futile_power_cap(self) -> int:
        """The largest `k` with `stiff_after * futile_growth**k` within int32."""
        k = 0
        while k < 10 and self.stiff_after * self.futile_growth ** (k + 1) < 2**31:
            k += 1
        return k

    @property
    def boundary(self) -> float:
        """The non-stiff method's stability boundary on the negative real axis."""
        return stability_boundary(self.nonstiff.tableau)

    def order(self, terms):
        return min(self.nonstiff.order(terms), self.stiff.order(terms) or np.inf)

    def error_order(self, terms):
        return min(self.nonstiff.error_order(terms), self.stiff.error_order(terms))

    def _stiff_solver(self):
        if not isinstance(self.stiff, diffrax.AbstractImplicitSolver):
            return self.stiff
        names = [k for k in ("rtol", "atol", "norm") if hasattr(self.root_finder, k)]
        return eqx.tree_at(
            lambda s: tuple(getattr(s.root_finder, k) for k in names),
            self.stiff,
            tuple(getattr(self.root_finder, k) for k in names),
        )

    def _scale(self, y) -> Array | float:
        """`atol + rtol |y|` (flat, as `|.|` of the state's components) with the controller's
        tolerances; 1 when there are none (fixed steps)."""
        rtol, atol = (getattr(self.root_finder, k, None) for k in ("rtol", "atol"))
        if any(x is None or x is FROM_CONTROLLER for x in (rtol, atol)):
            return 1.0
        flat = jnp.abs(ravel_pytree(y)[0])
        return jnp.asarray(atol, flat.dtype) + jnp.asarray(rtol, flat.dtype) * flat

    def init(self, terms, t0, t1, y0, args) -> AutoSwitchState:
        v = power_iteration_start(terms, t0, t1, y0, args)
        tdtype = jnp.result_type(t0, t1)
        real = v.dtype
        return AutoSwitchState(
            counters=jnp.zeros(len(_COUNTERS), jnp.int32),
            times=jnp.zeros(4, tdtype),
            stiffness_max=jnp.array(0.0, real),
            switch_times=jnp.full((self.max_switches,), jnp.nan, tdtype),
            history=(
                jnp.full((self.history,), jnp.nan, tdtype),
                jnp.full((self.history,), jnp.nan, real),
                jnp.full((self.history,), jnp.nan, real),
                jnp.zeros((self.history,), bool),
            ),
            nonstiff_state=self.nonstiff.init(terms, t0, t1, y0, args),
            # A placeholder: the stiff method starts afresh at every switch to it (its
            # `init` evaluates f, for BDF and Rodas5P, wasted on a solve that never turns
            # stiff).
            stiff_state=_zeros_like_shapes(
                jax.eval_shape(lambda: self._stiff_solver().init(terms, t0, t1, y0, args))
            ),
            power_vector=v,
        )

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def solve_stats(self, final_state: AutoSwitchState) -> dict[str, Array]:
        """The statistics `stiffnode.solve` adds to `Solution.stats`, from the final state."""
        names = [k for k in SwitchStats.__dataclass_fields__ if self.history or "history" not in k]
        return {k: getattr(final_state.stats, k) for k in names}

    def step(self, terms, t0, t1, y0, args, solver_state: AutoSwitchState, made_jump):
        state = solver_state
        switched = state.counters[_C["switched"]] == 1
        stiff_solver = self._stiff_solver()
        tdtype = jnp.result_type(t0, t1)
        h = jnp.asarray(t1 - t0, tdtype)
        shapes = {
            "nonstiff": jax.eval_shape(
                lambda: self.nonstiff.step(
                    terms, t0, t1, y0, args, state.nonstiff_state, made_jump
                )[2]
            ),
            "stiff": jax.eval_shape(
                lambda: stiff_solver.step(terms, t0, t1, y0, args, state.stiff_state, made_jump)[2]
            ),
        }

        # The method switched to starts afresh at (t0, y0), inside its own branch so that
        # the other method's steps do not pay for the check.
        def nonstiff(_):
            # (a jump makes an FSAL method evaluate f(t0, y0) afresh: its restart)
            y1, err, dense, inner, result = self.nonstiff.step(
                terms, t0, t1, y0, args, state.nonstiff_state, jnp.logical_or(made_jump, switched)
            )
            # Decisions in the error control's norm, which sees components far below the
            # others (Robertson's y2); the reported |lambda| in the 2-norm, which for a
            # normal Jacobian is at most its spectral radius (the scaled one is not).
            h_lambda = explicit_stiffness(self.nonstiff.tableau, dense["k"], self._scale(y1))
            h_lambda_2 = explicit_stiffness(self.nonstiff.tableau, dense["k"])
            dense = {"nonstiff": dense, "stiff": _zeros_like_shapes(shapes["stiff"])}
            return (y1, err, dense, inner, state.stiff_state, result, h_lambda, h_lambda_2,
                    state.power_vector)  # fmt: skip

        def stiff(_):
            inner = jax.lax.cond(
                switched,
                lambda: stiff_solver.init(terms, t0, t1, y0, args),
                lambda: state.stiff_state,
            )
            y1, err, dense, inner, result = stiff_solver.step(
                terms, t0, t1, y0, args, inner, made_jump
            )
            v, lam = power_iteration_step(terms, t0, t1, y1, args, state.power_vector)
            h_lambda = h.astype(lam.dtype) * lam
            dense = {"nonstiff": _zeros_like_shapes(shapes["nonstiff"]), "stiff": dense}
            return y1, err, dense, state.nonstiff_state, inner, result, h_lambda, h_lambda, v

        y1, err, dense, ns_state, s_state, result, h_lambda, h_lambda_2, v = jax.lax.cond(
            state.stiff_mode, stiff, nonstiff, None
        )
        h_lambda, h_lambda_2 = jax.lax.stop_gradient((h_lambda, h_lambda_2))
        v = jax.lax.stop_gradient(v)
        boundary = self.boundary
        c = state.counters
        mode = state.stiff_mode
        # The stiff method pays for itself only with steps well beyond the explicit
        # method's stability limit, the step it was switching from; a stint whose longest
        # step stays short of that is "futile": back, and each futile stint multiplies the
        # evidence needed for the next switch to it by futile_growth.
        longest = jnp.where(mode, jnp.maximum(state.times[3], h), 0.0)
        futile = mode & (longest < self.min_gain * state.times[2])
        toward_other = jnp.where(
            mode,
            (h_lambda < self.nonstiff_ratio * boundary) | futile,
            h_lambda > self.stiff_ratio * boundary,
        )
        # As Hairer's DOPRI5 stiffness test: the count survives a few contrary steps (a
        # step shrunk after a rejection is not a sign of relaxation).
        contrary = jnp.where(toward_other, 0, c[_C["contrary"]] + 1)
        streak = jnp.where(
            toward_other,
            c[_C["streak"]] + 1,
            jnp.where(contrary >= self.reset_after, 0, c[_C["streak"]]),
        )
        growth = self.futile_growth ** jnp.minimum(c[_C["futile"]], self._futile_power_cap)
        needed = jnp.where(mode, self.nonstiff_after, self.stiff_after * growth)
        # At most max_switches. Back from the stiff method only while a last switch to it
        # remains, unless its stint is futile; to it, once it has been futile, only while a
        # futile return remains (the solve never ends stuck in a futile stiff stint).
        room = c[_C["num_switches"]] + 1 < self.max_switches
        left = c[_C["num_switches"]] < self.max_switches
        may = jnp.where(mode, room | (futile & left), left & (room | (c[_C["futile"]] == 0)))
        switch = (streak >= needed) & may
        counters = jnp.stack(
            [
                _int32(mode ^ switch),
                _int32(switch),
                jnp.where(switch, 0, streak),
                jnp.where(switch, 0, contrary),
                c[_C["num_switches"]] + _int32(switch),
                c[_C["num_steps_nonstiff"]] + _int32(~mode),
                c[_C["num_steps_stiff"]] + _int32(mode),
                jnp.minimum(c[_C["futile"]] + _int32(switch & mode & futile), 10),
            ]
        )
        # Times as the caller sees them (diffrax runs a reverse-time solve in -t).
        t_real = jnp.where(jnp.real(jnp.asarray(terms.contr(t0, t1))) < 0, -t1, t1)
        index = jnp.minimum(c[_C["num_switches"]], self.max_switches - 1)
        at_index = jnp.arange(self.max_switches, dtype=jnp.int32) == index
        switch_times = jnp.where(switch & at_index, t_real, state.switch_times)
        stiffness = (h_lambda_2 / h).astype(state.stiffness_max.dtype)
        history = state.history
        if self.history:
            step_index = c[_C["num_steps_nonstiff"]] + c[_C["num_steps_stiff"]]
            at = jnp.arange(self.history, dtype=jnp.int32) == step_index % self.history
            new = (t_real, stiffness, (h_lambda / boundary).astype(stiffness.dtype), mode)
            history = tuple(jnp.where(at, a, b) for a, b in zip(new, history, strict=True))
        new_state = AutoSwitchState(
            counters=counters,
            times=jnp.concatenate(
                [
                    state.times[:2]
                    + jnp.where(jnp.arange(2, dtype=jnp.int32) == _int32(mode), h, 0.0),
                    jnp.where(switch & ~mode, h, state.times[2:3]),
                    longest[None],
                ]
            ),
            stiffness_max=jnp.maximum(state.stiffness_max, stiffness),
            switch_times=switch_times,
            history=history,
            nonstiff_state=ns_state,
            stiff_state=s_state,
            power_vector=v,
        )
        dense = dict(dense, stiff_mode=mode)
        return y1, err, dense, new_state, result
