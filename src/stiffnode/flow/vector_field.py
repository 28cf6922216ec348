"""The gradient flow `dtheta/dt = -grad L(theta)` as a diffrax vector field, and its
Jacobian `-Hessian(L)`: dense, or as Hessian-vector products."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree, Scalar

from ..stiffness.lanczos import lanczos_extremes

LossFn = Callable[..., Scalar]
"""`loss_fn(params, **loss_kwargs) -> scalar`; `params` a pytree of arrays."""


class GradientFlowField(eqx.Module):
    """`f(t, theta, loss_kwargs) = -grad L(theta; loss_kwargs)`, autonomous.

    The loss keyword arguments (a minibatch, say) travel as diffrax's `args`, so a new batch
    does not recompile the solve.
    """

    loss_fn: LossFn = eqx.field(static=True)

    def __call__(self, t, params: PyTree[Array], args: dict[str, Any] | None) -> PyTree[Array]:
        grads = jax.grad(self.loss_fn)(params, **(args or {}))
        return jtu.tree_map(jnp.negative, grads)


def flat_loss(
    loss_fn: LossFn, params: PyTree[Array], **loss_kwargs
) -> tuple[Callable[[Float[Array, " n"]], Scalar], Float[Array, " n"]]:
    """`(theta_flat -> L, theta_flat)`: the loss on the flattened parameter vector."""
    flat, unravel = ravel_pytree(params)
    return (lambda theta: loss_fn(unravel(theta), **loss_kwargs)), flat


def dense_hessian(
    loss: Callable[[Float[Array, " n"]], Scalar], theta: Float[Array, " n"], batch_size: int = 64
) -> Float[Array, "n n"]:
    """`d^2 loss / dtheta^2` column by column, `H e_j` by forward-over-reverse, `batch_size`
    columns at a time (`lax.map`): memory is that of `batch_size` Hessian-vector products,
    not n (a vmapped `jax.hessian` of a 4,281-parameter ResNet asked for 32 GB)."""
    _, hvp = jax.linearize(jax.grad(loss), theta)
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
    return jax.lax.map(hvp, eye, batch_size=min(batch_size, theta.shape[0])).T


def hessian(loss_fn: LossFn, params: PyTree[Array], **loss_kwargs) -> Float[Array, "n n"]:
    """The dense Hessian `d^2 L / dtheta^2` on the flattened parameters (`dense_hessian`).
    The flow's Jacobian is its negative."""
    loss, flat = flat_loss(loss_fn, params, **loss_kwargs)
    return dense_hessian(loss, flat)


def hessian_vector_product(
    loss_fn: LossFn, params: PyTree[Array], **loss_kwargs
) -> Callable[[Float[Array, " n"]], Float[Array, " n"]]:
    """`v -> H v` on the flattened parameters, linearised once (forward over reverse):
    each product costs about two gradients and never forms H."""
    loss, flat = flat_loss(loss_fn, params, **loss_kwargs)
    _, hvp = jax.linearize(jax.grad(loss), flat)
    return hvp


def hessian_extremes(
    loss_fn: LossFn,
    params: PyTree[Array],
    *,
    key: Array,
    num_iters: int = 20,
    **loss_kwargs,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`(lambda_min, lambda_max)` of the Hessian of `L` at `params` by Lanczos on
    Hessian-vector products from a random start (`num_iters` products, no matrix).

    The flow's stiffness: its Jacobian `-H` has eigenvalues `-lambda`; an explicit solver's
    step is bounded by about `3.3 / lambda_max` (Dopri5, Tsit5), gradient descent's by
    `2 / lambda_max`.
    """
    hvp = hessian_vector_product(loss_fn, params, **loss_kwargs)
    flat = ravel_pytree(params)[0]
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    return lanczos_extremes(hvp, v0, num_iters)
