"""`solvers.AutoSwitch` (`solve(..., solver="auto")`): the stiffness estimate against dense
eigenvalues, no switch on a non-stiff problem, switches where van der Pol changes
character, an early switch on Robertson, accuracy against the stored references, and the
ordinary solver contract (reverse time, vmap, gradients, bad input)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from scipy.integrate import solve_ivp

import stiffnode as sn
from helpers import REFERENCES, central_difference, scaled_error, spread_bound
from stiffnode import problems
from stiffnode.solvers import (
    BDF,
    AutoSwitch,
    ControllerTolerances,
    Rodas5P,
    explicit_stiffness,
    stability_boundary,
)
from stiffnode.solvers.auto_switch import DENSE_MAX_STATES

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def _lorenz(t, y, args):
    return jnp.stack(
        [10 * (y[1] - y[0]), y[0] * (28 - y[2]) - y[1], y[0] * y[1] - 8 / 3 * y[2]]
    )


def test_stability_boundaries_against_the_literature():
    # Dormand-Prince 5(4): the real stability interval is [-3.3066, 0] (Hairer & Wanner I,
    # II.10, fig. 10.2; Shampine's stiffness test uses 3.3); classic RK4: [-2.7853, 0].
    assert abs(stability_boundary(diffrax.Dopri5.tableau) - 3.3066) < 1e-3
    rk4 = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    )
    assert abs(stability_boundary(rk4) - 2.7853) < 1e-3


def _spectrum_matrix(eigenvalues, seed=0):
    """A real normal matrix `Q D Q^T` with the given spectrum (conjugate pairs as 2x2
    rotation-scaling blocks of D, Q a random orthogonal matrix)."""
    blocks = []
    for lam in eigenvalues:
        if np.iscomplex(lam):
            if lam.imag > 0:
                blocks.append(np.array([[lam.real, lam.imag], [-lam.imag, lam.real]]))
        else:
            blocks.append(np.array([[lam.real]]))
    n = sum(b.shape[0] for b in blocks)
    d = np.zeros((n, n))
    i = 0
    for b in blocks:
        d[i : i + b.shape[0], i : i + b.shape[0]] = b
        i += b.shape[0]
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q @ d @ q.T


@pytest.mark.parametrize(
    "eigenvalues",
    [[-1.0, -30.0, -2000.0], [-1.0, -300.0 + 400.0j, -300.0 - 400.0j], [-0.5, -20.0, -1e4]],
)
def test_stiffness_estimate_within_a_factor_two_of_the_dominant_eigenvalue(eigenvalues):
    """`stiffness_max` of an "auto" solve of y' = A y against |lambda|_max of dense eigvals.
    The explicit side's stage estimate is exact for a linear field along the stage
    difference; the stiff side's power iteration converges to |lambda|_max."""
    a = _spectrum_matrix(np.asarray(eigenvalues, complex))
    truth = np.max(np.abs(np.linalg.eigvals(a)))
    y0 = jnp.ones(a.shape[0])
    sol = sn.solve(lambda t, y, args: jnp.asarray(a) @ y, y0, 0.0, 2.0, solver="auto", rtol=1e-6)
    estimate = float(sol.stats["stiffness_max"])
    assert truth / 2 <= estimate <= 2 * truth, (estimate, truth)
    assert int(sol.stats["num_switches"]) >= 1


def test_explicit_estimate_on_one_step_of_a_linear_field():
    """One Tsit5 step of y' = -lambda y: the stage differences give h lambda exactly."""
    lam, h = 40.0, 0.05
    solver = diffrax.Tsit5()
    terms = diffrax.ODETerm(lambda t, y, args: -lam * y)
    y0 = jnp.array([1.0, 2.0])
    state = solver.init(terms, 0.0, h, y0, None)
    _, _, dense, _, _ = solver.step(terms, 0.0, h, y0, None, state, False)
    np.testing.assert_allclose(explicit_stiffness(solver.tableau, dense["k"]), h * lam, rtol=1e-12)


