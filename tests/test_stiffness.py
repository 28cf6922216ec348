"""Stiffness proxies against independent values: numpy/scipy eigenvalues and SVDs, closed
forms, known spectra, finite differences."""

import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import stiffnode as sn  # noqa: E402
from helpers import central_difference  # noqa: E402
from stiffnode import stiffness as st  # noqa: E402

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def _with_spectrum(eigs, n, seed=0):
    """A real nonnormal n x n matrix with the given eigenvalues (conjugate pairs as 2x2)."""
    rng = np.random.default_rng(seed)
    blocks, i = [], 0
    eigs = list(eigs)
    while i < len(eigs):
        lam = eigs[i]
        if np.iscomplex(lam):
            a, b = lam.real, lam.imag
            blocks.append(np.array([[a, -b], [b, a]]))
            i += 2  # skip the conjugate
        else:
            blocks.append(np.array([[float(np.real(lam))]]))
            i += 1
    D = np.zeros((n, n))
    k = 0
    for blk in blocks:
        m = blk.shape[0]
        D[k : k + m, k : k + m] = blk
        k += m
    assert k == n
    V = rng.normal(size=(n, n)) + 3 * np.eye(n)
    return V @ D @ np.linalg.inv(V)


@pytest.fixture(scope="module")
def resnet():
    return sn.ResNet(3, 2, 6, 5, key=jax.random.key(1), T=1.0, dtype=jnp.float64)


# ------------------------------------------------------------------- Jacobians


def test_layer_jacobians_match_autodiff(resnet):
    x = jnp.array([0.3, -0.7, 1.1])
    J = st.layer_jacobians(resnet, x)
    assert J.shape == (resnet.depth, resnet.width, resnet.width)
    hs = resnet.hidden_states(x)
    for n in range(resnet.depth):
        W, b = resnet.weights[n], resnet.biases[n]
        field = lambda t, h, args, W=W, b=b: jnp.tanh(W @ h + b)  # noqa: E731
        ref = st.vector_field_jacobian(field, 0.0, hs[n])
        np.testing.assert_allclose(J[n], ref, rtol=1e-12, atol=1e-14)
        v = jnp.arange(1.0, resnet.width + 1)
        np.testing.assert_allclose(st.vector_field_jvp(field, 0.0, hs[n])(v), ref @ v, rtol=1e-12)
    batch = jax.vmap(st.layer_jacobians, in_axes=(None, 0))(resnet, jnp.stack([x, -x]))
    assert batch.shape == (2, resnet.depth, resnet.width, resnet.width)


def test_layer_matvec_and_structured_frobenius(resnet):
    xs = jax.random.normal(jax.random.key(3), (4, 3))
    J = jax.vmap(st.layer_jacobians, in_axes=(None, 0))(resnet, xs)
    s = jax.vmap(st.layer_slopes, in_axes=(None, 0))(resnet, xs)
    np.testing.assert_allclose(1 - np.tanh(0.0) ** 2, 1.0)
    v = jax.random.normal(jax.random.key(4), (4, resnet.depth, 3, resnet.width))
    ref = np.einsum("bnij,bnkj->bnki", J, v)
    np.testing.assert_allclose(st.layer_matvec(s, resnet.weights, v), ref, rtol=1e-12)
    np.testing.assert_allclose(
        st.layer_frobenius(s, resnet.weights),
        np.linalg.norm(np.asarray(J), axis=(-2, -1)),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="do not match"):
        st.layer_matvec(s, resnet.weights, v[..., :3])


def test_layer_jacobians_bad_input(resnet):
    with pytest.raises(ValueError, match="one sample of shape"):
        st.layer_jacobians(resnet, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="ResNet"):
        st.layer_jacobians(object(), jnp.ones(3))


# --------------------------------------------------------------------- proxies


def test_seed_example_ratio_100():
    A = jnp.diag(jnp.array([-1.0, -100.0]))
    assert float(st.stiffness_ratio(A)) == pytest.approx(100.0, rel=1e-12)
    assert float(st.modulus_ratio(A)) == pytest.approx(100.0, rel=1e-12)
    assert float(st.singular_ratio(A)) == pytest.approx(100.0, rel=1e-12)
    assert float(st.spectral_radius_gelfand(A)) == pytest.approx(100.0, rel=1e-12)
    assert float(st.spectral_radius_power(A, iters=3)) == pytest.approx(100.0, rel=1e-12)


