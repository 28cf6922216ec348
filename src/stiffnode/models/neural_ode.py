"""Neural ODEs: `x(T)` of `dx/dt = f(t, x)`, read in and out by projections."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import model_input, positive_number
from ..solve import Solution, solve
from .resnet import ResNet
from .vector_field import ResidualVectorField
from .weights import AbstractLayerWeights, layer_weights


def _identity(x):
    return x


class AbstractNeuralODE(eqx.Module):
    """`x -> readout(y(T))` where `dy/dt = vector_field(t, y, args)`, `y(0) = initial_state(x)`.

    Subclasses say how a sample becomes an initial state and how the final state is read out.
    """

    vector_field: eqx.AbstractVar[Callable[..., Any]]
    T: eqx.AbstractVar[float]

    @abc.abstractmethod
    def initial_state(self, x: Float[Array, " in_size"]) -> Float[Array, " state"]:
        """`y(0)` for the sample `x`."""

    @abc.abstractmethod
    def readout(self, y: Float[Array, " state"]) -> Float[Array, " out_size"]:
        """The model's output for the final state `y(T)`."""

    def solve(self, x: Float[Array, " in_size"], *, solver="tsit5", **solve_options) -> Solution:
        """The solve of `dy/dt = f(t, y)` on `[0, T]` from `initial_state(x)`.

        `solve_options` go to `stiffnode.solve` (rtol, atol, dt0, saveat, adjoint, ...).
        """
        jump_ts = getattr(getattr(self.vector_field, "layer_weights", None), "jump_ts", None)
        solve_options.setdefault("jump_ts", jump_ts)
        return solve(self.vector_field, self.initial_state(x), 0.0, self.T, solver=solver,
                     **solve_options)

    def __call__(
        self, x: Float[Array, " in_size"], *, solver="tsit5", **solve_options
    ) -> Float[Array, " out_size"]:
        """`readout(y(T))` (the last saved state, which is `y(T)` unless `saveat` says else)."""
        return self.readout(self.solve(x, solver=solver, **solve_options).ys[-1])


class NeuralODE(AbstractNeuralODE):
    """`output(y(T))`, `dy/dt = vector_field(t, y, args)`, `y(0) = input(x)`.

    `vector_field` is any `f(t, y, args)` (an equinox module to train it); `input` and
    `output` are any callables (identity by default), e.g. `eqx.nn.Linear`.
    """

    vector_field: Callable[..., Any]
    input: Callable[[Array], Array]
    output: Callable[[Array], Array]
    T: float = eqx.field(static=True)

    def __init__(self, vector_field, *, T: float = 1.0, input=None, output=None):
        positive_number("horizon T", T)
        self.vector_field = vector_field
        self.input = _identity if input is None else input
        self.output = _identity if output is None else output
        self.T = float(T)

    def initial_state(self, x):
        return self.input(model_input(type(self).__name__, self.input, x))

    def readout(self, y):
        return self.output(y)

    @classmethod
    def from_resnet(
        cls, resnet: ResNet, parameterization: str | type[AbstractLayerWeights] = "constant",
        **options,
    ) -> "NeuralODE":
        """The neural ODE `dx/dt = sigma(W(t) x + b(t))` that the ResNet's weights define.

        `parameterization`: `"constant"` (piecewise constant, `W(t) = W_n` on
        `[t_{n-1}, t_n)`), `"linear"` (piecewise linear through `W_n` at `t_{n-1}`), or
        `"polynomial"` (Chebyshev least squares, option `degree=3`). For all of them,
        explicit Euler with N steps of `T/N` gives the ResNet's output (for "polynomial"
        when `degree >= N - 1`).
        """
        weights = layer_weights(parameterization, resnet.weights, resnet.biases, resnet.T,
                                **options)
        field = ResidualVectorField(weights, resnet.activation)
        return cls(field, T=resnet.T, input=resnet.input, output=resnet.output)

    def to_resnet(self) -> ResNet:
        """The ResNet whose layer n has the weights `W(t_{n-1}), b(t_{n-1})` of this ODE."""
        if not isinstance(self.vector_field, ResidualVectorField):
            raise TypeError(
                "to_resnet needs a residual vector field sigma(W(t) x + b(t)) (as made by "
                f"NeuralODE.from_resnet), not {type(self.vector_field).__name__}"
            )
        weights, biases = self.vector_field.layer_weights.to_layers()
        return ResNet.from_layers(self.input, weights, biases, self.output,
                                  activation=self.vector_field.activation, T=self.T)


class AugmentedNeuralODE(AbstractNeuralODE):
    """A neural ODE on `[input(x), 0, ..., 0]`: the state carries `augment_size` extra zeros.

    Dupont, Doucet & Teh (2019): the extra dimensions let trajectories that would have to
    cross in the original space pass by each other. `vector_field` acts on the augmented
    state of size `in_size + augment_size` (after `input`); `output` reads the whole state.
    """

    vector_field: Callable[..., Any]
    augment_size: int = eqx.field(static=True)
    input: Callable[[Array], Array]
    output: Callable[[Array], Array]
    T: float = eqx.field(static=True)

    def __init__(self, vector_field, augment_size: int, *, T: float = 1.0, input=None,
                 output=None):
        if not isinstance(augment_size, int) or augment_size < 0:
            raise ValueError(f"augment_size must be a non-negative int, got {augment_size!r}")
        positive_number("horizon T", T)
        self.vector_field = vector_field
        self.augment_size = augment_size
        self.input = _identity if input is None else input
        self.output = _identity if output is None else output
        self.T = float(T)

    def initial_state(self, x):
        h = jnp.asarray(self.input(model_input(type(self).__name__, self.input, x)))
        return jnp.concatenate([h, jnp.zeros(h.shape[:-1] + (self.augment_size,), h.dtype)],
                               axis=-1)

    def readout(self, y):
        return self.output(y)