def test_no_switch_on_a_non_stiff_problem():
    """Lorenz: never stiff. The explicit sub-steps (the same controller on the same error
    estimate as Tsit5's own solve) take about Tsit5's steps (more by the last sub-step of
    each diffrax step, cut short to land on its end: one in ~16) and are as accurate. (One
    explicit step per step is Tsit5's solve step for step: `test_fixed_steps_are_the_callers`;
    adaptive, with `SaveAt(dense=True)`: the van der Pol and reverse-time tests.)"""
    args = (_lorenz, jnp.ones(3), 0.0, 10.0)
    tolerances = dict(rtol=1e-8, atol=1e-8)
    tsit5 = sn.solve(*args, solver="tsit5", **tolerances)
    auto = sn.solve(*args, solver="auto", **tolerances)
    assert int(auto.stats["num_switches"]) == 0
    assert int(auto.stats["num_steps_stiff"]) == 0
    assert int(auto.stats["num_steps"]) < int(auto.stats["num_steps_nonstiff"]) / 10
    ratio = int(auto.stats["num_steps_nonstiff"]) / int(tsit5.stats["num_accepted_steps"])
    assert 0.9 <= ratio <= 1.15, ratio  # measured 1.02
    ref = solve_ivp(lambda t, y: np.asarray(_lorenz(t, y, None)), (0.0, 10.0), np.ones(3),
                    method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]  # fmt: skip
    # Relative errors at t = 10 of independent methods at this tolerance: Tsit5 7.5e-7,
    # Dopri8 1.5e-7, Dopri5 5.3e-6 (chaos amplifies the local errors): bound 2x the widest.
    assert np.max(np.abs(np.asarray(auto.ys[-1]) - ref) / np.abs(ref)) < 1.1e-5


def _relaxation(lam):
    """`y' = -lam (y - cos t)`, `y(0) = 0`: stiff for large `lam`, its solution in closed
    form."""
    field = lambda t, y, args: -lam * (y - jnp.cos(t))  # noqa: E731
    exact = lambda t: (lam**2 * np.cos(t) + lam * np.sin(t) - lam**2 * np.exp(-lam * t)) / (  # noqa: E731
        lam**2 + 1
    )
    return field, exact


def _explicit_only(**kwargs):
    """`AutoSwitch` held on its explicit method (never enough evidence to switch), one
    explicit step per diffrax step."""
    return AutoSwitch(substeps=1, stiff_after=10**6, **kwargs)


def test_one_step_mode_is_tsit5_under_bdf():
    """With BDF as the stiff method (error order 4, Tsit5's 5) and no stability cap, the
    explicit steps are Tsit5's own solve: the first step sized for Tsit5 and the error
    rescaled to the controller's exponent, so the same accepted and rejected steps."""
    field, exact = _relaxation(500.0)
    args = (field, jnp.zeros(1), 0.0, 20.0)
    tolerances = dict(rtol=1e-4, atol=1e-6)
    tsit5 = sn.solve(*args, solver="tsit5", **tolerances)
    auto = sn.solve(*args, solver=_explicit_only(stiff=BDF(), stability_cap=None), **tolerances)
    for key in ("num_accepted_steps", "num_rejected_steps"):
        # The stages summed in another order (`explicit_rk_step`): equal here; 1% allows a
        # decision flipped by rounding on another machine.
        assert abs(int(auto.stats[key]) - int(tsit5.stats[key])) <= 0.01 * int(tsit5.stats[key])
    # (Before the rescaling, BDF's exponent on Tsit5's error: 946 rejected against 790,
    # y(20) off by 8e-6.)
    assert abs(float(auto.ys[-1, 0]) - float(tsit5.ys[-1, 0])) < 1e-10


def test_stability_cap_ends_the_rejection_cycle():
    """At the stability limit (`h lam ~ B`, the solution smooth), diffrax's I-controller
    grows the explicit step until the error rejects it, every few steps (Hairer & Wanner II,
    IV.2): 790 rejected of 3,643 (measured). With the cap the step stops growing there:
    almost no rejections, fewer steps, and no less accurate (against the closed form)."""
    field, exact = _relaxation(500.0)
    args = (field, jnp.zeros(1), 0.0, 20.0)
    tolerances = dict(rtol=1e-4, atol=1e-6)
    free = sn.solve(*args, solver=_explicit_only(stability_cap=None), **tolerances)
    capped = sn.solve(*args, solver=_explicit_only(), **tolerances)
    assert int(free.stats["num_rejected_steps"]) > 0.1 * int(free.stats["num_steps"])
    assert int(capped.stats["num_rejected_steps"]) < 0.01 * int(capped.stats["num_steps"])
    assert int(capped.stats["num_steps"]) < int(free.stats["num_steps"])
    # The problem contracts (lam > 0): the global error stays at the local tolerance's level;
    # measured 1.0e-6 capped, 1.5e-5 free, against rtol 1e-4 on |y| ~ 1.
    for sol in (free, capped):
        assert abs(float(sol.ys[-1, 0]) - exact(20.0)) < 1e-4


