"""Batched (vmapped) stiff solves: they return at any batch size, each lane keeps its own
adaptivity and counts, and the expensive work (Jacobians, LU factorisations, Newton
retries) runs only when some lane needs it, not on every step as `lax.cond`'s select would.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stiffnode as sn
from stiffnode.solvers.batching import lazy_cond

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


class Counter:
    """Counts calls at run time (`jax.debug.callback`; under vmap, one call per lane)."""

    def __init__(self):
        self.n = 0

    def __call__(self, *args):
        self.n += 1


@pytest.mark.parametrize("per_lane", [False, True])
def test_lazy_cond_runs_the_expensive_branch_only_when_a_lane_needs_it(per_lane):
    """Batched over all lanes when any lane needs it; with `per_lane`, unbatched for just the
    lanes that need it."""
    calls = Counter()

    def expensive(x):
        jax.debug.callback(calls, x)
        return jnp.sin(x)

    @jax.jit
    @jax.vmap
    def f(pred, x):
        return lazy_cond(pred, expensive, lambda x: 2 * x, x, per_lane=per_lane)

    x = jnp.arange(5.0)
    for pred in ([0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 1, 1]):
        pred = jnp.asarray(pred, bool)
        calls.n = 0
        np.testing.assert_array_equal(f(pred, x), jnp.where(pred, jnp.sin(x), 2 * x))
        # (lax.cond under vmap would run it for all 5 lanes every time)
        assert calls.n == (int(pred.sum()) if per_lane else 5 * bool(pred.any()))


@pytest.mark.x64
def test_bdf_gradient_through_a_vector_field_closing_over_its_parameter():
    """`lambda t, y, args: -rate * y` with `rate` differentiated: BDF's `lazy_cond`
    branches close over it (before, JAX's "Linearization failed" under `jax.grad`).
    `d/dr sum(y0^2 exp(-2 r T))` in closed form."""
    y0 = jnp.asarray([0.6, 0.1])

    def loss(rate):
        sol = sn.solve(lambda t, y, args: -rate * y, y0, 0.0, 2.0, solver="bdf",
                       saveat=[2.0], rtol=1e-10, atol=1e-12)  # fmt: skip
        return jnp.sum(sol.ys**2)

    want = -2 * 2.0 * float(jnp.sum(y0**2)) * np.exp(-2 * 0.5 * 2.0)
    # rtol 1e-10: the solve's relative error ~1e-9; bound 100x that.
    np.testing.assert_allclose(jax.grad(loss)(0.5), want, rtol=1e-7)


def _counted_field(calls):
    def field(t, y, rate):
        jax.debug.callback(calls, y, rate)  # batched arguments: one call per lane
        return -rate * y + jnp.array([0.0, 1.0]) * y[0] ** 2

    return field


def test_vmapped_bdf_keeps_its_jacobian_reuse():
    """Four identical lanes: every lane needs a Jacobian, an LU or a retry at the same step,
    so each lane's evaluations are exactly the one-by-one solve's, `num_vf_evals +
    num_jac_evals` (a Jacobian by forward mode calls the field once). Had the Jacobian
    branch run on every step (a vmapped `lax.cond`), there would be one more per step."""
    calls = Counter()
    field = _counted_field(calls)

    def one(rate):
        return sn.solve(field, jnp.ones(2), 0.0, 10.0, args=rate, solver="bdf", rtol=1e-6,
                        atol=1e-9)  # fmt: skip

    alone = one(jnp.array(100.0))
    jax.block_until_ready(alone.ys)
    stats = {k: int(v) for k, v in alone.stats.items() if k != "num_steps_per_order"}
    assert calls.n == stats["num_vf_evals"] + stats["num_jac_evals"]
    assert stats["num_jac_evals"] < stats["num_steps"] / 10  # reuse is what is tested
    calls.n = 0
    batched = jax.jit(jax.vmap(one))(jnp.full(4, 100.0))
    jax.block_until_ready(batched.ys)
    assert calls.n == 4 * (stats["num_vf_evals"] + stats["num_jac_evals"])
    for key, value in stats.items():
        np.testing.assert_array_equal(batched.stats[key], value)


@pytest.mark.parametrize("solver", ["bdf", "rodas3"])
def test_vmapped_lanes_equal_the_one_by_one_solves(solver):
    """Robertson with rate constants scaled per lane: each lane takes its own steps, and its
    result and work counts are those of the same problem solved alone."""
    p = sn.problems.robertson()
    scales = 2.0 ** np.random.default_rng(0).uniform(-1, 1, size=(6, 3))

    def one(scale):
        return sn.solve(p.vector_field, jnp.asarray(p.y0), 0.0, 100.0,
                        args=jnp.asarray(p.args) * scale, solver=solver, rtol=1e-6,
                        atol=1e-10)  # fmt: skip

    batched = jax.jit(jax.vmap(one))(jnp.asarray(scales))
    single = jax.jit(one)
    steps = []
    for i, scale in enumerate(scales):
        alone = single(jnp.asarray(scale))
        np.testing.assert_allclose(batched.ys[i], alone.ys, rtol=1e-10, atol=1e-16)
        for key, value in alone.stats.items():
            np.testing.assert_array_equal(batched.stats[key][i], value, err_msg=key)
        steps.append(int(alone.stats["num_steps"]))
    assert len(set(steps)) > 1  # the lanes did differ


def test_vmapped_pollu_bdf_returns_at_batch_64():
    """jax.jit(jax.vmap(solve)) of 64 POLLU variants with BDF: from 32 members on, this
    deadlocked XLA:CPU (jaxlib 0.10.2) when BDF's conditionals were selects. Run in a child
    process under a timeout, since a deadlock cannot be interrupted in-process. POLLU's 20
    states are above the unrolled LU's size: each lane is factorised on its own
    (`lazy_cond(per_lane=True)`), and lanes equal their one-by-one solves, counts included."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        import stiffnode as sn
        p = sn.problems.pollu()
        base, y0 = jnp.asarray(p.args), jnp.asarray(p.y0)
        u = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (64, 15)))

        def one(ui):
            k = base.at[jnp.arange(15)].multiply(2.0**ui)
            sol = sn.solve(p.vector_field, y0, p.t0, p.t1, args=k, solver="bdf",
                           rtol=1e-7, atol=1e-12)
            return sol.ys[-1], sol.stats

        out, stats = jax.block_until_ready(jax.jit(jax.vmap(one))(u))
        assert out.shape == (64, 20) and bool(jnp.all(jnp.isfinite(out)))
        single = jax.jit(one)
        for i in range(3):
            alone, alone_stats = single(u[i])
            np.testing.assert_allclose(out[i], alone, rtol=1e-10, atol=1e-18)
            for key, value in alone_stats.items():
                np.testing.assert_array_equal(stats[key][i], value, err_msg=key)
        print("ok")
        """
    )
    # Compilation takes ~10 s here; a hang never finishes.
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_solve_ensemble_over_devices_equals_member_by_member():
    """Members split over the two CPU devices of the test session (conftest), in chunks, with
    a batched y0 and batched args: each member equals its own solve (results and counts), the
    padding (5 members over 2 devices in chunks of 2) is dropped."""
    assert len(jax.devices()) == 2
    y0s = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, size=(5, 2)))
    rates = jnp.asarray([1.0, 30.0, 100.0, 5.0, 300.0])

    def field(t, y, rate):
        return -rate * y + jnp.array([0.0, 1.0]) * y[0] ** 2

    kwargs = dict(solver="bdf", rtol=1e-8, atol=1e-10)
    sol = sn.solve_ensemble(field, y0s, 0.0, 1.0, args=rates, chunk_size=2, **kwargs)
    assert sol.ys.shape == (5, 1, 2)
    for i in range(5):
        alone = sn.solve(field, y0s[i], 0.0, 1.0, args=rates[i], **kwargs)
        # Vectorised and scalar code round differently: agreement to round-off, i.e. far
        # below the tolerances (1e-8 of atol for the components that decayed below it).
        np.testing.assert_allclose(sol.ys[i], alone.ys, rtol=1e-10, atol=1e-18)
        for key, value in alone.stats.items():
            np.testing.assert_array_equal(sol.stats[key][i], value, err_msg=key)
    # Shared y0, batched args only; one device, the default chunk (one member after another
    # on CPU: each member's own, unbatched solve).
    shared = sn.solve_ensemble(field, y0s[0], 0.0, 1.0, args=rates, batch_y0=False,
                               devices=jax.devices()[:1], **kwargs)  # fmt: skip
    for i in range(5):
        alone = sn.solve(field, y0s[0], 0.0, 1.0, args=rates[i], **kwargs)
        np.testing.assert_allclose(shared.ys[i], alone.ys, rtol=1e-10, atol=1e-18)
        for key, value in alone.stats.items():
            np.testing.assert_array_equal(shared.stats[key][i], value, err_msg=key)


def test_solve_ensemble_errors():
    def field(t, y, rate):
        return -rate * y

    with pytest.raises(ValueError, match="same leading"):
        sn.solve_ensemble(field, jnp.ones((3, 2)), 0.0, 1.0, args=jnp.ones(4))
    with pytest.raises(ValueError, match="no members"):
        sn.solve_ensemble(field, jnp.ones((0, 2)), 0.0, 1.0, args=1.0, batch_args=False)
    with pytest.raises(ValueError, match="needs a batch"):
        sn.solve_ensemble(field, jnp.ones(2), 0.0, 1.0, args=1.0, batch_y0=False,
                          batch_args=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="1 of 3 members failed, the first is member 2"):
        sn.solve_ensemble(lambda t, y, r: r * y**2, jnp.ones((3, 1)), 0.0, 1.0,
                          args=jnp.array([0.1, 0.5, 2.0]), solver="bdf")  # fmt: skip
