"""Losses that say how they are built, so that a training step can use positive curvature.

A plain loss `L(theta)` offers its Hessian, which is indefinite away from a minimum. A loss
built as `L(theta) = ell(z(theta))`, a convex `ell` of the model's outputs `z`, offers the
generalized Gauss-Newton matrix `G = J^T (d^2 ell / dz^2) J` (`J = dz/dtheta`): positive
semi-definite everywhere, equal to the Hessian where the residuals vanish (Schraudolph 2002;
Martens 2020, "New insights and perspectives on the natural gradient method").
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PyTree, Scalar


class AbstractOutputLoss(eqx.Module):
    """`L(theta) = ell(z(theta), batch)`: a convex loss `ell` of the outputs `z`.

    Callable as a plain loss, `loss(params, **batch) -> scalar`, so it serves every
    optimizer; `gauss_newton` gives the curvature that `gradient_flow` uses."""

    def outputs(self, params: PyTree[Array], **batch: Any) -> Float[Array, "..."]:
        """The model's outputs `z(theta)` (residuals, logits) whose loss is `ell`."""
        raise NotImplementedError

    def output_loss(self, z: Float[Array, "..."], **batch: Any) -> Scalar:
        """`ell(z)`, convex in `z`."""
        raise NotImplementedError

    def output_curvature(
        self, z: Float[Array, "..."], v: Float[Array, "..."], **batch: Any
    ) -> Float[Array, "..."]:
        """`(d^2 ell / dz^2) v`, positive semi-definite."""
        raise NotImplementedError

    def __call__(self, params: PyTree[Array], **batch: Any) -> Scalar:
        return self.output_loss(self.outputs(params, **batch), **batch)


class LeastSquares(AbstractOutputLoss):
    """`L(theta) = mean_i r_i(theta)^2`, the mean squared residual (the MSE when the
    residuals are predictions minus targets). `ell'' = 2 / m`, so the Gauss-Newton matrix is
    `(2 / m) J^T J` (Levenberg-Marquardt's)."""

    residual_fn: Callable[..., Float[Array, "..."]] = eqx.field(static=True)

    def outputs(self, params, **batch):
        return self.residual_fn(params, **batch)

    def output_loss(self, z, **batch):
        return jnp.mean(z**2)

    def output_curvature(self, z, v, **batch):
        return (2.0 / z.size) * v


class Classification(AbstractOutputLoss):
    """`L(theta) = mean_i -log softmax(z_i(theta))[y_i]`, the mean cross-entropy of logits
    `z_i` (shape `(m, classes)`) against integer labels `y_i`. `ell''` per sample is
    `(diag(p_i) - p_i p_i^T) / m` with `p_i = softmax(z_i)` (the Fisher matrix)."""

    logits_fn: Callable[..., Float[Array, "m classes"]] = eqx.field(static=True)
    labels: Int[Array, " m"] | str = "labels"

    def _labels(self, batch) -> Int[Array, " m"]:
        if isinstance(self.labels, str):
            if self.labels not in batch:
                raise ValueError(
                    f"classification: the labels are read from the loss keyword "
                    f"{self.labels!r}, which was not given (got {sorted(batch)})"
                )
            return batch[self.labels]
        return self.labels

    def outputs(self, params, **batch):
        logits = self.logits_fn(params, **batch)
        if logits.ndim != 2:
            raise ValueError(
                f"classification: logits_fn must return (samples, classes), got {logits.shape}"
            )
        return logits

    def output_loss(self, z, **batch):
        labels = self._labels(batch)
        log_p = jax.nn.log_softmax(z, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

    def output_curvature(self, z, v, **batch):
        p = jax.nn.softmax(z, axis=-1)
        return (p * v - p * jnp.sum(p * v, axis=-1, keepdims=True)) / z.shape[0]


def least_squares(residual_fn: Callable[..., Float[Array, "..."]]) -> LeastSquares:
    """The loss `mean(residual_fn(params, **batch)^2)` with its Gauss-Newton curvature."""
    return LeastSquares(residual_fn)


def classification(
    logits_fn: Callable[..., Float[Array, "m classes"]], labels: Int[Array, " m"] | str = "labels"
) -> Classification:
    """The mean softmax cross-entropy of `logits_fn(params, **batch)` against `labels` (an
    integer array, or the name of the loss keyword that holds them, for minibatches)."""
    return Classification(logits_fn, labels)


class Linearization(eqx.Module):
    """A loss linearised at `theta` (flattened): its value, gradient and a curvature
    operator `v -> C v` that costs about two gradients per product and forms no matrix."""

    loss: Scalar
    grad: Float[Array, " n"]
    curvature: Callable[[Float[Array, " n"]], Float[Array, " n"]]
    positive: bool = eqx.field(static=True)  # C is positive semi-definite (Gauss-Newton)


def linearize(
    loss_fn: Callable[..., Scalar], theta: Float[Array, " n"], unravel, batch: dict
) -> Linearization:
    """`loss_fn` at the flat parameters `theta`: for an `AbstractOutputLoss`, its
    Gauss-Newton matrix `J^T ell'' J` (one forward pass, then a JVP and a transposed JVP per
    product); for a plain loss, its Hessian (forward over reverse)."""
    if isinstance(loss_fn, AbstractOutputLoss):
        z, jvp = jax.linearize(lambda t: loss_fn.outputs(unravel(t), **batch), theta)
        vjp = jax.linear_transpose(jvp, theta)
        value, dz = jax.value_and_grad(lambda z: loss_fn.output_loss(z, **batch))(z)
        (grad,) = vjp(dz)

        def gauss_newton(v):
            return vjp(loss_fn.output_curvature(z, jvp(v), **batch))[0]

        return Linearization(value, grad, gauss_newton, True)
    (value, grad), hvp = jax.linearize(
        jax.value_and_grad(lambda t: loss_fn(unravel(t), **batch)), theta
    )
    return Linearization(value, grad, lambda v: hvp(v)[1], False)


def gauss_newton_matrix(
    loss: AbstractOutputLoss, params: PyTree[Array], **batch: Any
) -> Float[Array, "n n"]:
    """The dense generalized Gauss-Newton matrix on the flattened parameters (for checks
    and small problems; the optimizer only ever uses its products)."""
    theta, unravel = ravel_pytree(params)
    lin = linearize(loss, theta, unravel, batch)
    return jax.vmap(lin.curvature)(jnp.eye(theta.size, dtype=theta.dtype)).T
