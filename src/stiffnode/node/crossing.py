"""The 1-D crossing problem `g(-1) = 1, g(1) = -1` (Dupont, Doucet & Teh 2019).

A neural ODE on R maps `x` to `phi_T(x)`, the time-T flow of `dx/dt = f(t, x)`. Solutions of
a Lipschitz ODE cannot cross, so `phi_T` is strictly increasing and `phi_T(-1) < phi_T(1)`.
For any `a = g(-1) <= b = g(1)` the mean squared error on the two points is
`((a - 1)^2 + (b + 1)^2) / 2 >= 1` (equality at `a = b = 0`): a plain neural ODE cannot
go below `MONOTONE_LOSS_BOUND = 1`, however it is trained. One extra dimension lets the
two trajectories pass each other, and the augmented neural ODE fits the map exactly.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, Real

from ..models import AugmentedNeuralODE, MLPVectorField, NeuralODE
from ..training.losses import model_mse
from ..training.train import fit_full_batch

__all__ = [
    "MONOTONE_LOSS_BOUND",
    "SOLVE_OPTIONS",
    "augmented_model",
    "crossing_data",
    "fit_crossing",
    "flow_map",
    "plain_model",
]

MONOTONE_LOSS_BOUND: float = 1.0
"""`min over a <= b of ((a - 1)^2 + (b + 1)^2) / 2`: the least MSE of any increasing map."""

SOLVE_OPTIONS: dict[str, Any] = dict(solver="tsit5", dt0=0.05, stepsize_controller="constant")
"""The default solve: 20 fixed Tsit5 steps on `[0, 1]` (error far below the losses here)."""


def crossing_data(dtype=None) -> tuple[Float[Array, "2 1"], Float[Array, "2 1"]]:
    """`x = (-1, 1)`, `y = (1, -1)`, one feature each: `g(x) = -x` on two points."""
    x = jnp.array([[-1.0], [1.0]], dtype)
    return x, -x


def first_coordinate(y: Float[Array, " state"]) -> Float[Array, " 1"]:
    """`y[:1]`: the augmented model's readout."""
    return y[:1]


def plain_model(key: PRNGKeyArray, *, width: int = 16, depth: int = 2, dtype=None) -> NeuralODE:
    """`x -> x(1)`, `dx/dt = MLP([x, t])` on R: its map is increasing in x."""
    return NeuralODE(MLPVectorField(1, width, depth, key=key, dtype=dtype))


def augmented_model(
    key: PRNGKeyArray, *, augment_size: int = 1, width: int = 16, depth: int = 2, dtype=None
) -> AugmentedNeuralODE:
    """`x -> h_1(1)`, `dh/dt = MLP([h, t])`, `h(0) = (x, 0, ..., 0)` in `R^(1 + augment_size)`."""
    field = MLPVectorField(1 + augment_size, width, depth, key=key, dtype=dtype)
    return AugmentedNeuralODE(field, augment_size, output=first_coordinate)


def fit_crossing(
    model: eqx.Module,
    *,
    steps: int = 300,
    learning_rate: float = 1e-2,
    solve_options: dict[str, Any] | None = None,
) -> tuple[eqx.Module, Real[np.ndarray, " steps"]]:
    """Full-batch Adam on the crossing MSE `((g(-1) - 1)^2 + (g(1) + 1)^2) / 2`.

    Returns the trained model and the loss before each step (`steps` values), all steps in
    one compiled `lax.scan`.
    """
    options = dict(SOLVE_OPTIONS if solve_options is None else solve_options)
    dtype = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
    x, y = crossing_data(dtype)

    def loss(m):
        return model_mse(lambda xi: m(xi, **options), x, y)

    return fit_full_batch(model, loss, optax.adam(learning_rate), steps)


def flow_map(
    model: Callable[..., Array],
    xs: Float[Array, " n"],
    solve_options: dict[str, Any] | None = None,
) -> Float[Array, " n"]:
    """`g(x)` for each scalar input in `xs` (the model's first output)."""
    options = dict(SOLVE_OPTIONS if solve_options is None else solve_options)
    return jax.vmap(lambda x: model(x[None], **options)[0])(jnp.asarray(xs))
