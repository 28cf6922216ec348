"""Time parameterisations of layer weights: how `W(t), b(t)` come from the N layers.

A ResNet with N layers on the horizon `[0, T]` has layer n acting at time
`t_{n-1} = (n - 1) T / N`. Every parameterisation here is built from the N layer weights
`(W_n, b_n)` and, for the interpolating ones, satisfies `W(t_{n-1}) = W_n`, so explicit
Euler with N steps on the resulting ODE reproduces the ResNet exactly.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, ScalarLike


def layer_times(depth: int, T: float) -> Float[np.ndarray, " depth"]:
    """The times `t_{n-1} = (n - 1) T / N`, n = 1..N, at which the ResNet's layers act."""
    return np.arange(depth) * (T / depth)


class AbstractLayerWeights(eqx.Module):
    """Time-dependent weights `t -> (W(t), b(t))` of a residual vector field."""

    T: eqx.AbstractVar[float]
    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, t: ScalarLike) -> tuple[Float[Array, "w w"], Float[Array, " w"]]:
        """`(W(t), b(t))`."""

    @classmethod
    @abc.abstractmethod
    def from_layers(
        cls, weights: Float[Array, "N w w"], biases: Float[Array, "N w"], T: float, **kwargs
    ) -> "AbstractLayerWeights":
        """Build from the N layer weights of a ResNet on horizon T."""

    @abc.abstractmethod
    def to_layers(self) -> tuple[Float[Array, "N w w"], Float[Array, "N w"]]:
        """The N layer weights `(W(t_{n-1}), b(t_{n-1}))` a ResNet needs."""

    @property
    def jump_ts(self) -> Float[np.ndarray, " k"] | None:
        """Times where `W(t)` or its derivative jumps (an adaptive solver steps onto them)."""
        return None


def _layer_index(t: ScalarLike, depth: int, T: float) -> Array:
    """The layer n - 1 (0-based) whose interval `[t_{n-1}, t_n)` holds `t`.

    The boundaries are `layer_times(depth, T)[1:]`, rounded to `t`'s dtype exactly as
    `stiffnode.solve` rounds jump times and fixed-step grids, so a step that lands on a
    boundary starts in the next layer, and an adaptive step clipped to just before a jump
    ends in the previous one.
    """
    t = jnp.asarray(t)
    boundaries = jnp.asarray(layer_times(depth, T)[1:], t.dtype)
    return jnp.searchsorted(boundaries, t, side="right")


class AbstractPiecewiseWeights(AbstractLayerWeights):
    """Weights stored at the N layer times themselves, with a kink or jump at each one."""

    weights: eqx.AbstractVar[Float[Array, "N w w"]]
    biases: eqx.AbstractVar[Float[Array, "N w"]]

    @classmethod
    def from_layers(cls, weights, biases, T, **kwargs):
        if kwargs:
            raise TypeError(f"{cls.__name__} takes no options, got {sorted(kwargs)}")
        return cls(weights, biases, T)

    def to_layers(self):
        return self.weights, self.biases

    @property
    def jump_ts(self):
        depth = self.weights.shape[0]
        return layer_times(depth, self.T)[1:] if depth > 1 else None


class PiecewiseConstantWeights(AbstractPiecewiseWeights):
    """`W(t) = W_n` for `t` in `[t_{n-1}, t_n)`: Euler with N steps is the ResNet."""

    weights: Float[Array, "N w w"]
    biases: Float[Array, "N w"]
    T: float = eqx.field(static=True)
    name: ClassVar[str] = "constant"

    def __call__(self, t):
        n = _layer_index(t, self.weights.shape[0], self.T)
        return self.weights[n], self.biases[n]


