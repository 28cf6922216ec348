"""stiffnode.solve: every named solver against a closed form; jit/vmap/grad; stats; errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import stiffnode as sn

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


# y' = A y with a stiff-ish, non-normal A: the solution is expm(A t) y0.
A = np.array([[-1.0, 0.5, 0.0], [0.0, -3.0, 1.0], [0.0, 0.0, -20.0]])
Y0 = np.array([1.0, -2.0, 0.5])
T1 = 1.5
EXACT = scipy.linalg.expm(A * T1) @ Y0


def linear(t, y, args):
    return jnp.asarray(A) @ y


# Errors found at run time under jit: EquinoxRuntimeError (eqx.filter_jit, or eager), or
# JaxRuntimeError carrying the same message under plain jax.jit.
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)

ADAPTIVE = [name for name in sn.SOLVERS if name != "euler"]


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_solver_meets_tolerance(name):
    rtol = atol = 1e-7
    sol = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, solver=name, rtol=rtol, atol=atol)
    err = np.max(np.abs(np.asarray(sol.ys[-1]) - EXACT))
    stats = {k: int(v) for k, v in sol.stats.items() if np.ndim(v) == 0}
    # The controller bounds each step's local error by atol + rtol |y| (|y| <= 2.5 here); on
    # this contractive problem the global error is at most their sum over the steps, and
    # for the higher-order methods a small multiple of one step's.
    local = atol + rtol * 2.5
    bound = local * (stats["num_accepted_steps"] if name == "implicit_euler" else 50)
    assert err <= bound, (name, err, bound)
    assert stats["num_steps"] == stats["num_accepted_steps"] + stats["num_rejected_steps"] > 0


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("midpoint", 2),
                                         ("tsit5", 5), ("implicit_euler", 1), ("kvaerno3", 3)])
def test_fixed_step_order_of_convergence(name, order):
    errors = []
    steps = [40, 80] if order < 5 else [20, 40]
    for n in steps:
        # (the step count is not the budget: one program for both step sizes)
        sol = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, solver=name, dt0=T1 / n,
                       stepsize_controller="constant", max_steps=steps[-1], rtol=1e-12,
                       atol=1e-14)  # fmt: skip
        errors.append(np.max(np.abs(np.asarray(sol.ys[-1]) - EXACT)))
        assert int(sol.stats["num_steps"]) == n
    observed = np.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.6, (name, errors, observed)


def test_saveat_times_and_dense_output():
    ts = jnp.linspace(0.0, T1, 7)
    sol = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, saveat=ts, rtol=1e-10, atol=1e-12)
    want = np.stack([scipy.linalg.expm(A * t) @ Y0 for t in np.asarray(ts)])
    np.testing.assert_allclose(sol.ts, ts)
    np.testing.assert_allclose(sol.ys, want, atol=1e-8)
    dense = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, saveat=diffrax.SaveAt(dense=True),
                     rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense.evaluate(0.4), scipy.linalg.expm(A * 0.4) @ Y0, atol=1e-7)


def test_jit_vmap_grad():
    @jax.jit
    def final(y0, scale):
        sol = sn.solve(lambda t, y, a: a * (jnp.asarray(A) @ y), y0, 0.0, T1, args=scale,
                       rtol=1e-10, atol=1e-12)
        return sol.ys[-1]

    y0s = jnp.stack([jnp.asarray(Y0), 2 * jnp.asarray(Y0)])
    out = jax.vmap(final, in_axes=(0, None))(y0s, 1.0)
    np.testing.assert_allclose(out, [EXACT, 2 * EXACT], atol=1e-8)
    # d/dy0 of sum(y(T)) = 1^T expm(A T); d/dscale = 1^T A T expm(A T) y0.
    g_y0 = jax.grad(lambda y: final(y, 1.0).sum())(jnp.asarray(Y0))
    np.testing.assert_allclose(g_y0, np.ones(3) @ scipy.linalg.expm(A * T1), atol=1e-7)
    g_s = jax.grad(lambda s: final(jnp.asarray(Y0), s).sum())(1.0)
    np.testing.assert_allclose(g_s, np.ones(3) @ (A * T1) @ EXACT, rtol=1e-6)


@pytest.mark.parametrize("adjoint", ["recursive", "backsolve", "direct"])
def test_adjoints_agree_on_the_continuous_gradient(adjoint):
    def loss(y0):
        return sn.solve(linear, y0, 0.0, T1, adjoint=adjoint, rtol=1e-10, atol=1e-12).ys[-1].sum()

    g = jax.grad(loss)(jnp.asarray(Y0))
    np.testing.assert_allclose(g, np.ones(3) @ scipy.linalg.expm(A * T1), atol=1e-7)


def test_float32_stays_float32():
    y0 = jnp.asarray(Y0, jnp.float32)
    sol = sn.solve(lambda t, y, a: jnp.asarray(A, jnp.float32) @ y, y0, 0.0, T1,
                   rtol=1e-5, atol=1e-6)
    assert sol.ys.dtype == jnp.float32
    np.testing.assert_allclose(sol.ys[-1], EXACT, atol=1e-4)


def test_pytree_state():
    def f(t, y, args):
        return {"a": -y["a"], "b": -2.0 * y["b"]}

    sol = sn.solve(f, {"a": jnp.array(1.0), "b": jnp.array([1.0, 2.0])}, 0.0, 1.0,
                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sol.ys["a"][-1], np.exp(-1.0), rtol=1e-8)
    np.testing.assert_allclose(sol.ys["b"][-1], np.exp(-2.0) * np.array([1, 2]), rtol=1e-8)


def test_imex_pair_for_kencarp():
    # y' = -y (explicit part) + A y (implicit part)
    sol = sn.solve((lambda t, y, a: -y, linear), jnp.asarray(Y0), 0.0, T1, solver="kencarp4",
                   rtol=1e-9, atol=1e-11)
    want = scipy.linalg.expm((A - np.eye(3)) * T1) @ Y0
    np.testing.assert_allclose(sol.ys[-1], want, atol=1e-7)
    with pytest.raises(ValueError, match="IMEX"):
        sn.solve((linear, linear), jnp.asarray(Y0), 0.0, T1, solver="tsit5")


# ---- statistics -------------------------------------------------------------------------

def _counting(f, counter):
    """`f` with every evaluation counted on the host: an independent tally for the tests."""

    def bump(y):
        counter[0] += 1
        return y

    def g(t, y, args):
        y = jax.experimental.io_callback(bump, jax.ShapeDtypeStruct(y.shape, y.dtype), y,
                                         ordered=False)
        return f(t, y, args)

    return g


@pytest.mark.parametrize("dt0", [None, 0.01])
@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "tsit5", "dopri5", "dopri8"])
def test_vf_evals_counted_for_explicit_solvers(name, dt0):
    if name == "euler" and dt0 is None:
        pytest.skip("Euler has fixed steps only")
    counter = [0]
    sol = sn.solve(_counting(linear, counter), jnp.asarray(Y0), 0.0, T1, solver=name,
                   rtol=1e-5, atol=1e-7, dt0=dt0, max_steps=200 if name == "euler" else 65536)
    assert int(sol.stats["num_vf_evals"]) == counter[0]


def test_vf_evals_with_jumps_miss_at_most_the_restarts_after_rejections():
    counter = [0]
    sol = sn.solve(_counting(linear, counter), jnp.asarray(Y0), 0.0, T1, solver="tsit5",
                   rtol=1e-8, atol=1e-10, jump_ts=[0.3, 0.6, 0.9, 1.2])
    missed = counter[0] - int(sol.stats["num_vf_evals"])
    assert 0 <= missed <= int(sol.stats["num_rejected_steps"])


def test_initial_step_is_chosen_from_the_problem_scale():
    # A fast decay needs a first step far below diffrax's fixed fallback of 0.01.
    sol = sn.solve(lambda t, y, a: -1e4 * y, jnp.ones(2), 0.0, 1e-3, solver="tsit5",
                   rtol=1e-6, atol=1e-9, saveat=diffrax.SaveAt(steps=True), max_steps=500)
    first = float(sol.ts[0])
    assert 1e-8 < first < 1e-4
    assert int(sol.stats["num_rejected_steps"]) <= 2


def test_vf_evals_not_counted_for_implicit_solvers():
    sol = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, solver="kvaerno5")
    assert int(sol.stats["num_vf_evals"]) == sn.stats.NOT_COUNTED


def test_stats_under_vmap():
    solve = jax.vmap(lambda y0: sn.solve(linear, y0, 0.0, T1).stats["num_steps"])
    steps = solve(jnp.stack([jnp.asarray(Y0), 1e-3 * jnp.asarray(Y0)]))
    assert steps.shape == (2,) and np.all(steps > 0)


# ---- bad input --------------------------------------------------------------------------

def test_unknown_solver_lists_known_ones():
    with pytest.raises(ValueError, match="unknown solver 'rk99'.*tsit5.*kvaerno5"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, solver="rk99")


@pytest.mark.parametrize(
    "tol",
    [{"rtol": 0.0}, {"atol": -1e-6}, {"rtol": -1.0}, {"rtol": np.inf, "atol": np.inf},
     {"atol": np.nan}],
)
def test_tolerance_not_finite_and_positive(tol):
    """rtol = atol = inf used to pass, and y' = -y to t = 10 returned 137.9."""
    name = next(iter(tol))
    with pytest.raises(ValueError, match=f"{name} must be finite and positive"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, **tol)


