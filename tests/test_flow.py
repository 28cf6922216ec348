"""Gradient-flow training (`stiffnode.flow`) against independent references: the closed form
`theta* + expm(-H t)(theta0 - theta*)` of a quadratic's flow (scipy), scipy BFGS's optimum of
a logistic regression, finite-difference Hessians, numpy eigenvalues, analytic Hessians,
gradient evaluations counted at run time by a callback inside the loss, and a hand-written
optax loop. (GMRES: `test_krylov.py`; Lanczos: `test_lanczos.py`.)"""

import functools
import types

import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.optimize  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from helpers import CallCounter, central_difference_jacobian, symmetric_with_eigenvalues  # noqa: E402
from stiffnode.flow import (  # noqa: E402
    FLOW_STAT_KEYS,
    GradientFlowField,
    gradient_flow,
    hessian,
    hessian_extremes,
    hessian_vector_product,
    run,
)
from stiffnode.training import TrainingDiverged  # noqa: E402

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)

def _zeros(params):
    return jax.tree_util.tree_map(jnp.zeros_like, params)


# ----------------------------------------------------------------- the quadratic flow

# Parameters as a pytree of a (3,) and a (2, 2) leaf; the loss couples all 7 entries
# (dense H), so a wrong flattening order gives a wrong flow.
EIGS = np.logspace(-1, 3, 7)  # stiffness ratio 1e4
H_STIFF = symmetric_with_eigenvalues(EIGS, seed=0)
THETA_STAR = np.random.default_rng(1).normal(size=7)
_rng = np.random.default_rng(2)
P0 = {"a": _rng.normal(size=3), "b": _rng.normal(size=(2, 2))}  # numpy: float64 under x64


def _flat(p):
    """The parameter vector in the loss's own order: a, then b row-major."""
    return np.concatenate([np.ravel(p["a"]), np.ravel(p["b"])])


def _quadratic_loss(H, counter=None):
    Hj, star = jnp.asarray(H), jnp.asarray(THETA_STAR)

    def loss(p):
        if counter is not None:
            jax.debug.callback(counter.bump)
        d = jnp.concatenate([p["a"], p["b"].ravel()]) - star
        return 0.5 * d @ Hj @ d

    return loss


def _quadratic_exact(H, theta0, t):
    return THETA_STAR + scipy.linalg.expm(-H * t) @ (theta0 - THETA_STAR)


def _quadratic_np_loss(H, theta):
    d = theta - THETA_STAR
    return 0.5 * d @ H @ d


QUADRATIC_CONFIGS = [
    ("tsit5", "auto"),
    ("kvaerno5", "auto"),
    ("bdf", "lu"),
    ("bdf", "gmres"),
    ("ndf", "auto"),
    ("rodas3", "gmres"),
]


@functools.cache
def _quadratic_run(solver, linear_solver, num_updates=4):
    """`num_updates` jitted updates of the stiff quadratic's flow, windows of 0.25."""
    counter = CallCounter()
    loss = _quadratic_loss(H_STIFF, counter)
    opt = gradient_flow(
        loss, solver, window=0.25, rtol=1e-8, atol=1e-10, linear_solver=linear_solver
    )
    update = jax.jit(opt.update)
    params, state = P0, opt.init(P0)
    rec = types.SimpleNamespace(
        time=[float(state.time)], flat=[_flat(params)], window_stats=[], stats=[], calls=[]
    )
    for _ in range(num_updates):
        before = counter.n
        updates, state = update(_zeros(params), state, params)
        params = optax.apply_updates(params, updates)
        jax.effects_barrier()
        rec.calls.append(counter.n - before)
        rec.time.append(float(state.time))
        rec.flat.append(_flat(params))
        rec.window_stats.append({k: int(v) for k, v in state.window_stats.items()})
        rec.stats.append({k: int(v) for k, v in state.stats.items()})
    rec.count = int(state.count)
    return rec


@pytest.mark.parametrize("solver, linear_solver", QUADRATIC_CONFIGS)
def test_quadratic_flow_matches_matrix_exponential(solver, linear_solver):
    r = _quadratic_run(solver, linear_solver)
    assert r.count == 4
    np.testing.assert_allclose(r.time, 0.25 * np.arange(5), rtol=1e-14)
    theta0 = _flat(P0)
    for t, theta in zip(r.time[1:], r.flat[1:], strict=True):
        exact = _quadratic_exact(H_STIFF, theta0, t)
        # Errors are <= 7e-9 (rtol 1e-8); rtol 1e-6 gives ~1e-7, the default 1e-3 ~1e-4.
        # Each window moves theta by 0.05 or more.
        np.testing.assert_allclose(theta, exact, rtol=0, atol=1e-7)
    losses = [_quadratic_np_loss(H_STIFF, theta) for theta in r.flat]
    assert np.all(np.diff(losses) < 0), losses


