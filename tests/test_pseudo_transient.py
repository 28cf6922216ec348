"""The pseudo-transient gradient flow and its pieces, against independent references: the
Gauss-Newton matrix against its dense definition, the shifted Lanczos solve against a dense
solve, the step on quadratics (where one step of infinite `h` is Newton's minimiser and the
model's predicted decrease is exact)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stiffnode import flow
from stiffnode.stiffness.lanczos import lanczos_basis, shifted_solve

_rng = np.random.default_rng(0)
X = _rng.normal(size=(12, 3))
Y = _rng.normal(size=12)
LABELS = _rng.integers(0, 4, size=12)


def _model(p, x):
    return jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]


def _params(dtype=np.float64):
    r = np.random.default_rng(1)
    return {
        "w": r.normal(size=(3, 5)).astype(dtype),
        "b": r.normal(size=5).astype(dtype),
        "v": r.normal(size=(5, 4)).astype(dtype),
    }


@pytest.mark.x64
def test_gauss_newton_matches_dense_definition():
    """`J^T ell'' J` with `J = dz/dtheta` by `jax.jacfwd`: `(2/m) J^T J` for least squares,
    per-sample `(diag(p) - p p^T) / m` for softmax cross-entropy."""
    p = _params()
    flat, unravel = jax.flatten_util.ravel_pytree(p)

    least = flow.least_squares(lambda p, x, y: _model(p, x)[:, 0] - y)
    J = jax.jacfwd(lambda t: _model(unravel(t), X)[:, 0] - Y)(flat)
    np.testing.assert_allclose(
        flow.gauss_newton_matrix(least, p, x=X, y=Y), (2 / 12) * J.T @ J, rtol=1e-12, atol=1e-14
    )

    cls = flow.classification(lambda p, x, labels: _model(p, x))
    J = jax.jacfwd(lambda t: _model(unravel(t), X))(flat)  # (12, 4, n)
    probs = jax.nn.softmax(_model(p, X), -1)
    H = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(probs) / 12
    dense = jnp.einsum("sci,scd,sdj->ij", J, H, J)
    got = flow.gauss_newton_matrix(cls, p, x=X, labels=LABELS)
    np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-14)
    # Both are positive semi-definite, the loss is the textbook one.
    assert np.linalg.eigvalsh(got).min() > -1e-12
    ce = optax.softmax_cross_entropy_with_integer_labels(_model(p, X), LABELS).mean()
    np.testing.assert_allclose(cls(p, x=X, labels=LABELS), ce, rtol=1e-14)


@pytest.mark.x64
def test_gauss_newton_is_the_hessian_at_zero_residual():
    """Where every residual vanishes, the Hessian of `mean(r^2)` is `(2/m) J^T J`."""
    p = _params()
    y_fit = _model(p, X)[:, 0]
    least = flow.least_squares(lambda p, x, y: _model(p, x)[:, 0] - y)
    np.testing.assert_allclose(
        flow.gauss_newton_matrix(least, p, x=X, y=y_fit),
        flow.hessian(least, p, x=X, y=y_fit),
        rtol=1e-10,
        atol=1e-13,
    )


@pytest.mark.x64
def test_shifted_lanczos_solve_matches_dense_solve():
    """One Krylov space serves every shift: `(A + s I) x = b` for several `s` from one
    basis, against `numpy.linalg.solve`; a truncated basis meets CG's residual test."""
    n = 30
    q, _ = np.linalg.qr(_rng.normal(size=(n, n)))
    A = q @ np.diag(np.logspace(-3, 2, n)) @ q.T
    b = _rng.normal(size=n)
    full = lanczos_basis(lambda v: A @ v, b, shift=1e-8, rtol=1e-14, max_iters=n)
    for s in (1e-2, 1.0, 100.0):
        x = full.V.T @ shifted_solve(full, s)
        np.testing.assert_allclose(x, np.linalg.solve(A + s * np.eye(n), b), rtol=1e-7)
    part = lanczos_basis(lambda v: A @ v, b, shift=1.0, rtol=1e-3, max_iters=n)
    assert int(part.num_iters) < n
    x = part.V.T @ shifted_solve(part, 1.0)
    residual = np.linalg.norm(b - (A + np.eye(n)) @ x)
    assert residual <= 1e-3 * np.linalg.norm(b) * (1 + 1e-8)


def _quadratic(A, c):
    return lambda p: 0.5 * p @ A @ p - c @ p


@pytest.mark.x64
@pytest.mark.parametrize("kind", ["hessian", "gauss_newton"])
def test_infinite_step_is_newtons_minimiser(kind):
    """With `h` huge the step solves `C d = -g`: on a quadratic (Hessian) or a linear
    least-squares problem (Gauss-Newton) that is the exact minimiser, in one update."""
    n = 6
    M = _rng.normal(size=(10, n))
    c = _rng.normal(size=10)
    exact = np.linalg.lstsq(M, c, rcond=None)[0]
    if kind == "hessian":
        loss = _quadratic(M.T @ M, M.T @ c)
    else:
        loss = flow.least_squares(lambda p: M @ p - c)
    opt = flow.pseudo_transient(loss, initial_step=1e12, cg_rtol=1e-12)
    p = jnp.zeros(n)
    updates, state = jax.jit(opt.update)(p, opt.init(p), p)
    np.testing.assert_allclose(p + updates, exact, rtol=1e-8)
    assert int(state.flow.stats["num_accepted_steps"]) == 1


