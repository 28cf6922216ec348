"""Losses and penalties: MSE (of predictions, or of a model on data), RMSE, the parameters'
L2 norm, the seed's penalised loss."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


def mse(pred: Float[Array, "n ..."], y: Float[Array, "n ..."]) -> Float[Array, ""]:
    """`mean_{i,j} (pred_ij - y_ij)^2`."""
    pred, y = jnp.asarray(pred), jnp.asarray(y)
    if pred.shape != y.shape:
        raise ValueError(f"predictions and targets differ in shape: {pred.shape} and {y.shape}")
    return jnp.mean((pred - y) ** 2)


def model_mse(
    model: Callable[[Array], Array], x: Float[Array, "n ..."], y: Float[Array, "n ..."]
) -> Float[Array, ""]:
    """`mse(model(x_i), y_i)`: the model vmapped over the samples (a shape mismatch between
    its outputs and `y` is an error, not a broadcast)."""
    return mse(jax.vmap(model)(x), y)


def rmse(pred: Float[Array, "n ..."], y: Float[Array, "n ..."]) -> Float[Array, ""]:
    """`sqrt(mean_{i,j} (pred_ij - y_ij)^2)`."""
    return jnp.sqrt(mse(pred, y))


def l2_norm(params: PyTree) -> Float[Array, ""]:
    """`||theta||_2 = sqrt(sum of squares of every floating-point array leaf)`."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_inexact_array))
    if not leaves:
        raise ValueError("params has no floating-point array leaves")
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in leaves))


def penalised_loss(
    pred: Float[Array, "n ..."],
    y: Float[Array, "n ..."],
    penalty: Float[Array, "#n"],
    lam: float,
) -> Float[Array, ""]:
    """The seed's loss `sqrt(mean_i (|F(x_i) - y_i|^2 + lam * p_i^2))`.

    `|.|` sums over the output components; `p_i` is sample i's penalty (a stiffness proxy, or
    one value for all, e.g. `l2_norm`). The seed writes a sum over the minibatch; the mean
    differs by the constant `sqrt(batch size)` (which Adam does not see) and makes `lam = 0`
    the RMSE per sample.
    """
    pred, y = jnp.asarray(pred), jnp.asarray(y)
    if pred.shape != y.shape:
        raise ValueError(f"predictions and targets differ in shape: {pred.shape} and {y.shape}")
    sq = jnp.sum(((pred - y) ** 2).reshape(pred.shape[0], -1), axis=-1)
    return jnp.sqrt(jnp.mean(sq + lam * jnp.asarray(penalty) ** 2))