def test_window_and_rtol_schedules():
    """Windows 0.2, 0.4, 0.6, 0.8 (an optax schedule) and rtol 1e-3, 1e-6, 1e-9, 1e-12; each
    window's end point against the closed form from that window's start."""
    # Not stiff: tsit5's steps follow rtol.
    H = symmetric_with_eigenvalues(np.linspace(0.5, 2.0, 7), seed=3)
    opt = gradient_flow(
        _quadratic_loss(H),
        "tsit5",
        window=optax.linear_schedule(0.2, 0.8, 3),
        rtol=optax.exponential_decay(1e-3, 1, 1e-3),
        atol=1e-12,
    )
    update = jax.jit(opt.update)
    params, state = P0, opt.init(P0)
    times, errors, steps = [], [], []
    for _ in range(4):
        theta, t0 = _flat(params), float(state.time)
        updates, state = update(_zeros(params), state, params)
        params = optax.apply_updates(params, updates)
        times.append(float(state.time))
        exact = _quadratic_exact(H, theta, float(state.time) - t0)
        errors.append(np.max(np.abs(_flat(params) - exact)))
        steps.append(int(state.window_stats["num_steps"]))
    # optax schedules compute in float32: windows exact to ~1e-8.
    np.testing.assert_allclose(times, [0.2, 0.6, 1.2, 2.0], rtol=1e-7)
    assert errors[0] > 1e-10, errors  # rtol 1e-3 at the first window (errors ~1e-8)...
    assert errors[3] < 1e-11, errors  # ... and 1e-12 at the last (errors ~1e-13)
    assert steps[3] > 5 * steps[0], steps


# --------------------------------------------------------- solver statistics of the flow


@pytest.mark.parametrize("solver, linear_solver", QUADRATIC_CONFIGS)
def test_flow_stats_are_the_sum_of_the_windows(solver, linear_solver):
    r = _quadratic_run(solver, linear_solver)
    for k, total in enumerate(r.stats):
        windows = r.window_stats[: k + 1]
        for key in FLOW_STAT_KEYS:
            values = [w[key] for w in windows]
            assert total[key] == (-1 if min(values) < 0 else sum(values)), (k, key)
    for w in r.window_stats:
        assert w["num_steps"] == w["num_accepted_steps"] + w["num_rejected_steps"] > 0


def test_flow_stats_explicit_solver():
    r = _quadratic_run("tsit5", "auto")
    for w, calls in zip(r.window_stats, r.calls, strict=True):
        for key in ("num_jac_evals", "num_jvp_evals", "num_lu_decompositions"):
            assert w[key] == 0
        # Gradient evaluations counted by the loss itself. stiffnode.stats: exact except a
        # first-same-as-last stage re-evaluated after a rejection right after the start.
        assert w["num_vf_evals"] > 0
        assert 0 <= calls - w["num_vf_evals"] <= 3, (calls, w)


@pytest.mark.parametrize("solver", ["bdf", "ndf"])
def test_flow_stats_dense_bdf(solver):
    r = _quadratic_run(solver, "lu" if solver == "bdf" else "auto")
    for w, calls in zip(r.window_stats, r.calls, strict=True):
        assert w["num_vf_evals"] > 0 and w["num_jac_evals"] > 0
        assert w["num_lu_decompositions"] > 0 and w["num_jvp_evals"] == 0
        # Each dense Hessian (jacfwd of the gradient) evaluates the gradient once.
        assert calls == w["num_vf_evals"] + w["num_jac_evals"], (calls, w)


def test_flow_stats_matrix_free_bdf():
    r = _quadratic_run("bdf", "gmres")
    for w, calls in zip(r.window_stats, r.calls, strict=True):
        assert w["num_vf_evals"] > 0 and w["num_jac_evals"] > 0 and w["num_jvp_evals"] > 0
        assert w["num_lu_decompositions"] == 0
        # Hessian-vector products reuse one linearisation per Newton solve, whose gradient
        # evaluation is counted in num_vf_evals: every gradient call is counted, exactly.
        assert calls == w["num_vf_evals"], (calls, w)


