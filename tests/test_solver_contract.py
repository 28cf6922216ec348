"""What any diffrax solver is expected to do, checked for stiffnode's own solvers (BDF,
Rodas3, Rodas5P, Rosenbrock23, AutoSwitch) under every diffrax controller that makes sense,
through `diffrax.diffeqsolve` itself: the drop-in contract. Written in the spirit of
diffrax's solver-generic tests (`test/test_integrate.py`, `test/test_saveat_solution.py`).

Accuracy is checked against closed forms (`expm`). Bounds for adaptive solves are
`BOUND * rtol` relative: the design notes measured CVODE's final-state error at 17-205x its
local tolerance and scipy BDF's at 6-74x on the standard stiff problems, so `BOUND = 1000`
leaves a 5x margin over the worst independent solver. Fixed-step bounds are stated where
they are used.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from jax.scipy.linalg import expm

import stiffnode as sn
from stiffnode.solvers import (
    BDF,
    AbstractSelfControlledSolver,
    AutoSwitch,
    ControllerTolerances,
    Rodas3,
    Rodas5P,
    Rosenbrock23,
    SolverStepController,
    for_solve,
)

BOUND = 1000
RTOL, ATOL = 1e-8, 1e-10
A = np.array([[-1.0, 0.5], [0.0, -2.0]])
Y0 = np.array([1.0, 2.0])

SOLVERS = {
    "bdf": BDF,
    "rodas3": Rodas3,
    "rodas5p": Rodas5P,
    "rosenbrock23": Rosenbrock23,
    "auto": AutoSwitch,
}
CONTROLLERS = ("solver", "pid", "constant", "stepto")
RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def _linear(t, y, args):
    return jnp.asarray(A, y.dtype) @ y


def _self_controlled(name) -> bool:
    """`SolverStepController` ("solver") lets the solver choose its steps: BDF and the
    Rosenbrock methods do, AutoSwitch (Tsit5 and a stiff method) does not."""
    return issubclass(SOLVERS[name], AbstractSelfControlledSolver)


def _skip_unless_self_controlled(name, controller):
    if controller == "solver" and not _self_controlled(name):
        pytest.skip(f"{name} does not choose its own steps")


def _setup(name, controller, t0, t1, num_steps=256, rtol=RTOL, atol=ATOL):
    """`(solver, controller, dt0)`; fixed steps take the tolerances of the Newton solve from
    the solver's root finder."""
    _skip_unless_self_controlled(name, controller)
    solver = SOLVERS[name]()
    if controller == "solver":
        return solver, SolverStepController(rtol=rtol, atol=atol), None
    if controller == "pid":
        return solver, diffrax.PIDController(rtol=rtol, atol=atol), None
    solver = eqx.tree_at(
        lambda s: s.root_finder, solver, ControllerTolerances(rtol, atol, optx.rms_norm)
    )
    if controller == "constant":
        return solver, diffrax.ConstantStepSize(), (t1 - t0) / num_steps
    return solver, diffrax.StepTo(jnp.linspace(t0, t1, num_steps + 1)), None


def _fixed_step_bound(name):
    """Relative error bound of 256 fixed steps on [0, 1] with A's eigenvalues -1, -2.

    Rodas3 (order 3): error constant times h^3 ~ 6e-8, bound 1e-5; Rodas5P (order 5):
    h^5 ~ 1e-12, the same bound. BDF climbs from order 1: its first step's local error alone
    is h^2 |A^2 y0| / 2 ~ 3e-5, bound 1e-3 (30x); Rosenbrock23 (order 2): h^2 |A^3 y0| ~
    1e-4, the same bound.
    """
    return 1e-3 if name in ("bdf", "rosenbrock23") else 1e-5


def _bound(name, controller, rtol=RTOL):
    return _fixed_step_bound(name) if controller in ("constant", "stepto") else BOUND * rtol


def _rel_error(y, exact):
    return float(np.max(np.abs(np.asarray(y) - np.asarray(exact)) / np.max(np.abs(exact))))


