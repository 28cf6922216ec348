"""stiffnode.solvers.BDF: accuracy on the standard stiff problems against independent
references, orders of convergence, dense output, events, jumps, vmap, gradients, statistics
and failures."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import stiffnode as sn
from helpers import REFERENCES, central_difference, scaled_error, spread_bound  # noqa: E402
from stiffnode import problems
from stiffnode.solvers import BDF, SolverStepController

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


CASES = {
    "robertson": lambda: problems.robertson(),
    "robertson_1e11": lambda: problems.robertson(t1=1e11),
    "van_der_pol": lambda: problems.van_der_pol(),
    "hires": lambda: problems.hires(),
    "orego": lambda: problems.orego(),
    "e5": lambda: problems.e5(),
    "pollu": lambda: problems.pollu(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_standard_problems_against_references(name):
    """Final state against the stored tight-tolerance Radau reference, at the problem's
    standard rtol/atol. Global errors exceed the local tolerance; the bar is scipy's BDF
    (an independent implementation of the same method) at the same tolerances."""
    p = CASES[name]()
    ref = np.asarray(REFERENCES[name]["y"])
    solver = "ndf" if name in ("robertson", "hires") else "bdf"
    sol = sn.solve(
        p.vector_field,
        jnp.asarray(p.y0),
        p.t0,
        p.t1,
        args=p.args,
        solver=solver,
        rtol=p.rtol,
        atol=p.atol,
        max_steps=20_000,
    )
    ours = scaled_error(sol.ys[-1], ref, p)
    scipy_sol = solve_ivp(
        problems.rhs_numpy(p),
        (p.t0, p.t1),
        p.y0,
        method="BDF",
        rtol=p.rtol,
        atol=p.atol,
        jac=problems.jac_numpy(p),
    )
    assert ours <= spread_bound(name), (name, ours, REFERENCES[name]["spread"])
    stats = {k: int(v) for k, v in sol.stats.items() if np.ndim(v) == 0}
    # Same method as scipy's BDF: comparable work (scipy counts Newton iterations in nfev).
    assert stats["num_vf_evals"] <= 1.5 * scipy_sol.nfev + 10, (stats, scipy_sol.nfev)
    assert stats["num_jac_evals"] <= 2 * scipy_sol.njev + 5, (stats, scipy_sol.njev)


def test_statistics_add_up():
    p = problems.hires()
    sol = sn.solve(
        p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, solver="bdf", rtol=1e-3, atol=1e-6
    )
    s = {k: np.asarray(v) for k, v in sol.stats.items()}
    assert s["num_steps"] == s["num_accepted_steps"] + s["num_rejected_steps"]
    assert s["num_rejected_steps"] == s["num_newton_failures"] + s["num_error_test_failures"]
    assert s["num_steps_per_order"].sum() == s["num_accepted_steps"]
    assert s["num_steps_per_order"][1:].sum() > 0  # it raised the order
    # Each Newton iteration is one evaluation; the initial step costs 2 and a (re)start 1.
    assert s["num_vf_evals"] >= s["num_newton_iters"] + 3
    assert s["num_newton_iters"] >= s["num_steps"]
    assert 1 <= s["num_jac_evals"] <= s["num_lu_decompositions"]


def _prothero_robinson(t, y, args):
    """`y' = lam (y - sin t) + cos t`, solution `sin t` for `y(0) = 0`."""
    return args * (y - jnp.sin(t)) + jnp.cos(t)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_fixed_order_convergence(order):
    """With fixed steps and `max_order = k`, the error at t = 4 falls like h^k (Prothero and
    Robinson's problem with lam = -10: the order-1 start-up's error has decayed by e^-40)."""
    solver = BDF(max_order=order, root_finder=diffrax.VeryChord(rtol=1e-13, atol=1e-13))

    @jax.jit
    def final(h):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_prothero_robinson),
            solver,
            0.0,
            4.0,
            h,
            jnp.zeros(1),
            args=-10.0,
            stepsize_controller=diffrax.ConstantStepSize(),
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            max_steps=1000,
        )
        return sol.ys[-1, 0], sol.solver_state.order

    hs = np.array([0.04, 0.02, 0.01])
    errors, orders = [], []
    for h in hs:
        y, used = final(h)
        errors.append(abs(float(y) - np.sin(4.0)))
        orders.append(int(used))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert orders == [order] * 3, orders
    assert abs(slope - order) < 0.35, (order, slope, errors)


def test_dense_output_against_radau():
    p = problems.hires()
    ts = np.array([0.0, 1.0, 5.0, 50.0, 200.0, 321.8122])
    mid = np.array([0.37, 3.3, 123.4])  # evaluated afterwards from the dense interpolant
    sol = sn.solve(
        p.vector_field,
        jnp.asarray(p.y0),
        p.t0,
        p.t1,
        solver="bdf",
        rtol=1e-8,
        atol=1e-10,
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts), dense=True),
    )
    got = np.concatenate([np.asarray(sol.ys), np.stack([sol.evaluate(t) for t in mid])])
    every = np.concatenate([ts, mid])
    order = np.argsort(np.argsort(every))

    def scipy_solve(method, rtol, atol):
        out = solve_ivp(
            problems.rhs_numpy(p),
            (p.t0, p.t1),
            p.y0,
            method=method,
            rtol=rtol,
            atol=atol,
            jac=problems.jac_numpy(p),
            t_eval=np.sort(every),
        )
        return out.y.T[order]

    ref_y = scipy_solve("Radau", 1e-12, 1e-14)

    def err(y):
        return (np.abs(y - ref_y) / (1e-10 + 1e-8 * np.abs(ref_y))).max()

    # The bar: independent multistep solvers at the same tolerances, on their own dense
    # output (measured: scipy BDF 132, LSODA 47, CVODE 73 tolerances), with a margin of 3.
    spread = max(err(scipy_solve(m, 1e-8, 1e-10)) for m in ("BDF", "LSODA"))
    assert err(got) <= 3 * spread, (err(got), spread)


def test_event_terminates_at_the_crossing():
    """y' = -y from 1 stops where y = 1/2, at t = ln 2 (root found on the dense output)."""
    event = diffrax.Event(lambda t, y, args, **kw: y[0] - 0.5, optx_root_finder())
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: -y),
        BDF(),
        0.0,
        10.0,
        None,
        jnp.ones(1),
        stepsize_controller=SolverStepController(rtol=1e-8, atol=1e-10),
        event=event,
    )
    assert abs(float(sol.ts[-1]) - np.log(2.0)) < 1e-6