@pytest.mark.x64
def test_step_on_a_quadratic_follows_the_model():
    """On a quadratic the model is exact, `rho = 1`: every attempt is accepted and `h`
    triples (rho > 0.1: the growth rule); the step is `(I / h + A)^{-1} (-g)` and the flow time sums
    the steps taken."""
    A = np.diag([1.0, 10.0, 100.0])
    c = np.array([1.0, -2.0, 3.0])
    opt = flow.pseudo_transient(_quadratic(A, c), initial_step=0.01, cg_rtol=1e-12)
    update = jax.jit(opt.update)
    p, state = jnp.zeros(3), opt.init(jnp.zeros(3))
    h, time = 0.01, 0.0
    for _ in range(4):
        g = A @ np.asarray(p) - c
        expected = np.linalg.solve(np.eye(3) / h + A, -g)
        updates, state = update(p, state, p)
        np.testing.assert_allclose(updates, expected, rtol=1e-10)
        p = p + updates
        time += h
        h *= 3.0
        np.testing.assert_allclose(float(state.step), h, rtol=1e-10)
        np.testing.assert_allclose(float(state.flow.time), time, rtol=1e-12)
    assert int(state.flow.stats["num_rejected_steps"]) == 0
    # At a minimiser (gradient exactly zero: every number below is a binary fraction) the
    # update is zero and h is kept, no attempt refused.
    p_star = jnp.array([0.5, -0.25, 0.125])
    at_rest = flow.pseudo_transient(_quadratic(A, A @ np.asarray(p_star)), initial_step=0.01)
    before = float(state.step)
    updates, state = jax.jit(at_rest.update)(p_star, state, p_star)
    np.testing.assert_array_equal(updates, 0.0)
    assert float(state.step) == before and int(state.flow.stats["num_rejected_steps"]) == 0


@pytest.mark.x64
def test_indefinite_hessian_escapes_the_saddle():
    """`x^2 - y^2 + y^4` from beside the saddle at 0: the Hessian there is indefinite, and
    the steps (conjugate gradients kept on the positive side by the shift) decrease the
    loss every update to the minimum at `y = 1/sqrt(2)`, `L = -1/4`."""

    def loss(p):
        return p[0] ** 2 - p[1] ** 2 + p[1] ** 4

    opt = flow.pseudo_transient(loss)
    update = jax.jit(opt.update)
    p = jnp.array([0.5, 1e-3])
    state = opt.init(p)
    losses = [float(loss(p))]
    for _ in range(40):
        updates, state = update(p, state, p)
        p = p + updates
        losses.append(float(loss(p)))
    assert np.all(np.diff(losses) <= 1e-15), losses
    np.testing.assert_allclose(losses[-1], -0.25, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.asarray(p)), [0.0, 2**-0.5], atol=1e-5)


def test_float32_pytree_minibatch_and_default():
    """`gradient_flow(loss)` is the pseudo-transient flow: float32 stays float32, pytree
    parameters, the loss's keyword arguments are the batch; it fits a small least-squares
    problem (float32 to its rounding: MSE 1e-3 from 0.5 here)."""
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _params(np.float32))
    x, y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
    loss = flow.least_squares(lambda p, x, y: _model(p, x)[:, 0] - y)
    opt = flow.gradient_flow(loss)
    state = opt.init(p)
    assert isinstance(state, flow.PseudoTransientState)
    update = jax.jit(opt.update)
    start = float(loss(p, x=x, y=y))
    for _ in range(30):
        updates, state = update(p, state, p, x=x, y=y)
        p = optax.apply_updates(p, updates)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((p, state.step)))
    assert float(loss(p, x=x, y=y)) < 1e-3 * start


def test_bad_input():
    loss = flow.least_squares(lambda p: p - 1.0)
    with pytest.raises(ValueError, match="window"):
        flow.gradient_flow(loss, window=2.0)  # a window needs a solver
    with pytest.raises(ValueError, match="initial_step"):
        flow.pseudo_transient(loss, initial_step=-1.0)
    with pytest.raises(ValueError, match="needs the parameters"):
        opt = flow.pseudo_transient(loss)
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    cls = flow.classification(lambda p, x: x @ p)
    with pytest.raises(ValueError, match="'labels'"):
        cls(jnp.ones((3, 2)), x=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\(samples, classes\)"):
        flow.classification(lambda p: p, labels=jnp.zeros(3, int))(jnp.ones(3))


@pytest.mark.x64
def test_run_drives_it():
    """`flow.run` records the pseudo-time, the gradients (one per update) and products."""
    loss = flow.least_squares(lambda p: _model(p, X)[:, 0] - Y)
    r = flow.run(loss, _params(), flow.gradient_flow(loss), max_updates=5)
    h = r.history
    assert h["grad_evals"][-1] == 5
    assert np.all(np.diff(h["flow_time"]) > 0)
    assert h["num_jvp_evals"][-1] >= 5
    assert h["loss"][-1] < h["loss"][0]