def _signed_linear(t, y, sign):
    return sign * (jnp.asarray(A, y.dtype) @ y)


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_reverse_time(name, controller):
    """y' = A y backwards from t = 0 to -1 is exactly the forward solve of y' = -A y from 0 to
    1 (diffrax solves reverse time forward in -t), and both equal expm(-A) y0. (One program
    for both: the times, the step and the sign of the field are its inputs.)"""
    if name == "auto" and controller == "stepto":
        # (the grid here is ConstantStepSize's: AutoSwitch takes the same steps, covered by
        # [auto-constant]; its compilation is the suite's costliest of these, ~10 s)
        pytest.skip("auto under StepTo on this grid is auto under ConstantStepSize")

    def run(t1, sign):
        solver, ctrl, dt0 = _setup(name, controller, 0.0, t1)
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_signed_linear), solver, jnp.asarray(0.0), jnp.asarray(t1),
            None if dt0 is None else jnp.asarray(dt0), jnp.asarray(Y0), args=jnp.asarray(sign),
            stepsize_controller=ctrl, max_steps=4096,
        )  # fmt: skip

    backward, forward = run(-1.0, 1.0), run(1.0, -1.0)
    exact = expm(-jnp.asarray(A)) @ Y0
    assert backward.ts[-1] == -1.0
    # The same arithmetic up to the sign of zero: equal to round-off.
    np.testing.assert_allclose(backward.ys[-1], forward.ys[-1], rtol=1e-12)
    assert _rel_error(backward.ys[-1], exact) < _bound(name, controller)
    assert int(backward.stats["num_steps"]) == int(forward.stats["num_steps"])


def _affine(t, y, coefficients):
    return coefficients[0] * y + coefficients[1]


@pytest.mark.parametrize("name", list(SOLVERS))
def test_reverse_time_through_solve(name):
    """The issue's reproducers: y' = -y and y' = 1 from t = 1 to 0, through `stiffnode.solve`
    with the solver's own controller and a PID controller."""
    for controller in ("solver", "pid") if _self_controlled(name) else ("pid",):
        # y' = a y + b: one program for both (the coefficients and tolerances are inputs)
        decay = sn.solve(_affine, jnp.ones(1), 1.0, 0.0, args=jnp.array([-1.0, 0.0]),
                         solver=name, stepsize_controller=controller, rtol=RTOL, atol=ATOL)
        assert abs(float(decay.ys[-1, 0]) - np.e) < BOUND * RTOL * np.e
        drift = sn.solve(_affine, jnp.zeros(1), 1.0, 0.0, args=jnp.array([0.0, 1.0]),
                         solver=name, stepsize_controller=controller)
        assert abs(float(drift.ys[-1, 0]) + 1.0) < 1e-9  # exact for any consistent method


@pytest.mark.parametrize("controller", ["solver", "pid", "constant"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_t0_equal_t1(name, controller):
    """A solve over an empty interval returns y0 for every SaveAt option, and no step.
    (`StepTo` cannot express it: diffrax requires its times strictly increasing.)"""
    solver, ctrl, dt0 = _setup(name, controller, 0.5, 0.5 + 1.0)
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(t0=True, t1=True, ts=jnp.array([0.5])),
            diffrax.SubSaveAt(steps=True),
            diffrax.SubSaveAt(t1=True, fn=lambda t, y, a: 2 * y),
        ],
        dense=True,
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_linear), solver, 0.5, 0.5, dt0, jnp.asarray(Y0),
        stepsize_controller=ctrl, saveat=saveat, max_steps=16,
    )
    ends, steps, doubled = sol.ys
    np.testing.assert_array_equal(ends, np.stack([Y0, Y0, Y0]))
    np.testing.assert_array_equal(sol.ts[0], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(doubled, 2 * Y0[None])
    assert np.all(~np.isfinite(np.asarray(steps)))  # no step was taken
    assert int(sol.stats["num_steps"]) == 0
    np.testing.assert_array_equal(sol.evaluate(0.5), Y0)


@pytest.mark.parametrize("controller", ["solver", "pid"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_saveat_and_dense_output(name, controller):
    """SaveAt(t0, t1, ts), steps, fn and dense output, all against the closed form."""
    solver, ctrl, _ = _setup(name, controller, 0.0, 1.0)
    ts = jnp.linspace(0.1, 0.9, 5)
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(t0=True, t1=True, ts=ts),
            diffrax.SubSaveAt(steps=True),
            diffrax.SubSaveAt(ts=ts, fn=lambda t, y, a: jnp.sum(y**2)),
        ],
        dense=True,
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_linear), solver, 0.0, 1.0, None, jnp.asarray(Y0),
        stepsize_controller=ctrl, saveat=saveat, max_steps=512,
    )

    def exact(t):
        return expm(t * jnp.asarray(A)) @ Y0

    (t_ends, t_steps, _), (y_ends, y_steps, y_fn) = sol.ts, sol.ys
    np.testing.assert_array_equal(t_ends, np.concatenate([[0.0], ts, [1.0]]))
    bound = BOUND * RTOL
    for t, y in zip(t_ends, y_ends, strict=True):
        assert _rel_error(y, exact(t)) < bound, t
    taken = np.isfinite(np.asarray(t_steps))
    assert taken.sum() == int(sol.stats["num_accepted_steps"])
    assert np.all(np.diff(np.asarray(t_steps)[taken]) > 0) and t_steps[taken][-1] == 1.0
    for t, y in zip(t_steps[taken], y_steps[taken], strict=True):
        assert _rel_error(y, exact(t)) < bound, t
    np.testing.assert_allclose(y_fn, [float(jnp.sum(exact(t) ** 2)) for t in ts], rtol=2 * bound)
    # Dense output between the steps: the interpolant's own error is of the method's
    # order, well within the bound at this tolerance.
    for t in np.linspace(0.013, 0.987, 11):
        assert _rel_error(sol.evaluate(t), exact(t)) < bound, t
    np.testing.assert_allclose(
        sol.evaluate(0.2, 0.7), exact(0.7) - exact(0.2), atol=bound * np.max(np.abs(Y0))
    )