def test_flow_stats_matrix_free_rodas3():
    r = _quadratic_run("rodas3", "gmres")
    for w, calls in zip(r.window_stats, r.calls, strict=True):
        assert w["num_jvp_evals"] >= 4 * w["num_steps"]  # at least one HVP per stage solve
        assert w["num_jac_evals"] == w["num_lu_decompositions"] == w["num_newton_iters"] == 0
        # One linearisation (its gradient), two more stages and f(t1, y1) (for the dense
        # output) per attempt, two for the first step's choice: every gradient call is
        # counted, exactly.
        assert calls == w["num_vf_evals"] == 4 * w["num_steps"] + 2, (calls, w)


def test_flow_stats_kvaerno_not_counted_stays_not_counted():
    r = _quadratic_run("kvaerno5", "auto")
    counted = ("num_steps", "num_accepted_steps", "num_rejected_steps")
    for stats in (*r.window_stats, *r.stats):
        for key in FLOW_STAT_KEYS:
            if key in counted:
                assert stats[key] >= 0
            else:
                assert stats[key] == -1, key
    assert r.stats[-1]["num_steps"] == sum(w["num_steps"] for w in r.window_stats)


# ------------------------------------------------------- a convex, non-quadratic flow

_rng = np.random.default_rng(4)
X_LOG = _rng.normal(size=(40, 3))
Y_LOG = (_rng.uniform(size=40) < 1 / (1 + np.exp(-(X_LOG @ [1.5, -2.0, 0.5] + 0.3)))) * 1.0
LAM = 0.1
P0_LOG = {"w": np.zeros(3), "b": np.zeros(())}


def logistic_loss(p):
    """L2-regularised logistic regression (mean log-loss), strongly convex."""
    z = jnp.asarray(X_LOG) @ p["w"] + p["b"]
    data = jnp.mean(jnp.logaddexp(0.0, z) - jnp.asarray(Y_LOG) * z)
    return data + 0.5 * LAM * (p["w"] @ p["w"] + p["b"] ** 2)


def _log_np(theta):
    """(loss, gradient, Hessian) in numpy, theta = (w, b)."""
    A = np.hstack([X_LOG, np.ones((len(X_LOG), 1))])
    z = A @ theta
    s = 1 / (1 + np.exp(-z))
    loss = np.mean(np.logaddexp(0, z) - Y_LOG * z) + 0.5 * LAM * theta @ theta
    grad = A.T @ (s - Y_LOG) / len(z) + LAM * theta
    hess = (A.T * (s * (1 - s))) @ A / len(z) + LAM * np.eye(4)
    return loss, grad, hess


def _log_theta(p):
    return np.concatenate([np.asarray(p["w"]), np.atleast_1d(np.asarray(p["b"]))])


@functools.cache
def _bfgs_optimum():
    res = scipy.optimize.minimize(
        lambda th: _log_np(th)[0],
        np.zeros(4),
        jac=lambda th: _log_np(th)[1],
        method="BFGS",
        options={"gtol": 1e-12},
    )
    assert np.linalg.norm(_log_np(res.x)[1]) < 1e-10
    return res.x


def test_logistic_flow_bdf_decreases_loss_and_reaches_the_optimum():
    # Windows 1, 2, 4, ..., 256: flow time 511, far past the slowest mode (rate >= 0.1).
    opt = gradient_flow(logistic_loss, "bdf", window=lambda c: 2.0**c, rtol=1e-8, atol=1e-10)
    update = jax.jit(opt.update)
    params, state = P0_LOG, opt.init(P0_LOG)
    losses = [_log_np(_log_theta(params))[0]]
    for _ in range(9):
        updates, state = update(_zeros(params), state, params)
        params = optax.apply_updates(params, updates)
        losses.append(_log_np(_log_theta(params))[0])
    assert float(state.time) == 511.0
    assert np.all(np.diff(losses[:6]) < -1e-8), losses  # clearly decreasing at first,
    assert np.all(np.diff(losses) <= 1e-15), losses  # never increasing
    # The slowest mode decays like exp(-0.18 t): the end point is the optimum (error ~6e-12).
    np.testing.assert_allclose(_log_theta(params), _bfgs_optimum(), rtol=0, atol=1e-8)


# -------------------------------------------------------------------------- the driver


