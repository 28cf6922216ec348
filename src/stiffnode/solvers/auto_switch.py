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

The switching has a cost on every step (the stiffness test, the choice between the two
methods, their states carried side by side), comparable to a whole explicit step of a small
system. With the non-stiff method one diffrax step therefore holds about `substeps` explicit
sub-steps, taken in an inner loop under their own error control (as diffrax's PID
controller would take them: the same tolerances, norm and I-controller), each seen by the
stiffness rule; the choice of method is made once per diffrax step, whose length diffrax's
controller sizes from the count of sub-steps it held (`_explicit_steps`).
"""

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from .bdf import BDF
from .explicit_step import explicit_rk_step
from .packed import Packed, pack
from .rosenbrock import AbstractRosenbrock, Rodas5P
from .self_controlled import FROM_CONTROLLER, ControllerTolerances
from .stiffness_estimate import (
    has_stage_estimate,
    power_iteration_start,
    power_iteration_step,
    stability_boundary,
    stage_differences,
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
    num_rejected_substeps: Int[Array, ""]
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


_COUNTS = ("streak", "contrary", "num_switches", "num_steps_nonstiff", "num_steps_stiff",
           "futile", "rejected_substeps")  # fmt: skip
_TIMES = ("time_nonstiff", "time_stiff", "switch_step", "longest_stiff_step")


class AutoSwitchState(eqx.Module):
    """`AutoSwitch`'s state as a step reads it; diffrax carries it packed, one flat array per
    dtype (`packed.pack`; `Solution.solver_state.unpack()` gives it back)."""

    stiff_mode: Bool[Array, ""]  # the stiff method is in use
    switched: Bool[Array, ""]  # the method in use starts afresh at this step
    streak: Int[Array, ""]  # accepted steps pointing to the other method, since the last reset
    contrary: Int[Array, ""]  # consecutive accepted steps that do not
    num_switches: Int[Array, ""]
    num_steps_nonstiff: Int[Array, ""]
    num_steps_stiff: Int[Array, ""]
    futile: Int[Array, ""]  # stiff stints that ended because the stiff steps were no longer
    rejected_substeps: Int[Array, ""]  # explicit sub-steps rejected by their own error control
    time_nonstiff: Float[Array, ""]  # time spent in each method
    time_stiff: Float[Array, ""]
    switch_step: Float[Array, ""]  # the explicit step size before the switch to the stiff one
    longest_stiff_step: Float[Array, ""]  # the longest stiff step since
    next_substep: Float[Array, ""]  # the next explicit sub-step's size
    stiffness_max: Float[Array, ""]
    switch_times: Float[Array, " max_switches"]
    history: tuple[Array, Array, Array, Array]  # t, |lambda|, h |lambda| / B, stiff
    nonstiff_state: PyTree
    stiff_state: Packed  # the stiff method's, packed (the non-stiff steps pass it through)
    power_vector: Array  # the stiff side's power-iteration vector (flat, real)

    @property
    def stats(self) -> SwitchStats:
        return SwitchStats(
            num_switches=self.num_switches,
            switch_times=self.switch_times,
            num_steps_nonstiff=self.num_steps_nonstiff,
            num_steps_stiff=self.num_steps_stiff,
            num_rejected_substeps=self.rejected_substeps,
            time_nonstiff=self.time_nonstiff,
            time_stiff=self.time_stiff,
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
            nonstiff=_Substeps(
                t0=t0,
                t1=t1,
                sub_t0=nonstiff["t0"],
                sub_t1=nonstiff["t1"],
                steps=nonstiff["steps"],
                interpolation_cls=self.nonstiff_cls,
            ),
            stiff=self.stiff_cls(t0=t0, t1=t1, **stiff),
        )


class _Substeps(diffrax.AbstractLocalInterpolation):
    """The dense output of a step made of explicit sub-steps: each one's own interpolant."""

    t0: Array
    t1: Array
    sub_t0: Float[Array, " slots"]
    sub_t1: Float[Array, " slots"]  # +inf in the slots left unused
    steps: PyTree  # the sub-steps' dense information, leading axis the slots
    interpolation_cls: Callable = eqx.field(static=True)

    def evaluate(self, t0, t1=None, left: bool = True):
        if t1 is not None:
            return jax.tree.map(
                lambda a, b: a - b, self.evaluate(t1, left=left), self.evaluate(t0, left=left)
            )
        last = jnp.maximum(jnp.sum(_int32(jnp.isfinite(self.sub_t1))) - 1, 0)
        i = jnp.minimum(jnp.sum(_int32(self.sub_t1 < t0)), last)
        step = jax.tree.map(lambda x: x[i], self.steps)
        return self.interpolation_cls(t0=self.sub_t0[i], t1=self.sub_t1[i], **step).evaluate(t0)


