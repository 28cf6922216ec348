"""Jacobians of a layer's rate of change: analytic for the ResNet, autodiff, matrix-free.

Layer n of a ResNet changes its state at the rate `F_n(x) = sigma(W_n x + b_n)`, whose
Jacobian is `J_n(x) = diag(sigma'(W_n x + b_n)) W_n`. stiffnode keeps that structure: the
slopes `s_n = sigma'(W_n x_{n-1} + b_n)` and the weights `W_n` are enough for the Frobenius
norm and for products with vectors, without forming `J_n`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ..models import ResNet


def _check_sample(resnet: ResNet, x) -> Array:
    if not isinstance(resnet, ResNet):
        raise TypeError(f"expected a stiffnode.ResNet, got {type(resnet).__name__}")
    x = jnp.asarray(x)
    in_size = resnet.input.in_features
    if x.shape != (in_size,):
        raise ValueError(
            f"x must be one sample of shape ({in_size},), got shape {x.shape}; vmap over a batch"
        )
    return x


def activation_slopes(
    activation: Callable[[Array], Array], z: Float[Array, "*shape"]
) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """`(sigma(z), sigma'(z))` of an elementwise activation, from one forward-mode pass."""
    return jax.jvp(activation, (z,), (jnp.ones_like(z),))


def forward_with_slopes(
    resnet: ResNet, x: Float[Array, " in_size"]
) -> tuple[Float[Array, " out_size"], Float[Array, "N width"]]:
    """`(resnet(x), s)` with `s[n-1] = sigma'(W_n x_{n-1} + b_n)`, from one forward pass.

    The activation must act elementwise (as the ResNet's does).
    """
    dt = resnet.T / resnet.depth

    def layer(h, wb):
        W, b = wb
        value, slope = activation_slopes(resnet.activation, W @ h + b)
        return h + dt * value, slope

    h, slopes = jax.lax.scan(layer, resnet.input(x), (resnet.weights, resnet.biases), unroll=True)
    return resnet.output(h), slopes


def layer_slopes(resnet: ResNet, x: Float[Array, " in_size"]) -> Float[Array, "N width"]:
    """`s[n-1] = sigma'(W_n x_{n-1} + b_n)`: with `W_n`, the factors of `J_n = diag(s_n) W_n`."""
    return forward_with_slopes(resnet, _check_sample(resnet, x))[1]


def layer_jacobians(resnet: ResNet, x: Float[Array, " in_size"]) -> Float[Array, "N width width"]:
    """`J_n(x) = diag(sigma'(W_n x_{n-1} + b_n)) W_n` for every layer n, one sample `x`.

    `x_{n-1}` is the hidden state entering layer n (`x_0 = input(x)`). vmap for a batch.
    """
    slopes = layer_slopes(resnet, x)
    return slopes[:, :, None] * resnet.weights


def layer_matvec(
    slopes: Float[Array, "*batch width"],
    weights: Float[Array, "*wbatch width width"],
    v: Float[Array, "*batch k width"],
) -> Float[Array, "*batch k width"]:
    """`J v = s * (W v)` for `J = diag(s) W`, for k vectors stored as rows, without forming `J`.

    `weights`' batch axes must be a suffix of `v`'s (e.g. `(N, w, w)` against per-sample
    vectors `(samples, N, k, w)`): the extra leading axes are folded into the rows, so all
    samples share one product with each `W_n` instead of broadcasting `W`.
    """
    wb = weights.ndim - 2
    extra = v.ndim - 2 - wb
    if extra < 0 or v.shape[extra:-2] != weights.shape[:-2] or v.shape[-1] != weights.shape[-1]:
        raise ValueError(
            f"vectors of shape {v.shape} do not match weights of shape {weights.shape}"
        )
    Wt = jnp.swapaxes(weights, -1, -2)
    if extra == 0:
        Wv = v @ Wt
    else:
        lead = v.shape[:extra]
        rows = jnp.moveaxis(v.reshape(-1, *v.shape[extra:]), 0, -3)  # (*wb, L, k, w)
        Wv = rows.reshape(*rows.shape[:-3], -1, v.shape[-1]) @ Wt
        Wv = jnp.moveaxis(Wv.reshape(rows.shape), -3, 0).reshape(*lead, *v.shape[extra:])
    return slopes[..., None, :] * Wv


def vector_field_jacobian(
    vector_field: Callable, t, y: Float[Array, " n"], args: PyTree = None
) -> Float[Array, "n n"]:
    """`d f(t, y, args) / dy` by forward-mode autodiff (`jax.jacfwd`), for any vector field."""
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a vector (one state), got shape {y.shape}")
    return jax.jacfwd(lambda y: vector_field(t, y, args))(y)


def vector_field_jvp(
    vector_field: Callable, t, y: Float[Array, " n"], args: PyTree = None
) -> Callable[[Float[Array, " n"]], Float[Array, " n"]]:
    """The matrix-free Jacobian `v -> (df/dy)(t, y) v` (one JVP per product, no dense matrix).

    The linearisation is computed once (`jax.linearize`); each product costs about one
    evaluation of `f`.
    """
    _, jvp = jax.linearize(lambda y: vector_field(t, y, args), jnp.asarray(y))
    return jvp