def _accuracy(p):
    theta = _log_theta(p)
    return {"acc": float(np.mean(((X_LOG @ theta[:3] + theta[3]) > 0) == Y_LOG))}


def _flow_tsit5():
    return gradient_flow(logistic_loss, "tsit5", window=1.0, rtol=1e-8, atol=1e-10)


@functools.cache
def _driver_flow_run():
    """Flow updates (tsit5, windows of 1) until flow time 5.5, with test metrics and the
    Hessian's extremes every 3 updates."""
    return run(
        logistic_loss,
        P0_LOG,
        _flow_tsit5(),
        max_updates=8,
        max_flow_time=5.5,
        eval_fn=_accuracy,
        stiffness_every=3,
        key=jax.random.key(0),
    )


def test_logistic_flow_tsit5_decreases_loss():
    h = _driver_flow_run().history
    assert np.all(np.diff(h["loss"]) < 0), h["loss"]
    assert h["loss"][-1] > _log_np(_bfgs_optimum())[0]


def test_run_flow_history():
    r = _driver_flow_run()
    h = r.history
    assert r.stop_reason == "max_flow_time"
    assert h["update"] == list(range(7))
    assert {len(v) for v in h.values()} == {7}, {k: len(v) for k, v in h.items()}
    np.testing.assert_allclose(h["flow_time"], np.arange(7.0), rtol=1e-14)
    # Monitoring against numpy: row 0 at the start point, the last row at the end point.
    loss0, grad0, hess0 = _log_np(np.zeros(4))
    assert h["loss"][0] == pytest.approx(loss0, rel=1e-13)
    assert h["grad_norm"][0] == pytest.approx(np.linalg.norm(grad0), rel=1e-12)
    assert h["loss"][-1] == pytest.approx(_log_np(_log_theta(r.params))[0], rel=1e-13)
    assert h["acc"][0] == _accuracy(P0_LOG)["acc"] and h["acc"][-1] == _accuracy(r.params)["acc"]
    # Work: gradient evaluations are the solver's, cumulative, from zero.
    assert h["grad_evals"] == h["num_vf_evals"]
    assert h["grad_evals"][0] == 0 and np.all(np.diff(h["grad_evals"]) > 0)
    assert h["num_jac_evals"][-1] == 0 and np.all(np.diff(h["num_steps"]) > 0)
    # Hessian extremes (Lanczos, 20 products on 4 parameters: exact) every 3 updates.
    eig0 = np.linalg.eigvalsh(hess0)
    assert h["hessian_min"][0] == pytest.approx(eig0[0], rel=1e-8)
    assert h["hessian_max"][0] == pytest.approx(eig0[-1], rel=1e-8)
    A = np.hstack([X_LOG, np.ones((len(X_LOG), 1))])
    upper = LAM + 0.25 * np.linalg.eigvalsh(A.T @ A / len(A))[-1]  # s (1 - s) <= 1/4
    for k in range(7):
        lo, hi = h["hessian_min"][k], h["hessian_max"][k]
        if k % 3:
            assert lo is None and hi is None
        else:
            assert LAM - 1e-12 <= lo <= hi <= upper + 1e-12


def _adam_reference(num_updates, lr=0.05):
    """A plain optax loop: parameters after `num_updates`, losses before each and at the end."""
    opt = optax.adam(lr)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(logistic_loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    params, state = P0_LOG, opt.init(P0_LOG)
    losses = [float(logistic_loss(params))]
    for _ in range(num_updates):
        params, state = step(params, state)
        losses.append(float(logistic_loss(params)))
    return params, losses


def test_run_adam_and_stopping_rules():
    ref_params, ref_losses = _adam_reference(8)
    r = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=8, eval_fn=_accuracy)
    h = r.history
    assert r.stop_reason == "max_updates" and h["update"] == list(range(9))
    assert h["grad_evals"] == list(range(9))
    assert {len(v) for v in h.values()} == {9}
    assert "flow_time" not in h and "num_vf_evals" not in h
    np.testing.assert_allclose(_log_theta(r.params), _log_theta(ref_params), rtol=1e-12)
    np.testing.assert_allclose(h["loss"], ref_losses, rtol=1e-12)
    assert h["acc"][-1] == _accuracy(ref_params)["acc"]

    target = 0.5 * (ref_losses[4] + ref_losses[5])
    r = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=50, target_loss=target)
    assert r.stop_reason == "target_loss" and r.history["update"][-1] == 5
    assert r.history["loss"][-1] <= target < r.history["loss"][-2]

    norms = h["grad_norm"]
    assert norms[3] < norms[2]
    tol = 0.5 * (norms[2] + norms[3])
    r = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=50, grad_tol=tol)
    assert r.stop_reason == "grad_tol" and r.history["update"][-1] == 3
    assert r.history["grad_norm"][-1] <= tol < r.history["grad_norm"][-2]

    r = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=50, max_wall_time=1e-12)
    assert r.stop_reason == "max_wall_time" and r.history["update"] == [0, 1]