class _Tally(eqx.Module):
    """What the accepted (sub-)steps of one diffrax step add to the switching rule."""

    # streak, contrary, accepted steps since the solve began, rejected explicit sub-steps
    # (one vector: one fused update per sub-step)
    counts: Int[Array, " 4"]
    stiffness_max: Float[Array, ""]
    history: tuple[Array, Array, Array, Array]

    streak = property(lambda self: self.counts[0])
    contrary = property(lambda self: self.counts[1])
    steps = property(lambda self: self.counts[2])
    rejected = property(lambda self: self.counts[3])

    def observe(self, solver, h, t_real, h_lambda, h_lambda_2, stiff_mode: bool, toward_other):
        """One more accepted step of size `h` ending at `t_real`; `toward_other`: it points
        to the other method."""
        # As Hairer's DOPRI5 stiffness test: the count survives a few contrary steps (a
        # step shrunk after a rejection is not a sign of relaxation).
        contrary = jnp.where(toward_other, 0, self.contrary + 1)
        streak = jnp.where(
            toward_other,
            self.streak + 1,
            jnp.where(contrary >= solver.reset_after, 0, self.streak),
        )
        stiffness = (h_lambda_2 / h.astype(h_lambda_2.dtype)).astype(self.stiffness_max.dtype)
        history = self.history
        if solver.history:
            at = jnp.arange(solver.history, dtype=jnp.int32) == self.steps % solver.history
            new = (
                t_real,
                stiffness,
                (h_lambda / solver.boundary).astype(stiffness.dtype),
                jnp.asarray(stiff_mode),
            )
            history = tuple(jnp.where(at, a, b) for a, b in zip(new, history, strict=True))
        return _Tally(
            counts=jnp.stack([streak, contrary, self.steps + 1, self.rejected]),
            stiffness_max=jnp.maximum(self.stiffness_max, stiffness),
            history=history,
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


def _vector(scalars, dtype=None) -> Array:
    """`jnp.stack(scalars)` written as a chain of in-place updates of one vector: each
    kernel waits for the one before, where a stack of scalars computed apart is a kernel per
    scalar, all ready at once (more than 8 ready at once go to XLA:CPU's thread pool:
    `packed`). (A sum of one-hot masks would be one kernel, but its masks are constants,
    and XLA:CPU sets up every constant of a program on every call: `packed`.)"""
    dtype = dtype or jnp.result_type(*scalars)
    out = jnp.zeros(len(scalars), dtype)
    for i, x in enumerate(scalars):
        out = jax.lax.dynamic_update_index_in_dim(out, jnp.asarray(x).astype(dtype), i, 0)
    return out


def _flat(tree) -> Array:
    return ravel_pytree(tree)[0]


def _unflatten_like(flat: Array, tree):
    """`flat` (real or complex, `tree`'s size) in `tree`'s structure and dtypes."""
    return ravel_pytree(tree)[1](flat.astype(_flat(tree).dtype))


def _caller_time(terms, t0, t1) -> Callable[[Array], Array]:
    """`t ->` `t` as the caller sees it: diffrax runs a reverse-time solve in `-t`."""
    reverse = jnp.real(jnp.asarray(terms.contr(t0, t1))) < 0
    return lambda t: jnp.where(reverse, -t, t)


def _zeros_like_shapes(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


class AutoSwitch(diffrax.AbstractAdaptiveSolver, diffrax.AbstractImplicitSolver):
    """A non-stiff explicit Runge-Kutta method and a stiff method, switched automatically
    (module docstring), as one diffrax solver: `solve(..., solver="auto")` is
    `AutoSwitch(diffrax.Tsit5(), Rodas5P())` under a PID controller.

    Args:
        nonstiff: an explicit Runge-Kutta solver whose last two stages are at `t1` and whose
            last stage is `f(t1, y1)` (Tsit5, Dopri5); its steps are taken from its tableau
            with the stages written out (`explicit_step.explicit_rk_step`, faster than
            diffrax's stage loop), its dense output is its own.
        stiff: any adaptive diffrax solver (Rodas5P, Rodas3, BDF, Kvaerno5, ...).
        stiff_ratio: a non-stiff step is stability-limited when `h |lambda| > stiff_ratio B`.
        nonstiff_ratio: a stiff step could be explicit when `h |lambda| < nonstiff_ratio B`.
        stiff_after: switch to `stiff` after this many stability-limited steps.
        nonstiff_after: switch back after this many explicit-capable steps.
        min_gain: a stiff step shorter than this many times the explicit step before the
            switch counts toward switching back (the stiff method costs more per step).
        futile_growth: each stiff stint ended that way multiplies `stiff_after` by this
            for the next switch to `stiff` (the choice of 8 is measured in
            `benchmarks/auto_switching.py`).
        reset_after: the count of steps toward a switch starts again after this many
            consecutive steps that do not point the same way (Hairer's DOPRI5: 15 and 6).
        max_switches: at most this many switches; the last is to `stiff`, which stays,
            unless the stiff steps were too short to pay (`min_gain`).
        history: keep the stiffness estimate and the method of the last `history` accepted
            steps (`Solution.stats["history_*"]`); 0 keeps none.
        substeps: with the non-stiff method, one diffrax step is about this many explicit
            sub-steps under their own error control (the controller's `rtol`, `atol`,
            `norm`), so that the switching machinery runs once per `substeps` explicit
            steps; the stiffness rule still sees every sub-step. diffrax shortens a step
            only after a rejection: a step that would need more than `2 * substeps` at the
            present sub-step size is rejected before any work, one whose sub-steps shrink
            on the way as soon as they reach `4 * substeps` (the dense output's slots) or
            those still needed would take it past `8 * substeps`. 1: one explicit step
            per diffrax step, its error handed to the controller (what `for_states` picks
            above `DENSE_MAX_STATES` states). Without tolerances (fixed steps and no
            `root_finder` tolerances) always 1; `stiffnode.solve` makes it 1 under fixed
            steps and with `SaveAt(dense=True)` (`for_solve`, `without_substeps`).
        stability_cap: with one explicit step per diffrax step (`substeps=1`), a step whose
            `h |lambda|` reached `stability_cap B` tells diffrax's controller not to grow the
            next (its error, for the step-size factor only, raised to
            `(h |lambda| / (stability_cap B))**p`, below 1). At the stability limit an
            I-controller grows the step until the error rejects it, every few steps
            (Hairer & Wanner II, IV.2). Not applied to sub-steps, where it costs more steps
            than the rejections it saves (`benchmarks/auto_switching.py`). None: off.
        root_finder: the tolerances handed to `stiff` (by default the controller's).

    `Solution.stats` (through `stiffnode.solve`) gains `num_switches`, `switch_times`
    (NaN-padded to `max_switches`), `num_steps_nonstiff` (accepted explicit sub-steps),
    `num_rejected_substeps`, `num_steps_stiff`, `time_nonstiff`, `time_stiff`,
    `stiffness_max` (the largest `|lambda|` estimate) and, with `history`, the estimate and
    method along the (sub-)steps. `num_steps` and `max_steps` count diffrax's steps: with
    sub-steps, up to `4 * substeps` explicit steps each.
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
    substeps: int = eqx.field(default=16, static=True)
    stability_cap: float | None = eqx.field(default=1.0, static=True)
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
            "stiff_after",
            "nonstiff_after",
            "reset_after",
            "max_switches",
            "futile_growth",
            "substeps",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.min_gain >= 1:
            raise ValueError(f"min_gain must be at least 1, got {self.min_gain!r}")
        if self.stability_cap is not None and not self.stability_cap > 0:
            raise ValueError(f"stability_cap must be positive or None, got {self.stability_cap!r}")
        if not (isinstance(self.history, int) and self.history >= 0):
            raise ValueError(f"history must be a non-negative int, got {self.history!r}")

    @classmethod
    def for_states(cls, num_states: int, **kwargs) -> "AutoSwitch":
        """Tsit5 with a stiff method chosen by size (`solve(solver="auto")`): up to
        `DENSE_MAX_STATES` states Rodas5P and explicit sub-steps (`substeps`: the switching
        costs more than a step of a small system), above matrix-free BDF
        (`linear_solver="gmres"`) and one explicit step per step (f costs more than the
        switching; sub-steps would hold dense output the size of `4 * substeps` steps)."""
        if num_states > DENSE_MAX_STATES:
            kwargs.setdefault("stiff", BDF(linear_solver="gmres"))
            kwargs.setdefault("substeps", 1)
        return cls(**kwargs)

    def for_solve(
        self,
        *,
        adjoint: diffrax.AbstractAdjoint,
        fixed_steps: bool,
        dense: bool,
        differentiated: bool = False,
    ) -> "AutoSwitch":
        """`self` set up for a solve (`solvers.for_solve`, called by `stiffnode.solve`):
        `for_adjoint(adjoint)`, and `without_substeps()` under fixed steps, with
        `SaveAt(dense=True)`, in forward mode and when `differentiated` (the sub-step loop
        inside each step is checkpointed and replayed inside the backward loop: a Robertson
        gradient took 41x its forward solve with sub-steps, 3.9x without, whose forward
        solve was no slower; `benchmarks/stiff_kinetics.py`)."""
        solver = self.for_adjoint(adjoint)
        forward_mode = isinstance(adjoint, diffrax.ForwardMode)
        if fixed_steps or dense or differentiated or forward_mode:
            return solver.without_substeps()
        return solver

    def without_substeps(self) -> "AutoSwitch":
        """`self` with one explicit step per diffrax step (`substeps=1`). `stiffnode.solve`
        uses it under fixed steps (with `root_finder` tolerances each fixed step would be
        covered by sub-steps, and one needing more than `4 * substeps` of them would end
        the solve with `RESULTS.dt_min_reached`) and with `SaveAt(dense=True)` (diffrax
        stores every step's dense output for `max_steps` steps: with sub-steps, 64
        sub-steps' each)."""
        return dataclasses.replace(self, substeps=1)

    def for_adjoint(self, adjoint: diffrax.AbstractAdjoint) -> "AutoSwitch":
        """`self` with its Runge-Kutta methods' stage loops as diffrax sets a Runge-Kutta
        solver's own under `adjoint` (diffrax cannot see inside `AutoSwitch`):
        `ForwardMode` needs a plain loop (the default stage loop is a `custom_vjp`, which
        `jax.jvp` cannot go through), `DirectAdjoint` a bounded one; the sub-step loop
        follows the same choice. `for_solve` does this."""
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

    def first_error_order(self, terms):
        """The error order of the method a solve starts with, the non-stiff one: the
        automatic first step (`stiffnode.solve`, `solvers.initial_step_size`) is sized for
        it (with `error_order`, Tsit5's first step under BDF's 4 is not Tsit5's own)."""
        return self.nonstiff.error_order(terms)

    def _stiff_solver(self):
        if not isinstance(self.stiff, diffrax.AbstractImplicitSolver):
            return self.stiff
        names = [k for k in ("rtol", "atol", "norm") if hasattr(self.root_finder, k)]
        return eqx.tree_at(
            lambda s: tuple(getattr(s.root_finder, k) for k in names),
            self.stiff,
            tuple(getattr(self.root_finder, k) for k in names),
        )

    def _tolerances(self) -> tuple | None:
        """`(rtol, atol, norm)` of the step-size controller (diffrax hands them to the
        `root_finder`) or of the `root_finder` given; None when there are none."""
        rtol, atol, norm = (getattr(self.root_finder, k, None) for k in ("rtol", "atol", "norm"))
        if any(x is None or x is FROM_CONTROLLER for x in (rtol, atol)):
            return None
        return rtol, atol, optx.rms_norm if norm is None or norm is FROM_CONTROLLER else norm

    @property
    def _substepping(self) -> bool:
        return self.substeps > 1 and self._tolerances() is not None

    @property
    def _slots(self) -> int:
        """The most explicit sub-steps one step holds (a step needing more is rejected)."""
        return 4 * self.substeps if self._substepping else 1

    def _flat_scale(self, y0, y1) -> Array:
        """`atol + rtol max(|y0|, |y1|)` (flat states) with the controller's tolerances, as
        its error control; 1 when there are none (fixed steps)."""
        if self._tolerances() is None:
            return jnp.ones(jnp.abs(y0).shape, jnp.abs(y0).dtype)
        rtol, atol, _ = self._tolerances()
        real = jnp.abs(y0).dtype
        return jnp.asarray(atol, real) + jnp.asarray(rtol, real) * jnp.maximum(
            jnp.abs(y0), jnp.abs(y1)
        )

    def init(self, terms, t0, t1, y0, args) -> Packed:
        v = power_iteration_start(terms, t0, t1, y0, args)
        tdtype = jnp.result_type(t0, t1)
        real = v.dtype
        state = AutoSwitchState(
            stiff_mode=jnp.array(False),
            switched=jnp.array(False),
            **{name: jnp.array(0, jnp.int32) for name in _COUNTS},
            **{name: jnp.array(0, tdtype) for name in _TIMES},
            next_substep=jnp.asarray(t1 - t0, tdtype),
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
            stiff_state=pack(
                _zeros_like_shapes(
                    jax.eval_shape(lambda: self._stiff_solver().init(terms, t0, t1, y0, args))
                )
            ),
            power_vector=v,
        )
        return pack(state)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def solve_stats(self, final_state: Packed) -> dict[str, Array]:
        """The statistics `stiffnode.solve` adds to `Solution.stats`, from the final state."""
        names = [k for k in SwitchStats.__dataclass_fields__ if self.history or "history" not in k]
        stats = final_state.unpack().stats
        return {k: getattr(stats, k) for k in names}

    def _explicit_dense_shape(self, terms, t0, t1, y0, args, state: AutoSwitchState) -> dict:
        """The shapes of `_explicit_steps`' dense information: for each of the `_slots`
        sub-steps its `(t0, t1)` and its method's dense information."""
        f0 = state.nonstiff_state[1]
        step = jax.eval_shape(
            lambda: explicit_rk_step(self.nonstiff.tableau, terms, t0, t1, y0, args, f0)[2]
        )
        slots = lambda s: jax.ShapeDtypeStruct((self._slots, *s.shape), s.dtype)  # noqa: E731
        time = jax.ShapeDtypeStruct((), jnp.result_type(t0, t1))
        return {"t0": slots(time), "t1": slots(time), "steps": jax.tree.map(slots, step)}

    def _explicit_steps(self, terms, t0, t1, y0, args, state: AutoSwitchState, restart, tally,
                        dense_shape: dict):  # fmt: skip
        """The non-stiff method from `t0` to `t1`: one step, or with `_substepping` explicit
        steps under their own error control (the controller's tolerances and norm, the
        I-controller of diffrax's `PIDController` with its defaults) until `t1`.

        Returns `(y1, y_error, dense, nonstiff_state, result, tally, next_substep)`. With
        sub-steps, `y_error` is not an error estimate (each sub-step's error was controlled):
        its norm is `(n / substeps)**error_order`, `n` the sub-steps of this length at the
        size proposed last, below 1 (accepted) while `t1` is reached within `_slots`
        sub-steps, so that the controller's next step holds about `substeps` of them.
        `dense_shape`: `_explicit_dense_shape`'s."""
        caller_time = _caller_time(terms, t0, t1)
        tdtype = jnp.result_type(t0, t1)

        norm = (self._tolerances() or (None, None, optx.rms_norm))[2]

        def attempt(t, tn, y, f, tally):
            """One explicit step from `(t, y)`, `f = f(t, y)`: its results, the tally with
            it observed, and the square of its error in the controller's norm (decisions on
            the square: a square root of its own would be one more kernel per sub-step, its
            result read by several)."""
            y1, err, dense, f1 = explicit_rk_step(self.nonstiff.tableau, terms, t, tn, y, args, f)
            # Decisions in the error control's norm, which sees components far below the
            # others (Robertson's y2); the reported |lambda| in the 2-norm, which for a
            # normal Jacobian is at most its spectral radius (the scaled one is not). One
            # reduction for both estimates and the RMS error norm (five separate ones
            # cost a quarter of a Tsit5 step on small systems).
            d_y, d_k = stage_differences(self.nonstiff.tableau, dense["k"])
            scale = self._flat_scale(_flat(y), _flat(y1))
            d_y, d_k, err_ = (jnp.abs(_flat(x)) for x in (d_y, d_k, err))
            rows = [d_k / scale, d_y / scale, d_k, d_y, err_ / scale]
            sums = jax.lax.stop_gradient(jnp.sum(jnp.stack(rows) ** 2, axis=1))
            h_lambda, h_lambda_2 = (
                jnp.where(b > 0, jnp.sqrt(a / jnp.where(b > 0, b, 1)), 0.0)
                for a, b in (sums[0:2], sums[2:4])
            )
            if norm is optx.rms_norm:
                ratio_sq = sums[4] / scale.size
            else:
                scaled = _flat(err) / scale.astype(_flat(err).dtype)
                ratio_sq = jax.lax.stop_gradient(norm(_unflatten_like(scaled, err))) ** 2
            observed = tally.observe(
                self, tn - t, caller_time(tn), h_lambda, h_lambda_2, False,
                h_lambda > self.stiff_ratio * self.boundary,
            )  # fmt: skip
            return y1, err, dense, f1, observed, ratio_sq, h_lambda

        # An FSAL method's state is (first step, f(t0, y0)).
        first_step, f0 = state.nonstiff_state
        f0 = jax.lax.cond(first_step | restart, lambda: terms.vf(t0, y0, args), lambda: f0)
        success = diffrax.RESULTS.successful
        if not self._substepping:
            y1, err, dense, f1, tally, ratio_sq, h_lambda = attempt(t0, t1, y0, f0, tally)
            ratio = jnp.sqrt(ratio_sq)
            if self._tolerances() is not None:
                # The error diffrax's controller sees: norm `control**(q / p)`, with
                # `control = ratio` but for `stability_cap`. Its exponent comes from
                # `error_order`, the lower of the two methods' (BDF's 4 against Tsit5's 5):
                # so rescaled, its step-size factor `control**(-1 / p)` is the explicit
                # method's own (acceptance unchanged: below 1 as `ratio` is).
                q, p = self.error_order(terms), self.nonstiff.error_order(terms)
                control = ratio
                if self.stability_cap is not None:
                    limit = (h_lambda / (self.stability_cap * self.boundary)) ** p
                    control = jnp.where(ratio < 1, jnp.clip(limit, ratio, 0.99), ratio)
                tiny = jnp.finfo(ratio.dtype).tiny
                factor = jnp.maximum(control, tiny) ** (q / p) / jnp.maximum(ratio, tiny)
                err = jax.tree.map(lambda e: e * factor.astype(e.dtype), err)
            dense = {
                "t0": jnp.reshape(t0, (1,)).astype(tdtype),
                "t1": jnp.reshape(t1, (1,)).astype(tdtype),
                "steps": jax.tree.map(lambda x: x[None], dense),
            }
            inner = (jnp.zeros_like(first_step), f1)
            return y1, err, dense, inner, success, tally, jnp.asarray(t1 - t0, tdtype)

        slots = self._slots
        exponent = -1.0 / float(self.nonstiff.error_order(terms))
        first = tally.steps
        sdtype = tally.stiffness_max.dtype
        offset = jnp.stack([0, 0, first, 0])  # the counts' values at the loop's start

        def end_of(t, h):
            return jnp.where(h >= t1 - t, t1, t + h)

        # The loop's scalars travel as one vector in the time dtype, each value of its own
        # would cost a kernel per sub-step (and a copy where its update reads the others):
        # t, h, the attempt's end (computed with the update, not at the start of the next),
        # the largest |lambda| (a statistic: rounded to the time dtype where the state's is
        # wider) and the tally's counts from the loop's start (integers: exact in floating
        # point, the steps and rejections in the loop at most 2 slots; streak and contrary
        # are only compared with the switching thresholds). t = NaN ends the loop without
        # reaching t1 (a rejected step).
        def pack_scalars(t, h, tally):
            scalars = jnp.stack([t, h, end_of(t, h), tally.stiffness_max.astype(tdtype)])
            return jnp.concatenate([scalars, (tally.counts - offset).astype(tdtype)])

        def unpack_scalars(scalars, history):
            counts = scalars[4:].astype(jnp.int32) + offset
            tally = _Tally(counts=counts, stiffness_max=scalars[3].astype(sdtype), history=history)
            return scalars[0], scalars[1], scalars[2], tally

        def cond(carry):
            scalars = carry[0]
            # (the counts from position 4: streak, contrary, accepted steps, rejected ones)
            t, h, accepted, rejected = scalars[0], scalars[1], scalars[4 + 2], scalars[4 + 3]
            # (ended as soon as the sub-steps still needed at the present size would not fit)
            fits = accepted + (t1 - t) / h <= 2 * slots
            return (t < t1) & fits & (accepted + rejected < 2 * slots)

        def body(carry):
            scalars, y, f, history, buffers = carry
            t, h, tn, tally = unpack_scalars(scalars, history)
            clipped = h >= t1 - t
            y1, err, dense, f1, observed, ratio_sq, _ = attempt(t, tn, y, f, tally)
            finite = jnp.isfinite(ratio_sq)
            ok = finite & (ratio_sq < 1)
            factor = 0.9 * jnp.where(ratio_sq > 0, ratio_sq, 1e-20) ** (exponent / 2)
            # (diffrax's PIDController: an accepted step never shrinks the next)
            factor = jnp.where(
                ok, jnp.clip(factor, 1.0, 10.0), jnp.where(finite, jnp.clip(factor, 0.2, 0.9), 0.2)
            ).astype(tdtype)
            # A step shortened to land on t1 does not shrink the next.
            h_next = jnp.where(ok & clipped, jnp.maximum((tn - t) * factor, h), (tn - t) * factor)
            # Slot i holds the i-th accepted sub-step; a rejected attempt leaves it unset.
            i = tally.steps - first
            b_t0, b_t1, b_dense = buffers
            buffers = (
                jax.lax.dynamic_update_index_in_dim(b_t0, t, i, 0),
                jax.lax.dynamic_update_index_in_dim(b_t1, jnp.where(ok, tn, jnp.inf), i, 0),
                jax.tree.map(
                    lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, i, 0), b_dense, dense
                ),
            )
            rejected = jnp.stack([0, 0, 0, _int32(~ok)])
            tally = jax.tree.map(lambda a, b: jnp.where(ok, a, b), observed, tally)
            tally = eqx.tree_at(lambda s: s.counts, tally, tally.counts + rejected)
            keep = lambda a, b: jax.tree.map(lambda x, z: jnp.where(ok, x, z), a, b)  # noqa: E731
            # A non-finite attempt ends the loop with its y: the controller sees it.
            y = jax.tree.map(lambda x, z: jnp.where(ok | ~finite, x, z), y1, y)
            t = jnp.where(ok, tn, jnp.where(finite, t, jnp.nan))
            return pack_scalars(t, h_next, tally), y, keep(f1, f), tally.history, buffers

        h0 = jnp.where(restart, (t1 - t0) / self.substeps, state.next_substep).astype(tdtype)
        buffers = (
            jnp.full((slots,), jnp.inf, tdtype),
            jnp.full((slots,), jnp.inf, tdtype),
            _zeros_like_shapes(dense_shape["steps"]),
        )
        # diffrax never shortens the step after an accepted one (`PIDController`: factor
        # >= 1), only after a rejection: a step holding more than twice the target at the
        # present sub-step size is rejected before any work.
        start = jnp.where((t1 - t0) / h0 > 2 * self.substeps, jnp.nan, t0).astype(tdtype)
        carry = (pack_scalars(start, h0, tally), y0, f0, tally.history, buffers)
        kind = {None: "checkpointed", "lax": "lax", "bounded": "bounded"}[self.nonstiff.scan_kind]
        scalars, y1, f1, history, buffers = eqxi.while_loop(
            cond, body, carry, max_steps=None if kind == "lax" else 2 * slots, kind=kind
        )
        t, h, _, tally = unpack_scalars(scalars, history)
        # The number of sub-steps of the size proposed last that this step's length holds,
        # over the target: below 1 when t1 was reached (accepted), above when not.
        load = (t1 - t0) / h / self.substeps
        load = jnp.where(t >= t1, jnp.clip(load, 1e-6, 0.99), jnp.maximum(load, 1.5))
        load = load ** self.error_order(terms)
        scale = self._flat_scale(_flat(y0), _flat(y1))
        y_error = _unflatten_like(load.astype(scale.dtype) * scale, y0)
        dense = {"t0": buffers[0], "t1": buffers[1], "steps": buffers[2]}
        inner = (jnp.zeros_like(first_step), f1)
        # A step that did not reach t1 is rejected by an adaptive controller (which ignores
        # the result of a rejected step); one kept regardless (fixed steps, dtmin) ends the
        # solve with this result rather than with a state that is not at t1.
        result = diffrax.RESULTS.where(t >= t1, success, diffrax.RESULTS.dt_min_reached)
        return y1, y_error, dense, inner, result, tally, h

    def step(self, terms, t0, t1, y0, args, solver_state: Packed, made_jump):
        # Each branch is a whole step of one method, the switching rule included, and takes
        # the state packed: what runs outside the `lax.cond` is one read of the mode (each
        # value read before it would be a kernel of its own, ready at once: `packed`).
        state: AutoSwitchState = solver_state.unpack()
        stiff = self._stiff_solver()
        if isinstance(stiff, AbstractRosenbrock):  # (its shapes without tracing a step)
            stiff_shape = stiff.dense_info_shape(terms, t0, t1, y0, args)
        else:  # any other adaptive diffrax solver
            inner = state.stiff_state.unpack()
            stiff_shape = jax.eval_shape(
                lambda: stiff.step(terms, t0, t1, y0, args, inner, made_jump)[2]
            )
        shapes = (self._explicit_dense_shape(terms, t0, t1, y0, args, state), stiff_shape)

        def branch(stiff: bool):
            return lambda packed: self._step_with(
                stiff, terms, t0, t1, y0, args, packed.unpack(), made_jump, shapes
            )

        return jax.lax.cond(state.stiff_mode, branch(True), branch(False), solver_state)

    def _step_with(self, stiff: bool, terms, t0, t1, y0, args, state: AutoSwitchState,
                   made_jump, shapes):  # fmt: skip
        """One step with the stiff method (`stiff`) or the non-stiff one, and the switching
        rule after it: `step`'s result, the new state packed."""
        switched = state.switched
        mode = jnp.asarray(stiff)
        stiff_solver = self._stiff_solver()
        tdtype = jnp.result_type(t0, t1)
        h = jnp.asarray(t1 - t0, tdtype)
        first = state.num_steps_nonstiff + state.num_steps_stiff
        tally = _Tally(
            counts=_vector([state.streak, state.contrary, first, jnp.array(0, jnp.int32)]),
            stiffness_max=state.stiffness_max,
            history=state.history,
        )
        # The stiff method pays for itself only with steps well beyond the explicit
        # method's stability limit, the step it was switching from; a stint whose longest
        # step stays short of that is "futile": back, and each futile stint multiplies the
        # evidence needed for the next switch to it by futile_growth.
        longest = jnp.where(mode, jnp.maximum(state.longest_stiff_step, h), 0.0)
        futile = mode & (longest < self.min_gain * state.switch_step)
        t_real = _caller_time(terms, t0, t1)(t1)

        if not stiff:
            # (a jump makes an FSAL method evaluate f(t0, y0) afresh: its restart; so does
            # a switch to it)
            restart = jnp.logical_or(made_jump, switched)
            y1, err, dense, ns_state, result, tally, h_next = self._explicit_steps(
                terms, t0, t1, y0, args, state, restart, tally, shapes[0]
            )
            dense = {"nonstiff": dense, "stiff": _zeros_like_shapes(shapes[1])}
            s_state, v = state.stiff_state, state.power_vector
        else:
            # The method switched to starts afresh at (t0, y0).
            inner = jax.lax.cond(
                switched,
                lambda: stiff_solver.init(terms, t0, t1, y0, args),
                lambda: state.stiff_state.unpack(),
            )
            y1, err, dense, inner, result = stiff_solver.step(
                terms, t0, t1, y0, args, inner, made_jump
            )
            v, lam = power_iteration_step(terms, t0, t1, y1, args, state.power_vector)
            h_lambda = jax.lax.stop_gradient(h.astype(lam.dtype) * lam)
            tally = tally.observe(
                self, h, t_real, h_lambda, h_lambda, True,
                (h_lambda < self.nonstiff_ratio * self.boundary) | futile,
            )  # fmt: skip
            # (the unused sub-step interpolants span [t0, t1]: no 0 / 0 in their evaluation)
            unused = _zeros_like_shapes(shapes[0])
            unused["t0"] = jnp.full_like(unused["t0"], t0)
            unused["t1"] = jnp.full_like(unused["t1"], t1)
            dense = {"nonstiff": unused, "stiff": dense}
            ns_state, s_state, h_next = state.nonstiff_state, pack(inner), state.next_substep
        tally, v = jax.lax.stop_gradient((tally, v))
        steps = tally.steps - first
        growth = self.futile_growth ** jnp.minimum(state.futile, self._futile_power_cap)
        needed = jnp.where(mode, self.nonstiff_after, self.stiff_after * growth)
        # At most max_switches. Back from the stiff method only while a last switch to it
        # remains, unless its stint is futile; to it, once it has been futile, only while a
        # futile return remains (the solve never ends stuck in a futile stiff stint).
        room = state.num_switches + 1 < self.max_switches
        left = state.num_switches < self.max_switches
        may = jnp.where(mode, room | (futile & left), left & (room | (state.futile == 0)))
        switch = (tally.streak >= needed) & may
        index = jnp.minimum(state.num_switches, self.max_switches - 1)
        at_index = jnp.arange(self.max_switches, dtype=jnp.int32) == index
        switch_times = jnp.where(switch & at_index, t_real, state.switch_times)
        new_state = AutoSwitchState(
            stiff_mode=mode ^ switch,
            switched=switch,
            streak=jnp.where(switch, 0, tally.streak),
            contrary=jnp.where(switch, 0, tally.contrary),
            num_switches=state.num_switches + _int32(switch),
            num_steps_nonstiff=state.num_steps_nonstiff + jnp.where(mode, 0, steps),
            num_steps_stiff=state.num_steps_stiff + jnp.where(mode, steps, 0),
            futile=jnp.minimum(state.futile + _int32(switch & mode & futile), 10),
            rejected_substeps=state.rejected_substeps + tally.rejected,
            time_nonstiff=state.time_nonstiff + jnp.where(mode, 0.0, h).astype(tdtype),
            time_stiff=state.time_stiff + jnp.where(mode, h, 0.0).astype(tdtype),
            switch_step=jnp.where(switch & ~mode, h_next, state.switch_step).astype(tdtype),
            longest_stiff_step=jnp.asarray(longest, tdtype),
            next_substep=jnp.asarray(h_next, tdtype),
            stiffness_max=tally.stiffness_max,
            switch_times=switch_times,
            history=tally.history,
            nonstiff_state=ns_state,
            stiff_state=s_state,
            power_vector=v,
        )
        dense = dict(dense, stiff_mode=mode)
        return y1, err, dense, pack(new_state), result