@pytest.mark.parametrize("rtol", [-1.0, np.inf])
def test_bad_tolerance_under_jit(rtol):
    f = jax.jit(lambda rtol: sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, rtol=rtol).ys)
    with pytest.raises(RUNTIME_ERRORS, match="rtol must be finite and positive"):
        f(rtol)


@pytest.mark.parametrize(
    "times, message",
    [
        ({"t1": np.nan}, "t1 must be finite"),
        ({"t0": np.nan, "solver": "bdf"}, "t0 must be finite"),
        ({"dt0": 0.0, "solver": "euler"}, "dt0 must be finite and non-zero"),
        ({"dt0": 0.0}, "dt0 must be finite and non-zero"),
        ({"dt0": np.nan}, "dt0 must be finite and non-zero"),
        ({"dt0": -0.1}, "dt0=-0.1 must point from t0"),
    ],
)
def test_bad_times_name_the_argument(times, message):
    """NaN t1 (or t0 with BDF) used to return y0; dt0 = 0 a ZeroDivisionError (euler) or an
    exhausted step budget after 65,536 steps (tsit5)."""
    kwargs = {"t0": 0.0, "t1": 1.0} | times
    with pytest.raises(ValueError, match=message):
        sn.solve(linear, jnp.asarray(Y0), **kwargs)


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5", "bdf", "rodas3"])
def test_vector_field_turning_nan_is_named(solver):
    """A field that returns NaN from t = 0.5 on: the error says so, and where (it used to say
    "step budget exhausted")."""

    def field(t, y, args):
        return jnp.where(t > 0.5, jnp.nan, -y)

    with pytest.raises(RUNTIME_ERRORS, match=r"vector field returned NaN or inf at t = 0\.5"):
        sn.solve(field, jnp.ones(1), 0.0, 1.0, solver=solver)
    under_jit = jax.jit(lambda y: sn.solve(field, y, 0.0, 1.0, solver=solver).ys)
    with pytest.raises(RUNTIME_ERRORS, match="vector field returned NaN or inf"):
        under_jit(jnp.ones(1))