@pytest.fixture(scope="module")
def checkpointed_flow(tmp_path_factory):
    """Three flow updates written to a checkpoint, then a run to six resumed from it."""
    ck = tmp_path_factory.mktemp("flow") / "ck"
    first = run(logistic_loss, P0_LOG, _flow_tsit5(), max_updates=3, checkpoint=ck)
    resumed = run(logistic_loss, P0_LOG, _flow_tsit5(), max_updates=6, checkpoint=ck)
    return first, resumed


def test_run_checkpoint_restores_the_flow_state(checkpointed_flow):
    first, resumed = checkpointed_flow
    whole = _driver_flow_run().history
    assert first.stop_reason == "max_updates" and first.history["update"] == [0, 1, 2, 3]
    for name in ("loss", "flow_time", "num_vf_evals"):
        np.testing.assert_allclose(first.history[name], whole[name][:4], rtol=1e-12)
        np.testing.assert_allclose(resumed.history[name][:4], first.history[name], rtol=1e-12)
    # The flow continues from the checkpoint: flow time, solver work and loss go on.
    new = slice(4, None)
    assert min(resumed.history["flow_time"][new]) >= 3.0
    assert min(resumed.history["num_vf_evals"][new]) >= first.history["num_vf_evals"][-1]
    assert max(resumed.history["loss"][new]) <= first.history["loss"][-1]
    assert resumed.stop_reason == "max_updates" and resumed.history["update"][-1] == 6


def test_run_checkpoint_resume_equals_an_uninterrupted_run(checkpointed_flow):
    _, resumed = checkpointed_flow
    whole = _driver_flow_run()
    assert resumed.history["update"] == list(range(7))
    np.testing.assert_allclose(resumed.history["flow_time"], np.arange(7.0))
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(_log_theta(resumed.params), _log_theta(whole.params), rtol=1e-12)


def test_run_checkpoint_resume_after_interruption(tmp_path):
    ck = tmp_path / "ck"

    class Interrupt(Exception):
        pass

    calls = []

    def eval_fn(p):
        calls.append(1)
        if len(calls) == 4:  # row 3, after three updates (and checkpoints)
            raise Interrupt
        return {}

    with pytest.raises(Interrupt):
        run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=6, checkpoint=ck, eval_fn=eval_fn)
    resumed = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=6, checkpoint=ck)
    ref_params, ref_losses = _adam_reference(6)
    assert resumed.history["update"] == list(range(7))
    np.testing.assert_allclose(resumed.history["loss"], ref_losses, rtol=1e-12)
    np.testing.assert_allclose(_log_theta(resumed.params), _log_theta(ref_params), rtol=1e-12)
    assert resumed.history["grad_evals"] == list(range(7))
    # The checkpoint is one file (parameters, optimizer state and history together).
    assert [f.name for f in tmp_path.iterdir()] == ["ck"]
    # Another optimizer's checkpoint is refused, saying so (was TreePathError).
    with pytest.raises(ValueError, match="made by another optimizer"):
        run(logistic_loss, P0_LOG, optax.sgd(0.05), max_updates=8, checkpoint=ck)
    # A truncated checkpoint is named and set aside with a warning; the run starts afresh.
    ck.write_bytes(ck.read_bytes()[:150])
    with pytest.warns(UserWarning, match="ck is damaged"):
        fresh = run(logistic_loss, P0_LOG, optax.adam(0.05), max_updates=6, checkpoint=ck)
    assert (tmp_path / "ck.damaged").exists()
    np.testing.assert_allclose(fresh.history["loss"], ref_losses, rtol=1e-12)


