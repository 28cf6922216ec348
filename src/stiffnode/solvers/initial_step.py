"""The automatic first step size of an adaptive solve."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, PyTree, Real


def _scaled_rms(tree, scale) -> Array:
    leaves = [jnp.ravel(jnp.abs(x) / s) for x, s in zip(jtu.tree_leaves(tree), scale, strict=True)]
    dtype = jnp.result_type(*scale)
    return jnp.sqrt(jnp.mean(jnp.concatenate([x.astype(dtype) for x in leaves]) ** 2))


def initial_step_size(
    f: Callable[[Real[ArrayLike, ""], PyTree[Array]], PyTree[Array]],
    t0: Real[ArrayLike, ""],
    t1: Real[ArrayLike, ""],
    y0: PyTree[Array],
    rtol: Real[ArrayLike, "..."],
    atol: Real[ArrayLike, "..."],
    error_order: float,
) -> Real[Array, ""]:
    """The first step, signed, by Hairer, Norsett & Wanner's rule (Solving ODEs I, II.4).

    With `d0 = ||y0||`, `d1 = ||f(t0, y0)||` and `d2 = ||f(t0 + h0, y0 + h0 f0) - f0|| / h0`
    in the RMS norm scaled by `atol + rtol |y0|`: `h0 = 0.01 d0 / d1`, then
    `h = min(100 h0, (0.01 / max(d1, d2))^(1 / error_order), |t1 - t0|)`. Costs two
    evaluations of `f`; no gradient flows through the result.
    """
    tdtype = jnp.result_type(t0, t1)
    direction = jnp.where(t1 >= t0, 1, -1).astype(tdtype)

    def leaf_scale(x):
        real = jnp.abs(x).dtype
        return jnp.asarray(atol, real) + jnp.asarray(rtol, real) * jnp.abs(x)

    scale = [leaf_scale(x) for x in jtu.tree_leaves(y0)]
    f0 = f(t0, y0)
    d0, d1 = _scaled_rms(y0, scale), _scaled_rms(f0, scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.where(d1 == 0, 1, d1))
    h0 = h0.astype(tdtype)
    y1 = jtu.tree_map(lambda y, k: y + (direction * h0).astype(y.dtype) * k, y0, f0)
    f1 = f(t0 + direction * h0, y1)
    d2 = _scaled_rms(jtu.tree_map(jnp.subtract, f1, f0), scale) / h0.astype(d1.dtype)
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(
        max_d <= 1e-15,
        jnp.maximum(1e-6, 1e-3 * h0),
        (0.01 / jnp.where(max_d == 0, 1, max_d)) ** (1 / error_order),
    )
    h = jnp.minimum(jnp.minimum(100 * h0, h1.astype(tdtype)), jnp.abs(t1 - t0).astype(tdtype))
    return jax.lax.stop_gradient(direction * h)