def optx_root_finder():
    import optimistix as optx

    return optx.Newton(rtol=1e-10, atol=1e-10)


def test_jump_in_the_vector_field():
    """`y' = a(t) y` with `a = -1` before t = 1 and `-5` after: `y(2) = e^-6`."""

    def field(t, y, args):
        return jnp.where(t < 1.0, -1.0, -5.0) * y

    sol = sn.solve(field, jnp.ones(1), 0.0, 2.0, solver="bdf", rtol=1e-8, atol=1e-12, jump_ts=[1.0])
    assert abs(float(sol.ys[-1, 0]) - np.exp(-6.0)) < 1e-8


def test_vmap_equals_one_by_one():
    p = problems.robertson(t1=100.0)
    rates = jnp.asarray(p.args) * jnp.array([[1.0], [1.5], [0.7], [1.2]])

    def final(k):
        return sn.solve(
            p.vector_field,
            jnp.asarray(p.y0),
            0.0,
            100.0,
            args=k,
            solver="bdf",
            rtol=1e-6,
            atol=1e-10,
        ).ys[-1]

    batched = jax.jit(jax.vmap(final))(rates)
    single = jnp.stack([jax.jit(final)(k) for k in rates])
    np.testing.assert_allclose(batched, single, rtol=1e-12, atol=1e-16)