def test_run_bad_inputs_and_non_finite():
    sgd = optax.sgd(0.1)
    for kwargs in (
        {"max_updates": 0},
        {"target_loss": -1.0},
        {"grad_tol": 0.0},
        {"stiffness_every": 2},  # no key
        {"eval_every": 0},
    ):
        with pytest.raises(ValueError):
            run(logistic_loss, P0_LOG, sgd, **kwargs)
    with pytest.raises(TrainingDiverged, match="loss is nan at update 0"):
        run(lambda p: jnp.sum(p["w"]) * jnp.nan, P0_LOG, sgd, max_updates=3)
    # A learning rate that blows up: named at the update where the loss passed 1e6 x.
    with pytest.raises(TrainingDiverged, match="diverged: the loss is .* at update [1-9]"):
        run(lambda p: jnp.sum((p["w"] - 1.0) ** 2), P0_LOG, optax.sgd(30.0), max_updates=20)
    # A finite loss whose gradient is infinite (sqrt at 0): the parameters become NaN.
    with pytest.raises(FloatingPointError, match="not finite after update 0"):
        run(lambda p: jnp.sum(jnp.sqrt(jnp.abs(p["w"]))), P0_LOG, sgd, max_updates=3)


def test_run_raises_when_an_update_fails_unless_throw_false():
    """A stiff quadratic's flow with Tsit5 and a step budget of 8: the first update's solve
    fails; `run` raises naming it, as `solve` does, or records it with `throw=False`."""

    def loss(p):
        return 0.5 * (p["w"][0] ** 2 + 1e6 * p["w"][1] ** 2)

    flow = gradient_flow(loss, "tsit5", window=1.0, max_steps=8)
    p0 = {"w": jnp.array([1.0, 1.0])}
    with pytest.raises(RuntimeError, match="flow.run: update 0 failed: .*step budget"):
        run(loss, p0, flow, max_updates=2)
    r = run(loss, p0, flow, max_updates=2, throw=False)
    assert r.stop_reason.startswith("failed:") and r.history["update"] == [0]


# ----------------------------------------------------------------------- minibatches


def test_minibatch_keyword_reaches_the_loss_without_recompiling():
    traces = [0]

    def loss(params, *, batch):
        traces[0] += 1  # Python side effect: runs when traced, not when executed
        x, y = batch
        r = x @ params["w"] + params["b"] - y
        return 0.5 * jnp.mean(r**2)

    rng = np.random.default_rng(5)
    batches = [(rng.normal(size=(10, 2)), rng.normal(size=10)) for _ in range(2)]
    p0 = {"w": jnp.array([0.5, -0.5]), "b": jnp.array(0.1)}
    theta0 = np.array([0.5, -0.5, 0.1])
    opt = gradient_flow(loss, "tsit5", window=0.5, rtol=1e-10, atol=1e-12)
    update = jax.jit(opt.update)
    state = opt.init(p0)
    steps = []
    for x, y in batches:
        updates, new_state = update(_zeros(p0), state, p0, batch=(jnp.asarray(x), jnp.asarray(y)))
        if not steps:
            traced = traces[0]
            assert traced > 0
        # This batch's own flow: H = A^T A / m, theta* its least-squares solution.
        A = np.hstack([x, np.ones((10, 1))])
        star = np.linalg.lstsq(A, y, rcond=None)[0]
        exact = star + scipy.linalg.expm(-A.T @ A / 10 * 0.5) @ (theta0 - star)
        step = np.concatenate([np.asarray(updates["w"]), [float(updates["b"])]])
        np.testing.assert_allclose(theta0 + step, exact, rtol=0, atol=1e-8)
        steps.append(step)
        assert float(new_state.time) == 0.5
    assert np.max(np.abs(steps[0] - steps[1])) > 0.05
    assert traces[0] == traced  # the second batch (same shapes) did not retrace
    assert update._cache_size() == 1


# ------------------------------------------------------------------------------ errors


def test_gradient_flow_errors():
    loss = _quadratic_loss(H_STIFF)
    for kwargs in (
        {"window": 0.0},
        {"window": -1.0},
        {"window": True},
        {"window": "1"},
        {"rtol": 0.0},
        {"atol": -1e-9},
        {"max_steps": 0},
    ):
        with pytest.raises(ValueError):
            gradient_flow(loss, "tsit5", **kwargs)
    # Unknown names: ValueError when the optimizer is built, not at its first update.
    for args, kwargs, match in (
        (("bosh3",), {}, "unknown solver"),
        (("bdf",), {"linear_solver": "foo"}, "linear_solver"),
        (("tsit5",), {"linear_solver": "foo"}, "linear_solver"),
        (("euler",), {}, "needs an adaptive solver"),
    ):
        with pytest.raises(ValueError, match=match):
            gradient_flow(loss, *args, **kwargs)
    opt = gradient_flow(loss, "tsit5")
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update(_zeros(P0), opt.init(P0))


