"""The residual network `x_n = x_{n-1} + (T/N) sigma(W_n x_{n-1} + b_n)`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._validation import model_input, positive_int, positive_number


class ResNet(eqx.Module):
    """Input projection, N residual layers `x_n = x_{n-1} + (T/N) sigma(W_n x_{n-1} + b_n)`,
    output projection.

    The N layers are explicit Euler with step `T/N` on `dx/dt = sigma(W(t) x + b(t))`
    (see `NeuralODE.from_resnet`). Layer weights are stored stacked, `weights[n-1] = W_n`.
    """

    input: eqx.nn.Linear
    weights: Float[Array, "N width width"]
    biases: Float[Array, "N width"]
    output: eqx.nn.Linear
    activation: Callable[[Array], Array] = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int,
        depth: int,
        *,
        key: PRNGKeyArray,
        activation: Callable[[Array], Array] = jnp.tanh,
        T: float = 1.0,
        dtype=None,
    ):
        for name, value in (("in_size", in_size), ("out_size", out_size), ("width", width),
                            ("depth", depth)):
            positive_int(f"ResNet {name}", value)
        positive_number("ResNet horizon T", T)
        k_in, k_w, k_b, k_out = jax.random.split(key, 4)
        self.input = eqx.nn.Linear(in_size, width, key=k_in, dtype=dtype)
        self.output = eqx.nn.Linear(width, out_size, key=k_out, dtype=dtype)
        dtype = self.input.weight.dtype
        # Same scale as eqx.nn.Linear: uniform in +-1/sqrt(fan_in).
        bound = 1 / jnp.sqrt(width)
        self.weights = jax.random.uniform(k_w, (depth, width, width), dtype, -bound, bound)
        self.biases = jax.random.uniform(k_b, (depth, width), dtype, -bound, bound)
        self.activation = activation
        self.T = float(T)

    @classmethod
    def from_layers(
        cls,
        input: eqx.nn.Linear,
        weights: Float[Array, "N width width"],
        biases: Float[Array, "N width"],
        output: eqx.nn.Linear,
        *,
        activation: Callable[[Array], Array] = jnp.tanh,
        T: float = 1.0,
    ) -> "ResNet":
        """A ResNet with the given projections and stacked layer weights `weights[n-1] = W_n`."""
        depth, width = biases.shape
        if weights.shape != (depth, width, width):
            raise ValueError(
                f"layer weights must have shape (N, width, width) = {(depth, width, width)}, "
                f"got {weights.shape}"
            )
        self = object.__new__(cls)
        fields = dict(input=input, weights=weights, biases=biases, output=output,
                      activation=activation, T=float(T))
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self

    @property
    def depth(self) -> int:
        return self.weights.shape[0]

    @property
    def width(self) -> int:
        return self.weights.shape[1]

    def hidden_states(self, x: Float[Array, " in_size"]) -> Float[Array, "N+1 width"]:
        """`x_0 = input(x)`, then `x_1 .. x_N` of the residual layers."""
        dt = self.T / self.depth

        def layer(h, wb):
            W, b = wb
            h = h + dt * self.activation(W @ h + b)
            return h, h

        h0 = self.input(model_input("ResNet", self.input, x))
        _, hs = jax.lax.scan(layer, h0, (self.weights, self.biases))
        return jnp.concatenate([h0[None], hs])

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        return self.output(self.hidden_states(x)[-1])
