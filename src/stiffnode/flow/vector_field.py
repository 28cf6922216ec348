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


def hessian(loss_fn: LossFn, params: PyTree[Array], **loss_kwargs) -> Float[Array, "n n"]:
    """The dense Hessian `d^2 L / dtheta^2` on the flattened parameters (forward over
    reverse: n Hessian-vector products, vmapped). The flow's Jacobian is its negative."""
    loss, flat = flat_loss(loss_fn, params, **loss_kwargs)
    return jax.jacfwd(jax.grad(loss))(flat)


def hessian_vector_product(
    loss_fn: LossFn, params: PyTree[Array], **loss_kwargs
) -> Callable[[Float[Array, " n"]], Float[Array, " n"]]:
    """`v -> H v` on the flattened parameters, linearised once (forward over reverse):
    each product costs about two gradients and never forms H."""
    loss, flat = flat_loss(loss_fn, params, **loss_kwargs)
    _, hvp = jax.linearize(jax.grad(loss), flat)
    return hvp
