"""Discretize-then-optimize (recursive) vs optimize-then-discretize (backsolve) gradients."""

import equinox as eqx  # noqa: E402
import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import Array, Float  # noqa: E402

from stiffnode import NeuralODE, ResNet  # noqa: E402
from stiffnode.node.gradients import (  # noqa: E402
    gradient_gap,
    linear_scalar_gradients,
    node_gradient,
    relative_difference,
    resnet_gradient,
)

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)

DEPTH = 8
STEPS = (8, 16, 32, 64, 128)
MAX_STEPS = max(STEPS)  # one max_steps everywhere: one compilation per adjoint


def mse(prediction, target):
    return jnp.mean((prediction - target) ** 2)


@pytest.fixture(scope="module")
def problem():
    resnet = ResNet(3, 2, 4, DEPTH, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    x = jnp.array([0.3, -0.5, 0.9])
    y = jnp.array([0.1, -0.2])
    return resnet, x, y


@pytest.fixture(scope="module")
def gap(problem):
    resnet, x, y = problem
    return gradient_gap(resnet, mse, x, y, STEPS, max_steps=MAX_STEPS)


def _node_and_resnet_leaves(g_node, g_resnet):
    """Pairs (name, ODE gradient leaf, ResNet gradient leaf) for every parameter."""
    lw = g_node.vector_field.layer_weights
    return [
        ("weights", lw.weights, g_resnet.weights),
        ("biases", lw.biases, g_resnet.biases),
        ("input.weight", g_node.input.weight, g_resnet.input.weight),
        ("input.bias", g_node.input.bias, g_resnet.input.bias),
        ("output.weight", g_node.output.weight, g_resnet.output.weight),
        ("output.bias", g_node.output.bias, g_resnet.output.bias),
    ]


def test_recursive_with_depth_steps_is_the_resnet_gradient(problem):
    resnet, x, y = problem
    node = NeuralODE.from_resnet(resnet, "constant")
    g_node = node_gradient(node, mse, x, y, num_steps=DEPTH, adjoint="recursive",
                           max_steps=MAX_STEPS)
    g_resnet = resnet_gradient(resnet, mse, x, y)
    pairs = _node_and_resnet_leaves(g_node, g_resnet)
    # every inexact leaf of the ODE's gradient is accounted for
    assert len(jax.tree_util.tree_leaves(eqx.filter(g_node, eqx.is_inexact_array))) == len(pairs)
    for name, a, b in pairs:
        assert a.shape == b.shape, name
        assert float(jnp.max(jnp.abs(b))) > 0, name
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=name)


def test_backsolve_differs_and_converges_at_first_order(gap):
    assert gap.num_steps == STEPS
    assert gap.gaps[0] > 1e-8
    assert np.all(np.diff(gap.gaps) < 0)
    # measured: rate ~0.99 (0.998 on N = 8..1024), i.e. gap ~ C/N
    assert 0.8 <= gap.rate <= 1.2
    assert 0.8 <= gap.field_rate <= 1.2
    # the output projection's gradient agrees, so the layers' gap is the larger one
    assert np.all(gap.field_gaps > gap.gaps)


def test_backsolve_credits_the_next_layer_on_piecewise_constant_weights(problem):
    """With N = depth, the reverse step from t_n evaluates W(t_n) = W_{n+1}: layer 1 gets 0."""
    resnet, x, y = problem
    node = NeuralODE.from_resnet(resnet, "constant")
    g = node_gradient(node, mse, x, y, num_steps=DEPTH, adjoint="backsolve",
                      max_steps=MAX_STEPS)
    grads = g.vector_field.layer_weights
    assert float(jnp.max(jnp.abs(grads.weights[0]))) == 0.0
    assert float(jnp.max(jnp.abs(grads.biases[0]))) == 0.0
    assert float(jnp.min(jnp.linalg.norm(grads.weights[1:], axis=(1, 2)))) > 0