@pytest.mark.parametrize(
    ("name", "dense_order"), [("rosenbrock23", 2), ("rodas3", 3), ("rodas5p", 4)]
)
def test_rosenbrock_dense_output_has_its_order(name, dense_order):
    """Fixed steps h and h/2: the largest dense-output error between the steps falls by
    2^p for an interpolant of order p (Rodas3: 3, cubic Hermite; Rodas5P: 4, its own);
    the linear interpolant that Rodas3 had before falls by 4 (order 2 between steps:
    h^2 y'' / 8). Bar: 0.75 * 2^p (a 25% margin, well above 4)."""
    errors = []
    for num_steps in (16, 32):
        solver, ctrl, dt0 = _setup(name, "constant", 0.0, 1.0, num_steps=num_steps)
        sol = diffrax.diffeqsolve(  # (the step an input: one program for both)
            diffrax.ODETerm(_linear), solver, 0.0, 1.0, jnp.asarray(dt0), jnp.asarray(Y0),
            stepsize_controller=ctrl, saveat=diffrax.SaveAt(dense=True),
        )
        ts = (np.arange(num_steps) + 0.5) / num_steps
        errors.append(max(_rel_error(sol.evaluate(t), expm(t * jnp.asarray(A)) @ Y0) for t in ts))
    assert errors[0] / errors[1] > 0.75 * 2**dense_order, errors


def _complex_field(t, y, args):
    """Not holomorphic: y' = -y + 0.5 i conj(y); in (Re y, Im y) the real system
    [[-1, 0.5], [0.5, -1]]."""
    return -y + 0.5j * jnp.conj(y)


_COMPLEX_REAL_SYSTEM = np.array([[-1.0, 0.5], [0.5, -1.0]])


def _complex_exact(y0, t):
    re_im = expm(t * jnp.asarray(_COMPLEX_REAL_SYSTEM)) @ jnp.stack([y0.real, y0.imag])
    return re_im[0] + 1j * re_im[1]