def test_gradient_matches_finite_differences():
    """d/dk of y1(2) for `y' = A(k) y` with a stiff-ish, non-normal A, by backprop through
    the BDF solve, against central differences of tight solves and the closed form
    `d/dk expm(2 A(k)) y0` (Frechet derivative of expm)."""
    from scipy.linalg import expm, expm_frechet

    def matrix(k):
        return jnp.array([[-1.0, k], [0.0, -30.0]])

    y0 = jnp.array([1.0, 1.0])

    def loss(k):
        sol = sn.solve(
            lambda t, y, a: matrix(a) @ y,
            y0,
            0.0,
            2.0,
            args=k,
            solver="bdf",
            rtol=1e-10,
            atol=1e-12,
            max_steps=4_000,
        )
        return sol.ys[-1, 0]

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(3.0)
    eps = 1e-4
    fd = central_difference(lambda k: value_and_grad(k)[0], 3.0, eps)
    exact = (
        expm_frechet(
            2 * np.asarray(matrix(3.0)), 2 * np.array([[0.0, 1.0], [0.0, 0.0]]), compute_expm=False
        )
        @ np.ones(2)
    )[0]
    assert abs(float(grad) - float(fd)) < 1e-6, (grad, fd)
    assert abs(float(grad) - exact) < 1e-6, (grad, exact)
    assert (
        abs(float(value_and_grad(3.0)[0]) - (expm(2 * np.asarray(matrix(3.0))) @ np.ones(2))[0])
        < 1e-8
    )


def test_matrix_free_gmres_matches_dense_and_reference():
    p = problems.brusselator_2d(n=8)
    ref = np.asarray(REFERENCES["brusselator_2d_n8"]["y"])
    sol = sn.solve(
        p.vector_field,
        jnp.asarray(p.y0),
        p.t0,
        p.t1,
        args=p.args,
        solver=BDF(linear_solver="gmres"),
        rtol=p.rtol,
        atol=p.atol,
        jump_ts=[1.1],
    )
    assert scaled_error(sol.ys[-1], ref, p) <= spread_bound("brusselator_2d_n8")
    assert int(sol.stats["num_lu_decompositions"]) == 0
    assert int(sol.stats["num_jac_evals"]) >= 1


def test_blow_up_is_an_error_not_a_number():
    """y' = y^2 from 1 blows up at t = 1: the solve must fail loudly, not return a state."""
    with pytest.raises(RUNTIME_ERRORS, match="step size underflow|step budget|Nonlinear"):
        sol = sn.solve(
            lambda t, y, a: y**2,
            jnp.ones(1),
            0.0,
            2.0,
            solver="bdf",
            rtol=1e-6,
            atol=1e-9,
            max_steps=2_000,
        )
        jax.block_until_ready(sol.ys)


def test_singular_point_is_an_error():
    """y' = -1 / y from 1: y = sqrt(1 - 2t) hits a singularity at t = 1/2."""
    sol = sn.solve(
        lambda t, y, a: -1.0 / y,
        jnp.ones(1),
        0.0,
        1.0,
        solver="bdf",
        rtol=1e-6,
        atol=1e-9,
        max_steps=2_000,
        throw=False,
    )
    assert sol.result != diffrax.RESULTS.successful


def test_misuse_gives_clear_errors():
    with pytest.raises(ValueError, match="max_order"):
        BDF(max_order=6)
    with pytest.raises(ValueError, match="linear_solver"):
        BDF(linear_solver="qr")
    with pytest.raises(TypeError, match="SolverStepController reads the step reports"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y),
            diffrax.Tsit5(),
            0.0,
            1.0,
            0.1,
            jnp.ones(1),
            stepsize_controller=SolverStepController(rtol=1e-6, atol=1e-6),
        )
    with pytest.raises(ValueError, match="stepsize_controller='solver' needs a solver"):
        sn.solve(lambda t, y, a: -y, jnp.ones(1), 0.0, 1.0, stepsize_controller="solver")
    with pytest.raises(ValueError, match="has no tolerances"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -y),
            BDF(root_finder=sn.solvers.ControllerTolerances(rtol=None, atol=None, norm=None)),
            0.0,
            1.0,
            0.1,
            jnp.ones(1),
        )