class ScalarLinear(eqx.Module):
    """`f(t, x) = w x`."""

    w: Float[Array, ""]

    def __call__(self, t, x, args=None):
        return self.w * x


def _square(prediction, target):
    return (prediction - target) ** 2


@pytest.mark.parametrize("w, L", [(0.7, 5), (-1.3, 8), (2.1, 3)])
def test_scalar_linear_closed_forms(w, L):
    T, x0, y = 1.5, 0.8, -0.4
    node = NeuralODE(ScalarLinear(jnp.asarray(w)), T=T)
    x = jnp.asarray(x0)
    closed = linear_scalar_gradients(w, x0, y, T, L)
    rec = node_gradient(node, _square, x, y, num_steps=L, adjoint="recursive", max_steps=8)
    bs = node_gradient(node, _square, x, y, num_steps=L, adjoint="backsolve", max_steps=8)
    np.testing.assert_allclose(rec.vector_field.w, closed.recursive, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bs.vector_field.w, closed.backsolve, rtol=1e-12, atol=1e-12)
    # the recursive form is d/dw of ((1 + dt w)^L x - y)^2, the L-layer ResNet's gradient
    dt = T / L
    direct = jax.grad(lambda w_: ((1 + dt * w_) ** L * x0 - y) ** 2)(jnp.asarray(w))
    np.testing.assert_allclose(closed.recursive, direct, rtol=1e-12)
    # ... and the two differ: backsolve / recursive = (1 + dt w) S / L, S = sum_k (1 - dt^2 w^2)^k
    ratio = float(closed.backsolve / closed.recursive)
    assert abs(ratio - 1) > 1e-2
    S = sum((1 - (dt * w) ** 2) ** k for k in range(L))
    assert ratio == pytest.approx((1 + dt * w) * S / L, rel=1e-12)


def test_scalar_linear_closed_forms_converge_to_the_continuous_gradient():
    w, x0, y, T = 0.9, 1.1, 0.3, 2.0
    exact = 2 * (x0 * np.exp(w * T) - y) * T * np.exp(w * T) * x0
    errors = []
    for L in (100, 1000, 10000):
        g = linear_scalar_gradients(w, x0, y, T, L)
        errors.append((abs(float(g.recursive) - exact), abs(float(g.backsolve) - exact)))
        assert abs(float(g.backsolve - g.recursive)) < 10 * T * abs(w) * abs(exact) / L
    errors = np.asarray(errors)
    np.testing.assert_allclose(errors[:-1] / errors[1:], 10.0, rtol=0.05)  # first order


def test_scalar_linear_closed_forms_agree_at_w_zero():
    g = linear_scalar_gradients(0.0, 0.5, 1.0, 1.0, 7)
    np.testing.assert_allclose(g.recursive, g.backsolve, rtol=1e-15)
    np.testing.assert_allclose(g.recursive, 2 * (0.5 - 1.0) * 1.0 * 0.5, rtol=1e-15)


def test_relative_difference_is_flattened_over_leaves():
    a = {"u": jnp.array([3.0, 0.0]), "v": jnp.array(4.0)}
    b = {"u": jnp.array([0.0, 0.0]), "v": jnp.array(0.0)}
    c = {"u": jnp.array([0.0, 0.0]), "v": jnp.array(5.0)}
    assert float(relative_difference(a, c)) == pytest.approx(np.sqrt(9 + 1) / 5)
    assert not np.isfinite(float(relative_difference(a, b)))


def test_node_gradient_rejects_bad_step_counts(problem):
    resnet, x, y = problem
    node = NeuralODE.from_resnet(resnet)
    with pytest.raises(ValueError, match="num_steps"):
        node_gradient(node, mse, x, y, num_steps=0)
    with pytest.raises(ValueError, match="max_steps"):
        node_gradient(node, mse, x, y, num_steps=8, max_steps=4)
