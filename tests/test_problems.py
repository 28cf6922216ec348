"""stiffnode.problems: numpy rhs/Jacobians against jax, invariants, and the stored Radau/CVODE
references (tests/data/make_stiff_references.py) against the published IVPtestset values."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from stiffnode import problems as P

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


REFERENCES = json.loads(
    (pathlib.Path(__file__).parent / "data" / "stiff_references.json").read_text()
)


def make(name):
    return P.brusselator_2d(8) if name == "brusselator_2d" else P.PROBLEMS[name]()


def random_states(problem, rng, count=3):
    """States near the problem's scale: `y0` plus positive noise of its size."""
    scale = np.maximum(np.abs(problem.y0), 1e-2 * max(np.max(np.abs(problem.y0)), 1.0))
    return [problem.y0 + scale * rng.uniform(0.1, 1.0, problem.n) for _ in range(count)]


def dense(jac):
    return jac.toarray() if hasattr(jac, "toarray") else np.asarray(jac)


@pytest.mark.parametrize("name", list(P.PROBLEMS))
def test_shapes_dtypes_and_settings(name):
    problem = make(name)
    assert problem.name == name
    assert problem.y0.dtype == np.float64 and problem.y0.ndim == 1
    assert problem.t1 > problem.t0 and problem.rtol > 0 and problem.atol > 0
    out = problem.vector_field(problem.t0, jnp.asarray(problem.y0), problem.args)
    assert out.shape == problem.y0.shape and out.dtype == jnp.float64
    if problem.reference is not None:
        assert problem.reference.shape == problem.y0.shape
    # A StiffProblem goes through eqx.filter_jit whole.
    at_y0 = eqx.filter_jit(lambda p: p.vector_field(p.t0, jnp.asarray(p.y0), p.args))(problem)
    np.testing.assert_allclose(at_y0, out, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(P.PROBLEMS))
def test_numpy_rhs_and_jac_equal_jax(name):
    problem = make(name)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    f_np, jac_np = P.rhs_numpy(problem), P.jac_numpy(problem)
    f_jax = jax.jit(problem.vector_field)
    jac_jax = jax.jit(jax.jacfwd(problem.vector_field, argnums=1))
    for t in (problem.t0, 0.5 * (problem.t0 + problem.t1)):  # brusselator: before/after forcing
        for y in random_states(problem, rng, 2):
            want = np.asarray(f_jax(t, jnp.asarray(y), problem.args))
            got = f_np(t, y)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.max(np.abs(want)))
            want_j = np.asarray(jac_jax(t, jnp.asarray(y), problem.args))
            got_j = dense(jac_np(t, y))
            np.testing.assert_allclose(
                got_j, want_j, rtol=1e-12, atol=1e-12 * np.max(np.abs(want_j))
            )
    y = random_states(problem, rng, 1)[0]
    np.testing.assert_allclose(P.rhs_numpy(problem, via_jax=True)(1.0, y), f_np(1.0, y), rtol=1e-12)
    np.testing.assert_allclose(
        P.jac_numpy(problem, via_jax=True)(1.0, y), dense(jac_np(1.0, y)), rtol=1e-12, atol=1e-300
    )