DTYPE_CASES = {
    # name: (state, field, closed form at t = 1, controller, rtol)
    "float32": (np.float32, "solver", 1e-5),
    "float64": (np.float64, "pid", RTOL),
    "complex64": (np.complex64, "pid", 1e-5),
    "complex128": (np.complex128, "solver", RTOL),
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
@pytest.mark.parametrize("name", list(SOLVERS))
def test_dtypes_under_strict_promotion(name, case):
    """Real and complex states of both precisions keep their dtype, with no implicit
    promotion anywhere (`jax_numpy_dtype_promotion="strict"` and
    `jax_numpy_rank_promotion="raise"`, as diffrax tests itself).
    float32 runs with rtol 1e-5 (its epsilon is 1.2e-7). The complex field is not
    holomorphic: the solvers work on real and imaginary parts."""
    dtype, controller, rtol = DTYPE_CASES[case]
    if not _self_controlled(name):
        controller = "pid"
    complex_state = np.issubdtype(dtype, np.complexfloating)
    y0 = jnp.asarray(Y0 * (1 - 2j) if complex_state else Y0, dtype)
    field = _complex_field if complex_state else _linear
    solver, ctrl, _ = _setup(name, controller, 0.0, 1.0, rtol=rtol, atol=rtol * 1e-2)
    t0, t1 = jnp.asarray(0.0, jnp.finfo(dtype).dtype), jnp.asarray(1.0, jnp.finfo(dtype).dtype)
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, t0, t1, None, y0, stepsize_controller=ctrl,
            saveat=diffrax.SaveAt(t1=True, dense=True),
        )
        mid = sol.evaluate(t0 + 0.5)
    assert sol.ys.dtype == y0.dtype and mid.dtype == y0.dtype
    if complex_state:
        exact, exact_mid = _complex_exact(y0, 1.0), _complex_exact(y0, 0.5)
    else:
        exact, exact_mid = expm(jnp.asarray(A)) @ Y0, expm(0.5 * jnp.asarray(A)) @ Y0
    assert _rel_error(sol.ys[-1], exact) < BOUND * rtol
    assert _rel_error(mid, exact_mid) < BOUND * rtol


@pytest.mark.parametrize("name", list(SOLVERS))
def test_pytree_state(name):
    """A dict of differently shaped leaves, under the solver's own controller."""
    y0 = {"a": jnp.array(1.0), "b": jnp.array([[2.0, 3.0]])}
    sol = sn.solve(lambda t, y, args: {"a": -y["a"], "b": -2.0 * y["b"]}, y0, 0.0, 1.0,
                   solver=name, rtol=RTOL, atol=ATOL)
    assert _rel_error(sol.ys["a"][-1], np.exp(-1.0)) < BOUND * RTOL
    assert _rel_error(sol.ys["b"][-1], np.exp(-2.0) * np.array([[2.0, 3.0]])) < BOUND * RTOL


@pytest.mark.parametrize("name", ["bdf", "rodas5p"])
def test_empty_state(name):
    """A state with no numbers (diffrax's generic tests draw such shapes): the dense LU of
    a 0 x 0 matrix, no error to control; the solve reaches t1."""
    sol = sn.solve(lambda t, y, args: -y, jnp.zeros((2, 0)), 0.0, 1.0, solver=name,
                   stepsize_controller="pid")  # fmt: skip
    assert sol.ys.shape == (1, 2, 0) and sol.stats["num_steps"] >= 1


ADJOINTS = {
    "recursive": diffrax.RecursiveCheckpointAdjoint,
    "direct": diffrax.DirectAdjoint,
    "backsolve": diffrax.BacksolveAdjoint,
}


# Rodas5P and Rosenbrock23 step through the same `AbstractRosenbrock.step` as Rodas3 (only
# their stages differ): every adjoint for Rodas3, the recursive and forward mode for them.
# AutoSwitch: forward mode here; reverse mode by its own test, through its switches against
# finite differences (`test_auto_switch.py::test_gradient_matches_finite_differences`; a
# second compilation of auto's reverse pass here cost 21 s of a cold suite).
GRADIENT_CASES = [
    (name, adjoint)
    for name in SOLVERS
    for adjoint in [*ADJOINTS, "forward"]
    if name in ("bdf", "rodas3")
    or (adjoint == "forward")
    or (adjoint == "recursive" and name != "auto")
]


