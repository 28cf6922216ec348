"""Discretize-then-optimize vs optimize-then-discretize gradients of ResNets and neural ODEs.

Forward, explicit Euler with N = depth steps on the ResNet's piecewise-constant neural ODE
*is* the ResNet. Backward, the two approaches differ:

- discretize-then-optimize (`adjoint="recursive"`): backpropagation through the Euler steps,
  the exact gradient of the discrete model (for N = depth, the ResNet's gradient);
- optimize-then-discretize (`adjoint="backsolve"`): the continuous adjoint system
  `da/dt = -a^T df/dx`, `dg/dt = -a^T df/dtheta`, solved backwards from `T` to 0 together with
  `x` itself, with the same solver and steps. Its gradient differs from the discrete one by
  the backward solve's discretisation error, `O(T/N)` for Euler.

For the scalar linear model `dx/dt = w x` with `L` Euler steps of `dt = T/L` and loss
`((1 + dt w)^L x - y)^2` both gradients have closed forms, `linear_scalar_gradients`.
"""

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Real, Scalar

from .._validation import positive_int
from ..models.neural_ode import AbstractNeuralODE, NeuralODE
from ..models.resnet import ResNet

LossFn = Callable[[PyTree[Array], PyTree[ArrayLike]], Scalar]
"""`loss_fn(prediction, target) -> scalar`."""

__all__ = [
    "GradientGap",
    "LinearScalarGradients",
    "gradient_gap",
    "linear_scalar_gradients",
    "node_gradient",
    "relative_difference",
    "resnet_gradient",
]


@eqx.filter_jit
def resnet_gradient(
    resnet: ResNet,
    loss_fn: LossFn,
    x: Float[ArrayLike, " in_size"],
    y: PyTree[ArrayLike],
) -> ResNet:
    """`d loss_fn(resnet(x), y) / d theta`, exact (backprop through the layers), as a ResNet."""

    def loss(model):
        return loss_fn(model(x), y)

    return eqx.filter_grad(loss)(resnet)


def node_gradient(
    node: AbstractNeuralODE,
    loss_fn: LossFn,
    x: Float[ArrayLike, " in_size"],
    y: PyTree[ArrayLike],
    *,
    num_steps: int,
    adjoint: Literal["recursive", "backsolve"] = "recursive",
    solver: str = "euler",
    max_steps: int | None = None,
) -> AbstractNeuralODE:
    """`d loss_fn(node(x), y) / d theta` with `num_steps` fixed steps `dt = T/num_steps`.

    `adjoint="recursive"` backpropagates through the steps (discretize-then-optimize);
    `adjoint="backsolve"` solves the continuous adjoint backwards with the same solver and
    steps (optimize-then-discretize). Returned as a model of the same structure as `node`.
    `max_steps` (default `num_steps`) only bounds the step loop: the solve takes exactly
    `num_steps` steps either way, and calls sharing `max_steps` share one compilation (`dt0`
    is passed as an array, so it does not trigger a recompilation).
    """
    num_steps = positive_int("num_steps", num_steps)
    max_steps = num_steps if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < num_steps:
        raise ValueError(f"max_steps must be an int >= num_steps, got {max_steps!r}")
    dt0 = jnp.asarray(node.T / num_steps)
    return _node_gradient(node, loss_fn, x, y, dt0, adjoint, solver, max_steps)


@eqx.filter_jit
def _node_gradient(node, loss_fn, x, y, dt0, adjoint, solver, max_steps):
    """`node_gradient`, compiled once per (structure, loss, adjoint, solver, max_steps)."""

    def loss(model):
        prediction = model(
            x,
            solver=solver,
            dt0=dt0,
            stepsize_controller="constant",
            adjoint=adjoint,
            max_steps=max_steps,
        )
        return loss_fn(prediction, y)

    return eqx.filter_grad(loss)(node)


def _flat_params(tree: PyTree) -> Float[Array, " n"]:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


def relative_difference(a: PyTree, b: PyTree) -> Float[Array, ""]:
    """`||a - b||_2 / ||b||_2` over all inexact array leaves, flattened together."""
    fa, fb = _flat_params(a), _flat_params(b)
    return jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb)


class GradientGap(NamedTuple):
    """What `gradient_gap` returns.

    - `num_steps`: the step counts N.
    - `gaps`: `||g_backsolve - g_recursive|| / ||g_recursive||` for each N.
    - `rate`: the observed order p in `gap ~ C N^(-p)` (minus the least-squares slope of
      `log gap` against `log N`); 1 for first-order convergence.
    - `field_gaps`, `field_rate`: the same over the vector field's parameters (the layer
      weights and biases) alone. The output projection's gradient is the same for both
      adjoints (both see the same `x(T)`), so `gaps` understates the layers' gap.
    """

    num_steps: tuple[int, ...]
    gaps: Float[np.ndarray, " k"]
    rate: float
    field_gaps: Float[np.ndarray, " k"]
    field_rate: float