def test_van_der_pol_switches_at_the_fast_transitions():
    """mu = 1e3: stiff on the slow arcs (|y1| between 1 and 2), non-stiff through the fast
    transitions (where |y1| passes 1). Each switch to Tsit5 is where |y1| is near 1, each
    switch back where the solution has landed on a slow arc (|y1| near 2)."""
    p = problems.van_der_pol()
    sol = sn.solve(
        p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=p.args, solver="auto",
        rtol=1e-6, atol=1e-6, saveat=diffrax.SaveAt(t1=True, dense=True), max_steps=100_000,
    )  # fmt: skip
    times = np.asarray(sol.stats["switch_times"])
    times = times[np.isfinite(times)]
    assert len(times) == int(sol.stats["num_switches"]) >= 3
    assert times[0] < 1.0  # stiff from the start: y1 = 2 sits on a slow arc
    for k, t in enumerate(times[1:], start=1):
        y1 = abs(float(sol.solution.evaluate(t)[0]))
        if k % 2 == 1:  # to Tsit5: entering a transition
            assert 0.8 < y1 < 1.3, (k, t, y1)
        else:  # back to the stiff method: on the next slow arc
            assert y1 > 1.7, (k, t, y1)
    ref = np.asarray(REFERENCES["van_der_pol"]["y"])
    assert scaled_error(sol.ys[-1], ref, p) <= spread_bound("van_der_pol")


def test_futile_stints_raise_the_evidence_for_the_next():
    """van der Pol mu = 10 is mildly stiff: the stiff stint after the first switch ends
    futile (its steps stay short of 5x the explicit one). The next switch to the stiff method
    needs `stiff_after * futile_growth` stability-limited steps: with growth 2 (20 steps) it
    comes within two periods, with 8 (80 steps) it does not; either way the solution is as
    accurate as a fixed method's at the same tolerance."""
    p = problems.van_der_pol()
    t1 = 2 * (3 - 2 * np.log(2)) * 10

    def run(growth):
        return sn.solve(p.vector_field, jnp.asarray(p.y0), 0.0, t1, args=10.0,
                        solver=AutoSwitch(futile_growth=growth), rtol=1e-6, atol=1e-6)  # fmt: skip

    doubling, default = run(2), run(8)
    assert int(doubling.stats["num_switches"]) > 2
    assert int(default.stats["num_switches"]) == 2
    # The same first stiff stint, and back to Tsit5 at the same time.
    np.testing.assert_array_equal(
        doubling.stats["switch_times"][:2], default.stats["switch_times"][:2]
    )
    field = jax.jit(lambda y: p.vector_field(0.0, y, 10.0))
    ref = solve_ivp(lambda t, y: np.asarray(field(y)), (0, t1), np.asarray(p.y0),
                    method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]  # fmt: skip
    # (scipy's DOP853 at 1e-12: mu = 10 is mild enough for it.) Independent solvers at rtol
    # = atol = 1e-6 miss a Radau 1e-12 reference by 1.1e-6 (Tsit5), 1.5e-6 (Rodas5P),
    # 1.0e-5 (Kvaerno5), 4.9e-5 (BDF); bar 1e-4, twice the widest.
    for sol in (doubling, default):
        np.testing.assert_allclose(sol.ys[-1], ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["robertson", "hires"])
def test_stiff_problems_switch_early_and_match_the_references(name):
    p = getattr(problems, name)()
    sol = sn.solve(
        p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=p.args, solver="auto",
        rtol=p.rtol, atol=p.atol, max_steps=100_000,
    )  # fmt: skip
    first = float(sol.stats["switch_times"][0])
    assert first < 0.01 * (p.t1 - p.t0), first  # within the first 1% of the interval
    assert float(sol.stats["time_stiff"]) > 0.99 * (p.t1 - p.t0)
    ref = np.asarray(REFERENCES[name]["y"])
    assert scaled_error(sol.ys[-1], ref, p) <= spread_bound(name)


def test_stiff_method_by_size():
    assert isinstance(AutoSwitch.for_states(3).stiff, Rodas5P)
    big = AutoSwitch.for_states(DENSE_MAX_STATES + 1)
    assert isinstance(big.stiff, BDF) and big.stiff.linear_solver == "gmres"