@pytest.mark.parametrize(("name", "adjoint"), GRADIENT_CASES)
def test_gradients(name, adjoint):
    """d y(1) / d(k, y0) of y' = -k y against the closed form (-y0 e^-k, e^-k), by every
    reverse-mode adjoint and by forward mode (`jax.jvp`, `diffrax.ForwardMode`)."""
    solver, ctrl, _ = _setup(name, "pid", 0.0, 1.0)

    def end(params):
        k, y0 = params
        mode = diffrax.ForwardMode() if adjoint == "forward" else ADJOINTS[adjoint]()
        s = for_solve(solver, adjoint=mode, fixed_steps=False, dense=False)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, k: -k * y), s, 0.0, 1.0, None, y0, args=k,
            stepsize_controller=ctrl, adjoint=mode,
        )
        return sol.ys[-1, 0]

    k, y0 = jnp.array(0.7), jnp.array([1.3])
    exact = (-1.3 * np.exp(-0.7), np.exp(-0.7))
    if adjoint == "forward":
        got = [jax.jvp(end, ((k, y0),), (tangent,))[1] for tangent in
               ((jnp.array(1.0), jnp.zeros(1)), (jnp.array(0.0), jnp.ones(1)))]
    else:
        dk, dy0 = jax.grad(end)((k, y0))
        got = [dk, dy0[0]]
    # BacksolveAdjoint differentiates the continuous problem: its error is that of a second
    # solve at the same tolerance, inside the same bound.
    for g, e in zip(got, exact, strict=True):
        assert abs(float(g) - e) < BOUND * RTOL * abs(e), (float(g), e)


@pytest.mark.parametrize(
    "wrapping", [{"estimate_stiffness": True}, {"jump_ts": [0.5]}, {"solver": "auto"}]
)
def test_forward_mode_through_a_wrapped_runge_kutta_solver(wrapping):
    """Tsit5 inside `StiffnessMonitor`, `JumpAwareSolver` or `AutoSwitch` under
    `diffrax.ForwardMode` through `stiffnode.solve`: diffrax switches a Runge-Kutta solver's
    stage loop to one `jax.jvp` can go through, also through a wrapper (`AutoSwitch`:
    `solvers.for_solve`); d y(1) / dk of y' = -k y is -e^-k."""

    def end(k):
        sol = sn.solve(lambda t, y, k: -k * y, jnp.ones(1), 0.0, 1.0, args=k, rtol=RTOL,
                       atol=ATOL, adjoint=diffrax.ForwardMode(), **wrapping)  # fmt: skip
        return sol.ys[-1, 0]

    derivative = jax.jvp(end, (jnp.array(0.7),), (jnp.array(1.0),))[1]
    assert abs(float(derivative) + np.exp(-0.7)) < BOUND * RTOL * np.exp(-0.7)


@pytest.mark.parametrize("name", ["rodas5p", "rosenbrock23", "bdf"])
def test_vmapped_gradient_at_batch_64(name):
    """d y(1) / dk of y' = -k y for 64 rates at once (`vmap` of `grad`), against -e^-k: the
    members that finish first keep taking masked steps of h = 0, whose cotangents must stay
    finite (a 1 / h there made 35-62 of 64 Rosenbrock gradients NaN)."""

    def end(k):
        sol = sn.solve(lambda t, y, k: -k * y, jnp.ones(1), 0.0, 1.0, args=k, solver=name,
                       rtol=RTOL, atol=ATOL)  # fmt: skip
        return sol.ys[-1, 0]

    ks = jnp.linspace(0.5, 1.5, 64)
    got = np.asarray(jax.vmap(jax.grad(end))(ks))
    exact = -np.exp(-np.asarray(ks))
    assert np.all(np.abs(got - exact) < BOUND * RTOL * np.abs(exact))


def test_forward_mode_by_name_and_a_clear_error_without_it():
    """`jax.jacfwd` through `stiffnode.solve(adjoint="forward")` gives d y(1) / dk of
    y' = -k y, -e^-k; through the default reverse-mode adjoint it is a `TypeError` that says
    which adjoint to use (JAX's own message names no way out)."""

    def end(k, adjoint):
        sol = sn.solve(lambda t, y, k: -k * y, jnp.ones(1), 0.0, 1.0, args=k, solver="bdf",
                       rtol=RTOL, atol=ATOL, adjoint=adjoint)  # fmt: skip
        return sol.ys[-1, 0]

    derivative = jax.jacfwd(end)(jnp.array(0.7), "forward")
    assert abs(float(derivative) + np.exp(-0.7)) < BOUND * RTOL * np.exp(-0.7)
    with pytest.raises(TypeError, match='adjoint="forward"'):
        jax.jacfwd(end)(jnp.array(0.7), "recursive")