class PiecewiseLinearWeights(AbstractPiecewiseWeights):
    """`W(t)` linear between `W_n` at `t_{n-1}` and `W_{n+1}` at `t_n`; `W_N` after `t_{N-1}`."""

    weights: Float[Array, "N w w"]
    biases: Float[Array, "N w"]
    T: float = eqx.field(static=True)
    name: ClassVar[str] = "linear"

    def __call__(self, t):
        depth = self.weights.shape[0]
        # W(t) is continuous: which side of a boundary t is rounded to does not matter.
        s = jnp.clip(jnp.asarray(t) * (depth / self.T), 0, depth - 1)
        n = jnp.clip(jnp.floor(s), 0, max(depth - 2, 0)).astype(int)
        n1 = jnp.minimum(n + 1, depth - 1)
        theta = (s - n).astype(self.weights.dtype)
        W = (1 - theta) * self.weights[n] + theta * self.weights[n1]
        b = (1 - theta) * self.biases[n] + theta * self.biases[n1]
        return W, b


def _chebyshev_basis(t: Array, degree: int, T: float) -> Float[Array, " degree+1"]:
    """Chebyshev polynomials `T_0..T_degree` of `u = 2 t / T - 1` (t in [0, T] -> u in [-1, 1])."""
    u = 2 * jnp.asarray(t) / T - 1
    values = [jnp.ones_like(u), u]
    for _ in range(2, degree + 1):
        values.append(2 * u * values[-1] - values[-2])
    return jnp.stack(values[: degree + 1], axis=-1)


class PolynomialWeights(AbstractLayerWeights):
    """`W(t) = sum_k C_k T_k(2t/T - 1)`, a Chebyshev polynomial of low degree in t.

    Built from N layers by least squares through the points `(t_{n-1}, W_n)`; exact
    interpolation (so lossless, and Euler with N steps is the ResNet) when
    `degree >= N - 1`. A polynomial of degree `< N` survives the round trip
    ODE -> ResNet -> ODE exactly.
    """

    weight_coeffs: Float[Array, "d+1 w w"]
    bias_coeffs: Float[Array, "d+1 w"]
    T: float = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    name: ClassVar[str] = "polynomial"

    @property
    def degree(self) -> int:
        return self.weight_coeffs.shape[0] - 1

    def __call__(self, t):
        basis = _chebyshev_basis(t, self.degree, self.T).astype(self.weight_coeffs.dtype)
        return (
            jnp.tensordot(basis, self.weight_coeffs, axes=1),
            jnp.tensordot(basis, self.bias_coeffs, axes=1),
        )

    @classmethod
    def from_layers(cls, weights, biases, T, *, degree: int = 3):
        depth = weights.shape[0]
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"polynomial degree must be a non-negative int, got {degree!r}")
        degree = min(degree, depth - 1)
        V = _chebyshev_basis(jnp.asarray(layer_times(depth, T)), degree, T).astype(weights.dtype)
        pinv = jnp.linalg.pinv(V)  # (d+1, N): least squares, exact when d = N - 1
        return cls(
            jnp.tensordot(pinv, weights, axes=1), jnp.tensordot(pinv, biases, axes=1), T, depth
        )

    def to_layers(self):
        V = _chebyshev_basis(jnp.asarray(layer_times(self.depth, self.T)), self.degree, self.T)
        V = V.astype(self.weight_coeffs.dtype)
        return (
            jnp.tensordot(V, self.weight_coeffs, axes=1),
            jnp.tensordot(V, self.bias_coeffs, axes=1),
        )


PARAMETERIZATIONS: dict[str, type[AbstractLayerWeights]] = {
    c.name: c for c in (PiecewiseConstantWeights, PiecewiseLinearWeights, PolynomialWeights)
}


def layer_weights(
    parameterization: "str | type[AbstractLayerWeights]",
    weights: Float[Array, "N w w"],
    biases: Float[Array, "N w"],
    T: float,
    **options,
) -> AbstractLayerWeights:
    """The parameterisation named `parameterization` built from N layer weights."""
    if isinstance(parameterization, str):
        try:
            parameterization = PARAMETERIZATIONS[parameterization]
        except KeyError:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; known: {sorted(PARAMETERIZATIONS)}"
            ) from None
    return parameterization.from_layers(weights, biases, T, **options)
