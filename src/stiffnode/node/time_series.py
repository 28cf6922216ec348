"""Neural ODEs for irregularly sampled time series: fit `dy/dt = f(y)` to observed
trajectories, then extrapolate beyond the observed window.

The test system is a damped spiral `dy/dt = A y`, `A = [[-a, w], [-w, -a]]`, whose exact
trajectories `y(t) = expm(A t) y0` are generated at irregular times (no ODE solver involved).
The loss is `mean_ij ||y_hat_i(t_ij) - y_ij||^2`, `y_hat_i` the model's solve from `y_i(0)`,
saved at trajectory i's own times (trajectories vmapped).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, Real, Scalar

from .._validation import positive_int
from ..solve import solve
from ..training.train import fit_full_batch

__all__ = [
    "AutonomousMLP",
    "Trajectories",
    "damped_spiral",
    "fit_trajectories",
    "predict",
    "spiral_matrix",
    "trajectory_loss",
]


class Trajectories(NamedTuple):
    """`m` trajectories observed at `k` irregular times each: `ts (m, k)` (increasing, in
    `(0, t_max]`), states `ys (m, k, d)`, and initial states `y0 (m, d)` at `t = 0`."""

    ts: Float[Array, "m k"]
    ys: Float[Array, "m k d"]
    y0: Float[Array, "m d"]


def spiral_matrix(damping: float = 0.1, frequency: float = 2.0) -> Float[Array, "2 2"]:
    """`A = [[-a, w], [-w, -a]]`: eigenvalues `-a +- i w`, a spiral into the origin."""
    return jnp.array([[-damping, frequency], [-frequency, -damping]])


def damped_spiral(
    key: PRNGKeyArray,
    num_trajectories: int,
    num_obs: int,
    t_max: float,
    *,
    t_min: float = 0.0,
    damping: float = 0.1,
    frequency: float = 2.0,
    noise: float = 0.0,
    dtype=None,
) -> Trajectories:
    """Exact trajectories `y(t) = expm(A t) y0`, `y0 ~ U[-2, 2]^2`, at `num_obs` sorted times
    `~ U(t_min, t_max]` per trajectory, plus `N(0, noise^2)` observation noise."""
    num_trajectories = positive_int("num_trajectories", num_trajectories)
    num_obs = positive_int("num_obs", num_obs)
    if not t_max > t_min >= 0:
        raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    dtype = jnp.zeros((), dtype).dtype
    k_y0, k_t, k_noise = jax.random.split(key, 3)
    A = spiral_matrix(damping, frequency).astype(dtype)
    y0 = jax.random.uniform(k_y0, (num_trajectories, 2), dtype, -2.0, 2.0)
    ts = jnp.sort(jax.random.uniform(k_t, (num_trajectories, num_obs), dtype, t_min, t_max), axis=1)
    flows = jax.vmap(jax.vmap(lambda t: jax.scipy.linalg.expm(A * t)))(ts)  # (m, k, 2, 2)
    ys = jnp.einsum("mkij,mj->mki", flows, y0)
    ys = ys + noise * jax.random.normal(k_noise, ys.shape, dtype)
    return Trajectories(ts, ys, y0)


class AutonomousMLP(eqx.Module):
    """`f(t, y) = W y + MLP(y)` (or `MLP(y)` with `linear=False`): a time-independent field,
    so it can be run past the data's times; the linear part starts at zero."""

    mlp: eqx.nn.MLP
    linear: Float[Array, "d d"] | None

    def __init__(self, size: int, width: int, depth: int, *, key, linear: bool = True, dtype=None):
        self.mlp = eqx.nn.MLP(size, size, width, depth, jax.nn.tanh, key=key, dtype=dtype)
        dtype = self.mlp.layers[0].weight.dtype
        self.linear = jnp.zeros((size, size), dtype) if linear else None

    def __call__(self, t, y, args=None):
        out = self.mlp(y)
        return out if self.linear is None else out + self.linear @ y


_DEFAULT_SOLVE = dict(solver="tsit5", rtol=1e-4, atol=1e-6)


def predict(
    vector_field: Callable[..., Any],
    y0: Float[Array, "m d"],
    ts: Float[Array, "m k"],
    **solve_options,
) -> Float[Array, "m k d"]:
    """`y_hat_i(t_ij)`: the solve of `dy/dt = f(t, y)` from `y0_i` at `t = 0`, saved at `ts_i`
    (each row increasing, positive)."""
    options = _DEFAULT_SOLVE | solve_options

    def one(y, t):
        sol = solve(vector_field, y, 0.0, t[-1], saveat=diffrax.SaveAt(ts=t), **options)
        return sol.ys

    return jax.vmap(one)(jnp.asarray(y0), jnp.asarray(ts))


def trajectory_loss(
    vector_field: Callable[..., Any], data: Trajectories, **solve_options
) -> Scalar:
    """`mean_ij ||y_hat_i(t_ij) - y_ij||^2 / d`: the mean squared error over all observations."""
    return jnp.mean((predict(vector_field, data.y0, data.ts, **solve_options) - data.ys) ** 2)


def fit_trajectories(
    vector_field: eqx.Module,
    data: Trajectories,
    *,
    steps: int,
    optimizer: optax.GradientTransformation | None = None,
    **solve_options,
) -> tuple[eqx.Module, Real[np.ndarray, " steps"]]:
    """Full-batch optax training of `vector_field` on `trajectory_loss`, all `steps` in one
    compiled `lax.scan`; returns the trained field and the loss before each step."""
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    return fit_full_batch(
        vector_field, lambda f: trajectory_loss(f, data, **solve_options), optimizer, steps
    )