def test_reverse_time_and_dense_output():
    """y' = L (y - cos t), L = 1e4, from t = 1 back to 0: stiff in reverse time (solutions
    converge to the smooth one as t decreases), y = (L^2 cos t - L sin t) / (1 + L^2)."""
    lam = 1e4

    def smooth(t):
        return (lam**2 * np.cos(t) - lam * np.sin(t)) / (1 + lam**2)

    sol = sn.solve(
        lambda t, y, args: lam * (y - jnp.cos(t)), jnp.array([smooth(1.0)]), 1.0, 0.0,
        solver="auto", rtol=1e-8, atol=1e-10, saveat=diffrax.SaveAt(t1=True, dense=True),
    )  # fmt: skip
    # The global error of an rtol-1e-8 solve is a few tolerances; bar 1e-6.
    np.testing.assert_allclose(sol.ys[-1], [smooth(0.0)], rtol=1e-6)
    np.testing.assert_allclose(sol.solution.evaluate(0.5), [smooth(0.5)], rtol=1e-6)
    assert int(sol.stats["num_switches"]) >= 1


def test_vmap_lanes_equal_their_own_solves():
    p = problems.van_der_pol()
    mus = jnp.array([10.0, 100.0])

    def one(mu):
        sol = sn.solve(p.vector_field, jnp.asarray(p.y0), 0.0, 20.0, args=mu, solver="auto",
                       rtol=1e-6, atol=1e-6, max_steps=50_000)  # fmt: skip
        return sol.ys[-1], sol.stats["num_switches"]

    batched = jax.jit(jax.vmap(one))(mus)
    for i, mu in enumerate(mus):
        single = one(mu)
        np.testing.assert_allclose(batched[0][i], single[0], rtol=1e-10)
        assert int(batched[1][i]) == int(single[1])


def test_gradient_matches_finite_differences():
    def loss(k):
        sol = sn.solve(lambda t, y, a: jnp.stack([-a * y[0] + y[1], -1e3 * (y[1] - y[0] ** 2)]),
                       jnp.array([1.0, 0.0]), 0.0, 0.3, args=k, solver="auto", rtol=1e-10,
                       atol=1e-12, max_steps=20_000)  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    k, eps = 0.7, 1e-5
    g = value_and_grad(k)[1]
    fd = central_difference(lambda k: value_and_grad(k)[0], k, eps)
    # The gradient of the discrete solve; finite differences of an adaptive solve at rtol
    # 1e-10 agree to ~1e-5 (the step sequence moves with k).
    np.testing.assert_allclose(g, fd, rtol=1e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="nonstiff"):
        AutoSwitch(nonstiff=diffrax.Euler())
    with pytest.raises(ValueError, match="nonstiff"):
        AutoSwitch(nonstiff=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="stiff must"):
        AutoSwitch(stiff=diffrax.Euler())
    with pytest.raises(ValueError, match="nonstiff_ratio"):
        AutoSwitch(nonstiff_ratio=0.95, stiff_ratio=0.9)
    with pytest.raises(ValueError, match="stiff_after"):
        AutoSwitch(stiff_after=0)
    with pytest.raises(ValueError, match="futile_growth"):
        AutoSwitch(futile_growth=0)
    with pytest.raises(ValueError, match="min_gain"):
        AutoSwitch(min_gain=0.5)
    with pytest.raises(ValueError, match="history"):
        AutoSwitch(history=-1)
    with pytest.raises(ValueError, match="stability_cap"):
        AutoSwitch(stability_cap=0.0)


def test_history_along_the_steps_and_switch_times_in_reverse_time():
    """`history` records every accepted step (ring of the last H): its times are the
    solve's, increasing; in reverse time the switch times are in the caller's t."""
    p = problems.robertson()
    solver = AutoSwitch(history=1024)
    sol = sn.solve(p.vector_field, jnp.asarray(p.y0), 0.0, 100.0, args=p.args, solver=solver,
                   rtol=1e-6, atol=1e-10)  # fmt: skip
    n = int(sol.stats["num_steps_nonstiff"] + sol.stats["num_steps_stiff"])
    t = np.asarray(sol.stats["history_t"])[:n]
    assert n < 1024 and np.all(np.diff(t) > 0) and t[-1] == pytest.approx(100.0)
    mode = np.asarray(sol.stats["history_stiff_mode"])[:n]
    first = float(sol.stats["switch_times"][0])
    # A step's mode is the one it was taken with: stiff exactly after the switch time.
    np.testing.assert_array_equal(mode, t > first)
    lam = np.asarray(sol.stats["history_stiffness"])[:n]
    assert np.max(lam) == pytest.approx(float(sol.stats["stiffness_max"]))

    back = sn.solve(lambda t, y, a: 1e4 * (y - jnp.cos(t)), jnp.array([1.0]), 1.0, 0.0,
                    solver="auto", rtol=1e-6, atol=1e-9)  # fmt: skip
    switch = float(back.stats["switch_times"][0])
    assert 0.0 < switch < 1.0 and switch > 0.9  # early in the (backward) solve