def test_eigen_ratios_against_numpy():
    J = np.random.default_rng(0).normal(size=(20, 7, 7))
    lam = np.linalg.eigvals(J)
    re, mod = np.abs(lam.real), np.abs(lam)
    np.testing.assert_allclose(st.stiffness_ratio(J), re.max(-1) / re.min(-1), rtol=1e-8)
    np.testing.assert_allclose(st.modulus_ratio(J), mod.max(-1) / mod.min(-1), rtol=1e-8)
    # Stable matrices: the classical Re(lambda_1) / Re(lambda_n).
    stable = np.stack([_with_spectrum([-1, -5, -30 + 4j, -30 - 4j, -200], 5, s) for s in range(3)])
    np.testing.assert_allclose(st.stiffness_ratio(stable), 200.0, rtol=1e-8)
    np.testing.assert_allclose(st.modulus_ratio(stable), 200.0, rtol=1e-8)


def test_eigen_ratios_degenerate_cases():
    assert np.isinf(st.modulus_ratio(jnp.diag(jnp.array([0.0, -2.0]))))  # zero eigenvalue
    rotation = jnp.array([[0.0, -1.0], [1.0, 0.0]])  # purely imaginary pair
    assert np.isnan(st.stiffness_ratio(rotation))  # all real parts zero
    assert np.isinf(st.stiffness_ratio(jnp.diag(jnp.array([0.0, -2.0]))))
    # Signs of the real parts are ignored: a growing mode counts like a decaying one.
    assert float(st.stiffness_ratio(jnp.diag(jnp.array([3.0, -0.5])))) == pytest.approx(6.0)
    assert np.isinf(st.singular_ratio(jnp.array([[1.0, 1.0], [1.0, 1.0]])))


def test_singular_ratio_and_frobenius_against_numpy():
    J = np.random.default_rng(1).normal(size=(3, 4, 6, 6))
    s = np.linalg.svd(J, compute_uv=False)
    np.testing.assert_allclose(st.singular_ratio(J), s[..., 0] / s[..., -1], rtol=1e-10)
    np.testing.assert_allclose(st.frobenius(J), np.linalg.norm(J, axis=(-2, -1)), rtol=1e-12)


@pytest.mark.parametrize(
    "eigs, rho",
    [
        ([3.0, -2.0, 1.0, 0.5, 0.1, -0.3], 3.0),  # one dominant real eigenvalue
        ([2 + 2j, 2 - 2j, 1.0, -0.5, 0.2, 0.1], np.sqrt(8.0)),  # dominant complex pair
        ([3.0, -3.0, 1.0, 0.5, -0.4, 0.2], 3.0),  # a +- pair of equal modulus
        ([-4.0, 1 + 1j, 1 - 1j, 0.5, 0.3, 0.0], 4.0),  # singular, dominant negative
    ],
)
def test_spectral_radius_known_spectra(eigs, rho):
    J = _with_spectrum(eigs, 6)
    np.testing.assert_allclose(np.max(np.abs(np.linalg.eigvals(J))), rho, rtol=1e-10)
    np.testing.assert_allclose(st.spectral_radius_gelfand(J), rho, rtol=2e-3)
    np.testing.assert_allclose(st.spectral_radius_gelfand(J, squarings=16), rho, rtol=1e-5)
    np.testing.assert_allclose(st.spectral_radius_power(J, iters=200), rho, rtol=1e-8)
    # Amortised: one iteration per call, vectors carried over, converges to the same.
    s, W = jnp.ones(6), jnp.asarray(J)

    @jax.jit
    def iterate(Q):
        step = lambda i, carry: st.amortised_spectral_radius(s, W, carry[1])  # noqa: E731
        return jax.lax.fori_loop(0, 200, step, (jnp.zeros(()), Q))[0]

    np.testing.assert_allclose(iterate(st.start_vectors(6, jnp.float64)), rho, rtol=1e-8)


def test_gelfand_on_random_matrices_against_numpy():
    """rho <= ||J^k||_F^(1/k) <= rho (sqrt(n) cond(V))^(1/k) for J = V diag(lambda) V^-1."""
    n, k = 12, 2**10
    J = np.random.default_rng(2).normal(size=(50, n, n)) / np.sqrt(n)
    lam, V = np.linalg.eig(J)
    rho = np.max(np.abs(lam), -1)
    upper = rho * (np.sqrt(n) * np.linalg.cond(V)) ** (1 / k)
    est = np.asarray(st.spectral_radius_gelfand(J, squarings=10))
    assert np.all(est >= rho * (1 - 1e-9))
    assert np.all(est <= upper * (1 + 1e-9))
    assert np.median(np.abs(est / rho - 1)) < 5e-3


def test_gelfand_zero_and_nilpotent_are_finite():
    assert float(st.spectral_radius_gelfand(jnp.zeros((3, 3)))) < 1e-100
    nilpotent = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    assert float(st.spectral_radius_gelfand(nilpotent)) < 1e-100
    assert np.isfinite(jax.grad(lambda J: st.spectral_radius_gelfand(J))(nilpotent)).all()


