"""ResNet == explicit Euler on its neural ODE; parameterisations; conversions; augmented ODE."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stiffnode as sn
from stiffnode.models import PiecewiseLinearWeights, PolynomialWeights, layer_times

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


@pytest.fixture
def resnet():
    return sn.ResNet(3, 2, 6, 7, key=jax.random.key(1), T=1.5, dtype=jnp.float64)


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)


def _reference_resnet(resnet, x):
    """The ResNet recursion written out in numpy, independent of the module's scan."""
    W_in, b_in = np.asarray(resnet.input.weight), np.asarray(resnet.input.bias)
    h = W_in @ np.asarray(x) + b_in
    dt = resnet.T / resnet.depth
    for W, b in zip(np.asarray(resnet.weights), np.asarray(resnet.biases), strict=True):
        h = h + dt * np.tanh(W @ h + b)
    return np.asarray(resnet.output.weight) @ h + np.asarray(resnet.output.bias)


def test_resnet_matches_written_out_recursion(resnet, xs):
    for x in xs:
        np.testing.assert_allclose(resnet(x), _reference_resnet(resnet, x), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(
    "parameterization, options",
    [("constant", {}), ("linear", {}), ("polynomial", {"degree": 6})],
)
def test_euler_on_the_ode_is_the_resnet(resnet, xs, parameterization, options):
    node = sn.NeuralODE.from_resnet(resnet, parameterization, **options)
    dt = resnet.T / resnet.depth
    euler = jax.vmap(lambda x: node(x, solver="euler", dt0=dt, max_steps=resnet.depth))(xs)
    np.testing.assert_allclose(euler, jax.vmap(resnet)(xs), rtol=0, atol=1e-12)


def test_hidden_states_are_euler_states(resnet, xs):
    node = sn.NeuralODE.from_resnet(resnet, "constant")
    ts = layer_times(resnet.depth, resnet.T)
    ts = np.append(ts, resnet.T)
    sol = node.solve(xs[0], solver="euler", dt0=resnet.T / resnet.depth, saveat=ts,
                     max_steps=resnet.depth)
    np.testing.assert_allclose(sol.ys, resnet.hidden_states(xs[0]), atol=1e-12)


@pytest.mark.parametrize("parameterization", ["constant", "linear"])
def test_round_trip_resnet_ode_resnet_is_lossless(resnet, xs, parameterization):
    back = sn.NeuralODE.from_resnet(resnet, parameterization).to_resnet()
    assert eqx.tree_equal(
        eqx.filter(back, eqx.is_array), eqx.filter(resnet, eqx.is_array)
    )
    np.testing.assert_array_equal(jax.vmap(back)(xs), jax.vmap(resnet)(xs))


def test_polynomial_round_trips(resnet):
    # degree >= N - 1: interpolation, the layers come back exactly (to round-off).
    full = sn.NeuralODE.from_resnet(resnet, "polynomial", degree=resnet.depth - 1)
    np.testing.assert_allclose(full.to_resnet().weights, resnet.weights, atol=1e-12)
    # low degree: ODE -> ResNet -> ODE recovers the same polynomial.
    low = sn.NeuralODE.from_resnet(resnet, "polynomial", degree=2)
    again = sn.NeuralODE.from_resnet(low.to_resnet(), "polynomial", degree=2)
    np.testing.assert_allclose(
        again.vector_field.layer_weights.weight_coeffs,
        low.vector_field.layer_weights.weight_coeffs,
        atol=1e-12,
    )


def test_polynomial_is_a_polynomial_in_t():
    # W(t) = t^2 entrywise, sampled at the layer times, is reproduced between them.
    depth, T = 6, 2.0
    ts = layer_times(depth, T)
    weights = jnp.asarray(ts**2)[:, None, None] * jnp.ones((depth, 2, 2))
    biases = jnp.asarray(ts**2)[:, None] * jnp.ones((depth, 2))
    poly = PolynomialWeights.from_layers(weights, biases, T, degree=2)
    for t in [0.1, 0.77, 1.9]:
        W, b = poly(t)
        np.testing.assert_allclose(W, t**2 * np.ones((2, 2)), atol=1e-12)
        np.testing.assert_allclose(b, t**2 * np.ones(2), atol=1e-12)


def test_linear_interpolates_between_layers():
    weights = jnp.arange(4.0)[:, None, None] * jnp.ones((4, 1, 1))
    lin = PiecewiseLinearWeights(weights, jnp.zeros((4, 1)), 4.0)  # nodes at t = 0, 1, 2, 3
    for t, want in [(0.0, 0.0), (0.5, 0.5), (2.25, 2.25), (3.0, 3.0), (3.7, 3.0)]:
        np.testing.assert_allclose(lin(t)[0][0, 0], want, atol=1e-14)


def test_constant_weights_switch_exactly_at_the_layer_times():
    depth, T = 10, 0.3  # 0.3 / 10 * n is inexact in binary
    weights = jnp.arange(depth, dtype=jnp.float64)[:, None, None]
    const = sn.models.PiecewiseConstantWeights(weights, jnp.zeros((depth, 1)), T)
    for n, t in enumerate(layer_times(depth, T)):
        assert const(t)[0][0, 0] == n  # a step starting at t_n uses layer n + 1
        assert const(np.nextafter(t, 1.0))[0][0, 0] == n
        if n:  # an adaptive step clipped to just before a jump still uses the previous layer
            assert const(np.nextafter(t, -1.0))[0][0, 0] == n - 1


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5"])
def test_adaptive_solve_of_constant_weights_against_scipy(resnet, xs, solver):
    """Stepping onto the layer times vs scipy's DOP853 solving each layer's interval.

    Kvaerno5 has a stage at t0 + 1.23 h: without `JumpAwareSolver` it would look across each
    layer boundary and creep towards it in hundreds of shrinking steps.
    """
    from scipy.integrate import solve_ivp

    node = sn.NeuralODE.from_resnet(resnet, "constant")
    sol = node.solve(xs[0], solver=solver, rtol=1e-10, atol=1e-12)
    h = np.asarray(node.initial_state(xs[0]))
    ts = np.append(layer_times(resnet.depth, resnet.T), resnet.T)
    for n, (W, b) in enumerate(zip(np.asarray(resnet.weights), np.asarray(resnet.biases),
                                   strict=True)):
        piece = solve_ivp(lambda t, y, W=W, b=b: np.tanh(W @ y + b), (ts[n], ts[n + 1]), h,
                          method="DOP853", rtol=1e-13, atol=1e-14)
        h = piece.y[:, -1]
    np.testing.assert_allclose(sol.ys[-1], h, atol=1e-9)
    # Smooth within each layer: a few steps per layer, not hundreds.
    assert int(sol.stats["num_steps"]) <= 8 * resnet.depth, sol.stats
    # The same solve under jit (times are traced there) steps the same way.
    steps = jax.jit(lambda x: node.solve(x, solver=solver, rtol=1e-10, atol=1e-12)
                    .stats["num_steps"])(xs[0])
    assert int(steps) == int(sol.stats["num_steps"])


def test_adaptive_solves_converge_to_each_other(resnet, xs):
    # The linear-interpolation ODE is Lipschitz in t: Tsit5 and Kvaerno5 at tight tolerance agree.
    node = sn.NeuralODE.from_resnet(resnet, "linear")
    a = node(xs[0], solver="tsit5", rtol=1e-10, atol=1e-12)
    b = node(xs[0], solver="kvaerno5", rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_to_resnet_needs_a_residual_field():
    field = sn.MLPVectorField(2, 4, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="residual vector field"):
        sn.NeuralODE(field).to_resnet()


def test_unknown_parameterization(resnet):
    with pytest.raises(ValueError, match="unknown parameterization 'cubic'"):
        sn.NeuralODE.from_resnet(resnet, "cubic")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"depth": 0}, "depth"), ({"width": 2.5}, "width"), ({"T": -1.0}, "horizon")],
)
def test_resnet_bad_sizes(kwargs, match):
    args = dict(in_size=2, out_size=1, width=3, depth=2, T=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        sn.ResNet(**args, key=jax.random.key(0))


def test_input_of_the_wrong_width_names_the_sizes():
    resnet = sn.ResNet(2, 1, 3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"ResNet takes one sample of shape \(2,\)"):
        resnet(jnp.ones(3))
    node = sn.NeuralODE.from_resnet(resnet)
    with pytest.raises(ValueError, match=r"NeuralODE takes .* got shape \(4, 2\)"):
        node(jnp.ones((4, 2)))


def test_any_equinox_module_is_a_vector_field():
    class Rotation(eqx.Module):
        omega: jax.Array

        def __call__(self, t, y, args):
            return self.omega * jnp.array([-y[1], y[0]])

    node = sn.NeuralODE(Rotation(jnp.array(2.0)), T=jnp.pi / 4)
    out = node(jnp.array([1.0, 0.0]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-8)  # rotated by 2 * pi/4


def test_augmented_ode_pads_with_zeros():
    field = sn.MLPVectorField(3, 8, 2, key=jax.random.key(0), dtype=jnp.float64)
    node = sn.AugmentedNeuralODE(field, augment_size=2)
    y0 = node.initial_state(jnp.array([0.5]))
    np.testing.assert_array_equal(y0, [0.5, 0.0, 0.0])
    assert node(jnp.array([0.5])).shape == (3,)
    with pytest.raises(ValueError, match="augment_size"):
        sn.AugmentedNeuralODE(field, augment_size=-1)


def test_float32_model_solves_in_float32():
    resnet = sn.ResNet(2, 1, 4, 3, key=jax.random.key(0), dtype=jnp.float32)
    node = sn.NeuralODE.from_resnet(resnet, "linear")
    out = node(jnp.ones(2, jnp.float32), rtol=1e-5, atol=1e-6)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        node(jnp.ones(2, jnp.float32), solver="euler", dt0=1 / 3, max_steps=3),
        resnet(jnp.ones(2, jnp.float32)),
        rtol=1e-6,
    )