@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "bdf", "rodas5p", "kvaerno5"])
def test_any_solve_can_report_its_stiffness(solver):
    """`estimate_stiffness=True`: Tsit5/Dopri5 from their stages, the others by a power
    iteration on JVPs; within 2x of |lambda|_max of dense eigvals, and the solution is the
    same as without the estimate (checked for one solver of each kind: a second compilation
    each)."""
    a = _spectrum_matrix(np.asarray([-1.0, -40.0, -300.0 + 200.0j, -300.0 - 200.0j], complex))
    truth = np.max(np.abs(np.linalg.eigvals(a)))

    def f(t, y, args):
        return jnp.asarray(a) @ y

    kw = dict(solver=solver, rtol=1e-6, atol=1e-9)
    with_estimate = sn.solve(f, jnp.ones(4), 0.0, 1.0, estimate_stiffness=True, **kw)
    estimate = float(with_estimate.stats["stiffness_max"])
    assert truth / 2 <= estimate <= 2 * truth, (estimate, truth)
    if solver in ("tsit5", "bdf"):  # one of each kind of estimate: the same wrapper for all
        plain = sn.solve(f, jnp.ones(4), 0.0, 1.0, **kw)
        np.testing.assert_array_equal(with_estimate.ys, plain.ys)
        assert "stiffness_max" not in plain.stats


def test_dense_output_through_the_explicit_sub_steps():
    """The harmonic oscillator, never stiff: each step of "auto" holds ~16 Tsit5 sub-steps,
    and the solution saved at 401 times (interpolated within the steps) is the sub-steps'
    own dense output, forward and in reverse time, against the closed form. (`solve` takes
    one explicit step per step with `SaveAt(dense=True)`, which stores every step's.)"""

    def exact(t):
        return np.stack([np.cos(t), -np.sin(t)], axis=-1)

    def oscillator(t, y, args):
        return jnp.stack([y[1], -y[0]])

    def saved_error(solver, t0, t1):
        # (the times are the program's inputs: one compilation for both directions)
        ts = jnp.linspace(t0, t1, 401)
        sol = sn.solve(oscillator, jnp.asarray(exact(t0)), t0, t1, solver=solver, rtol=1e-8,
                       atol=1e-8, saveat=diffrax.SaveAt(ts=ts))  # fmt: skip
        return np.max(np.abs(sol.ys - exact(ts))), sol

    # Independent methods' dense output at this tolerance (forward; diffrax solves reverse
    # time as forward time in -t, and the mirrored oscillator is the same problem):
    # Tsit5 3.6e-8, Dopri5 1.4e-7. Bound 2x the wider.
    bound = 2 * max(saved_error(s, 0.0, 20.0)[0] for s in ("tsit5", "dopri5"))
    for t0, t1 in ((0.0, 20.0), (20.0, 0.0)):
        error, auto = saved_error("auto", t0, t1)
        assert int(auto.stats["num_steps"]) * 5 < int(auto.stats["num_steps_nonstiff"])
        assert error < bound, (t0, error, bound)  # measured 3.4e-8 both ways


def test_fixed_steps_are_the_callers():
    """Under fixed steps `solve` takes one Tsit5 step per step (Lorenz: Tsit5's solve); a
    direct `diffeqsolve` with tolerances covers each fixed step by sub-steps, and one that
    needs more than it holds ends the solve with an error, never a state short of t1."""
    args = (_lorenz, jnp.ones(3), 0.0, 1.0)
    fixed = dict(stepsize_controller="constant", dt0=0.05)
    auto = sn.solve(*args, solver="auto", **fixed)
    tsit5 = sn.solve(*args, solver="tsit5", **fixed)
    np.testing.assert_allclose(auto.ys[-1], tsit5.ys[-1], rtol=1e-12)
    assert int(auto.stats["num_steps"]) == int(tsit5.stats["num_steps"]) == 20
    solver = AutoSwitch(root_finder=ControllerTolerances(1e-8, 1e-8, optx.rms_norm))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_lorenz), solver, 0.0, 1.0, 0.5, jnp.ones(3),
        stepsize_controller=diffrax.ConstantStepSize(), throw=False,
    )  # fmt: skip
    assert sol.result == diffrax.RESULTS.dt_min_reached
