"""Data sets: the Alpine02 regression function and scikit-learn's digits."""

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._validation import positive_int

ALPINE02_BOUNDS: tuple[float, float] = (-5.0, 5.0)
"""The box `[-5, 5]^dim` the Alpine02 inputs are drawn from."""


class Dataset(NamedTuple):
    """Train and test splits `(x_train, y_train, x_test, y_test)`; a pytree (a tuple)."""

    x_train: Float[Array, "n_train dim"]
    y_train: Float[Array, "n_train 1"]
    x_test: Float[Array, "n_test dim"]
    y_test: Float[Array, "n_test 1"]



@jax.jit
def _alpine02_function(x):
    return jnp.prod(jnp.sqrt(jnp.abs(x)) * jnp.sin(x), axis=-1, keepdims=True)


def alpine02_function(x: Float[Array, "... dim"]) -> Float[Array, "... 1"]:
    """`f(x) = prod_i sqrt(|x_i|) sin(x_i)` over the last axis (kept, of size 1)."""
    return _alpine02_function(jnp.asarray(x))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _alpine02(key, n, dim, dtype):
    lo, hi = ALPINE02_BOUNDS
    kwargs = {} if dtype is None else {"dtype": dtype}
    x = jax.random.uniform(key, (n, dim), minval=lo, maxval=hi, **kwargs)
    return x, _alpine02_function(x)


def alpine02(
    key: PRNGKeyArray, n: int, dim: int = 2, *, dtype=None
) -> tuple[Float[Array, "n dim"], Float[Array, "n 1"]]:
    """`n` samples `x ~ U([-5, 5]^dim)`, `y = prod_i sqrt(|x_i|) sin(x_i)`.

    `dtype`: a floating dtype; by default JAX's (float64 when `jax_enable_x64` is on).
    """
    n = positive_int("n", n)
    dim = positive_int("dim", dim)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    return _alpine02(key, n, dim, None if dtype is None else jnp.dtype(dtype))


def alpine02_dataset(
    seed: int = 0, dim: int = 2, n_train: int = 900, n_test: int = 100, dtype=None
) -> Dataset:
    """Independent Alpine02 train/test samples drawn from `jax.random.PRNGKey(seed)`."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n_train = positive_int("n_train", n_train)
    n_test = positive_int("n_test", n_test)
    k_train, k_test = jax.random.split(jax.random.PRNGKey(int(seed)))
    x_train, y_train = alpine02(k_train, n_train, dim, dtype=dtype)
    x_test, y_test = alpine02(k_test, n_test, dim, dtype=dtype)
    return Dataset(x_train, y_train, x_test, y_test)


def digits_dataset(seed: int = 0, test_fraction: float = 0.25, dtype=None) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, bundled: no download), pixels
    scaled to [0, 1], shuffled by `seed` and split; `y_*` are int labels 0..9 of shape (n,)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("digits_dataset needs scikit-learn (pip install scikit-learn)") from e
    digits = load_digits()
    order = np.random.default_rng(int(seed)).permutation(len(digits.target))
    x = jnp.asarray(digits.data[order] / 16.0, dtype=dtype)
    y = jnp.asarray(digits.target[order], dtype=jnp.int32)
    n_test = int(round(test_fraction * len(y)))
    return Dataset(x[n_test:], y[n_test:], x[:n_test], y[:n_test])
