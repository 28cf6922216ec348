"""The dense output of one step as a function of time, for diffrax's `evaluate`."""

import abc

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


class AbstractStepInterpolation(diffrax.AbstractLocalInterpolation):
    """A step's dense output given by `_value(t)`, `y(t)` on `[t0, t1]`; `evaluate(t0, t1)`
    is the increment `y(t1) - y(t0)` (diffrax's convention). The polynomials are continuous,
    so `left` (the side of a jump) does not matter."""

    @abc.abstractmethod
    def _value(self, t) -> PyTree[Array]:
        """`y(t)`."""

    def evaluate(self, t0, t1=None, left: bool = True) -> PyTree[Array]:
        del left
        if t1 is None:
            return self._value(t0)
        return jax.tree.map(jnp.subtract, self._value(t1), self._value(t0))