def test_amortised_tracks_gelfand_on_resnet_jacobians():
    """Vectors kept across slowly drifting Jacobians track the dense Gelfand value."""
    resnet = sn.ResNet(2, 1, 8, 4, key=jax.random.key(5), dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(6), (5, 2))
    Q = st.amortised_power_init(5, 4, 8, key=jax.random.key(7), dtype=jnp.float64).vectors

    def model_at(step):
        W = resnet.weights * (1 + 1e-3 * jnp.sin(step / 10))  # slow drift, like training
        return sn.ResNet.from_layers(resnet.input, W, resnet.biases, resnet.output)

    @jax.jit
    def track(Q):
        def step(i, carry):
            model = model_at(i)
            s = jax.vmap(st.layer_slopes, in_axes=(None, 0))(model, xs)
            return st.amortised_spectral_radius(s, model.weights, carry[1])

        return jax.lax.fori_loop(0, 300, step, (jnp.zeros((5, 4)), Q))[0]

    est = np.asarray(track(Q))
    J = jax.vmap(st.layer_jacobians, in_axes=(None, 0))(model_at(299), xs)
    exact = np.max(np.abs(np.linalg.eigvals(np.asarray(J))), -1)
    gelfand = np.asarray(st.spectral_radius_gelfand(J))
    np.testing.assert_allclose(gelfand, exact, rtol=5e-3)
    # Gelfand's k = 1024 overestimates by up to n^(1/2k) ~ 1e-3; the amortised estimate,
    # where the dominant eigenvalues stand apart (most samples and layers), is closer.
    rel = np.abs(est / exact - 1)
    assert np.median(rel) < 1e-4 and np.mean(rel < 1e-2) > 0.8


def test_aggregate():
    v = jnp.arange(6.0).reshape(2, 3)
    assert float(st.aggregate(v)) == 15.0
    np.testing.assert_allclose(st.aggregate(v, "mean", axis=-1), [1.0, 4.0])
    np.testing.assert_allclose(st.aggregate(v, "max", axis=0), [3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="unknown aggregation"):
        st.aggregate(v, "median")


def test_proxy_errors():
    with pytest.raises(ValueError, match="square"):
        st.frobenius(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        st.spectral_radius_gelfand(jnp.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        st.stiffness_ratio(jnp.array([[1.0, jnp.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="unknown stiffness proxy 'gelfond'"):
        st.get_proxy("gelfond")
    with pytest.raises(ValueError, match="iters must be a positive int"):
        st.spectral_radius_power(jnp.eye(2), iters=0)
    with pytest.raises(ValueError, match="squarings"):
        st.spectral_radius_gelfand(jnp.eye(2), squarings=-1)
    with pytest.raises(ValueError, match="positive int"):
        st.amortised_power_init(0, 2, 2, key=jax.random.key(0))
    assert st.get_proxy("frobenius") is st.frobenius


# ------------------------------------------------------------------- gradients


def _check_grad(f, J, eps=1e-6, rtol=1e-5):
    J = jnp.asarray(J)
    direction = jnp.asarray(np.random.default_rng(1).normal(size=J.shape))
    f = jax.jit(f)
    g = jax.jit(jax.grad(lambda J: jnp.sum(f(J))))(J)
    analytic = float(jnp.sum(g * direction))
    fd = float(central_difference(lambda J: jnp.sum(f(J)), J, eps, direction))
    assert analytic == pytest.approx(fd, rel=rtol, abs=1e-9)


@pytest.mark.parametrize(
    "name, f",
    [
        ("frobenius", st.frobenius),
        ("gelfand", st.spectral_radius_gelfand),
        ("power", lambda J: st.spectral_radius_power(J, iters=60)),
        ("singular_ratio", st.singular_ratio),
        ("stiffness_ratio", st.stiffness_ratio),
        ("modulus_ratio", st.modulus_ratio),
    ],
)
def test_proxy_gradients_match_finite_differences(name, f):
    J = np.stack([_with_spectrum([-3.0, 1 + 1j, 1 - 1j, 0.5, -0.2], 5, s) for s in range(2)])
    _check_grad(f, J, rtol=1e-4 if name == "gelfand" else 1e-5)


def test_amortised_gradient_matches_finite_differences(resnet):
    """The gradient of the Ritz estimate at fixed vectors, through slopes and weights."""
    xs = jax.random.normal(jax.random.key(8), (3, 3))
    Q = st.amortised_power_init(
        3, resnet.depth, resnet.width, key=jax.random.key(9), dtype=jnp.float64
    ).vectors

    def f(W):
        model = sn.ResNet.from_layers(resnet.input, W, resnet.biases, resnet.output)
        s = jax.vmap(st.layer_slopes, in_axes=(None, 0))(model, xs)
        return st.amortised_spectral_radius(s, W, Q)[0]

    _check_grad(f, resnet.weights)