@pytest.mark.parametrize("name", ["window", "rtol", "atol"])
def test_schedule_values_are_checked_when_used(name):
    """A schedule returning -1 for the window used to run the flow backwards (gradient
    ascent, loss 3 -> 4.9e5); now an error naming the schedule, under jit too."""
    opt = gradient_flow(_quadratic_loss(H_STIFF), "tsit5", **{name: lambda count: -1.0})
    with pytest.raises(jax.errors.JaxRuntimeError, match=f"the {name} schedule returned"):
        jax.block_until_ready(jax.jit(opt.update)(_zeros(P0), opt.init(P0), P0))


def test_gradient_flow_nan_loss_is_named():
    """A loss that is NaN: the update says the vector field (the gradient) returned NaN, not
    that the step budget ran out."""
    opt = gradient_flow(lambda p: jnp.sum(p["a"] ** 2) * jnp.nan, "bdf", window=1.0)
    with pytest.raises(jax.errors.JaxRuntimeError, match="vector field returned NaN or inf"):
        jax.block_until_ready(jax.jit(opt.update)(_zeros(P0), opt.init(P0), P0))


def test_gradient_flow_step_budget():
    # Tsit5 on the stiff quadratic needs ~100 steps per unit of flow time.
    opt = gradient_flow(_quadratic_loss(H_STIFF), "tsit5", window=1.0, max_steps=2)
    # Raised at run time from inside the compiled solve (equinox's error_if).
    with pytest.raises(jax.errors.JaxRuntimeError, match="step budget exhausted"):
        jax.block_until_ready(jax.jit(opt.update)(_zeros(P0), opt.init(P0), P0))


# ------------------------------------------------------- Hessians and the flow's Jacobian


def _mlp_loss(p, *, x, y):
    hidden = jnp.tanh(x @ p["W1"].T + p["b1"])
    return jnp.mean((hidden @ p["w2"] + p["c"] - y) ** 2)


def _mlp_problem():
    rng = np.random.default_rng(6)
    # Insertion order differs from ravel_pytree's (sorted keys).
    params = {
        "w2": jnp.asarray(rng.normal(size=4)),
        "W1": jnp.asarray(rng.normal(size=(4, 2))),
        "b1": jnp.asarray(rng.normal(size=4)),
        "c": jnp.asarray(0.3),
    }
    data = {"x": jnp.asarray(rng.normal(size=(6, 2))), "y": jnp.asarray(rng.normal(size=6))}
    return params, data


def test_hessian_hvp_and_flow_jacobian_against_finite_differences():
    params, data = _mlp_problem()
    flat, unravel = ravel_pytree(params)
    n = flat.size
    grad = jax.jit(lambda th: ravel_pytree(jax.grad(_mlp_loss)(unravel(th), **data))[0])
    h = 1e-6
    H_fd = central_difference_jacobian(grad, np.asarray(flat), h)
    scale = np.max(np.abs(H_fd))
    v = np.random.default_rng(7).normal(size=n)
    field = GradientFlowField(_mlp_loss)

    @jax.jit
    def under_test(params, data, v):
        J = jax.jacfwd(lambda th: ravel_pytree(field(0.0, unravel(th), data))[0])(flat)
        hvp = hessian_vector_product(_mlp_loss, params, **data)
        return hessian(_mlp_loss, params, **data), hvp(v), J

    H, Hv, J = under_test(params, data, jnp.asarray(v))
    assert H.shape == (n, n)
    np.testing.assert_allclose(H, H_fd, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(Hv, H_fd @ v, rtol=0, atol=1e-6 * scale * n)
    # The flow's Jacobian, d(-grad L)/dtheta, on the flattened parameters.
    np.testing.assert_allclose(J, -H_fd, rtol=0, atol=1e-6 * scale)


def test_hessian_extremes_of_the_quadratic():
    loss = _quadratic_loss(H_STIFF)
    extremes = jax.jit(lambda p: hessian_extremes(loss, p, key=jax.random.key(1)))
    np.testing.assert_allclose(extremes(P0), [EIGS[0], EIGS[-1]], rtol=1e-8)  # 20 products, n = 7
