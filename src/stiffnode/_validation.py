"""Argument checks shared by the modules, with errors that name the argument."""

import math
import numbers

import numpy as np


def positive_int(name: str, value) -> int:
    """`value` as an int, or a ValueError naming `name` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _real(value) -> float | None:
    """A concrete real scalar (a number, or a 0-d numpy/JAX array) as a float, else None."""
    if isinstance(value, bool | str | bytes) or np.ndim(value) != 0 or np.iscomplexobj(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def positive_number(name: str, value, *, allow_none: bool = False) -> float | None:
    """`value` as a float, or a ValueError naming `name` unless it is a finite real number
    > 0 (or None, when `allow_none`)."""
    if value is None and allow_none:
        return None
    x = _real(value)
    if x is None:
        alternative = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive number{alternative}, got {value!r}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return x


def non_negative_number(name: str, value) -> float:
    """`value` as a float, or a ValueError naming `name` unless it is a finite real >= 0."""
    x = _real(value)
    if x is None or not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return x


def model_input(model: str, layer, x):
    """`x`, or a ValueError naming `model` and the sizes unless `x` has the shape the input
    projection `layer` takes (when it is an `eqx.nn.Linear`; other callables unchecked)."""
    width = getattr(layer, "in_features", None)
    if width is None:
        return x
    want = () if width == "scalar" else (width,)
    if np.shape(x) != want:
        raise ValueError(
            f"{model} takes one sample of shape {want} (input size {width}); got shape "
            f"{np.shape(x)} (jax.vmap the model over a batch)"
        )
    return x