@pytest.mark.parametrize("name", list(SOLVERS))
def test_implicit_adjoint_at_a_steady_state(name):
    """y' = k - y run to its steady state (diffrax's steady-state event) with
    `ImplicitAdjoint`: y_ss = k, so d y_ss / d k = 1."""
    solver, ctrl, _ = _setup(name, "pid", 0.0, 1.0)

    def steady(k):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, k: k - y), solver, 0.0, jnp.inf, 0.1, jnp.zeros(1),
            args=k, stepsize_controller=ctrl, adjoint=diffrax.ImplicitAdjoint(),
            event=diffrax.Event(diffrax.steady_state_event()), max_steps=2048,
        )
        return sol.ys[-1, 0]

    value, grad = jax.value_and_grad(steady)(jnp.array(2.0))
    assert abs(float(value) - 2.0) < 1e-6  # the event fires at |y'| <= atol + rtol |y|
    assert abs(float(grad) - 1.0) < 1e-9  # exact: the implicit function theorem at y = k


@pytest.mark.parametrize("controller", ["solver", "pid"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_event_located_by_dense_output(name, controller):
    """y' = -y stops where y = 1/2: t = ln 2, located by a root find on the dense output."""
    solver, ctrl, _ = _setup(name, controller, 0.0, 5.0)
    event = diffrax.Event(lambda t, y, args, **kw: y[0] - 0.5, optx.Newton(1e-12, 1e-12))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, a: -y), solver, 0.0, 5.0, None, jnp.ones(1),
        stepsize_controller=ctrl, event=event,
    )
    assert abs(float(sol.ts[-1]) - np.log(2.0)) < BOUND * RTOL
    assert abs(float(sol.ys[-1, 0]) - 0.5) < BOUND * RTOL


def _square(t, y, args):
    return y**2


@pytest.mark.parametrize("controller", ["solver", "pid"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_blow_up_is_an_error(name, controller):
    """y' = y^2 from y(0) = 1 blows up at t = 1: the solve must fail, not step over the
    singularity (Rodas3 used to return -1 at t = 2 after one step from 0.56 past t = 1)."""
    _skip_unless_self_controlled(name, controller)
    with pytest.raises(RUNTIME_ERRORS):
        sol = sn.solve(_square, jnp.ones(1), 0.0, 2.0, solver=name,
                       stepsize_controller=controller, max_steps=2000)
        jax.block_until_ready(sol.ys)
    # (the same program: the end time and tolerances are its inputs)
    sol = sn.solve(_square, jnp.ones(1), 0.0, 0.9, solver=name,
                   stepsize_controller=controller, max_steps=2000, rtol=RTOL, atol=ATOL)
    # Rosenbrock23 (order 2, no local extrapolation): ~450 steps of local error <= rtol y,
    # amplified up to (y(0.9) / y)^2 = 100 on the way: 4.5e-4 relative; bound 1e-3.
    relative_bound = 1e-3 if name == "rosenbrock23" else BOUND * RTOL
    assert abs(float(sol.ys[-1, 0]) - 10.0) < relative_bound * 10.0


@pytest.mark.parametrize("controller", ["solver", "pid"])
def test_work_is_counted_under_any_adaptive_controller(controller):
    """`stiffnode.solve` counts BDF's work under its own controller and under a PID
    controller alike; the counts add up."""
    p = sn.problems.robertson()
    sol = sn.solve(p.vector_field, jnp.asarray(p.y0), p.t0, 40.0, args=p.args, solver="bdf",
                   stepsize_controller=controller, rtol=1e-6, atol=1e-10)
    s = {k: int(v) for k, v in sol.stats.items() if k != "num_steps_per_order"}
    assert s["num_steps"] == s["num_accepted_steps"] + s["num_rejected_steps"]
    assert s["num_rejected_steps"] == s["num_newton_failures"] + s["num_error_test_failures"]
    assert int(sol.stats["num_steps_per_order"].sum()) == s["num_accepted_steps"]
    assert 0 < s["num_jac_evals"] <= s["num_lu_decompositions"] <= s["num_steps"]
    assert s["num_vf_evals"] >= s["num_newton_iters"] >= s["num_steps"]