def test_controller_solver_mismatch_names_both():
    controller = sn.solvers.SolverStepController(rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="SolverStepController reads .* not Tsit5"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, solver="tsit5",
                 stepsize_controller=controller)  # fmt: skip


@pytest.mark.parametrize("solver", ["euler", "tsit5"])
def test_t0_equal_t1_is_the_same_for_every_solver(solver):
    """`euler` with dt0 used to blame dt0 where the adaptive solvers returned y0. (Our own
    solvers under every controller, with and without dt0: `test_solver_contract.py`.)"""
    sol = sn.solve(linear, jnp.asarray(Y0), 0.5, 0.5, solver=solver, dt0=0.1)
    np.testing.assert_array_equal(sol.ys[-1], Y0)
    assert int(sol.stats["num_steps"]) == 0


def test_y0_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"y0 of shape/dtype.*\(2,\)"):
        sn.solve(linear, jnp.ones(2), 0.0, 1.0)
    resnet = sn.ResNet(2, 1, 4, 3, key=jax.random.key(0))
    node = sn.NeuralODE.from_resnet(resnet)
    with pytest.raises(ValueError, match="shape/dtype"):
        sn.solve(node.vector_field, jnp.ones(5), 0.0, 1.0)


def test_y0_dtype_mismatch():
    resnet = sn.ResNet(2, 1, 4, 3, key=jax.random.key(0), dtype=jnp.float64)
    node = sn.NeuralODE.from_resnet(resnet)
    with pytest.raises(ValueError, match="must match"):
        sn.solve(node.vector_field, jnp.ones(4, jnp.float32), 0.0, 1.0)
    with pytest.raises(TypeError, match="floating point"):
        sn.solve(linear, jnp.array([1, 2, 3]), 0.0, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_y0(bad):
    y0 = jnp.asarray(Y0).at[1].set(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        sn.solve(linear, y0, 0.0, 1.0)
    with pytest.raises(RUNTIME_ERRORS, match="NaN or inf"):
        jax.jit(lambda y: sn.solve(linear, y, 0.0, 1.0).ys)(y0)


def test_step_budget_exhausted_is_an_error_not_a_half_solution():
    with pytest.raises(eqx.EquinoxRuntimeError, match="step budget exhausted: max_steps=5"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, T1, rtol=1e-10, atol=1e-12, max_steps=5)
    # Opting out of the error returns the result code, never a silent success.
    sol = sn.solve(linear, jnp.asarray(Y0), 0.0, T1, rtol=1e-10, atol=1e-12, max_steps=5,
                   throw=False)
    assert sol.result == diffrax.RESULTS.max_steps_reached


def test_fixed_steps_need_dt0():
    with pytest.raises(ValueError, match="fixed steps need dt0"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, solver="euler")
    with pytest.raises(ValueError, match="no error estimate"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, solver="euler", stepsize_controller="pid")


def test_unknown_adjoint_and_controller():
    with pytest.raises(ValueError, match="unknown adjoint"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, adjoint="magic")
    with pytest.raises(ValueError, match="unknown stepsize_controller"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, stepsize_controller="fast")
    with pytest.raises(ValueError, match="max_steps"):
        sn.solve(linear, jnp.asarray(Y0), 0.0, 1.0, max_steps=0)


def test_recursive_adjoint_checkpoints_every_step_when_they_fit():
    """`adjoint="recursive"`: all `max_steps` checkpointed (equinox's fast path, no
    recomputation) when they fit in `CHECKPOINT_BYTES`, else diffrax's default count."""
    from stiffnode.solve import CHECKPOINT_BYTES, _adjoint

    small = _adjoint("recursive", jnp.ones(3), None, None, 4096, 1e-6, 1e-9)
    assert isinstance(small, diffrax.RecursiveCheckpointAdjoint) and small.checkpoints == 4096
    # 33 MB estimated:
    assert _adjoint("recursive", jnp.ones(20), None, None, 4096, 1e-6, 1e-9).checkpoints is None
    y0 = jnp.ones(3)
    too_many = CHECKPOINT_BYTES // (y0.dtype.itemsize * (2 * 9 + 30 + 24)) + 1
    fits = _adjoint("recursive", y0, None, None, too_many - 1, 1e-6, 1e-9)
    assert fits.checkpoints == too_many - 1
    assert _adjoint("recursive", y0, None, None, too_many, 1e-6, 1e-9).checkpoints is None


def test_backsolve_with_a_stiff_solver_warns():
    """Backsolve's backward state solve is unstable on stiff problems (Robertson's gradient
    through Rodas5P: 1e257, no error): said when traced (`jax.eval_shape`: no solve)."""
    field = lambda t, y, args: -y  # noqa: E731
    with pytest.warns(UserWarning, match="backsolve re-solves the state backward"):
        jax.eval_shape(lambda y: sn.solve(field, y, 0.0, 1.0, solver="rodas5p",
                                          adjoint="backsolve").ys, jnp.ones(2))  # fmt: skip