def _observed_rate(num_steps: Sequence[int], gaps: Float[np.ndarray, " k"]) -> float:
    """Minus the least-squares slope of `log gaps` against `log num_steps` (nan if undefined)."""
    if len(num_steps) < 2 or not np.all(gaps > 0):
        return float("nan")
    return float(-np.polyfit(np.log(np.asarray(num_steps, float)), np.log(gaps), 1)[0])


def gradient_gap(
    resnet: ResNet,
    loss_fn: LossFn,
    x: Float[ArrayLike, " in_size"],
    y: PyTree[ArrayLike],
    num_steps_list: Sequence[int],
    *,
    solver: str = "euler",
    max_steps: int | None = None,
) -> GradientGap:
    """`||g_bs(N) - g_rec(N)|| / ||g_rec(N)||` on the ResNet's piecewise-constant ODE, and its rate.

    For N != depth the N-step solve is not the ResNet: both gradients belong to the same
    N-step discretisation and both tend to the continuous adjoint gradient as N grows.
    All solves share `max_steps` (default the largest N), hence one compilation per adjoint.

    On this ODE the backsolve's reverse Euler step from `t_k` to `t_{k-1}` evaluates the field
    at `t_k`, where `W(t)` has already jumped to the next layer when `t_k` is a layer time:
    with N = depth, layer n's contribution is computed with, and credited to, layer n+1
    (layer 1 gets none, layer N twice). This is one step per layer, so also `O(1/N)`.
    """
    num_steps = tuple(int(n) for n in num_steps_list)
    if not num_steps:
        raise ValueError("num_steps_list is empty")
    max_steps = max(num_steps) if max_steps is None else max_steps
    node = NeuralODE.from_resnet(resnet, "constant")
    gaps, field_gaps = [], []
    for n in num_steps:
        g_rec = node_gradient(node, loss_fn, x, y, num_steps=n, adjoint="recursive",
                              solver=solver, max_steps=max_steps)
        g_bs = node_gradient(node, loss_fn, x, y, num_steps=n, adjoint="backsolve",
                             solver=solver, max_steps=max_steps)
        gaps.append(float(relative_difference(g_bs, g_rec)))
        field_gaps.append(float(relative_difference(g_bs.vector_field, g_rec.vector_field)))
    gaps_arr, field_gaps_arr = np.asarray(gaps), np.asarray(field_gaps)
    return GradientGap(
        num_steps=num_steps,
        gaps=gaps_arr,
        rate=_observed_rate(num_steps, gaps_arr),
        field_gaps=field_gaps_arr,
        field_rate=_observed_rate(num_steps, field_gaps_arr),
    )


class LinearScalarGradients(NamedTuple):
    """`d loss / d w` for `dx/dt = w x`, L Euler steps, loss `(x_L - y)^2`.

    - `recursive`: backprop through the steps (the L-layer ResNet with identical weights).
    - `backsolve`: explicit Euler on the continuous adjoint system, backwards in time.
    """

    recursive: Float[Array, ""]
    backsolve: Float[Array, ""]


def linear_scalar_gradients(
    w: Real[ArrayLike, ""],
    x: Real[ArrayLike, ""],
    y: Real[ArrayLike, ""],
    T: float,
    L: int,
) -> LinearScalarGradients:
    """Closed forms, `x_L = (1 + dt w)^L x`, `dt = T/L`, `e = 2 (x_L - y)`:

    recursive: `e L dt (1 + dt w)^(L-1) x`;
    backsolve: `e x_L dt sum_{k=0}^{L-1} (1 - dt^2 w^2)^k`
    (`= e x_L (1 - (1 - dt^2 w^2)^L) / (dt w^2)` for `w != 0`).

    Derivation of the backsolve form: diffrax's BacksolveAdjoint steps the augmented state
    `(x, a, g)` from `T` to 0 with `x' = w x`, `a' = -a w`, `g' = -a x`; an Euler step of
    `-dt` from `(x_k, a_k, g_k)` gives `x_{k-1} = (1 - dt w) x_k`, `a_{k-1} = (1 + dt w) a_k`,
    `g_{k-1} = g_k + dt a_k x_k`. From `x_L`, `a_L = e`, `g_L = 0`:
    `a_{L-j} x_{L-j} = e x_L (1 - dt^2 w^2)^j`, and `g_0` sums these. The two differ by a
    factor `(1 + dt w) S / L` with `S` the sum, i.e. relatively by `dt w + O(dt^2)`.
    (The seed's "Neural ODE" and "ResNet" formulas are these divided by `T = L dt`, with
    `S ~ L`.)
    """
    L = positive_int("L", L)
    w, x, y = (jnp.asarray(v) for v in jnp.broadcast_arrays(w, x, y))
    dtype = jnp.result_type(w, x, y, float)
    w, x, y = w.astype(dtype), x.astype(dtype), y.astype(dtype)
    dt = T / L
    x_L = (1 + dt * w) ** L * x
    e = 2 * (x_L - y)
    recursive = e * L * dt * (1 + dt * w) ** (L - 1) * x
    k = jnp.arange(L, dtype=dtype)
    S = jnp.sum((1 - (dt * w) ** 2)[..., None] ** k, axis=-1)
    backsolve = e * x_L * dt * S
    return LinearScalarGradients(recursive=recursive, backsolve=backsolve)
