"""Two-dimensional toy densities for normalizing flows, generated (no download).

The three of FFJORD (Grathwohl et al. 2019) and RNODE (Finlay et al. 2020): two moons,
eight Gaussians on a circle, and a checkerboard. Each sampler is a pure function of a PRNG
key and a sample count.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._validation import positive_int

__all__ = ["TOY_DENSITIES", "checkerboard", "eight_gaussians", "sample", "two_moons"]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _two_moons(key, n, noise):
    k_theta, k_moon, k_noise = jax.random.split(key, 3)
    theta = jax.random.uniform(k_theta, (n,), maxval=jnp.pi)
    upper = jax.random.bernoulli(k_moon, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(theta), 1.0 - jnp.cos(theta))
    y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
    points = jnp.stack([x, y], axis=-1) + noise * jax.random.normal(k_noise, (n, 2))
    return 2.0 * (points - jnp.array([0.5, 0.25]))


def two_moons(key: PRNGKeyArray, n: int, *, noise: float = 0.1) -> Float[Array, "n 2"]:
    """Two interleaved half circles, `(cos u, sin u)` and `(1 - cos u, 1/2 - sin u)`,
    `u ~ U[0, pi]`, plus `N(0, noise^2)` noise, centred and scaled by 2 (about `[-3, 3]^2`)."""
    return _two_moons(key, positive_int("n", n), float(noise))


@functools.partial(jax.jit, static_argnums=(1,))
def _eight_gaussians(key, n):
    k_centre, k_noise = jax.random.split(key)
    angle = 2 * jnp.pi * jax.random.randint(k_centre, (n,), 0, 8) / 8
    centres = 4.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return (centres + 0.5 * jax.random.normal(k_noise, (n, 2))) / jnp.sqrt(2.0)


def eight_gaussians(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """An equal mixture of `N(2 sqrt(2) (cos 2 pi k/8, sin 2 pi k/8), I/8)`, k = 0..7."""
    return _eight_gaussians(key, positive_int("n", n))


@functools.partial(jax.jit, static_argnums=(1,))
def _checkerboard(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
    x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.randint(k3, (n,), 0, 2)
    x2 = x2 + jnp.floor(x1) % 2
    return 2.0 * jnp.stack([x1, x2], axis=-1)


def checkerboard(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Uniform on the 8 black squares of a 4x4 board of 2x2 squares on `[-4, 4]^2`."""
    return _checkerboard(key, positive_int("n", n))


TOY_DENSITIES: dict[str, Callable[[PRNGKeyArray, int], Float[Array, "n 2"]]] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}
"""The samplers by name."""


def sample(name: str, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """`n` samples of the toy density `name` (one of `TOY_DENSITIES`)."""
    try:
        sampler = TOY_DENSITIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown toy density {name!r}; known: {', '.join(TOY_DENSITIES)}"
        ) from None
    return sampler(key, n)