# Linear invariants w . y: w . f(t, y) = 0 for every y.
INVARIANTS = {
    "robertson": [np.ones(3)],
    "hires": [np.eye(8)[6] + np.eye(8)[7]],
    "e5": [np.array([0.0, 1.0, -1.0, -1.0])],
    "pollu": [
        # nitrogen: NO2 + NO + PAN + HNO3 + NO3 + 2 N2O5; sulfur: SO2 + SO4
        sum(w * np.eye(20)[P.POLLU_SPECIES.index(s)] for s, w in
            (("NO2", 1), ("NO", 1), ("PAN", 1), ("HNO3", 1), ("NO3", 1), ("N2O5", 2))),
        np.eye(20)[P.POLLU_SPECIES.index("SO2")] + np.eye(20)[P.POLLU_SPECIES.index("SO4")],
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", list(INVARIANTS))
def test_mass_conservation(name):
    problem = make(name)
    rng = np.random.default_rng(1)
    for y in random_states(problem, rng):
        f = np.asarray(problem.vector_field(0.0, jnp.asarray(y), problem.args))
        for w in INVARIANTS[name]:
            assert abs(w @ f) <= 1e-13 * np.sum(np.abs(w * f))
            assert abs(w @ P.rhs_numpy(problem)(0.0, y)) <= 1e-13 * np.sum(np.abs(w * f))


def test_robertson_sum_stays_one_along_the_reference():
    for key in ("robertson", "robertson_1e11"):
        assert abs(sum(REFERENCES[key]["y"]) - 1.0) < 1e-13


# Agreement of the stored independent solutions with the published values, in
# max_i |y_i - p_i| / (|p_i| + atol) (atol: the problem's standard one).
PUBLISHED_TOL = {
    "hires": 1e-9,
    "orego": 1e-9,
    "pollu": 1e-9,
    "robertson_1e11": 1e-8,
    "van_der_pol_t2000": 1e-7,
    "e5": 1e-5,  # on (y1, (y2 + y3) / 2, y4), see e5_view
}


def e5_view(y):
    """E5's published `y2`, `y3` carry a 1.28e-25 drift of the invariant `y2 - y3 - y4 = 0`
    (see `stiffnode.problems.e5`), Radau 7e-26, CVODE 6e-25: compare their mean."""
    y = np.asarray(y)
    return np.array([y[0], 0.5 * (y[1] + y[2]), y[3]])

PROBLEM_OF = {
    "robertson": P.robertson(),
    "robertson_1e11": P.robertson(t1=1e11),
    "van_der_pol": P.van_der_pol(),
    "van_der_pol_t2000": P.van_der_pol(t1=2000.0),
    "hires": P.hires(),
    "orego": P.orego(),
    "e5": P.e5(),
    "pollu": P.pollu(),
    "brusselator_2d_n8": P.brusselator_2d(8),
}


def diff(y, p, atol):
    return np.max(np.abs(np.asarray(y) - p) / (np.abs(p) + atol))


def test_references_cover_every_problem():
    assert set(REFERENCES) == set(PROBLEM_OF)
    for key, problem in PROBLEM_OF.items():
        entry = REFERENCES[key]
        assert entry["t1"] == problem.t1 and len(entry["y"]) == problem.n
        if problem.reference is None:
            assert entry["published"] is None
        else:
            np.testing.assert_array_equal(entry["published"], problem.reference)


@pytest.mark.parametrize("key", list(PUBLISHED_TOL))
def test_references_agree_with_published(key):
    problem, entry = PROBLEM_OF[key], REFERENCES[key]
    assert problem.reference is not None
    published = problem.reference
    for y in (entry["y"], entry["y_cvode"]):
        if y is None:  # CVODE was not available to the generator
            continue
        if key == "e5":
            assert abs(y[1] - y[2]) < 1e-24  # the drift of y2 - y3 - y4 = 0 (y4 ~ 0)
            y, published = e5_view(y), e5_view(problem.reference)
        assert diff(y, published, problem.atol) < PUBLISHED_TOL[key]


@pytest.mark.parametrize("key", list(PROBLEM_OF))
def test_radau_and_cvode_references_agree(key):
    entry = REFERENCES[key]
    if entry["y_cvode"] is None:
        pytest.skip("no CVODE reference stored")
    tol = 5e-3 if key == "e5" else 1e-7
    assert diff(entry["y"], np.asarray(entry["y_cvode"]), PROBLEM_OF[key].atol) < tol


def test_e5_reference_is_zero_where_published_is_zero():
    y = np.asarray(REFERENCES["e5"]["y"])
    assert abs(y[0]) < 1e-40 and abs(y[3]) < 1e-40


@pytest.mark.parametrize("name", ["hires", "pollu", "orego"])
def test_scipy_radau_at_standard_tolerances_reaches_the_reference(name):
    problem = make(name)
    sol = scipy.integrate.solve_ivp(
        P.rhs_numpy(problem),
        (problem.t0, problem.t1),
        problem.y0,
        method="Radau",
        rtol=problem.rtol,
        atol=problem.atol,
        jac=P.jac_numpy(problem),
    )
    assert sol.success
    scale = np.abs(problem.reference) + np.max(np.abs(problem.reference))
    assert np.max(np.abs(sol.y[:, -1] - problem.reference) / scale) < 1e-3


def test_reference_only_for_the_published_setting():
    assert P.robertson().reference is None
    assert P.robertson(t1=1e11).reference is not None
    assert P.robertson(t1=1e11, k1=0.05).reference is None
    assert P.van_der_pol().reference is None
    assert P.van_der_pol(t1=2000.0).reference is not None
    assert P.pollu(P.POLLU_RATES * 1.01).reference is None
    assert P.brusselator_2d(8).reference is None


@pytest.mark.parametrize("n", [8, 32, 64])
def test_brusselator_state_count_and_evaluation(n):
    problem = P.brusselator_2d(n)
    assert problem.n == 2 * n * n
    f = jax.jit(problem.vector_field)
    for t in (0.0, 2.0):
        out = np.asarray(f(t, jnp.asarray(problem.y0), problem.args))
        assert out.shape == (2 * n * n,) and np.all(np.isfinite(out))
        np.testing.assert_allclose(P.rhs_numpy(problem)(t, problem.y0), out, rtol=1e-12, atol=1e-9)
    jac = P.jac_numpy(problem)(0.0, problem.y0)
    assert jac.shape == (2 * n * n, 2 * n * n) and jac.nnz == 12 * n * n


def test_brusselator_forcing_switches_on_at_1_1():
    on, off = P.brusselator_2d(8), P.brusselator_2d(8, forcing=False)
    y = jnp.asarray(on.y0)
    before = on.vector_field(1.0, y, on.args) - off.vector_field(1.0, y, on.args)
    assert np.all(np.asarray(before) == 0)
    jump = np.asarray(on.vector_field(1.2, y, on.args) - off.vector_field(1.2, y, on.args))
    assert set(np.unique(jump)) == {0.0, 5.0} and np.all(jump[64:] == 0)


def test_pollu_rates_vmap_as_an_ensemble():
    problem = P.pollu()
    rates = P.POLLU_RATES * np.exp(0.1 * np.random.default_rng(2).standard_normal((4, 25)))
    y = jnp.asarray(problem.y0 + 0.01)
    batched = jax.vmap(problem.vector_field, in_axes=(None, None, 0))(0.0, y, jnp.asarray(rates))
    for k, out in zip(rates, batched, strict=True):
        np.testing.assert_allclose(out, P.pollu(k).numpy_rhs(0.0, np.asarray(y), k), rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        P.pollu(np.ones(24))
