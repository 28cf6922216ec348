"""The residual vector field `F(x, t) = sigma(W(t) x + b(t))` of a ResNet's neural ODE."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, ScalarLike

from .weights import AbstractLayerWeights


class ResidualVectorField(eqx.Module):
    """`F(x, t) = sigma(W(t) x + b(t))`, callable as `f(t, y, args)` like any diffrax field."""

    layer_weights: AbstractLayerWeights
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __call__(
        self, t: ScalarLike, y: Float[Array, " width"], args: PyTree = None
    ) -> Float[Array, " width"]:
        W, b = self.layer_weights(t)
        return self.activation(W @ y + b)


class MLPVectorField(eqx.Module):
    """`f(t, y) = MLP([y, t])`: a general time-dependent neural vector field."""

    mlp: eqx.nn.MLP

    def __init__(
        self,
        size: int,
        width: int,
        depth: int,
        *,
        key,
        activation: Callable[[Array], Array] = jax.nn.tanh,
        dtype=None,
    ):
        self.mlp = eqx.nn.MLP(size + 1, size, width, depth, activation, key=key, dtype=dtype)

    def __call__(self, t: ScalarLike, y: Float[Array, " size"], args: PyTree = None):
        t = jnp.broadcast_to(jnp.asarray(t, y.dtype), (1,))
        return self.mlp(jnp.concatenate([y, t]))
